"""The metrics message: its format, the dashboard's checks at the door, and a hostile paho client on Mosquitto."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edgedfl.brokers.launch import acl_text
from edgedfl.dashboard.view import SwarmView
from edgedfl.errors import MalformedMessage
from edgedfl.protocol.endpoint import NeighbourProtocol
from edgedfl.protocol.topics import Topics
from edgedfl.transport.memory import MemoryHub, MemoryTransport
from edgedfl.wire.envelope import Envelope, decode_envelope, encode_envelope
from edgedfl.wire.metrics import DeviceMetrics, decode_metrics, encode_metrics
from edgedfl.wire.signing import KeyRing, Signer

SWARM = "lab"
ROOT = Path(__file__).resolve().parents[2]


def _metrics(**kw: object) -> DeviceMetrics:
    m = DeviceMetrics(state="training", round=2, slot=1, task="topic", profile="laptop", loss=1.25, accuracy=0.5,
                      bytes_sent=1000, bytes_received=2000, memory_bytes=10**9, step_ms=120.0, restarts=1,
                      experts=[1], lora_update_bytes=4096, time=1.7e9, links={"dev01": (300, 400)},
                      rejects={"SignatureError": 2}, history=[(0, 2.0, 0.1, 500), (1, 1.5, 0.3, 250)],
                      routing={"topic": {1: 7, 0: 1}})
    return dataclasses.replace(m, **kw)  # type: ignore[arg-type]


def _signed(signer: Signer | None, m: DeviceMetrics, *, sender: str = "dev00", seq: int = 1,
            swarm: str = SWARM) -> bytes:
    env = Envelope("metrics", swarm, sender, round=m.round, seq=seq, meta=encode_metrics(m))
    return encode_envelope(env, signer)


def _hello(signer: Signer, node: str) -> bytes:
    meta = {"profile": json.dumps({"profile": "laptop"}), "key": signer.public_bytes().hex()}
    return encode_envelope(Envelope("hello", SWARM, node, meta=meta), signer)


# -- the format -------------------------------------------------------------------------------


def test_metrics_round_trip_through_a_signed_envelope() -> None:
    signer = Signer.from_seed(bytes(range(32)))
    m = _metrics()
    env = decode_envelope(_signed(signer, m), keyring=KeyRing.of(signer))
    assert env.kind == "metrics" and env.body == b""
    assert decode_metrics(env) == m


def test_non_finite_numbers_travel_as_null_and_long_history_is_trimmed() -> None:
    m = _metrics(loss=math.nan, history=[(r, 1.0, 0.5, 10**9) for r in range(2000)])
    got = decode_metrics(Envelope("metrics", SWARM, "dev00", meta=encode_metrics(m)))
    assert got.loss is None
    assert 0 < len(got.history) < 2000 and got.history[-1][0] == 1999  # the newest rows kept


@pytest.mark.parametrize("change", [
    {"status": "{not json"},
    {"status": json.dumps({"state": "x"})},  # keys missing
    {"links": json.dumps({"dev/01": [1, 2]})},  # a peer name the topic tree forbids
    {"links": json.dumps({"dev01": [-1, 2]})},
    {"rejects": json.dumps({"Sig Error": 1})},
    {"history": json.dumps([[1, "NaN", 0.5, 3]])},
    {"history": json.dumps([[1, 1.0, 1.5, 3]])},  # accuracy above 1
    {"routing": json.dumps({"topic": {"x": 1}})},
    {"codec": "metrics/2"},
    {"extra": "1"},
])
def test_malformed_metrics_are_refused(change: dict[str, str]) -> None:
    meta = {**encode_metrics(_metrics()), **change}
    with pytest.raises(MalformedMessage):
        decode_metrics(Envelope("metrics", SWARM, "dev00", meta=meta))


def test_status_numbers_are_checked() -> None:
    meta = encode_metrics(_metrics())
    status = json.loads(meta["status"])
    for key, bad in (("round", -1), ("accuracy", 2.0), ("bytes_sent", 1.5), ("loss", 1e999), ("experts", "1")):
        broken = {**meta, "status": json.dumps({**status, key: bad})}
        with pytest.raises(MalformedMessage):
            decode_metrics(Envelope("metrics", SWARM, "dev00", meta=broken))


def test_metrics_topic_and_acl() -> None:
    t = Topics(SWARM)
    assert t.metrics("dev00") == "edgedfl/lab/metrics/dev00"
    parsed = t.parse("edgedfl/lab/metrics/dev00")
    assert (parsed.kind, parsed.node) == ("metrics", "dev00")
    assert "topic write edgedfl/lab/metrics/a\n" in acl_text(SWARM, ["a"])


def test_a_node_ignores_metrics_topics() -> None:
    # Prepare: a node's endpoint that (unlike a real node) follows the whole swarm, and a stranger
    hub = MemoryHub()
    node = NeighbourProtocol(MemoryTransport(hub, "dev01"), SWARM, "dev01")
    node.start()
    node.transport.subscribe(node.topics.everything())
    stranger = MemoryTransport(hub, "stranger")
    # Execute: garbage and a real-looking status on metrics topics
    for payload in (b"\x00garbage", _signed(None, _metrics()), b""):
        stranger.publish(Topics(SWARM).metrics("dev00"), payload)
    node.poll(0.5)
    # Assert: nothing raised, nothing counted against anyone
    assert sum(node.rejects.values()) == 0
    node.close()


# -- the dashboard's checks at the door ------------------------------------------------------------


def test_view_accepts_signed_and_counts_the_rest() -> None:
    a, b = Signer.from_seed(bytes(32)), Signer.from_seed(bytes([1]) * 32)
    ring = KeyRing()
    ring.add(a.key_id, a.public_bytes(), senders=["dev00"])
    ring.add(b.key_id, b.public_bytes(), senders=["dev01"])
    view = SwarmView(SWARM, admission="keyring", keyring=ring)
    topic = Topics(SWARM).metrics("dev00")

    view.handle(topic, _signed(a, _metrics(), seq=5))  # good
    view.handle(topic, _signed(None, _metrics(), seq=6))  # unsigned
    view.handle(topic, _signed(b, _metrics(), sender="dev01", seq=7))  # dev01's message on dev00's topic
    view.handle(topic, _signed(b, _metrics(), seq=8))  # dev01's key claiming to be dev00
    view.handle(topic, _signed(a, _metrics(), seq=9, swarm="other"))  # another swarm
    view.handle(topic, b"EDFL\x01\x00\x00\x00\x00\x05{bad}")  # malformed
    view.handle(topic, _signed(a, _metrics(state="replayed"), seq=4))  # an older status
    view.handle("edgedfl/lab/metrics/a/b", b"x")  # not a topic of the tree
    view.handle(topic, _signed(a, _metrics(), seq=5))  # the same again (QoS 1): silently the same

    snap = view.snapshot()
    assert [d["node"] for d in snap["devices"]] == ["dev00"]
    assert snap["devices"][0]["state"] == "training" and snap["devices"][0]["round"] == 2
    assert snap["refused"] == {"InvalidTopic": 1, "MalformedMessage": 3, "SignatureError": 2, "StaleRound": 1}
    assert snap["refused_total"] == 7


def test_tofu_pins_from_the_hello_and_judges_early_metrics_again() -> None:
    a, mallory = Signer.from_seed(bytes(32)), Signer.from_seed(bytes([9]) * 32)
    view = SwarmView(SWARM)  # tofu
    t = Topics(SWARM)
    view.handle(t.metrics("dev00"), _signed(a, _metrics(), seq=1))  # before its hello: parked
    assert view.snapshot()["devices"] == []
    view.handle(t.hello("dev00"), _hello(a, "dev00"))
    assert [d["node"] for d in view.snapshot()["devices"]] == ["dev00"]
    assert sum(view.refused.values()) == 0  # the early refusal was taken back
    view.handle(t.hello("dev00"), _hello(mallory, "dev00"))  # another key for dev00
    view.handle(t.metrics("dev00"), _signed(mallory, _metrics(state="forged"), seq=2))
    snap = view.snapshot()
    assert snap["devices"][0]["state"] == "training"
    assert snap["refused"] == {"KeyChanged": 1, "UnknownSigner": 1}


# -- a hostile client on a real Mosquitto, a live dashboard -------------------------------------------------


def _publish_all(url: str, messages: list[tuple[str, bytes, bool]]) -> None:
    """A stranger written with paho alone: publish and wait for every PUBACK."""
    parts = urllib.parse.urlsplit(url)
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="stranger")
    c.connect(parts.hostname or "127.0.0.1", int(parts.port or 1883))
    c.loop_start()
    try:
        for topic, payload, retain in messages:
            c.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)
    finally:
        c.loop_stop()
        c.disconnect()


def _state(url: str) -> dict:
    return json.loads(urllib.request.urlopen(url + "api/state", timeout=10).read())


def test_a_hostile_client_never_breaks_the_page(tmp_path: Path, mosquitto) -> None:
    pytest.importorskip("starlette")
    from edgedfl.dashboard.server import Dashboard

    # Prepare: dev00's key in a ring file, a dashboard following Mosquitto
    a = Signer.from_seed(bytes(32))
    ring = KeyRing()
    ring.add(a.key_id, a.public_bytes(), senders=["dev00"])
    dash = Dashboard(SwarmView(SWARM, admission="keyring", keyring=ring))
    url = dash.start()
    dash.follow(mosquitto.url)
    t = Topics(SWARM)
    try:
        # Execute: one honest status, then what a stranger can send
        good = _metrics(state="collecting")
        evil = dataclasses.replace(good, state="hacked", round=99)
        _publish_all(mosquitto.url, [
            (t.metrics("dev00"), _signed(a, good, seq=10), True),
            (t.metrics("dev00"), _signed(None, evil, seq=11), True),  # unsigned
            (t.metrics("dev00"), b"\xff" * 64, False),  # garbage
            (t.metrics("ghost"), _signed(None, evil, sender="ghost", seq=12), False),  # a stranger's device
            (t.metrics("dev00"), _signed(a, evil, sender="dev00", seq=13)[:-3] + b"}}}", False),  # tampered
            (t.metrics("dev00"), b"EDFL" + bytes([1, 0]) + (10**6).to_bytes(4, "big"), False),  # claims a huge header
            (t.presence("ghost"), b"online", True),  # presence alone names no device
        ])
        deadline = time.monotonic() + 10
        while _state(url)["refused_total"] < 5 and time.monotonic() < deadline:
            time.sleep(0.1)
        state = _state(url)
        page = urllib.request.urlopen(url, timeout=10).read().decode()
        events = urllib.request.urlopen(url + "api/events", timeout=10)
        first = [events.readline().decode() for _ in range(2)]
        events.close()
    finally:
        dash.stop()
    # Assert: the honest status is shown, nothing else; every refusal is counted by reason; the page serves
    assert [d["node"] for d in state["devices"]] == ["dev00"]
    assert state["devices"][0]["state"] == "collecting" and state["devices"][0]["round"] == 2
    assert state["refused"].get("SignatureError", 0) >= 2  # unsigned dev00, unsigned ghost
    assert state["refused"].get("MalformedMessage", 0) + state["refused"].get("PayloadTooLarge", 0) >= 2
    assert state["refused_total"] >= 5
    assert "edgedfl" in page and "/static/dashboard.js" in page
    assert first[0].startswith("event: state") and json.loads(first[1].removeprefix("data: "))["swarm"] == SWARM


def test_dashboard_binds_localhost_and_serves_a_run_dir(tmp_path: Path) -> None:
    pytest.importorskip("starlette")
    # Prepare: a run directory as a device leaves it
    dev = tmp_path / "run" / "dev00"
    dev.mkdir(parents=True)
    (dev / "node_config.json").write_text(json.dumps({"node_id": "dev00", "profile": "phone", "data": "topic",
                                                      "swarm": {"name": "demo-abc123"}}))
    (dev / "metrics.json").write_text(json.dumps(_metrics(state="done", round=3).to_dict()))
    (tmp_path / "run" / "report.json").write_text("{}")
    # Execute: the command, on a free port
    proc = subprocess.Popen([sys.executable, "-m", "edgedfl.cli", "dashboard", "--run", str(tmp_path / "run"),
                             "--port", "0"], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        state = _state(url)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    # Assert
    assert url.startswith("http://127.0.0.1:")
    assert state["source"] == "run" and state["finished"] and state["swarm"] == "demo-abc123"
    assert state["devices"][0]["node"] == "dev00" and state["routing"] == {"topic": {"0": 1, "1": 7}}
