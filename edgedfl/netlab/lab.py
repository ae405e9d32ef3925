"""A star of network namespaces with shaped links: :class:`Lab` and its :class:`Host` s.

::

             host ns "dev1"                       hub ns (broker runs here)
      10.77.1.2 [veth]====== tbf rate, loss ======[veth] 10.77.1.1
             host ns "dev2"                        (ip_forward on, so hosts
      10.77.2.2 [veth]====== tbf rate, loss ======[veth] 10.77.2.1  reach each other)

Each :meth:`Lab.add_host` creates a namespace and a veth pair to the hub
namespace. ``rate_bps`` becomes a ``tc tbf`` qdisc on *both* ends (upload and
download are each limited to the rate: a full-duplex link); ``loss_pct``
becomes nftables ``numgen random`` drop rules on the host end, both
directions; ``delay_ms`` (one way) is added by a :class:`DelayProxy` in the
hub, because this kernel has no netem: reach a hub service through
:meth:`Lab.endpoint`, which gives the proxied address when the host has a
delay. Needs root (:func:`can_shape_links`). :meth:`Lab.close` (or leaving the
``with`` block, error or not) deletes the namespaces, which takes their
veths, qdiscs and nft tables with them, stops proxies and kills processes
started with :meth:`Lab.popen`.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import logging
import os
import secrets
import socket
import subprocess
import threading
from collections.abc import Iterator, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

from edgedfl.errors import ConfigError
from edgedfl.netlab.delay import DelayProxy
from edgedfl.netlab.ns import NetlabError, can_shape_links, inside, ns_exec, sh

if TYPE_CHECKING:  # Python 3.10 has no typing.Self
    from typing_extensions import Self

log = logging.getLogger("edgedfl.netlab")

_MTU = 1500


@dataclasses.dataclass
class Host:
    """One device's namespace and its link to the hub."""

    name: str
    ns: str
    index: int
    addr: str  # the host's address on its link
    gateway: str  # the hub's address on the same link: where hub services are reached
    host_if: str
    hub_if: str
    rate_bps: float | None
    loss_pct: float
    delay_ms: float


def tbf_args(rate_bps: float, *, latency_ms: float = 400.0) -> list[str]:
    """``tc`` arguments for a token bucket at ``rate_bps``: a burst of ~4 ms (at least two MTUs)."""
    burst = max(2 * _MTU + 200, int(rate_bps / 8 * 0.004))
    return ["tbf", "rate", f"{int(rate_bps)}bit", "burst", str(burst), "latency", f"{latency_ms:g}ms"]


class Lab:
    """Namespaces joined to one hub namespace by shaped veth links. Use as a context manager."""

    def __init__(self, prefix: str = "edl", *, subnet: int = 77) -> None:
        if not can_shape_links():
            raise NetlabError("link shaping needs root and working `ip netns` + `tc` (see can_shape_links())")
        if not 0 <= subnet <= 255:
            raise ConfigError(f"Lab.subnet={subnet}: must be 0..255 (the second octet of 10.x.i.0/24)")
        self.id = secrets.token_hex(2)
        self.prefix = prefix
        self.subnet = subnet
        self.hub = f"{prefix}-{self.id}-hub"
        self.hosts: dict[str, Host] = {}
        self._proxies: dict[tuple[str, int], DelayProxy] = {}
        self._procs: list[subprocess.Popen[Any]] = []
        self._namespaces: list[str] = []
        self._lock = threading.Lock()
        self._closed = False
        atexit.register(self.close)
        try:
            self._add_ns(self.hub)
            ns_exec(self.hub, ["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
        except BaseException:
            self.close()
            raise

    def _add_ns(self, ns: str) -> None:
        sh(["ip", "netns", "add", ns])
        self._namespaces.append(ns)
        ns_exec(ns, ["ip", "link", "set", "lo", "up"])

    def add_host(
        self,
        name: str,
        rate_bps: float | None = None,
        loss_pct: float = 0.0,
        delay_ms: float = 0.0,
        *,
        queue_ms: float = 400.0,
    ) -> Host:
        """A namespace ``name`` linked to the hub at ``rate_bps`` (each way), ``loss_pct`` and ``delay_ms``.

        ``queue_ms`` is tbf's ``latency``: how much queued data (in time at the
        rate) the link buffers before it drops.
        """
        if name in self.hosts or not name.replace("-", "").replace("_", "").isalnum() or len(name) > 20:
            raise ConfigError(f"Lab.add_host(name={name!r}): must be new, short and alphanumeric")
        if rate_bps is not None and rate_bps < 8000:
            raise ConfigError(f"Lab.add_host(rate_bps={rate_bps}): below 8 kbit/s is not a link")
        if not 0 <= loss_pct <= 100:
            raise ConfigError(f"Lab.add_host(loss_pct={loss_pct}): must be within 0..100")
        if delay_ms < 0:
            raise ConfigError(f"Lab.add_host(delay_ms={delay_ms}): must be >= 0")
        with self._lock:
            index = len(self.hosts) + 1
            if index > 250:
                raise ConfigError("Lab: at most 250 hosts")
            host = Host(
                name=name, ns=f"{self.prefix}-{self.id}-{name}", index=index,
                addr=f"10.{self.subnet}.{index}.2", gateway=f"10.{self.subnet}.{index}.1",
                host_if=f"e{self.id}h{index}", hub_if=f"e{self.id}b{index}",
                rate_bps=rate_bps, loss_pct=loss_pct, delay_ms=delay_ms,
            )
            self.hosts[name] = host
        self._add_ns(host.ns)
        sh(["ip", "link", "add", host.host_if, "netns", host.ns, "type", "veth", "peer", "name", host.hub_if,
            "netns", self.hub])
        ns_exec(host.ns, ["ip", "addr", "add", f"{host.addr}/24", "dev", host.host_if])
        ns_exec(host.ns, ["ip", "link", "set", host.host_if, "up"])
        ns_exec(host.ns, ["ip", "route", "add", "default", "via", host.gateway])
        ns_exec(self.hub, ["ip", "addr", "add", f"{host.gateway}/24", "dev", host.hub_if])
        ns_exec(self.hub, ["ip", "link", "set", host.hub_if, "up"])
        if rate_bps is not None:
            self.set_rate(host, rate_bps, queue_ms=queue_ms)
        if loss_pct > 0:
            self.set_loss(host, loss_pct)
        return host

    def set_rate(self, host: Host, rate_bps: float, *, queue_ms: float = 400.0) -> None:
        """(Re)shape ``host``'s link to ``rate_bps`` in each direction, buffering up to ``queue_ms``."""
        for ns, dev in ((host.ns, host.host_if), (self.hub, host.hub_if)):
            ns_exec(ns, ["tc", "qdisc", "replace", "dev", dev, "root", *tbf_args(rate_bps, latency_ms=queue_ms)])
        host.rate_bps = rate_bps

    def set_loss(self, host: Host, loss_pct: float) -> None:
        """Drop ``loss_pct`` % of packets at random, each direction, on ``host``'s link (nftables)."""
        if not 0 <= loss_pct <= 100:
            raise ConfigError(f"Lab.set_loss(loss_pct={loss_pct}): must be within 0..100")
        permille = round(loss_pct * 10)
        # numgen yields 0..999, so "< 1000" does not parse: full loss is a plain drop
        match = "" if permille >= 1000 else f"numgen random mod 1000 < {permille} "
        rules = "table inet edgedfl_loss\ndelete table inet edgedfl_loss\n"  # create-then-delete: idempotent
        if permille > 0:
            rules += (
                "table inet edgedfl_loss {\n"
                "  chain in { type filter hook input priority 0; policy accept;\n"
                f"    iifname \"{host.host_if}\" {match}drop\n  }}\n"
                "  chain out { type filter hook output priority 0; policy accept;\n"
                f"    oifname \"{host.host_if}\" {match}drop\n  }}\n"
                "}\n"
            )
        ns_exec(host.ns, ["nft", "-f", "-"], input=rules)
        host.loss_pct = loss_pct

    # -- reaching services and running things ---------------------------------------------

    def endpoint(self, host: Host, port: int, target_host: str = "127.0.0.1") -> tuple[str, int]:
        """Where ``host`` connects to reach hub port ``port`` (through a delay proxy if it has a delay)."""
        if host.delay_ms <= 0:
            return host.gateway, port
        key = (host.name, port)
        with self._lock:
            proxy = self._proxies.get(key)
            if proxy is None:
                proxy = DelayProxy((host.gateway, 0), (target_host, port), host.delay_ms / 1000, ns=self.hub)
                self._proxies[key] = proxy
        return proxy.address

    @contextlib.contextmanager
    def inside(self, where: Host | str) -> Iterator[None]:
        """This thread in ``where``'s namespace (a Host, a host name, or ``lab.hub``)."""
        with inside(self._ns(where)):
            yield

    def _ns(self, where: Host | str) -> str:
        if isinstance(where, Host):
            return where.ns
        if where in self.hosts:
            return self.hosts[where].ns
        if where in self._namespaces:
            return where
        raise ConfigError(f"Lab: no host or namespace {where!r}")

    def popen(self, where: Host | str, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` in ``where``'s namespace; it is killed by :meth:`close` if still running."""
        proc = subprocess.Popen(["ip", "netns", "exec", self._ns(where), *argv], **kwargs)
        with self._lock:
            self._procs.append(proc)
        return proc

    def run(self, where: Host | str, argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        """Run ``argv`` to completion in ``where``'s namespace."""
        kwargs.setdefault("timeout", 120)
        check = bool(kwargs.pop("check", False))
        return subprocess.run(["ip", "netns", "exec", self._ns(where), *argv], check=check, **kwargs)

    # -- teardown ------------------------------------------------------------------------------

    def close(self) -> None:
        """Remove everything this lab made; safe to call twice and after a failed set-up."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            proxies, procs, namespaces = list(self._proxies.values()), list(self._procs), list(self._namespaces)
        for proxy in proxies:
            with contextlib.suppress(Exception):
                proxy.close()
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                with contextlib.suppress(Exception):
                    proc.wait(5)
        for ns in reversed(namespaces):
            # processes started by others inside the namespace keep it alive as a mount; kill them first
            pids = sh(["ip", "netns", "pids", ns], check=False).stdout.split()
            for pid in pids:
                with contextlib.suppress(OSError):
                    os.kill(int(pid), 9)
            sh(["ip", "netns", "del", ns], check=False)
        atexit.unregister(self.close)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def free_port_in(ns: str) -> int:
    """A free TCP port inside namespace ``ns``."""
    with inside(ns), socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return int(s.getsockname()[1])
