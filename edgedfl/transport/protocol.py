"""The neighbour protocol: one node's endpoint over any :class:`Transport`.

:class:`NeighbourProtocol` speaks DESIGN.md's protocol (topics in
:mod:`edgedfl.transport.proto_topics`): it announces presence (retained, with
an ``offline`` last will built by :meth:`NeighbourProtocol.will_message`),
publishes its hello (profile + task signature), its per-round updates (in
chunks, recorded in the on-disk :class:`~edgedfl.transport.outbox.Outbox`
first) and finished experts (retained); it receives, validates, deduplicates
and applies its neighbours' updates exactly once (through the
:class:`~edgedfl.transport.outbox.Ledger`), acknowledges them end to end,
re-sends its own until acknowledged, and closes rounds on a deadline with a
quorum (:meth:`NeighbourProtocol.collect_round`).

Threading: the transport's network thread only enqueues; everything here runs
on the owner's thread, inside :meth:`poll` / :meth:`collect_round`. Every
handler is idempotent, because QoS 1 and our own re-sends deliver twice.

Decisions:

* **Acks travel on the receiver's own topic** (``ack/<receiver>``, naming the
  sender in ``meta["to"]``) so ACLs can let each node write only its own
  topics; senders subscribe to ``ack/+`` and keep what is addressed to them.
  An ack is sent only after the apply commit, and re-sent for every
  duplicate, so a lost ack is repaired by the next re-send.
* **Ack statuses**: ``applied``, ``duplicate`` (already had it), ``stale``
  (round closed or too old: not applied, but acked so the sender stops
  re-sending bytes that cannot be accepted later), ``rejected`` (failed
  validation: sent as an *error envelope*, STYLE point 4, never a crash).
* **Late updates for a closed round are rejected as stale and acked**, not
  applied: a round's result must not change after the collector returned it.
  :meth:`late_peers` says who came late.
* **One update per (sender, round, slot).** Dedupe is on (sender, round, seq);
  a second, different sequence number for the same (sender, round, slot) is
  also a :class:`DuplicateMessage`. A sender that restarts and publishes the
  same (round, slot) again re-sends its recorded message instead of a new one.
* **Round window**: an update older than ``current_round - stale_rounds`` or for
  a closed (round, slot) is stale; one more than ``max_rounds_ahead`` ahead is
  refused (a replay guard and a memory bound), with an error envelope.
* **Presence is plain text** (``online`` / ``offline``, retained; the last
  will is ``offline``) rather than an envelope, so ``mosquitto_sub`` and any
  MQTT tool read it as DESIGN.md writes it. It is advisory: rounds never wait
  on it, and ACLs keep a node from writing another's presence.
* **Retained state is not outboxed**: presence, hello and experts are
  last-writer-wins state that :meth:`republish_retained` sends again (e.g.
  after a broker restart lost its retained store); only updates need
  exactly-once.
* A publish that fails (link down, PUBACK timeout) leaves the message in the
  outbox; the re-send timer retries it. Nothing blocks on a dead link beyond
  the transport's own publish timeout.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgedfl.errors import (
    ConfigError,
    DuplicateMessage,
    MalformedMessage,
    PayloadTooLarge,
    QuorumNotReached,
    StaleRound,
    TensorValidationError,
    TransportError,
    UnknownMask,
    WireError,
)
from edgedfl.transport.base import Message, Transport
from edgedfl.transport.outbox import (
    ACK_APPLIED,
    ACK_DUPLICATE,
    ACK_REJECTED,
    ACK_STALE,
    Ledger,
    Outbox,
    OutboxEntry,
    OutboxPart,
)
from edgedfl.transport.proto_topics import Topics, validate_name
from edgedfl.transport.proto_types import (
    LATENT_PREFIX,
    MASK_PREFIX,
    PRESENCE_OFFLINE,
    PRESENCE_ONLINE,
    REMEMBER_DONE,
    SHAPE_PREFIX,
    Answer,
    ExpertInfo,
    PeerInfo,
    ProtocolConfig,
    ReceivedUpdate,
    RemoteError,
    RoundResult,
    message_id,
)
from edgedfl.wire.chunks import CHUNK_HEADER_BYTES, Reassembler, parse_chunk_header, split_message
from edgedfl.wire.codec import (
    MaskRegistry,
    Precision,
    decode_masks,
    decode_tensors,
    decode_update,
    encode_masks,
    encode_tensors,
    encode_update,
    mask_id,
)
from edgedfl.wire.envelope import Envelope, decode_envelope, encode_envelope
from edgedfl.wire.limits import DEFAULT_LIMITS, Limits
from edgedfl.wire.signing import KeyRing, Signer
from edgedfl.wire.validate import TensorSpec

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = [
    "ExpertInfo",
    "NeighbourProtocol",
    "PeerInfo",
    "ProtocolConfig",
    "ReceivedUpdate",
    "RemoteError",
    "RoundResult",
    "message_id",
]

log = logging.getLogger("edgedfl.transport.protocol")


class NeighbourProtocol:
    """One node's protocol endpoint. See the module docstring for the decisions.

    Example::

        will = NeighbourProtocol.will_message("lab", "pixel7")
        t = MqttTransport(url, client_id="pixel7", will=will)
        p = NeighbourProtocol(t, "lab", "pixel7", state_dir=state / "proto", slots=[2])
        p.start()
        p.publish_hello({"device": "phone"}, signature)
        p.publish_update(5, 2, tensors, receivers=["jetson1", "laptop"])
        result = p.collect_round(5, 2, ["jetson1", "laptop"], quorum=1, deadline_s=30)
    """

    def __init__(
        self,
        transport: Transport,
        swarm: str,
        node: str,
        *,
        state_dir: str | Path | None = None,
        outbox: Outbox | None = None,
        ledger: Ledger | None = None,
        config: ProtocolConfig | None = None,
        slots: Iterable[int] = (),
        signer: Signer | None = None,
        keyring: KeyRing | None = None,
        limits: Limits = DEFAULT_LIMITS,
        update_spec: TensorSpec | Callable[[int], TensorSpec | None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.transport = transport
        self.topics = Topics(swarm)
        self.swarm = swarm
        self.node = validate_name(node, "node")
        self.config = config or ProtocolConfig()
        if outbox is None or ledger is None:
            base = Path(state_dir) if state_dir is not None else None
            if outbox is None:
                outbox = Outbox(base / "outbox.sqlite" if base else ":memory:")
            if ledger is None:
                ledger = Ledger(base / "ledger.sqlite" if base else ":memory:")
        self.outbox = outbox
        self.ledger = ledger
        self.signer = signer
        self.keyring = keyring
        self.limits = limits
        self.update_spec = update_spec
        self._clock = clock
        self._slots: set[int] = set()
        for s in slots:
            self._slots.add(s)
        self._assembler = Reassembler(
            max_message_bytes=limits.max_message_bytes,
            max_pending_messages=self.config.max_partial_messages,
            timeout_s=self.config.chunk_timeout_s,
            # We remember answered messages ourselves (self._done) so that a re-sent one is
            # re-acked, and forget those we could not apply yet (an unknown mask).
            remember_completed=0,
            clock=clock,
        )
        self._done: OrderedDict[tuple[str, bytes], Answer] = OrderedDict()
        #: masks of sparse updates this node holds (reloaded from the ledger on start-up)
        self.masks = MaskRegistry()
        for rec in self.ledger.applied(kind="mask"):
            if rec.payload is not None:
                decode_masks(
                    decode_envelope(rec.payload, limits=limits).body, registry=self.masks, limits=limits
                )
        self._started = False
        self._closed = False
        self._last_resend_check = float("-inf")
        self._retained: dict[str, bytes] = {}
        self._decoded: dict[str, ReceivedUpdate] = {}
        #: neighbours by name, from presence and hello
        self.peers: dict[str, PeerInfo] = {}
        #: finished experts by slot
        self.experts: dict[int, ExpertInfo] = {}
        #: rejected incoming messages, by error type name
        self.rejects: Counter[str] = Counter()
        #: error envelopes received about our own messages
        self.remote_errors: list[RemoteError] = []
        self._late: dict[tuple[int, int], set[str]] = {}

    # -- set-up ------------------------------------------------------------------

    @staticmethod
    def will_message(swarm: str, node: str, *, qos: int = 1) -> Message:
        """The retained ``offline`` presence to hand the transport as its last will at creation."""
        return Message(Topics(swarm).presence(node), PRESENCE_OFFLINE.encode(), retain=True, qos=qos)

    @property
    def current_round(self) -> int:
        """The highest round this node has begun (persisted in the ledger)."""
        return self.ledger.current_round

    def start(self) -> None:
        """Subscribe, announce presence, and re-send whatever the outbox still holds (after a restart)."""
        t = self.topics
        for pattern in (t.all_presence(), t.all_hello(), t.all_experts(), t.all_acks()):
            self.transport.subscribe(pattern, qos=self.config.qos)
        for slot in sorted(self._slots):
            self.transport.subscribe(t.slot_updates(slot), qos=self.config.qos)
        self._started = True
        self.announce()
        self._resend(self.outbox.pending())

    def follow_slot(self, slot: int) -> None:
        """Receive updates of ``slot`` (this node's cluster). Idempotent."""
        if slot not in self._slots:
            self._slots.add(slot)
            if self._started:
                self.transport.subscribe(self.topics.slot_updates(slot), qos=self.config.qos)

    def unfollow_slot(self, slot: int) -> None:
        if slot in self._slots:
            self._slots.discard(slot)
            if self._started:
                try:
                    self.transport.unsubscribe(self.topics.slot_updates(slot))
                except NotImplementedError:
                    pass

    @property
    def slots(self) -> frozenset[int]:
        return frozenset(self._slots)

    # -- publishing --------------------------------------------------------------

    def _envelope(
        self,
        kind: str,
        round: int = 0,
        slot: int = 0,
        seq: int = 0,
        body: bytes = b"",
        meta: Mapping[str, str] | None = None,
    ) -> bytes:
        env = Envelope(kind, self.swarm, self.node, round, slot, seq, body, dict(meta or {}))
        return encode_envelope(env, self.signer)

    def _publish_retained(self, topic: str, payload: bytes) -> None:
        self._retained[topic] = payload
        self._try_publish(topic, payload, retain=True)

    def _try_publish(self, topic: str, payload: bytes, *, retain: bool = False) -> bool:
        """Publish; on a transport failure log and return ``False`` (the caller's retry path takes over)."""
        if not self.transport.connected:
            return False
        try:
            self.transport.publish(topic, payload, qos=self.config.qos, retain=retain)
        except TransportError as exc:
            log.info("%s: publish on %s failed (%s); will retry", self.node, topic, exc)
            return False
        return True

    def announce(self, online: bool = True) -> None:
        """Publish retained presence ("online", or "offline" when leaving cleanly)."""
        state = PRESENCE_ONLINE if online else PRESENCE_OFFLINE
        self._publish_retained(self.topics.presence(self.node), state.encode())

    def publish_hello(
        self, profile: Mapping[str, Any], signature: np.ndarray, *, meta: Mapping[str, str] | None = None
    ) -> None:
        """Publish the retained hello: ``profile`` (JSON-able) and the task ``signature`` vector.

        The body is safetensors with one float32 tensor ``"signature"``; the
        profile travels as JSON in ``meta["profile"]``.
        """
        sig = np.ascontiguousarray(np.asarray(signature, dtype=np.float32).reshape(-1))
        m = dict(meta or {})
        m["profile"] = json.dumps(dict(profile), sort_keys=True, separators=(",", ":"))
        self._publish_retained(
            self.topics.hello(self.node),
            self._envelope("hello", body=encode_tensors({"signature": sig}), meta=m),
        )

    def publish_expert(
        self,
        slot: int,
        round: int,
        tensors: Mapping[str, np.ndarray],
        latent: Mapping[str, np.ndarray],
        *,
        meta: Mapping[str, str] | None = None,
        masks: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        """Publish a finished expert of ``slot`` (retained): its tensors and task latent code.

        Tensors named in ``masks`` travel sparse: their values under the mask,
        the mask's packed bits and the shape (receivers rebuild the dense
        tensor, zero outside the mask). One message (retained messages cannot
        be chunked: the broker keeps only the last publish of a topic), so it
        must fit the transport's limit; ``PayloadTooLarge`` otherwise.
        """
        body_tensors: dict[str, np.ndarray] = {}
        for k, v in tensors.items():
            mask = None if masks is None else masks.get(k)
            if mask is None:
                body_tensors[k] = v
                continue
            mask = np.asarray(mask, dtype=bool)
            if mask.shape != v.shape:
                raise TensorValidationError(f"expert tensor {k!r}: mask shape {mask.shape} != {v.shape}")
            body_tensors[k] = np.ascontiguousarray(np.asarray(v)[mask])  # (nnz,), row-major order
            body_tensors[MASK_PREFIX + k] = np.packbits(mask.reshape(-1))
            body_tensors[SHAPE_PREFIX + k] = np.array(v.shape, dtype=np.int64)
        for k, v in latent.items():
            body_tensors[LATENT_PREFIX + k] = v
        payload = self._envelope("expert", round, slot, 0, encode_tensors(body_tensors), meta)
        if len(payload) > self.transport.max_payload:
            raise PayloadTooLarge(
                f"expert of slot {slot} is {len(payload)} bytes, over the transport limit "
                f"{self.transport.max_payload}; experts are not chunked"
            )
        self._publish_retained(self.topics.expert(slot), payload)

    def republish_retained(self) -> None:
        """Publish presence, hello and experts again (a restarted broker may have lost them)."""
        for topic, payload in list(self._retained.items()):
            self._try_publish(topic, payload, retain=True)

    def publish_update(
        self,
        round: int,
        slot: int,
        tensors: Mapping[str, np.ndarray],
        *,
        receivers: Iterable[str],
        masks: Mapping[str, np.ndarray] | None = None,
        precision: Precision = "fp16",
        meta: Mapping[str, str] | None = None,
    ) -> str:
        """Send this node's update for (round, slot) to the slot's followers; returns its message id.

        Tensors named in ``masks`` travel sparse (values + mask id); a mask a
        receiver in ``receivers`` has not acknowledged yet is sent first, once
        (:meth:`publish_masks`). Recorded in the outbox (on disk) before the
        first publish, then re-sent until every receiver acknowledged it.
        Calling this again for the same (round, slot) (e.g. after a restart)
        re-sends the recorded message rather than making a second one.
        """
        existing = self.outbox.find("update", round, slot)
        if existing is not None:
            self._resend([existing])
            return existing.message_id
        receivers = {validate_name(r) for r in receivers} - {self.node}
        if masks:
            self._ensure_masks(round, slot, masks, receivers)
        body = encode_update(tensors, masks, precision)
        return self._record_and_send("update", round, slot, body, meta, receivers)

    def publish_masks(
        self, round: int, slot: int, masks: Mapping[str, np.ndarray], *, receivers: Iterable[str]
    ) -> str:
        """Send sparse-update masks of ``slot`` (a ``mask`` envelope on the update topic), reliably.

        Same path as an update (outbox, chunks, acks), but never stale: a mask
        stays valid for every later round that names it.
        """
        receivers = {validate_name(r) for r in receivers} - {self.node}
        mid = self._record_and_send("mask", round, slot, encode_masks(masks), None, receivers)
        for m in masks.values():
            key = f"mask:{slot}:{mask_id(m)}"
            sent = set(json.loads(self.outbox.get_meta(key) or "[]"))
            self.outbox.set_meta(key, json.dumps(sorted(sent | receivers)))
        return mid

    def _ensure_masks(
        self, round: int, slot: int, masks: Mapping[str, np.ndarray], receivers: set[str]
    ) -> None:
        missing: set[str] = set()
        never_sent = False
        for m in masks.values():
            raw = self.outbox.get_meta(f"mask:{slot}:{mask_id(m)}")
            never_sent |= raw is None
            missing |= receivers - set(json.loads(raw or "[]"))
        if missing or never_sent:
            self.publish_masks(round, slot, masks, receivers=missing)

    def _record_and_send(
        self,
        kind: str,
        round: int,
        slot: int,
        body: bytes,
        meta: Mapping[str, str] | None,
        receivers: set[str],
    ) -> str:
        seq = self.outbox.next_seq()
        mid = message_id(self.node, round, seq)
        data = self._envelope(kind, round, slot, seq, body, meta)
        topic = self.topics.update(slot, self.node)
        parts = [
            OutboxPart(topic, c, False, self.config.qos) for c in split_message(data, self._chunk_size())
        ]
        self.outbox.record(mid, kind=kind, round=round, slot=slot, seq=seq, parts=parts, receivers=receivers)
        entry = self.outbox.get(mid)
        assert entry is not None
        self._resend([entry], force=True)
        return mid

    def _chunk_size(self) -> int:
        # Data bytes per chunk: the configured size, under the transport's limit with room for the chunk header.
        return max(512, min(self.config.chunk_bytes, self.transport.max_payload - CHUNK_HEADER_BYTES - 64))

    def _resend(self, entries: Iterable[OutboxEntry], *, force: bool = False) -> None:
        for e in entries:
            if e.done and not force:
                continue
            ok = True
            for part in e.parts:
                if not self._try_publish(part.topic, part.payload, retain=part.retain):
                    ok = False
                    break
            if ok:
                self.outbox.mark_sent(e.message_id, now=time.time())
                if e.attempts:
                    log.debug("%s: re-sent %s (attempt %d)", self.node, e.message_id, e.attempts + 1)

    def resend_due(self) -> int:
        """Re-send every update whose ack is overdue; returns how many were due."""
        due = self.outbox.due(time.time(), self.config.ack_timeout_s, self.config.max_backoff_s)
        self._resend(due)
        return len(due)

    def pending(self) -> list[OutboxEntry]:
        """Own updates some receiver has not acknowledged yet."""
        return self.outbox.pending()

    # -- rounds ------------------------------------------------------------------

    def begin_round(self, round: int) -> None:
        """Move this node to ``round``: older rounds become stale, their re-sends stop."""
        cur = self.ledger.advance_round(round)
        # Masks never expire: later rounds still refer to them.
        self.outbox.expire(cur - self.config.stale_rounds, kind="update")
        for mid, upd in list(self._decoded.items()):
            if upd.round < cur - self.config.stale_rounds:
                del self._decoded[mid]

    def collect_round(
        self,
        round: int,
        slot: int,
        expected_peers: Iterable[str],
        quorum: int,
        deadline_s: float,
    ) -> RoundResult:
        """Wait for the neighbours' updates of (round, slot); close the round and return them.

        Returns as soon as every expected peer reported, or at the deadline if at
        least ``quorum`` of them did. Either way the round is then closed: later
        updates for it are stale (acked, not applied). Meanwhile it keeps
        receiving, acking and re-sending, so a slow or dead neighbour never
        stalls it past ``deadline_s``.

        :raises QuorumNotReached: the deadline passed with fewer than ``quorum``
            expected peers reported. The round is closed all the same; what did
            arrive stays available through :meth:`round_updates`.
        """
        expected = frozenset(validate_name(p) for p in expected_peers) - {self.node}
        if not 0 <= quorum <= len(expected):
            raise ConfigError(f"quorum={quorum!r}: must be between 0 and {len(expected)} expected peers")
        self.begin_round(round)
        self.follow_slot(slot)
        start = self._clock()
        deadline = start + deadline_s
        while True:
            self.poll(0.0)
            have = self._senders(round, slot)
            if expected <= have:
                break
            left = deadline - self._clock()
            if left <= 0:
                break
            self.poll(min(left, self.config.poll_interval_s))
        self.ledger.close_round(round, slot)
        updates = self.round_updates(round, slot)
        got = {s: u for s, u in updates.items() if s in expected}
        result = RoundResult(
            round=round,
            slot=slot,
            updates=got,
            missing=expected - set(got),
            extra={s: u for s, u in updates.items() if s not in expected},
            quorum=quorum,
            waited_s=self._clock() - start,
        )
        if len(got) < quorum:
            raise QuorumNotReached(
                f"round {round} slot {slot}: {len(got)} of {len(expected)} peers reported within "
                f"{deadline_s:g} s, quorum {quorum}; missing {sorted(result.missing)}"
            )
        if result.missing:
            log.info("%s: round %d slot %d closed without %s", self.node, round, slot, sorted(result.missing))
        return result

    def _senders(self, round: int, slot: int) -> set[str]:
        return {
            r.sender for r in self.ledger.applied(kind="update", round=round, slot=slot, with_payload=False)
        }

    def round_updates(self, round: int, slot: int) -> dict[str, ReceivedUpdate]:
        """Every applied update of (round, slot), by sender (from the ledger; survives restarts)."""
        out: dict[str, ReceivedUpdate] = {}
        for rec in self.ledger.applied(kind="update", round=round, slot=slot):
            upd = self._decoded.get(rec.message_id)
            if upd is None and rec.payload is not None:
                env = decode_envelope(rec.payload, limits=self.limits)
                tensors = decode_update(env.body, masks=self.masks, limits=self.limits)
                upd = ReceivedUpdate(
                    env.sender, env.round, env.slot, env.seq, rec.message_id, tensors, dict(env.meta)
                )
            if upd is not None:
                out[rec.sender] = upd
        return out

    def late_peers(self, round: int, slot: int) -> frozenset[str]:
        """Peers whose update for (round, slot) arrived after it closed (seen by this process)."""
        return frozenset(self._late.get((round, slot), ()))

    # -- receiving ---------------------------------------------------------------

    def poll(self, timeout: float = 0.0) -> int:
        """Handle every queued message, waiting up to ``timeout`` for the first; returns how many.

        Also re-sends overdue updates. Never raises for a bad message: it is
        counted in :attr:`rejects` (and answered with an error envelope when
        it was an update).
        """
        n = 0
        wait: float | None = timeout
        while True:
            msg = self.transport.receive(wait)
            if msg is None:
                break
            wait = 0.0
            n += 1
            self._handle(msg)
        now = self._clock()
        if now - self._last_resend_check >= min(self.config.ack_timeout_s / 4, 0.5):
            self._last_resend_check = now
            self.resend_due()
        return n

    def _reject(self, exc: Exception, topic: str) -> None:
        self.rejects[type(exc).__name__] += 1
        log.debug("%s: rejected message on %s: %s", self.node, topic, exc)

    def _handle(self, msg: Message) -> None:
        try:
            parsed = self.topics.parse(msg.topic)
        except ValueError as exc:  # InvalidTopic; we only subscribe to our own tree
            self._reject(exc, msg.topic)
            return
        if parsed.node == self.node:
            return  # our own presence / hello / update / acks, echoed back
        if parsed.kind == "update":
            assert parsed.slot is not None and parsed.node is not None
            self._on_update_chunk(msg, parsed.node, parsed.slot)
            return
        if not msg.payload:
            return  # a cleared retained message
        if parsed.kind == "presence":
            assert parsed.node is not None
            self._on_presence(parsed.node, msg.payload, msg.topic)
            return
        try:
            env = decode_envelope(msg.payload, limits=self.limits, keyring=self.keyring)
            if env.swarm != self.swarm:
                raise MalformedMessage(f"envelope of swarm {env.swarm!r} on {msg.topic!r}")
            if parsed.node is not None and env.sender != parsed.node:
                raise MalformedMessage(f"sender {env.sender!r} on {parsed.node!r}'s topic {msg.topic!r}")
            if parsed.kind == "hello" and env.kind == "hello":
                self._on_hello(env)
            elif parsed.kind == "expert" and env.kind == "expert":
                self._on_expert(env, parsed.slot)
            elif parsed.kind == "ack" and env.kind in ("ack", "error"):
                self._on_ack(env)
            else:
                raise MalformedMessage(f"a {env.kind!r} envelope on {msg.topic!r}")
        except WireError as exc:
            self._reject(exc, msg.topic)

    def _peer(self, node: str) -> PeerInfo:
        info = self.peers.get(node)
        if info is None:
            info = self.peers[node] = PeerInfo(node)
        info.last_seen = self._clock()
        return info

    def _on_presence(self, node: str, payload: bytes, topic: str) -> None:
        if payload not in (PRESENCE_ONLINE.encode(), PRESENCE_OFFLINE.encode()):
            self._reject(MalformedMessage(f"presence {payload[:32]!r} is neither online nor offline"), topic)
            return
        self._peer(node).online = payload == PRESENCE_ONLINE.encode()

    def _on_hello(self, env: Envelope) -> None:
        tensors = decode_tensors(env.body, limits=self.limits)
        sig = tensors.get("signature")
        if sig is None or sig.ndim != 1 or set(tensors) != {"signature"}:
            raise MalformedMessage("hello body must hold exactly one 1-D tensor 'signature'")
        try:
            profile = json.loads(env.meta.get("profile", "{}"))
        except ValueError as exc:
            raise MalformedMessage(f"hello profile is not JSON: {exc}") from None
        if not isinstance(profile, dict):
            raise MalformedMessage("hello profile must be a JSON object")
        info = self._peer(env.sender)
        info.profile = profile
        info.signature = np.array(sig, dtype=np.float32)
        info.hello_meta = {k: v for k, v in env.meta.items() if k != "profile"}

    def _on_expert(self, env: Envelope, slot: int | None) -> None:
        if slot is None or env.slot != slot:
            raise MalformedMessage(f"expert of slot {env.slot} on the topic of slot {slot}")
        if env.sender == self.node:
            return
        known = self.experts.get(slot)
        if known is not None and (known.round, known.sender) > (env.round, env.sender):
            return  # an older expert (retained replay): keep the newer one
        tensors = decode_tensors(env.body, limits=self.limits)
        latent = {
            k[len(LATENT_PREFIX) :]: np.array(v) for k, v in tensors.items() if k.startswith(LATENT_PREFIX)
        }
        weights, masks = _dense_expert({k: v for k, v in tensors.items() if not k.startswith(LATENT_PREFIX)},
                                       self.limits)
        self.experts[slot] = ExpertInfo(slot, env.sender, env.round, weights, latent, dict(env.meta), masks)

    def _on_ack(self, env: Envelope) -> None:
        if env.meta.get("to") != self.node:
            return  # an ack for someone else
        mid = env.meta.get("id")
        if env.is_error:
            self.remote_errors.append(
                RemoteError(env.sender, mid, env.meta.get("error_type", "WireError"), env.error or "")
            )
            log.warning("%s: %s rejected %s: %s", self.node, env.sender, mid, env.error)
        if mid is None:
            return
        if not mid.startswith(self.node + "/"):
            raise MalformedMessage(f"ack for message {mid!r} is addressed to {self.node!r}")
        status = env.meta.get("status", ACK_REJECTED if env.is_error else ACK_APPLIED)
        if status not in (ACK_APPLIED, ACK_DUPLICATE, ACK_STALE, ACK_REJECTED):
            raise MalformedMessage(f"unknown ack status {status!r}")
        self.outbox.mark_acked(mid, env.sender, status, now=time.time())

    def _send_ack(
        self, to: str, mid: str, env: Envelope | None, status: str, error: Exception | None = None
    ) -> None:
        meta = {"to": to, "status": status}
        if mid:
            meta["id"] = mid
        rnd, slot, seq = (env.round, env.slot, env.seq) if env is not None else (0, 0, 0)
        if error is None:
            payload = self._envelope("ack", rnd, slot, seq, meta=meta)
        else:
            meta["error_type"] = type(error).__name__
            text = str(error)[: self.limits.max_string_chars] or type(error).__name__
            err = Envelope.for_error(self.swarm, self.node, text, round=rnd, slot=slot, seq=seq, meta=meta)
            payload = encode_envelope(err, self.signer)
        # A lost ack is repaired by the sender's next re-send, which we ack again.
        self._try_publish(self.topics.ack(self.node), payload)

    def _on_update_chunk(self, msg: Message, sender: str, slot: int) -> None:
        try:
            header = parse_chunk_header(msg.payload)
        except WireError as exc:
            self._reject(exc, msg.topic)
            return
        key = (msg.topic, header.message_id)
        done = self._done.get(key)
        if done is not None:
            # A re-sent (or redelivered) message we already answered: its chunks are dropped
            # here, and its last chunk re-sends our answer, which repairs a lost ack.
            if header.index == header.count - 1:
                self.rejects["DuplicateMessage"] += 1
                self._send_ack(sender, done.mid, done.env, done.status, done.error)
            return
        try:
            data = self._assembler.add(msg.payload, source=msg.topic)
        except WireError as exc:
            # A bad or inconsistent chunk: the sender's re-send brings a good copy.
            self._reject(exc, msg.topic)
            return
        finally:
            for err in self._assembler.drain_errors():
                self._reject(err, msg.topic)
        if data is None:
            return  # more chunks to come
        answer = self._on_message(data, sender, slot, msg.topic)
        if answer is not None:
            self._done[key] = answer
            while len(self._done) > REMEMBER_DONE:
                self._done.popitem(last=False)
            self._send_ack(sender, answer.mid, answer.env, answer.status, answer.error)

    def _on_message(self, data: bytes, sender: str, slot: int, topic: str) -> Answer | None:
        """Decode, check and apply one whole update / mask message; the answer to send, if any."""
        env: Envelope | None = None
        mid = ""
        try:
            env = decode_envelope(data, limits=self.limits, keyring=self.keyring)
            if (
                env.kind not in ("update", "mask")
                or env.swarm != self.swarm
                or env.sender != sender
                or (env.slot != slot)
            ):
                raise MalformedMessage(
                    f"{env.kind!r} envelope from {env.sender!r} (swarm {env.swarm!r}, slot {env.slot}) "
                    f"on {topic!r}"
                )
            mid = message_id(env.sender, env.round, env.seq)
            if env.kind == "mask":
                self._accept_masks(env, mid, data)
            else:
                self._accept_update(env, mid, data)
        except DuplicateMessage as exc:
            self._reject(exc, topic)
            return Answer(mid, env, ACK_DUPLICATE)
        except StaleRound as exc:
            self._reject(exc, topic)
            return Answer(mid, env, ACK_STALE)
        except UnknownMask as exc:
            # Not applied and not acked: the mask message is on its way (same topic, sent
            # first, itself re-sent until acked); the update's re-send will find it.
            self._reject(exc, topic)
            return None
        except WireError as exc:
            self._reject(exc, topic)
            return Answer(mid, env, ACK_REJECTED, exc)
        return Answer(mid, env, ACK_APPLIED)

    def _accept_masks(self, env: Envelope, mid: str, data: bytes) -> None:
        # Decode first (validates, fills the registry); masks are content-addressed, so a
        # re-delivery is harmless even before the ledger says "duplicate".
        decode_masks(env.body, registry=self.masks, limits=self.limits)
        applied, _ = self.ledger.apply_once(
            mid, sender=env.sender, round=env.round, slot=env.slot, seq=env.seq, kind="mask", payload=data
        )
        if not applied:
            raise DuplicateMessage(f"{mid} already applied")

    def _accept_update(self, env: Envelope, mid: str, data: bytes) -> None:
        if self.ledger.is_applied(mid):
            raise DuplicateMessage(f"{mid} already applied")
        cur = self.ledger.current_round
        if self.ledger.is_closed(env.round, env.slot) or env.round < cur - self.config.stale_rounds:
            self._late.setdefault((env.round, env.slot), set()).add(env.sender)
            raise StaleRound(f"{mid}: round {env.round} slot {env.slot} is closed (current round {cur})")
        if cur >= 0 and env.round > cur + self.config.max_rounds_ahead:
            raise StaleRound(
                f"{mid}: round {env.round} is more than {self.config.max_rounds_ahead} rounds ahead of {cur}"
            )
        spec = self.update_spec(env.slot) if callable(self.update_spec) else self.update_spec
        tensors = decode_update(env.body, spec=spec, masks=self.masks, limits=self.limits)

        def one_per_round(conn: sqlite3.Connection) -> None:
            # Inside the apply transaction: a second seq for the same (sender, round, slot) is a duplicate.
            row = conn.execute(
                "SELECT message_id FROM applied WHERE kind = 'update' AND sender = ? AND round = ? AND slot = ?",
                (env.sender, env.round, env.slot),
            ).fetchone()
            if row is not None:
                raise DuplicateMessage(f"{mid}: {env.sender} already sent {row[0]} for this round and slot")

        applied, _ = self.ledger.apply_once(
            mid,
            one_per_round,
            sender=env.sender,
            round=env.round,
            slot=env.slot,
            seq=env.seq,
            kind="update",
            payload=data,
        )
        if not applied:
            raise DuplicateMessage(f"{mid} already applied")
        self._decoded[mid] = ReceivedUpdate(
            env.sender, env.round, env.slot, env.seq, mid, tensors, dict(env.meta)
        )

    # -- shutdown ----------------------------------------------------------------

    def close(self, *, leave: bool = True, close_transport: bool = True) -> None:
        """Announce "offline" (if ``leave``), close the transport and the stores. Idempotent.

        Un-acked updates stay in the outbox for the next start.
        """
        if self._closed:
            return
        self._closed = True
        if leave and self._started:
            self.announce(online=False)
        if close_transport:
            self.transport.close()
        self.outbox.close()
        self.ledger.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _dense_expert(tensors: Mapping[str, np.ndarray], limits: Limits
                  ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """An expert's tensors, with the sparse ones (values + ``mask.`` + ``shape.``) rebuilt dense,
    and the masks of the sparse ones (tensor name -> bool array of its shape).

    :raises MalformedMessage: a mask or shape without its tensor, a shape that is
        not two positive sizes within the limits, mask bits that do not cover the
        shape, or a value count that is not the mask's count.
    """
    out: dict[str, np.ndarray] = {}
    masks: dict[str, np.ndarray] = {}
    for name, v in tensors.items():
        if name.startswith((MASK_PREFIX, SHAPE_PREFIX)):
            base = name.split(".", 1)[1]
            if base not in tensors:
                raise MalformedMessage(f"expert: {name!r} without the tensor {base!r}")
            continue
        if MASK_PREFIX + name not in tensors and SHAPE_PREFIX + name not in tensors:
            out[name] = np.array(v)
            continue
        bits, shape_t = tensors.get(MASK_PREFIX + name), tensors.get(SHAPE_PREFIX + name)
        if bits is None or shape_t is None:
            raise MalformedMessage(f"expert: sparse tensor {name!r} needs both its mask and its shape")
        shape = tuple(int(x) for x in np.asarray(shape_t).reshape(-1))
        size = int(np.prod(shape)) if shape else 0
        if (np.asarray(shape_t).dtype != np.int64 or len(shape) != 2 or min(shape) < 1
                or size > limits.max_dense_elements):
            raise MalformedMessage(f"expert: bad shape {shape} for sparse tensor {name!r}")
        if bits.dtype != np.uint8 or bits.ndim != 1 or bits.size != -(-size // 8):
            raise MalformedMessage(f"expert: mask of {name!r} has {bits.size} bytes, {-(-size // 8)} expected")
        mask = np.unpackbits(bits)[:size].astype(bool).reshape(shape)
        if v.ndim != 1 or v.size != int(mask.sum()):
            raise MalformedMessage(f"expert: {name!r} has {v.size} values for a mask of {int(mask.sum())}")
        dense = np.zeros(shape, dtype=v.dtype)
        dense[mask] = v
        out[name] = dense
        masks[name] = mask
    return out, masks
