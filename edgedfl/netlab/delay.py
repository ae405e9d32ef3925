"""A user-space TCP delay line: this kernel has no netem, so latency is added by a proxy.

:class:`DelayProxy` listens on an address (optionally inside a network
namespace), connects each accepted client to a target, and holds every chunk
of bytes for ``delay_s`` in each direction before passing it on, so the round
trip grows by ``2 * delay_s``. Throughput is not limited: each direction
buffers up to ``max_buffer`` bytes in flight and then stops reading, which
lets TCP's own flow control push back. Threads, not asyncio, so a proxy can
live in a namespace entered with :func:`edgedfl.netlab.ns.inside`.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import socket
import threading
import time

from edgedfl.netlab.ns import inside

log = logging.getLogger("edgedfl.netlab.delay")

_EOF = b""


class _Pipe:
    """One direction of one connection: read from ``src``, write to ``dst`` ``delay_s`` later."""

    def __init__(self, src: socket.socket, dst: socket.socket, delay_s: float, max_buffer: int,
                 on_done: threading.Event) -> None:
        self.src, self.dst, self.delay_s, self.max_buffer = src, dst, delay_s, max_buffer
        self.queue: collections.deque[tuple[float, bytes]] = collections.deque()
        self.buffered = 0
        self.cond = threading.Condition()
        self.done = on_done
        threading.Thread(target=self._read, daemon=True, name="delay-read").start()
        threading.Thread(target=self._write, daemon=True, name="delay-write").start()

    def _read(self) -> None:
        try:
            while True:
                data = self.src.recv(65536)
                due = time.monotonic() + self.delay_s
                with self.cond:
                    while self.buffered >= self.max_buffer and not self.done.is_set():
                        self.cond.wait(0.5)
                    self.queue.append((due, data))
                    self.buffered += len(data)
                    self.cond.notify_all()
                if not data:
                    return
        except OSError:
            with self.cond:
                self.queue.append((time.monotonic(), _EOF))
                self.cond.notify_all()

    def _write(self) -> None:
        try:
            while True:
                with self.cond:
                    while not self.queue:
                        self.cond.wait()
                    due, data = self.queue[0]
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)  # a delay line: waiting is the point
                with self.cond:
                    self.queue.popleft()
                    self.buffered -= len(data)
                    self.cond.notify_all()
                if not data:
                    with contextlib.suppress(OSError):
                        self.dst.shutdown(socket.SHUT_WR)
                    return
                self.dst.sendall(data)
        except OSError:
            pass
        finally:
            self.done.set()


class DelayProxy:
    """Accept on ``listen`` (in namespace ``ns``), forward to ``target`` with ``delay_s`` each way."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int], delay_s: float, *,
                 ns: str | None = None, max_buffer: int = 8 * 1024 * 1024) -> None:
        self.target = target
        self.delay_s = delay_s
        self.ns = ns
        self.max_buffer = max_buffer
        self._stop = threading.Event()
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        ready = threading.Event()
        failure: list[BaseException] = []
        self._listener: socket.socket | None = None

        def serve() -> None:
            try:
                ctx = inside(ns) if ns else contextlib.nullcontext()
                with ctx:
                    # created inside the namespace: the sockets stay there when the thread leaves it
                    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    srv.bind(listen)
                    srv.listen(64)
                    self._listener = srv
                    ready.set()
                    self._accept_loop(srv)
            except BaseException as exc:  # noqa: BLE001 - reported to the constructor
                failure.append(exc)
                ready.set()

        self._thread = threading.Thread(target=serve, daemon=True, name=f"delay-proxy-{listen}")
        self._thread.start()
        ready.wait(10)
        if failure or self._listener is None:
            raise OSError(f"delay proxy on {listen} failed: {failure[0] if failure else 'timeout'}")
        self.address: tuple[str, int] = self._listener.getsockname()[:2]

    def _accept_loop(self, srv: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                client, _ = srv.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=10)  # in the namespace too
                upstream.settimeout(None)
            except OSError as exc:
                log.warning("delay proxy: cannot reach %s: %s", self.target, exc)
                client.close()
                continue
            for s in (client, upstream):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._conns += [client, upstream]
            done = threading.Event()
            _Pipe(client, upstream, self.delay_s, self.max_buffer, done)
            _Pipe(upstream, client, self.delay_s, self.max_buffer, done)

    def close(self) -> None:
        """Stop accepting and cut every proxied connection. Idempotent."""
        self._stop.set()
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
        self._thread.join(5)
