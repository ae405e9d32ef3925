"""``edgedfl node --config FILE``: run this device in a swarm (a Jetson, a laptop, a phone bridge)."""

from __future__ import annotations

import argparse
import json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="a NodeConfig JSON file (its 'swarm' field is shared)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")


def run(args: argparse.Namespace) -> int:
    import torch

    from edgedfl import Node, NodeConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    final = Node(NodeConfig.load(args.config)).run()
    print(json.dumps(final, indent=2, sort_keys=True, default=str))
    return 0
