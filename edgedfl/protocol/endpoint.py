"""The neighbour protocol: one node's endpoint over any :class:`Transport`.

:class:`NeighbourProtocol` speaks DESIGN.md's protocol (topics in
:mod:`edgedfl.protocol.topics`): it announces presence (retained, with
an ``offline`` last will built by :meth:`NeighbourProtocol.will_message`),
publishes its hello (profile + task signature), its per-round updates (in
chunks, recorded in the on-disk :class:`~edgedfl.protocol.outbox.Outbox`
first) and finished experts (retained); it receives, validates, deduplicates
and applies its neighbours' updates exactly once (through the
:class:`~edgedfl.protocol.ledger.Ledger`), acknowledges them end to end,
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

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing_extensions import Self

log = logging.getLogger("edgedfl.protocol")


from edgedfl.protocol.rounds import Rounds
from edgedfl.protocol.types import (  # re-exported: what the endpoint hands back
    ExpertInfo,
    PeerInfo,
    ProtocolConfig,
    ReceivedUpdate,
    RemoteError,
    RoundResult,
    message_id,
)

__all__ = ["ExpertInfo", "NeighbourProtocol", "PeerInfo", "ProtocolConfig", "ReceivedUpdate", "RemoteError",
           "RoundResult", "message_id"]


class NeighbourProtocol(Rounds):
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

    def start(self) -> None:
        """Subscribe, announce presence, and re-send whatever the outbox still holds (after a restart)."""
        t = self.topics
        for pattern in (t.all_presence(), t.all_hello(), t.all_experts(), t.acks_to(self.node)):
            self.transport.subscribe(pattern, qos=self.config.qos)
        for slot in sorted(self._slots):
            for pattern in self.update_filters(slot):
                self.transport.subscribe(pattern, qos=self.config.qos)
        self._started = True
        self.announce()
        self._resend(self.outbox.pending())

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
