"""The receiver's ledger: applied message ids, accepted update bytes, closed rounds, the current round.

See :mod:`edgedfl.protocol.outbox` for the exactly-once argument it is half of.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from typing_extensions import Self

from edgedfl.protocol.store import Store

__all__ = ["AppliedRecord", "Ledger"]

T = TypeVar("T")

log = logging.getLogger("edgedfl.protocol.ledger")

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
        self._store = Store(path, self._schema)

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
