"""Start a phone stand-in (``android_bridge/standin``) for a device of an emulated fleet.

The stand-in is not part of the installed package: it plays the phone, and
lives beside the app in the repository's ``android_bridge/``. The caller may
name the folder that holds ``android_bridge/``; by default it is wherever
``android_bridge`` is importable from, else the source checkout next to
``edgedfl/`` (an editable install).

The device's bundle is exported first, by :func:`~edgedfl.android.export.export_bundle` in a
separate process (``python -m edgedfl.android.launch``) and before the device starts,
so the swarm's join deadline does not include the export. Its settings come
from the device's node config file, read as JSON: ``NodeConfig`` lives a layer
above (``edgedfl.node``), so :func:`export_config` maps the saved fields the way
``edgedfl android export --node-config`` maps the loaded object.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from edgedfl.adapters.config import AdapterConfig
from edgedfl.android import manifest as mf
from edgedfl.errors import BackendUnavailable, ConfigError
from edgedfl.routing.config import RouterConfig
from edgedfl.topology.signatures import DEFAULT_DEPTH

if TYPE_CHECKING:
    from edgedfl.android.export import AndroidExportConfig


def standin_root() -> Path:
    """The folder holding ``android_bridge/``: where it is importable from, else the source checkout."""
    spec = importlib.util.find_spec("android_bridge")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in map(Path, locations):
        if (location / "standin" / "__main__.py").is_file():
            return location.resolve().parent
    root = Path(__file__).resolve().parents[2]
    if not (root / "android_bridge" / "standin" / "__main__.py").is_file():
        raise BackendUnavailable(
            f"the phone stand-in ships in the repository (android_bridge/standin), not found under {root}: "
            "run from a source checkout (pip install -e .) or name the folder that holds android_bridge/"
        )
    return root


def export_config(node: Mapping[str, Any], out: str | os.PathLike[str]) -> AndroidExportConfig:
    """The bundle settings of one device from its node config as saved (``NodeConfig.to_json``), written to ``out``.

    The same fields as ``edgedfl android export --node-config``: the swarm's model, adapter and batch settings,
    the device's id, data and broker, planned slot 0.
    """
    from edgedfl.android.export import AndroidExportConfig

    try:
        s = node["swarm"]
        if "adapter" not in s or "train" not in s:
            raise ConfigError("node config has a flat swarm (written before its adapter/train parts): load and "
                              "save it once with NodeConfig.load(path).save(path) to convert it")
        # the swarm's adapter as saved: its seed and num_slots already follow the swarm (SwarmConfig)
        adapter = AdapterConfig.from_dict(dict(s["adapter"]))
        return AndroidExportConfig(
            model=s["model"], node=node["node_id"], task=node["data"], swarm=s["name"], broker=node["broker"],
            batch_size=s["train"]["batch_size"], max_length=s["train"]["max_length"], local_steps=s["local_steps"],
            adapter=adapter, swarm_settings=dict(s), slot=0, out=str(out),
            signature_depth=s.get("signature_depth", DEFAULT_DEPTH),
            router=RouterConfig.from_dict(dict(s["router"])) if "router" in s else RouterConfig(),
        )
    except KeyError as exc:
        raise ConfigError(f"node config lacks the field {exc.args[0]!r}") from exc


def export_for_node(config_path: str | os.PathLike[str], bundle: str | os.PathLike[str]) -> Path:
    """Export the bundle of the device in ``config_path`` to ``bundle`` (in this process; torch, executorch)."""
    from edgedfl.android import is_executorch_available
    from edgedfl.android.export import export_bundle

    if not is_executorch_available():
        raise BackendUnavailable("android export needs executorch: pip install -e '.[android]'")
    try:
        node = json.loads(Path(config_path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read the node config {config_path}: {exc}") from exc
    return export_bundle(export_config(node, bundle))


def prepare_standin(config_path: str | os.PathLike[str], bundle: str | os.PathLike[str],
                    log: IO[Any] | None = None, *,
                    root: str | os.PathLike[str] | None = None) -> tuple[list[str], dict[str, str]]:
    """Export the bundle of the device in ``config_path`` if ``bundle`` has none (blocking), and return
    the stand-in's command line and the environment it needs on top of the caller's. ``root`` is the
    folder holding ``android_bridge/`` (default: :func:`standin_root`)."""
    root = Path(root) if root is not None else standin_root()
    bundle = Path(bundle)
    if not (bundle / mf.MANIFEST).is_file():
        subprocess.run([sys.executable, "-m", "edgedfl.android.launch", "--config", str(config_path),
                        "--out", str(bundle)], check=True, stdout=log, stderr=log)
    path = os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH", "")) if p)
    return ([sys.executable, "-m", "android_bridge.standin", "--config", str(config_path), "--bundle", str(bundle)],
            {"PYTHONPATH": path})


def main(argv: list[str] | None = None) -> int:
    """``python -m edgedfl.android.launch --config NODE_CONFIG --out DIR``: export one device's bundle."""
    p = argparse.ArgumentParser(prog="python -m edgedfl.android.launch", description=main.__doc__)
    p.add_argument("--config", required=True, help="NodeConfig JSON (what `edgedfl node` reads)")
    p.add_argument("--out", required=True, help="the bundle folder to write")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("edgedfl.android").setLevel(logging.INFO)
    out = export_for_node(args.config, args.out)
    manifest = json.loads((out / mf.MANIFEST).read_text())
    files = sorted(p.name for p in out.iterdir())
    print(f"bundle for {manifest['node']} (model {manifest['model']}, slot {manifest['slot']}) in {out} "
          f"({manifest['export_s']} s): {', '.join(files)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
