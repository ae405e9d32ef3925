"""Emulate a fleet of devices on one machine: a broker, N node processes, a live view, a report.

Each device is a separate ``python -m edgedfl.node`` process with its own
state directory, talking to the broker over real TCP (the embedded amqtt
broker by default, or any ``mqtt://host:port``). Device profiles set the
emulated compute slow-down and, with ``shape_links``, an application-level
uplink rate and latency per device.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgedfl._parent import PARENT_ENV
from edgedfl.config import ConfigBase, check, option
from edgedfl.data.sources import HF_PREFIX, check_source, file_parts
from edgedfl.data.tasks import TASKS
from edgedfl.devices import DTYPES, PROFILES, get_profile
from edgedfl.errors import ConfigError, DataError, EdgeDFLError
from edgedfl.node.config import NodeConfig, SwarmConfig

log = logging.getLogger("edgedfl.emulation")

ENGINES = ("process", "ray")
#: above this many devices the emulator starts Mosquitto rather than the embedded broker
LARGE_FLEET = 64


class EmulationError(EdgeDFLError, RuntimeError):
    """A device process failed; the message carries the end of its log."""


@dataclasses.dataclass
class FleetConfig(ConfigBase):
    devices: int = option(4, help="number of emulated devices")
    tasks: list[str] = option(help="task sources: built-in names, JSONL files (TRAIN.jsonl:TEST.jsonl for a file "
                                   "per split) or hf:<dataset>; device i gets tasks[i % len(tasks)]",
                              factory=lambda: ["arith", "strtf"])
    profiles: list[str] = option(help="device profiles, cycled over the devices", factory=lambda: ["laptop"])
    shape_links: bool = option(
        False,
        help="shape each device's link to its profile (rate, latency, loss): for real when root "
        "(a network namespace per device, veth, tc tbf, nftables, a delay proxy), else at application level",
    )
    broker: str = option("", help="mqtt://host:port of an existing broker (empty: start the embedded one)")
    timeout_s: float = option(1800.0, help="give up on the run after this many seconds")
    node_overrides: dict[str, dict[str, Any]] = option(
        help="per-device NodeConfig fields by node id, e.g. {'dev02': {'slowdown': 10}}", factory=dict
    )
    swarm: SwarmConfig = option(help="settings every device shares", factory=SwarmConfig)
    android: int = option(0, help="the last N devices are phone stand-ins (android_bridge/standin) running an "
                                  "exported ExecuTorch bundle instead of a Python node")
    secure: bool = option(False, help="run the fleet over mTLS on a Mosquitto of its own: a CA, a certificate and "
                                      "a password per device, and an ACL that lets each device write only its "
                                      "own topics (in <out>/secure/)")
    max_restarts: int = option(3, help="a device process that dies is restarted (it resumes from its checkpoint) "
                                       "up to this many times; then the run fails")
    dtype: str = option("float32", help="every device's base compute dtype (DeviceConfig.dtype): float32, bfloat16 "
                                        "or auto")
    per_host: int = option(1, help="devices per process: 1 runs each device in a process of its own (its own copy "
                                   "of the base); K > 1 packs K devices into one device host over one shared, "
                                   "frozen base (each keeps its own adapters, optimizer, RNG, key and MQTT session)")
    engine: str = option("process", help="'process': device processes (or hosts) on this machine; 'ray': device "
                                         "hosts as Ray actors, on this machine or on the cluster at ray_address")
    ray_address: str = option("", help="engine 'ray': the cluster to join ('' starts a local one; 'auto' or "
                                       "host:port joins a running one)")
    host_cpus: float = option(1.0, help="engine 'ray': CPUs reserved per device host (also its torch threads)")
    host_gpus: float = option(0.0, help="engine 'ray': GPU fraction reserved per device host")
    host_memory_mb: int = option(0, help="engine 'ray': memory reserved per device host (0: none reserved)")

    def __post_init__(self) -> None:
        super().__post_init__()
        n = type(self).__name__
        check(self.devices >= 1, n, "devices", self.devices, "must be >= 1")
        check(0 <= self.android <= self.devices, n, "android", self.android, f"must be in [0, {self.devices}]")
        check(self.max_restarts >= 0, n, "max_restarts", self.max_restarts, "must be >= 0")
        check(not (self.secure and self.broker), n, "secure", self.secure,
              "a secure fleet starts its own Mosquitto (it writes the certificates and the ACL): drop --broker")
        check(bool(self.tasks), n, "tasks", self.tasks, "name at least one task")
        for t in self.tasks:
            try:
                check_source(t)
            except DataError as exc:
                check(False, n, "tasks", self.tasks, str(exc))
        for p in self.profiles:
            check(p in PROFILES, n, "profiles", self.profiles, f"unknown profile {p!r}")
        check(self.per_host >= 1, n, "per_host", self.per_host, "must be >= 1")
        check(self.dtype in DTYPES, n, "dtype", self.dtype, f"choose from {list(DTYPES)}")
        check(self.engine in ENGINES, n, "engine", self.engine, f"choose from {ENGINES}")
        check(not (self.engine == "ray" and self.shape_links), n, "shape_links", self.shape_links,
              "links are shaped on one machine only; drop --shape-links with --engine ray")
        check(not (self.per_host > 1 and self.shape_links), n, "shape_links", self.shape_links,
              "shaped links put each device in a network namespace of its own: use per_host 1")
        check(not (self.engine == "ray" and self.android), n, "android", self.android,
              "phone stand-ins run as processes of their own; use engine 'process'")
        check(self.host_cpus > 0 and self.host_gpus >= 0 and self.host_memory_mb >= 0, n, "host_cpus",
              self.host_cpus, "host resources must be positive (cpus) and >= 0 (gpus, memory)")


#: what a run writes at the top of its directory (the devices write into dev*/ folders with a node_config.json)
RUN_FILES = ("fleet_config.json", "keyring.json", "report.json", "report_accuracy.png", "report_bytes.png", "report_clusters.png")


def clear_run_dir(out: Path, *, overwrite: bool = False) -> None:
    """Make ``out`` ready for a run without deleting anything the user owns.

    An earlier run's files (:data:`RUN_FILES`, its device folders) are removed;
    anything else stays. A non-empty folder that holds no earlier run is refused
    unless ``overwrite`` (then the run writes beside what is there).

    :raises EmulationError: ``out`` is a file, or a non-empty folder that is not an earlier run.
    """
    import shutil

    if out.is_file():
        raise EmulationError(f"--out {out} is a file")
    if not out.is_dir() or not any(out.iterdir()):
        return
    earlier = (out / "fleet_config.json").is_file()
    if not earlier and not overwrite:
        raise EmulationError(f"--out {out} is not empty and holds no earlier edgedfl run; choose another folder, "
                             "or pass --overwrite to write beside what is there (nothing of it is deleted)")
    if earlier:
        for name in RUN_FILES:
            (out / name).unlink(missing_ok=True)
        for dev in out.iterdir():
            if dev.is_dir() and (dev / "node_config.json").is_file():
                shutil.rmtree(dev)
        # a secure run's credentials and broker (each run its own CA and swarm name)
        for sub, marker in (("secure", "secure.json"), ("broker", "mosquitto.conf")):
            if (out / sub / marker).is_file():
                shutil.rmtree(out / sub)


def resolve_tasks(spec: str) -> list[str]:
    """``"2"`` -> the first two built-in tasks; ``"arith,mine.jsonl"`` -> those (files as absolute paths,
    so every device process finds them)."""
    spec = spec.strip()
    if spec.isdigit():
        names = list(TASKS)
        k = int(spec)
        if not 1 <= k <= len(names):
            raise ConfigError(f"--tasks {k}: the built-in suite has {len(names)} tasks")
        return names[:k]
    out = []
    for t in (t.strip() for t in spec.split(",")):
        if not t:
            continue
        if t not in TASKS and not t.startswith(HF_PREFIX):
            t = ":".join(str(Path(p).absolute()) for p in filter(None, file_parts(t)))
        out.append(check_source(t))
    return out


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _child_env() -> dict[str, str]:
    """The environment of a device process or host: one torch thread unless asked, no hub lookups."""
    return dict(os.environ, EDGEDFL_THREADS=os.environ.get("EDGEDFL_THREADS", "1"), HF_HUB_OFFLINE="1",
                **{PARENT_ENV: str(os.getpid())})  # a child outliving this process stops (edgedfl._parent)


def node_configs(cfg: FleetConfig, run_dir: Path, broker_url: str, *, app_shaping: bool | None = None) -> list[NodeConfig]:
    app = cfg.shape_links if app_shaping is None else app_shaping
    # max_slots 0 (auto): a slot per distinct task, so no task is merged into another's cluster
    swarm = dataclasses.replace(cfg.swarm, expected_devices=cfg.swarm.expected_devices or cfg.devices,
                                eval_tasks=list(cfg.swarm.eval_tasks) or list(cfg.tasks),
                                max_slots=cfg.swarm.max_slots or len(set(cfg.tasks)))
    out = []
    per_task = {t: [i for i in range(cfg.devices) if cfg.tasks[i % len(cfg.tasks)] == t] for t in cfg.tasks}
    for i in range(cfg.devices):
        task = cfg.tasks[i % len(cfg.tasks)]
        profile = get_profile(cfg.profiles[i % len(cfg.profiles)])
        fastest = min(get_profile(p).compute_slowdown for p in cfg.profiles)
        out.append(NodeConfig(
            node_id=f"dev{i:02d}", data=task, shard=per_task[task].index(i), shards=len(per_task[task]),
            eval_shard=i, eval_shards=cfg.devices,
            profile=profile.name, dtype=cfg.dtype, broker=broker_url, state_dir=str(run_dir / f"dev{i:02d}"),
            slowdown=profile.compute_slowdown / fastest,
            link_rate_bps=float(profile.link_rate_bps) if app else 0.0,
            link_latency_ms=profile.latency_ms if app else 0.0,
            swarm=swarm,
        ))
        extra = cfg.node_overrides.get(out[-1].node_id)
        if extra:
            out[-1] = dataclasses.replace(out[-1], **extra)
    return out


class Fleet:
    """Runs the devices of ``cfg`` in ``run_dir`` and waits for them."""

    def __init__(self, cfg: FleetConfig, run_dir: str | os.PathLike[str]) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.nodes: list[NodeConfig] = []
        self._broker: Any = None
        self.broker_url = cfg.broker
        self.lab: Any = None
        #: "netns" (real links), "application" or "none"
        self.shaping = "none"
        #: node id -> exit codes of its processes that died (each was restarted); a hosted device's error text
        self.crashes: dict[str, list[int | str]] = {}
        #: host id -> its devices (per_host > 1 or engine 'ray')
        self.hosts: dict[str, list[NodeConfig]] = {}
        self.ray: Any = None

    def start(self, on_broker: Callable[[Fleet], None] | None = None) -> None:
        """The broker, the devices' configs and keys, then every device process.

        ``on_broker`` is called once the broker is up and the key ring written, before any device
        starts (``edgedfl emulate --dashboard`` starts the dashboard there).
        """
        self.run_dir.mkdir(parents=True, exist_ok=True)
        from edgedfl.model.loading import prepare_model

        prepare_model(self.cfg.swarm.model)  # a GGUF is converted once here, not by every device at once
        if self.cfg.shape_links and not self.cfg.broker and not self.cfg.secure:
            from edgedfl.netlab import can_shape_links

            if can_shape_links():
                self._start_lab()
        if self.cfg.secure:
            self._start_secure()
        elif self.lab is None and not self.broker_url and self._wants_mosquitto():
            self._start_mosquitto()
        elif self.lab is None and not self.broker_url:
            from edgedfl.brokers.launch import EmbeddedBroker

            self._broker = EmbeddedBroker().start()
            self.broker_url = self._broker.url
        if self.lab is None and not self.cfg.secure:
            self.shaping = "application" if self.cfg.shape_links else "none"
            self.nodes = node_configs(self.cfg, self.run_dir, self.broker_url)
        if self.cfg.swarm.admission != "open":
            self.nodes = self._admit(self.nodes)
        self.cfg.save(self.run_dir / "fleet_config.json")
        if on_broker is not None:
            on_broker(self)
        # stand-ins first: their bundles are exported before any node starts its join deadline
        order = sorted(self.nodes, key=lambda nd: nd.node_id not in self.android_ids)
        if self.cfg.engine == "ray":
            from edgedfl.emulation.ray_engine import RayHosts

            self.ray = RayHosts(self.cfg, self.run_dir)
            self.write_configs(order)
            self.hosts = self.groups(order)
            self.ray.start(self.hosts)
            return
        singles = [nd for nd in order if self.cfg.per_host == 1 or nd.node_id in self.android_ids]
        for node in singles:
            self.spawn(node)
        for key, group in self.groups([nd for nd in order if nd not in singles]).items():
            self.spawn_host(key, group)

    def groups(self, nodes: list[NodeConfig]) -> dict[str, list[NodeConfig]]:
        """Device hosts of ``per_host`` devices each, in node order: host id -> its devices."""
        k = self.cfg.per_host
        return {f"host{i // k:02d}": nodes[i : i + k] for i in range(0, len(nodes), k)}

    def _wants_mosquitto(self) -> bool:
        """Ray fleets and large ones get a Mosquitto of their own (the embedded broker is for a few devices)."""
        from edgedfl.brokers.launch import mosquitto_available

        big = self.cfg.engine == "ray" or self.cfg.devices > LARGE_FLEET
        if big and not mosquitto_available():
            if self.cfg.engine == "ray":
                raise EmulationError("engine 'ray' starts a Mosquitto broker: install mosquitto or pass --broker")
            return False
        return big

    def _start_mosquitto(self) -> None:
        """Mosquitto in <run>/broker with its open-file limit raised (a device is a connection); on every
        interface when the fleet spans a Ray cluster, so devices on other machines reach it."""
        from edgedfl.brokers.launch import MosquittoBroker

        remote = self.cfg.engine == "ray" and bool(self.cfg.ray_address)
        self._broker = MosquittoBroker(host="0.0.0.0" if remote else "127.0.0.1", workdir=self.run_dir / "broker",
                                       persistence=False, max_queued_messages=100_000,
                                       max_open_files=4 * self.cfg.devices + 1024).start()
        self.broker_url = self._broker.url
        if remote:  # the address the other machines use: this machine's, as Ray sees it
            from edgedfl.emulation.ray_engine import import_ray

            ip = import_ray().util.get_node_ip_address()
            self.broker_url = self.broker_url.replace("0.0.0.0", ip, 1)

    def _start_secure(self) -> None:
        """A Mosquitto with one mTLS listener, a password per device and the swarm's ACL; each device its URL."""
        from edgedfl.brokers.secure import secure_broker, write_secure_swarm

        names = [f"dev{i:02d}" for i in range(self.cfg.devices)]
        secure = write_secure_swarm(self.run_dir / "secure", self.cfg.swarm.name, names)
        self._broker = secure_broker(secure, workdir=self.run_dir / "broker").start()
        assert self._broker.tls_port is not None
        self.broker_url = secure.url(secure.admin, self._broker.host, self._broker.tls_port,
                                     max_payload=self._broker.message_size_limit)
        self.nodes = [dataclasses.replace(nd, broker=secure.url(nd.node_id, self._broker.host, self._broker.tls_port,
                                                                max_payload=self._broker.message_size_limit))
                      for nd in node_configs(self.cfg, self.run_dir, "")]
        self.shaping = "application" if self.cfg.shape_links else "none"

    def _start_lab(self) -> None:
        """Real links: the broker in a hub namespace, each device in its own, joined by shaped veths."""
        from edgedfl.brokers.launch import EmbeddedBroker
        from edgedfl.netlab import Lab

        self.lab = Lab(prefix="emu")
        with self.lab.inside(self.lab.hub):  # the broker's threads and socket live in the hub
            self._broker = EmbeddedBroker(host="0.0.0.0").start()
        port = self._broker.port
        nodes = node_configs(self.cfg, self.run_dir, "", app_shaping=False)
        self.nodes, self._hosts = [], {}
        for node in nodes:
            profile = get_profile(node.profile)
            host = self.lab.add_host(node.node_id, rate_bps=float(profile.link_rate_bps),
                                     loss_pct=profile.loss_pct, delay_ms=profile.latency_ms)
            addr, p = self.lab.endpoint(host, port)
            self._hosts[node.node_id] = host
            self.nodes.append(dataclasses.replace(node, broker=f"mqtt://{addr}:{p}?protocol=311"))
        self.broker_url = f"netns hub :{port}"
        self.shaping = "netns"

    def _admit(self, nodes: list[NodeConfig]) -> list[NodeConfig]:
        """Every device's key (in its state dir) and one key ring of the fleet; the devices admit only those keys.

        The emulator knows every device, so it runs a ``tofu`` swarm as ``keyring``: a stranger on the
        broker cannot join even before the devices said hello.
        """
        from edgedfl.wire.signing import KeyRing, load_or_create_signer, write_keyring

        ring = KeyRing()
        for node in nodes:
            signer = load_or_create_signer(Path(node.state_dir) / "identity.key")
            ring.add(signer.key_id, signer.public_bytes(), senders=[node.node_id])
        path = write_keyring(self.run_dir / "keyring.json", ring)
        swarm = dataclasses.replace(nodes[0].swarm, admission="keyring") if nodes else None
        return [dataclasses.replace(nd, keyring=str(path), swarm=swarm or nd.swarm) for nd in nodes]

    @property
    def android_ids(self) -> set[str]:
        return {nd.node_id for nd in self.nodes[len(self.nodes) - self.cfg.android :]} if self.cfg.android else set()

    def spawn(self, node: NodeConfig, **overrides: Any) -> None:
        node = dataclasses.replace(node, **overrides) if overrides else node
        state = Path(node.state_dir)
        state.mkdir(parents=True, exist_ok=True)
        path = state / "node_config.json"
        node.save(path)
        env = _child_env()
        log = open(state / "node.log", "ab")  # noqa: SIM115 - owned by the child process
        cmd = [sys.executable, "-m", "edgedfl.node", "--config", str(path)]
        if node.node_id in self.android_ids:
            from edgedfl.android.launch import prepare_standin

            cmd, extra_env = prepare_standin(path, state / "bundle", log)
            env.update(extra_env)
        if self.lab is not None:  # real links: the device runs in its own network namespace
            self.procs[node.node_id] = self.lab.popen(self._hosts[node.node_id], cmd, stdout=log,
                                                      stderr=subprocess.STDOUT, env=env)
        else:
            self.procs[node.node_id] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)

    @staticmethod
    def write_configs(nodes: list[NodeConfig], **overrides: Any) -> list[str]:
        """Each device's node_config.json in its state dir (what it runs with; the report reads them)."""
        paths = []
        for node in nodes:
            node = dataclasses.replace(node, **overrides) if overrides else node
            paths.append(str(node.save(Path(node.state_dir) / "node_config.json")))
        return paths

    def spawn_host(self, key: str, nodes: list[NodeConfig], **overrides: Any) -> None:
        """One device host process (``python -m edgedfl.emulation.host``) running ``nodes`` over a shared base."""
        self.hosts[key] = nodes
        paths = self.write_configs(nodes, **overrides)
        folder = self.run_dir / "hosts" / key
        folder.mkdir(parents=True, exist_ok=True)
        env = _child_env()
        log = open(folder / "host.log", "ab")  # noqa: SIM115 - owned by the child process
        cmd = [sys.executable, "-m", "edgedfl.emulation.host", "--configs", *paths,
               "--max-restarts", str(self.cfg.max_restarts), "--folder", str(folder)]
        self.procs[key] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)

    def log_of(self, key: str) -> Path:
        """The log of a device process (its node.log) or of a device host (hosts/<key>/host.log)."""
        return self.run_dir / "hosts" / key / "host.log" if key in self.hosts else self.run_dir / key / "node.log"

    def status(self) -> list[dict[str, Any]]:
        if self.ray is not None:
            live = self.ray.status()
            if live is not None:
                return live
        rows = []
        for node in self.nodes:
            try:
                rows.append(json.loads((Path(node.state_dir) / "status.json").read_text()))
            except (OSError, ValueError):
                rows.append({"node": node.node_id, "state": "starting", "round": 0, "bytes": 0})
        return rows

    def wait(self, on_tick: Callable[[list[dict[str, Any]]], None] | None = None, *,
             allow_failures: frozenset[str] = frozenset()) -> None:
        deadline = time.monotonic() + self.cfg.timeout_s
        if self.ray is not None:
            self.ray.wait(on_tick, self.status, deadline)
            self._gather_host_crashes()
            return
        while True:
            if on_tick:
                on_tick(self.status())
            running = [n for n, p in self.procs.items() if p.poll() is None]
            failed = [n for n, p in self.procs.items() if p.poll() not in (None, 0) and n not in allow_failures]
            for n in list(failed):
                if len(self.crashes.get(n, [])) < self.cfg.max_restarts:
                    self._restart(n)
                    failed.remove(n)
                    running.append(n)
            if failed:
                self.stop()
                tail = self.log_of(failed[0]).read_text(errors="replace")[-2000:]
                raise EmulationError(f"device {failed[0]} exited with {self.procs[failed[0]].returncode}:\n{tail}")
            if not running:
                self._gather_host_crashes()
                return
            if time.monotonic() > deadline:
                self.stop()
                raise EmulationError(f"the run did not finish within {self.cfg.timeout_s:g} s")
            time.sleep(0.5)

    def _restart(self, node_id: str) -> None:
        """A device process died: record it and start it again (it resumes from its newest checkpoint)."""
        code = self.procs[node_id].returncode
        self.crashes.setdefault(node_id, []).append(int(code))
        log.warning("device %s exited with %s; restarting it (%d of %d)", node_id, code,
                    len(self.crashes[node_id]), self.cfg.max_restarts)
        (self.run_dir / "crashes.json").write_text(json.dumps(self.crashes, sort_keys=True))
        if node_id in self.hosts:  # a host process died: all its devices start again and resume
            self.spawn_host(node_id, self.hosts[node_id], crash_after_round=0)
            return
        node = next(nd for nd in self.nodes if nd.node_id == node_id)
        self.spawn(node, crash_after_round=0)  # an injected crash happens once

    def _gather_host_crashes(self) -> None:
        """Devices a host restarted itself (hosts/<id>/crashes.json) join the run's crashes.json."""
        found = False
        for path in sorted((self.run_dir / "hosts").glob("*/crashes.json")):
            for node, errors in json.loads(path.read_text()).items():
                self.crashes.setdefault(node, []).extend(errors)
                found = True
        if found:
            (self.run_dir / "crashes.json").write_text(json.dumps(self.crashes, sort_keys=True))

    def run(self, on_tick: Callable[[list[dict[str, Any]]], None] | None = None, *,
            on_start: Callable[[Fleet], None] | None = None,
            on_broker: Callable[[Fleet], None] | None = None,
            on_finish: Callable[[Fleet], None] | None = None) -> dict[str, Any]:
        """Start every device, wait for all of them, stop; the run's report (also what ``edgedfl emulate`` prints).

        ``on_broker`` is called once the broker is up (before any device starts), ``on_start`` once
        every device was spawned, ``on_tick`` with every status poll, ``on_finish`` once every device
        finished, before the broker stops.
        """
        from edgedfl.emulation.report import build_report

        t0 = time.monotonic()
        previous = None
        if threading.current_thread() is threading.main_thread():
            # SIGTERM unwinds like Ctrl-C, so the finally below stops every device and the broker
            previous = signal.signal(signal.SIGTERM, _interrupt)
        try:
            self.start(on_broker)
            if on_start is not None:
                on_start(self)
            self.wait(on_tick)
            if on_finish is not None:
                on_finish(self)
        finally:
            self.stop()
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
        s = self.cfg.swarm
        return build_report(self.run_dir, method=s.method, tasks=list(self.cfg.tasks), seed=s.seed,
                            topology=s.topology, model=s.model, wall_s=time.monotonic() - t0)

    def stop(self) -> None:
        if self.ray is not None:
            self.ray.stop()
        for p in self.procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
        if self._broker is not None:
            self._broker.stop()
            self._broker = None
        if self.lab is not None:
            self.lab.close()
            self.lab = None
