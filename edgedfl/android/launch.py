"""Start a phone stand-in (``android_bridge/standin``) for a device of an emulated fleet.

The stand-in is not part of the installed package: it plays the phone, and
lives beside the app in the repository's ``android_bridge/``, which this
module finds next to the ``edgedfl`` source folder (an editable install or a
source checkout). Its bundle is exported here, in a separate process and
before the device starts, so the swarm's join deadline does not include the
export.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import IO, Any

from edgedfl.android import manifest as mf
from edgedfl.errors import BackendUnavailable


def repo_root() -> Path:
    """The folder holding ``edgedfl/`` and ``android_bridge/``."""
    root = Path(__file__).resolve().parents[2]
    if not (root / "android_bridge" / "standin" / "__main__.py").is_file():
        raise BackendUnavailable(
            f"the phone stand-in ships in the repository (android_bridge/standin), not found under {root}: "
            "run from a source checkout (pip install -e .)"
        )
    return root


def prepare_standin(config_path: str | os.PathLike[str], bundle: str | os.PathLike[str],
                    log: IO[Any] | None = None) -> tuple[list[str], dict[str, str]]:
    """Export the bundle of the device in ``config_path`` if ``bundle`` has none (blocking), and return
    the stand-in's command line and the environment it needs on top of the caller's."""
    root = repo_root()
    bundle = Path(bundle)
    if not (bundle / mf.MANIFEST).is_file():
        subprocess.run([sys.executable, "-m", "edgedfl.cli", "android", "export", "--node-config",
                        str(config_path), "--out", str(bundle)], check=True, stdout=log, stderr=log)
    path = os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH", "")) if p)
    return ([sys.executable, "-m", "android_bridge.standin", "--config", str(config_path), "--bundle", str(bundle)],
            {"PYTHONPATH": path})
