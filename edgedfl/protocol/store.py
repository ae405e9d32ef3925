"""The SQLite store under the outbox and the ledger, and the ack statuses they share.

See :mod:`edgedfl.protocol.outbox` for why delivery is exactly-once.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["ACK_APPLIED", "ACK_DUPLICATE", "ACK_REJECTED", "ACK_STALE", "ACK_STATUSES", "Store", "open_db"]

log = logging.getLogger("edgedfl.protocol.store")

T = TypeVar("T")

# Ack statuses a receiver can report. Every one of them stops re-sending to
# that receiver: applied/duplicate mean it has the update, stale and rejected
# mean sending the same bytes again could not change the answer.
ACK_APPLIED = "applied"
ACK_DUPLICATE = "duplicate"
ACK_STALE = "stale"
ACK_REJECTED = "rejected"
ACK_STATUSES = (ACK_APPLIED, ACK_DUPLICATE, ACK_STALE, ACK_REJECTED)


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


class Store:
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
