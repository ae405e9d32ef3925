"""``python -m android_bridge.standin --config NODE_CONFIG [--bundle DIR] [--export]``: run one phone stand-in.

``--export`` first writes the bundle if the folder has none, in a separate
process (``edgedfl android export --node-config``): exporting needs torch and
the model code, which the phone never has; the stand-in process itself stays
on the bundle.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m android_bridge.standin", description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="NodeConfig JSON (what `edgedfl node` reads)")
    p.add_argument("--bundle", default=None, help="the phone's bundle folder (default: <state_dir>/bundle)")
    p.add_argument("--export", action="store_true", help="export the bundle first if the folder has none")
    p.add_argument("--lr", type=float, default=None, help="SGD learning rate (default: the manifest's)")
    args = p.parse_args(argv)
    logging.basicConfig(level=os.environ.get("EDGEDFL_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from edgedfl._parent import exit_with_parent
    from edgedfl.node.config import NodeConfig

    exit_with_parent()  # started by the emulator: stop once it is gone

    cfg = NodeConfig.load(args.config)
    bundle = Path(args.bundle) if args.bundle else Path(cfg.state_dir) / "bundle"
    if args.export and not (bundle / "manifest.json").is_file():
        cmd = [sys.executable, "-m", "edgedfl.cli", "android", "export", "--node-config", args.config,
               "--out", str(bundle)]
        if args.lr is not None:
            cmd += ["--lr", str(args.lr)]
        logging.getLogger("edgedfl.standin").info("exporting the bundle: %s", " ".join(cmd))
        subprocess.run(cmd, check=True)
    from android_bridge.standin.phone import Phone

    Phone(cfg, bundle, lr=args.lr).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
