"""The MQTT transport: :class:`MqttTransport` on paho-mqtt 2.x, and :func:`transport_from_url`.

paho is used the way its authors intend: callback API version 2,
``loop_start()`` (paho's network thread), subscriptions (re)made in
``on_connect`` so they come back after every reconnect, and callbacks that only
decode and enqueue into a bounded :class:`~edgedfl.transport.inbox.Inbox`.

Decisions a user should know:

- **Connect is synchronous.** The constructor returns once the broker's CONNACK
  accepted us, or raises :class:`BrokerUnavailable` (nothing listening, TLS
  failure, no CONNACK within ``connect_timeout``) or :class:`NotAuthorized`
  (bad username/password, not authorized). The first connect is never retried
  silently; after it succeeded, paho reconnects by itself with exponential
  backoff between ``reconnect_min`` and ``reconnect_max`` seconds.
- **Persistent session by default** (``clean_session=False``; MQTT 5:
  ``clean_start=False`` plus a session expiry). The broker keeps our
  subscriptions and queues QoS 1 messages while we are away. paho keeps *its*
  half of the session (unacknowledged outgoing messages) in memory only: the
  neighbour protocol's on-disk outbox covers a process crash.
- **Sizes are checked before publishing.** A payload over ``max_payload`` (the
  broker's ``message_size_limit``; set it, or use a URL/broker helper that
  carries it), or a packet over the broker's advertised MQTT 5 maximum packet
  size, raises :class:`PayloadTooLarge` and nothing is sent. Without this check
  Mosquitto drops an oversize MQTT 3.1.1 publish silently, and an oversize MQTT 5
  publish makes paho reconnect and resend it forever.
- **QoS 1 publish waits for PUBACK**, up to ``publish_timeout`` seconds (default
  30; per call ``timeout=``). A PUBACK means the broker took responsibility,
  not that any subscriber has it (end-to-end acks are the protocol's job).
  On timeout :class:`PublishTimeout` is raised, but the message stays queued
  in paho and may still be delivered after a reconnect. ``publish_timeout=None``
  makes QoS 1 fire-and-forget. ``publish_many`` sends the chunks of one update
  back to back and then awaits every PUBACK (one round trip per chunk costs
  ~8 points of goodput on a 20 Mbit/s link: bench/results/goodput.md). With MQTT 5 a PUBACK failure code raises
  :class:`NotAuthorized` (0x87, an ACL denial) or :class:`PublishRefused`;
  MQTT 3.1.1 has no such codes and Mosquitto acknowledges a denied publish as if
  it had been delivered (it is not).
- **Publishing while disconnected**: QoS 1/2 messages are queued by paho and
  sent after the reconnect (so waiting for PUBACK may time out); QoS 0 raises
  :class:`NotConnected`.
- **Inbound**: the inbox is bounded by messages and bytes; when full, the
  incoming message is dropped and counted in :attr:`MqttTransport.dropped`.
- **One network thread per session, or one for many.** By default paho's own
  thread drives the socket; ``loop=`` a :class:`~edgedfl.transport.netloop.NetworkLoop`
  makes one thread drive many sessions (a device host's hundreds of devices).
- **Subscribe waits for SUBACK** (up to the longer of ``connect_timeout`` and ``publish_timeout``) when connected, so a message published after
  ``subscribe()`` returns is delivered. While disconnected it only records the
  filter, which ``on_connect`` subscribes on the next connect.
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
import ssl
import threading
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edgedfl.errors import (
    BrokerUnavailable,
    ConfigError,
    NotAuthorized,
    NotConnected,
    PayloadTooLarge,
    PublishRefused,
    PublishTimeout,
    TransportError,
)
from edgedfl.transport.base import (
    MQTT_MAX_PACKET,
    Message,
    Transport,
    publish_packet_size,
    validate_filter,
    validate_topic,
)
from edgedfl.transport.inbox import Inbox
from edgedfl.transport.netloop import NetworkLoop

log = logging.getLogger("edgedfl.transport.mqtt")

_ids = itertools.count(1)
_DEFAULT = object()  # "use the transport's publish_timeout"

# CONNACK / PUBACK / SUBACK codes that mean "you may not" (3.1.1 numbers, then MQTT 5 numbers)
_AUTH_CODES_311 = {4, 5}
_AUTH_CODES_5 = {0x86, 0x87, 0x8C}
_NOT_AUTHORIZED = 0x87


@dataclass(frozen=True)
class TlsOptions:
    """TLS settings: the CA that signed the broker, and our client certificate if the broker wants one."""

    ca_certs: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    #: skip the host name check (self-signed test setups that name no host); the chain is still verified
    insecure: bool = False


def _code_value(rc: ReasonCode | int) -> int:
    return rc.value if isinstance(rc, ReasonCode) else int(rc)


def _is_failure(rc: ReasonCode | int) -> bool:
    return _code_value(rc) >= 0x80


class MqttTransport(Transport):
    """A :class:`Transport` over an MQTT broker (MQTT 5 or 3.1.1) with paho-mqtt 2.x.

    ``url`` (``mqtt://[user:pass@]host:port[?protocol=311&max_payload=N&keepalive=S]``
    or ``mqtts://...``) or ``host``/``port``; explicit keyword arguments win over
    the URL's query. See the module docstring for the delivery decisions.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        host: str | None = None,
        port: int | None = None,
        client_id: str | None = None,
        protocol: int | None = None,
        clean_session: bool = False,
        session_expiry: int = 3600,
        will: Message | None = None,
        username: str | None = None,
        password: str | None = None,
        tls: TlsOptions | None = None,
        keepalive: int | None = None,
        max_payload: int | None = None,
        reconnect_min: float = 0.5,
        reconnect_max: float = 30.0,
        connect_timeout: float = 10.0,
        publish_timeout: float | None = 30.0,
        inbox_max_messages: int = 10_000,
        inbox_max_bytes: int = 512 * 1024 * 1024,
        loop: NetworkLoop | None = None,
    ) -> None:
        opts = _parse_url(url) if url else {}
        self.host: str = host or opts.get("host") or "127.0.0.1"
        self.port: int = int(port or opts.get("port") or (8883 if tls else 1883))
        self.protocol: int = int(protocol or opts.get("protocol") or 5)
        if self.protocol not in (5, 311):
            raise ConfigError(f"MqttTransport.protocol={self.protocol!r}: use 5 or 311")
        self.keepalive: int = int(keepalive or opts.get("keepalive") or 60)
        self.max_payload = int(max_payload or opts.get("max_payload") or MQTT_MAX_PACKET)
        if tls is None and opts.get("tls"):
            tls = TlsOptions(ca_certs=opts.get("ca"), certfile=opts.get("cert"), keyfile=opts.get("key"))
        username = username if username is not None else opts.get("username")
        password = password if password is not None else opts.get("password")
        self.client_id: str = client_id or f"edgedfl-{os.getpid()}-{next(_ids)}"
        self.clean_session = clean_session
        self.session_expiry = session_expiry
        self.will = will
        self.tls = tls
        self.connect_timeout = connect_timeout
        self.reconnect_min = reconnect_min
        self.reconnect_max = reconnect_max
        self.publish_timeout = publish_timeout
        self.inbox = Inbox(inbox_max_messages, inbox_max_bytes)
        #: successful connections after the first
        self.reconnects = 0

        self._subs: dict[str, int] = {}
        self._cond = threading.Condition()  # guards everything below
        self._connected = False
        self._ready = False  # connected and the on_connect re-subscriptions acknowledged
        self._resub_mid: int | None = None
        self._closed = False
        self._first_result: ReasonCode | str | None = None
        self._connections = 0
        self._broker_max_packet: int | None = None
        self._acks: dict[int, list[ReasonCode]] = {}  # mid -> reason codes, for waiting callers
        self._forget: set[int] = set()  # mids nobody waits for
        #: the shared network loop driving this session (None: paho's own thread)
        self._loop = loop

        self._client = self._make_client(username, password)
        self._connect()

    # -- set-up -------------------------------------------------------------------

    def _make_client(self, username: str | None, password: str | None) -> mqtt.Client:
        v5 = self.protocol == 5
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            clean_session=None if v5 else self.clean_session,
        )
        client.enable_logger(logging.getLogger("edgedfl.transport.paho"))
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        client.on_unsubscribe = self._on_unsubscribe
        client.reconnect_delay_set(self._delay(self.reconnect_min), self._delay(self.reconnect_max))
        client.max_queued_messages_set(0)  # QoS 1 messages wait for the link, unbounded (outbox bounds them)
        client.connect_timeout = self.connect_timeout
        if self.will is not None:
            validate_topic(self.will.topic)
            client.will_set(self.will.topic, self.will.payload, qos=self.will.qos, retain=self.will.retain)
        if username is not None:
            client.username_pw_set(username, password)
        if self.tls is not None:
            client.tls_set(
                ca_certs=self.tls.ca_certs,
                certfile=self.tls.certfile,
                keyfile=self.tls.keyfile,
                cert_reqs=ssl.CERT_REQUIRED,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
            if self.tls.insecure:
                client.tls_insecure_set(True)
        return client

    @staticmethod
    def _delay(seconds: float) -> Any:
        return seconds  # paho annotates int but sleeps on floats; sub-second backoff matters on a LAN

    def _connect(self) -> None:
        v5 = self.protocol == 5
        props = None
        if v5:
            props = Properties(PacketTypes.CONNECT)
            if not self.clean_session:
                props.SessionExpiryInterval = self.session_expiry
        where = f"mqtt{'s' if self.tls else ''}://{self.host}:{self.port}"
        if self._loop is not None:
            self._loop.attach(self)
        try:
            if v5:
                self._client.connect(
                    self.host, self.port, self.keepalive, clean_start=self.clean_session, properties=props
                )
            else:
                self._client.connect(self.host, self.port, self.keepalive)
        except (OSError, ssl.SSLError) as exc:
            if self._loop is not None:
                self._loop.detach(self)
            raise BrokerUnavailable(f"cannot connect to the MQTT broker at {where}: {exc}") from exc
        if self._loop is None:
            self._client.loop_start()
        deadline = time.monotonic() + self.connect_timeout
        with self._cond:
            while self._first_result is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            result = self._first_result
        if isinstance(result, ReasonCode) and not result.is_failure:
            log.debug("%s connected to %s (protocol %s)", self.client_id, where, self.protocol)
            return
        self._shutdown(send_disconnect=False)
        if result is None:
            raise BrokerUnavailable(f"no CONNACK from {where} within {self.connect_timeout:g} s")
        if isinstance(result, ReasonCode):
            codes = _AUTH_CODES_5 if v5 else _AUTH_CODES_311
            if _code_value(result) in codes:
                raise NotAuthorized(f"{where} refused {self.client_id!r}: {result}")
            raise BrokerUnavailable(f"{where} refused the connection: {result}")
        raise BrokerUnavailable(f"{where} closed the connection before CONNACK: {result}")

    # -- paho callbacks (network thread: decode, record, enqueue; never block) ---------

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, rc: ReasonCode, props: Properties | None
    ) -> None:
        if rc.is_failure:
            log.warning("%s: broker refused the connection: %s", self.client_id, rc)
            with self._cond:
                if self._first_result is None:
                    self._first_result = rc
                self._cond.notify_all()
            return
        max_packet = getattr(props, "MaximumPacketSize", None) if props is not None else None
        with self._cond:
            subs = list(self._subs.items())
            self._connected = True
            self._broker_max_packet = int(max_packet) if max_packet else None
            self._connections += 1
            if self._connections > 1:
                self.reconnects += 1
                log.info("%s reconnected (%d)", self.client_id, self.reconnects)
            if self._first_result is None:
                self._first_result = rc
            self._ready = not subs
            self._cond.notify_all()
        if subs:
            # restore the subscriptions (a clean session, or a broker that lost ours); the SUBACK
            # comes on this same thread after we return, so recording the mid now cannot race it
            result, mid = client.subscribe(subs)
            if result == MQTTErrorCode.MQTT_ERR_SUCCESS and mid is not None:
                with self._cond:
                    self._forget.add(mid)
                    self._resub_mid = mid

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, rc: ReasonCode, props: Properties | None
    ) -> None:
        with self._cond:
            was = self._connected
            self._connected = False
            self._ready = False
            if self._first_result is None:
                self._first_result = f"disconnected ({rc})"
            self._cond.notify_all()
        if was and not self._closed:
            log.warning("%s lost the broker (%s); paho reconnects with backoff", self.client_id, rc)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            topic = msg.topic
        except UnicodeDecodeError:
            log.warning("%s: dropped a message whose topic is not UTF-8", self.client_id)
            return
        self.inbox.put(Message(topic, bytes(msg.payload), retain=bool(msg.retain), qos=msg.qos))

    def _record_ack(self, mid: int, codes: list[ReasonCode]) -> None:
        with self._cond:
            if mid == self._resub_mid:
                self._resub_mid = None
                self._ready = self._connected
                self._cond.notify_all()
            if mid in self._forget:
                self._forget.discard(mid)
                failed = [c for c in codes if _is_failure(c)]
                if failed:
                    log.warning("%s: broker refused mid %d: %s", self.client_id, mid, failed)
                return
            self._acks[mid] = codes
            self._cond.notify_all()

    def _on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, rc: ReasonCode, props: Properties | None
    ) -> None:
        self._record_ack(mid, [rc])

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, rcs: list[ReasonCode], props: Properties | None
    ) -> None:
        self._record_ack(mid, list(rcs))

    def _on_unsubscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, rcs: list[ReasonCode], props: Properties | None
    ) -> None:
        self._record_ack(mid, list(rcs) if isinstance(rcs, list) else [rcs])

    # -- waiting for acknowledgements -------------------------------------------------

    def _wait_ack(self, mid: int, timeout: float | None) -> list[ReasonCode] | None:
        """The reason codes for ``mid``, or ``None`` on timeout (then nobody waits for it any more)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while mid not in self._acks:
                if deadline is None:
                    self._cond.wait()
                    continue
                left = deadline - time.monotonic()
                if left <= 0:
                    self._forget.add(mid)
                    return None
                self._cond.wait(left)
            return self._acks.pop(mid)

    def _forget_mid(self, mid: int) -> None:
        with self._cond:
            if self._acks.pop(mid, None) is None:
                self._forget.add(mid)

    # -- Transport ----------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        with self._cond:
            return self._connected and not self._closed

    @property
    def dropped(self) -> int:
        """Inbound messages dropped because the inbox was full."""
        return self.inbox.dropped

    def wait_connected(self, timeout: float | None = None) -> bool:
        """Block until the link is up and our subscriptions are restored (e.g. after a broker restart).

        ``False`` on timeout or when the transport is closed.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not (self._ready or self._closed):
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left)
            return self._ready and not self._closed

    def check_size(self, topic: str, payload_len: int, qos: int = 1) -> None:
        """Raise :class:`PayloadTooLarge` if such a publish would exceed the broker's limits."""
        validate_topic(topic)
        if payload_len > self.max_payload:
            raise PayloadTooLarge(
                f"payload of {payload_len} bytes on {topic!r} exceeds the broker's limit of "
                f"{self.max_payload} bytes (message_size_limit); split it into chunks"
            )
        packet = publish_packet_size(topic, payload_len, qos, mqtt5=self.protocol == 5)
        limit = min(MQTT_MAX_PACKET, self._broker_max_packet or MQTT_MAX_PACKET)
        if packet > limit:
            raise PayloadTooLarge(
                f"a {payload_len}-byte payload on {topic!r} makes a {packet}-byte MQTT packet, over the "
                f"maximum packet size of {limit} bytes"
            )

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        timeout: float | None | object = _DEFAULT,
    ) -> None:
        """Publish; for QoS >= 1 wait for the broker's acknowledgement up to ``timeout`` seconds.

        ``timeout`` defaults to the transport's ``publish_timeout``; ``None``
        returns as soon as paho has the message.
        """
        wait = self.publish_timeout if timeout is _DEFAULT else timeout
        assert wait is None or isinstance(wait, (int, float))
        self._publish_batch([Message(topic, bytes(payload), retain=retain, qos=qos)], wait)

    def publish_many(self, messages: list[Message], *, timeout: float | None | object = _DEFAULT) -> None:
        """Send all ``messages`` back to back, then wait for every PUBACK (pipelined QoS 1).

        Sizes are all checked before anything is sent. ``timeout`` bounds the
        wait for the whole batch (default: ``publish_timeout``).
        """
        wait = self.publish_timeout if timeout is _DEFAULT else timeout
        assert wait is None or isinstance(wait, (int, float))
        self._publish_batch([Message(m.topic, bytes(m.payload), m.retain, m.qos) for m in messages], wait)

    def _publish_batch(self, messages: list[Message], wait: float | None) -> None:
        for m in messages:
            if m.qos not in (0, 1, 2):
                raise ValueError(f"qos must be 0, 1 or 2, got {m.qos}")
            self.check_size(m.topic, len(m.payload), m.qos)
        if self._closed:
            raise NotConnected(f"{self.client_id}: transport is closed")
        if any(m.qos == 0 for m in messages) and not self.connected:
            raise NotConnected(f"{self.client_id}: no link to the broker for a QoS 0 publish")
        pending: list[tuple[int, Message]] = []
        for m in messages:
            info = self._client.publish(m.topic, m.payload, qos=m.qos, retain=m.retain)
            if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
                for mid, _ in pending:
                    self._forget_mid(mid)
                raise TransportError(
                    f"{self.client_id}: publish on {m.topic!r} failed: {mqtt.error_string(info.rc)}"
                )
            if m.qos > 0:
                pending.append((info.mid, m))
        if wait is None:
            for mid, _ in pending:
                self._forget_mid(mid)
            return
        deadline = time.monotonic() + float(wait)
        failure: TransportError | None = None
        for i, (mid, m) in enumerate(pending):
            codes = self._wait_ack(mid, max(0.0, deadline - time.monotonic()))
            if codes is None:
                for later, _ in pending[i + 1 :]:
                    self._forget_mid(later)
                raise PublishTimeout(
                    f"{self.client_id}: no PUBACK for {len(m.payload)} bytes on {m.topic!r} within {wait:g} s "
                    "(paho keeps it queued and may still deliver it)"
                )
            try:
                self._raise_for_codes(codes, f"publish on {m.topic!r}", refused=PublishRefused)
            except TransportError as exc:
                failure = failure or exc  # keep collecting acks so none is left behind
        if failure is not None:
            raise failure

    def _raise_for_codes(self, codes: list[ReasonCode], what: str, *, refused: type[TransportError]) -> None:
        for code in codes:
            if _is_failure(code):
                if _code_value(code) == _NOT_AUTHORIZED:
                    raise NotAuthorized(f"{self.client_id}: broker refused {what}: {code}")
                raise refused(f"{self.client_id}: broker refused {what}: {code} (0x{_code_value(code):02x})")

    def subscribe(self, pattern: str, *, qos: int = 1, timeout: float | None = None) -> None:
        validate_filter(pattern)
        if self._closed:
            raise NotConnected(f"{self.client_id}: transport is closed")
        with self._cond:
            self._subs[pattern] = qos
        if not self.connected:
            return  # on_connect subscribes it on the next connect
        result, mid = self._client.subscribe(pattern, qos)
        if result != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            return  # the link just dropped; on_connect will subscribe
        if timeout is None:
            timeout = max(self.connect_timeout, self.publish_timeout or 0.0)
        codes = self._wait_ack(mid, timeout)
        if codes is None:
            raise PublishTimeout(f"{self.client_id}: no SUBACK for {pattern!r} within {timeout:g} s")
        self._raise_for_codes(codes, f"subscription to {pattern!r}", refused=TransportError)

    def unsubscribe(self, pattern: str) -> None:
        with self._cond:
            self._subs.pop(pattern, None)
        if self.connected:
            result, mid = self._client.unsubscribe(pattern)
            if result == MQTTErrorCode.MQTT_ERR_SUCCESS and mid is not None:
                self._wait_ack(mid, self.connect_timeout)

    def receive(self, timeout: float | None = None) -> Message | None:
        return self.inbox.get(timeout)

    def close(self) -> None:
        """Send DISCONNECT (so the broker discards our last will) and stop paho's thread. Idempotent."""
        self._shutdown(send_disconnect=True)

    def abort(self) -> None:
        """Drop the link without DISCONNECT, as a crash would: the broker publishes our last will.

        For tests and the emulator; the transport is closed afterwards.
        """
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        if self._loop is not None:
            self._loop.detach(self)
            return
        self._client.loop_stop()
        sock = self._client.socket()
        if isinstance(sock, socket.socket):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def _shutdown(self, *, send_disconnect: bool) -> None:
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        if self._loop is not None:
            if send_disconnect:
                self._client.disconnect()  # written by the loop, which then closes the socket
                self._loop.wait_closed(self, 2.0)
            self._loop.detach(self)
            return
        # DISCONNECT also ends paho's reconnect loop; without a link it only changes paho's state
        self._client.disconnect()
        self._client.loop_stop()
        if not send_disconnect:
            sock = self._client.socket()
            if isinstance(sock, socket.socket):
                sock.close()

    def __repr__(self) -> str:
        return f"MqttTransport({self.host}:{self.port}, client_id={self.client_id!r}, protocol={self.protocol})"


def _parse_url(url: str) -> dict[str, Any]:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
        raise ConfigError(f"url={url!r}: scheme must be mqtt:// or mqtts://")
    out: dict[str, Any] = {"host": parts.hostname, "port": parts.port, "tls": parts.scheme in ("mqtts", "ssl")}
    if parts.username:
        out["username"] = urllib.parse.unquote(parts.username)
    if parts.password:
        out["password"] = urllib.parse.unquote(parts.password)
    for key, value in urllib.parse.parse_qsl(parts.query):
        if key in ("protocol", "max_payload", "keepalive"):
            try:
                out[key] = int(value)
            except ValueError as exc:
                raise ConfigError(f"url={url!r}: {key}={value!r} is not an integer") from exc
        elif key in ("ca", "cert", "key"):
            out[key] = value
        elif key == "password_file":  # the password stays in its file, out of configs and logs
            try:
                out["password"] = Path(value).read_text().strip()
            except OSError as exc:
                raise ConfigError(f"url: password_file={value!r} cannot be read: {exc}") from None
        else:
            raise ConfigError(f"url={url!r}: unknown query parameter {key!r}")
    return out
