"""A swarm's evaluations generate ``train.max_new_tokens`` tokens per answer, so longer answers can be scored."""

from __future__ import annotations

import dataclasses

from edgedfl.data.examples import Example
from edgedfl.node.config import NodeConfig, SwarmConfig
from edgedfl.node.torch_learner import TorchLearner


def _learner(tmp_path, budget: int) -> TorchLearner:
    swarm = SwarmConfig(model="tiny")
    swarm = dataclasses.replace(swarm, train=dataclasses.replace(swarm.train, max_new_tokens=budget))
    learner = TorchLearner(NodeConfig(swarm=swarm, state_dir=str(tmp_path / f"s{budget}"), quant="none"))
    learner.load([Example("Task: t\nAnswer:", " x", "t")])
    learner.place(0)
    return learner


def test_the_generation_budget_is_the_swarms(tmp_path):
    prompts = ["Task: date to ISO format\nDate: 2 January 2046\nAnswer:"] * 2
    texts = {budget: _learner(tmp_path, budget).answer(prompts, "own").texts for budget in (3, 12)}
    # the same seeded tiny model, greedy: the short budget's answers are the long one's first tokens, cut short
    # (the untrained model rambles to the limit: the limit is what the swarm said)
    for short, long in zip(texts[3], texts[12], strict=True):
        assert long.startswith(short) and len(long) > len(short)
