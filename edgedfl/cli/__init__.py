"""The ``edgedfl`` command line.

Each subcommand lives in its own module here, defining ``add_arguments(parser)``
and ``run(args) -> int``; modules load lazily so ``edgedfl --help`` and the
torch-free commands never import torch. The CLI configures logging; the
library only logs. Nothing in the package imports this module.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import logging
import os
import sys
from pathlib import Path

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
    "dashboard": ("dashboard", "a local web page for a live swarm (--broker, --swarm) or a finished run (--run)"),
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


def log_path() -> Path:
    """Where the CLI writes every library's log lines and warnings: ``$EDGEDFL_LOG`` or ~/.cache/edgedfl/edgedfl.log."""
    return Path(os.environ.get("EDGEDFL_LOG") or Path.home() / ".cache" / "edgedfl" / "edgedfl.log")


class _OwnLines(logging.Filter):
    """On the terminal: edgedfl's own lines, and anyone's errors; the rest goes to the log file."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name.split(".", 1)[0] == "edgedfl" or record.levelno >= logging.ERROR


def _route_torch_logs() -> None:
    """torch gives its loggers a stderr handler of their own and stops them propagating: undo that, so their
    warnings take the CLI's way (the log file; the terminal with -v)."""
    try:
        from torch._logging._internal import _is_torch_handler, log_registry
    except ImportError:  # another torch layout: its lines stay on stderr
        return
    for name in log_registry.get_log_qnames():
        log = logging.getLogger(name)
        for handler in [h for h in log.handlers if _is_torch_handler(h)]:
            log.removeHandler(handler)
        log.propagate = True


class _AfterTorchImport(importlib.abc.MetaPathFinder):
    """Runs :func:`_route_torch_logs` right after ``import torch``, whenever a command first imports it
    (torch-free commands never import it, and neither does this)."""

    def find_spec(self, fullname: str, path: object, target: object = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != "torch":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec("torch")
        if spec is None or spec.loader is None:
            return spec
        run = spec.loader.exec_module

        def exec_module(module: object) -> None:
            run(module)  # type: ignore[arg-type]
            _route_torch_logs()

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def setup_logging(verbose: int) -> None:
    """A quiet start: the terminal shows edgedfl's lines; other libraries' warnings (Python warnings too) and
    progress bars go to :func:`log_path`. ``-v`` shows everything (and info), ``-vv`` debug."""
    fmt = logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s")
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_edgedfl_cli", False)]:  # main() called again in-process
        root.removeHandler(old)
        old.close()
    root.setLevel(logging.WARNING - 10 * min(verbose, 2))
    logging.getLogger("edgedfl").setLevel(min(root.level, logging.INFO))  # edgedfl's info lines reach the file
    term = logging.StreamHandler()
    term.setLevel(logging.WARNING - 10 * min(verbose, 2))
    term.setFormatter(fmt)
    if not verbose:
        term.addFilter(_OwnLines())
        # the model converter's and the hub's progress bars; edgedfl's own training bar is not a hub bar
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        if "torch" in sys.modules:
            _route_torch_logs()
        elif not any(isinstance(f, _AfterTorchImport) for f in sys.meta_path):
            sys.meta_path.insert(0, _AfterTorchImport())
    term._edgedfl_cli = True  # type: ignore[attr-defined]
    root.addHandler(term)
    try:
        path = log_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        file = logging.FileHandler(path, encoding="utf-8")
    except OSError:
        pass  # no writable home: the terminal alone
    else:
        file._edgedfl_cli = True  # type: ignore[attr-defined]
        file.setLevel(logging.INFO)
        file.setFormatter(fmt)
        root.addHandler(file)
    logging.captureWarnings(True)  # library warnings become log records: to the file, not the terminal


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
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
