"""A device's base quantization: time and memory of ``quantize_model``, against a full garbage
collection after every linear layer (what it did before it only trimmed the heap per layer).

Each contender runs in a fresh process (its resident memory is its own): load the model, quantize it,
report the seconds ``quantize_model`` took, the resident set after it and the peak. Contenders alternate,
``--reps`` times each; the medians and their ratio are printed side by side and written to
``<out>.md`` and ``<out>.json``.

Run:  python bench/bench_quantize.py [--model smollm2] [--backends torchao-int8,torchao-int4] [--reps 2]
      [--out bench/results/quantize]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

_CHILD = r"""
import gc, json, resource, sys, time
import edgedfl.model.quantize as q
from edgedfl.devices import detect_profile
from edgedfl.model.loading import load_model

model, backend, mode = sys.argv[1:4]
found = [0]
if mode == "collect-each-layer":
    plain = q.release_freed_memory

    def collecting(collect=True):
        found[0] += gc.collect()  # unreachable objects the full pass finds (what the pass could free)
        plain(collect=False)

    q.release_freed_memory = collecting
base, tok = load_model(model)
t0 = time.perf_counter()
base, name = q.quantize_model(base, backend, detect_profile(), device="cpu")
seconds = time.perf_counter() - t0
rss = int(open("/proc/self/statm").read().split()[1]) * 4096
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"seconds": seconds, "rss": rss, "peak": peak, "backend": name, "unreachable": found[0]}))
"""

MODES = ("now", "collect-each-layer")


def _one(model: str, backend: str, mode: str) -> dict[str, Any]:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-c", _CHILD, model, backend, mode], capture_output=True, text=True,
                          env=env, check=False, timeout=1800)
    if proc.returncode != 0:
        raise SystemExit(f"{backend} {mode} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2")
    p.add_argument("--backends", default="torchao-int8,torchao-int4")
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--out", default="bench/results/quantize")
    args = p.parse_args(argv)
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for backend in args.backends.split(","):
        results[backend] = {m: [] for m in MODES}
        for rep in range(args.reps):
            order = MODES if rep % 2 == 0 else MODES[::-1]  # alternated: drift on a shared machine cancels
            for mode in order:
                r = _one(args.model, backend, mode)
                results[backend][mode].append(r)
                print(f"{backend} {mode}: {r['seconds']:.1f} s, resident {r['rss'] / 1e6:.0f} MB, "
                      f"peak {r['peak'] / 1e6:.0f} MB", flush=True)
    rows, summary = [], {}
    for backend, by_mode in results.items():
        med = {m: {k: statistics.median(r[k] for r in runs) for k in ("seconds", "rss", "peak")}
               for m, runs in by_mode.items()}
        summary[backend] = {"median": med, "time_ratio": med["now"]["seconds"] / med["collect-each-layer"]["seconds"],
                            "rss_ratio": med["now"]["rss"] / med["collect-each-layer"]["rss"],
                            "peak_ratio": med["now"]["peak"] / med["collect-each-layer"]["peak"]}
        s = summary[backend]
        unreachable = max(r["unreachable"] for r in by_mode["collect-each-layer"])
        s["unreachable"] = unreachable
        rows.append(f"| {backend} | {med['now']['seconds']:.1f} s | {med['collect-each-layer']['seconds']:.1f} s | "
                    f"**{s['time_ratio']:.3f}x** | {med['now']['rss'] / 1e6:.0f} / {med['collect-each-layer']['rss'] / 1e6:.0f} MB "
                    f"| {med['now']['peak'] / 1e6:.0f} / {med['collect-each-layer']['peak'] / 1e6:.0f} MB | {unreachable} |")
    command = "python bench/bench_quantize.py " + " ".join(argv if argv is not None else sys.argv[1:])
    md = [
        "# Base quantization at a device's start",
        "",
        f"Command: `{command.strip()}`  ",
        (f"Machine: {platform.machine()}, {os.cpu_count()} CPUs; load average after: "
        f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}. Model {args.model}, medians of {args.reps} fresh "
        "processes per contender, alternated."),
        "",
        ("`now`: `quantize_model` as it is (per linear layer the heap is trimmed; one full garbage collection at "
        "the end). `collect-each-layer`: a full garbage collection before every trim, as before. The last "
         "column counts what those passes found to free: zero means the per-layer pass freed nothing that "
         "reference counting had not. Resident and peak memory are only comparable on an idle machine "
         "(under memory pressure the kernel drops mapped pages from either)."),
        "",
        ("| backend | now | collect each layer | time ratio | resident after (now / before) | peak (now / before) "
        "| objects the per-layer passes found unreachable |"),
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
    ]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text("\n".join(md))
    out.with_suffix(".json").write_text(json.dumps({"command": command.strip(), "model": args.model,
                                                    "runs": results, "summary": summary}, indent=2) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
