"""Final accuracy per task, split by who answered: devices of the task's own cluster, and the rest.

Reads one emulated run folder (``runs/paper-work/runs/<variant>-lr<lr>``): a device
answers every task with its inference setup; for a method with experts, the
"other clusters" figure is how well an expert works once it has travelled.

    python bench/own_vs_other.py runs/paper-work/runs/edgedfl-lr0.005
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path


def main(run: Path) -> None:
    own: dict[str, list[float]] = defaultdict(list)
    other: dict[str, list[float]] = defaultdict(list)
    for d in sorted(run.glob("dev*")):
        final = json.loads((d / "final.json").read_text())
        for task, acc in final["final"]["modes"][final["final"]["setup"]].items():
            (own if task == final["task"] else other)[task].append(acc)
    print("| task | own cluster's devices | other devices |\n|---|---|---|")
    for task in sorted(own):
        print(f"| {task} | {sum(own[task]) / len(own[task]):.3f} | {sum(other[task]) / len(other[task]):.3f} |")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
