"""``python -m edgedfl.node --config FILE``: run one device (what ``edgedfl node`` and the emulator start)."""

import argparse
import logging
import os
import sys


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m edgedfl.node")
    p.add_argument("--config", required=True)
    p.add_argument("--threads", type=int, default=int(os.environ.get("EDGEDFL_THREADS", "1")))
    args = p.parse_args()
    from edgedfl._parent import exit_with_parent

    exit_with_parent()  # started by the emulator: stop once it is gone
    logging.basicConfig(level=os.environ.get("EDGEDFL_LOG_LEVEL", "INFO"), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    import torch

    torch.set_num_threads(args.threads)
    from edgedfl.node.config import NodeConfig
    from edgedfl.node.node import Node

    Node(NodeConfig.load(args.config)).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
