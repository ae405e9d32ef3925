"""The emulator's live line: a token per device for a few, counts for a fleet."""

from __future__ import annotations

from edgedfl.cli.emulate import LIVE_PER_DEVICE, live_line


def test_a_few_devices_are_named_one_by_one() -> None:
    rows = [{"node": f"dev{i:02d}", "state": "training", "round": 1, "bytes": 1000} for i in range(4)]
    line = live_line(rows, 12.0, rounds=3)
    assert all(f"dev{i:02d}:training@r1" in line for i in range(4)) and "0.00 MB" in line


def test_a_fleet_is_counted_per_state_and_round_with_a_bar() -> None:
    rows = ([{"node": f"dev{i:03d}", "state": "training", "round": 2, "bytes": 10_000} for i in range(600)]
            + [{"node": f"dev{i:03d}", "state": "collecting", "round": 1, "bytes": 10_000} for i in range(600, 990)]
            + [{"node": f"dev{i:03d}", "state": "done", "round": 3, "bytes": 10_000} for i in range(990, 1000)])
    line = live_line(rows, 99.0, rounds=4)
    assert "1000 devices" in line and "training:600" in line and "collecting:390" in line and "done:10" in line
    assert "r1:390" in line and "r2:600" in line and "r3:10" in line
    assert "dev0" not in line and "@r" not in line  # no token per device
    bar = line[line.index("[", 2) + 1 : line.index("]", line.index("[", 2))]
    assert bar == "#" * 5 + "." * 15  # the slowest device is in round 1 of 4
    assert "10.00 MB" in line and len(line) < 200
    assert len(rows) > LIVE_PER_DEVICE
