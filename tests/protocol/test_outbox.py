"""The SQLite outbox and inbox ledger: persistence across a crash, acks, apply-once."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from edgedfl.protocol.ledger import Ledger
from edgedfl.protocol.outbox import Outbox, OutboxPart
from edgedfl.protocol.store import ACK_APPLIED, ACK_STALE


def _parts(n: int = 2) -> list[OutboxPart]:
    return [OutboxPart("edgedfl/s/update/0/a", bytes([i]) * 10) for i in range(n)]


def test_pragmas_are_durable(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.sqlite")
    conn = ob._store._conn
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    ob.close()


def test_pending_survives_a_crash(tmp_path: Path) -> None:
    # Prepare: record two messages, ack one receiver of the first only
    path = tmp_path / "o.sqlite"
    ob = Outbox(path)
    ob.record(
        "a/0/0", kind="update", round=0, slot=0, seq=ob.next_seq(), parts=_parts(), receivers={"b", "c"}
    )
    ob.record("a/0/1", kind="update", round=0, slot=1, seq=ob.next_seq(), parts=_parts(3), receivers={"b"})
    ob.mark_sent("a/0/0")
    ob.mark_acked("a/0/0", "b")
    # Execute: "crash": drop the connection without any clean-up, reopen
    ob._store._conn.close()
    ob2 = Outbox(path)
    pend = {e.message_id: e for e in ob2.pending()}
    # Assert
    assert set(pend) == {"a/0/0", "a/0/1"}
    assert pend["a/0/0"].unacked == {"c"}
    assert pend["a/0/0"].attempts == 1
    assert [p.payload for p in pend["a/0/1"].parts] == [p.payload for p in _parts(3)]
    assert ob2.next_seq() == 2  # sequence numbers are never reused
    ob2.mark_acked("a/0/0", "c")
    ob2.mark_acked("a/0/1", "b", ACK_STALE)
    assert ob2.pending() == []
    ob2.close()


def test_record_is_idempotent_and_find(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.sqlite") as ob:
        assert ob.record("m", kind="update", round=3, slot=2, seq=0, parts=_parts(), receivers={"x"})
        assert not ob.record("m", kind="update", round=3, slot=2, seq=0, parts=_parts(), receivers={"y"})
        found = ob.find("update", 3, 2)
        assert found is not None and found.message_id == "m" and found.receivers == {"x"}
        assert ob.find("update", 3, 1) is None


def test_ack_bookkeeping(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.sqlite") as ob:
        ob.record("m", kind="update", round=0, slot=0, seq=0, parts=_parts(), receivers={"b"})
        assert ob.mark_acked("m", "b")
        assert not ob.mark_acked("m", "b")  # a duplicate ack changes nothing
        assert ob.mark_acked("m", "zed")  # unexpected receiver: kept, harmless
        assert not ob.mark_acked("unknown", "b")
        entry = ob.get("m")
        assert entry is not None and entry.done and entry.acks == {"b": ACK_APPLIED, "zed": ACK_APPLIED}


def test_due_backs_off_and_expire(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.sqlite") as ob:
        ob.record("m", kind="update", round=1, slot=0, seq=0, parts=_parts(), receivers={"b"}, now=0.0)
        assert [e.message_id for e in ob.due(0.0, ack_timeout_s=1.0)] == ["m"]  # never sent: due now
        ob.mark_sent("m", now=10.0)
        assert ob.due(10.5, 1.0) == []
        assert len(ob.due(11.0, 1.0)) == 1
        ob.mark_sent("m", now=11.0)
        assert ob.due(12.5, 1.0) == []  # second wait is 2 s
        assert len(ob.due(13.0, 1.0)) == 1
        assert ob.expire(before_round=1) == 0
        assert ob.expire(before_round=2) == 1
        assert ob.pending() == [] and ob.find("update", 1, 0) is not None


def test_apply_once_is_atomic(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite"
    led = Ledger(path)
    led._store._conn.execute("CREATE TABLE IF NOT EXISTS model (k TEXT PRIMARY KEY, v INTEGER)")
    led._store._conn.execute("INSERT INTO model VALUES ('sum', 0)")

    def add(n: int) -> Callable[[sqlite3.Connection], int]:
        def fn(c: sqlite3.Connection) -> int:
            c.execute("UPDATE model SET v = v + ?", (n,))
            return n

        return fn

    assert led.apply_once("b/0/0", add(5), seq=0, sender="b", round=0, slot=0) == (True, 5)
    assert led.apply_once("b/0/0", add(5), seq=0, sender="b", round=0, slot=0) == (False, None)

    def boom(c: sqlite3.Connection) -> None:
        c.execute("UPDATE model SET v = v + 100")
        raise RuntimeError("crash mid-apply")

    with pytest.raises(RuntimeError):
        led.apply_once("b/0/1", boom, seq=1, sender="b", round=0, slot=0)
    assert not led.is_applied("b/0/1")
    led._store._conn.close()  # crash

    led2 = Ledger(path)
    assert led2._store._conn.execute("SELECT v FROM model").fetchone()[0] == 5
    assert led2.is_applied("b/0/0")
    assert led2.apply_once("b/0/1", add(1), seq=1, sender="b", round=0, slot=0) == (True, 1)
    assert [r.message_id for r in led2.applied(round=0, slot=0)] == ["b/0/0", "b/0/1"]
    led2.close()


def test_ledger_rounds(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite"
    with Ledger(path) as led:
        assert led.current_round == -1
        assert led.advance_round(4) == 4
        assert led.advance_round(2) == 4
        led.close_round(3, 1)
        led.close_round(3, 1)
        led.apply_once("x/3/0", sender="x", round=3, slot=1, seq=0, payload=b"abc")
    with Ledger(path) as led:
        assert led.current_round == 4 and led.is_closed(3, 1) and not led.is_closed(3, 0)
        [rec] = led.applied(round=3)
        assert rec.payload == b"abc" and rec.sender == "x"
