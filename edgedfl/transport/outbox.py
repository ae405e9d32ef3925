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
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = [
    "ACK_APPLIED",
    "ACK_DUPLICATE",
    "ACK_REJECTED",
    "ACK_STALE",
    "AppliedRecord",
    "Ledger",
    "Outbox",
    "OutboxEntry",
    "OutboxPart",
    "open_db",
]

log = logging.getLogger("edgedfl.transport.outbox")

T = TypeVar("T")

# Ack statuses a receiver can report. Every one of them stops re-sending to
# that receiver: applied/duplicate mean it has the update, stale and rejected
# mean sending the same bytes again could not change the answer.
ACK_APPLIED = "applied"
ACK_DUPLICATE = "duplicate"
ACK_STALE = "stale"
ACK_REJECTED = "rejected"


def open_db(path: str | os.PathLike[str]) -> sqlite3.Connection:
    """Open (creating) a SQLite file in WAL mode with ``synchronous=FULL``.

    ``isolation_level=None`` so transactions are explicit (``BEGIN IMMEDIATE``)
    and nothing commits behind our back.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(p), isolation_level=None, check_same_thread=False, timeout=30.0)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


class _Store:
    """A SQLite connection with a lock and explicit write transactions."""

    def __init__(self, path: str | os.PathLike[str], schema: str) -> None:
        self.path = Path(path)
        self._conn = open_db(self.path)
        # The protocol owner and a resend timer may share one store.
        self._lock = threading.RLock()
        self._closed = False
        with self._tx() as c:
            for stmt in schema.split(";"):
                if stmt.strip():
                    c.execute(stmt)

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; commits on success, rolls back on any exception."""
        with self._lock:
            if self._closed:
                raise ValueError(f"{type(self).__name__} at {self.path} is closed")
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            else:
                self._conn.execute("COMMIT")

    def _query(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            if self._closed:
                raise ValueError(f"{type(self).__name__} at {self.path} is closed")
            return list(self._conn.execute(sql, args).fetchall())

    def get_meta(self, key: str, default: str | None = None) -> str | None:
        rows = self._query("SELECT value FROM meta WHERE key = ?", (key,))
        return str(rows[0][0]) if rows else default

    def set_meta(self, key: str, value: str) -> None:
        with self._tx() as c:
            c.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    def close(self) -> None:
        """Close the connection. Idempotent. Whatever was committed is on disk."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._conn.close()


# --- outbox -------------------------------------------------------------------


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
        self._store = _Store(path, self._schema)

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
        ids: list[str] = []
        # Decide on the small rows first; load the (large) chunk bytes only of what is due.
        for e in self.pending(with_parts=False):
            if e.last_sent is None:
                ids.append(e.message_id)
                continue
            wait = min(ack_timeout_s * (2 ** max(0, e.attempts - 1)), max(max_backoff_s, ack_timeout_s))
            if now - e.last_sent >= wait:
                ids.append(e.message_id)
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


# --- inbox ledger -------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class AppliedRecord:
    """One applied message as the ledger remembers it."""

    message_id: str
    sender: str
    round: int
    slot: int
    seq: int
    kind: str
    applied_at: float
    payload: bytes | None


class Ledger:
    """The receiver's persisted record of applied messages, closed rounds and its current round.

    ``apply_once`` is the only way a message is applied: the id check, the
    application and the id insert happen in one ``BEGIN IMMEDIATE``
    transaction (see the module docstring for why that gives exactly-once).
    """

    _schema = """
    CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS applied (
        message_id TEXT PRIMARY KEY,
        sender TEXT NOT NULL,
        round INTEGER NOT NULL,
        slot INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        kind TEXT NOT NULL,
        applied_at REAL NOT NULL,
        payload BLOB
    );
    CREATE INDEX IF NOT EXISTS applied_round ON applied(kind, round, slot);
    CREATE UNIQUE INDEX IF NOT EXISTS applied_key ON applied(sender, round, seq);
    CREATE TABLE IF NOT EXISTS closed_rounds (
        round INTEGER NOT NULL,
        slot INTEGER NOT NULL,
        closed_at REAL NOT NULL,
        PRIMARY KEY (round, slot)
    )
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._store = _Store(path, self._schema)

    @property
    def path(self) -> Path:
        return self._store.path

    def is_applied(self, message_id: str) -> bool:
        return bool(self._store._query("SELECT 1 FROM applied WHERE message_id = ?", (message_id,)))

    def apply_once(
        self,
        message_id: str,
        fn: Callable[[sqlite3.Connection], T] | None = None,
        *,
        sender: str,
        round: int,
        slot: int,
        seq: int,
        kind: str = "update",
        payload: bytes | None = None,
        now: float | None = None,
    ) -> tuple[bool, T | None]:
        """Apply ``message_id`` unless it already was; returns ``(applied_now, fn's result)``.

        ``fn`` runs inside the transaction with the connection, so effects it
        writes to this database commit or vanish together with the id. If it
        raises, nothing is recorded and the exception propagates (the message
        stays un-applied, un-acked, and will be offered again).
        ``payload`` (the accepted bytes) is stored with the id: for updates,
        storing them *is* the application.
        """
        at = time.time() if now is None else now
        with self._store._tx() as c:
            if c.execute("SELECT 1 FROM applied WHERE message_id = ?", (message_id,)).fetchone():
                return False, None
            result = fn(c) if fn is not None else None
            c.execute(
                "INSERT INTO applied(message_id, sender, round, slot, seq, kind, applied_at, payload)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (message_id, sender, round, slot, seq, kind, at, payload),
            )
            return True, result

    def applied(
        self,
        *,
        kind: str = "update",
        round: int | None = None,
        slot: int | None = None,
        with_payload: bool = True,
    ) -> list[AppliedRecord]:
        """Applied messages, optionally for one round / slot, in application order."""
        where: list[str] = ["kind = ?"]
        args: list[object] = [kind]
        if round is not None:
            where.append("round = ?")
            args.append(round)
        if slot is not None:
            where.append("slot = ?")
            args.append(slot)
        rows = self._store._query(
            "SELECT message_id, sender, round, slot, seq, kind, applied_at,"
            f" {'payload' if with_payload else 'NULL'} FROM applied"
            f" WHERE {' AND '.join(where)} ORDER BY applied_at, rowid",
            tuple(args),
        )
        return [
            AppliedRecord(
                message_id=str(m),
                sender=str(s),
                round=int(r),
                slot=int(sl),
                seq=int(q),
                kind=str(k),
                applied_at=float(a),
                payload=None if p is None else bytes(p),
            )
            for m, s, r, sl, q, k, a, p in rows
        ]

    def close_round(self, round: int, slot: int, now: float | None = None) -> None:
        """Mark (round, slot) closed: later updates for it are stale. Idempotent."""
        with self._store._tx() as c:
            c.execute(
                "INSERT OR IGNORE INTO closed_rounds(round, slot, closed_at) VALUES (?, ?, ?)",
                (round, slot, time.time() if now is None else now),
            )

    def is_closed(self, round: int, slot: int) -> bool:
        return bool(
            self._store._query("SELECT 1 FROM closed_rounds WHERE round = ? AND slot = ?", (round, slot))
        )

    @property
    def current_round(self) -> int:
        """The highest round this node has started (persisted; -1 before the first)."""
        return int(self._store.get_meta("current_round", "-1") or "-1")

    def advance_round(self, round: int) -> int:
        """Raise the current round to ``round`` (never lowers it); returns the current round."""
        with self._store._tx() as c:
            row = c.execute("SELECT value FROM meta WHERE key = 'current_round'").fetchone()
            cur = int(row[0]) if row else -1
            if round > cur:
                c.execute(
                    "INSERT OR REPLACE INTO meta(key, value) VALUES ('current_round', ?)", (str(round),)
                )
                cur = round
        return cur

    def close(self) -> None:
        self._store.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
