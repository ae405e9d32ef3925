"""Configs: JSON round trip with nested configs, unknown keys and bad values named."""

from __future__ import annotations

import json

import pytest

from edgedfl.adapters.config import AdapterConfig
from edgedfl.errors import ConfigError
from edgedfl.node.config import NodeConfig, SwarmConfig
from edgedfl.train.config import TrainConfig
from edgedfl.train.local import LocalRunConfig


def test_nested_configs_come_back_as_objects_from_json(tmp_path):
    cfg = NodeConfig(node_id="dev07", swarm=SwarmConfig(rounds=7, adapter=AdapterConfig(method="lora", rank=4)))
    back = NodeConfig.load(cfg.save(tmp_path / "node.json"))
    assert isinstance(back.swarm, SwarmConfig)
    assert back == cfg and back.swarm.rounds == 7
    local = LocalRunConfig.from_dict(json.loads(LocalRunConfig().to_json()))
    assert type(local.adapter).__name__ == "AdapterConfig" and type(local.train).__name__ == "TrainConfig"
    assert local == LocalRunConfig()
    parts = {"adapter": "AdapterConfig", "train": "TrainConfig", "aggregation": "AggregationConfig",
             "protocol": "ProtocolConfig"}
    assert {k: type(getattr(back.swarm, k)).__name__ for k in parts} == parts


def test_a_swarm_s_parts_follow_its_own_fields():
    s = SwarmConfig(seed=7, rounds=4, local_steps=5, max_slots=3, adapter=AdapterConfig(method="ffa", seed=1))
    assert (s.adapter.seed, s.adapter.num_slots, s.train.seed, s.train.max_steps) == (7, 3, 7, 20)
    assert s.aggregation.method == "ffa" and s.method == "ffa"
    assert SwarmConfig(topology="flat").adapter.num_slots == 1


def test_an_old_flat_swarm_config_file_still_loads(tmp_path):
    flat = {"node_id": "dev01", "data": "yesno", "swarm": {
        "name": "old", "method": "lora", "rank": 4, "alpha": 8.0, "density": 0.3, "lr": 3e-3, "batch_size": 4,
        "max_length": 96, "aggregator": "median", "clip_norm": 0.0, "precision": "int8", "rounds": 2}}
    (tmp_path / "node.json").write_text(json.dumps(flat))
    cfg = NodeConfig.load(tmp_path / "node.json")
    s = cfg.swarm
    assert (s.method, s.adapter.rank, s.adapter.alpha, s.adapter.density) == ("lora", 4, 8.0, 0.3)
    assert (s.train.lr, s.train.batch_size, s.train.max_length, s.train.progress) == (3e-3, 4, 96, False)
    assert (s.aggregation.robust, s.aggregation.clip_norm, s.precision, s.rounds) == ("median", None, "int8", 2)
    assert NodeConfig.load(cfg.save(tmp_path / "again.json")) == cfg  # and it saves in the nested form
    with pytest.raises(ConfigError, match="rank"):
        NodeConfig.from_dict({"swarm": {"rank": 0}})  # a bad old flat value is still named


def test_a_bad_field_inside_a_nested_config_is_named():
    with pytest.raises(ConfigError, match="rounds"):
        NodeConfig.from_dict({"node_id": "dev00", "swarm": {"rounds": 0}})
    with pytest.raises(ConfigError, match="unknown field"):
        NodeConfig.from_dict({"node_id": "dev00", "swarm": {"roundz": 3}})


def test_a_swarm_without_a_learning_rate_trains_at_its_method_s_tuned_default():
    from edgedfl.adapters.methods import get_method

    tuned = {"solora": 5e-3, "lora": 2e-3, "ffa": 1e-2}  # README.md, "Learning rates"
    for method, lr in tuned.items():
        swarm = SwarmConfig(adapter=AdapterConfig(method=method))
        assert get_method(method).default_lr == lr
        assert swarm.train.lr == 0 and swarm.learning_rate == lr
        assert swarm.train_config().lr == lr
    assert SwarmConfig(train=TrainConfig(lr=3e-4)).train_config().lr == 3e-4
    with pytest.raises(ConfigError, match="lr"):
        SwarmConfig(train=TrainConfig(lr=-1.0))


def test_the_signature_depth_and_split_rule_reach_the_clustering_from_a_file(tmp_path):
    path = tmp_path / "swarm.json"
    path.write_text(json.dumps({"signature_depth": 1.0, "split_spread": 2.5, "min_split": 0.01}))
    swarm = SwarmConfig.load(path)
    assert swarm.signature_depth == 1.0
    cfg = swarm.cluster_config()
    assert (cfg.spread_factor, cfg.min_split_distance) == (2.5, 0.01)
    assert SwarmConfig().signature_depth == 0.6 and SwarmConfig().cluster_config().spread_factor == 3.5
    for bad in (0.0, 1.5):
        with pytest.raises(ConfigError, match="signature_depth"):
            SwarmConfig(signature_depth=bad)
