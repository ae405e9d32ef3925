"""What the dashboard knows of one swarm: every device's last verified status, and what it refused.

:class:`SwarmView` is fed either live, message by message from the swarm's
broker (:meth:`SwarmView.handle`: presence, hello and metrics topics), or once
from a finished run directory (:meth:`SwarmView.load_run`). Both give the same
:meth:`SwarmView.snapshot`, the JSON the page renders. No web framework here:
the server (:mod:`edgedfl.dashboard.server`) only serves it.

Checks at the door, as a node's: a metrics message is an envelope of this
swarm, signed (unless the swarm's admission is ``open``) by the key the
admission trusts for the node its topic names (a key ring file, or the key
pinned from the node's first signed hello: trust on first use), and its
content passes :func:`~edgedfl.wire.metrics.decode_metrics`. Anything else is
dropped and counted in :attr:`SwarmView.refused` by the error's class name;
nothing a client sends raises out of :meth:`SwarmView.handle`. Presence is
unsigned and advisory: it only marks devices that proved who they are.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections import Counter
from pathlib import Path
from typing import Any

from edgedfl.data.sources import task_label
from edgedfl.errors import (
    InvalidTopic,
    MalformedMessage,
    StaleRound,
    UnknownSigner,
    WireError,
)
from edgedfl.protocol.topics import Topics
from edgedfl.wire.envelope import Envelope, decode_envelope
from edgedfl.wire.limits import DEFAULT_LIMITS, Limits
from edgedfl.wire.metrics import DeviceMetrics, decode_metrics
from edgedfl.wire.signing import KeyRing

__all__ = ["ADMISSIONS", "SwarmView", "task_label"]

log = logging.getLogger("edgedfl.dashboard")

ADMISSIONS = ("tofu", "keyring", "open")


def _clean(x: Any) -> Any:
    """JSON for the page: NaN and infinities become null."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


class SwarmView:
    """The dashboard's state of one swarm. Thread-safe: a follower thread feeds it, the server reads it.

    ``admission``: ``tofu`` (pin each node's key from its first signed hello),
    ``keyring`` (only ``keyring``'s keys, each for its nodes) or ``open``
    (signatures are not required, as in an open swarm).
    """

    def __init__(self, swarm: str, *, admission: str = "tofu", keyring: KeyRing | None = None,
                 limits: Limits = DEFAULT_LIMITS) -> None:
        if admission not in ADMISSIONS:
            raise ValueError(f"admission={admission!r}: choose from {ADMISSIONS}")
        if admission == "keyring" and keyring is None:
            raise ValueError("admission='keyring' needs a key ring")
        self.topics = Topics(swarm)
        self.swarm = swarm
        self.admission = admission
        self.keyring = keyring if keyring is not None else (KeyRing() if admission == "tofu" else None)
        self.limits = limits
        #: node -> its last accepted status (the page's device rows)
        self.devices: dict[str, DeviceMetrics] = {}
        #: node -> round -> history row: every round seen, also those a later message no longer carries
        self.history: dict[str, dict[int, tuple[int, float | None, float | None, int]]] = {}
        #: node -> its hello's profile (device profile, link rate, runtime)
        self.profiles: dict[str, dict[str, Any]] = {}
        #: node -> online (presence); advisory
        self.online: dict[str, bool] = {}
        #: refused messages by reason (the error's class name), and by the node their topic names
        self.refused: Counter[str] = Counter()
        self.refused_by_sender: Counter[str] = Counter()
        #: where the view comes from: "live" (a broker) or "run" (a finished run directory)
        self.source = "live"
        self.broker = ""
        self.finished = False
        #: bumps on every change; the server pushes a snapshot when it moves
        self.version = 0
        self._seq: dict[str, int] = {}
        self._parked: dict[str, bytes] = {}  # a node's metrics that came before its hello (tofu)
        self._lock = threading.RLock()

    # -- live: one message from the broker -------------------------------------------------

    def subscriptions(self) -> list[str]:
        """The filters a live view follows (hellos first: their keys verify the metrics)."""
        t = self.topics
        return [t.all_hello(), t.all_presence(), t.all_metrics()]

    def handle(self, topic: str, payload: bytes) -> None:
        """Take one message; a bad one is counted in :attr:`refused`, never raised."""
        with self._lock:
            try:
                self._handle(topic, payload)
            except (WireError, InvalidTopic) as exc:
                self._refuse(exc, topic)
            except Exception as exc:  # noqa: BLE001 - nothing a client sends may break the page
                log.warning("dashboard: unexpected error on %s: %s", topic, exc)
                self._refuse(exc, topic)

    def _refuse(self, exc: Exception, topic: str) -> None:
        try:
            sender = self.topics.parse(topic).node or "?"
        except InvalidTopic:
            sender = "?"
        self.refused[type(exc).__name__] += 1
        self.refused_by_sender[sender] += 1
        self.version += 1
        log.debug("dashboard: refused a message on %s: %s", topic, exc)

    def _handle(self, topic: str, payload: bytes) -> None:
        parsed = self.topics.parse(topic)  # InvalidTopic
        node = parsed.node
        if node is None or not payload:
            return  # a cleared retained message
        if parsed.kind == "presence":
            if payload not in (b"online", b"offline"):
                raise MalformedMessage(f"presence {payload[:32]!r} is neither online nor offline")
            self.online[node] = payload == b"online"
            self.version += 1
            return
        if parsed.kind not in ("hello", "metrics"):
            return  # not followed; a wider subscription's other traffic
        if parsed.kind == "hello" and self.admission == "tofu":
            self._pin(payload, node)
        try:
            env = decode_envelope(payload, limits=self.limits, keyring=self.keyring)
        except UnknownSigner:
            if parsed.kind == "metrics" and self.admission == "tofu":
                assert self.keyring is not None
                if self.keyring.key_of(node) is None:
                    self._parked[node] = payload  # judged again when its hello comes
            raise
        if env.swarm != self.swarm:
            raise MalformedMessage(f"envelope of swarm {env.swarm!r} on {topic!r}")
        if env.sender != node:
            raise MalformedMessage(f"sender {env.sender!r} on {node!r}'s topic (a forged sender)")
        if env.kind != parsed.kind:
            raise MalformedMessage(f"a {env.kind!r} envelope on {topic!r}")
        if parsed.kind == "hello":
            self._on_hello(env)
            parked = self._parked.pop(node, None)
            if parked is not None:  # its metrics came first and were refused for want of its key: again
                self.refused["UnknownSigner"] -= 1
                self.refused_by_sender[node] -= 1
                self.handle(self.topics.metrics(node), parked)
        else:
            self._on_metrics(env)

    def _pin(self, payload: bytes, node: str) -> None:
        """Trust on first use: the key a node's first signed hello names (as a node pins it)."""
        assert self.keyring is not None
        env = decode_envelope(payload, limits=self.limits)  # integrity only; the ring verifies next
        if env.key_id is None or env.sender != node:
            return  # unsigned or misaddressed: the ring refuses it
        self.keyring.pin(node, env.meta.get("key", ""), env.key_id)

    def _on_hello(self, env: Envelope) -> None:
        try:
            profile = json.loads(env.meta.get("profile", "{}"))
        except ValueError:
            raise MalformedMessage("hello profile is not JSON") from None
        if not isinstance(profile, dict):
            raise MalformedMessage("hello profile must be a JSON object")
        self.profiles[env.sender] = {k: v for k, v in profile.items() if isinstance(v, (str, int, float))}
        self.version += 1

    def _on_metrics(self, env: Envelope) -> None:
        last = self._seq.get(env.sender)
        if last is not None and env.seq <= last:
            if env.seq < last:  # an older status (a replay): the newer one stays
                raise StaleRound(f"metrics of {env.sender!r} seq {env.seq} after seq {last}")
            return  # the same message again (QoS 1, a retained copy on reconnect)
        m = decode_metrics(env)
        self._seq[env.sender] = env.seq
        self._accept(env.sender, m)

    def _accept(self, node: str, m: DeviceMetrics) -> None:
        self.devices[node] = m
        rows = self.history.setdefault(node, {})
        for row in m.history:
            rows[row[0]] = row
        self.version += 1

    # -- a finished run directory ------------------------------------------------------------

    def load_run(self, run_dir: str | Path) -> None:
        """Everything from a run directory: each device's last status (``metrics.json``, else its
        ``status.json``, ``rounds.jsonl`` and ``final.json``), restarts, and the report if there is one."""
        run = Path(run_dir)
        crashes: dict[str, list[int]] = {}
        if (run / "crashes.json").is_file():
            crashes = json.loads((run / "crashes.json").read_text())
        with self._lock:
            for dev in sorted(p for p in run.iterdir() if (p / "node_config.json").is_file()):
                cfg = json.loads((dev / "node_config.json").read_text())
                node = str(cfg.get("node_id", dev.name))
                m = self._from_files(dev, cfg)
                m.restarts = max(m.restarts, len(crashes.get(node, [])))
                self._accept(node, m)
                self.profiles.setdefault(node, {"profile": cfg.get("profile", "")})
                self.online[node] = False
            self.source = "run"
            self.finished = (run / "report.json").is_file()
            self.version += 1

    @staticmethod
    def _from_files(dev: Path, cfg: dict[str, Any]) -> DeviceMetrics:
        status = json.loads((dev / "status.json").read_text()) if (dev / "status.json").is_file() else {}
        if (dev / "metrics.json").is_file():
            d = json.loads((dev / "metrics.json").read_text())
            m = DeviceMetrics(**{k: v for k, v in d.items() if k not in ("links", "history", "routing")})
            m.links = {k: (int(v[0]), int(v[1])) for k, v in d.get("links", {}).items()}
            m.history = [(int(r[0]), r[1], r[2], int(r[3])) for r in d.get("history", [])]
            m.routing = {t: {int(s): int(n) for s, n in row.items()} for t, row in d.get("routing", {}).items()}
        else:  # a run from before metrics existed: what its files say
            seen: dict[int, dict[str, Any]] = {}
            if (dev / "rounds.jsonl").is_file():
                for line in (dev / "rounds.jsonl").read_text().splitlines():
                    row = json.loads(line)
                    seen[int(row["round"])] = row
            rows = [seen[r] for r in sorted(seen)]
            last = rows[-1] if rows else {}
            m = DeviceMetrics(
                state=str(status.get("state", "?")), round=int(status.get("round", 0)), slot=status.get("slot"),
                task=cfg.get("data"), profile=str(cfg.get("profile", "")), loss=last.get("loss"),
                accuracy=last.get("accuracy"), bytes_sent=int(status.get("bytes", 0)),
                history=[(int(r["round"]), r.get("loss"), r.get("accuracy"), int(r.get("bytes_sent", 0)))
                         for r in rows])
        if (dev / "final.json").is_file():
            final = json.loads((dev / "final.json").read_text())
            m.slot = final.get("slot", m.slot)
            m.experts = sorted({int(s) for s in final.get("experts", {})} | ({m.slot} if m.slot is not None else set()))
            m.rejects = m.rejects or {k: int(v) for k, v in final.get("rejects", {}).items()}
            routing = final.get("final", {}).get("routing")
            if routing and not m.routing:
                m.routing = {t: {int(s): int(n) for s, n in row.items()} for t, row in routing.items()}
        return m

    # -- what the page renders -----------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The whole view as JSON-able data (the page's one input)."""
        with self._lock:
            devices = []
            routing: dict[str, dict[str, int]] = {}
            slot_tasks: dict[str, str] = {}
            for node in sorted(self.devices):
                m = self.devices[node]
                d = m.to_dict()
                d["node"] = node
                d["history"] = [list(r) for _, r in sorted(self.history.get(node, {}).items())]
                d["online"] = self.online.get(node)
                d["device_profile"] = self.profiles.get(node, {}).get("profile") or m.profile
                d["task_label"] = task_label(m.task)
                devices.append(d)
                if m.slot is not None and m.task:
                    slot_tasks.setdefault(str(m.slot), task_label(m.task))
                for task, row in m.routing.items():
                    cells = routing.setdefault(task_label(task), {})
                    for s, n in row.items():
                        cells[str(s)] = cells.get(str(s), 0) + n
            return _clean({
                "swarm": self.swarm, "source": self.source, "broker": self.broker, "admission": self.admission,
                "finished": self.finished or (bool(devices) and all(d["state"] == "done" for d in devices)),
                "devices": devices, "refused": {k: n for k, n in sorted(self.refused.items()) if n > 0},
                "refused_total": sum(self.refused.values()), "routing": routing, "slot_tasks": slot_tasks,
                "version": self.version,
            })
