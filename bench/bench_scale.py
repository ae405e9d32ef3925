"""Scale-out: memory per added device, and tiny fleets of 8 to 1,000 devices on a real Mosquitto.

Two parts, each written to ``--out`` (.md and .json) as soon as it is measured:

``memory`` -- what an added SmolLM2 device costs. A device host process loads k
devices one after another over one shared base, each with its own slots,
optimizer and two training steps (the path an emulated device runs:
``edgedfl.emulation.host``'s learner); its resident memory (VmRSS) is read after
each device. Beside it, in a fresh process of its own, one device the way a
device process holds it (its own base): process-per-device costs that much per
device. Both in this run, side by side.

``fleet`` -- ``edgedfl emulate`` on the tiny model for each ``--devices`` count,
against a Mosquitto this script starts (open-file limit raised, ``$SYS`` topics
every second) and watches: connected clients, messages and bytes the broker
received and sent, per round; time to join and cluster (the last device's
round-0 row), time per round (the last device's row of each round), and the
peak memory of the whole machine above its idle level (all device hosts, Ray's
processes and the broker included). ``--engine ray`` places device hosts as Ray
actors (a local Ray when no ``--ray-address``).

    python bench/bench_scale.py memory --model smollm2 --devices 1,2,4,8,16 --out bench/results/scale-memory
    python bench/bench_scale.py fleet --devices 8,32,128 --per-host 64 --out bench/results/scale-fleet
    python bench/bench_scale.py fleet --devices 1000 --per-host 250 --engine ray --host-cpus 0.5 --out bench/results/scale-1000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def rss_mb(pid: int | str = "self") -> float:
    """Resident memory (VmRSS) of a process, MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def used_mb() -> float:
    """Memory in use on the machine (MemTotal - MemAvailable), MB."""
    info = {ln.split(":")[0]: int(ln.split()[1]) for ln in Path("/proc/meminfo").read_text().splitlines()}
    return (info["MemTotal"] - info["MemAvailable"]) / 1024


# -- memory per added device -------------------------------------------------------------


def _node(i: int, model: str, state: Path) -> Any:
    from edgedfl.node.config import NodeConfig, SwarmConfig
    from edgedfl.train.config import TrainConfig

    swarm = SwarmConfig(model=model, n_train=32, train=TrainConfig(batch_size=4, max_length=64, progress=False))
    return NodeConfig(node_id=f"dev{i:02d}", data="arith", shard=i, shards=64, state_dir=str(state / f"dev{i:02d}"),
                      profile="laptop", broker="mqtt://127.0.0.1:1", swarm=swarm)


def _memory_child(mode: str, model: str, k: int, state: Path) -> None:
    """Runs in a fresh process; prints one JSON line per device added."""
    from edgedfl.emulation.host import DeviceHost
    from edgedfl.node.member import device_examples
    from edgedfl.node.torch_learner import TorchLearner

    configs = [_node(i, model, state) for i in range(k)]
    base_rss = rss_mb()
    host = DeviceHost(configs) if mode == "host" else None
    learners = []
    for cfg in configs:
        learner = host.learner_class(cfg, host) if host is not None else TorchLearner(cfg)
        train, _ = device_examples(cfg)
        learner.load(train)
        learner.place(0)
        learner.train(1, 2)  # two optimizer steps: the optimizer's state exists
        learners.append(learner)
        print(json.dumps({"devices": len(learners), "rss_mb": rss_mb(), "start_mb": base_rss}), flush=True)


def memory(args: argparse.Namespace) -> dict[str, Any]:
    counts = [int(x) for x in args.devices.split(",")]
    state = Path(args.work) / "memory"
    env = dict(os.environ, HF_HUB_OFFLINE="1", EDGEDFL_THREADS="1")

    def child(mode: str, k: int) -> list[dict[str, Any]]:
        out = subprocess.run([sys.executable, __file__, "_memory", mode, args.model, str(k), str(state / mode)],
                             capture_output=True, text=True, env=env, timeout=3600, check=False)
        if out.returncode != 0:
            raise SystemExit(f"{mode} child failed:\n{out.stderr[-3000:]}")
        return [json.loads(x) for x in out.stdout.splitlines() if x.startswith("{")]

    one = child("process", 1)[-1]
    host = child("host", max(counts))
    per_process = one["rss_mb"]
    rows = []
    for r in host:
        if r["devices"] in counts:
            rows.append({"devices": r["devices"], "host_rss_mb": r["rss_mb"],
                         "processes_rss_mb": per_process * r["devices"],
                         "ratio": r["rss_mb"] / (per_process * r["devices"])})
    first, last = host[0], host[-1]
    added = (last["rss_mb"] - first["rss_mb"]) / max(last["devices"] - first["devices"], 1)
    return {"model": args.model, "process_per_device_mb": per_process, "host": host, "rows": rows,
            "added_device_mb": added, "fit_24gb": int((24 * 1024 - first["rss_mb"]) // max(added, 1e-9)) + 1}


def memory_md(res: dict[str, Any], cmd: str) -> list[str]:
    lines = [f"## Memory per added device ({res['model']})", "", f"Command: `{cmd}`", "",
             ("A device = its slots on the shared base, an optimizer, 2 training steps (batch 4 x 64 tokens); "
              "RSS read after each device is added. Process-per-device: one such device alone in a fresh process."),
             "", "| devices | device host RSS | process per device (sum) | host / processes |", "|---|---|---|---|"]
    for r in res["rows"]:
        lines.append(f"| {r['devices']} | {r['host_rss_mb']:.0f} MB | {r['processes_rss_mb']:.0f} MB | "
                     f"{r['ratio']:.3f} |")
    lines += ["", f"- one device in a process of its own: {res['process_per_device_mb']:.0f} MB",
              f"- each added device in a host: **{res['added_device_mb']:.1f} MB** (target <= 100 MB)",
              f"- devices of this model in 24 GB at that rate: about {res['fit_24gb']}", ""]
    return lines


# -- fleets --------------------------------------------------------------------------------


class BrokerWatch:
    """Samples Mosquitto's $SYS counters (and the machine's memory) while a run goes on."""

    KEYS = ("clients/connected", "messages/received", "messages/sent", "bytes/received", "bytes/sent",
            "publish/messages/dropped")

    def __init__(self, url: str) -> None:
        from edgedfl.transport.url import transport_from_url

        self.t = transport_from_url(url, client_id=f"bench-watch-{os.getpid()}")
        self.t.subscribe("$SYS/broker/#")
        self.samples: list[dict[str, float]] = []
        self.latest: dict[str, float] = {}
        self.idle_mb = used_mb()
        self.peak_mb = self.idle_mb
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        last = 0.0
        while not self._stop.is_set():
            msg = self.t.receive(0.2)
            if msg is not None:
                key = msg.topic.removeprefix("$SYS/broker/")
                if key in self.KEYS:
                    try:
                        self.latest[key] = float(msg.payload.decode().split()[0])
                    except (ValueError, IndexError):
                        pass
            if time.monotonic() - last >= 1.0:
                self.peak_mb = max(self.peak_mb, used_mb())
                self.samples.append({"t": time.time(), **self.latest})
                last = time.monotonic()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.t.close()


def _at(samples: list[dict[str, float]], t: float, key: str) -> float:
    """A counter's value at wall time ``t`` (the last sample before it)."""
    best = 0.0
    for s in samples:
        if s["t"] <= t and key in s:
            best = s[key]
    return best


def one_fleet(n: int, args: argparse.Namespace) -> dict[str, Any]:
    from edgedfl.brokers.launch import MosquittoBroker

    out = Path(args.work) / f"fleet-{n}"
    broker = MosquittoBroker(workdir=Path(args.work) / f"broker-{n}", persistence=False, max_queued_messages=100_000,
                             max_open_files=4 * n + 1024, extra_conf=["sys_interval 1"]).start()
    watch = BrokerWatch(broker.url)
    per_host = min(args.per_host, n)
    cmd = [sys.executable, "-m", "edgedfl.cli", "emulate", "--devices", str(n), "--tasks", args.tasks,
           "--model", "tiny", "--rounds", str(args.rounds), "--local-steps", str(args.local_steps),
           "--n-train", "32", "--n-eval", "8", "--final-modes", "implicit", "--deadline", str(args.deadline), "--timeout", str(args.timeout),
           "--swarm", f"scale{n}", "--broker", broker.url, "--per-host", str(per_host), "--engine", args.engine,
           "--out", str(out), "--overwrite", "--quiet", "--swarm-config", str(_swarm_file(args, n))]
    if args.ray_address:
        cmd += ["--ray-address", args.ray_address]
    if args.engine == "ray":
        cmd += ["--host-cpus", str(args.host_cpus)]
    t0 = time.time()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout,
                              env=dict(os.environ, HF_HUB_OFFLINE="1"), check=False)
    finally:
        t_end = time.time()
        time.sleep(2)  # the last $SYS sample
        watch.stop()
        broker.stop()
    res: dict[str, Any] = {"devices": n, "per_host": per_host, "engine": args.engine, "returncode": proc.returncode,
                           "wall_s": t_end - t0, "peak_mb_above_idle": watch.peak_mb - watch.idle_mb}
    if proc.returncode != 0:
        res["error"] = (proc.stderr or proc.stdout)[-2000:]
        return res
    rows: dict[int, list[dict[str, Any]]] = {}
    for dev in sorted(out.glob("dev*/rounds.jsonl")):
        for line in dev.read_text().splitlines():
            r = json.loads(line)
            rows.setdefault(int(r["round"]), []).append(r)
    done_at = {rd: max(r["time"] for r in rs) for rd, rs in rows.items() if all("time" in r for r in rs)}
    complete = {rd: len(rs) for rd, rs in rows.items()}
    res["rounds_complete"] = all(c == n for c in complete.values()) and len(complete) == args.rounds + 1
    res["join_s"] = done_at.get(0, float("nan")) - t0
    res["round_s"] = [done_at[r] - done_at[r - 1] for r in range(1, args.rounds + 1) if r in done_at and r - 1 in done_at]
    res["peak_clients"] = max((s.get("clients/connected", 0) for s in watch.samples), default=0)
    per_round = []
    for r in range(1, args.rounds + 1):
        if r in done_at and r - 1 in done_at:
            a, b = done_at[r - 1], done_at[r]
            per_round.append({k: _at(watch.samples, b, k) - _at(watch.samples, a, k)
                              for k in ("messages/received", "messages/sent", "bytes/received", "bytes/sent")})
    res["broker_per_round"] = per_round
    report = json.loads((out / "report.json").read_text())
    res["device_bytes_per_round"] = [row["bytes_sent"] for row in report["rounds"]]
    res["clusters"] = len(set(report["final"]["clusters"].values()))
    res["routing_accuracy"] = report["final"].get("routing_accuracy")
    res["report"] = str(out / "report.json")
    return res


def _swarm_file(args: argparse.Namespace, n: int) -> Path:
    """A lean swarm for many tiny devices: long join and round deadlines (a device waits for every hello)."""
    from edgedfl.node.config import SwarmConfig

    base = SwarmConfig().to_dict()
    base.update({"model": "tiny", "n_signature": 8, "n_calibration": 8, "join_timeout_s": float(args.timeout),
                 "expected_devices": n})
    base["train"].update({"batch_size": 8, "max_length": 96, "progress": False, "lr": 0.01})
    path = Path(args.work) / f"swarm-{n}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    SwarmConfig.from_dict(base).save(path)
    return path


def fleet_md(results: list[dict[str, Any]], cmd: str) -> list[str]:
    lines = ["## Tiny fleets on a real Mosquitto", "", f"Command: `{cmd}`", "",
             ("Times from the devices' round rows (the last device to finish each round); broker counters from "
              "Mosquitto's `$SYS` topics sampled every second; memory: the whole machine's use above its level "
              "before the run."), "",
             ("| devices | engine | per host | complete | join + cluster | s / round | clients | msgs in / round | "
              "msgs out / round | MB out / round | peak memory | wall |"), "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        if r.get("returncode") != 0:
            lines.append(f"| {r['devices']} | {r['engine']} | {r['per_host']} | failed: "
                         f"{r.get('error', '')[-120:].splitlines()[-1] if r.get('error') else '?'} |||||||||")
            continue
        pr = r["broker_per_round"]

        def med(k: str, pr: list[dict[str, float]] = pr) -> float:
            return sorted(x[k] for x in pr)[len(pr) // 2] if pr else float("nan")

        rs = sorted(r["round_s"])
        lines.append(
            f"| {r['devices']} | {r['engine']} | {r['per_host']} | {'yes' if r['rounds_complete'] else 'NO'} | "
            f"{r['join_s']:.0f} s | {rs[len(rs) // 2] if rs else float('nan'):.1f} s | {r['peak_clients']:.0f} | "
            f"{med('messages/received'):.0f} | {med('messages/sent'):.0f} | {med('bytes/sent') / 1e6:.2f} | "
            f"{r['peak_mb_above_idle']:.0f} MB | {r['wall_s']:.0f} s |")
    return lines + [""]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="part", required=True)
    m = sub.add_parser("memory")
    m.add_argument("--model", default="smollm2")
    m.add_argument("--devices", default="1,2,4,8,16")
    m.add_argument("--work", default="runs/scale")
    m.add_argument("--out", default="bench/results/scale-memory")
    f = sub.add_parser("fleet")
    f.add_argument("--devices", default="8,32,128")
    f.add_argument("--tasks", default="arith,strtf")
    f.add_argument("--per-host", type=int, default=64)
    f.add_argument("--engine", default="process", choices=["process", "ray"])
    f.add_argument("--ray-address", default="")
    f.add_argument("--host-cpus", type=float, default=1.0, help="engine ray: CPUs reserved per device host")
    f.add_argument("--rounds", type=int, default=3)
    f.add_argument("--local-steps", type=int, default=5)
    f.add_argument("--deadline", type=float, default=300.0)
    f.add_argument("--timeout", type=float, default=5400.0)
    f.add_argument("--work", default="runs/scale")
    f.add_argument("--out", default="bench/results/scale-fleet")
    if len(sys.argv) > 1 and sys.argv[1] == "_memory":
        _memory_child(sys.argv[2], sys.argv[3], int(sys.argv[4]), Path(sys.argv[5]))
        return
    args = p.parse_args()
    cmd = "python bench/bench_scale.py " + " ".join(sys.argv[1:])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.part == "memory":
        res = memory(args)
        out.with_suffix(".json").write_text(json.dumps(res, indent=2))
        out.with_suffix(".md").write_text("\n".join(memory_md(res, cmd)) + "\n")
        print("\n".join(memory_md(res, cmd)))
        return
    results: list[dict[str, Any]] = []
    for n in (int(x) for x in args.devices.split(",")):
        results.append(one_fleet(n, args))
        out.with_suffix(".json").write_text(json.dumps(results, indent=2))  # each fleet as soon as it ran
        out.with_suffix(".md").write_text("\n".join(fleet_md(results, cmd)) + "\n")
        print(fleet_md(results, cmd)[-2], flush=True)


if __name__ == "__main__":
    main()
