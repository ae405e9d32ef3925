"""A secure swarm's broker: mTLS + a password per device + the ACL, from the library, `edgedfl broker --secure`
and `edgedfl emulate --secure`, on a real Mosquitto; the mqtts:// URL path end to end."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.parse
from pathlib import Path

import pytest

from edgedfl.brokers.pki import make_test_pki
from edgedfl.brokers.secure import SecureSwarm, secure_broker, write_secure_swarm
from edgedfl.errors import ConfigError, NotAuthorized, TransportError
from edgedfl.transport.mqtt import MqttTransport, TlsOptions
from edgedfl.transport.url import transport_from_url

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("mosquitto_passwd") is None, reason="Mosquitto not installed"),
]


def _with(url: str, **changes: str) -> str:
    """``url`` with query parameters replaced (or removed, for an empty value)."""
    parts = urllib.parse.urlsplit(url)
    query = dict(urllib.parse.parse_qsl(parts.query))
    query.update(changes)
    query = {k: v for k, v in query.items() if v}
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query, safe="/")))


@pytest.fixture
def secure(tmp_path: Path):
    s = write_secure_swarm(tmp_path / "secure", "lab", ["dev00", "dev01"])
    with secure_broker(s, workdir=tmp_path / "broker") as broker:
        yield s, broker


def test_a_device_writes_its_own_topics_over_mtls_and_nothing_else(secure) -> None:
    s, broker = secure
    url = s.url("dev00", broker.host, broker.tls_port)
    # Execute: the device's URL alone (certificate, key and password file in it), and the admin reading all
    with transport_from_url(s.url(s.admin, broker.host, broker.tls_port), "monitor") as admin, \
            transport_from_url(url, "dev00") as dev:
        admin.subscribe("edgedfl/lab/#")
        for topic in ("presence/dev00", "hello/dev00", "update/1/dev00", "expert/1/dev00", "ack/dev01/dev00"):
            dev.publish(f"edgedfl/lab/{topic}", b"mine")
        # Assert: MQTT 5 reports the ACL's refusal; nothing of another device's name gets through
        for forged in ("presence/dev01", "update/1/dev01", "expert/1/dev01", "hello/ghost", "ack/dev00/dev01"):
            with pytest.raises(NotAuthorized):
                dev.publish(f"edgedfl/lab/{forged}", b"forged")
        got = [admin.receive(5) for _ in range(5)]
        assert [m.topic.split("/", 2)[2] for m in got if m] == [
            "presence/dev00", "hello/dev00", "update/1/dev00", "expert/1/dev00", "ack/dev01/dev00"]
        assert admin.receive(0.3) is None


def test_both_factors_are_needed_and_nothing_listens_in_plain_text(secure, tmp_path: Path) -> None:
    s, broker = secure
    url = s.url("dev00", broker.host, broker.tls_port)
    # a wrong password with the right certificate
    wrong = tmp_path / "wrong.password"
    wrong.write_text("not-it\n")
    with pytest.raises(NotAuthorized):
        transport_from_url(_with(url, password_file=str(wrong)), "dev00", connect_timeout=5)
    # the right password without a certificate: the TLS handshake is refused
    with pytest.raises(TransportError):
        transport_from_url(_with(url, cert="", key=""), "dev00", connect_timeout=5)
    # a certificate of another CA
    other = make_test_pki(tmp_path / "other", clients=["dev00"])
    with pytest.raises(TransportError):
        MqttTransport(host=broker.host, port=broker.tls_port, client_id="dev00", username="dev00",
                      password=s.password_file("dev00").read_text().strip(), connect_timeout=5,
                      tls=TlsOptions(ca_certs=str(s.ca), certfile=str(other.clients["dev00"].cert),
                                     keyfile=str(other.clients["dev00"].key)))
    # no plain listener at all
    assert [ln for ln in broker.config_text().splitlines() if ln.startswith("listener ")] == [
        f"listener {broker.tls_port} {broker.host}"]
    with pytest.raises(TransportError):
        MqttTransport(host=broker.host, port=broker.tls_port, client_id="plain", connect_timeout=3)
    # passwords and keys are the owner's alone
    assert s.password_file("dev00").stat().st_mode & 0o777 == 0o600
    assert s.key("dev00").stat().st_mode & 0o777 == 0o600


def test_the_files_are_reused_for_the_same_swarm_and_never_overwritten(tmp_path: Path) -> None:
    first = write_secure_swarm(tmp_path / "s", "lab", ["a", "b"])
    ca = first.ca.read_bytes()
    again = write_secure_swarm(tmp_path / "s", "lab", ["b", "a"])
    assert again.ca.read_bytes() == ca and SecureSwarm.load(tmp_path / "s").nodes == ("a", "b")
    with pytest.raises(ConfigError, match="already holds"):
        write_secure_swarm(tmp_path / "s", "lab", ["a", "b", "c"])
    assert first.ca.read_bytes() == ca
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("x")
    with pytest.raises(ConfigError, match="not empty"):
        write_secure_swarm(tmp_path / "mine", "lab", ["a"])
    with pytest.raises(ConfigError):
        write_secure_swarm(tmp_path / "t", "lab", ["a/#"])
    with pytest.raises(ConfigError, match="not a device"):
        first.url("ghost", "127.0.0.1", 8883)


def test_cli_broker_secure_prints_the_url_and_each_devices_own(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "edgedfl.cli", "broker", "--kind", "mosquitto", "--secure",
                             "--swarm", "lab", "--nodes", "pixel7,jetson1", "--workdir", str(tmp_path / "w")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stderr is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("mqtts://127.0.0.1:")
        own = dict(proc.stderr.readline().strip().split(": ", 1) for _ in range(3))
        assert set(own) == {"pixel7", "jetson1", "edgedfl-admin"}
        with transport_from_url(own["pixel7"], "pixel7") as t:
            t.publish("edgedfl/lab/hello/pixel7", b"ok")
            with pytest.raises(NotAuthorized):
                t.publish("edgedfl/lab/hello/jetson1", b"forged")
        proc.terminate()
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert json.loads((tmp_path / "w" / "secure" / "secure.json").read_text())["nodes"] == ["pixel7", "jetson1"]


@pytest.mark.slow
def test_emulate_secure_runs_the_fleet_over_mtls_with_the_acl(tmp_path: Path) -> None:
    # Execute: the whole CLI, three tiny devices on a Mosquitto of the run's own
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "edgedfl.cli", "emulate", "--secure", "--devices", "3",
                           "--tasks", "arith", "--rounds", "2", "--local-steps", "2", "--n-train", "16",
                           "--n-eval", "4", "--quiet", "--out", str(out)],
                          check=False, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Assert: every device went over mqtts with its own credentials; the broker ran the ACL and no plain listener
    report = json.loads((out / "report.json").read_text())
    assert sorted(report["per_device"]) == ["dev00", "dev01", "dev02"]
    assert [r["round"] for r in report["rounds"]] == [0, 1, 2]
    for n in report["per_device"]:
        url = json.loads((out / n / "node_config.json").read_text())["broker"]
        assert url.startswith(f"mqtts://{n}@") and f"cert={out / 'secure' / n}.crt" in url
        assert "password=" not in url
    conf = (out / "broker" / "mosquitto.conf").read_text()
    assert f"acl_file {out / 'secure' / 'acl'}" in conf and "require_certificate true" in conf
    assert "allow_anonymous false" in conf
    log = (out / "broker" / "mosquitto.log").read_text()
    for n in ("dev00", "dev01", "dev02"):
        assert f"u'{n}'" in log  # each device logged in under its own name
