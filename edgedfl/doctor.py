"""``edgedfl doctor``: what this device can do, checked rather than assumed.

:func:`run_doctor` returns a plain, JSON-ready dict with one section per probe:

==============  ==================================================================
section         what it says
==============  ==================================================================
edgedfl         the installed version
python          version and interpreter
platform        OS, machine, kernel; Jetson (L4T) detection and its release line
torch           installed or not, version, the CUDA version it was built for
cuda            whether torch sees a GPU; per device: name, capability, total and
                free memory
memory          total and available RAM (``/proc/meminfo``)
disk            free space where runs and checkpoints go (the working directory)
quantization    per backend of :data:`edgedfl.model.quantize.BACKENDS`: installed,
                and whether it *works*: the tiny model is quantized with it, a
                sparse-orthogonal LoRA is attached, and one forward/backward after
                an eval-mode pass must give finite loss and non-zero B gradients
runtimes        onnxruntime (providers) and executorch
broker          (with ``broker=URL``) whether an MQTT broker accepts a connection
profile         the device profile picked here (phone / jetson / laptop) and the
                quantization backend it resolves to
problems        one line per thing that will bite (a Jetson without a CUDA torch,
                the profile's default backend not working, an unreachable broker)
==============  ==================================================================

Every probe catches its own errors and reports them as ``error`` strings: the
doctor never raises because the device is broken; that is what it is for.

Decisions:

- bitsandbytes backends are probed on the GPU when torch sees one (the Jetson
  path: bnb nf4 on CUDA) and on the CPU otherwise (where ``quantize_model``
  applies the AVX512-BF16 guard); the other backends are probed on the CPU,
  where the phone and laptop profiles train.
- The probes run in this process. A backend whose native library crashes the
  interpreter (rather than raising) takes the doctor with it; that is rare and
  itself a clear answer.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import platform
import shutil
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgedfl._version import __version__
from edgedfl.devices import detect_profile, is_jetson, resolve_dtype

log = logging.getLogger("edgedfl.doctor")

#: backends probed on the GPU when one is there (bitsandbytes is the CUDA backend of the Jetson profile)
CUDA_PROBED_BACKENDS = ("bnb-nf4", "bnb-int8")
_MiB = 1024 * 1024


def _error(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def _safe(probe: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run one probe; an exception becomes ``{"error": ...}`` instead of propagating."""
    try:
        return probe()
    except Exception as exc:  # the doctor reports, never raises
        log.debug("probe %s failed", getattr(probe, "__name__", probe), exc_info=True)
        return {"error": _error(exc)}


# -- system -----------------------------------------------------------------------


def probe_platform() -> dict[str, Any]:
    uname = platform.uname()
    out: dict[str, Any] = {
        "system": uname.system,
        "machine": uname.machine,
        "release": uname.release,
        "jetson": is_jetson(),
    }
    release = Path("/etc/nv_tegra_release")
    if release.exists():
        out["l4t_release"] = release.read_text(errors="replace").splitlines()[0].strip()[:200]
    model = Path("/proc/device-tree/model")
    if model.exists():
        out["board"] = model.read_bytes().rstrip(b"\0").decode(errors="replace")[:200]
    return out


def probe_memory(meminfo: str = "/proc/meminfo") -> dict[str, Any]:
    """Total and available RAM in MiB (``MemAvailable``: what a new process can take without swapping)."""
    values: dict[str, int] = {}
    for line in Path(meminfo).read_text().splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            values[key] = int(parts[0])  # kB
    out: dict[str, Any] = {"total_mb": values.get("MemTotal", 0) // 1024}
    out["available_mb"] = values.get("MemAvailable", values.get("MemFree", 0)) // 1024
    if "SwapTotal" in values:
        out["swap_total_mb"] = values["SwapTotal"] // 1024
    return out


def probe_disk(path: str | os.PathLike[str] = ".") -> dict[str, Any]:
    usage = shutil.disk_usage(path)
    return {"path": str(Path(path).resolve()), "total_mb": usage.total // _MiB, "free_mb": usage.free // _MiB}


# -- torch and CUDA -------------------------------------------------------------------


def probe_torch() -> dict[str, Any]:
    if importlib.util.find_spec("torch") is None:
        return {"installed": False, "error": "torch is not installed (on a Jetson: install NVIDIA's JetPack wheel)"}
    import torch

    return {
        "installed": True,
        "version": str(torch.__version__),
        "cuda_build": torch.version.cuda,  # None on a CPU-only wheel
        "threads": torch.get_num_threads(),
    }


def probe_cuda() -> dict[str, Any]:
    if importlib.util.find_spec("torch") is None:
        return {"available": False, "reason": "torch is not installed"}
    import torch

    if not torch.cuda.is_available():
        reason = "torch is a CPU-only build" if torch.version.cuda is None else "no CUDA device visible to torch"
        return {"available": False, "reason": reason}
    devices = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        entry: dict[str, Any] = {
            "index": i,
            "name": str(props.name),
            "capability": f"{props.major}.{props.minor}",
            "total_mb": int(props.total_memory) // _MiB,
        }
        try:
            free, _total = torch.cuda.mem_get_info(i)
            entry["free_mb"] = int(free) // _MiB
        except Exception as exc:  # noqa: BLE001 - mem_get_info is missing on some Jetson builds
            entry["free_mb"] = None
            entry["free_error"] = _error(exc)
        devices.append(entry)
    return {"available": True, "device_count": len(devices), "devices": devices}


def _cuda_available() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001 - a probe reports, never raises
        return False


# -- quantization backends ----------------------------------------------------------------


def probe_backend(name: str, device: str = "cpu") -> dict[str, Any]:
    """Quantize the tiny model with ``name`` on ``device`` and train one LoRA step's gradients through it.

    Works means: quantization succeeded, and after an eval-mode no-grad forward
    (what silently zeroes bnb 4-bit gradients on AVX512-BF16 CPUs without the
    guard), a training forward/backward gives a finite loss and non-zero
    gradients on the sparse-orthogonal LoRA's B.
    """
    with warnings.catch_warnings():
        # third-party chatter (deprecations, bnb's per-call cast notice) is not what the doctor reports
        warnings.simplefilter("ignore")
        return _probe_backend(name, device)


def _probe_backend(name: str, device: str) -> dict[str, Any]:
    import torch

    from edgedfl.adapters import AdapterConfig, attach_adapter
    from edgedfl.data.examples import Example
    from edgedfl.model.quantize import quantize_model
    from edgedfl.model.tiny import tiny_model, tiny_tokenizer
    from edgedfl.train.batching import collate_train

    t0 = time.perf_counter()
    model = tiny_model(seed=0)
    if device != "cpu":
        model = model.to(device)
    base, used = quantize_model(model, name, device=device)
    adapted = attach_adapter(base, AdapterConfig(rank=4))
    batch = collate_train(tiny_tokenizer(), [Example("Question: 2+3?\nAnswer:", " 5", "arith")] * 2, 32)
    batch = {k: v.to(device) for k, v in batch.items()}
    adapted.peft_model.eval()
    with torch.no_grad():
        adapted.peft_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    adapted.peft_model.train()
    loss = adapted.peft_model(**batch).loss
    loss.backward()
    loss = loss.detach()
    grad_norm = sum(float(p.grad.norm()) for n, p in adapted.named_trainable() if "lora_B" in n and p.grad is not None)
    out: dict[str, Any] = {
        "works": bool(torch.isfinite(loss).item()) and grad_norm > 0,
        "device": device,
        "loss": round(float(loss), 4),
        "lora_grad_norm": grad_norm,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    if used != name:  # pragma: no cover - quantize_model resolves an explicit name to itself
        out["resolved_to"] = used
    if not out["works"]:
        out["error"] = "non-finite loss" if not torch.isfinite(loss).item() else "LoRA gradients are zero"
    return out


def probe_quantization(*, run: bool = True, cuda: bool | None = None) -> dict[str, Any]:
    """Per backend: installed, and (with ``run``) whether it works here; see :func:`probe_backend`."""
    from edgedfl.model.quantize import BACKENDS, is_available

    cuda = _cuda_available() if cuda is None else cuda
    out: dict[str, Any] = {}
    for name, backend in BACKENDS.items():
        entry: dict[str, Any] = {"installed": False, "works": False}
        try:
            entry["installed"] = is_available(name)
        except Exception as exc:  # noqa: BLE001 - a probe reports, never raises
            entry["error"] = _error(exc)
            out[name] = entry
            continue
        if not entry["installed"]:
            entry["install"] = backend.install_hint
        elif run:
            device = "cuda" if cuda and name in CUDA_PROBED_BACKENDS else "cpu"
            result = _safe(lambda name=name, device=device: probe_backend(name, device))  # type: ignore[misc]
            result.setdefault("works", False)
            result.setdefault("device", device)
            entry.update(result)
        else:
            entry["works"] = None  # not checked
        out[name] = entry
    return out


def _version_of(package: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def probe_runtimes() -> dict[str, Any]:
    out: dict[str, Any] = {}
    ort: dict[str, Any] = {"installed": importlib.util.find_spec("onnxruntime") is not None}
    if ort["installed"]:
        try:
            mod = importlib.import_module("onnxruntime")
            ort["version"] = str(mod.__version__)
            ort["providers"] = list(mod.get_available_providers())
        except Exception as exc:  # noqa: BLE001 - a probe reports, never raises
            ort["error"] = _error(exc)
    out["onnxruntime"] = ort
    et: dict[str, Any] = {"installed": importlib.util.find_spec("executorch") is not None}
    if et["installed"]:
        et["version"] = _version_of("executorch")
        try:
            importlib.import_module("executorch.runtime")
            et["runtime"] = True
        except Exception as exc:  # noqa: BLE001 - a probe reports, never raises
            et["runtime"] = False
            et["error"] = _error(exc)
    out["executorch"] = et
    bnb_version = _version_of("bitsandbytes")
    out["bitsandbytes"] = {"installed": bnb_version is not None, "version": bnb_version}
    return out


# -- broker ---------------------------------------------------------------------------------


def probe_broker(url: str, timeout: float = 3.0) -> dict[str, Any]:
    """Connect to the broker at ``url`` with a short timeout; ``reachable`` and, if not, why."""
    from edgedfl.errors import EdgeDFLError
    from edgedfl.transport.url import transport_from_url

    t0 = time.perf_counter()
    out: dict[str, Any] = {"url": url}
    try:
        transport = transport_from_url(url, client_id=f"edgedfl-doctor-{os.getpid()}", connect_timeout=timeout,
                                       clean_session=True)
    except EdgeDFLError as exc:  # BrokerUnavailable, NotAuthorized, ConfigError
        out.update(reachable=False, reason=f"{type(exc).__name__}: {exc}")
    except Exception as exc:  # noqa: BLE001 - a probe reports, never raises
        out.update(reachable=False, reason=_error(exc))
    else:
        try:
            out["reachable"] = bool(transport.connected)
            out["protocol"] = getattr(transport, "protocol", None)
            out["max_payload"] = getattr(transport, "max_payload", None)
        finally:
            transport.close()
    out["seconds"] = round(time.perf_counter() - t0, 3)
    return out


# -- profile ----------------------------------------------------------------------------------


def probe_profile(cuda: bool | None = None) -> dict[str, Any]:
    from edgedfl.model.quantize import choose_backend

    profile = detect_profile()
    out: dict[str, Any] = {
        "name": profile.name,
        "accelerator": profile.accelerator,
        "default_quant": profile.default_quant,
    }
    cuda = _cuda_available() if cuda is None else cuda
    out["cuda_used"] = profile.accelerator == "cuda" and cuda
    out["dtype_auto"] = resolve_dtype("auto", "auto" if cuda else "cpu")  # what DeviceConfig.dtype 'auto' picks here
    try:
        out["quant"] = choose_backend("auto", profile)
    except Exception as exc:  # noqa: BLE001 - a probe reports, never raises
        out["quant"] = None
        out["error"] = _error(exc)
    return out


# -- all together --------------------------------------------------------------------------------


def _problems(report: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    torch_info, cuda, profile = report["torch"], report["cuda"], report["profile"]
    if not torch_info.get("installed", False):
        problems.append("torch is not installed")
    if report["platform"].get("jetson") and not cuda.get("available"):
        problems.append("this is a Jetson but torch sees no CUDA: install JetPack's torch wheel (docs/jetson.md)")
    quant = report.get("quantization") or {}
    chosen = profile.get("quant")
    if chosen and chosen in quant and quant[chosen].get("works") is False:
        problems.append(f"the profile's quantization backend {chosen!r} does not work here: "
                        f"{quant[chosen].get('error', 'see quantization')}")
    broker = report.get("broker")
    if broker and not broker.get("reachable"):
        problems.append(f"broker {broker.get('url')} unreachable: {broker.get('reason')}")
    mem = report["memory"]
    if isinstance(mem.get("available_mb"), int) and mem["available_mb"] < 1024:
        problems.append(f"only {mem['available_mb']} MiB of RAM available")
    for section in ("platform", "torch", "cuda", "memory", "disk", "runtimes", "profile"):
        if "error" in report[section]:
            problems.append(f"{section} probe failed: {report[section]['error']}")
    return problems


def run_doctor(broker: str | None = None, *, quant: bool = True, broker_timeout: float = 3.0,
               disk_path: str | os.PathLike[str] = ".") -> dict[str, Any]:
    """Probe this device; a plain dict (see the module docstring). Never raises for a broken device."""
    report: dict[str, Any] = {
        "edgedfl": {"version": __version__},
        "python": {"version": platform.python_version(), "executable": sys.executable},
        "platform": _safe(probe_platform),
        "torch": _safe(probe_torch),
        "cuda": _safe(probe_cuda),
        "memory": _safe(probe_memory),
        "disk": _safe(lambda: probe_disk(disk_path)),
    }
    cuda = bool(report["cuda"].get("available"))
    report["quantization"] = _safe(lambda: probe_quantization(run=quant, cuda=cuda))
    report["runtimes"] = _safe(probe_runtimes)
    report["broker"] = _safe(lambda: probe_broker(broker, broker_timeout)) if broker else None
    report["profile"] = _safe(lambda: probe_profile(cuda))
    report["problems"] = _problems(report)
    return report


def _yes_no(value: Any) -> str:
    return "yes" if value else "no"


def format_report(report: dict[str, Any]) -> str:
    """A readable two-column table of :func:`run_doctor`'s result."""
    rows: list[tuple[str, str]] = []
    plat, torch_info, cuda = report["platform"], report["torch"], report["cuda"]
    rows.append(("edgedfl", report["edgedfl"]["version"]))
    rows.append(("python", f"{report['python']['version']} ({report['python']['executable']})"))
    if "error" in plat:
        rows.append(("platform", plat["error"]))
    else:
        rows.append(("platform", f"{plat['system']} {plat['machine']} {plat['release']}"))
        jetson = "yes" + (f" ({plat['l4t_release']})" if "l4t_release" in plat else "") if plat["jetson"] else "no"
        rows.append(("jetson", jetson))
    if torch_info.get("installed"):
        rows.append(("torch", f"{torch_info['version']} (CUDA build: {torch_info.get('cuda_build') or 'none'})"))
    else:
        rows.append(("torch", torch_info.get("error", "not installed")))
    if cuda.get("available"):
        for d in cuda["devices"]:
            free = f"{d['free_mb']} MiB free of " if d.get("free_mb") is not None else ""
            rows.append((f"cuda:{d['index']}", f"{d['name']} (sm {d['capability']}), {free}{d['total_mb']} MiB"))
    else:
        rows.append(("cuda", f"no ({cuda.get('reason') or cuda.get('error', '')})"))
    mem = report["memory"]
    rows.append(("memory", mem.get("error") or f"{mem['available_mb']} MiB available of {mem['total_mb']} MiB"))
    disk = report["disk"]
    rows.append(("disk", disk.get("error") or f"{disk['free_mb']} MiB free at {disk['path']}"))
    quant = report["quantization"]
    if set(quant) == {"error"}:
        rows.append(("quantization", str(quant["error"])))
    else:
        for name, q in quant.items():
            if not q.get("installed"):
                status = f"not installed ({q.get('install') or q.get('error', '')})"
            elif q.get("works") is None:
                status = "installed (not checked)"
            elif q.get("works"):
                status = f"works on {q['device']} (loss {q['loss']}, {q['seconds']} s)"
            else:
                status = f"FAILS on {q.get('device')}: {q.get('error', '')}"
            rows.append((f"quant {name}", status))
    for name, rt in report["runtimes"].items():
        if isinstance(rt, dict):
            detail = rt.get("version") or ""
            if rt.get("providers"):
                detail += f" ({', '.join(rt['providers'])})"
            rows.append((name, f"{_yes_no(rt.get('installed'))} {detail}".strip()))
    broker = report.get("broker")
    if broker:
        state = "reachable" if broker.get("reachable") else f"unreachable ({broker.get('reason') or broker.get('error')})"
        rows.append(("broker", f"{broker.get('url')}: {state}"))
    prof = report["profile"]
    rows.append(("profile", prof.get("error") or f"{prof['name']} (accelerator {prof['accelerator']}, "
                                                 f"quantization {prof['quant']}, dtype auto = "
                                                 f"{prof.get('dtype_auto')})"))
    width = max(len(k) for k, _ in rows)
    lines = [f"{k.ljust(width)}  {v}" for k, v in rows]
    problems = report.get("problems") or []
    lines.append("")
    lines.append("problems: none" if not problems else "problems:")
    lines.extend(f"  - {p}" for p in problems)
    return "\n".join(lines)
