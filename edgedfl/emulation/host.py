"""A device host: one process serving k emulated devices over one frozen, shared base.

Every device keeps what is its own: adapter slots, optimizer, RNG, data, state
dir, key, protocol endpoint and MQTT session (its own client id and last
will); only the frozen, quantized base's weights are shared, so an added
device costs its adapters, optimizer and bookkeeping rather than a model.

Decisions (and why):

* **A thread per device, compute in turns.** Each device runs its whole life
  (:meth:`~edgedfl.node.member.SwarmMember.run`) in its own thread, so waiting
  for neighbours, deadlines and MQTT sessions stay per device. Every learner
  call that computes (load, signature, calibration, a round's training,
  evaluation, answers, checkpoints) takes a turn at the host's compute: one
  device at a time, in the order they asked (a ticket lock, so no device
  starves). A device's emulated slow-down sleeps outside its turn, so a slow
  phone does not hold the others up, exactly as with a process per device.
* **Results do not depend on packing.** A turn swaps the global torch RNG
  state to the device's own and back, and each device starts from the state
  a device process would have (seeded, then the base loaded and quantized), so
  the same seed gives the same losses, accuracies, clusters and routes whether
  devices share a host or not (tests/swarm/test_host.py compares the runs). The
  bytes agree up to the protocol's re-sends: a message not acknowledged within
  ``ack_timeout_s`` (its receiver busy computing) is sent again, in any engine. The host runs torch
  with ``threads`` intra-op threads, like a device process
  (``EDGEDFL_THREADS``, 1 by default).
* **One base per (model, seed, quantization, profile, device).** It is loaded
  and quantized once; each device gets a copy of the module tree whose
  parameters and buffers are the very same tensors (``copy.deepcopy`` with
  them in the memo), then attaches its own slots to that copy.
* **One network thread for all the sessions.** Every device keeps its own MQTT
  session (client id, last will, subscriptions), but one
  :class:`~edgedfl.transport.netloop.NetworkLoop` drives all their sockets:
  with a paho thread per session, a host of 250 devices ran ~500 threads and new
  sessions missed their CONNACK (bench/results/scale-1000-attempt.md). A host's
  devices connect in a burst, so their connect timeout grows with the host
  (0.25 s per device, at least 10 s). While they join, every device receives
  every hello of the swarm (n^2 messages through the one network thread), so a
  PUBACK or SUBACK may wait behind them: hosted devices wait for one as long
  as the swarm waits for its join (``join_timeout_s``, at least 30 s).
* **A crash stays with its device.** An exception in a device's life (or an
  injected crash) drops that device's MQTT link without a DISCONNECT (so the
  broker publishes its last will, as for a killed process), and the host
  starts the device again, resuming from its newest checkpoint, up to
  ``max_restarts`` times; the other devices go on. ``crashes.json`` in the
  host's folder records it.

``python -m edgedfl.emulation.host --configs A.json B.json ... [--threads N]``
is what ``edgedfl emulate --per-host K`` starts; :class:`DeviceHost` is also
the body of a Ray actor (``--engine ray``).
"""

from __future__ import annotations

import argparse
import collections
import copy
import dataclasses
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from edgedfl._parent import exit_with_parent
from edgedfl.errors import EdgeDFLError
from edgedfl.node.config import NodeConfig
from edgedfl.transport.netloop import NetworkLoop

log = logging.getLogger("edgedfl.host")


class DeviceCrashed(EdgeDFLError, RuntimeError):
    """An injected crash of one hosted device (``crash_after_round``): the device, not the host, goes down."""


class ComputeTurns:
    """FIFO turns at the host's compute: one device at a time, in the order they asked.

    Each waiter sleeps on an event of its own and the one leaving wakes only the next: with hundreds of
    devices in a host, waking every waiter at every turn (one shared condition) costs more than the turns.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: collections.deque[threading.Event] = collections.deque()
        self._busy = False
        self._owner: int | None = None  # the thread holding the turn (a call inside a call keeps it)
        self.turns = 0
        self.busy_s = 0.0

    def held(self) -> bool:
        """Whether the calling thread holds the turn now."""
        return self._owner == threading.get_ident()

    @contextmanager
    def turn(self) -> Iterator[None]:
        if self.held():  # re-entered (a compute call made inside another): the turn is already ours
            yield
            return
        with self._lock:
            if self._busy:
                mine = threading.Event()
                self._queue.append(mine)
            else:
                self._busy, mine = True, None
        if mine is not None:
            mine.wait()  # the turn is handed to us (self._busy stays True)
        self._owner = threading.get_ident()
        t0 = time.monotonic()
        try:
            yield
        finally:
            self._owner = None
            with self._lock:
                self.turns += 1
                self.busy_s += time.monotonic() - t0
                if self._queue:
                    self._queue.popleft().set()
                else:
                    self._busy = False


class SharedBases:
    """The frozen, quantized bases of this process, one per (model, seed, quant, profile, device)."""

    def __init__(self) -> None:
        self._bases: dict[tuple[str, ...], tuple[Any, Any, str, Any]] = {}

    def view(self, cfg: NodeConfig) -> tuple[Any, Any, str, Any]:
        """(a module tree sharing the base's tensors, tokenizer, quantization backend, RNG state after loading)."""
        import torch

        from edgedfl.model.quantize import load_device_base

        key = (cfg.swarm.model, str(cfg.swarm.seed), cfg.quant, cfg.profile, cfg.device, cfg.dtype)
        if key not in self._bases:
            # the very sequence a device process runs (TorchLearner.load), so its RNG ends in the same state
            torch.manual_seed(cfg.swarm.seed)
            base, tok, quant = load_device_base(cfg.swarm.model, cfg.swarm.seed, cfg)
            for p in base.parameters():
                p.requires_grad_(False)
            self._bases[key] = (base, tok, quant, torch.get_rng_state())
            log.info("shared base %s (%s) loaded", cfg.swarm.model, quant)
        base, tok, quant, rng = self._bases[key]
        shared = {id(t): t for t in (*base.parameters(), *base.buffers())}
        return copy.deepcopy(base, shared), tok, quant, rng

    @property
    def count(self) -> int:
        return len(self._bases)


#: the learner calls that compute, and so take a turn
COMPUTE_CALLS = ("signature", "calibration", "derive_masks", "random_masks", "train", "get_update", "set_update",
                 "evaluate", "set_routing", "answer", "save_experts", "save", "restore", "masks", "set_masks")


def _hosted_learner_class() -> type:
    """TorchLearner whose compute runs in the host's turns, on the shared base, with the device's own RNG."""
    import torch

    from edgedfl.adapters import attach_adapter
    from edgedfl.node.torch_learner import TorchLearner

    class HostedLearner(TorchLearner):
        def __init__(self, config: NodeConfig, host: DeviceHost) -> None:
            super().__init__(config)
            self.host = host
            self.rng_state = host.fresh_rng

        @contextmanager
        def turn(self) -> Iterator[None]:
            if self.host.turns.held():
                yield
                return
            with self.host.turns.turn():
                torch.set_rng_state(self.rng_state)
                try:
                    yield
                finally:
                    self.rng_state = torch.get_rng_state()

        def load(self, train_examples: Sequence[Any]) -> None:
            with self.host.turns.turn():
                base, self.tok, self.quant, self.rng_state = self.host.bases.view(self.cfg)
                torch.set_rng_state(self.rng_state)
                self.adapted = attach_adapter(base, self.adapter_config())
                self.rng_state = torch.get_rng_state()
            self.train_examples = list(train_examples)

        def place(self, slot: int) -> None:  # builds the trainer (and its optimizer): a turn too
            with self.turn():
                super().place(slot)

    def in_turn(name: str) -> Callable[..., Any]:
        inner = getattr(TorchLearner, name)

        def call(self: Any, *args: Any, **kwargs: Any) -> Any:
            with self.turn():
                return inner(self, *args, **kwargs)

        call.__name__ = name
        call.__doc__ = inner.__doc__
        return call

    for name in COMPUTE_CALLS:
        setattr(HostedLearner, name, in_turn(name))
    return HostedLearner


class _DeviceLogs(logging.Handler):
    """Each device thread's lines into its own ``node.log`` (as a device process writes them): one handler
    for the host, routing by thread name (a handler per device would see every record of every device)."""

    def __init__(self) -> None:
        super().__init__()
        self.streams: dict[str, Any] = {}
        self.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))

    def open(self, thread: str, path: Path) -> None:
        self.streams[thread] = open(path, "a", buffering=1)  # noqa: SIM115 - closed in close_for()

    def close_for(self, thread: str) -> None:
        stream = self.streams.pop(thread, None)
        if stream is not None:
            stream.close()

    def emit(self, record: logging.LogRecord) -> None:
        stream = self.streams.get(record.threadName or "")
        if stream is not None:
            try:
                stream.write(self.format(record) + "\n")
            except (OSError, ValueError):
                pass


class DeviceHost:
    """Runs ``configs`` (one NodeConfig per device) in this process; :meth:`run` returns when all ended."""

    def __init__(self, configs: Sequence[NodeConfig], *, threads: int = 1, max_restarts: int = 3,
                 folder: str | os.PathLike[str] | None = None) -> None:
        import torch

        if not configs:
            raise ValueError("a device host needs at least one device")
        from edgedfl.brokers.launch import raise_open_files

        torch.set_num_threads(max(1, threads))
        raise_open_files()  # each device holds a socket, its log and its stores
        self.configs = list(configs)
        self.max_restarts = max_restarts
        self.folder = Path(folder) if folder is not None else None
        self.turns = ComputeTurns()
        self.bases = SharedBases()
        #: one network thread drives every device's MQTT session (a paho thread each would be hundreds)
        self.netloop = NetworkLoop.shared()
        self.connect_timeout = max(10.0, 0.25 * len(self.configs))
        #: the RNG state of a fresh process (each device starts from it)
        self.fresh_rng = torch.get_rng_state()
        self.learner_class = _hosted_learner_class()
        #: node id -> "running" | "done" | "failed"; crashes: node id -> the errors that restarted it
        self.outcome: dict[str, str] = {c.node_id: "waiting" for c in self.configs}
        self.crashes: dict[str, list[str]] = {}
        self.members: dict[str, Any] = {}
        self._lock = threading.Lock()
        self.logs = _DeviceLogs()
        logging.getLogger().addHandler(self.logs)

    def node(self, cfg: NodeConfig) -> Any:
        """A device of this host: a Node over a hosted learner, whose injected crash stays in its thread."""
        from edgedfl.node.member import SwarmMember

        host = self

        class HostedNode(SwarmMember):
            def transport_options(self) -> dict[str, Any]:
                if self.cfg.broker.startswith("memory:"):  # transport_from_url's one non-MQTT scheme
                    return {}
                # one network thread for all the host's sessions; a host's devices connect in a burst,
                # so a CONNACK may take longer than a lone device's 10 s
                # while the host's devices join, each receives every hello of the swarm (n^2 messages through
                # the one network thread): a PUBACK or SUBACK waits behind them, as long as the join may take
                return {"loop": host.netloop, "connect_timeout": host.connect_timeout,
                        "publish_timeout": max(30.0, host.connect_timeout, self.swarm.join_timeout_s)}

            def crash(self) -> None:
                self.drop_link()
                raise DeviceCrashed(f"{self.me}: injected crash after round {self.cfg.crash_after_round}")

        return HostedNode(cfg, self.learner_class(cfg, self))

    def _life(self, cfg: NodeConfig) -> None:
        Path(cfg.state_dir).mkdir(parents=True, exist_ok=True)
        self.logs.open(cfg.node_id, Path(cfg.state_dir) / "node.log")
        try:
            for attempt in range(self.max_restarts + 1):
                member = self.node(cfg)
                with self._lock:
                    self.members[cfg.node_id] = member
                    self.outcome[cfg.node_id] = "running"
                try:
                    member.run()
                    with self._lock:
                        self.outcome[cfg.node_id] = "done"
                    return
                except Exception as exc:  # one device's failure: its link dropped, then it starts again
                    member.drop_link()
                    log.exception("%s crashed (%s); %s", cfg.node_id, type(exc).__name__,
                                  "restarting it" if attempt < self.max_restarts else "giving up")
                    with self._lock:
                        self.crashes.setdefault(cfg.node_id, []).append(f"{type(exc).__name__}: {exc}")
                        self._write_crashes()
                    cfg = dataclasses.replace(cfg, crash_after_round=0)  # an injected crash happens once
            with self._lock:
                self.outcome[cfg.node_id] = "failed"
        finally:
            self.logs.close_for(cfg.node_id)

    def _write_crashes(self) -> None:
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
            (self.folder / "crashes.json").write_text(json.dumps(self.crashes, sort_keys=True))

    def run(self) -> dict[str, Any]:
        """Every device's life in its own thread; {node id: outcome}, crashes and compute figures."""
        t0 = time.monotonic()
        threads = [threading.Thread(target=self._life, args=(c,), name=c.node_id, daemon=True) for c in self.configs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return {"outcome": dict(self.outcome), "crashes": dict(self.crashes), "wall_s": time.monotonic() - t0,
                "compute_s": self.turns.busy_s, "turns": self.turns.turns, "bases": self.bases.count}

    def status(self) -> list[dict[str, Any]]:
        """Each device's live status (what status.json holds), for a driver that cannot read its files."""
        rows = []
        for c in self.configs:
            member = self.members.get(c.node_id)
            rows.append(dict(member.status) if member is not None else
                        {"node": c.node_id, "state": "starting", "round": 0, "bytes": 0})
        return rows


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m edgedfl.emulation.host", description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", required=True, help="one NodeConfig JSON per device")
    p.add_argument("--threads", type=int, default=int(os.environ.get("EDGEDFL_THREADS", "1")))
    p.add_argument("--max-restarts", type=int, default=3)
    p.add_argument("--folder", default=None, help="where the host writes crashes.json and result.json")
    args = p.parse_args(argv)
    logging.basicConfig(level=os.environ.get("EDGEDFL_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(threadName)s %(name)s %(levelname)s %(message)s")
    exit_with_parent()  # started by the emulator: stop once it is gone
    host = DeviceHost([NodeConfig.load(c) for c in args.configs], threads=args.threads,
                      max_restarts=args.max_restarts, folder=args.folder)
    result = host.run()
    if args.folder:
        Path(args.folder).mkdir(parents=True, exist_ok=True)
        (Path(args.folder) / "result.json").write_text(json.dumps(result, indent=2, sort_keys=True))
    failed = sorted(n for n, o in result["outcome"].items() if o != "done")
    if failed:
        print(f"devices that failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
