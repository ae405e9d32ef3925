"""`edgedfl bench paper --quick` runs end to end, so the benchmark cannot rot."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def _bench(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgedfl.cli", "bench", "paper", "--quick", *args],
                          capture_output=True, text=True, timeout=timeout, check=False,
                          env=dict(os.environ, HF_HUB_OFFLINE="1"))


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """One `bench paper --quick` run (the test suite's whole benchmark); the tests below read it or go on from it."""
    tmp_path = tmp_path_factory.mktemp("paper-quick")
    out, work, kept = tmp_path / "results", tmp_path / "work", tmp_path / "kept"
    proc = _bench("--out", str(out), "--work", str(work), "--results", str(kept))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp_path, out, work, kept


def test_bench_paper_quick_writes_every_row_and_the_targets(quick):
    _, out, work, kept = quick
    summary = json.loads((out / "paper.json").read_text())
    rows = summary["rows"]
    assert set(rows) == {"lora", "ffa", "edgedfl", "edgedfl-oracle", "edgedfl-merge", "edgedfl-flat",
                         "edgedfl-random-masks", "local"}
    tasks = summary["settings"]["tasks"]
    for name, row in rows.items():
        assert set(row["accuracy"]) == set(tasks), name
        assert row["total_bytes"] > 0 and row["bytes_per_device_per_round"] > 0
        assert row["step_s"] > 0 and row["peak_rss_bytes"] > 50e6, name  # measured on every device
        assert set(row["accuracy_within_budget"]) == {f"{b:g}" for b in summary["settings"]["budgets"]}
    # local-only sends no update: after the join, every round's bytes are zero
    local = json.loads((kept / "local-seed0.json").read_text())["report"]
    assert [r["bytes_sent"] for r in local["rounds"][1:]] == [0] * summary["settings"]["rounds"]
    assert all(r["bytes_sent"] > 0 for r in json.loads((kept / "lora-seed0.json").read_text())["report"]["rounds"])
    # the same settings for every variant: one rank, one seed, one precision, rounds
    runs = sorted((work / "runs").iterdir())
    swarms = [json.loads((r / "fleet_config.json").read_text())["swarm"] for r in runs]
    for key in ("adapter.rank", "seed", "precision", "rounds", "local_steps", "adapter.target_modules", "model"):
        part, _, field = key.rpartition(".")
        assert len({json.dumps((s[part] if part else s)[field]) for s in swarms}) == 1, key
    # what travels differs as the methods say: standard LoRA sends A and B, FFA-LoRA B only
    # (on the tiny model, edgedfl's join messages outweigh its sparse B: no claim about it here)
    assert rows["ffa"]["bytes_per_device_per_round"] < rows["lora"]["bytes_per_device_per_round"]
    assert set(summary["targets"]) == {"bytes_per_round_vs_lora", "accuracy_gain_points_vs_lora",
                                       "implicit_minus_oracle_points"}
    # learning rates: every method tuned over the same grid, on held-out training examples; each
    # row trained at its method's chosen rate (the edgedfl variants share solora's)
    tuning = summary["lr_tuning"]
    grid = {f"{lr:g}" for lr in summary["settings"]["lrs"]}
    assert len(grid) >= 2 and set(tuning) == {"lora", "ffa", "solora"}
    for method, t in tuning.items():
        assert set(t["scores"]) == grid, method
        assert all(set(v["per_task"]) == set(tasks) for v in t["scores"].values())
        assert f"{t['best']:g}" in grid
        assert t["scores"][f"{t['best']:g}"]["mean"] == max(v["mean"] for v in t["scores"].values())
    family = {"lora": "lora", "ffa": "ffa"}
    for name, row in rows.items():
        assert row["lr"] == tuning[family.get(name, "solora")]["best"], name
    md = (out / "paper.md").read_text()
    assert "| edgedfl-random-masks |" in md and "Command: `" in md and "| solora |" in md
    assert (out / "paper.png").stat().st_size > 1000
    assert summary["complete"] is True and "Partial results" not in md


def test_a_rerun_on_the_same_work_folder_reuses_every_finished_run(quick):
    tmp_path, out, work, _ = quick
    rows = json.loads((out / "paper.json").read_text())["rows"]
    runs = sorted((work / "runs").iterdir())
    stamps = {r.name: (r / "report.json").stat().st_mtime_ns for r in runs}
    again = _bench("--out", str(tmp_path / "again"), "--work", str(work), "--tuning", str(work / "tuning.json"),
                   timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert {r.name: (r / "report.json").stat().st_mtime_ns for r in runs} == stamps
    assert json.loads((tmp_path / "again" / "paper.json").read_text())["rows"] == rows


def test_another_machine_runs_only_the_variants_missing_from_the_kept_results(quick):
    tmp_path, out, _, first_kept = quick
    summary = json.loads((out / "paper.json").read_text())
    rows = summary["rows"]
    kept = tmp_path / "kept-copy"  # what a clone of the repository holds
    shutil.copytree(first_kept, kept)
    saved = sorted(p.name for p in kept.glob("*-seed*.json"))
    assert len(saved) == len(summary["settings"]["variants"])
    first = json.loads((kept / "lora-seed0.json").read_text())
    assert first["commit"] and first["fleet"]["swarm"]["seed"] == 0 and first["lr"] == rows["lora"]["lr"]
    (kept / "local-seed0.json").unlink()
    fresh = tmp_path / "fresh"
    resumed = _bench("--out", str(tmp_path / "resumed"), "--work", str(fresh), "--results", str(kept), timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [p.name for p in (fresh / "runs").iterdir()] == [f"local-lr{rows['local']['lr']:g}-seed0"]
    assert sorted(p.name for p in kept.glob("*-seed*.json")) == saved
    again_rows = json.loads((tmp_path / "resumed" / "paper.json").read_text())["rows"]
    assert {k: v for k, v in again_rows.items() if k != "local"} == {k: v for k, v in rows.items() if k != "local"}


def test_a_saved_tuning_is_reused_only_with_the_same_settings(tmp_path):
    from edgedfl.bench.paper import PaperSettings, _tuning_key, load_tuning
    from edgedfl.errors import ConfigError

    s = PaperSettings.quick()
    methods = {m: {"scores": {}, "best": 0.01} for m in ("lora", "ffa", "solora")}
    path = tmp_path / "tuning.json"
    path.write_text(json.dumps({"settings": _tuning_key(s), "methods": methods}))
    assert load_tuning(path, s) == methods
    other = PaperSettings.quick()
    other.lrs = (1e-3, 1e-2)
    with pytest.raises(ConfigError, match="other settings"):
        load_tuning(path, other)
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="cannot read"):
        load_tuning(path, s)


def test_a_finished_variant_run_is_reused_only_for_the_same_fleet(tmp_path):
    from edgedfl.bench.paper import PaperSettings, _finished_report, _swarm
    from edgedfl.emulation.fleet import FleetConfig

    s = PaperSettings.quick()
    cfg = FleetConfig(devices=s.devices, tasks=list(s.tasks), swarm=_swarm(s, "edgedfl", 0.01), timeout_s=7200)
    assert _finished_report(cfg, tmp_path) is None  # nothing there
    cfg.save(tmp_path / "fleet_config.json")
    assert _finished_report(cfg, tmp_path) is None  # started, never finished
    (tmp_path / "report.json").write_text(json.dumps({"final": {"avg_accuracy": 0.5}}))
    assert _finished_report(cfg, tmp_path) == {"final": {"avg_accuracy": 0.5}}
    other = FleetConfig(devices=s.devices, tasks=list(s.tasks), swarm=_swarm(s, "edgedfl", 0.02), timeout_s=7200)
    assert _finished_report(other, tmp_path) is None  # another learning rate: run again


def test_partial_results_say_so(tmp_path):
    from edgedfl.bench.paper import PaperSettings, summarise, write_results

    s = PaperSettings.quick()
    report = {"lr": 0.01, "rounds": [{"round": 0, "avg_accuracy": 0.0, "bytes_sent": 10},
                                     {"round": 1, "avg_accuracy": 0.5, "bytes_sent": 100}],
              "final": {"accuracy": {t: 0.5 for t in s.tasks}, "avg_accuracy": 0.5, "total_bytes": 110,
                        "bytes_per_device_per_round": 27.5, "wall_s": 1.0}}
    ours = {**report, "rounds": [{"round": 0, "avg_accuracy": 0.0, "bytes_sent": 5},
                                 {"round": 1, "avg_accuracy": 0.6, "bytes_sent": 20},
                                 {"round": 2, "avg_accuracy": 0.7, "bytes_sent": 20}]}
    summary = summarise({"lora": report, "edgedfl": ours}, s)
    # "bytes to LoRA's accuracy" compares per-round curves: LoRA reaches its own at its last round
    assert summary["rows"]["lora"]["bytes_to_lora_accuracy"] == 110
    assert summary["rows"]["edgedfl"]["bytes_to_lora_accuracy"] == 25
    # the accuracy target carries its standard error: binomial over devices x n_eval answers per task
    gain = summary["targets"]["accuracy_gain_points_vs_lora"]
    n = s.devices * s.n_eval
    one = 100 * (0.5 * 0.5 / n) ** 0.5 / len(s.tasks) * len(s.tasks) ** 0.5  # every task at 0.5
    assert gain["standard_error"] == pytest.approx(one * 2 ** 0.5)
    summary["complete"] = False
    summary["lr_tuning"] = {"lora": {"scores": {}, "best": 0.002, "source": "DEFAULT_LR"}}
    write_results(summary, tmp_path, "edgedfl bench paper")
    md = (tmp_path / "paper.md").read_text()
    assert "Partial results" in md and "| lora |" in md and "lora 0.002" in md and "one standard error" in md


def _report(seed, accs, per_round, lr=0.01):
    """A fleet report in miniature: final accuracy per task, and (bytes, seconds, average accuracy) per round."""
    return {"lr": lr, "seed": seed,
            "rounds": [{"round": i, "avg_accuracy": a, "bytes_sent": b, "round_s": t}
                       for i, (b, t, a) in enumerate(per_round)],
            "final": {"accuracy": accs, "avg_accuracy": sum(accs.values()) / len(accs),
                      "total_bytes": sum(b for b, _, _ in per_round),
                      "bytes_per_device_per_round": 1.0, "wall_s": 1.0, "step_s_median": 0.5,
                      "peak_rss_bytes_max": 300e6}}


def test_seeds_average_and_budgets_and_cost_to_target_are_read_from_the_curves():
    from edgedfl.bench.paper import PaperSettings, summarise

    s = PaperSettings.quick()
    s.budgets = (0.25, 1.0)
    lora = [_report(0, {"arith": 0.2, "strtf": 0.4}, [(100, 0, 0.0), (400, 10, 0.2), (400, 10, 0.3)]),
            _report(1, {"arith": 0.4, "strtf": 0.6}, [(100, 0, 0.0), (400, 10, 0.1), (400, 10, 0.5)])]
    ours = [_report(0, {"arith": 0.5, "strtf": 0.5}, [(50, 0, 0.0), (50, 20, 0.4), (50, 20, 0.6)]),
            _report(1, {"arith": 0.7, "strtf": 0.7}, [(50, 0, 0.0), (50, 20, 0.2), (50, 20, 0.4)])]
    ours[0]["final"]["routing_accuracy"], ours[1]["final"]["routing_accuracy"] = 0.9, 0.8
    summary = summarise({"lora": lora, "edgedfl": ours}, s)
    row, ref = summary["rows"]["edgedfl"], summary["rows"]["lora"]
    assert row["routing_accuracy"] == pytest.approx(0.85)  # both seeds, not the first alone
    assert row["accuracy"] == pytest.approx({"arith": 0.6, "strtf": 0.6})
    assert row["seeds"] == [0, 1] and row["seed_avg_accuracy"] == pytest.approx([0.5, 0.7])
    assert ref["avg_accuracy"] == pytest.approx(0.4)
    # two seeds: the standard error counts both seeds' answers
    n = s.devices * s.n_eval * 2
    assert row["accuracy_se"]["arith"] == pytest.approx((0.6 * 0.4 / n) ** 0.5)
    assert summary["targets"]["accuracy_gain_points_vs_lora"]["measured"] == pytest.approx(20.0)
    # each seed's own gain beside the average: 0.5 - 0.3 and 0.7 - 0.5
    assert summary["targets"]["accuracy_gain_points_vs_lora"]["per_seed"] == pytest.approx({"0": 20.0, "1": 20.0})
    # seed k against LoRA's seed k: seed 0 needs LoRA's 0.3 (reached in round 1: 100 bytes, 20 s),
    # seed 1 LoRA's 0.5 (never: 0.4 at the end) -> not reached
    assert row["bytes_to_lora_accuracy"] is None and row["time_to_lora_accuracy_s"] is None
    assert ref["bytes_to_lora_accuracy"] == pytest.approx(900) and ref["time_to_lora_accuracy_s"] == pytest.approx(20)
    # within 0.25 x LoRA's total (900 bytes -> 225): ours ends both runs inside (0.6 and 0.4), LoRA only its join
    assert row["accuracy_within_budget"] == pytest.approx({"0.25": 0.5, "1": 0.5})
    assert ref["accuracy_within_budget"] == pytest.approx({"0.25": 0.0, "1": 0.4})
    assert row["step_s"] == 0.5 and row["peak_rss_bytes"] == 300e6


def test_the_ingredient_table_holds_every_contrast_whose_rows_ran(tmp_path):
    from edgedfl.bench.paper import PaperSettings, summarise, write_results

    s = PaperSettings.quick()
    per_round = [(100, 0, 0.0), (100, 10, 0.5)]
    reports = {"lora": _report(0, {"arith": 0.5, "strtf": 0.3}, per_round),
               "edgedfl-flat": _report(0, {"arith": 0.6, "strtf": 0.3}, per_round),
               "edgedfl": _report(0, {"arith": 0.8, "strtf": 0.4}, per_round)}
    summary = summarise(reports, s)
    got = {(c["row"], c["against"]): c for c in summary["ingredients"]}
    # the rows that ran: the whole method, the adapter method alone, clusters and routing; nothing else
    assert set(got) == {("edgedfl", "lora"), ("edgedfl-flat", "lora"), ("edgedfl", "edgedfl-flat")}
    whole = got[("edgedfl", "lora")]
    assert whole["points"] == pytest.approx(20.0)
    assert whole["per_task_points"] == pytest.approx({"arith": 30.0, "strtf": 10.0})
    rows = summary["rows"]
    assert whole["standard_error"] == pytest.approx(
        math.hypot(rows["edgedfl"]["avg_accuracy_se_points"], rows["lora"]["avg_accuracy_se_points"]))
    assert got[("edgedfl", "edgedfl-flat")]["per_task_points"] == pytest.approx({"arith": 20.0, "strtf": 10.0})
    write_results(summary, tmp_path, "edgedfl bench paper")
    md = (tmp_path / "paper.md").read_text()
    assert "| edgedfl − lora | the whole method" in md and "+20.0 ±" in md and "| +30.0 | +10.0 |" in md


def test_a_contrast_takes_both_rows_over_the_seeds_both_ran(tmp_path):
    from edgedfl.bench.paper import PaperSettings, summarise, write_results

    s = PaperSettings.quick()
    per_round = [(100, 0, 0.0), (100, 10, 0.5)]
    # the headline rows ran seeds 0 and 1, the flat row seed 0 only
    reports = {"lora": [_report(0, {"arith": 0.5, "strtf": 0.5}, per_round),
                        _report(1, {"arith": 0.9, "strtf": 0.9}, per_round)],
               "edgedfl": [_report(0, {"arith": 0.9, "strtf": 0.9}, per_round),
                           _report(1, {"arith": 0.9, "strtf": 0.9}, per_round)],
               "edgedfl-flat": [_report(0, {"arith": 0.7, "strtf": 0.7}, per_round)]}
    summary = summarise(reports, s)
    got = {(c["row"], c["against"]): c for c in summary["ingredients"]}
    # both seeds where both rows have them: 0.9 - 0.7 averaged
    assert got[("edgedfl", "lora")]["seeds"] == [0, 1]
    assert got[("edgedfl", "lora")]["points"] == pytest.approx(20.0)
    # against the one-seed row, seed 0 alone on both sides (a mixed average would give 0.9 - 0.7 = +20 and
    # 0.7 - 0.7 = 0 for flat - lora; seed 0 alone gives +20 and +20)
    flat = got[("edgedfl-flat", "lora")]
    assert flat["seeds"] == [0] and flat["points"] == pytest.approx(20.0)
    n = s.devices * s.n_eval  # one seed's answers behind each side's error
    se_one = 100 * math.sqrt(sum(0.7 * 0.3 / n for _ in range(2))) / 2
    se_lora = 100 * math.sqrt(sum(0.5 * 0.5 / n for _ in range(2))) / 2
    assert flat["standard_error"] == pytest.approx(math.hypot(se_one, se_lora))
    assert got[("edgedfl", "edgedfl-flat")]["seeds"] == [0]
    assert got[("edgedfl", "edgedfl-flat")]["points"] == pytest.approx(20.0)
    write_results(summary, tmp_path, "edgedfl bench paper")
    md = (tmp_path / "paper.md").read_text()
    assert "| edgedfl-flat − lora | the adapter method alone (orthogonal A, sparse B), one flat swarm, no routing | 0 | +20.0 ±" in md
    assert "| edgedfl − lora | the whole method against standard decentralized LoRA | 0, 1 | +20.0 ±" in md


def test_a_grid_that_gains_a_rate_keeps_every_score_already_measured(tmp_path, monkeypatch):
    from edgedfl.bench import paper

    s = paper.PaperSettings.quick()
    scores = {m: {f"{lr:g}": {t: 0.5 for t in s.tasks} for lr in s.lrs} for m in ("lora", "ffa", "solora")}
    scores["lora"][f"{s.lrs[0]:g}"] = {t: 0.75 for t in s.tasks}
    path = tmp_path / "tuning-scores.json"
    path.write_text(json.dumps({"settings": paper._tuning_key(s), "scores": scores}))
    measured = []
    monkeypatch.setattr(paper, "_tune_score", lambda s, m, lr, t: measured.append((m, lr, t)) or 1.0)
    wider = dataclasses.replace(s, lrs=(1e-3, *s.lrs))
    out = paper.tune_lrs(wider, path)
    # only the new rate was measured, for every method and task; the old scores were taken as they were
    assert sorted(measured) == sorted((m, 1e-3, t) for m in ("ffa", "lora", "solora") for t in s.tasks)
    assert out["lora"]["scores"][f"{s.lrs[0]:g}"]["mean"] == 0.75 and out["lora"]["best"] == 1e-3
    saved = json.loads(path.read_text())
    assert saved["settings"]["lrs"] == [1e-3, *s.lrs] and saved["scores"]["lora"]["0.001"] == {t: 1.0 for t in s.tasks}
    # another setting than the grid (here the seed) measures everything again
    measured.clear()
    paper.tune_lrs(dataclasses.replace(wider, seed=1), path)
    assert len(measured) == 3 * len(wider.lrs) * len(s.tasks)


def test_cost_to_target_needs_the_final_row_too_and_off_curve_rows_print_na(tmp_path):
    from edgedfl.bench.paper import PaperSettings, summarise, write_results

    s = PaperSettings.quick()
    s.budgets = (0.5, 1.0)
    lora = _report(0, {"arith": 0.8, "strtf": 0.8}, [(100, 0, 0.0), (400, 10, 0.6), (400, 10, 0.9)])
    # local: perfect on its own task each round, sends next to nothing, answers the other tasks badly
    local = _report(0, {"arith": 0.3, "strtf": 0.2}, [(1, 0, 0.0), (0, 10, 1.0), (0, 10, 1.0)])
    # a curve that passes LoRA's end but a final row below LoRA's: LoRA's accuracy is not reached
    ffa = _report(0, {"arith": 0.7, "strtf": 0.7}, [(50, 0, 0.0), (50, 10, 0.95), (50, 10, 0.95)])
    ours = _report(0, {"arith": 0.9, "strtf": 0.9}, [(50, 0, 0.0), (50, 10, 0.95), (50, 10, 0.95)])
    summary = summarise({"lora": lora, "ffa": ffa, "edgedfl": ours, "local": local}, s)
    rows = summary["rows"]
    assert rows["edgedfl"]["bytes_to_lora_accuracy"] == pytest.approx(100)
    assert rows["edgedfl"]["time_to_lora_accuracy_s"] == pytest.approx(10)
    assert rows["ffa"]["bytes_to_lora_accuracy"] is None and rows["ffa"]["time_to_lora_accuracy_s"] is None
    assert rows["ffa"]["accuracy_within_budget"]["0.5"] == pytest.approx(0.95)  # the curve itself is kept
    assert rows["local"]["off_curve"] and not rows["edgedfl"]["off_curve"]
    assert rows["local"]["bytes_to_lora_accuracy"] is None
    assert set(rows["local"]["accuracy_within_budget"].values()) == {None}
    write_results(summary, tmp_path, "edgedfl bench paper")
    md = (tmp_path / "paper.md").read_text()
    local_cost = [line for line in md.splitlines() if line.startswith("| local |")][1]
    assert local_cost.count("n/a") == len(s.budgets) + 2
    ffa_cost = [line for line in md.splitlines() if line.startswith("| ffa |")][1]
    assert "not reached" in ffa_cost and "n/a" not in ffa_cost


def test_extra_seeds_come_from_the_command_line_and_run_only_the_headline_rows():
    import argparse

    from edgedfl.cli import bench as cli_bench
    from edgedfl.errors import ConfigError

    p = argparse.ArgumentParser()
    cli_bench.add_arguments(p)
    long = cli_bench.settings(p.parse_args(["paper", "--suite", "long"]))
    assert long.extra_seeds == (1, 2)  # the preset's
    more = cli_bench.settings(p.parse_args(["paper", "--suite", "long", "--extra-seeds", "1,2,3,3"]))
    assert more.extra_seeds == (1, 2, 3)
    # every row at seed 0, the headline rows again at 1, 2 and 3, nothing else
    extra = [r for r in more.runs() if r[1] != 0]
    assert extra == [("lora", 1), ("edgedfl", 1), ("lora", 2), ("edgedfl", 2), ("lora", 3), ("edgedfl", 3)]
    assert len(more.runs()) == len(more.variants) + 6
    # the tuning does not depend on the seeds added: committed tuning stays valid
    from edgedfl.bench.paper import _tuning_key

    assert _tuning_key(more) == _tuning_key(long)
    assert cli_bench.settings(p.parse_args(["paper", "--suite", "long", "--extra-seeds", "none"])).extra_seeds == ()
    with pytest.raises(ConfigError, match="--extra-seeds"):
        cli_bench.settings(p.parse_args(["paper", "--extra-seeds", "two"]))


def test_the_long_preset_is_the_committed_rows_fleet_so_they_are_reused():
    """`edgedfl bench paper --suite long` (the README's command) takes every committed row instead of running
    it again: its fleet settings are exactly those each committed row ran with."""
    from pathlib import Path

    from edgedfl.bench.paper import PaperSettings, _fleet

    kept = Path(__file__).resolve().parents[2] / "bench" / "results" / "paper-long"
    s = PaperSettings.long()
    runs = s.runs()
    assert len(runs) == 10  # 6 trained variants at seed 0, the 2 headline rows at seeds 1 and 2
    for variant, seed in runs:
        saved = json.loads((kept / f"{variant}-seed{seed}.json").read_text())
        assert json.loads(json.dumps(_fleet(s, variant, saved["lr"], seed).to_dict())) == saved["fleet"], (variant, seed)
