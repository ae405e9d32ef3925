"""The paper's claims and the baselines, side by side on the same emulated swarm.

One fleet run per training variant, every one with the same devices, tasks,
model, rank, target modules, rounds, local steps, value precision and seed:

=====================  ==========================================================
row                    what
=====================  ==========================================================
lora                   standard decentralized LoRA: A and B trained, both gossiped
                       over every device (one slot)
ffa                    FFA-LoRA: frozen random A, dense B gossiped over every device
edgedfl                sparse-orthogonal LoRA + clusters + implicit routing (ours)
edgedfl-oracle         the same run, each prompt answered by its true task's expert
edgedfl-merge          the same run, the sum of all experts applied to every prompt
edgedfl-flat           sparse-orthogonal LoRA gossiped over every device (no clusters)
edgedfl-random-masks   ours with random mask positions at the same density (ablation)
=====================  ==========================================================

Routing modes only change the final evaluation, so the oracle and merge rows
come from the edgedfl run's own devices (no extra training).

Learning rates are tuned the same way for every method, before the swarm runs
and without the test split: for each adapter method (lora, ffa, solora) and
each rate of ``lrs``, one device per task trains from scratch for as many
steps as a swarm device takes (rounds x local_steps, same batch size and
length, solora masks calibrated on its own prompts) and is scored by exact
match on ``n_tune`` held-out training examples of its task (examples no swarm
device trains on). Each method runs the swarm at the rate with the best mean
score. The edgedfl variants (flat, random masks) share solora's rate, so the
ablations change one thing only.

Per row: per-task and average accuracy (each device answers every task's test
split with its final inference setup), bytes per device per round and in total
(every payload byte published), bytes until the per-round average accuracy
(each device on its own task) first reached the one standard LoRA's curve ended
at, and wall time.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgedfl import Fleet, FleetConfig, SwarmConfig, get_method
from edgedfl.emulation.fleet import clear_run_dir
from edgedfl.errors import ConfigError

log = logging.getLogger("edgedfl.bench")

VARIANTS: dict[str, dict[str, Any]] = {
    "lora": {"method": "lora", "topology": "flat"},
    "ffa": {"method": "ffa", "topology": "flat"},
    "edgedfl": {"method": "solora", "topology": "clusters", "final_modes": ["implicit", "oracle", "merge"]},
    "edgedfl-flat": {"method": "solora", "topology": "flat"},
    "edgedfl-random-masks": {"method": "solora", "topology": "clusters", "random_masks": True},
}
DERIVED = {"edgedfl-oracle": ("edgedfl", "oracle"), "edgedfl-merge": ("edgedfl", "merge")}
ORDER = ["lora", "ffa", "edgedfl", "edgedfl-oracle", "edgedfl-merge", "edgedfl-flat", "edgedfl-random-masks"]


@dataclasses.dataclass
class PaperSettings:
    devices: int = 8
    tasks: tuple[str, ...] = ("topic", "yesno", "arith", "strtf")
    model: str = "smollm2"
    rounds: int = 4
    local_steps: int = 8
    rank: int = 8
    precision: str = "fp16"
    seed: int = 0
    n_train: int = 400
    n_eval: int = 40
    lrs: tuple[float, ...] = (2e-3, 5e-3, 1e-2)
    variants: tuple[str, ...] = tuple(VARIANTS)
    round_deadline_s: float = 120.0
    #: held-out training examples per task that score a learning rate (never the test split)
    n_tune: int = 24

    @classmethod
    def quick(cls) -> PaperSettings:
        """The tiny model, few rounds: minutes, for the test suite (numbers mean nothing)."""
        return cls(devices=4, tasks=("arith", "strtf"), model="tiny", rounds=2, local_steps=5, n_train=32,
                   n_eval=8, lrs=(1e-2, 3e-2), round_deadline_s=30.0, n_tune=8)


def _swarm(s: PaperSettings, variant: str, lr: float) -> SwarmConfig:
    """The swarm settings of ``variant`` (every variant: the same settings but method, topology and lr)."""
    settings = dict(VARIANTS[variant])
    method = settings.pop("method")
    base = SwarmConfig()
    return SwarmConfig(
        name=f"paper-{variant}", seed=s.seed, model=s.model, rounds=s.rounds, local_steps=s.local_steps,
        precision=s.precision, n_train=s.n_train, n_eval=s.n_eval, round_deadline_s=s.round_deadline_s,
        adapter=dataclasses.replace(base.adapter, method=method, rank=s.rank),
        train=dataclasses.replace(base.train, lr=lr), **settings,
    )


def _tune_score(s: PaperSettings, method: str, lr: float, task: str) -> float:
    """Exact match on held-out training examples after one device's local training at ``lr``."""
    import torch

    from edgedfl import load_examples
    from edgedfl.adapters import attach_adapter
    from edgedfl.devices import detect_profile
    from edgedfl.model.loading import load_model
    from edgedfl.model.quantize import quantize_model
    from edgedfl.train.evaluate import evaluate
    from edgedfl.train.local import calibrate
    from edgedfl.train.trainer import Trainer

    swarm = _swarm(s, _VARIANT_OF[method], lr)
    torch.manual_seed(s.seed)
    base, tok = load_model(s.model, seed=s.seed)
    base, _ = quantize_model(base, "auto", detect_profile())
    adapted = attach_adapter(base, swarm.adapter_config())
    adapted.activate(0)
    per_task = -(-s.devices // len(s.tasks))  # devices holding this task in the swarm
    pool = load_examples(task, "train", n=s.n_train * per_task + s.n_tune, seed=s.seed)
    train, held_out = pool[: s.n_train], pool[s.n_train * per_task :]  # held-out: no swarm device trains on it
    if get_method(swarm.method).sparse:
        calibrate(adapted, tok, [e.prompt for e in train[: swarm.n_calibration]], 0, swarm.max_length)
    trainer = Trainer(adapted, tok, train, swarm.train_config())
    trainer.train(save_at_end=False)
    metrics = evaluate(adapted.peft_model, tok, held_out, batch_size=16, max_length=swarm.max_length,
                       max_new_tokens=8)
    return float(metrics["exact_match"])


#: the variant whose swarm settings a method's tuning run copies
_VARIANT_OF = {"lora": "lora", "ffa": "ffa", "solora": "edgedfl"}


def tune_lrs(s: PaperSettings) -> dict[str, Any]:
    """Per adapter method: the score of every rate of ``s.lrs`` and the best one (see the module doc)."""
    methods = sorted({VARIANTS[v]["method"] for v in s.variants})
    out: dict[str, Any] = {}
    for method in methods:
        scores = {}
        for lr in s.lrs:
            per_task = {}
            for t in s.tasks:
                per_task[t] = _tune_score(s, method, lr, t)
                log.info("tuning %s lr=%g %s: %.3f on held-out training examples", method, lr, t, per_task[t])
            scores[f"{lr:g}"] = {"mean": sum(per_task.values()) / len(per_task), "per_task": per_task}
        best = max(s.lrs, key=lambda lr: (scores[f"{lr:g}"]["mean"], -lr))  # ties: the smaller rate
        out[method] = {"scores": scores, "best": best}
    return out


def run_variant(s: PaperSettings, variant: str, lr: float, out: Path) -> dict[str, Any]:
    """One fleet run of ``variant``; a finished run of the same fleet settings in ``out`` is reused."""
    cfg = FleetConfig(devices=s.devices, tasks=list(s.tasks), swarm=_swarm(s, variant, lr), timeout_s=7200)
    done = _finished_report(cfg, out)
    if done is not None:
        log.info("reusing the finished run %s", out)
        return done
    clear_run_dir(out)  # an unfinished run: its devices would resume from their checkpoints; start afresh
    report = Fleet(cfg, out).run()
    report["variant"], report["lr"] = variant, lr
    (out / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True))
    return report


def _finished_report(cfg: FleetConfig, out: Path) -> dict[str, Any] | None:
    """The report in ``out`` if it was written by a run of exactly ``cfg`` (an interrupted bench resumes)."""
    try:
        report: dict[str, Any] = json.loads((out / "report.json").read_text())
        saved = FleetConfig.load(out / "fleet_config.json")
    except (OSError, ValueError, ConfigError):
        return None
    return report if saved == cfg else None


def bytes_to_reach(report: dict[str, Any], target: float) -> int | None:
    """Cumulative bytes (join included) when the per-round average accuracy first reached ``target``."""
    total = 0
    for r in report["rounds"]:
        total += r["bytes_sent"]
        if r["round"] > 0 and r["avg_accuracy"] >= target:
            return total
    return None


def _se_points(accuracy: dict[str, float], s: PaperSettings) -> float:
    """Standard error (points) of a row's average accuracy from the prompts behind it.

    Every device answers ``n_eval`` prompts of every task, from its own block of
    the test split: ``devices * n_eval`` answers per task, scored 0/1 (binomial).
    """
    n = s.devices * s.n_eval
    tasks = [t for t in s.tasks if t in accuracy]
    var = sum(accuracy[t] * (1 - accuracy[t]) / n for t in tasks) / max(len(tasks), 1) ** 2
    return 100 * math.sqrt(var)


def summarise(reports: dict[str, dict[str, Any]], s: PaperSettings) -> dict[str, Any]:
    rows: dict[str, dict[str, Any]] = {}
    for name in ORDER:
        if name in DERIVED:
            base, mode = DERIVED[name]
            if base not in reports or mode not in reports[base]["final"].get("modes", {}):
                continue
            rep = reports[base]
            m = rep["final"]["modes"][mode]
            acc, avg = m["accuracy"], m["avg_accuracy"]
        elif name in reports:
            rep = reports[name]
            acc, avg = rep["final"]["accuracy"], rep["final"]["avg_accuracy"]
        else:
            continue
        f = rep["final"]
        rows[name] = {"accuracy": acc, "avg_accuracy": avg, "lr": rep["lr"],
                      "bytes_per_device_per_round": f["bytes_per_device_per_round"], "total_bytes": f["total_bytes"],
                      "wall_s": f["wall_s"], "routing_accuracy": f.get("routing_accuracy") if name == "edgedfl" else None,
                      "curve": [(r["avg_accuracy"], r["bytes_sent"]) for r in rep["rounds"]]}
    lora = rows.get("lora")
    if lora:
        # the per-round curves score each device on its own task; compare like with like: the
        # average LoRA's curve ended at (its final row answers every task, another measure)
        lora_curve_end = reports["lora"]["rounds"][-1]["avg_accuracy"]
        for name, row in rows.items():
            src = reports[DERIVED[name][0]] if name in DERIVED else reports[name]
            row["bytes_to_lora_accuracy"] = bytes_to_reach(src, lora_curve_end)
    targets = {}
    if lora and "edgedfl" in rows:
        ours = rows["edgedfl"]
        ratio = ours["bytes_per_device_per_round"] / max(lora["bytes_per_device_per_round"], 1)
        gain = (ours["avg_accuracy"] - lora["avg_accuracy"]) * 100
        targets["bytes_per_round_vs_lora"] = {"measured": ratio, "target": "<= 0.20", "met": ratio <= 0.20}
        se = math.hypot(_se_points(ours["accuracy"], s), _se_points(lora["accuracy"], s))
        targets["accuracy_gain_points_vs_lora"] = {"measured": gain, "target": ">= +5", "met": gain >= 5,
                                                   "standard_error": se}
        if "edgedfl-oracle" in rows:
            # one sign convention everywhere: implicit - oracle (positive: routing beat the true task's expert)
            diff = (ours["avg_accuracy"] - rows["edgedfl-oracle"]["avg_accuracy"]) * 100
            targets["implicit_minus_oracle_points"] = {"measured": diff, "target": ">= -1", "met": diff >= -1}
    return {"settings": dataclasses.asdict(s), "rows": rows, "targets": targets}


def _tuning_key(s: PaperSettings) -> dict[str, Any]:
    """What a tuning result depends on: reusing one needs the same values."""
    return {"model": s.model, "tasks": list(s.tasks), "lrs": list(s.lrs), "steps": s.rounds * s.local_steps,
            "rank": s.rank, "n_train": s.n_train, "n_tune": s.n_tune, "seed": s.seed, "devices": s.devices}


def load_tuning(path: str | Path, s: PaperSettings) -> dict[str, Any]:
    """A ``tuning.json`` of an earlier run with the same tuning settings (else ``ConfigError``)."""
    try:
        saved = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read the learning-rate tuning {path}: {exc}") from exc
    if not isinstance(saved, dict) or saved.get("settings") != _tuning_key(s):
        raise ConfigError(f"{path} was tuned with other settings ({saved.get('settings') if isinstance(saved, dict) else saved!r}); "
                          f"this run needs {_tuning_key(s)}")
    methods: dict[str, Any] = saved["methods"]
    return methods


def run_paper(s: PaperSettings, out_dir: str | Path, *, tuning_file: str | Path | None = None,
              on_variant: Callable[[dict[str, Any]], object] | None = None) -> dict[str, Any]:
    """Tune every method's learning rate (the same way), then run each variant once at its rate.

    ``tuning_file``: reuse the ``tuning.json`` of an earlier run with the same settings.
    An empty ``s.lrs`` runs each method at its default rate (its ``default_lr``, from an earlier
    tuning). ``on_variant`` gets the summary so far after every variant. Finished
    variant runs in ``out_dir`` with the same settings are reused, so a bench that
    was interrupted continues where it stopped.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    tuning: dict[str, Any]
    if tuning_file is not None:
        tuning = load_tuning(tuning_file, s)
    elif len(s.lrs) > 1:
        tuning = tune_lrs(s)
    elif s.lrs:
        tuning = {m: {"scores": {}, "best": s.lrs[0]} for m in {VARIANTS[v]["method"] for v in s.variants}}
    else:  # no grid: each method at its tuned default (default_lr)
        tuning = {m: {"scores": {}, "best": get_method(m).default_lr, "source": "default_lr"}
                  for m in {VARIANTS[v]["method"] for v in s.variants}}
    tune_s = time.monotonic() - t0
    (out / "tuning.json").write_text(json.dumps({"settings": _tuning_key(s), "methods": tuning}, indent=2,
                                                sort_keys=True))
    reports: dict[str, dict[str, Any]] = {}
    summary: dict[str, Any] = {}
    for variant in s.variants:
        lr = float(tuning[VARIANTS[variant]["method"]]["best"])
        log.info("running %s at lr=%g", variant, lr)
        reports[variant] = run_variant(s, variant, lr, out / "runs" / f"{variant}-lr{lr:g}")
        summary = summarise(reports, s)
        summary["lr_tuning"] = tuning
        summary["lr_tuning_s"] = tune_s
        summary["complete"] = len(reports) == len(s.variants)
        if on_variant is not None:  # partial results survive an interrupted bench
            on_variant(summary)
    return summary


def _fmt_bytes(n: float | None) -> str:
    return "not reached" if n is None else f"{n / 1e6:.3f} MB"


def write_results(summary: dict[str, Any], out_dir: str | Path, command: str) -> list[Path]:
    """paper.md (table), paper.json, paper.png (average accuracy against cumulative bytes)."""
    out = Path(out_dir)
    tasks = summary["settings"]["tasks"]
    lines = ["# edgedfl against the paper's claims and the baselines", "", f"Command: `{command}`", "",
             "Settings: " + ", ".join(f"{k}={v}" for k, v in summary["settings"].items()), "",
             "| method | " + " | ".join(tasks) + " | average | kB/device/round | total | bytes to LoRA's last-round accuracy | "
             "lr | wall s |", "|" + "---|" * (len(tasks) + 7)]
    for name, row in summary["rows"].items():
        accs = " | ".join(f"{row['accuracy'].get(t, float('nan')):.3f}" for t in tasks)
        lines.append(f"| {name} | {accs} | {row['avg_accuracy']:.3f} | {row['bytes_per_device_per_round'] / 1e3:.1f} | "
                     f"{_fmt_bytes(row['total_bytes'])} | {_fmt_bytes(row.get('bytes_to_lora_accuracy'))} | "
                     f"{row['lr']:g} | {row['wall_s']:.0f} |")
    tuning = summary.get("lr_tuning", {})
    if any(t["scores"] for t in tuning.values()):
        lines += ["", "## Learning rates (tuned the same way for every method; held-out training examples)", "",
                  "| method | " + " | ".join(f"lr {lr}" for lr in next(iter(tuning.values()))["scores"]) + " | chosen |",
                  "|" + "---|" * (len(next(iter(tuning.values()))["scores"]) + 2)]
        for method, t in sorted(tuning.items()):
            cells = " | ".join(f"{v['mean']:.3f}" for v in t["scores"].values())
            lines.append(f"| {method} | {cells} | {t['best']:g} |")
    if any(t.get("source") in ("default_lr", "DEFAULT_LR") for t in tuning.values()):
        lines += ["", "Learning rates: each method's default (`default_lr` in `edgedfl/adapters/methods/`), "
                  "not tuned again in this run: " + ", ".join(f"{m} {t['best']:g}" for m, t in sorted(tuning.items()))
                  + "."]
    if not summary.get("complete", True):
        lines += ["", ("**Partial results: the bench was still running (or was stopped) when these were written; "
                       "rows missing above have not run yet.**")]
    lines += ["", "## Targets", ""]
    for key, t in summary["targets"].items():
        se = f" ± {t['standard_error']:.1f} (one standard error, {summary['settings']['devices']} x " \
             f"{summary['settings']['n_eval']} answers per task)" if "standard_error" in t else ""
        lines.append(f"- {key}: measured {t['measured']:.3f}{se}, target {t['target']}: "
                     f"**{'met' if t['met'] else 'MISSED'}**")
    if summary["rows"].get("edgedfl", {}).get("routing_accuracy") is not None:
        lines.append(f"- routing accuracy (implicit, held-out mixed prompts): "
                     f"{summary['rows']['edgedfl']['routing_accuracy']:.3f}")
    out.mkdir(parents=True, exist_ok=True)
    md, js, png = out / "paper.md", out / "paper.json", out / "paper.png"
    md.write_text("\n".join(lines) + "\n")
    js.write_text(json.dumps(summary, indent=2, sort_keys=True))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, row in summary["rows"].items():
        if name in DERIVED:
            continue
        cum, xs, ys = 0, [], []
        for acc, b in row["curve"]:
            cum += b
            xs.append(cum / 1e6)
            ys.append(acc)
        ax.plot(xs, ys, marker="o", label=name)
    ax.set(xlabel="cumulative MB sent (all devices)", ylabel="average accuracy (own task, per round)",
           title="accuracy against bytes")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return [md, js, png]
