"""Configs: JSON round trip with nested configs, unknown keys and bad values named."""

from __future__ import annotations

import json

import pytest

from edgedfl.errors import ConfigError
from edgedfl.node.config import NodeConfig, SwarmConfig
from edgedfl.train.local import LocalRunConfig


def test_nested_configs_come_back_as_objects_from_json(tmp_path):
    cfg = NodeConfig(node_id="dev07", swarm=SwarmConfig(rounds=7, lr=3e-3))
    back = NodeConfig.load(cfg.save(tmp_path / "node.json"))
    assert isinstance(back.swarm, SwarmConfig)
    assert back == cfg and back.swarm.rounds == 7
    local = LocalRunConfig.from_dict(json.loads(LocalRunConfig().to_json()))
    assert type(local.adapter).__name__ == "AdapterConfig" and type(local.train).__name__ == "TrainConfig"
    assert local == LocalRunConfig()


def test_a_bad_field_inside_a_nested_config_is_named():
    with pytest.raises(ConfigError, match="rounds"):
        NodeConfig.from_dict({"node_id": "dev00", "swarm": {"rounds": 0}})
    with pytest.raises(ConfigError, match="unknown field"):
        NodeConfig.from_dict({"node_id": "dev00", "swarm": {"roundz": 3}})


def test_a_swarm_without_a_learning_rate_trains_at_its_method_s_tuned_default():
    from edgedfl.adapters.methods import get_method

    tuned = {"solora": 5e-3, "lora": 2e-3, "ffa": 1e-2}  # README.md, "Learning rates"
    for method, lr in tuned.items():
        swarm = SwarmConfig(method=method)
        assert get_method(method).default_lr == lr
        assert swarm.lr == 0 and swarm.learning_rate == lr
        assert swarm.train_config().lr == lr
    assert SwarmConfig(method="ffa", lr=3e-4).train_config().lr == 3e-4
    with pytest.raises(ConfigError, match="lr"):
        SwarmConfig(lr=-1.0)
