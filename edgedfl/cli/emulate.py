"""``edgedfl emulate``: run N devices as separate processes on this machine and report."""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import time
from typing import Any

from edgedfl.adapters.methods import method_names
from edgedfl.aggregation.config import ROBUST
from edgedfl.node.config import TOPOLOGIES


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--devices", type=int, default=4, help="number of devices")
    p.add_argument("--tasks", default="2", help="a count (first tasks of the built-in suite), or task sources, "
                   "comma-separated: built-in names, JSONL files (TRAIN.jsonl:TEST.jsonl for a file per split), hf:NAME")
    p.add_argument("--swarm-config", default=None, metavar="FILE",
                   help="a SwarmConfig JSON (every shared setting, with its adapter/train/aggregation/protocol "
                        "parts); the flags below override it")
    p.add_argument("--swarm", default=None, metavar="NAME",
                   help="swarm name (the MQTT topic prefix); default: a fresh name per run, so runs sharing a "
                        "broker never see each other")
    p.add_argument("--overwrite", action="store_true",
                   help="write into a non-empty --out that is not an earlier run (nothing in it is deleted)")
    p.add_argument("--model", default=None, help="tiny (default), smollm2, gemma3-270m, a hub id, a directory or a .gguf")
    p.add_argument("--method", default=None, metavar="METHOD",
                   help=f"adapter method: one of {', '.join(method_names())} (default solora), or a "
                        "'module:OBJECT' AdapterMethod")
    p.add_argument("--topology", default=None, choices=list(TOPOLOGIES),
                   help="default clusters; local: the no-exchange baseline (every device trains alone, sends no update)")
    p.add_argument("--rounds", type=int, default=None, help="federated rounds (default 3)")
    p.add_argument("--local-steps", type=int, default=None, help="optimizer steps per round")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--rank", type=int, default=None)
    p.add_argument("--density", type=float, default=None)
    p.add_argument("--aggregator", default=None, choices=list(ROBUST),
                   help="how a device combines its neighbours' updates: mean (Metropolis weights, default), median "
                        "or trimmed (coordinate-wise)")
    p.add_argument("--clip-norm", type=float, default=None, help="a fixed bound on each neighbour's difference")
    p.add_argument("--auto-clip", type=float, default=None,
                   help="bound each neighbour's difference by this many times the device's own change this round "
                        "(default 3; 0 = off)")
    p.add_argument("--random-masks", action="store_true", default=None,
                   help="ablation: random masks instead of spectrum-based")
    p.add_argument("--n-train", type=int, default=None, help="training examples per device")
    p.add_argument("--n-eval", type=int, default=None, help="test examples per task")
    p.add_argument("--seed", type=int, default=None, help="swarm seed (default 0)")
    p.add_argument("--profiles", default="laptop", help="device profiles cycled over devices, e.g. phone,laptop")
    p.add_argument("--shape-links", action="store_true", help="apply profile link rates at application level")
    p.add_argument("--broker", default="", help="mqtt://host:port (default: start the embedded broker)")
    p.add_argument("--secure", action="store_true",
                   help="mTLS on a Mosquitto of the run's own: a CA, a certificate and a password per device, "
                        "an ACL that lets each device write only its own topics (files in OUT/secure/)")
    p.add_argument("--out", default="runs/emulate", help="run directory")
    p.add_argument("--report", default=None, help="report JSON path (default: OUT/report.json); PNGs next to it")
    p.add_argument("--deadline", type=float, default=None, help="round deadline in seconds")
    p.add_argument("--timeout", type=float, default=1800.0,
                   help="give up on the whole run after this many seconds (default 1800)")
    p.add_argument("--final-modes", default=None,
                   help="final evaluation modes, comma-separated: implicit (the inference setup, default), "
                        "oracle, merge")
    p.add_argument("--android", type=int, default=0,
                   help="the last N devices are phone stand-ins on an exported ExecuTorch bundle (needs executorch)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "auto"],
                   help="every device's base compute dtype: float32 (default), bfloat16 (about half the step time "
                        "on CPUs with AVX512-BF16), or auto (bfloat16 where the hardware has it)")
    p.add_argument("--per-host", type=int, default=1, metavar="K",
                   help="devices per process: K > 1 packs K devices into a device host over one shared base "
                        "(each keeps its own adapters, optimizer, key and MQTT session); default 1")
    p.add_argument("--engine", default="process", choices=["process", "ray"],
                   help="process (default): device processes or hosts on this machine; ray: device hosts as Ray "
                        "actors (pip install 'edgedfl[ray]')")
    p.add_argument("--ray-address", default="", help="--engine ray: the cluster to join (auto or HOST:PORT; "
                                                     "default: a local Ray started for the run)")
    p.add_argument("--host-cpus", type=float, default=1.0, help="--engine ray: CPUs per device host (default 1)")
    p.add_argument("--host-gpus", type=float, default=0.0, help="--engine ray: GPU fraction per device host")
    p.add_argument("--host-memory-mb", type=int, default=0, help="--engine ray: memory reserved per device host")
    p.add_argument("--quiet", action="store_true", help="no live progress view")
    p.add_argument("--dashboard", action="store_true",
                   help="serve the live dashboard (a local web page) next to the broker and print its URL "
                        "(needs the dashboard extra: pip install 'edgedfl[dashboard]')")
    p.add_argument("--dashboard-port", type=int, default=0, help="the dashboard's port on 127.0.0.1 (default: a free one)")
    p.add_argument("--dashboard-hold", type=float, default=None, metavar="SECONDS",
                   help="keep serving the finished run's page this long after the run (default: until Ctrl-C)")


def swarm_from_args(args: argparse.Namespace) -> Any:
    """The swarm of ``--swarm-config`` (or the defaults), with every flag that was given applied on top."""
    from edgedfl import SwarmConfig

    data = SwarmConfig.load(args.swarm_config).to_dict() if args.swarm_config else SwarmConfig().to_dict()
    if args.swarm:
        data["name"] = args.swarm
    elif not args.swarm_config:  # a fresh name per run: another run's retained messages live elsewhere
        data["name"] = f"{data['name']}-{secrets.token_hex(3)}"
    top = {"model": args.model, "topology": args.topology, "rounds": args.rounds, "seed": args.seed,
           "random_masks": args.random_masks, "local_steps": args.local_steps, "n_train": args.n_train,
           "n_eval": args.n_eval, "round_deadline_s": args.deadline,
           "final_modes": args.final_modes.split(",") if args.final_modes else None}
    data.update({k: v for k, v in top.items() if v is not None})
    parts = {"adapter": {"method": args.method, "rank": args.rank, "density": args.density},
             "train": {"lr": args.lr},
             "aggregation": {"robust": args.aggregator, "clip_norm": args.clip_norm, "auto_clip": args.auto_clip}}
    for part, fields in parts.items():
        data[part].update({k: v for k, v in fields.items() if v is not None})
    return SwarmConfig.from_dict(data)


#: above this many devices the live line counts devices per state and round instead of naming each
LIVE_PER_DEVICE = 12


def live_line(rows: list[dict[str, Any]], elapsed: float, rounds: int) -> str:
    """The live progress line: a token per device for a few devices; for a fleet, counts per state and per
    round, the bytes and a bar over the rounds (the slowest device's progress)."""
    total = sum(int(r.get("bytes", 0)) for r in rows)
    if len(rows) <= LIVE_PER_DEVICE:
        line = "  ".join(f"{r['node']}:{r.get('state', '?')[:10]}@r{r.get('round', 0)}" for r in rows)
        return f"[{elapsed:6.0f}s] {line}  {total / 1e6:.2f} MB"
    states: dict[str, int] = {}
    by_round: dict[int, int] = {}
    for r in rows:
        states[str(r.get("state", "?"))] = states.get(str(r.get("state", "?")), 0) + 1
        by_round[int(r.get("round", 0))] = by_round.get(int(r.get("round", 0)), 0) + 1
    done = sum(n for s, n in states.items() if s == "done")
    slowest = min((int(r.get("round", 0)) for r in rows if r.get("state") != "done"), default=rounds)
    width = 20
    filled = round(width * (slowest if done < len(rows) else rounds) / max(rounds, 1))
    bar = "#" * filled + "." * (width - filled)
    st = " ".join(f"{s}:{n}" for s, n in sorted(states.items(), key=lambda kv: -kv[1]))
    rd = " ".join(f"r{k}:{n}" for k, n in sorted(by_round.items()))
    return f"[{elapsed:6.0f}s] {len(rows)} devices [{bar}] {st} | {rd} | {total / 1e6:.2f} MB"


def _live(rows: list[dict[str, Any]], state: dict[str, Any]) -> None:
    text = live_line(rows, time.monotonic() - state["t0"], int(state.get("rounds", 0)))
    if text != state.get("last"):
        if sys.stdout.isatty():
            print("\r" + text[:200], end="", flush=True)
        elif time.monotonic() - state.get("printed", 0) > 5:
            print(text, flush=True)
            state["printed"] = time.monotonic()
        state["last"] = text


def _start_dashboard(fleet: Any, args: argparse.Namespace, out: Any, held: dict[str, Any]) -> None:
    """The dashboard on 127.0.0.1, following the fleet's broker (``Fleet.run``'s ``on_broker``)."""
    from edgedfl.dashboard.server import Dashboard
    from edgedfl.dashboard.view import SwarmView
    from edgedfl.errors import EdgeDFLError
    from edgedfl.wire.signing import read_keyring

    swarm = fleet.cfg.swarm
    try:
        ring = out / "keyring.json"
        if swarm.admission != "open" and ring.is_file():  # the fleet admits its own devices' keys only
            view = SwarmView(swarm.name, admission="keyring", keyring=read_keyring(ring))
        else:
            view = SwarmView(swarm.name, admission="open" if swarm.admission == "open" else "tofu")
        dash = Dashboard(view, port=args.dashboard_port)
        url = dash.start()
        held["dash"] = dash
        if fleet.broker_url.startswith(("mqtt://", "mqtts://")):
            dash.follow(fleet.broker_url)
        else:  # devices in network namespaces: their broker is not reachable from here
            print("dashboard: the broker lives in a network namespace; the page shows the run when it ends",
                  file=sys.stderr)
        print(f"dashboard: {url}", flush=True)
    except (EdgeDFLError, OSError) as exc:
        print(f"dashboard not started: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from edgedfl import Fleet, FleetConfig
    from edgedfl.emulation.fleet import clear_run_dir, resolve_tasks
    from edgedfl.emulation.report import format_table, graph_edges, write_plots

    swarm = swarm_from_args(args)
    tasks = resolve_tasks(args.tasks)
    cfg = FleetConfig(devices=args.devices, tasks=tasks, profiles=args.profiles.split(","),
                      shape_links=args.shape_links, broker=args.broker, swarm=swarm,
                      android=args.android, secure=args.secure, per_host=args.per_host, engine=args.engine,
                      ray_address=args.ray_address, host_cpus=args.host_cpus, host_gpus=args.host_gpus,
                      host_memory_mb=args.host_memory_mb, timeout_s=args.timeout, dtype=args.dtype)
    out = Path(args.out)
    clear_run_dir(out, overwrite=args.overwrite)
    fleet = Fleet(cfg, out)  # Fleet.run turns SIGTERM into an orderly stop while devices run
    state: dict[str, Any] = {"t0": time.monotonic(), "rounds": swarm.rounds}
    held: dict[str, Any] = {}
    on_broker = (lambda f: _start_dashboard(f, args, out, held)) if args.dashboard else None
    try:
        report = fleet.run(None if args.quiet else (lambda rows: _live(rows, state)), on_start=lambda f: print(
            f"{args.devices} devices, tasks {tasks}, method {swarm.method}, swarm {swarm.name}, broker {f.broker_url}",
            flush=True), on_broker=on_broker, on_finish=lambda f: held["dash"].unfollow() if "dash" in held else None)
    except BaseException:
        if "dash" in held:
            held["dash"].stop()
        raise
    if not args.quiet and sys.stdout.isatty():
        print()
    report_path = Path(args.report) if args.report else out / "report.json"
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(report, indent=2, sort_keys=True))
    write_plots(report, report_path, graph_edges(out))
    print(format_table(report))
    print(f"report: {report_path}")
    bundles = sorted(out.glob("*/experts/experts.json"))
    if bundles:  # every device holds the swarm's experts; one bundle is what a user exports
        print(f"experts: {bundles[0].parent} (edgedfl export onnx --experts {bundles[0].parent} --out model.onnx)")
    if "dash" in held:  # the finished run, from its directory, until Ctrl-C (or --dashboard-hold)
        dash = held["dash"]
        dash.view.load_run(out)  # every device's last status, also one the broker had not delivered yet
        hold = "" if args.dashboard_hold is None else f" for {args.dashboard_hold:g} s"
        print(f"dashboard: {dash.url} shows the finished run{hold}; Ctrl-C to stop", flush=True)
        import signal

        def _terminate(signum: int, frame: object) -> None:
            raise KeyboardInterrupt  # SIGTERM ends the hold like Ctrl-C: the page stops, the run stays

        signal.signal(signal.SIGTERM, _terminate)
        try:
            dash.wait(args.dashboard_hold)
        except KeyboardInterrupt:
            pass
        finally:
            dash.stop()
    return 0
