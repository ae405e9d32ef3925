"""Brokers edgedfl can start by itself: Mosquitto (a subprocess) and amqtt (embedded).

- :class:`MosquittoBroker` writes a ``mosquitto.conf`` (listener on a free
  port of 127.0.0.1, ``message_size_limit``, queue bounds, persistence in its
  own directory, optional password file, ACL file and TLS listener), runs
  ``mosquitto -c`` and waits until the port accepts connections. ``kill()``
  (SIGKILL) and ``restart()`` (same port, same persistence) are there for
  crash tests. This is the broker of the tests and of any real deployment.
- :class:`EmbeddedBroker` runs amqtt in this process, on its own asyncio loop
  in a thread: the laptop default, so edgedfl works with no broker installed.
  amqtt speaks **MQTT 3.1.1 only** (an MQTT 5 client is refused and paho would
  retry forever), so its :attr:`~EmbeddedBroker.url` carries ``protocol=311``
  and :meth:`~EmbeddedBroker.client` builds 3.1.1 transports.
- :func:`write_acl` and :func:`write_password_file` produce Mosquitto's
  security files: each node may write only its own topics and read the swarm.

A broker's ``url`` carries what a client must know (``max_payload`` and the
protocol) as query parameters, which :func:`~edgedfl.transport.mqtt.transport_from_url`
understands: ``mqtt://127.0.0.1:40123?max_payload=16777216``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from edgedfl.errors import BackendUnavailable, BrokerUnavailable, ConfigError
from edgedfl.transport.mqtt import MqttTransport

if TYPE_CHECKING:  # Python 3.10 has no typing.Self
    from typing_extensions import Self

log = logging.getLogger("edgedfl.brokers.launch")

DEFAULT_MESSAGE_SIZE_LIMIT = 16 * 1024 * 1024


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (another broker may own 1883: never assume it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _wait_listening(host: str, port: int, deadline: float, alive: Any = None) -> bool:
    """Poll until ``host:port`` accepts a TCP connection (a process start, not a message: polling is fine)."""
    while time.monotonic() < deadline:
        if alive is not None and not alive():
            return False
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.02)
    return False


def raise_open_files(wanted: int | None = None) -> int:
    """Raise this process's soft limit on open files to ``wanted`` (default: the hard limit); the new soft limit."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if wanted is None else (min(wanted, hard) if hard != resource.RLIM_INFINITY else wanted)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


def mosquitto_available(binary: str = "mosquitto") -> bool:
    """Whether the Mosquitto broker binary is installed (``apt-get install mosquitto``)."""
    return shutil.which(binary) is not None or os.path.exists(f"/usr/sbin/{binary}")


def _which_mosquitto(binary: str) -> str:
    found = shutil.which(binary) or (f"/usr/sbin/{binary}" if os.path.exists(f"/usr/sbin/{binary}") else None)
    if found is None:
        raise BackendUnavailable(
            f"{binary!r} not found: install Mosquitto (`apt-get install mosquitto`, run by scripts/setup.sh) "
            "or use the embedded broker (start_broker(kind='embedded'))"
        )
    return found


@dataclasses.dataclass(frozen=True)
class BrokerTls:
    """A TLS listener: the broker's certificate and the CA its clients' certificates must chain to."""

    cafile: str
    certfile: str
    keyfile: str
    #: refuse clients without a certificate signed by ``cafile``
    require_certificate: bool = True
    #: use the client certificate's CN as the MQTT username (for ACLs)
    use_identity_as_username: bool = False
    port: int | None = None


class _BrokerLife:
    """What both brokers share: ``with broker:`` starts it and closes it."""

    def start(self) -> Self:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class MosquittoBroker(_BrokerLife):
    """A Mosquitto subprocess with an edgedfl-written config, on a free port of ``host``."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        workdir: str | os.PathLike[str] | None = None,
        message_size_limit: int = DEFAULT_MESSAGE_SIZE_LIMIT,
        max_queued_bytes: int = 512 * 1024 * 1024,
        max_queued_messages: int = 10_000,
        max_inflight_messages: int = 20,
        persistence: bool = True,
        autosave_interval: int = 1,
        allow_anonymous: bool | None = None,
        password_file: str | os.PathLike[str] | None = None,
        acl_file: str | os.PathLike[str] | None = None,
        tls: BrokerTls | None = None,
        plain_listener: bool = True,
        binary: str = "mosquitto",
        start_timeout: float = 10.0,
        extra_conf: Iterable[str] = (),
        max_open_files: int | None = None,
    ) -> None:
        if message_size_limit < 0:
            raise ConfigError(f"MosquittoBroker.message_size_limit={message_size_limit}: must be >= 0")
        if not plain_listener and tls is None:
            raise ConfigError("MosquittoBroker.plain_listener=False needs a TLS listener (tls=...)")
        self.binary = _which_mosquitto(binary)
        self.host = host
        self.port = port or free_port(host)
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="edgedfl-mosquitto-")
            workdir = self._tmp.name
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.message_size_limit = message_size_limit
        self.max_queued_bytes = max_queued_bytes
        self.max_queued_messages = max_queued_messages
        self.max_inflight_messages = max_inflight_messages
        self.persistence = persistence
        self.autosave_interval = autosave_interval
        self.password_file = Path(password_file) if password_file else None
        self.acl_file = Path(acl_file) if acl_file else None
        self.allow_anonymous = (self.password_file is None) if allow_anonymous is None else allow_anonymous
        self.tls = tls
        self.tls_port = (tls.port or free_port(host)) if tls else None
        self.plain_listener = plain_listener
        self.start_timeout = start_timeout
        self.extra_conf = list(extra_conf)
        #: raise Mosquitto's open-file limit to this (capped at the hard limit): a connection is a file
        self.max_open_files = max_open_files
        self.conf_path = self.workdir / "mosquitto.conf"
        self.log_path = self.workdir / "mosquitto.log"
        self._proc: subprocess.Popen[bytes] | None = None

    # -- configuration ----------------------------------------------------------------

    def config_text(self) -> str:
        """The mosquitto.conf this broker runs with."""
        lines = [
            "# written by edgedfl.brokers.launch.MosquittoBroker",
            f"user {pwd.getpwuid(os.getuid()).pw_name}",  # as root, Mosquitto would switch to 'mosquitto'
            "per_listener_settings false",
            f"allow_anonymous {'true' if self.allow_anonymous else 'false'}",
            f"message_size_limit {self.message_size_limit}",
            f"max_queued_bytes {self.max_queued_bytes}",
            f"max_queued_messages {self.max_queued_messages}",
            f"max_inflight_messages {self.max_inflight_messages}",
            f"persistence {'true' if self.persistence else 'false'}",
            f"persistence_location {self.workdir}/",
            "persistence_file mosquitto.db",
            f"autosave_interval {self.autosave_interval}",
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            "log_timestamp true",
        ]
        if self.password_file:
            lines.append(f"password_file {self.password_file}")
        if self.acl_file:
            lines.append(f"acl_file {self.acl_file}")
        if self.plain_listener:
            lines += ["", f"listener {self.port} {self.host}"]
        if self.tls is not None:
            lines += [
                "",
                f"listener {self.tls_port} {self.host}",
                f"cafile {self.tls.cafile}",
                f"certfile {self.tls.certfile}",
                f"keyfile {self.tls.keyfile}",
                f"require_certificate {'true' if self.tls.require_certificate else 'false'}",
                f"use_identity_as_username {'true' if self.tls.use_identity_as_username else 'false'}",
            ]
        lines += list(self.extra_conf)
        return "\n".join(lines) + "\n"

    @property
    def url(self) -> str:
        """``mqtt://host:port?max_payload=N`` for :func:`transport_from_url` (plain listener)."""
        query = f"?max_payload={self.message_size_limit}" if self.message_size_limit else ""
        return f"mqtt://{self.host}:{self.port}{query}"

    @property
    def tls_url(self) -> str | None:
        """``mqtts://host:tls_port?max_payload=N`` when a TLS listener is configured."""
        if self.tls is None:
            return None
        query = f"?max_payload={self.message_size_limit}" if self.message_size_limit else ""
        return f"mqtts://{self.host}:{self.tls_port}{query}"

    # -- life cycle -----------------------------------------------------------------------

    def start(self) -> MosquittoBroker:
        """Write the config, start Mosquitto and wait until it accepts connections."""
        if self.running:
            return self
        self.conf_path.write_text(self.config_text())
        if self.max_open_files:  # the child inherits this process's limit
            raise_open_files(self.max_open_files)
        with open(self.workdir / "mosquitto.stderr", "ab") as err:
            self._proc = subprocess.Popen(
                [self.binary, "-c", str(self.conf_path)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                start_new_session=True,  # a Ctrl-C in the terminal is ours to forward, not Mosquitto's
            )
        port = self.port if self.plain_listener else self.tls_port
        assert port is not None
        proc = self._proc
        if not _wait_listening(self.host, port, time.monotonic() + self.start_timeout, lambda: proc.poll() is None):
            self._reap(signal.SIGKILL)
            raise BrokerUnavailable(
                f"mosquitto did not start on {self.host}:{port} within {self.start_timeout:g} s; "
                f"log: {self._log_tail()}"
            )
        log.info("mosquitto (pid %d) listening on %s", proc.pid, self.url)
        return self

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def kill(self) -> None:
        """SIGKILL, as a crash or a power cut would: what was not yet autosaved is lost."""
        self._reap(signal.SIGKILL)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (Mosquitto saves its persistence file), SIGKILL if it hangs. Idempotent."""
        self._reap(signal.SIGTERM, timeout)

    def restart(self) -> MosquittoBroker:
        """Start again on the same port with the same persistence (after :meth:`kill` or :meth:`stop`)."""
        if self.running:
            self.stop()
        return self.start()

    def close(self) -> None:
        """Stop and remove the temporary directory if this broker made one."""
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def _reap(self, sig: int, timeout: float = 10.0) -> None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def _log_tail(self, n: int = 2000) -> str:
        texts = []
        for path in (self.log_path, self.workdir / "mosquitto.stderr"):
            with contextlib.suppress(OSError):
                texts.append(path.read_text(errors="replace")[-n:])
        return " | ".join(t.strip() for t in texts if t.strip()) or "(empty)"

    def client(self, client_id: str | None = None, **kwargs: Any) -> MqttTransport:
        """An :class:`MqttTransport` to this broker, with ``max_payload`` preset."""
        kwargs.setdefault("max_payload", self.message_size_limit or None)
        return MqttTransport(host=self.host, port=self.port, client_id=client_id, **kwargs)

    def __repr__(self) -> str:
        return f"MosquittoBroker({self.url}, pid={self.pid}, running={self.running})"


class EmbeddedBroker(_BrokerLife):
    """amqtt in this process, on its own asyncio loop in a daemon thread. MQTT 3.1.1 only."""

    protocol = 311

    def __init__(self, *, host: str = "127.0.0.1", port: int | None = None, start_timeout: float = 10.0) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.start_timeout = start_timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._broker: Any = None

    @property
    def url(self) -> str:
        """``mqtt://host:port?protocol=311``: the protocol parameter keeps clients on MQTT 3.1.1."""
        return f"mqtt://{self.host}:{self.port}?protocol=311"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> EmbeddedBroker:
        if self.running:
            return self
        try:
            from amqtt.broker import Broker
        except ImportError as exc:  # pragma: no cover - amqtt is a dependency
            raise BackendUnavailable("the embedded broker needs amqtt: pip install amqtt==0.12.1") from exc
        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }
        loop = asyncio.new_event_loop()
        started = threading.Event()
        failure: list[BaseException] = []

        def serve() -> None:
            asyncio.set_event_loop(loop)

            async def boot() -> None:
                self._broker = Broker(config, loop=loop)
                await self._broker.start()

            try:
                loop.run_until_complete(boot())
            except BaseException as exc:  # noqa: BLE001 - reported to the starting thread
                failure.append(exc)
                started.set()
                loop.close()
                return
            started.set()
            loop.run_forever()
            loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=serve, name=f"edgedfl-amqtt-{self.port}", daemon=True)
        self._thread.start()
        if not started.wait(self.start_timeout) or failure:
            why = failure[0] if failure else f"no start within {self.start_timeout:g} s"
            self._thread = None
            raise BrokerUnavailable(f"embedded amqtt broker on {self.host}:{self.port} failed: {why}")
        log.info("embedded amqtt broker listening on %s", self.url)
        return self

    def stop(self) -> None:
        """Shut the broker down and end its thread. Idempotent."""
        loop, thread, broker = self._loop, self._thread, self._broker
        if loop is None or thread is None or not thread.is_alive():
            return
        if broker is not None:
            fut = asyncio.run_coroutine_threadsafe(broker.shutdown(), loop)
            with contextlib.suppress(Exception):
                fut.result(self.start_timeout)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(self.start_timeout)
        self._thread = None

    close = stop

    def client(self, client_id: str | None = None, **kwargs: Any) -> MqttTransport:
        """An :class:`MqttTransport` to this broker, on MQTT 3.1.1."""
        kwargs["protocol"] = 311
        return MqttTransport(host=self.host, port=self.port, client_id=client_id, **kwargs)

    def __repr__(self) -> str:
        return f"EmbeddedBroker({self.url}, running={self.running})"


Broker = MosquittoBroker | EmbeddedBroker


def start_broker(kind: str = "embedded", **kwargs: Any) -> Broker:
    """Start a broker of ``kind`` (``"embedded"``: amqtt in-process; ``"mosquitto"``: a subprocess).

    Keyword arguments go to the broker class; the broker is returned running.
    """
    if kind == "embedded":
        return EmbeddedBroker(**kwargs).start()
    if kind == "mosquitto":
        return MosquittoBroker(**kwargs).start()
    raise ConfigError(f"start_broker(kind={kind!r}): use 'embedded' or 'mosquitto'")


# -- security files ---------------------------------------------------------------------

_NAME = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


def _check_name(kind: str, name: str) -> None:
    if not _NAME.match(name):
        raise ConfigError(f"{kind}={name!r}: use 1-128 letters, digits, '.', '_' or '-' (no '/', '+', '#')")


def acl_text(swarm: str, node_ids: Iterable[str], *, admins: Iterable[str] = ()) -> str:
    """The Mosquitto ACL of a swarm: each node (MQTT username = node id) writes only its own topics.

    Per DESIGN.md's protocol sketch a node may write ``presence/<node>``,
    ``hello/<node>``, ``update/+/<node>``, ``ack/+/<node>``, ``expert/+/<node>`` and
    ``metrics/<node>`` (its status for dashboards), and read everything under
    ``edgedfl/<swarm>/``. ``admins`` may read and write the whole swarm (a monitor, the emulator).
    """
    _check_name("swarm", swarm)
    root = f"edgedfl/{swarm}"
    lines = [f"# edgedfl ACL for swarm {swarm!r}, written by edgedfl.brokers.launch.write_acl", ""]
    for admin in admins:
        _check_name("admin", admin)
        lines += [f"user {admin}", f"topic readwrite {root}/#", ""]
    for node in node_ids:
        _check_name("node_id", node)
        lines += [
            f"user {node}",
            f"topic read {root}/#",
            f"topic write {root}/presence/{node}",
            f"topic write {root}/hello/{node}",
            f"topic write {root}/update/+/{node}",
            f"topic write {root}/ack/+/{node}",
            f"topic write {root}/expert/+/{node}",
            f"topic write {root}/metrics/{node}",
            "",
        ]
    return "\n".join(lines)


def write_acl(
    path: str | os.PathLike[str], swarm: str, node_ids: Iterable[str], *, admins: Iterable[str] = ()
) -> Path:
    """Write :func:`acl_text` to ``path`` (for ``MosquittoBroker(acl_file=...)``)."""
    path = Path(path)
    path.write_text(acl_text(swarm, node_ids, admins=admins))
    return path


def write_password_file(path: str | os.PathLike[str], users: Mapping[str, str]) -> Path:
    """Write a Mosquitto password file for ``users`` (name -> password), hashed by ``mosquitto_passwd -U``."""
    tool = shutil.which("mosquitto_passwd")
    if tool is None:
        raise BackendUnavailable("mosquitto_passwd not found: install Mosquitto (`apt-get install mosquitto`)")
    path = Path(path)
    for name, secret in users.items():
        _check_name("username", name)
        if ":" in secret or "\n" in secret:
            raise ConfigError(f"password of {name!r}: ':' and newlines are not allowed")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.writelines(f"{name}:{secret}\n" for name, secret in users.items())
    result = subprocess.run([tool, "-U", str(path)], check=False, capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        path.unlink(missing_ok=True)
        raise BrokerUnavailable(f"mosquitto_passwd -U failed: {result.stderr.strip() or result.stdout.strip()}")
    return path
