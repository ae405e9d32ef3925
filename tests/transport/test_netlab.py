"""Link shaping with namespaces (root): rate, loss, delay, teardown, and MQTT across a shaped link."""

from __future__ import annotations

import socket
import subprocess
import threading
import time

import pytest

from edgedfl.brokers.launch import MosquittoBroker, mosquitto_available
from edgedfl.netlab import Lab, can_drop_packets, can_shape_links, free_port_in
from edgedfl.transport.mqtt import MqttTransport

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(not can_shape_links(), reason="needs root with ip netns + tc"),
]


def namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def sink(lab: Lab, port: int, received: list[int], ready: threading.Event) -> threading.Thread:
    """A TCP server in the hub that counts bytes until the peer closes."""
    with lab.inside(lab.hub):
        srv = socket.socket()
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("0.0.0.0", port))
        srv.listen()

    def serve() -> None:
        ready.set()
        conn, _ = srv.accept()
        n = 0
        while data := conn.recv(65536):
            n += len(data)
        received.append(n)
        conn.close()
        srv.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return t


def test_rate_limit_holds_within_ten_percent() -> None:
    with Lab() as lab:
        host = lab.add_host("dev", rate_bps=8e6)
        port = free_port_in(lab.hub)
        received: list[int] = []
        ready = threading.Event()
        t = sink(lab, port, received, ready)
        assert ready.wait(5)
        with lab.inside(host):
            conn = socket.create_connection((host.gateway, port), timeout=10)
        start = time.monotonic()
        conn.sendall(b"\0" * 2_000_000)
        conn.close()
        t.join(30)
        elapsed = time.monotonic() - start

    rate = received[0] * 8 / elapsed
    assert received == [2_000_000]
    assert 0.8 * 8e6 < rate < 1.1 * 8e6


def test_delay_proxy_adds_the_one_way_delay_each_way() -> None:
    with Lab() as lab:
        host = lab.add_host("dev", delay_ms=60)
        port = free_port_in(lab.hub)
        with lab.inside(lab.hub):
            srv = socket.socket()
            srv.bind(("127.0.0.1", port))
            srv.listen()

        def echo() -> None:
            conn, _ = srv.accept()
            while data := conn.recv(100):
                conn.sendall(data)
            conn.close()

        threading.Thread(target=echo, daemon=True).start()
        address = lab.endpoint(host, port)
        assert address != (host.gateway, port)
        with lab.inside(host):
            conn = socket.create_connection(address, timeout=10)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        rtts = []
        for _ in range(3):
            start = time.monotonic()
            conn.sendall(b"ping")
            assert conn.recv(100) == b"ping"
            rtts.append(time.monotonic() - start)
        conn.close()
        srv.close()

    assert 0.12 <= min(rtts) < 0.25


@pytest.mark.skipif(not can_drop_packets(), reason="needs nftables")
def test_full_loss_cuts_the_link_and_zero_loss_restores_it() -> None:
    with Lab() as lab:
        host = lab.add_host("dev", loss_pct=100)
        port = free_port_in(lab.hub)
        received: list[int] = []
        ready = threading.Event()
        sink(lab, port, received, ready)
        with lab.inside(host), pytest.raises(OSError):
            socket.create_connection((host.gateway, port), timeout=1)

        lab.set_loss(host, 0)

        with lab.inside(host):
            socket.create_connection((host.gateway, port), timeout=5).close()


def test_teardown_removes_namespaces_even_on_error() -> None:
    before = namespaces()
    with pytest.raises(RuntimeError), Lab() as lab:
        lab.add_host("a", rate_bps=1e6)
        lab.popen("a", ["sleep", "30"])
        assert {lab.hub, lab.hosts["a"].ns} <= namespaces()
        raise RuntimeError("boom")
    assert namespaces() == before


@pytest.mark.integration
@pytest.mark.skipif(not mosquitto_available(), reason="mosquitto not installed")
def test_mqtt_across_a_shaped_link_with_delay(tmp_path) -> None:
    with Lab() as lab:
        host = lab.add_host("dev", rate_bps=20e6, delay_ms=20)
        with lab.inside(lab.hub):
            broker = MosquittoBroker(host="0.0.0.0", workdir=tmp_path).start()
        try:
            ip, port = lab.endpoint(host, broker.port)
            with lab.inside(host):
                pub = MqttTransport(host=ip, port=port, client_id="pub", connect_timeout=5)
                sub = MqttTransport(host=ip, port=port, client_id="sub", connect_timeout=5)
            sub.subscribe("edgedfl/lab/#")
            pub.publish("edgedfl/lab/update/0/pub", b"\1" * 500_000)
            msg = sub.receive(10)
            assert msg is not None and len(msg.payload) == 500_000
            pub.close()
            sub.close()
        finally:
            broker.close()
