"""Brokers edgedfl starts, and their security: ACLs, passwords, TLS client certificates, mosquitto_sub."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgedfl.brokers.launch import (
    BrokerTls,
    EmbeddedBroker,
    MosquittoBroker,
    acl_text,
    start_broker,
    write_acl,
    write_password_file,
)
from edgedfl.brokers.pki import make_test_pki
from edgedfl.errors import BrokerUnavailable, ConfigError, NotAuthorized
from edgedfl.transport.mqtt import MqttTransport, TlsOptions
from edgedfl.transport.url import transport_from_url

pytestmark = pytest.mark.integration

requires_mosquitto = pytest.mark.skipif(shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists(),
                                        reason="mosquitto not installed")

SWARM = "lab"
USERS = {"node-a": "pw-a", "node-b": "pw-b", "monitor": "pw-m"}


@pytest.fixture
def secured(tmp_path: Path):
    """Mosquitto with a password file and the swarm ACL; ``monitor`` may read and write everything."""
    if shutil.which("mosquitto_passwd") is None:
        pytest.skip("mosquitto_passwd not installed")
    pw = write_password_file(tmp_path / "passwd", USERS)
    acl = write_acl(tmp_path / "acl", SWARM, ["node-a", "node-b"], admins=["monitor"])
    with MosquittoBroker(workdir=tmp_path / "broker", password_file=pw, acl_file=acl) as broker:
        yield broker


def login(broker: MosquittoBroker, user: str, password: str | None = None, **kw) -> MqttTransport:
    return broker.client(user, username=user, password=USERS[user] if password is None else password,
                         connect_timeout=5, **kw)


@requires_mosquitto
def test_username_and_password_are_checked(secured: MosquittoBroker) -> None:
    with login(secured, "node-a") as ok:
        assert ok.connected
    with pytest.raises(NotAuthorized):
        login(secured, "node-a", password="wrong")
    with pytest.raises(NotAuthorized):
        MqttTransport(host=secured.host, port=secured.port, client_id="anon", connect_timeout=5)


@requires_mosquitto
@pytest.mark.parametrize("protocol", [5, 311])
def test_acl_a_node_cannot_write_another_nodes_topic(secured: MosquittoBroker, protocol: int) -> None:
    with login(secured, "monitor", protocol=protocol) as monitor, login(secured, "node-a", protocol=protocol) as a:
        monitor.subscribe(f"edgedfl/{SWARM}/#")

        if protocol == 5:
            with pytest.raises(NotAuthorized, match="[Nn]ot authorized"):
                a.publish(f"edgedfl/{SWARM}/presence/node-b", b"forged")
        else:  # MQTT 3.1.1 has no reason codes: Mosquitto acknowledges and drops it
            a.publish(f"edgedfl/{SWARM}/presence/node-b", b"forged")
        a.publish(f"edgedfl/{SWARM}/update/3/node-b", b"forged update", timeout=5 if protocol == 311 else None)
        a.publish(f"edgedfl/{SWARM}/expert/1/node-b", b"forged expert", timeout=5 if protocol == 311 else None)
        a.publish(f"edgedfl/{SWARM}/presence/node-a", b"mine")

        msg = monitor.receive(5)
        assert msg is not None and (msg.topic, msg.payload) == (f"edgedfl/{SWARM}/presence/node-a", b"mine")
        assert monitor.receive(0.3) is None
        assert a.connected


@requires_mosquitto
def test_acl_allows_own_topics_and_reading_the_swarm(secured: MosquittoBroker) -> None:
    with login(secured, "node-b") as b, login(secured, "node-a") as a:
        b.subscribe(f"edgedfl/{SWARM}/#")
        own = [f"edgedfl/{SWARM}/{t}" for t in ("presence/node-a", "hello/node-a", "update/2/node-a",
                                                    "ack/node-b/node-a", "expert/2/node-a")]
        for topic in own:
            a.publish(topic, b"x")
        got = [b.receive(5) for _ in own]
        assert [m.topic for m in got if m] == own


def test_acl_text_refuses_names_that_would_widen_it() -> None:
    with pytest.raises(ConfigError):
        acl_text(SWARM, ["a/#"])
    with pytest.raises(ConfigError):
        acl_text("s+", ["a"])
    text = acl_text(SWARM, ["a"])
    assert "topic write edgedfl/lab/update/+/a" in text and "topic read edgedfl/lab/#" in text
    assert "topic write edgedfl/lab/expert/+/a" in text and "expert/+\n" not in text


@requires_mosquitto
def test_mosquitto_sub_sees_a_retained_message_from_our_transport(mosquitto: MosquittoBroker) -> None:
    if shutil.which("mosquitto_sub") is None:
        pytest.skip("mosquitto_sub not installed")
    with mosquitto.client("node-a") as t:
        t.publish("edgedfl/lab/presence/node-a", b"online", retain=True)
        t.publish("edgedfl/lab/hello/node-a", b'{"profile": "laptop"}', retain=True)

    out = subprocess.run(
        ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(mosquitto.port), "-t", "edgedfl/#", "-v", "-C", "2",
         "-W", "5"],
        capture_output=True, text=True, timeout=20, check=True,
    ).stdout.splitlines()

    assert sorted(out) == ['edgedfl/lab/hello/node-a {"profile": "laptop"}', "edgedfl/lab/presence/node-a online"]


@pytest.fixture
def tls_broker(tmp_path: Path):
    pki = make_test_pki(tmp_path / "pki", clients=["node-a"])
    tls = BrokerTls(cafile=str(pki.ca_cert), certfile=str(pki.server.cert), keyfile=str(pki.server.key))
    with MosquittoBroker(workdir=tmp_path / "broker", tls=tls, plain_listener=False) as broker:
        yield broker, pki


@requires_mosquitto
@pytest.mark.parametrize("protocol", [5, 311])
def test_tls_with_a_client_certificate_connects(tls_broker, protocol: int) -> None:
    broker, pki = tls_broker
    tls = TlsOptions(ca_certs=str(pki.ca_cert), certfile=str(pki.clients["node-a"].cert),
                     keyfile=str(pki.clients["node-a"].key))
    with MqttTransport(host="127.0.0.1", port=broker.tls_port, client_id="a", tls=tls, protocol=protocol,
                       connect_timeout=5) as a:
        a.subscribe("edgedfl/lab/#")
        a.publish("edgedfl/lab/ack/a", b"over tls")
        assert (m := a.receive(5)) is not None and m.payload == b"over tls"


@requires_mosquitto
def test_tls_without_a_client_certificate_is_refused(tls_broker) -> None:
    broker, pki = tls_broker
    with pytest.raises(BrokerUnavailable):
        MqttTransport(host="127.0.0.1", port=broker.tls_port, client_id="a",
                      tls=TlsOptions(ca_certs=str(pki.ca_cert)), connect_timeout=5)


@requires_mosquitto
def test_tls_with_a_certificate_from_another_ca_is_refused(tls_broker, tmp_path: Path) -> None:
    broker, pki = tls_broker
    other = make_test_pki(tmp_path / "other", clients=["node-a"])
    with pytest.raises(BrokerUnavailable):
        MqttTransport(host="127.0.0.1", port=broker.tls_port, client_id="a", connect_timeout=5,
                      tls=TlsOptions(ca_certs=str(pki.ca_cert), certfile=str(other.clients["node-a"].cert),
                                     keyfile=str(other.clients["node-a"].key)))


@requires_mosquitto
def test_restart_keeps_port_and_retained_messages(mosquitto: MosquittoBroker) -> None:
    port = mosquitto.port
    with mosquitto.client("a") as a:
        a.publish("edgedfl/lab/expert/1", b"expert", retain=True)

    mosquitto.stop()  # clean stop writes persistence
    mosquitto.restart()

    assert mosquitto.port == port
    with mosquitto.client("b") as b:
        b.subscribe("edgedfl/lab/expert/+")
        assert (m := b.receive(5)) is not None and m.payload == b"expert"


@requires_mosquitto
def test_config_is_written_as_documented(tmp_path: Path) -> None:
    broker = MosquittoBroker(workdir=tmp_path, message_size_limit=1234, max_queued_bytes=99)
    text = broker.config_text()
    for line in ("message_size_limit 1234", "max_queued_bytes 99", "persistence true",
                 f"persistence_location {tmp_path}/", f"listener {broker.port} 127.0.0.1", "allow_anonymous true"):
        assert line in text.splitlines()


def test_embedded_broker_speaks_mqtt_311(embedded_broker: EmbeddedBroker) -> None:
    assert "protocol=311" in embedded_broker.url
    sub = transport_from_url(embedded_broker.url, "sub")
    pub = embedded_broker.client("pub")
    try:
        assert isinstance(sub, MqttTransport) and sub.protocol == 311
        sub.subscribe("edgedfl/lab/#")
        pub.publish("edgedfl/lab/presence/pub", b"online", retain=True)
        assert (m := sub.receive(5)) is not None and m.payload == b"online"
    finally:
        sub.close()
        pub.close()


def test_start_broker_dispatches() -> None:
    broker = start_broker("embedded")
    try:
        assert isinstance(broker, EmbeddedBroker) and broker.running
    finally:
        broker.stop()
    assert not broker.running
    with pytest.raises(ConfigError):
        start_broker("rabbit")


def test_cli_broker_prints_its_url_and_stops_on_sigterm() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from edgedfl.cli import main; sys.exit(main())",
                             "broker", "--kind", "embedded"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("mqtt://127.0.0.1:") and "protocol=311" in url
        with transport_from_url(url, "cli-check") as t:
            t.publish("edgedfl/lab/ack/x", b"ok")
        proc.terminate()
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
