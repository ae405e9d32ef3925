"""Value types of the neighbour protocol: its config, what it learns of peers, round results.

Split from :mod:`edgedfl.protocol.endpoint` (which re-exports them) so the
protocol file holds behaviour only.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from edgedfl.config import ConfigBase, check, option
from edgedfl.wire.envelope import Envelope
from edgedfl.wire.expert import LATENT_PREFIX, MASK_PREFIX, SHAPE_PREFIX

__all__ = [
    "LATENT_PREFIX",
    "MASK_PREFIX",
    "PRESENCE_OFFLINE",
    "PRESENCE_ONLINE",
    "SHAPE_PREFIX",
    "ExpertInfo",
    "PeerInfo",
    "ProtocolConfig",
    "ReceivedUpdate",
    "RemoteError",
    "RoundResult",
    "message_id",
]

PRESENCE_ONLINE = "online"
PRESENCE_OFFLINE = "offline"


def message_id(sender: str, round: int, seq: int) -> str:
    """The identity receivers deduplicate on: ``sender/round/seq``."""
    return f"{sender}/{round}/{seq}"


#: How many answered messages a node remembers to re-ack their re-sends without decoding them again.
REMEMBER_DONE = 4096

#: Most update chunks a joining node holds unread before it knows its slot (more are dropped; re-sends repair).
MAX_HELD_CHUNKS = 100_000


@dataclasses.dataclass(frozen=True)
class Answer:
    """What a receiver answered to one whole message (re-sent as is for its duplicates)."""

    mid: str
    env: Envelope | None
    status: str
    error: Exception | None = None


@dataclasses.dataclass
class ProtocolConfig(ConfigBase):
    """Timings and bounds of the neighbour protocol (per device)."""

    ack_timeout_s: float = option(2.0, help="re-send an update no receiver acked after this many seconds")
    max_backoff_s: float = option(30.0, help="longest wait between two re-sends (the wait doubles each time)")
    stale_rounds: int = option(1, help="accept updates down to current_round - stale_rounds (if not closed)")
    max_rounds_ahead: int = option(16, help="refuse updates more than this many rounds ahead of ours")
    chunk_bytes: int = option(1_000_000, help="largest chunk; ~ link rate x keepalive / 3 (DESIGN.md)")
    chunk_timeout_s: float = option(120.0, help="drop a partly received message after this many seconds")
    max_partial_messages: int = option(64, help="most partly received messages held at once")
    poll_interval_s: float = option(0.05, help="longest a collector waits before checking deadlines again")
    qos: int = option(1, help="MQTT QoS of every publish (1: at least once; end-to-end acks do the rest)")

    def __post_init__(self) -> None:
        n = type(self).__name__
        for f in ("ack_timeout_s", "max_backoff_s", "chunk_timeout_s", "poll_interval_s"):
            v = getattr(self, f)
            check(isinstance(v, (int, float)) and v > 0, n, f, v, "must be a number > 0")
        for f in ("stale_rounds", "max_rounds_ahead"):
            v = getattr(self, f)
            check(isinstance(v, int) and v >= 0, n, f, v, "must be an int >= 0")
        check(
            isinstance(self.chunk_bytes, int) and self.chunk_bytes >= 1024,
            n,
            "chunk_bytes",
            self.chunk_bytes,
            "must be an int >= 1024",
        )
        check(
            isinstance(self.max_partial_messages, int) and self.max_partial_messages >= 1,
            n,
            "max_partial_messages",
            self.max_partial_messages,
            "must be an int >= 1",
        )
        check(self.qos in (1, 2), n, "qos", self.qos, "must be 1 or 2 (QoS 0 would make acks the only retry)")


@dataclasses.dataclass
class PeerInfo:
    """What this node knows of one neighbour, from its presence and hello."""

    node: str
    online: bool | None = None
    profile: dict[str, Any] = dataclasses.field(default_factory=dict)
    signature: np.ndarray | None = None
    hello_meta: dict[str, str] = dataclasses.field(default_factory=dict)
    last_seen: float = 0.0


@dataclasses.dataclass(frozen=True)
class ExpertInfo:
    """A finished expert as last published for its slot."""

    slot: int
    sender: str
    round: int
    tensors: dict[str, np.ndarray]
    latent: dict[str, np.ndarray]
    meta: dict[str, str]
    #: the sender's mask of every tensor that travelled sparse (True = kept): a receiver
    #: adopts it for the slot, so its own (uncalibrated) mask never zeroes the expert's values
    masks: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class ReceivedUpdate:
    """One neighbour's accepted update for a (round, slot)."""

    sender: str
    round: int
    slot: int
    seq: int
    message_id: str
    tensors: dict[str, np.ndarray]
    meta: dict[str, str]


@dataclasses.dataclass(frozen=True)
class RemoteError:
    """An error envelope a receiver sent back about one of our messages."""

    receiver: str
    message_id: str | None
    error_type: str
    text: str


@dataclasses.dataclass(frozen=True)
class RoundResult:
    """What :meth:`NeighbourProtocol.collect_round` gathered before the round closed."""

    round: int
    slot: int
    #: accepted updates of expected peers, by sender
    updates: dict[str, ReceivedUpdate]
    #: expected peers with no update when the round closed (slow or dead; late ones are stale)
    missing: frozenset[str]
    #: accepted updates of this slot from peers nobody listed (kept, not counted for the quorum)
    extra: dict[str, ReceivedUpdate]
    quorum: int
    #: seconds the collector waited
    waited_s: float

    @property
    def complete(self) -> bool:
        """Every expected peer reported before the deadline."""
        return not self.missing
