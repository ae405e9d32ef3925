"""The on-disk outbox and inbox ledger that make update delivery exactly-once.

Two small SQLite stores, one per node (they may share one file):

* :class:`Outbox` records every outgoing update (its id, the exact chunk bytes
  and topics, its round and slot, the receivers that must acknowledge it)
  *before* the first publish, marks each receiver's end-to-end ack, and on a
  restart :meth:`Outbox.pending` returns what still has to be re-sent. It also
  hands out the sender's sequence numbers, so a restarted node never reuses one.
* :class:`Ledger` is the receiving side: the set of applied message ids, the
  accepted update bytes themselves, the rounds already closed and the node's
  current round. :meth:`Ledger.apply_once` runs an application and records it
  in the same transaction.

Durability: ``journal_mode=WAL`` with ``synchronous=FULL``. WAL because a
commit then costs one fsync (of the WAL) instead of two (rollback journal and
database) and readers never block the writer; FULL because in WAL mode the
default NORMAL may lose the last commits on power loss, and an ack must never
be sent for something the disk could forget.

The exactly-once argument (sender S, receiver R, message m):

1. *At least once.* S commits m to the outbox before publishing it, and keeps
   re-sending it until R's end-to-end ack arrives (after a timeout, and after
   any restart of S). R sends the ack only *after* its apply commit. So if the
   broker loses m (a SIGKILLed Mosquitto forgets QoS 1 messages it had already
   acknowledged), or S dies mid-publish, or R dies before committing, no ack
   exists and m is sent again.
2. *At most once.* R's apply commit inserts m's id into the ledger in the same
   SQLite transaction as the application itself (for updates the application
   *is* storing the accepted bytes in the ledger; aggregation later reads them
   back and is a pure function of that set). A redelivered or re-sent m finds
   its id and is only re-acked. A crash before the commit leaves neither the
   effect nor the id; a crash after it leaves both.
3. *Stable identity.* m's id is ``sender/round/seq`` and seq is allocated from
   the outbox before m is recorded, and a re-send re-publishes the recorded
   bytes, so a re-sent m is the same m. A sender that restarts and asks to send
   the same (round, slot) again gets its recorded message back
   (:meth:`Outbox.find`), not a new sequence number.

Side effects outside the database must be idempotent on the message id for
the argument to hold; :meth:`Ledger.apply_once` passes the open connection so
callers can keep their effects inside the transaction instead.
"""


from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing_extensions import Self

from edgedfl.protocol.store import ACK_APPLIED, Store

__all__ = ["Outbox", "OutboxEntry", "OutboxPart"]

log = logging.getLogger("edgedfl.protocol.outbox")

@dataclasses.dataclass(frozen=True)
class OutboxPart:
    """One publish of a recorded message (a chunk, usually)."""

    topic: str
    payload: bytes
    retain: bool = False
    qos: int = 1


@dataclasses.dataclass(frozen=True)
class OutboxEntry:
    """A recorded outgoing message and its acknowledgement state."""

    message_id: str
    kind: str
    round: int
    slot: int
    seq: int
    created: float
    last_sent: float | None
    attempts: int
    parts: tuple[OutboxPart, ...]
    receivers: frozenset[str]
    #: receiver -> ack status (``ACK_*``), for every ack received (expected or not)
    acks: dict[str, str]

    @property
    def unacked(self) -> frozenset[str]:
        """Expected receivers that have not acknowledged yet."""
        return frozenset(r for r in self.receivers if r not in self.acks)

    @property
    def done(self) -> bool:
        return not self.unacked


class Outbox:
    """Outgoing messages recorded before publishing, until every receiver acks.

    Example::

        ob = Outbox(state_dir / "outbox.sqlite")
        seq = ob.next_seq()
        ob.record(mid, kind="update", round=3, slot=1, seq=seq, parts=parts, receivers={"b", "c"})
        ... publish parts, ob.mark_sent(mid) ...
        ob.mark_acked(mid, "b")          # on b's end-to-end ack
        ob.pending()                     # after a crash: what to send again
    """

    _schema = """
    CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS outbox (
        message_id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        round INTEGER NOT NULL,
        slot INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        created REAL NOT NULL,
        last_sent REAL,
        attempts INTEGER NOT NULL DEFAULT 0,
        abandoned INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX IF NOT EXISTS outbox_round ON outbox(kind, round, slot);
    CREATE TABLE IF NOT EXISTS outbox_parts (
        message_id TEXT NOT NULL REFERENCES outbox(message_id) ON DELETE CASCADE,
        idx INTEGER NOT NULL,
        topic TEXT NOT NULL,
        payload BLOB NOT NULL,
        retain INTEGER NOT NULL,
        qos INTEGER NOT NULL,
        PRIMARY KEY (message_id, idx)
    );
    CREATE TABLE IF NOT EXISTS outbox_receivers (
        message_id TEXT NOT NULL REFERENCES outbox(message_id) ON DELETE CASCADE,
        receiver TEXT NOT NULL,
        expected INTEGER NOT NULL,
        status TEXT,
        acked_at REAL,
        PRIMARY KEY (message_id, receiver)
    )
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._store = Store(path, self._schema)
        # when :meth:`due` may next find something, for the timings it was asked with: a node asks
        # every half second, and a query per ask is most of a thousand idle devices' CPU
        self._next_due = float("-inf")
        self._due_for: tuple[float, float] | None = None

    @property
    def path(self) -> Path:
        return self._store.path

    def get_meta(self, key: str) -> str | None:
        """A small persisted value (e.g. which receivers hold a mask)."""
        return self._store.get_meta(key)

    def set_meta(self, key: str, value: str) -> None:
        self._store.set_meta(key, value)

    def next_seq(self) -> int:
        """Allocate the next sequence number (persisted: never reused after a restart)."""
        with self._store._tx() as c:
            row = c.execute("SELECT value FROM meta WHERE key = 'next_seq'").fetchone()
            seq = int(row[0]) if row else 0
            c.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('next_seq', ?)", (str(seq + 1),))
        return seq

    def record(
        self,
        message_id: str,
        *,
        kind: str,
        round: int,
        slot: int,
        seq: int,
        parts: Iterable[OutboxPart],
        receivers: Iterable[str],
        now: float | None = None,
    ) -> bool:
        """Record a message before publishing it. Returns ``False`` if the id is already recorded.

        The recorded bytes are what every re-send publishes, so a message keeps
        its identity (and its receivers' dedupe works) across restarts.
        """
        parts = list(parts)
        created = time.time() if now is None else now
        self._next_due = float("-inf")  # a new message is due at once
        with self._store._tx() as c:
            if c.execute("SELECT 1 FROM outbox WHERE message_id = ?", (message_id,)).fetchone():
                return False
            c.execute(
                "INSERT INTO outbox(message_id, kind, round, slot, seq, created) VALUES (?, ?, ?, ?, ?, ?)",
                (message_id, kind, round, slot, seq, created),
            )
            c.executemany(
                "INSERT INTO outbox_parts(message_id, idx, topic, payload, retain, qos) VALUES (?, ?, ?, ?, ?, ?)",
                [(message_id, i, p.topic, p.payload, int(p.retain), p.qos) for i, p in enumerate(parts)],
            )
            c.executemany(
                "INSERT INTO outbox_receivers(message_id, receiver, expected) VALUES (?, ?, 1)",
                [(message_id, r) for r in sorted(set(receivers))],
            )
        return True

    def mark_sent(self, message_id: str, now: float | None = None) -> None:
        """Note one (re-)publish of every part of ``message_id``."""
        with self._store._tx() as c:
            c.execute(
                "UPDATE outbox SET last_sent = ?, attempts = attempts + 1 WHERE message_id = ?",
                (time.time() if now is None else now, message_id),
            )

    def mark_acked(
        self, message_id: str, receiver: str, status: str = ACK_APPLIED, now: float | None = None
    ) -> bool:
        """Record ``receiver``'s end-to-end ack. Returns ``True`` if it was new.

        Acks for unknown ids (a message already expired, or not ours) are
        ignored; acks from receivers nobody expected are kept but change nothing.
        """
        at = time.time() if now is None else now
        with self._store._tx() as c:
            if not c.execute("SELECT 1 FROM outbox WHERE message_id = ?", (message_id,)).fetchone():
                return False
            row = c.execute(
                "SELECT status FROM outbox_receivers WHERE message_id = ? AND receiver = ?",
                (message_id, receiver),
            ).fetchone()
            if row is None:
                c.execute(
                    "INSERT INTO outbox_receivers(message_id, receiver, expected, status, acked_at)"
                    " VALUES (?, ?, 0, ?, ?)",
                    (message_id, receiver, status, at),
                )
                return True
            if row[0] is not None:
                return False
            c.execute(
                "UPDATE outbox_receivers SET status = ?, acked_at = ? WHERE message_id = ? AND receiver = ?",
                (status, at, message_id, receiver),
            )
            return True

    def get(self, message_id: str) -> OutboxEntry | None:
        entries = self._load("o.message_id = ?", (message_id,))
        return entries[0] if entries else None

    def find(self, kind: str, round: int, slot: int) -> OutboxEntry | None:
        """The recorded message of this kind for (round, slot), if any (oldest first)."""
        entries = self._load("o.kind = ? AND o.round = ? AND o.slot = ?", (kind, round, slot))
        return entries[0] if entries else None

    def pending(self, *, with_parts: bool = True) -> list[OutboxEntry]:
        """Messages some expected receiver has not acknowledged, oldest first.

        ``with_parts=False`` leaves :attr:`OutboxEntry.parts` empty (cheap: no chunk bytes read).
        """
        return [e for e in self._load("o.abandoned = 0", (), with_parts=with_parts) if not e.done]

    def due(self, now: float, ack_timeout_s: float, max_backoff_s: float = 60.0) -> list[OutboxEntry]:
        """Pending messages whose last send is older than their (exponential) ack timeout.

        Never-sent entries (recorded, then a crash before the publish) are due at once.
        """
        if self._due_for == (ack_timeout_s, max_backoff_s) and now < self._next_due:
            return []  # nothing recorded since the last look, and nothing's wait has run out yet
        ids: list[str] = []
        next_due = float("inf")
        # Decide on the small rows first; load the (large) chunk bytes only of what is due.
        for e in self.pending(with_parts=False):
            if e.last_sent is None:
                ids.append(e.message_id)
                continue
            wait = min(ack_timeout_s * (2 ** max(0, e.attempts - 1)), max(max_backoff_s, ack_timeout_s))
            if now - e.last_sent >= wait:
                ids.append(e.message_id)
            else:
                next_due = min(next_due, e.last_sent + wait)
        if ids:  # re-sent by the caller now (or, with no link, tried again within a second)
            next_due = min(next_due, now + min(ack_timeout_s, 1.0))
        self._due_for, self._next_due = (ack_timeout_s, max_backoff_s), next_due
        return [e for e in (self.get(i) for i in ids) if e is not None]

    def expire(self, before_round: int, kind: str | None = "update") -> int:
        """Stop re-sending messages (of ``kind``; all if None) of rounds before ``before_round``.

        Returns how many were abandoned.

        Their receivers would reject them as stale anyway; a receiver that is
        dead would otherwise be re-sent to forever. Rows are kept (marked
        abandoned) so :meth:`find` still answers and a seq is never reused.
        """
        with self._store._tx() as c:
            cur = c.execute(
                "UPDATE outbox SET abandoned = 1 WHERE round < ? AND abandoned = 0 AND (? IS NULL OR kind = ?)",
                (before_round, kind, kind),
            )
            return cur.rowcount

    def _load(self, where: str, args: tuple[object, ...], *, with_parts: bool = True) -> list[OutboxEntry]:
        rows = self._store._query(
            "SELECT o.message_id, o.kind, o.round, o.slot, o.seq, o.created, o.last_sent, o.attempts"
            f" FROM outbox o WHERE {where} ORDER BY o.created, o.seq",
            args,
        )
        out = []
        for mid, kind, rnd, slot, seq, created, last_sent, attempts in rows:
            parts = (
                tuple(
                    OutboxPart(str(t), bytes(p), bool(r), int(q))
                    for t, p, r, q in self._store._query(
                        "SELECT topic, payload, retain, qos FROM outbox_parts WHERE message_id = ? ORDER BY idx",
                        (mid,),
                    )
                )
                if with_parts
                else ()
            )
            recv = self._store._query(
                "SELECT receiver, expected, status FROM outbox_receivers WHERE message_id = ?", (mid,)
            )
            out.append(
                OutboxEntry(
                    message_id=str(mid),
                    kind=str(kind),
                    round=int(rnd),
                    slot=int(slot),
                    seq=int(seq),
                    created=float(created),
                    last_sent=None if last_sent is None else float(last_sent),
                    attempts=int(attempts),
                    parts=parts,
                    receivers=frozenset(str(r) for r, exp, _ in recv if exp),
                    acks={str(r): str(s) for r, _, s in recv if s is not None},
                )
            )
        return out

    def close(self) -> None:
        self._store.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


