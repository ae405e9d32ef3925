"""``edgedfl dashboard``: a local web page for a live swarm (``--broker URL --swarm NAME``) or a finished run (``--run DIR``).

Prints the page's URL (one line, flushed) and serves until Ctrl-C. Binds
127.0.0.1 unless ``--host`` says otherwise; ``--port 0`` takes a free port.
Needs the ``dashboard`` extra (``pip install 'edgedfl[dashboard]'``).
"""

from __future__ import annotations

import argparse
import json
import signal
from pathlib import Path
from types import FrameType


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--broker", default=None, help="mqtt://host:port (or mqtts://...) of the swarm's broker")
    p.add_argument("--swarm", default=None, help="the swarm's name (its topics are edgedfl/NAME/...)")
    p.add_argument("--run", default=None, metavar="DIR", help="show a run directory (edgedfl emulate --out) instead")
    p.add_argument("--keyring", default=None, metavar="FILE",
                   help="verify status messages against this key ring (default: trust each device's key "
                        "from its first signed hello)")
    p.add_argument("--admission", default=None, choices=["tofu", "keyring", "open"],
                   help="how status messages are verified (default: keyring with --keyring, else tofu)")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8765, help="port to serve on (0: a free one; default 8765)")


def _run_swarm_name(run: Path) -> str:
    for cfg in sorted(run.glob("*/node_config.json")):
        name = json.loads(cfg.read_text()).get("swarm", {}).get("name")
        if name:
            return str(name)
    return "run"


def run(args: argparse.Namespace) -> int:
    from edgedfl.dashboard.server import Dashboard
    from edgedfl.dashboard.view import SwarmView
    from edgedfl.errors import ConfigError
    from edgedfl.wire.signing import read_keyring

    if bool(args.run) == bool(args.broker):
        raise ConfigError("give either --broker URL --swarm NAME (a live swarm) or --run DIR (a finished run)")
    if args.run:
        run_dir = Path(args.run)
        if not run_dir.is_dir():
            raise ConfigError(f"--run {run_dir}: not a directory")
        view = SwarmView(args.swarm or _run_swarm_name(run_dir), admission="open")
        view.load_run(run_dir)
    else:
        if not args.swarm:
            raise ConfigError("--broker needs --swarm NAME")
        admission = args.admission or ("keyring" if args.keyring else "tofu")
        keyring = read_keyring(args.keyring) if args.keyring else None
        if admission == "keyring" and keyring is None:
            raise ConfigError("--admission keyring needs --keyring FILE")
        view = SwarmView(args.swarm, admission=admission, keyring=keyring)
    dash = Dashboard(view, host=args.host, port=args.port)

    def _stop(signum: int, frame: FrameType | None) -> None:
        dash.stop()

    signal.signal(signal.SIGTERM, _stop)
    try:
        url = dash.start()
        if args.broker:
            dash.follow(args.broker)
        print(url, flush=True)
        dash.wait()
    except KeyboardInterrupt:
        pass
    finally:
        dash.stop()
    return 0
