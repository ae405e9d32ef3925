"""Network namespace plumbing: run ``ip``/``tc``/``nft``, and enter a namespace from a thread.

:func:`inside` switches only the *calling thread* into a namespace (``setns``);
sockets it creates there stay in that namespace for good, and threads it
starts (paho's network thread, for instance) are born in it. A process started
from inside (``subprocess.Popen``) runs in the namespace too. Everything here
needs root; :func:`can_shape_links` says whether this machine allows it.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence

from edgedfl.errors import BackendUnavailable

log = logging.getLogger("edgedfl.netlab")

_CLONE_NEWNET = 0x40000000


class NetlabError(BackendUnavailable):
    """A namespace, link or shaping command failed (or this machine cannot shape links)."""


def sh(argv: Sequence[str], *, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run one plumbing command; a failure raises :class:`NetlabError` with its stderr."""
    log.debug("netlab: %s", " ".join(argv))
    try:
        result = subprocess.run(list(argv), input=input, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetlabError(f"{' '.join(argv)}: {exc}") from exc
    if check and result.returncode != 0:
        raise NetlabError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


def ns_exec(ns: str, argv: Sequence[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    """:func:`sh` inside namespace ``ns``."""
    return sh(["ip", "netns", "exec", ns, *argv], **kwargs)  # type: ignore[arg-type]


def _setns(fd: int) -> None:
    if hasattr(os, "setns"):  # Python 3.12+
        os.setns(fd, _CLONE_NEWNET)
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def inside(ns: str) -> Iterator[None]:
    """Run the ``with`` body with this thread in network namespace ``ns``; switch back afterwards."""
    try:
        target = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    except OSError as exc:
        raise NetlabError(f"no network namespace {ns!r}: {exc}") from exc
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(target)
        os.close(home)


@functools.lru_cache(maxsize=1)
def can_shape_links() -> bool:
    """Whether we are root and ``ip netns`` + ``tc`` work here (tests skip cleanly when not)."""
    if os.geteuid() != 0 or not (shutil.which("ip") and shutil.which("tc")):
        return False
    probe = f"edl-probe-{os.getpid()}"
    try:
        sh(["ip", "netns", "add", probe])
    except NetlabError:
        return False
    try:
        ns_exec(probe, ["tc", "qdisc", "show"])
        return True
    except NetlabError:
        return False
    finally:
        sh(["ip", "netns", "del", probe], check=False)


@functools.lru_cache(maxsize=1)
def can_drop_packets() -> bool:
    """Whether nftables is installed for random loss (``apt-get install nftables``)."""
    return can_shape_links() and shutil.which("nft") is not None
