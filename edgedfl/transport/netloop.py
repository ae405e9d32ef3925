"""One network thread for many MQTT sessions: :class:`NetworkLoop`.

By default every :class:`~edgedfl.transport.mqtt.MqttTransport` runs paho's own
network thread (``loop_start()``). A device host serving hundreds of emulated
devices, each with its own MQTT session, would then run hundreds of network
threads that all compete for one interpreter: with ~250 devices in a host a
new session's thread did not get to read its CONNACK within 10 s
(bench/results/scale-1000-attempt.md). A :class:`NetworkLoop` serves all the
sessions of a process from one thread instead, through paho's external-loop
calls (``loop_read`` / ``loop_write`` / ``loop_misc``) on one selector.

Decisions:

* **Same session semantics.** Each transport keeps its client id, last will,
  persistent session, subscriptions and callbacks; only who drives the socket
  changes. Publishing from any thread queues the packet in paho and asks the
  loop (through a wake-up socket) to write it.
* **Reconnects off the loop.** A lost session is reconnected with the
  transport's own backoff (``reconnect_min`` doubling to ``reconnect_max``),
  in a small pool of threads: a TCP connect to an unreachable broker blocks up
  to ``connect_timeout`` and must not stall the other sessions.
* **One bad session stays alone.** An exception while serving one socket is
  logged and drops that session (which then reconnects); the loop goes on.

``MqttTransport(..., loop=NetworkLoop.shared())`` attaches a session; device
hosts do so for every device they serve (:mod:`edgedfl.emulation.host`).
"""

from __future__ import annotations

import logging
import selectors
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar

log = logging.getLogger("edgedfl.transport.netloop")

#: how often keepalives are checked and lost sessions considered for a reconnect (seconds)
MISC_INTERVAL_S = 0.5


class _Session:
    """The loop's record of one attached transport."""

    __slots__ = ("closing", "delay", "next_try", "reconnecting", "sock", "transport", "want_write")

    def __init__(self, transport: Any) -> None:
        self.transport = transport
        self.sock: socket.socket | None = None
        self.want_write = False
        self.closing = False  # closed by its owner: never reconnected
        self.reconnecting = False
        self.delay = float(transport.reconnect_min)
        self.next_try = 0.0


class NetworkLoop:
    """A thread that drives the sockets of many paho clients (see the module docstring)."""

    _shared: ClassVar[NetworkLoop | None] = None
    _shared_lock: ClassVar[threading.Lock] = threading.Lock()

    @classmethod
    def shared(cls) -> NetworkLoop:
        """This process's loop, started on first use."""
        with cls._shared_lock:
            if cls._shared is None or not cls._shared.alive:
                cls._shared = cls()
            return cls._shared

    def __init__(self, *, name: str = "edgedfl-netloop", reconnect_workers: int = 4) -> None:
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._lock = threading.Lock()
        self._ops: list[Callable[[], None]] = []
        self._sessions: dict[int, _Session] = {}  # id(transport) -> session
        self._stop = False
        self._reconnects = ThreadPoolExecutor(max_workers=reconnect_workers, thread_name_prefix=f"{name}-reconnect")
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._stop

    @property
    def sessions(self) -> int:
        """Transports attached now."""
        with self._lock:
            return len(self._sessions)

    def in_loop(self) -> bool:
        return threading.get_ident() == self._thread.ident

    # -- attaching --------------------------------------------------------------------

    def attach(self, transport: Any) -> None:
        """Drive ``transport``'s paho client from this loop (call before its first connect)."""
        session = _Session(transport)
        with self._lock:
            self._sessions[id(transport)] = session
        client = transport._client
        client.on_socket_open = lambda c, u, sock: self._call(lambda: self._open(session, sock))
        client.on_socket_close = lambda c, u, sock: self._call(lambda: self._close(session, sock))
        client.on_socket_register_write = lambda c, u, sock: self._call(lambda: self._want(session, sock, True))
        client.on_socket_unregister_write = lambda c, u, sock: self._call(lambda: self._want(session, sock, False))

    def detach(self, transport: Any, *, timeout: float = 5.0) -> None:
        """Stop driving ``transport``: never reconnected again, its socket (if still open) closed as is,
        without DISCONNECT (a closing transport has written its DISCONNECT before)."""
        with self._lock:
            session = self._sessions.get(id(transport))
        if session is None:
            return
        session.closing = True
        done = threading.Event()

        def forget() -> None:
            try:
                self._drop_socket(session)
                with self._lock:
                    self._sessions.pop(id(transport), None)
            finally:
                done.set()

        self._call(forget)
        if not self.in_loop():
            done.wait(timeout)

    def wait_closed(self, transport: Any, timeout: float) -> bool:
        """Wait until ``transport``'s socket was closed (its DISCONNECT written), up to ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._lock:
            session = self._sessions.get(id(transport))
        while session is not None and session.sock is not None and time.monotonic() < deadline:
            time.sleep(0.01)
        return session is None or session.sock is None

    # -- operations, run on the loop thread ----------------------------------------------

    def _call(self, op: Callable[[], None]) -> None:
        if self.in_loop():
            op()
            return
        with self._lock:
            self._ops.append(op)
        try:
            self._wake_w.send(b"x")
        except (BlockingIOError, OSError):
            pass  # the wake-up socket is full: the loop is awake already

    def _open(self, session: _Session, sock: Any) -> None:
        if session.closing:
            return
        if session.sock is not None and session.sock is not sock:
            self._unregister(session.sock)
        session.sock = sock
        self._register(session)

    def _close(self, session: _Session, sock: Any) -> None:
        self._unregister(sock)
        if session.sock is sock:
            session.sock = None
            session.want_write = False

    def _want(self, session: _Session, sock: Any, on: bool) -> None:
        if session.sock is not sock or session.closing:
            return
        session.want_write = on
        self._register(session)

    def _register(self, session: _Session) -> None:
        assert session.sock is not None
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if session.want_write else 0)
        try:
            key = self._sel.get_key(session.sock)
        except (KeyError, ValueError):
            key = None
        try:
            if key is None:
                self._sel.register(session.sock, events, session)
            elif key.events != events or key.data is not session:
                self._sel.modify(session.sock, events, session)
        except (ValueError, OSError) as exc:  # a socket closed under us: the session's close follows
            log.debug("%s: cannot watch its socket: %s", session.transport.client_id, exc)

    def _drop_socket(self, session: _Session) -> None:
        """Stop watching the session's socket and close it as is (the broker sees a lost link)."""
        sock, session.sock = session.sock, None
        if sock is None:
            return
        self._unregister(sock)
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            sock.close()
        except OSError:
            pass

    def _unregister(self, sock: Any) -> None:
        try:
            self._sel.unregister(sock)
        except (KeyError, ValueError, OSError):
            pass

    # -- the loop ------------------------------------------------------------------------

    def _run(self) -> None:
        last_misc = 0.0
        while not self._stop:
            with self._lock:
                ops, self._ops = self._ops, []
            for op in ops:
                try:
                    op()
                except Exception:  # an op of one session must not end the loop
                    log.exception("network loop operation failed")
            try:
                events = self._sel.select(timeout=MISC_INTERVAL_S)
            except OSError as exc:  # a socket closed between two ops
                log.debug("select: %s", exc)
                events = []
            for key, mask in events:
                if key.data is None:
                    try:
                        while self._wake_r.recv(4096):
                            pass
                    except (BlockingIOError, OSError):
                        pass
                    continue
                self._serve(key.data, mask)
            now = time.monotonic()
            if now - last_misc >= MISC_INTERVAL_S:
                last_misc = now
                self._misc(now)

    def _serve(self, session: _Session, mask: int) -> None:
        client = session.transport._client
        try:
            if mask & selectors.EVENT_READ:
                client.loop_read()
            if mask & selectors.EVENT_WRITE and session.sock is not None:
                client.loop_write()
            # a publish from another thread between paho's "nothing to write" and its unregister call
            # finds the write interest still flagged and does not ask again: look once more
            if session.sock is not None and not session.want_write and client.want_write():
                session.want_write = True
                self._register(session)
        except Exception:
            log.exception("%s: network error; dropping the link", session.transport.client_id)
            self._drop_socket(session)

    def _misc(self, now: float) -> None:
        with self._lock:
            sessions = list(self._sessions.values())
        for s in sessions:
            if s.closing:
                continue
            client = s.transport._client
            if s.sock is not None:
                try:
                    client.loop_misc()
                except Exception:
                    log.exception("%s: keepalive check failed", s.transport.client_id)
                continue
            if s.reconnecting or not s.transport._connections or now < s.next_try:
                continue  # the first connect is the constructor's; later ones are ours
            s.reconnecting = True
            self._reconnects.submit(self._reconnect, s)

    def _reconnect(self, s: _Session) -> None:
        try:
            if s.closing:
                return
            s.transport._client.reconnect()
            s.delay = float(s.transport.reconnect_min)
        except (OSError, ValueError) as exc:  # refused, unreachable, TLS failure: try again later
            log.debug("%s: reconnect failed: %s", s.transport.client_id, exc)
            s.delay = min(s.delay * 2, float(s.transport.reconnect_max))
        finally:
            s.next_try = time.monotonic() + s.delay
            s.reconnecting = False

    def stop(self) -> None:
        """End the loop (the sessions' sockets are left as they are); for tests."""
        self._stop = True
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        self._thread.join(timeout=5)
        self._reconnects.shutdown(wait=False)
        self._sel.close()
        self._wake_r.close()
        self._wake_w.close()
