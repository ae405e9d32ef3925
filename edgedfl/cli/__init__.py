"""The ``edgedfl`` command line.

Each subcommand lives in its own module here, defining ``add_arguments(parser)``
and ``run(args) -> int``; modules load lazily so ``edgedfl --help`` and the
torch-free commands never import torch. The CLI configures logging; the
library only logs. Nothing in the package imports this module.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from edgedfl._version import __version__
from edgedfl.errors import EdgeDFLError

#: subcommand -> (module under edgedfl.cli, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    # each owner adds one line for its subcommand
    "emulate": ("emulate", "run N devices as processes on this machine, on the embedded broker, and report"),
    "bench": ("bench", "benchmarks: `edgedfl bench paper` puts edgedfl and the baselines side by side"),
    "node": ("node", "run this device in a swarm from a node config file"),
    "demo": ("demo", "the main job: an emulated 4-device swarm fine-tuning SmolLM2-135M on 2 tasks"),
    "train": ("train", "fine-tune one device's expert on local data (resumes if interrupted)"),
    "eval": ("evaluate", "loss and exact-match accuracy of a run's newest checkpoint"),
    "export-adapter": ("export_adapter", "write one expert as a standard peft LoRA adapter"),
    "data": ("data", "inspect or write the built-in offline multi-task suite"),
    "broker": ("broker", "start an MQTT broker (embedded amqtt or Mosquitto) and print its URL"),
    "export": ("export", "write every expert, the router and the base as one ONNX model"),
    "infer": ("infer", "run an exported ONNX model on a prompt (onnxruntime only, no torch)"),
    "android": ("android", "write a phone's bundle: ExecuTorch training and inference programs, tokenizer, manifest"),
    "keys": ("keys", "device keys and a swarm's key ring: new, show, list, add"),
    "swarm": ("swarm", "list or clear a swarm's retained messages on a broker (hellos, experts, presence)"),
    "doctor": ("doctor", "report what this device can do (CUDA, memory, quantization, broker) and its profile"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgedfl", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--version", action="version", version=f"edgedfl {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        mod = importlib.import_module(f"edgedfl.cli.{module}")
        mod.add_arguments(p)
        p.set_defaults(_module=mod)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return int(args._module.run(args) or 0)
    except EdgeDFLError as exc:
        print(f"edgedfl {args.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
