"""The report of an emulated run (JSON that benchmarks read) and its PNG plots.

Schema (top level): ``method``, ``devices``, ``tasks``, ``seed``, ``topology``, ``swarm`` (its name),
``per_device`` (slot, task, experts held, rejections by kind, exit codes of its processes that died and were
restarted, the round the last restart resumed after),
``rejects`` (every device's refused messages, by kind),
``model``; ``rounds``: per round ``round``, ``accuracy`` (task -> mean
exact-match accuracy of that task's devices on the task's test split, with
each device's inference setup), ``avg_accuracy`` (mean over tasks),
``bytes_sent`` (payload bytes every device published during the round:
envelopes, chunk headers, masks, acks and experts included); ``join_bytes``
(hellos and calibration statistics: the ``bytes_sent`` of round 0, whose
accuracy is the evaluation before any training); ``final``:
``avg_accuracy``, ``accuracy``, ``total_bytes`` (join included),
``bytes_per_device_per_round``, ``clusters`` (node -> slot), ``wall_s``.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from edgedfl.data.sources import task_label


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def majority_rates(tasks: list[str], seed: int) -> dict[str, float]:
    """Each task's majority-class rate on its test split (a constant answer's accuracy); NaN if unreadable."""
    from edgedfl.data.check import majority_rate
    from edgedfl.data.sources import load_examples
    from edgedfl.errors import EdgeDFLError

    out = {}
    for t in tasks:
        try:
            out[t] = majority_rate(load_examples(t, "train", seed=seed), load_examples(t, "test", seed=seed))[1]
        except (EdgeDFLError, OSError):
            out[t] = float("nan")
    return out


def build_report(run_dir: str | Path, *, method: str, tasks: list[str], seed: int, topology: str, model: str,
                 wall_s: float) -> dict[str, Any]:
    run = Path(run_dir)
    finals, rows = {}, defaultdict(list)
    swarm_name = admission = None
    local_steps = 0
    step_times: list[float] = []
    for node_dir in sorted(p for p in run.iterdir() if (p / "node_config.json").is_file()):
        cfg = json.loads((node_dir / "node_config.json").read_text())
        swarm_name = swarm_name or cfg.get("swarm", {}).get("name")
        admission = admission or cfg.get("swarm", {}).get("admission")
        local_steps = local_steps or int(cfg.get("swarm", {}).get("local_steps", 0))
        final_path = node_dir / "final.json"
        if final_path.is_file():
            finals[cfg["node_id"]] = json.loads(final_path.read_text())
        seen = {}
        if (node_dir / "rounds.jsonl").is_file():
            for line in (node_dir / "rounds.jsonl").read_text().splitlines():
                row = json.loads(line)
                seen[row["round"]] = row  # a node that crashed and redid a round: keep the last
        for r, row in seen.items():
            rows[r].append(row)
    bytes_by_round: dict[int, int] = defaultdict(int)
    for f in finals.values():
        for r, b in f["bytes_by_round"].items():
            bytes_by_round[int(r)] += int(b)
    rounds = []
    for r in sorted(rows):
        per_task: dict[str, list[float]] = defaultdict(list)
        losses: dict[str, list[float]] = defaultdict(list)
        for row in rows[r]:
            per_task[row["task"]].append(row["accuracy"])
            losses[row["task"]].append(row["loss"])
        acc = {t: _mean(per_task[t]) for t in tasks if per_task[t]}
        rounds.append({"round": r, "accuracy": acc, "avg_accuracy": _mean(list(acc.values())),
                       "loss": {t: _mean(losses[t]) for t in tasks if losses[t]},
                       "bytes_sent": bytes_by_round.get(r, 0),
                       # the round's training + exchange time, its slowest device (evaluation not counted)
                       "round_s": max((float(row.get("train_s", 0.0)) + float(row.get("waited_s", 0.0))
                                       for row in rows[r]), default=0.0)})
        for row in rows[r]:
            if row.get("train_s") is not None and local_steps:
                step_times.append(float(row["train_s"]) / local_steps)
    devices = len(finals)
    total = sum(bytes_by_round.values())
    n_rounds = max((r["round"] for r in rounds), default=0)  # round 0 is the evaluation before training
    # final accuracy: every device answers every task's test split with its inference setup
    # (the first final mode, implicit routing by default); other modes are reported beside it
    by_mode: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    routing_acc: list[float] = []
    setup_mode = None
    for f in finals.values():
        modes = f.get("final", {}).get("modes", {})
        setup_mode = setup_mode or f.get("final", {}).get("setup")
        for mode, task_acc in modes.items():
            for t, value in task_acc.items():
                by_mode[mode][t].append(value)
        if f.get("final", {}).get("routing_accuracy") is not None:
            routing_acc.append(f["final"]["routing_accuracy"])
    modes_report = {m: {t: _mean(v[t]) for t in tasks if v[t]} for m, v in by_mode.items()}
    acc = modes_report.get(setup_mode or "", {})
    # a task never above a constant answer's accuracy learned nothing a constant would not
    majority = majority_rates(tasks, seed)
    best = {t: max([r["accuracy"].get(t, float("nan")) for r in rounds if r["round"] > 0] + [acc.get(t, float("nan"))])
            for t in tasks}
    at_majority = [t for t in tasks if not best[t] > majority[t] + 1e-9 and majority[t] == majority[t]]
    rejects: dict[str, int] = defaultdict(int)
    crashes = json.loads((run / "crashes.json").read_text()) if (run / "crashes.json").is_file() else {}
    per_device = {}
    incomplete: list[str] = []  # devices that ended without some other cluster's expert
    for n, f in sorted(finals.items()):
        for kind, count in f.get("rejects", {}).items():
            rejects[kind] += int(count)
        missing = [int(s) for s in f.get("experts_missing", [])]
        per_device[n] = {"slot": f["slot"], "task": f["task"], "experts_held": sorted(int(s) for s in f["experts"]),
                         "experts_missing": missing, "rejects": f.get("rejects", {}),
                         "rejects_by_sender": f.get("rejects_by_sender", {}),
                         "resumed_after": f.get("resumed_after", 0), "crashes": crashes.get(n, []),
                         "peak_rss_bytes": f.get("peak_rss_bytes")}
        if missing:
            incomplete.append(n)
    return {
        "method": method, "topology": topology, "model": model, "devices": devices, "tasks": tasks, "seed": seed,
        "swarm": swarm_name, "admission": admission, "per_device": per_device,
        "rejects": dict(sorted(rejects.items())), "devices_missing_experts": incomplete,
        "task_names": {t: task_label(t) for t in tasks}, "majority_rate": majority,
        "tasks_at_majority_rate": at_majority,
        "rounds": rounds, "join_bytes": bytes_by_round.get(0, 0),
        "final": {
            "avg_accuracy": _mean(list(acc.values())), "accuracy": acc, "total_bytes": total,
            "inference_setup": setup_mode,
            "modes": {m: {"accuracy": a, "avg_accuracy": _mean(list(a.values()))} for m, a in modes_report.items()},
            "routing_accuracy": _mean(routing_acc) if routing_acc else None,
            "bytes_per_device_per_round": total / max(devices * n_rounds, 1),
            "clusters": {n: f["slot"] for n, f in sorted(finals.items())}, "wall_s": wall_s,
            # one local optimizer step (median over devices and rounds; devices sharing cores are slower)
            "step_s_median": statistics.median(step_times) if step_times else None,
            "peak_rss_bytes_max": max((int(f["peak_rss_bytes"]) for f in finals.values()
                                       if f.get("peak_rss_bytes")), default=None),
        },
    }


def write_plots(report: dict[str, Any], path: str | Path, graph_edges: list[tuple[str, str]] | None = None) -> list[Path]:
    """accuracy per task vs round, cumulative bytes, and the cluster graph, as PNGs next to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = Path(path).with_suffix("")
    out = []
    rounds = report["rounds"]
    xs = [r["round"] for r in rounds]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for task in report["tasks"]:
        ax.plot(xs, [r["accuracy"].get(task, float("nan")) for r in rounds], marker="o", label=task)
    ax.plot(xs, [r["avg_accuracy"] for r in rounds], "k--", label="average")
    ax.set(xlabel="round", ylabel="exact-match accuracy", title=f"{report['method']}: accuracy per task")
    ax.legend()
    fig.tight_layout()
    out.append(base.with_name(base.name + "_accuracy.png"))
    fig.savefig(out[-1], dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 3.5))
    cum, total = [], 0  # round 0 carries the join bytes
    for r in rounds:
        total += r["bytes_sent"]
        cum.append(total / 1e6)
    ax.plot(xs, cum, marker="o")
    ax.set(xlabel="round", ylabel="cumulative MB sent (all devices)", title="bytes on the wire")
    fig.tight_layout()
    out.append(base.with_name(base.name + "_bytes.png"))
    fig.savefig(out[-1], dpi=100)
    plt.close(fig)

    import math

    clusters = report["final"]["clusters"]
    nodes = sorted(clusters)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    pos = {n: (math.cos(2 * math.pi * i / max(len(nodes), 1)), math.sin(2 * math.pi * i / max(len(nodes), 1)))
           for i, n in enumerate(nodes)}
    for a, b in graph_edges or []:
        if a in pos and b in pos:
            ax.plot([pos[a][0], pos[b][0]], [pos[a][1], pos[b][1]], color="0.7", zorder=1)
    colours = plt.get_cmap("tab10")
    for n in nodes:
        ax.scatter(*pos[n], s=400, color=colours(clusters[n] % 10), zorder=2)
        ax.annotate(n, pos[n], ha="center", va="center", fontsize=7, zorder=3)
    ax.set_title("clusters (colour = expert slot)")
    ax.axis("off")
    fig.tight_layout()
    out.append(base.with_name(base.name + "_clusters.png"))
    fig.savefig(out[-1], dpi=100)
    plt.close(fig)
    return out


def graph_edges(run_dir: str | Path) -> list[tuple[str, str]]:
    """Neighbour links as the devices recorded them (from their checkpoints' state)."""
    edges = set()
    for node_dir in Path(run_dir).iterdir():
        latest = node_dir / "ckpt" / "LATEST"
        if not latest.is_file():
            continue
        state = json.loads((node_dir / "ckpt" / latest.read_text().strip() / "state.json").read_text())
        me = node_dir.name
        for nb in state.get("extra", {}).get("neighbours", []):
            edges.add((min(me, nb), max(me, nb)))
    return sorted(edges)


def format_table(report: dict[str, Any]) -> str:
    """The per-task accuracy and bytes table the CLI prints."""
    lines = []
    tasks = report["tasks"]
    names = report.get("task_names", {})
    head = f"{'round':>5} " + " ".join(f"{names.get(t, t)[:8]:>8}" for t in tasks) + f" {'average':>8} {'MB sent':>9}"
    lines.append(head)
    for r in report["rounds"]:
        accs = " ".join(f"{r['accuracy'].get(t, float('nan')):>8.2f}" for t in tasks)
        lines.append(f"{r['round']:>5} {accs} {r['avg_accuracy']:>8.2f} {r['bytes_sent'] / 1e6:>9.3f}")
    f = report["final"]
    for mode, m in f.get("modes", {}).items():
        accs = " ".join(f"{m['accuracy'].get(t, float('nan')):>8.2f}" for t in tasks)
        lines.append(f"{mode[:5]:>5} {accs} {m['avg_accuracy']:>8.2f}")
    if report.get("majority_rate"):
        rates = " ".join(f"{report['majority_rate'].get(t, float('nan')):>8.2f}" for t in tasks)
        lines.append(f"{'major':>5} {rates}   (a constant answer's accuracy: the majority-class rate)")
    for t in report.get("tasks_at_majority_rate", []):
        lines.append(f"warning: {names.get(t, t)} never scored above its majority-class rate "
                     f"{report['majority_rate'][t]:.2f}: it learned nothing a constant answer would not")
    if f.get("routing_accuracy") is not None:
        lines.append(f"routing accuracy (implicit, held-out mixed prompts): {f['routing_accuracy']:.3f}")
    clusters: Any = f["clusters"]
    if len(clusters) > 12:  # a fleet: the size of each cluster, not every device's slot
        sizes: dict[int, int] = defaultdict(int)
        for slot in clusters.values():
            sizes[int(slot)] += 1
        clusters = ", ".join(f"slot {s}: {k} devices" for s, k in sorted(sizes.items()))
    lines.append(f"final ({f.get('inference_setup')}): average accuracy {f['avg_accuracy']:.3f}; {f['total_bytes'] / 1e6:.3f} MB in all "
                 f"(join {report['join_bytes'] / 1e6:.3f} MB), {f['bytes_per_device_per_round'] / 1e3:.1f} kB per "
                 f"device per round; clusters {clusters}; {f['wall_s']:.0f} s")
    return "\n".join(lines)
