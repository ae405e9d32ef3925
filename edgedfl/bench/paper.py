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
local                  local-only: each device trains a standard LoRA adapter alone and
                       sends no update (what exchanging buys)
=====================  ==========================================================

Presets: the default (short: 4 tasks that never collide, a few rounds),
:meth:`PaperSettings.long` (``--suite long``: 6 tasks that collide in pairs,
12 devices, 300 optimizer steps each, 3 seeds for the headline rows,
``bench/results/suite.md`` says how the tasks were chosen) and
:meth:`PaperSettings.quick` (the test suite's).

Resumable on any machine: with a results folder (the long preset's is
``bench/results/paper-long``), every finished variant and seed is written
there as ``<variant>-seed<k>.json`` (its fleet settings, the commit it ran on,
its report) and every learning-rate score as it is measured
(``tuning-scores.json``); a later run, on this machine or another, takes what
is there for the same settings and runs only what is missing. Commit the
folder as it grows: partial tables are valid tables (the rows present are final).

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

Per row: per-task and average accuracy with standard errors (each device
answers every task's test split with its final inference setup; rows with
several seeds average them), bytes per device per round and in total (every
payload byte published), the accuracy reached within fixed byte budgets
(fractions of standard LoRA's total: the per-round average accuracy of the last
round that fits), bytes and time until the per-round average accuracy (each
device on its own task) first reached the one standard LoRA's curve ended at
(time: each round's slowest device's training plus exchange, evaluation not
counted), one local step's median time and the largest peak resident set of a
device process, and wall time.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import subprocess
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
    "local": {"method": "lora", "topology": "local"},
}
DERIVED = {"edgedfl-oracle": ("edgedfl", "oracle"), "edgedfl-merge": ("edgedfl", "merge")}
ORDER = ["lora", "ffa", "edgedfl", "edgedfl-oracle", "edgedfl-merge", "edgedfl-flat", "edgedfl-random-masks",
         "local"]
#: (row, against, what the difference isolates): paper.md's ingredient table, wherever both rows ran
CONTRASTS = (
    ("edgedfl", "lora", "the whole method against standard decentralized LoRA"),
    ("edgedfl-flat", "lora", "the adapter method alone (orthogonal A, sparse B), one flat swarm, no routing"),
    ("edgedfl", "edgedfl-flat", "clusters and routing, on the same adapter method"),
    ("edgedfl", "edgedfl-random-masks", "spectrum masks against random masks of the same sparsity"),
    ("edgedfl", "edgedfl-oracle", "implicit routing against each prompt's true task's expert"),
    ("edgedfl", "edgedfl-merge", "routing against one adapter merged from every expert"),
    ("ffa", "lora", "a frozen A (FFA-LoRA) against a trained one"),
    ("lora", "local", "exchanging at all: standard LoRA against local-only training"),
)
#: rows whose per-round curve (each device's own adapter on its own task, after the round's exchange) is not
#: what they serve in the end: merge-all answers every prompt with one adapter summed from every expert,
#: local-only answers every task with its own task's adapter. Their cost columns against the curve are
#: left out (printed n/a); their every-task accuracy is in the accuracy table.
OFF_CURVE = frozenset({"edgedfl-merge", "local"})
#: the long suite: three pairs of tasks whose outputs collide (edgedfl.data.tasks.COLLIDING_PAIRS),
#: each learnable by SmolLM2 in the budget (bench/results/suite.md)
LONG_TASKS = ("yesno", "parity", "first", "last", "isodate", "textdate")


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
    #: more seeds for the ``headline`` variants (each adds a whole run of the variant)
    extra_seeds: tuple[int, ...] = ()
    headline: tuple[str, ...] = ("lora", "edgedfl")
    #: byte budgets of "accuracy under budget", as fractions of standard LoRA's total bytes
    budgets: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5, 1.0)
    preset: str = "short"
    #: greedy tokens per answer in every evaluation (the long suite's dates need 12)
    max_new_tokens: int = 8
    #: every device's (and every tuning run's) base compute dtype (DeviceConfig.dtype)
    dtype: str = "float32"
    #: devices per process (FleetConfig.per_host): the quick preset packs its fleet into one device host
    per_host: int = 1
    #: prompts per task signature (SwarmConfig.n_signature); 0: the swarm's default
    n_signature: int = 0

    @classmethod
    def long(cls) -> PaperSettings:
        """The long-horizon suite: 6 colliding tasks, 12 devices (2 per task), 10 rounds x 30 steps, 3 seeds
        for the headline rows (two seeds differed by 4 points of gain: bench/results/paper-long-reading.md).
        Hours on a 2-core machine; resumable (the module doc). The grid of rates
        reaches down to 1e-3: at 2e-3, 5e-3 and 1e-2, LoRA scored best at the lowest rate and fell steeply
        above it (0.979, 0.767, 0.340), so its best could lie lower still."""
        return cls(devices=12, tasks=LONG_TASKS, rounds=10, local_steps=30, n_train=400, n_eval=24,
                   lrs=(1e-3, 2e-3, 5e-3, 1e-2), variants=tuple(VARIANTS), round_deadline_s=1800.0, n_tune=48,
                   extra_seeds=(1, 2), preset="long", max_new_tokens=16, dtype="bfloat16",
                   # the committed rows ran with 16 prompts per signature, the default then; kept so that
                   # the committed rows are reused (a new default would run every row again)
                   n_signature=16)

    @classmethod
    def quick(cls) -> PaperSettings:
        """The tiny model, few rounds: minutes, for the test suite (numbers mean nothing)."""
        return cls(devices=4, tasks=("arith", "strtf"), model="tiny", rounds=2, local_steps=5, n_train=32,
                   n_eval=8, lrs=(1e-2, 3e-2), round_deadline_s=30.0, n_tune=8, preset="quick", per_host=4)

    def runs(self) -> list[tuple[str, int]]:
        """(variant, seed) of every training run: each variant at ``seed``, the headline ones at every extra seed."""
        out = [(v, self.seed) for v in self.variants]
        out += [(v, k) for k in self.extra_seeds for v in self.variants if v in self.headline and k != self.seed]
        return out


def _swarm(s: PaperSettings, variant: str, lr: float, seed: int | None = None) -> SwarmConfig:
    """The swarm settings of ``variant`` (every variant: the same settings but method, topology and lr)."""
    settings = dict(VARIANTS[variant])
    method = settings.pop("method")
    base = SwarmConfig()
    return SwarmConfig(
        name=f"paper-{variant}", seed=s.seed if seed is None else seed, model=s.model, rounds=s.rounds, local_steps=s.local_steps,
        precision=s.precision, n_train=s.n_train, n_eval=s.n_eval, round_deadline_s=s.round_deadline_s,
        adapter=dataclasses.replace(base.adapter, method=method, rank=s.rank),
        train=dataclasses.replace(base.train, lr=lr, max_new_tokens=s.max_new_tokens),
        **({"n_signature": s.n_signature} if s.n_signature else {}), **settings,
    )


def _tune_score(s: PaperSettings, method: str, lr: float, task: str) -> float:
    """Exact match on held-out training examples after one device's local training at ``lr``."""
    import torch

    from edgedfl import load_examples
    from edgedfl.adapters import attach_adapter
    from edgedfl.devices import detect_profile, resolve_dtype
    from edgedfl.model.loading import load_model
    from edgedfl.model.quantize import quantize_model
    from edgedfl.train.evaluate import evaluate
    from edgedfl.train.local import calibrate
    from edgedfl.train.trainer import Trainer

    swarm = _swarm(s, _VARIANT_OF[method], lr)
    torch.manual_seed(s.seed)
    base, tok = load_model(s.model, seed=s.seed, dtype=resolve_dtype(s.dtype))
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
                       max_new_tokens=swarm.train.max_new_tokens)
    return float(metrics["exact_match"])


#: the variant whose swarm settings a method's tuning run copies
_VARIANT_OF = {"lora": "lora", "ffa": "ffa", "solora": "edgedfl"}


def tune_lrs(s: PaperSettings, scores_file: Path | None = None) -> dict[str, Any]:
    """Per adapter method: the score of every rate of ``s.lrs`` and the best one (see the module doc).

    ``scores_file``: every score is written there as soon as it is measured, and scores already there
    for the same tuning settings are taken instead of measured again (an interrupted tuning resumes).
    """
    methods = sorted({VARIANTS[v]["method"] for v in s.variants})
    known: dict[str, Any] = {}
    if scores_file is not None and scores_file.is_file():
        try:
            saved = json.loads(scores_file.read_text())
        except (OSError, json.JSONDecodeError):
            saved = {}
        if isinstance(saved, dict) and _same_but_grid(saved.get("settings"), _tuning_key(s)):
            known = saved.get("scores", {})  # one score per rate: a grid that gained a rate keeps the others
    out: dict[str, Any] = {}
    for method in methods:
        scores = {}
        for lr in s.lrs:
            per_task = {}
            for t in s.tasks:
                cached = known.get(method, {}).get(f"{lr:g}", {}).get(t)
                per_task[t] = float(cached) if cached is not None else _tune_score(s, method, lr, t)
                known.setdefault(method, {}).setdefault(f"{lr:g}", {})[t] = per_task[t]
                if scores_file is not None and cached is None:
                    _write_json(scores_file, {"settings": _tuning_key(s), "scores": known})
                log.info("tuning %s lr=%g %s: %.3f on held-out training examples", method, lr, t, per_task[t])
            scores[f"{lr:g}"] = {"mean": sum(per_task.values()) / len(per_task), "per_task": per_task}
        best = max(s.lrs, key=lambda lr: (scores[f"{lr:g}"]["mean"], -lr))  # ties: the smaller rate
        out[method] = {"scores": scores, "best": best}
    return out


def _same_but_grid(a: Any, b: dict[str, Any]) -> bool:
    """Two tuning keys that differ at most in their grid of rates (each score belongs to one rate)."""
    return isinstance(a, dict) and {k: v for k, v in a.items() if k != "lrs"} == {
        k: v for k, v in b.items() if k != "lrs"}


def _write_json(path: Path, data: Any) -> None:
    """Write ``data`` whole or not at all (a kill mid-write leaves the previous file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    tmp.replace(path)


def _commit() -> str:
    """The commit of the checkout this runs in (``-dirty`` with uncommitted changes), or 'unknown'."""
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return rev + ("-dirty" if dirty else "")


def _fleet(s: PaperSettings, variant: str, lr: float, seed: int) -> FleetConfig:
    return FleetConfig(devices=s.devices, tasks=list(s.tasks), swarm=_swarm(s, variant, lr, seed), dtype=s.dtype,
                       per_host=s.per_host,
                       timeout_s=max(7200.0, 4 * s.rounds * s.round_deadline_s))


def run_variant(s: PaperSettings, variant: str, lr: float, out: Path, *, seed: int | None = None,
                results: Path | None = None) -> dict[str, Any]:
    """One fleet run of ``variant`` at ``seed``; a finished run of the same fleet settings is reused:
    ``results/<variant>-seed<k>.json`` (a committed result, from any machine), else the run folder ``out``."""
    seed = s.seed if seed is None else seed
    cfg = _fleet(s, variant, lr, seed)
    kept = results / f"{variant}-seed{seed}.json" if results is not None else None
    if kept is not None and kept.is_file():
        try:
            saved = json.loads(kept.read_text())
        except (OSError, json.JSONDecodeError):
            saved = {}
        if saved.get("fleet") == json.loads(json.dumps(cfg.to_dict())):
            log.info("taking the committed result %s (ran on %s)", kept, saved.get("commit"))
            report: dict[str, Any] = saved["report"]
            return report
        log.warning("%s was run with other settings: running %s seed %d again", kept, variant, seed)
    done = _finished_report(cfg, out)
    if done is not None:
        log.info("reusing the finished run %s", out)
        report = done
    else:
        clear_run_dir(out)  # an unfinished run: its devices would resume from their checkpoints; start afresh
        report = Fleet(cfg, out).run()
        report["variant"], report["lr"], report["seed"] = variant, lr, seed
        (out / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True))
    if kept is not None:
        _write_json(kept, {"variant": variant, "seed": seed, "lr": lr, "commit": _commit(),
                           "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                           "fleet": cfg.to_dict(), "report": report})
    return report


def _finished_report(cfg: FleetConfig, out: Path) -> dict[str, Any] | None:
    """The report in ``out`` if it was written by a run of exactly ``cfg`` (an interrupted bench resumes)."""
    try:
        report: dict[str, Any] = json.loads((out / "report.json").read_text())
        saved = FleetConfig.load(out / "fleet_config.json")
    except (OSError, ValueError, ConfigError):
        return None
    return report if saved == cfg else None


def _cumulative(report: dict[str, Any], key: str) -> list[tuple[float, float]]:
    """(cumulative ``key`` up to and including the round, the round's average accuracy) per round."""
    total, out = 0.0, []
    for r in report["rounds"]:
        total += float(r.get(key) or 0.0)
        out.append((total, float(r["avg_accuracy"])))
    return out


def _first_reaching(report: dict[str, Any], key: str, target: float) -> float | None:
    """Cumulative ``key`` (join included) when the per-round average accuracy first reached ``target``."""
    for (total, acc), r in zip(_cumulative(report, key), report["rounds"], strict=True):
        if r["round"] > 0 and acc >= target:
            return total
    return None


def bytes_to_reach(report: dict[str, Any], target: float) -> int | None:
    """Cumulative bytes (join included) when the per-round average accuracy first reached ``target``."""
    got = _first_reaching(report, "bytes_sent", target)
    return None if got is None else int(got)


def time_to_reach(report: dict[str, Any], target: float) -> float | None:
    """Seconds of training and exchange (each round's slowest device) until the per-round average
    accuracy first reached ``target``; None if never, or if the report has no round times."""
    if any("round_s" not in r for r in report["rounds"]):
        return None
    return _first_reaching(report, "round_s", target)


def accuracy_within(report: dict[str, Any], budget: float) -> float | None:
    """The per-round average accuracy of the last round whose cumulative bytes fit ``budget``
    (round 0, the untrained model, when no training round fits; None when not even the join fits)."""
    fits = [acc for total, acc in _cumulative(report, "bytes_sent") if total <= budget]
    return fits[-1] if fits else None


def _se(p: float, n: int) -> float:
    return math.sqrt(max(p * (1 - p), 0.0) / max(n, 1))


def _se_points(accuracy: dict[str, float], s: PaperSettings, seeds: int = 1) -> float:
    """Standard error (points) of a row's average accuracy from the prompts behind it.

    Every device answers ``n_eval`` prompts of every task, from its own block of
    the test split: ``devices * n_eval`` answers per task and seed, scored 0/1 (binomial).
    """
    n = s.devices * s.n_eval * seeds
    tasks = [t for t in s.tasks if t in accuracy]
    return 100 * math.sqrt(sum(_se(accuracy[t], n) ** 2 for t in tasks)) / max(len(tasks), 1)


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def _source(name: str) -> str:
    """The variant whose runs a row is read from (a derived row's, e.g. edgedfl for edgedfl-oracle)."""
    return DERIVED[name][0] if name in DERIVED else name


def _row(name: str, reps: list[dict[str, Any]], s: PaperSettings) -> dict[str, Any] | None:
    """One table row from the runs behind it (one per seed)."""
    if name in DERIVED:
        mode = DERIVED[name][1]
        if any(mode not in rep["final"].get("modes", {}) for rep in reps):
            return None
        accs = [rep["final"]["modes"][mode]["accuracy"] for rep in reps]
    else:
        accs = [rep["final"]["accuracy"] for rep in reps]
    tasks = [t for t in s.tasks if all(t in a for a in accs)]
    acc = {t: _mean([a[t] for a in accs]) for t in tasks}
    n = s.devices * s.n_eval * len(reps)
    finals = [rep["final"] for rep in reps]
    steps = [f["step_s_median"] for f in finals if f.get("step_s_median") is not None]
    rss = [f["peak_rss_bytes_max"] for f in finals if f.get("peak_rss_bytes_max")]
    routes = [f["routing_accuracy"] for f in finals if f.get("routing_accuracy") is not None]  # mean over seeds
    return {"accuracy": acc, "accuracy_se": {t: _se(acc[t], n) for t in tasks},
            "avg_accuracy": _mean(list(acc.values())) if acc else float("nan"),
            "avg_accuracy_se_points": _se_points(acc, s, len(reps)),
            "seeds": [rep.get("seed", s.seed) for rep in reps],
            "seed_avg_accuracy": [_mean([a[t] for t in tasks]) if tasks else float("nan") for a in accs],
            "lr": reps[0]["lr"],
            "bytes_per_device_per_round": _mean([f["bytes_per_device_per_round"] for f in finals]),
            "total_bytes": _mean([f["total_bytes"] for f in finals]), "wall_s": _mean([f["wall_s"] for f in finals]),
            "step_s": _mean(steps) if steps else None, "peak_rss_bytes": max(rss) if rss else None,
            "routing_accuracy": _mean(routes) if name == "edgedfl" and routes else None,
            "curve": [(r["avg_accuracy"], r["bytes_sent"]) for r in reps[0]["rounds"]]}


def summarise(reports: dict[str, Any], s: PaperSettings) -> dict[str, Any]:
    """The table: ``reports`` maps a variant to its report, or to its reports (one per seed, ``s.seed`` first)."""
    runs: dict[str, list[dict[str, Any]]] = {k: v if isinstance(v, list) else [v] for k, v in reports.items() if v}
    rows: dict[str, dict[str, Any]] = {}
    for name in ORDER:
        if _source(name) in runs:
            row = _row(name, runs[_source(name)], s)
            if row is not None:
                rows[name] = row
    lora = rows.get("lora")
    if lora:
        # the per-round curves score each device on its own task; compare like with like: the
        # average LoRA's curve ended at (its final row answers every task, another measure), per seed pair
        lora_runs = runs["lora"]
        lora_total = _mean([rep["final"]["total_bytes"] for rep in lora_runs])
        for name, row in rows.items():
            behind = runs[_source(name)]
            pairs = list(zip(behind, lora_runs * len(behind), strict=False))  # seed k against LoRA's seed k (or its first)
            to_bytes = [bytes_to_reach(rep, ref["rounds"][-1]["avg_accuracy"]) for rep, ref in pairs]
            to_time = [time_to_reach(rep, ref["rounds"][-1]["avg_accuracy"]) for rep, ref in pairs]
            # reaching LoRA's accuracy takes both measures: the curve reached LoRA's curve's end, and the
            # final row (every device answering every task) is no worse than LoRA's final row
            below = row["avg_accuracy"] < lora["avg_accuracy"]
            row["off_curve"] = name in OFF_CURVE
            row["bytes_to_lora_accuracy"] = None if None in to_bytes or below or row["off_curve"] else _mean(
                [float(b) for b in to_bytes if b is not None])
            row["time_to_lora_accuracy_s"] = None if None in to_time or below or row["off_curve"] else _mean(
                [t for t in to_time if t is not None])
            row["accuracy_within_budget"] = {}
            for frac in s.budgets:
                got = [accuracy_within(rep, frac * lora_total) for rep in behind]
                row["accuracy_within_budget"][f"{frac:g}"] = None if None in got or row["off_curve"] else _mean(
                    [g for g in got if g is not None])
    targets = {}
    if lora and "edgedfl" in rows:
        ours = rows["edgedfl"]
        ratio = ours["bytes_per_device_per_round"] / max(lora["bytes_per_device_per_round"], 1)
        gain = (ours["avg_accuracy"] - lora["avg_accuracy"]) * 100
        targets["bytes_per_round_vs_lora"] = {"measured": ratio, "target": "<= 0.20", "met": ratio <= 0.20}
        se = math.hypot(ours["avg_accuracy_se_points"], lora["avg_accuracy_se_points"])
        targets["accuracy_gain_points_vs_lora"] = {"measured": gain, "target": ">= +5", "met": gain >= 5,
                                                   "standard_error": se}
        if len(ours["seeds"]) > 1 and ours["seeds"] == lora["seeds"]:
            # the binomial error leaves out how much a row moves from seed to seed: print each seed's gain
            targets["accuracy_gain_points_vs_lora"]["per_seed"] = {
                str(k): 100 * (a - b) for k, a, b in zip(ours["seeds"], ours["seed_avg_accuracy"],
                                                         lora["seed_avg_accuracy"], strict=True)}
        if "edgedfl-oracle" in rows:
            # one sign convention everywhere: implicit - oracle (positive: routing beat the true task's expert)
            diff = (ours["avg_accuracy"] - rows["edgedfl-oracle"]["avg_accuracy"]) * 100
            targets["implicit_minus_oracle_points"] = {"measured": diff, "target": ">= -1", "met": diff >= -1}
    return {"settings": dataclasses.asdict(s), "rows": rows, "targets": targets,
            "ingredients": ingredients(rows, runs, s)}


def ingredients(rows: dict[str, dict[str, Any]], runs: dict[str, list[dict[str, Any]]],
                s: PaperSettings) -> list[dict[str, Any]]:
    """Every :data:`CONTRASTS` pair whose rows both ran: average and per-task differences in points, with
    the standard error of the average's difference (the rows' binomial errors, taken as independent).

    ``runs``: variant -> its reports. Both rows are taken over the seeds both ran
    (``seeds`` in each entry): a row with two seeds is not set against a row with one, since the
    seed-to-seed spread of a row can exceed its binomial error."""
    out = []
    for name, other, isolates in CONTRASTS:
        a, b = rows.get(name), rows.get(other)
        if a is None or b is None:
            continue
        seeds = [k for k in a["seeds"] if k in b["seeds"]]
        if seeds != a["seeds"] or seeds != b["seeds"]:
            if not seeds:
                continue
            a, b = (_row(n, [rep for rep in runs[_source(n)] if rep.get("seed", s.seed) in seeds], s)
                    for n in (name, other))
            if a is None or b is None:
                continue
        tasks = [t for t in a["accuracy"] if t in b["accuracy"]]
        out.append({"row": name, "against": other, "isolates": isolates, "seeds": seeds,
                    "points": 100 * (a["avg_accuracy"] - b["avg_accuracy"]),
                    "standard_error": math.hypot(a["avg_accuracy_se_points"], b["avg_accuracy_se_points"]),
                    "per_task_points": {t: 100 * (a["accuracy"][t] - b["accuracy"][t]) for t in tasks}})
    return out


def _tuning_key(s: PaperSettings) -> dict[str, Any]:
    """What a tuning result depends on: reusing one needs the same values."""
    return {"model": s.model, "tasks": list(s.tasks), "lrs": list(s.lrs), "steps": s.rounds * s.local_steps,
            "rank": s.rank, "n_train": s.n_train, "n_tune": s.n_tune, "seed": s.seed, "devices": s.devices,
            **({"max_new_tokens": s.max_new_tokens} if s.max_new_tokens != 8 else {}),
            **({"dtype": s.dtype} if s.dtype != "float32" else {})}


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
              results_dir: str | Path | None = None,
              on_variant: Callable[[dict[str, Any]], object] | None = None) -> dict[str, Any]:
    """Tune every method's learning rate (the same way), then run each variant (and seed) once at its rate.

    ``tuning_file``: reuse the ``tuning.json`` of an earlier run with the same settings.
    An empty ``s.lrs`` runs each method at its default rate (its ``default_lr``, from an earlier
    tuning). ``results_dir``: where finished variants and tuning scores are kept and taken from (the
    module doc). ``on_variant`` gets the summary so far after every variant. Finished
    variant runs in ``out_dir`` with the same settings are reused, so a bench that
    was interrupted continues where it stopped.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = Path(results_dir) if results_dir is not None else None
    t0 = time.monotonic()
    tuning: dict[str, Any]
    if tuning_file is not None:
        tuning = load_tuning(tuning_file, s)
    elif results is not None and (kept := _kept_tuning(results / "tuning.json", s)) is not None:
        tuning = kept
    elif len(s.lrs) > 1:
        tuning = tune_lrs(s, results / "tuning-scores.json" if results is not None else None)
    elif s.lrs:
        tuning = {m: {"scores": {}, "best": s.lrs[0]} for m in {VARIANTS[v]["method"] for v in s.variants}}
    else:  # no grid: each method at its tuned default (default_lr)
        tuning = {m: {"scores": {}, "best": get_method(m).default_lr, "source": "default_lr"}
                  for m in {VARIANTS[v]["method"] for v in s.variants}}
    tune_s = time.monotonic() - t0
    for where in filter(None, (out, results)):
        _write_json(where / "tuning.json", {"settings": _tuning_key(s), "methods": tuning})
    reports: dict[str, list[dict[str, Any]]] = {}
    summary: dict[str, Any] = {}
    planned = s.runs()
    for i, (variant, seed) in enumerate(planned):
        lr = float(tuning[VARIANTS[variant]["method"]]["best"])
        log.info("running %s seed %d at lr=%g", variant, seed, lr)
        rep = run_variant(s, variant, lr, out / "runs" / f"{variant}-lr{lr:g}-seed{seed}", seed=seed, results=results)
        rep.setdefault("seed", seed)
        reports.setdefault(variant, []).append(rep)
        summary = summarise(reports, s)
        summary["lr_tuning"] = tuning
        summary["lr_tuning_s"] = tune_s
        summary["complete"] = i == len(planned) - 1
        if on_variant is not None:  # partial results survive an interrupted bench
            on_variant(summary)
    return summary


def _kept_tuning(path: Path, s: PaperSettings) -> dict[str, Any] | None:
    """The tuning kept at ``path`` if it was tuned with ``s``'s settings, else None."""
    if not path.is_file():
        return None
    try:
        return load_tuning(path, s)
    except ConfigError:
        return None


def _fmt_bytes(n: float | None) -> str:
    return "not reached" if n is None else f"{n / 1e6:.3f} MB"


def _fmt(x: float | None, spec: str, none: str = "-") -> str:
    return none if x is None else format(x, spec)


def _points(x: float | None) -> float | None:
    """``x`` rounded to the printed tenth, with no negative zero (-0.0 prints as +0.0)."""
    return None if x is None else round(x, 1) + 0.0


def write_results(summary: dict[str, Any], out_dir: str | Path, command: str) -> list[Path]:
    """paper.md (tables), paper.json, paper.png (average accuracy against cumulative bytes)."""
    out = Path(out_dir)
    st = summary["settings"]
    tasks = st["tasks"]
    lines = ["# edgedfl against the paper's claims and the baselines", "", f"Command: `{command}`", "",
             "Settings: " + ", ".join(f"{k}={v}" for k, v in st.items()), "",
             "## Accuracy (exact match; ± one standard error, binomial over every answer behind the cell)", "",
             "| method | " + " | ".join(tasks) + " | average | seeds | lr |", "|" + "---|" * (len(tasks) + 4)]
    for name, row in summary["rows"].items():
        se = row.get("accuracy_se", {})
        accs = " | ".join(f"{row['accuracy'].get(t, float('nan')):.3f}"
                          + (f" ± {se[t]:.3f}" if t in se else "") for t in tasks)
        avg_se = row.get("avg_accuracy_se_points")
        seeds = row.get("seeds", [st.get("seed", 0)])
        per_seed = row.get("seed_avg_accuracy", [])
        seed_txt = ", ".join(str(k) for k in seeds) + (
            f" ({' / '.join(f'{a:.3f}' for a in per_seed)})" if len(per_seed) > 1 else "")
        lines.append(f"| {name} | {accs} | {row['avg_accuracy']:.3f}"
                     + (f" ± {avg_se / 100:.3f}" if avg_se is not None else "") + f" | {seed_txt} | {row['lr']:g} |")
    budgets = [f"{b:g}" for b in st.get("budgets", ())]
    lines += ["", "## Cost", "",
              ("Bytes: every payload byte published, all devices. Within budget: the per-round average accuracy "
              "(each device on its own task) of the last round whose cumulative bytes fit that fraction of "
              "standard LoRA's total. To LoRA's accuracy: bytes and seconds (each round's slowest device's "
              "training and exchange) until the per-round average reached the one standard LoRA's curve ended at, "
              "counted only for a row whose final average (every device answering every task) is no lower than "
              "LoRA's. n/a: merge-all and local-only serve something else than their per-round curve measures "
              "(one summed adapter for every prompt; an own-task adapter for every task); their accuracy is the "
              "table above. "
              "Step: one local optimizer step, median over devices and rounds (devices share this machine's cores, "
              "so compare rows, not machines). Peak RSS: the largest device process."), "",
              "| method | kB/device/round | total | " + " | ".join(f"acc within {b}x LoRA bytes" for b in budgets)
              + " | bytes to LoRA's accuracy | s to LoRA's accuracy | step s | peak RSS MB | wall s |",
              "|" + "---|" * (len(budgets) + 8)]
    for name, row in summary["rows"].items():
        within = row.get("accuracy_within_budget", {})
        off = bool(row.get("off_curve"))
        cells = " | ".join("n/a" if off else _fmt(within.get(b), ".3f") for b in budgets)
        rss = row.get("peak_rss_bytes")
        lines.append(f"| {name} | {row['bytes_per_device_per_round'] / 1e3:.1f} | {_fmt_bytes(row['total_bytes'])} | "
                     + (cells + " | " if budgets else "")
                     + ("n/a | n/a | " if off else f"{_fmt_bytes(row.get('bytes_to_lora_accuracy'))} | "
                        f"{_fmt(row.get('time_to_lora_accuracy_s'), '.0f', 'not reached')} | ")
                     + f"{_fmt(row.get('step_s'), '.2f')} | {_fmt(rss / 1e6 if rss else None, '.0f')} | "
                     f"{row['wall_s']:.0f} |")
    tuning = summary.get("lr_tuning", {})
    if any(t["scores"] for t in tuning.values()):
        grid = next(iter(tuning.values()))["scores"]
        lines += ["", "## Learning rates (tuned the same way for every method; held-out training examples)", "",
                  "| method | " + " | ".join(f"lr {lr}" for lr in grid) + " | chosen |", "|" + "---|" * (len(grid) + 2)]
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
    contrasts = summary.get("ingredients", [])
    if contrasts:
        lines += ["", "## What each ingredient contributes (row minus row, points; ± one standard error)", "",
                  "Both rows of a contrast are taken over the seeds both ran (the seeds column).", "",
                  "| row − against | isolates | seeds | average | " + " | ".join(tasks) + " |",
                  "|" + "---|" * (len(tasks) + 4)]
        for c in contrasts:
            per = " | ".join(_fmt(_points(c["per_task_points"].get(t)), "+.1f") for t in tasks)
            lines.append(f"| {c['row']} − {c['against']} | {c['isolates']} | "
                         f"{', '.join(str(k) for k in c.get('seeds', []))} | "
                         f"{_points(c['points']):+.1f} ± {c['standard_error']:.1f} | {per} |")
    lines += ["", "## Targets", ""]
    for key, t in summary["targets"].items():
        se = (f" ± {t['standard_error']:.1f} (one standard error, {st['devices']} x "
              f"{st['n_eval']} answers per task and seed)") if "standard_error" in t else ""
        per_seed = ("; per seed: " + ", ".join(f"seed {k} {v:+.1f}" for k, v in t["per_seed"].items())
                    if t.get("per_seed") else "")
        lines.append(f"- {key}: measured {t['measured']:.3f}{se}{per_seed}, target {t['target']}: "
                     f"**{'met' if t['met'] else 'MISSED'}**")
    if summary["rows"].get("edgedfl", {}).get("routing_accuracy") is not None:
        lines.append(f"- routing accuracy (implicit, held-out mixed prompts, mean over seeds): "
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
        if name in DERIVED or row.get("off_curve"):
            continue
        cum, xs, ys = 0, [], []
        for acc, b in row["curve"]:
            cum += b
            xs.append(max(cum, 1) / 1e6)
            ys.append(acc)
        ax.plot(xs, ys, marker="o", label=name)
    ax.set_xscale("log")
    ax.set(xlabel="cumulative MB sent (all devices, log scale)", ylabel="average accuracy (own task, per round)",
           title="accuracy against bytes")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return [md, js, png]
