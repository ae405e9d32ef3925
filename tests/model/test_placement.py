"""The one device rule (edgedfl.model.placement), checked on the CPU: moves are no-ops there,
results come back as numpy, the device setting resolves and validates, and the paths that
follow the rule give bit-for-bit what the plain CPU code gives.

The same paths on a GPU are in tests/model/test_cuda.py (skipped without one)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgedfl.adapters import AdapterConfig, attach_adapter
from edgedfl.devices import DeviceConfig
from edgedfl.errors import BackendUnavailable, ConfigError
from edgedfl.model import placement
from edgedfl.model.batching import collate_prompts
from edgedfl.model.placement import model_device, resolve_device, to_device, to_numpy
from edgedfl.model.tiny import tiny_model, tiny_tokenizer

PROMPTS = ["Question: 2+3?\nAnswer:", "Is the sky green?", "abc", "Question: 12-7?\nAnswer:"]


@pytest.fixture(scope="module")
def adapted():
    return attach_adapter(tiny_model(seed=0), AdapterConfig(method="solora", rank=4, num_slots=2, density=0.25))


def test_to_device_on_the_cpu_hands_back_the_very_tensors():
    batch = collate_prompts(tiny_tokenizer(), PROMPTS, 64)
    batch["note"] = "not a tensor"

    moved = to_device(batch, torch.device("cpu"))

    assert moved.keys() == batch.keys()
    assert all(moved[k] is batch[k] for k in batch)  # no copy, no new storage: a true no-op


def test_to_numpy_returns_host_arrays_from_tensors_that_need_grad():
    t = torch.arange(6.0).reshape(2, 3).requires_grad_(True)

    out = to_numpy(t * 2)

    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    np.testing.assert_array_equal(out, np.arange(6.0).reshape(2, 3) * 2)


def test_model_device_of_a_module_an_adapted_model_and_an_empty_module(adapted):
    assert model_device(tiny_model(seed=0)) == torch.device("cpu")
    assert model_device(adapted) == torch.device("cpu")  # through its peft_model
    assert model_device(torch.nn.Identity()) == torch.device("cpu")


def test_resolve_device_auto_cpu_cuda(monkeypatch):
    monkeypatch.setattr(placement, "cuda_available", lambda: False)
    assert resolve_device("auto", want_cuda=True) == "cpu"
    assert resolve_device("cpu", want_cuda=True) == "cpu"
    with pytest.raises(BackendUnavailable, match="sees no CUDA GPU"):
        resolve_device("cuda")

    monkeypatch.setattr(placement, "cuda_available", lambda: True)  # a GPU torch would see
    assert resolve_device("auto", want_cuda=True) == "cuda"
    assert resolve_device("auto", want_cuda=False) == "cpu"
    assert resolve_device("cpu", want_cuda=True) == "cpu"  # bitsandbytes may stay on the CPU
    assert resolve_device("cuda:1") == "cuda:1"
    # auto leaves a model that already lives on an accelerator where it is
    assert resolve_device("auto", current=torch.device("cuda", 1)) == "cuda:1"
    with pytest.raises(ConfigError, match="device='gpu'"):
        resolve_device("gpu")


def test_device_setting_is_validated_and_reachable_from_json_and_the_train_cli(tmp_path):
    from edgedfl.cli import build_parser
    from edgedfl.cli._local import config_from_args
    from edgedfl.node.config import NodeConfig

    assert DeviceConfig().device == "auto"
    with pytest.raises(ConfigError, match=r"DeviceConfig\.device='gpu'"):
        DeviceConfig(device="gpu")
    node = NodeConfig(device="cpu", profile="jetson")
    assert NodeConfig.load(node.save(tmp_path / "node.json")).device == "cpu"

    args = build_parser().parse_args(["train", "--model", "tiny", "--device", "cpu", "--out", str(tmp_path / "r")])
    assert config_from_args(args).device == "cpu"


def test_signature_is_numpy_and_bit_for_bit_the_plain_cpu_computation(adapted):
    from edgedfl.node.signature import pooled_hidden

    tok = tiny_tokenizer()

    got = pooled_hidden(adapted, tok, PROMPTS, max_length=64, batch_size=8)

    batch = collate_prompts(tok, PROMPTS, 64)  # the computation as it was before the device rule
    with torch.no_grad(), adapted.peft_model.disable_adapter():
        h = adapted.peft_model(**batch, output_hidden_states=True).hidden_states[-1].float()  # (B, T, H)
    adapted.activate(adapted.active_slot)
    m = batch["attention_mask"].unsqueeze(-1).float()  # (B, T, 1)
    want = ((h * m).sum(1) / m.sum(1)).numpy().astype(np.float64)  # (B, H)
    assert isinstance(got, np.ndarray) and got.dtype == np.float64
    np.testing.assert_array_equal(got, want)


def test_signature_at_a_middle_depth_pools_that_decoder_layer_s_output(adapted):
    from edgedfl.node.signature import pooled_hidden
    from edgedfl.topology.signatures import signature_layer

    tok = tiny_tokenizer()
    layers = len(adapted.peft_model.base_model.model.model.layers)
    assert [signature_layer(30, d) for d in (0.01, 0.5, 0.6, 1.0)] == [1, 15, 18, 30]
    assert signature_layer(layers, 0.5) == 1 and layers == 2  # the tiny model: layer 1 of 2

    got = pooled_hidden(adapted, tok, PROMPTS, max_length=64, batch_size=8, depth=0.5)
    last = pooled_hidden(adapted, tok, PROMPTS, max_length=64, batch_size=8, depth=1.0)

    batch = collate_prompts(tok, PROMPTS, 64)
    with torch.no_grad(), adapted.peft_model.disable_adapter():
        h = adapted.peft_model(**batch, output_hidden_states=True).hidden_states[1].float()  # (B, T, H)
    adapted.activate(adapted.active_slot)
    m = batch["attention_mask"].unsqueeze(-1).float()  # (B, T, 1)
    want = ((h * m).sum(1) / m.sum(1)).numpy().astype(np.float64)  # (B, H)
    np.testing.assert_array_equal(got, want)  # the forward stops at that layer: the same tensor, bit for bit
    assert not np.allclose(got, last)  # another layer: another signature


def test_calibration_masks_and_routing_features_come_back_as_numpy(adapted):
    from edgedfl.routing.calibrate import routing_features
    from edgedfl.routing.config import RouterConfig

    tok = tiny_tokenizer()
    stats = adapted.calibrate([collate_prompts(tok, PROMPTS, 64)], slot=0)
    masks, densities = adapted.masks_from_stats(0, stats)
    adapted.set_masks(0, masks, densities)

    assert all(isinstance(s.cov, np.ndarray) and s.cov.dtype == np.float64 for s in stats.values())
    got = adapted.get_masks(0)
    assert got.keys() == masks.keys()
    assert all(got[k].dtype == bool and np.array_equal(got[k], masks[k]) for k in masks)
    feats = routing_features(adapted, tok, PROMPTS, RouterConfig(), slot=1, max_length=64)
    assert isinstance(feats, np.ndarray) and feats.shape[0] == len(PROMPTS)
