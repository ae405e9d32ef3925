"""``edgedfl emulate --engine ray``: device hosts as Ray actors, on this machine or across a cluster.

Each actor is a :class:`~edgedfl.emulation.host.DeviceHost` (k devices over one
shared base) placed by Ray with explicit resources (``host_cpus``,
``host_gpus``, ``host_memory_mb``). The devices talk over the broker (the
emulator's Mosquitto or ``--broker``), never through Ray: Ray only places the
compute and carries the results back.

Decisions (and why):

* **Ray is optional.** This module imports ``ray`` only when the engine is
  asked for; without it the emulator runs as before (``pip install
  'edgedfl[ray]'`` adds it).
* **The run directory is the same whatever the engine.** A host writes its
  devices' files where their configs say; on another machine that folder is
  that machine's, so an actor returns its devices' small files (status,
  rounds, final, bytes) when it ends and the driver writes the ones it does
  not see into the run directory. The report, plots and dashboard read the
  same files as with processes. The live view asks the actors for their
  devices' status.
* **An actor that dies is started again**, up to ``max_restarts`` times: its
  devices resume from their checkpoints (on the machine Ray places it on; a
  device that moved machines starts over from round 0 there), exactly like a
  device process the emulator restarts.
* **Each actor reports the Ray node it ran on**, so a run shows (and the test
  checks) that the fleet really spanned the cluster.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgedfl.errors import ConfigError
from edgedfl.node.config import NodeConfig

log = logging.getLogger("edgedfl.emulation.ray")

#: the device files an actor carries back to the driver (small; checkpoints stay where they were written)
CARRIED = ("status.json", "rounds.jsonl", "final.json", "bytes.json", "node_config.json")


def import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise ConfigError("engine 'ray' needs Ray: pip install 'edgedfl[ray]' (or run without --engine ray)") from exc
    return ray


class _HostActor:
    """The body of a Ray actor: one DeviceHost."""

    def __init__(self, configs: list[str], threads: int, max_restarts: int, folder: str) -> None:
        import logging as _logging
        import os

        from edgedfl.brokers.launch import raise_open_files
        from edgedfl.emulation.host import DeviceHost

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        raise_open_files()  # a device holds a socket and a few files
        _logging.basicConfig(level=_logging.INFO, format="%(asctime)s %(threadName)s %(name)s %(levelname)s %(message)s")
        self.host = DeviceHost([NodeConfig.from_dict(json.loads(c)) for c in configs], threads=threads,
                               max_restarts=max_restarts, folder=folder)

    def run(self) -> dict[str, Any]:
        import ray

        result = self.host.run()
        result["ray_node"] = ray.get_runtime_context().get_node_id()
        files: dict[str, str] = {}
        for cfg in self.host.configs:
            for name in CARRIED:
                path = Path(cfg.state_dir) / name
                if path.is_file():
                    files[str(path)] = path.read_text()
        result["files"] = files
        return result

    def status(self) -> list[dict[str, Any]]:
        return self.host.status()

    def node(self) -> str:
        import ray

        return str(ray.get_runtime_context().get_node_id())


class RayHosts:
    """Starts the device hosts of a fleet as Ray actors, waits for them, restarts the ones that die."""

    def __init__(self, cfg: Any, run_dir: Path) -> None:
        self.cfg = cfg
        self.run_dir = run_dir
        self.ray = import_ray()
        self.started_ray = False
        self.actors: dict[str, Any] = {}
        self.runs: dict[str, Any] = {}
        self.groups: dict[str, list[NodeConfig]] = {}
        self.results: dict[str, dict[str, Any]] = {}
        self.restarts: dict[str, int] = {}

    def start(self, groups: dict[str, list[NodeConfig]]) -> None:
        ray = self.ray
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                      "configure_logging": False}
            if self.cfg.ray_address:
                ray.init(address=self.cfg.ray_address, **kwargs)
            else:
                ray.init(object_store_memory=200 * 1024 * 1024, **kwargs)
            self.started_ray = True
        self.actor_class = ray.remote(_HostActor)
        for key, nodes in groups.items():
            self._launch(key, nodes)

    def _launch(self, key: str, nodes: list[NodeConfig]) -> None:
        self.groups[key] = nodes
        opts: dict[str, Any] = {"num_cpus": self.cfg.host_cpus, "num_gpus": self.cfg.host_gpus,
                                "max_restarts": 0, "max_concurrency": 4}
        if self.cfg.host_memory_mb:
            opts["memory"] = int(self.cfg.host_memory_mb) * 1024 * 1024
        actor = self.actor_class.options(**opts).remote(
            [n.to_json() for n in nodes], max(1, int(self.cfg.host_cpus)), self.cfg.max_restarts,
            str(self.run_dir / "hosts" / key))
        self.actors[key] = actor
        self.runs[key] = actor.run.remote()

    def status(self) -> list[dict[str, Any]] | None:
        """Every device's live status, from the actors (None if they do not answer in time)."""
        ray = self.ray
        keys = [k for k in self.actors if k not in self.results]
        try:
            live = dict(zip(keys, ray.get([self.actors[k].status.remote() for k in keys], timeout=5)))
        except (ray.exceptions.RayError, TimeoutError):  # an actor busy starting or gone: the files then
            return None
        rows = []
        for key, nodes in self.groups.items():
            if key in live:
                rows += live[key]
            else:
                for n in nodes:
                    try:
                        rows.append(json.loads((Path(n.state_dir) / "status.json").read_text()))
                    except (OSError, ValueError):
                        rows.append({"node": n.node_id, "state": "done", "round": 0, "bytes": 0})
        return rows

    def wait(self, on_tick: Callable[[list[dict[str, Any]]], None] | None,
             status: Callable[[], list[dict[str, Any]]], deadline: float) -> None:
        from edgedfl.emulation.fleet import EmulationError

        ray = self.ray
        last_tick = 0.0
        while len(self.results) < len(self.groups):
            pending = {self.runs[k]: k for k in self.groups if k not in self.results}
            ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=0.5)
            for ref in ready:
                key = pending[ref]
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayError as exc:  # the actor (its process or its machine) died
                    n = self.restarts.get(key, 0)
                    if n >= self.cfg.max_restarts:
                        raise EmulationError(f"device host {key} died {n + 1} times: {exc}") from exc
                    self.restarts[key] = n + 1
                    log.warning("device host %s died (%s); starting it again (%d of %d)", key,
                                type(exc).__name__, n + 1, self.cfg.max_restarts)
                    self._launch(key, [_no_crash(nd) for nd in self.groups[key]])
                    continue
                self._carry_back(result.pop("files", {}))
                self.results[key] = result
                failed = sorted(nd for nd, o in result["outcome"].items() if o != "done")
                if failed:
                    raise EmulationError(f"device host {key}: devices {failed} failed: {result['crashes']}")
            if on_tick is not None and time.monotonic() - last_tick > 1.0:
                on_tick(status())
                last_tick = time.monotonic()
            if time.monotonic() > deadline:
                raise EmulationError(f"the run did not finish within {self.cfg.timeout_s:g} s")
        (self.run_dir / "hosts").mkdir(parents=True, exist_ok=True)
        (self.run_dir / "hosts" / "ray.json").write_text(json.dumps(
            self.results, indent=2, sort_keys=True))

    def _carry_back(self, files: dict[str, str]) -> None:
        """Write the files an actor returned where the run directory does not already hold them."""
        for name, text in files.items():
            path = Path(name)
            try:
                if path.is_file() and path.read_text() == text:
                    continue
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
            except OSError as exc:
                log.warning("could not write %s: %s", path, exc)

    def stop(self) -> None:
        ray = self.ray
        for actor in self.actors.values():
            with contextlib.suppress(ValueError, ray.exceptions.RayError):  # already gone
                ray.kill(actor)
        self.actors.clear()
        if ray.is_initialized():
            ray.shutdown()


def _no_crash(node: NodeConfig) -> NodeConfig:
    import dataclasses

    return dataclasses.replace(node, crash_after_round=0)
