"""A device's status on the swarm's own broker, for the live dashboard (``edgedfl dashboard``).

:class:`MetricsReporter` turns what a :class:`~edgedfl.node.member.SwarmMember`
knows (state, round, its rows in ``rounds.jsonl``, the link's byte counters,
rejections, experts, routing counts) into a :class:`~edgedfl.wire.metrics.DeviceMetrics`
and publishes it, signed, retained, on ``edgedfl/<swarm>/metrics/<node>``
at every state change. It also writes the last one to ``metrics.json`` in the
state dir, so a finished run directory shows the same view.

Decisions:

* **Monitoring is not protocol traffic.** The message goes through the
  transport under the byte counter, so reports and benchmarks count exactly
  the protocol's bytes, with or without a dashboard.
* **It never hurts the device.** A failed publish (broker down, a limit) is
  logged at debug level and skipped; the next state change sends a fresh one.
* **Restarts** are counted by the device itself (a counter file in its state
  dir), so a real node under systemd reports them like an emulated one.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgedfl.errors import EdgeDFLError
from edgedfl.wire.envelope import Envelope, encode_envelope
from edgedfl.wire.metrics import DeviceMetrics, encode_metrics

if TYPE_CHECKING:
    from edgedfl.node.member import SwarmMember

log = logging.getLogger("edgedfl.node")

_VALUE_BYTES = {"fp16": 2, "fp32": 4, "int8": 1}


def memory_bytes() -> int:
    """Resident memory of this process (Linux ``/proc``), else its peak (``getrusage``)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


class MetricsReporter:
    """Publishes one member's status; ``publish()`` at every state change."""

    def __init__(self, member: SwarmMember) -> None:
        self.member = member
        self.state = member.state
        starts = self.state / "starts"
        try:
            before = int(starts.read_text())
        except (OSError, ValueError):
            before = 0
        starts.write_text(str(before + 1))
        self.restarts = before
        self._rows: list[dict[str, Any]] = []
        self._rows_size = -1
        self._lora_bytes: int | None = None

    def _read_rows(self) -> list[dict[str, Any]]:
        path = self.state / "rounds.jsonl"
        size = path.stat().st_size if path.is_file() else 0
        if size != self._rows_size:
            seen: dict[int, dict[str, Any]] = {}
            if size:
                for line in path.read_text().splitlines():
                    row = json.loads(line)
                    seen[int(row["round"])] = row  # a round redone after a restart: the last one
            self._rows = [seen[r] for r in sorted(seen)]
            self._rows_size = size
        return self._rows

    def lora_update_bytes(self) -> int | None:
        """One dense standard-LoRA update (A and B of every adapted layer, the swarm's rank and precision)."""
        if self._lora_bytes is None:
            adapted = getattr(self.member.learner, "adapted", None)
            shapes = getattr(adapted, "layer_shapes", None)
            if shapes is None:
                return None
            try:
                dims = shapes()
            except (AttributeError, RuntimeError):  # not loaded yet
                return None
            r, s = self.member.swarm.adapter.rank, self.member.swarm
            self._lora_bytes = sum((d_in + d_out) * r for d_in, d_out in dims.values()) * _VALUE_BYTES[s.precision]
        return self._lora_bytes

    def snapshot(self) -> DeviceMetrics:
        m = self.member
        status = m.status
        rows = self._read_rows()
        last = rows[-1] if rows else {}
        link, proto = m.link, m.protocol
        step_ms = None
        if last.get("train_s") is not None and m.swarm.local_steps:
            step_ms = 1000.0 * float(last["train_s"]) / m.swarm.local_steps
        experts: set[int] = set()
        if proto is not None:
            experts = set(proto.experts)
        if m.clustering is not None:
            experts.add(m.slot)
        links: dict[str, tuple[int, int]] = {}
        if link is not None:
            for peer in (set(link.sent_to) | set(link.received_from)) - {m.me}:  # not its own echo
                links[peer] = (link.sent_to.get(peer, 0), link.received_from.get(peer, 0))
        return DeviceMetrics(
            state=str(status.get("state", "?")), round=int(status.get("round", 0)),
            slot=m.slot if m.clustering is not None else None, task=m.cfg.data, profile=m.cfg.profile,
            loss=last.get("loss"), accuracy=last.get("accuracy"),
            bytes_sent=link.total_bytes if link is not None else 0,
            bytes_received=link.received_bytes if link is not None else 0,
            memory_bytes=memory_bytes(), step_ms=step_ms, restarts=self.restarts, experts=sorted(experts),
            lora_update_bytes=self.lora_update_bytes(), time=time.time(), links=links,
            rejects=dict(proto.rejects) if proto is not None else {},
            history=[(int(r["round"]), r.get("loss"), r.get("accuracy"), int(r.get("bytes_sent", 0))) for r in rows],
            routing={t: dict(row) for t, row in m.routing_counts.items()},
        )

    def publish(self) -> None:
        """Sign and publish the current status (retained), and write it to ``metrics.json``; never raises."""
        m = self.member
        if m.protocol is None or m.link is None:
            return
        try:
            snap = self.snapshot()
            env = Envelope("metrics", m.swarm.name, m.me, round=snap.round, seq=int(snap.time * 1000),
                           meta=encode_metrics(snap))
            payload = encode_envelope(env, m.protocol.signer)
            tmp = self.state / "metrics.json.tmp"
            tmp.write_text(json.dumps(snap.to_dict(), sort_keys=True))
            os.replace(tmp, self.state / "metrics.json")
            inner = m.link.inner  # under the byte counter: monitoring is not protocol traffic
            if inner.connected:
                inner.publish(m.protocol.topics.metrics(m.me), payload, qos=1, retain=True)
        except (EdgeDFLError, OSError, ValueError) as exc:
            log.debug("%s: metrics not published: %s", m.me, exc)
