"""The neighbour protocol through a real Mosquitto: crashes of the broker and of a publisher.

A SIGKILLed Mosquitto loses QoS 1 messages it had already acknowledged
(RECIPES.md), so broker-level QoS is not enough: these tests check that the
outbox + end-to-end acks + ledger give exactly-once application anyway.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import numpy as np
import pytest
from proto_helpers import SWARM, pump, tensors
from publisher_proc import update_for

from edgedfl.brokers.launch import MosquittoBroker, write_acl, write_password_file
from edgedfl.protocol import NeighbourProtocol, ProtocolConfig

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CONFIG = ProtocolConfig(ack_timeout_s=0.3, max_backoff_s=1.0, chunk_bytes=16 * 1024)


def make_node(
    broker: MosquittoBroker, tmp_path: Path, name: str, slots: tuple[int, ...] = ()
) -> NeighbourProtocol:
    t = broker.client(
        name,
        will=NeighbourProtocol.will_message(SWARM, name),
        reconnect_min=0.1,
        reconnect_max=0.5,
        connect_timeout=5.0,
        publish_timeout=2.0,
    )
    p = NeighbourProtocol(t, SWARM, name, state_dir=tmp_path / name, slots=slots, config=CONFIG)
    p.start()
    return p


@pytest.fixture
def nodes() -> Iterator[list[NeighbourProtocol]]:
    made: list[NeighbourProtocol] = []
    try:
        yield made
    finally:
        for n in made:
            n.close()


def crash(node: NeighbourProtocol) -> None:
    """Drop the link without DISCONNECT and cut the SQLite files, as a power cut would."""
    node.transport.abort()  # type: ignore[attr-defined]
    node.outbox._store._conn.close()
    node.ledger._store._conn.close()
    node._closed = True


def test_mosquitto_sigkill_mid_round_every_update_applied_exactly_once(
    mosquitto: MosquittoBroker, tmp_path: Path, nodes: list[NeighbourProtocol]
) -> None:
    # Prepare: one receiver following slots 0..3, three senders
    slots = (0, 1, 2, 3)
    senders = ["s1", "s2", "s3"]
    recv = make_node(mosquitto, tmp_path, "r", slots)
    nodes.append(recv)
    for s in senders:
        nodes.append(make_node(mosquitto, tmp_path, s))
    sent: dict[tuple[str, int], dict[str, np.ndarray]] = {
        (s, k): tensors(10 * i + k, (96, 64)) for i, s in enumerate(senders) for k in slots
    }
    by_name = {n.node: n for n in nodes}

    # Execute: the first half of the round goes out and starts arriving ...
    for (s, k), upd in sent.items():
        if k < 2:
            by_name[s].publish_update(0, k, upd, receivers=["r"])
    pump(nodes, lambda: len(recv.round_updates(0, 0)) >= 1, timeout=20)
    # ... then the receiver goes down (the broker queues for its persistent session),
    # the second half is published and PUBACKed, and the broker is SIGKILLed.
    crash(recv)
    for (s, k), upd in sent.items():
        if k >= 2:
            by_name[s].publish_update(0, k, upd, receivers=["r"])
    # SIGKILL before the next autosave: the queued, already PUBACKed second half is lost
    # (observed: every sender re-sends slots 2 and 3 once, and the receiver sees no duplicate).
    mosquitto.kill()
    for s in senders:  # a retry while the broker is down goes nowhere and is not counted
        by_name[s].resend_due()
    mosquitto.restart()
    recv = make_node(mosquitto, tmp_path, "r", slots)
    nodes[0] = recv
    live = [recv, *(by_name[s] for s in senders)]
    pump(live, lambda: all(not by_name[s].pending() for s in senders), timeout=60)
    results = [recv.collect_round(0, k, senders, quorum=3, deadline_s=10) for k in slots]

    # Assert: every update applied exactly once (ledger), none lost, values intact
    applied = recv.ledger.applied(kind="update")
    keys = [(r.sender, r.slot) for r in applied]
    assert sorted(keys) == sorted(sent)  # each (sender, slot) once: nothing lost, nothing twice
    assert len({r.message_id for r in applied}) == len(applied) == 12
    for res in results:
        assert res.complete
        for s, got in res.updates.items():
            np.testing.assert_allclose(
                got.tensors["layers.0.q.B"], sent[(s, res.slot)]["layers.0.q.B"], atol=3e-3
            )


def _read_until(stream: IO[str], marker: str) -> list[str]:
    lines = []
    for line in stream:
        lines.append(line.strip())
        if line.strip() == marker:
            return lines
    raise AssertionError(f"process ended before printing {marker!r}: {lines}")


def test_sigkilled_publisher_process_resends_from_its_outbox(
    mosquitto: MosquittoBroker, tmp_path: Path, nodes: list[NeighbourProtocol]
) -> None:
    # Prepare: a receiver here, a publisher in another process that we SIGKILL mid-way
    rounds = 8
    recv = make_node(mosquitto, tmp_path, "r", (0,))
    nodes.append(recv)
    script = Path(__file__).with_name("publisher_proc.py")
    cmd = [sys.executable, str(script), mosquitto.url, str(tmp_path / "pub"), "pub", "r", str(rounds)]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(Path.cwd()), os.environ.get("PYTHONPATH")])),
    }

    # Execute: kill -9 after the third update went out, then start it again on the same outbox
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    _read_until(proc.stdout, "published 2")
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    proc2 = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc2.stdout is not None
        done = False
        while not done:
            recv.poll(0.05)
            done = proc2.poll() is not None
        assert proc2.returncode == 0, proc2.stdout.read()
        pump([recv], lambda: len(recv.ledger.applied(kind="update")) >= rounds, timeout=10)
    finally:
        if proc2.poll() is None:
            proc2.kill()
            proc2.wait()

    # Assert: every round's update applied exactly once, values intact
    applied = recv.ledger.applied(kind="update")
    assert sorted(r.round for r in applied) == list(range(rounds))
    for r in range(rounds):
        [upd] = recv.round_updates(r, 0).values()
        np.testing.assert_allclose(upd.tensors["b"], update_for("pub", r)["b"], atol=3e-3)


def test_protocol_runs_under_the_swarm_acl_and_mosquitto_sub_reads_presence(tmp_path: Path) -> None:
    # Prepare: Mosquitto with passwords and the ACL where each node writes only its own topics
    if shutil.which("mosquitto_passwd") is None or shutil.which("mosquitto_sub") is None:
        pytest.skip("mosquitto_passwd / mosquitto_sub not installed")
    users = {"na": "pw-a", "nb": "pw-b"}
    pw = write_password_file(tmp_path / "passwd", users)
    acl = write_acl(tmp_path / "acl", SWARM, list(users))
    with MosquittoBroker(workdir=tmp_path / "broker", password_file=pw, acl_file=acl) as broker:
        made = []
        for name, secret in users.items():
            t = broker.client(
                name,
                username=name,
                password=secret,
                will=NeighbourProtocol.will_message(SWARM, name),
                connect_timeout=5.0,
                publish_timeout=5.0,
            )
            p = NeighbourProtocol(t, SWARM, name, state_dir=tmp_path / name, slots=(0,), config=CONFIG)
            p.start()
            made.append(p)
        a, b = made
        try:
            # Execute: hello, an update and its ack, all on each node's own topics (MQTT 5: a denial would raise)
            a.publish_hello({"device": "laptop"}, np.ones(4, np.float32))
            a.publish_update(0, 0, tensors(1), receivers=["nb"])
            pump([a, b], lambda: not a.pending() and "na" in b.peers and b.peers["na"].signature is not None)
            assert set(b.round_updates(0, 0)) == {"na"}
            out = subprocess.run(
                [
                    "mosquitto_sub",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(broker.port),
                    "-u",
                    "na",
                    "-P",
                    "pw-a",
                    "-t",
                    f"edgedfl/{SWARM}/presence/+",
                    "-t",
                    f"edgedfl/{SWARM}/hello/+",
                    "-v",
                    "-C",
                    "3",
                    "-W",
                    "5",
                ],
                capture_output=True,
                timeout=20,
                check=True,
            ).stdout
        finally:
            for p in made:
                p.close()
    # Assert
    assert a.remote_errors == []  # nb acked "applied" (a.pending() emptied) and nothing was refused
    lines = out.split(b"\n")
    assert f"edgedfl/{SWARM}/presence/na online".encode() in lines
    assert f"edgedfl/{SWARM}/presence/nb online".encode() in lines
    hello = next(line for line in lines if line.startswith(f"edgedfl/{SWARM}/hello/na ".encode()))
    assert b"EDFL" in hello and b'"profile":"{\\"device\\":\\"laptop\\"}"' in hello
