"""A device's status message (kind ``metrics``): what a live dashboard shows, signed like everything else.

A device publishes one retained ``metrics`` envelope on ``edgedfl/<swarm>/metrics/<node>``
at every state change and round: its state and round, loss and accuracy,
bytes sent and received per neighbour, rejections by kind, experts held,
memory and step time, the per-round history and, at the end, its routing
counts. The body is empty; the content travels in ``meta`` as a few compact
JSON values (FORMAT.md, section 1.2), so any MQTT tool that can read an
envelope header can read it, and the signature covers it (the header is signed).

:func:`encode_metrics` turns a :class:`DeviceMetrics` into that ``meta``;
:func:`decode_metrics` checks a received envelope strictly (every key known,
every type and range checked, names as the topic tree allows) and raises
:class:`MalformedMessage` otherwise. Nothing here imports torch.

Decisions:

* **Meta, not a body.** Every body is a safetensors file (FORMAT.md section 2);
  a status is a handful of scalars and small maps, which meta already carries
  as strings (as a hello's ``profile`` does). Floats are allowed inside these
  JSON strings (the header itself stays canonical: it holds them as strings).
* **Bounded.** Each meta value is at most ``Limits.max_string_chars``; the
  encoder drops the oldest history rows and the smallest links until it fits,
  so a long run or a large swarm never makes a device fail to publish.
* **Unknown keys are refused**, as in the envelope header: a new field is a
  new schema (``metrics/1`` is named in ``meta["codec"]``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Mapping
from typing import Any

from edgedfl.errors import MalformedMessage
from edgedfl.wire.envelope import Envelope
from edgedfl.wire.limits import DEFAULT_LIMITS, Limits

__all__ = ["METRICS_CODEC", "DeviceMetrics", "decode_metrics", "encode_metrics"]

METRICS_CODEC = "metrics/1"
#: the meta keys of a metrics envelope (``codec`` and ``status`` always; the rest may be absent)
META_KEYS = frozenset({"codec", "status", "links", "rejects", "history", "routing"})
_STATUS_KEYS = frozenset({
    "state", "round", "slot", "task", "profile", "loss", "accuracy", "bytes_sent", "bytes_received",
    "memory_bytes", "step_ms", "restarts", "experts", "lora_update_bytes", "time",
})
_NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,128}")
_KIND_RE = re.compile(r"[A-Za-z0-9_]{1,64}")
_STATE_RE = re.compile(r"[A-Za-z0-9 ._-]{1,64}")
#: most history rows, links, rejection kinds, experts and routing cells one message may hold
MAX_ROWS = 1000
MAX_ENTRIES = 1024
MAX_INT = 2**63 - 1


@dataclasses.dataclass
class DeviceMetrics:
    """One device's status at one moment (all optional numbers are ``None`` until known)."""

    #: what the device is doing ("training", "collecting", "done", ...)
    state: str
    #: the round it is in (0: joining and calibrating)
    round: int = 0
    #: its expert slot (cluster), once clustered
    slot: int | None = None
    #: its task source (a name, a file path or ``hf:<dataset>``)
    task: str | None = None
    #: its device profile (phone, jetson, laptop)
    profile: str = ""
    #: the last evaluation's loss and exact-match accuracy on its own task
    loss: float | None = None
    accuracy: float | None = None
    #: protocol bytes published / received in all (payload + topic, as the reports count them)
    bytes_sent: int = 0
    bytes_received: int = 0
    #: resident memory of the device process, bytes
    memory_bytes: int | None = None
    #: the last round's training time per optimizer step, ms
    step_ms: float | None = None
    #: how often this device's process was restarted (it resumed from a checkpoint)
    restarts: int = 0
    #: slots whose finished expert this device holds
    experts: list[int] = dataclasses.field(default_factory=list)
    #: bytes one dense standard-LoRA update (A and B, same rank, targets and precision) would take
    lora_update_bytes: int | None = None
    #: wall-clock time of this status, unix seconds
    time: float = 0.0
    #: neighbour -> (bytes sent to it, bytes received from it) on the update topics (the neighbour exchange)
    links: dict[str, tuple[int, int]] = dataclasses.field(default_factory=dict)
    #: refused incoming messages by error kind
    rejects: dict[str, int] = dataclasses.field(default_factory=dict)
    #: per finished round: (round, loss, accuracy, bytes sent during it)
    history: list[tuple[int, float | None, float | None, int]] = dataclasses.field(default_factory=list)
    #: at the end: task -> slot -> prompts of that task answered by that slot's expert (implicit routing)
    routing: dict[str, dict[int, int]] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form (links as ``[sent, received]``, routing slots as strings)."""
        d = dataclasses.asdict(self)
        d["links"] = {k: list(v) for k, v in self.links.items()}
        d["history"] = [list(r) for r in self.history]
        d["routing"] = {t: {str(s): n for s, n in row.items()} for t, row in self.routing.items()}
        return d


def _dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def encode_metrics(m: DeviceMetrics, *, limits: Limits = DEFAULT_LIMITS) -> dict[str, str]:
    """The ``meta`` of a metrics envelope for ``m`` (trimmed to fit the string limit; non-finite numbers as null)."""
    cap = limits.max_string_chars
    status = {
        "state": m.state[:64], "round": int(m.round), "slot": m.slot, "task": (m.task or None) and m.task[:512],
        "profile": m.profile[:64], "loss": _finite(m.loss), "accuracy": _finite(m.accuracy),
        "bytes_sent": int(m.bytes_sent), "bytes_received": int(m.bytes_received),
        "memory_bytes": m.memory_bytes, "step_ms": _finite(m.step_ms), "restarts": int(m.restarts),
        "experts": sorted(int(s) for s in m.experts)[:MAX_ENTRIES],
        "lora_update_bytes": m.lora_update_bytes, "time": round(float(m.time), 3),
    }
    meta = {"codec": METRICS_CODEC, "status": _dumps(status)}
    links = sorted(m.links.items(), key=lambda kv: -(kv[1][0] + kv[1][1]))[:MAX_ENTRIES]
    while links and len(_dumps({k: list(v) for k, v in links})) > cap:
        links.pop()  # the smallest link goes first
    if links:
        meta["links"] = _dumps({k: [int(v[0]), int(v[1])] for k, v in links})
    if m.rejects:
        meta["rejects"] = _dumps({k: int(v) for k, v in sorted(m.rejects.items())[:MAX_ENTRIES]})
    rows = [[int(r), _finite(lo), _finite(a), int(b)] for r, lo, a, b in m.history][-MAX_ROWS:]
    while rows and len(_dumps(rows)) > cap:
        rows.pop(0)  # the oldest row goes first
    if rows:
        meta["history"] = _dumps(rows)
    if m.routing:
        meta["routing"] = _dumps({t[:512]: {str(s): int(n) for s, n in row.items()} for t, row in m.routing.items()})
    for key, value in meta.items():
        if len(value) > cap:
            raise MalformedMessage(f"metrics meta[{key!r}] is {len(value)} chars, over {cap}")
    return meta


# -- decoding ------------------------------------------------------------------------------------


def _load(meta: Mapping[str, str], key: str) -> Any:
    try:
        return json.loads(meta[key], parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise MalformedMessage(f"metrics meta[{key!r}] is not JSON: {exc}") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number here")


def _int(v: Any, what: str, *, optional: bool = False) -> int | None:
    if v is None and optional:
        return None
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= MAX_INT:
        raise MalformedMessage(f"metrics {what}={v!r}: must be an int in 0..2**63-1")
    return v


def _float(v: Any, what: str, *, lo: float = -math.inf, hi: float = math.inf) -> float | None:
    if v is None:
        return None
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or not lo <= v <= hi:
        raise MalformedMessage(f"metrics {what}={v!r}: must be a finite number in [{lo}, {hi}]")
    return float(v)


def _str(v: Any, what: str, pattern: re.Pattern[str] | None = None, *, optional: bool = False,
         max_chars: int = 512) -> str | None:
    if v is None and optional:
        return None
    if not isinstance(v, str) or len(v) > max_chars or (pattern is not None and not pattern.fullmatch(v)):
        raise MalformedMessage(f"metrics {what}={str(v)[:40]!r}: not an allowed string")
    return v


def _object(v: Any, what: str) -> dict[str, Any]:
    if not isinstance(v, dict) or len(v) > MAX_ENTRIES:
        raise MalformedMessage(f"metrics {what}: must be a JSON object of at most {MAX_ENTRIES} entries")
    return v


def decode_metrics(env: Envelope) -> DeviceMetrics:
    """The :class:`DeviceMetrics` a ``metrics`` envelope carries; :class:`MalformedMessage` if anything is off.

    The envelope itself (signature, sender, swarm) is checked by the caller, as for every kind.
    """
    if env.kind != "metrics":
        raise MalformedMessage(f"a {env.kind!r} envelope is not a metrics message")
    if env.body:
        raise MalformedMessage("a metrics envelope has an empty body")
    meta = env.meta
    unknown = sorted(set(meta) - META_KEYS)
    if unknown:
        raise MalformedMessage(f"metrics meta has unknown keys {unknown[:5]}")
    if meta.get("codec") != METRICS_CODEC or "status" not in meta:
        raise MalformedMessage(f"metrics meta needs codec {METRICS_CODEC!r} and a status")
    s = _object(_load(meta, "status"), "status")
    if set(s) != _STATUS_KEYS:
        raise MalformedMessage(f"metrics status keys {sorted(s)[:20]}, expected {sorted(_STATUS_KEYS)}")
    experts = s["experts"]
    if not isinstance(experts, list) or len(experts) > MAX_ENTRIES:
        raise MalformedMessage("metrics experts must be a list of slots")
    out = DeviceMetrics(
        state=_str(s["state"], "state", _STATE_RE) or "",
        round=_int(s["round"], "round") or 0,
        slot=_int(s["slot"], "slot", optional=True),
        task=_str(s["task"], "task", optional=True),
        profile=_str(s["profile"], "profile", max_chars=64) or "",
        loss=_float(s["loss"], "loss"),
        accuracy=_float(s["accuracy"], "accuracy", lo=0.0, hi=1.0),
        bytes_sent=_int(s["bytes_sent"], "bytes_sent") or 0,
        bytes_received=_int(s["bytes_received"], "bytes_received") or 0,
        memory_bytes=_int(s["memory_bytes"], "memory_bytes", optional=True),
        step_ms=_float(s["step_ms"], "step_ms", lo=0.0),
        restarts=_int(s["restarts"], "restarts") or 0,
        experts=[int(_int(x, "experts[]") or 0) for x in experts],
        lora_update_bytes=_int(s["lora_update_bytes"], "lora_update_bytes", optional=True),
        time=_float(s["time"], "time", lo=0.0) or 0.0,
    )
    if "links" in meta:
        for peer, v in _object(_load(meta, "links"), "links").items():
            _str(peer, "link peer", _NAME_RE)
            if not isinstance(v, list) or len(v) != 2:
                raise MalformedMessage(f"metrics link {peer!r}: must be [sent, received]")
            out.links[peer] = (_int(v[0], "link sent") or 0, _int(v[1], "link received") or 0)
    if "rejects" in meta:
        for kind, n in _object(_load(meta, "rejects"), "rejects").items():
            out.rejects[_str(kind, "reject kind", _KIND_RE) or ""] = _int(n, "reject count") or 0
    if "history" in meta:
        rows = _load(meta, "history")
        if not isinstance(rows, list) or len(rows) > MAX_ROWS:
            raise MalformedMessage(f"metrics history must be a list of at most {MAX_ROWS} rows")
        for row in rows:
            if not isinstance(row, list) or len(row) != 4:
                raise MalformedMessage("metrics history row must be [round, loss, accuracy, bytes_sent]")
            out.history.append((_int(row[0], "history round") or 0, _float(row[1], "history loss"),
                                _float(row[2], "history accuracy", lo=0.0, hi=1.0),
                                _int(row[3], "history bytes") or 0))
    if "routing" in meta:
        for task, row in _object(_load(meta, "routing"), "routing").items():
            _str(task, "routing task")
            cells = {}
            for slot, n in _object(row, f"routing[{task[:40]!r}]").items():
                if not isinstance(slot, str) or not slot.isdigit() or len(slot) > 10:
                    raise MalformedMessage(f"metrics routing slot {slot!r}: not a slot number")
                cells[int(slot)] = _int(n, "routing count") or 0
            out.routing[task] = cells
    return out
