"""Rounds of the endpoint: a round closes when every expected neighbour reported, or at the deadline with a quorum."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from edgedfl.errors import (
    ConfigError,
    QuorumNotReached,
)
from edgedfl.protocol.topics import validate_name
from edgedfl.protocol.types import (
    ReceivedUpdate,
    RoundResult,
)
from edgedfl.wire.codec import (
    decode_update,
)
from edgedfl.wire.envelope import decode_envelope

log = logging.getLogger("edgedfl.protocol")


from edgedfl.protocol.receiving import Receiving


class Rounds(Receiving):
    """Rounds: begin, collect until all arrived or the deadline with a quorum, close."""

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
        if slot not in self.slots:  # a followed slot keeps its subscriptions (e.g. narrowed to the neighbours)
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
