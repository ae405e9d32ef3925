"""The state one protocol endpoint holds, and the slots it follows (the base of :class:`NeighbourProtocol`)."""

from __future__ import annotations

import json
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable
from pathlib import Path

from edgedfl.protocol.ledger import Ledger
from edgedfl.protocol.outbox import Outbox
from edgedfl.protocol.topics import Topics, validate_name
from edgedfl.protocol.types import (
    PRESENCE_OFFLINE,
    Answer,
    ExpertInfo,
    PeerInfo,
    ProtocolConfig,
    ReceivedUpdate,
    RemoteError,
)
from edgedfl.transport.base import Message, Transport
from edgedfl.wire.chunks import Reassembler
from edgedfl.wire.codec import (
    MaskRegistry,
    decode_masks,
)
from edgedfl.wire.envelope import decode_envelope
from edgedfl.wire.limits import DEFAULT_LIMITS, Limits
from edgedfl.wire.signing import KeyRing, Signer
from edgedfl.wire.validate import TensorSpec

log = logging.getLogger("edgedfl.protocol")


class EndpointState:
    """What one endpoint holds: transport, stores, followed slots, peers, experts, counters."""

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
        update_spec: TensorSpec | Callable[[int, int], TensorSpec | None] | None = None,
        settings: str | None = None,
        tofu: bool = False,
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
        #: what an update must look like: one spec, or one per (slot, round) (round 0 carries statistics)
        self.update_spec = update_spec
        #: digest of the swarm's shared settings: sent in hello and expert meta; a different one is refused
        self.settings = settings
        #: trust on first use: a node's key is pinned from its first signed hello (into ``keyring``, and
        #: ``pins.json`` in the state dir so a restart keeps them); another key for that node is refused
        self.tofu = tofu
        self._pins_path = Path(state_dir) / "pins.json" if (tofu and state_dir is not None) else None
        self._pins_dirty = False
        if tofu and self.keyring is None:
            self.keyring = KeyRing()
        if self._pins_path is not None and self._pins_path.is_file() and self.keyring is not None:
            for key_id, entry in json.loads(self._pins_path.read_text()).items():
                self.keyring.add(key_id, bytes.fromhex(entry["public"]), senders=entry.get("senders"))
        self._clock = clock
        self._slots: set[int] = set()
        #: slot -> the only senders whose updates are subscribed to (absent: the slot's wildcard)
        self._only_from: dict[int, frozenset[str]] = {}
        for s in slots:
            self._slots.add(s)
        #: the slots whose updates this node reads; None: every slot it receives (see :meth:`hold_updates`)
        self._kept_slots: frozenset[int] | None = None
        #: update chunks held while this node does not know its own slot yet (:meth:`hold_updates`)
        self._held: list[Message] | None = None
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
        #: when each answer in _done was last sent (a broker's duplicate soon after is not answered again)
        self._answered_at: dict[tuple[str, bytes], float] = {}
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
        #: every copy of a finished expert received, by slot and sender (members of a cluster each publish one)
        self.expert_copies: dict[int, dict[str, ExpertInfo]] = {}
        #: who may publish each slot's expert (:meth:`admit_experts`); None: not known yet, every copy is kept
        self.expert_members: dict[int, frozenset[str]] | None = None
        #: the last round of the run's schedule: an expert of a later round is refused
        self.expert_max_round: int | None = None
        #: rejected incoming messages, by error type name
        self.rejects: Counter[str] = Counter()
        #: rejected incoming messages, by the sender their topic names (the claimed one: forgeries count here)
        self.rejects_by_sender: Counter[str] = Counter()
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

    def update_filters(self, slot: int) -> list[str]:
        """The subscriptions that receive ``slot``'s updates now: the slot's wildcard, or one per sender."""
        if slot not in self._slots:
            return []
        senders = self._only_from.get(slot)
        if senders is None:
            return [self.topics.slot_updates(slot)]
        return [self.topics.update(slot, s) for s in sorted(senders)]

    def _refilter(self, slot: int, before: list[str]) -> None:
        if not self._started:
            return
        after = self.update_filters(slot)
        # the new filters first, so no message falls into a gap between two subscriptions; while both
        # stand the broker may deliver a message twice, which the dedupe counts and does not apply again
        for f in after:
            if f not in before:
                self.transport.subscribe(f, qos=self.config.qos)
        for f in before:
            if f not in after:
                try:
                    self.transport.unsubscribe(f)
                except NotImplementedError:
                    pass

    def follow_slot(self, slot: int) -> None:
        """Receive every sender's updates of ``slot`` (this node's cluster). Idempotent."""
        before = self.update_filters(slot)
        self._slots.add(slot)
        self._only_from.pop(slot, None)
        self._refilter(slot, before)

    def follow_senders(self, slot: int, senders: Iterable[str]) -> None:
        """Receive ``slot``'s updates from ``senders`` only (the neighbours): a subscription per sender
        instead of the slot's wildcard, so the broker does not hand every cluster mate's update to every
        member (in a cluster of m, m x degree deliveries a round instead of m x m)."""
        before = self.update_filters(slot)
        self._slots.add(slot)
        self._only_from[slot] = frozenset(senders)
        self._refilter(slot, before)

    def unfollow_slot(self, slot: int) -> None:
        before = self.update_filters(slot)
        self._slots.discard(slot)
        self._only_from.pop(slot, None)
        self._refilter(slot, before)

    @property
    def slots(self) -> frozenset[int]:
        return frozenset(self._slots)
