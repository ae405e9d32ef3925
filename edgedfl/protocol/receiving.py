"""The receiving side of the endpoint: every message is decoded, checked, applied at most once and answered; a bad one is counted, never raised."""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Iterable, Mapping

import numpy as np

from edgedfl.errors import (
    DuplicateMessage,
    MalformedMessage,
    NotAMember,
    SettingsMismatch,
    StaleRound,
    UnknownMask,
    WireError,
)
from edgedfl.protocol.store import ACK_APPLIED, ACK_DUPLICATE, ACK_REJECTED, ACK_STALE, ACK_STATUSES
from edgedfl.protocol.types import (
    MAX_HELD_CHUNKS,
    PRESENCE_OFFLINE,
    PRESENCE_ONLINE,
    REMEMBER_DONE,
    Answer,
    ExpertInfo,
    PeerInfo,
    ReceivedUpdate,
    RemoteError,
    message_id,
)
from edgedfl.transport.base import Message
from edgedfl.wire.chunks import parse_chunk_header
from edgedfl.wire.codec import (
    decode_masks,
    decode_tensors,
    decode_update,
)
from edgedfl.wire.envelope import Envelope, decode_envelope, encode_envelope
from edgedfl.wire.expert import decode_expert

log = logging.getLogger("edgedfl.protocol")


from edgedfl.protocol.sending import Sending

#: numeric fields of a hello's profile and their ranges: link rate (bits/s), expected same-task signature distance
HELLO_NUMBERS = {"link_rate_bps": (0.0, 1e12), "signature_spread": (0.0, 2.0)}


class Receiving(Sending):
    """Receiving: decode, validate, dedupe and apply once; acks and error envelopes."""

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
        self._save_pins()
        now = self._clock()
        if now - self._last_resend_check >= min(self.config.ack_timeout_s / 4, 0.5):
            self._last_resend_check = now
            self.resend_due()
        return n

    def hold_updates(self) -> None:
        """Hold every update chunk unread until :meth:`keep_slots` names the slots this node reads.

        A joining node follows every slot (a future cluster mate may send before the join ends) but
        must not answer what other clusters send: at n devices in c clusters each would be read,
        stored and acked by every node, n^2 acks for the calibration round instead of n^2 / c.
        """
        if self._held is None:
            self._held = []

    def keep_slots(self, slots: Iterable[int]) -> None:
        """From now on read updates of ``slots`` only; the held chunks of those slots are read now,
        the others dropped unanswered (their senders never expected this node's ack)."""
        self._kept_slots = frozenset(slots)
        held, self._held = self._held or [], None
        for msg in held:
            self._handle(msg)

    def count_reject(self, exc: Exception, sender: str) -> None:
        """Count a refused message by its kind and by the sender it claims (the one place both counters move)."""
        self.rejects[type(exc).__name__] += 1
        self.rejects_by_sender[sender] += 1

    def _reject(self, exc: Exception, topic: str) -> None:
        try:
            sender = self.topics.parse(topic).node or "?"
        except ValueError:
            sender = "?"
        self.count_reject(exc, sender)
        log.debug("%s: rejected message on %s: %s", self.node, topic, exc)

    def _handle(self, msg: Message) -> None:
        try:
            parsed = self.topics.parse(msg.topic)
        except ValueError as exc:  # InvalidTopic; we only subscribe to our own tree
            self._reject(exc, msg.topic)
            return
        if parsed.node == self.node:
            return  # our own presence / hello / update / acks, echoed back
        if parsed.kind == "metrics":
            return  # a device's status for dashboards: not the protocol's to read (a broker may deliver it anyway)
        if parsed.kind == "update":
            assert parsed.slot is not None and parsed.node is not None
            if self._held is not None:
                if len(self._held) < MAX_HELD_CHUNKS:
                    self._held.append(msg)
                else:  # a flood while joining: the sender's re-send brings it again
                    self.rejects["HeldChunksFull"] += 1
                return
            if self._kept_slots is not None and parsed.slot not in self._kept_slots:
                return  # another cluster's: unread and unanswered (its sender never expected our ack)
            self._on_update_chunk(msg, parsed.node, parsed.slot)
            return
        if not msg.payload:
            return  # a cleared retained message
        if parsed.kind == "presence":
            assert parsed.node is not None
            self._on_presence(parsed.node, msg.payload, msg.topic)
            return
        try:
            if self.tofu and parsed.kind == "hello" and parsed.node is not None:
                self._pin_from_hello(msg.payload, parsed.node)
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
                if parsed.to != self.node:
                    return  # addressed to another node (delivered by a wider subscription): not ours to read
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

    def _pin_from_hello(self, payload: bytes, node: str) -> None:
        """Trust on first use: pin the key a node's first signed hello names; refuse another key later.

        The hello must name its public key (``meta["key"]``) whose fingerprint is
        its ``key_id``; the signature itself is checked right after, with the ring.
        """
        assert self.keyring is not None
        env = decode_envelope(payload, limits=self.limits)  # integrity only; the ring verifies next
        if env.key_id is None or env.sender != node:
            return  # unsigned or misaddressed: the ring refuses it
        if self.keyring.pin(node, env.meta.get("key", ""), env.key_id) and self._pins_path is not None:
            self._pins_dirty = True  # written once per poll: a join pins a thousand keys in a burst

    def _save_pins(self) -> None:
        if not self._pins_dirty or self._pins_path is None or self.keyring is None:
            return
        self._pins_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._pins_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.keyring.entries(), sort_keys=True))
        tmp.replace(self._pins_path)
        self._pins_dirty = False

    def _check_settings(self, env: Envelope) -> None:
        """A hello or expert made under other settings (a stale retained message of another run) is refused.
        One without a digest (a client that sends none) is judged by its content alone."""
        theirs = env.meta.get("settings")
        if self.settings and theirs is not None and theirs != self.settings:
            raise SettingsMismatch(f"{env.kind} from {env.sender!r} was made under swarm settings {theirs[:12]}..., "
                                   f"not this swarm's {self.settings[:12]}...")

    def _on_hello(self, env: Envelope) -> None:
        self._check_settings(env)
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
        for key, (low, high) in HELLO_NUMBERS.items():  # what receivers compute with must be a number in range
            if key in profile:
                v = profile[key]
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not low <= v <= high:
                    raise MalformedMessage(f"hello profile {key}={v!r}: must be a number in [{low}, {high}]")
        info = self._peer(env.sender)
        info.profile = profile
        info.signature = np.array(sig, dtype=np.float32)
        info.hello_meta = {k: v for k, v in env.meta.items() if k != "profile"}

    def _on_expert(self, env: Envelope, slot: int | None) -> None:
        if slot is None or env.slot != slot:
            raise MalformedMessage(f"expert of slot {env.slot} on the topic of slot {slot}")
        if env.sender == self.node:
            return
        self._check_settings(env)
        self._check_expert(slot, env.sender, env.round)
        known = self.expert_copies.get(slot, {}).get(env.sender)
        if known is not None and known.round > env.round:
            return  # an older copy of this sender's (retained replay): keep the newer one
        body = decode_expert(env.body, limits=self.limits)
        info = ExpertInfo(slot, env.sender, env.round, body.tensors, body.latent, dict(env.meta), body.masks)
        self.expert_copies.setdefault(slot, {})[env.sender] = info

    def _check_expert(self, slot: int, sender: str, round: int) -> None:
        """An expert must come from a member of its slot's cluster, for a round of the run's schedule."""
        if round < 1 or (self.expert_max_round is not None and round > self.expert_max_round):
            raise StaleRound(f"expert of slot {slot} from {sender!r} for round {round}: the run has rounds "
                             f"1..{self.expert_max_round if self.expert_max_round is not None else '?'}")
        if self.expert_members is not None and sender not in self.expert_members.get(slot, frozenset()):
            raise NotAMember(f"expert of slot {slot} from {sender!r}, who is not a member of that cluster")

    def admit_experts(self, members: Mapping[int, Iterable[str]], max_round: int) -> None:
        """From now on accept a slot's expert only from ``members[slot]``, for rounds 1..``max_round``.

        Copies that arrived before (retained messages come at once, before the
        clustering is known) are judged now: the ones that fail are dropped and
        counted as rejections.
        """
        self.expert_members = {int(s): frozenset(m) for s, m in members.items()}
        self.expert_max_round = int(max_round)
        for slot, copies in list(self.expert_copies.items()):
            for sender, info in list(copies.items()):
                try:
                    self._check_expert(slot, sender, info.round)
                except WireError as exc:
                    del copies[sender]
                    self._reject(exc, self.topics.expert(slot, sender))

    @property
    def experts(self) -> dict[int, ExpertInfo]:
        """The finished expert of each slot: among its members' copies, the latest round, then the smallest id.

        Every receiver that holds the same copies chooses the same one, whatever
        the order they arrived in.
        """
        chosen = {}
        for slot, copies in self.expert_copies.items():
            if copies:
                chosen[slot] = min(copies.values(), key=lambda e: (-e.round, e.sender))
        return chosen

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
        if status not in ACK_STATUSES:
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
        self._try_publish(self.topics.ack(to, self.node), payload)

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
                # A sender re-sends only after ack_timeout_s without an ack; a copy sooner than half of
                # that is a QoS 1 redelivery or a replay: our ack is on its way, a second one would only
                # cost bytes.
                if self._clock() - self._answered_at.get(key, float("-inf")) >= self.config.ack_timeout_s / 2:
                    self._answered_at[key] = self._clock()
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
            self._answered_at[key] = self._clock()
            while len(self._done) > REMEMBER_DONE:
                old, _ = self._done.popitem(last=False)
                self._answered_at.pop(old, None)
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
        spec = self.update_spec(env.slot, env.round) if callable(self.update_spec) else self.update_spec
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
