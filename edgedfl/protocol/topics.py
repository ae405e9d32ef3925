"""MQTT topic names of the neighbour protocol: building, parsing, validating.

The topic tree of one swarm (DESIGN.md, "Protocol sketch")::

    edgedfl/<swarm>/presence/<node>        retained; last will "offline"
    edgedfl/<swarm>/hello/<node>           retained; device profile + task signature
    edgedfl/<swarm>/update/<slot>/<node>   one round's sparse B, in chunks
    edgedfl/<swarm>/expert/<slot>/<node>   retained; <node>'s copy of its cluster's finished expert
    edgedfl/<swarm>/ack/<to>/<node>        end-to-end acks *sent by* <node> to <to>
    edgedfl/<swarm>/metrics/<node>         retained; <node>'s status for dashboards (nodes never read it)

Every topic a node publishes on ends in its own name, so a broker ACL "write
``edgedfl/<swarm>/+/<node>``, ``edgedfl/<swarm>/update/+/<node>`` and
``edgedfl/<swarm>/expert/+/<node>``" lets each node write only its own topics. That is why an ack's topic
ends in the name of the node that *sends* the ack (the update's receiver), with the addressee before it:
a node never writes under another node's name, and a node subscribes to ``ack/<itself>/+`` only, so the
broker delivers each ack to its addressee alone (with ``ack/+`` every node would get every ack of the
swarm: n^2 deliveries a round at n devices). The envelope still names the addressee in ``meta["to"]``.

Swarm and node names are what the envelope allows for ``swarm`` and
``sender`` (1..128 characters of ``[A-Za-z0-9._-]``), so they contain no
``/``, ``+`` or ``#`` and a name that passes here is accepted by the wire layer.
"""

from __future__ import annotations

import dataclasses
import re

from edgedfl.errors import ConfigError, InvalidTopic

__all__ = ["KINDS", "ParsedTopic", "Topics", "validate_name"]

ROOT = "edgedfl"
KINDS = ("presence", "hello", "update", "expert", "ack", "metrics")
#: Largest slot number in a topic (slots are small ints; this bounds the parser).
MAX_SLOT = 2**31 - 1

_NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,128}")
_SLOT_RE = re.compile(r"0|[1-9][0-9]{0,9}")


def validate_name(name: str, what: str = "node") -> str:
    """Return ``name`` if it is a valid swarm / node name, else raise :class:`ConfigError`."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise ConfigError(f"{what}={name!r}: must be 1..128 characters of [A-Za-z0-9._-]")
    return name


def _check_slot(slot: int) -> int:
    if not isinstance(slot, int) or isinstance(slot, bool) or not 0 <= slot <= MAX_SLOT:
        raise ConfigError(f"slot={slot!r}: must be an int in 0..{MAX_SLOT}")
    return slot


@dataclasses.dataclass(frozen=True)
class ParsedTopic:
    """What a protocol topic names: its kind, and the node and/or slot in it."""

    kind: str
    node: str | None = None
    slot: int | None = None
    #: an ack's addressee
    to: str | None = None


class Topics:
    """Topic names for one swarm. ``Topics("lab").update(2, "pixel7")`` -> ``edgedfl/lab/update/2/pixel7``."""

    def __init__(self, swarm: str) -> None:
        self.swarm = validate_name(swarm, "swarm")
        self.base = f"{ROOT}/{swarm}"

    # -- topics one node publishes on --------------------------------------------

    def presence(self, node: str) -> str:
        return f"{self.base}/presence/{validate_name(node)}"

    def hello(self, node: str) -> str:
        return f"{self.base}/hello/{validate_name(node)}"

    def update(self, slot: int, node: str) -> str:
        return f"{self.base}/update/{_check_slot(slot)}/{validate_name(node)}"

    def expert(self, slot: int, node: str) -> str:
        return f"{self.base}/expert/{_check_slot(slot)}/{validate_name(node)}"

    def ack(self, to: str, node: str) -> str:
        """The topic of an ack that ``node`` sends to ``to``."""
        return f"{self.base}/ack/{validate_name(to)}/{validate_name(node)}"

    def metrics(self, node: str) -> str:
        return f"{self.base}/metrics/{validate_name(node)}"

    # -- subscription filters ------------------------------------------------------

    def all_presence(self) -> str:
        return f"{self.base}/presence/+"

    def all_hello(self) -> str:
        return f"{self.base}/hello/+"

    def slot_updates(self, slot: int) -> str:
        """Every node's updates for one slot (a cluster's members subscribe to their slot)."""
        return f"{self.base}/update/{_check_slot(slot)}/+"

    def all_experts(self) -> str:
        return f"{self.base}/expert/+/+"

    def acks_to(self, node: str) -> str:
        """The acks addressed to ``node`` (what it subscribes to)."""
        return f"{self.base}/ack/{validate_name(node)}/+"

    def all_acks(self) -> str:
        """Every ack of the swarm (monitors; nodes subscribe to :meth:`acks_to`)."""
        return f"{self.base}/ack/+/+"

    def all_metrics(self) -> str:
        return f"{self.base}/metrics/+"

    def everything(self) -> str:
        return f"{self.base}/#"

    # -- parsing -------------------------------------------------------------------

    def parse(self, topic: str) -> ParsedTopic:
        """Split a topic of this swarm into kind, node, slot; :class:`InvalidTopic` otherwise."""
        prefix = self.base + "/"
        if not isinstance(topic, str) or not topic.startswith(prefix):
            raise InvalidTopic(f"topic {topic!r} is not under {prefix!r}")
        parts = topic[len(prefix) :].split("/")
        kind = parts[0]
        try:
            if kind == "ack" and len(parts) == 3:
                return ParsedTopic(kind, node=validate_name(parts[2]), to=validate_name(parts[1]))
            if kind in ("presence", "hello", "metrics") and len(parts) == 2:
                return ParsedTopic(kind, node=validate_name(parts[1]))
            if kind in ("update", "expert") and len(parts) == 3:
                return ParsedTopic(kind, node=validate_name(parts[2]), slot=self._parse_slot(parts[1]))
        except ConfigError as exc:
            raise InvalidTopic(f"topic {topic!r}: {exc}") from None
        raise InvalidTopic(f"topic {topic!r} is not a protocol topic ({', '.join(KINDS)})")

    @staticmethod
    def _parse_slot(text: str) -> int:
        if not _SLOT_RE.fullmatch(text) or int(text) > MAX_SLOT:
            raise ConfigError(f"slot={text!r}: not a canonical slot number")
        return int(text)

    def __repr__(self) -> str:
        return f"Topics({self.swarm!r})"
