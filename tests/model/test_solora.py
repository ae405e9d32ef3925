"""Sparse-and-orthogonal LoRA: orthogonal slots, fixed masks, density budget, baselines."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgedfl.adapters import AdapterConfig, attach_adapter, solora
from edgedfl.errors import AdapterError, ConfigError
from edgedfl.model.tiny import tiny_model, tiny_tokenizer
from edgedfl.train.batching import collate_prompts


def _calib_batch(tok):
    texts = ["the quick brown fox jumps over the lazy dog", "12 + 7 = 19", "Task: topic\nA match report"] * 2
    return collate_prompts(tok, texts, 64)


def test_slots_are_exactly_orthogonal_in_every_layer():
    adapted = attach_adapter(tiny_model(), AdapterConfig(num_slots=4, rank=4))
    for layer in adapted.layers:
        for i in range(4):
            for j in range(4):
                if i == j:
                    continue
                prod = adapted.A(i, layer) @ adapted.A(j, layer).T  # (r, r)
                assert prod.abs().max().item() <= 1e-6, (layer, i, j)
        # and a slot's own rows have the configured norm (not degenerate)
        norms = adapted.A(0, layer).norm(dim=1)
        assert torch.allclose(norms, torch.full_like(norms, adapted.config.a_scale), atol=1e-5)


def test_slot_basis_is_stable_when_slots_are_added():
    a2 = solora.slot_A(7, "layer", 64, 4, 1, 2, 1.0)
    a6 = solora.slot_A(7, "layer", 64, 4, 1, 6, 1.0)
    np.testing.assert_array_equal(a2, a6)


def test_fallback_when_slots_times_rank_exceeds_d_in_warns():
    # tiny model: d_in = 64; 9 slots x rank 8 = 72 > 64
    with pytest.warns(solora.OrthogonalityFallbackWarning):
        adapted = attach_adapter(tiny_model(), AdapterConfig(num_slots=9, rank=8))
    layer = next(iter(adapted.layers))
    assert adapted.A(0, layer).shape == (8, 64)


def test_masked_entries_stay_exactly_zero_after_50_adamw_steps():
    tok = tiny_tokenizer()
    adapted = attach_adapter(tiny_model(), AdapterConfig(num_slots=2, rank=4, density=0.3))
    stats = adapted.calibrate([_calib_batch(tok)])
    masks, dens = adapted.masks_from_stats(0, stats)
    adapted.set_masks(0, masks, dens)
    opt = torch.optim.AdamW(adapted.trainable_parameters(), lr=5e-2, weight_decay=0.1)
    batch = _calib_batch(tok)
    for _ in range(50):
        out = adapted.peft_model(**batch, labels=batch["input_ids"])
        out.loss.backward()
        opt.step()
        opt.zero_grad()
        adapted.apply_masks(0)
    kept_nonzero = 0
    for layer in adapted.layers:
        B, M = adapted.B(0, layer), adapted.masks[0][layer]
        assert (B[M == 0] == 0).all(), layer
        kept_nonzero += int((B[M == 1] != 0).sum())
    assert kept_nonzero > 0  # training did move the kept entries
    # A never moved: it is regenerated from the seed on every peer
    fresh = attach_adapter(tiny_model(), AdapterConfig(num_slots=2, rank=4, density=0.3))
    for layer in adapted.layers:
        assert torch.equal(adapted.A(0, layer), fresh.A(0, layer))


def test_density_per_layer_matches_the_budget_allocation():
    tok = tiny_tokenizer()
    cfg = AdapterConfig(num_slots=1, rank=4, density=0.25, density_min=0.05)
    adapted = attach_adapter(tiny_model(), cfg)
    stats = adapted.calibrate([_calib_batch(tok)])
    masks, dens = adapted.masks_from_stats(0, stats)
    shapes = adapted.layer_shapes()
    kept = total = 0
    for layer, mask in masks.items():
        numel = shapes[layer.removesuffix(".lora_B")][1] * cfg.rank  # masks are keyed by the tensor they mask
        assert mask.sum() == solora.keep_count(dens[layer], numel), layer
        assert cfg.density_min - 1e-9 <= dens[layer] <= 1.0
        kept += mask.sum()
        total += numel
    assert abs(kept / total - cfg.density) < 0.01
    # the proxy actually differentiates layers (not a uniform allocation)
    assert max(dens.values()) - min(dens.values()) > 1e-3


def test_allocation_follows_scores_and_meets_budget():
    sizes = {"a": 1000, "b": 1000, "c": 2000}
    dens = solora.allocate_densities(sizes, {"a": 0.1, "b": 0.4, "c": 0.2}, budget=0.2, floor=0.01)
    assert dens["b"] > dens["c"] > dens["a"]
    assert abs(sum(dens[k] * n for k, n in sizes.items()) / 4000 - 0.2) < 1e-6


def test_masks_are_identical_for_identical_statistics():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((100, 8))
    stats = solora.LayerStats(x.T @ x, float((x * x).sum()), 100, 64, 32)
    m1 = solora.make_mask(3, "l", 1, 32, 8, 0.3, np.diag(stats.cov))
    m2 = solora.make_mask(3, "l", 1, 32, 8, 0.3, np.diag(stats.cov))
    np.testing.assert_array_equal(m1, m2)
    assert not np.array_equal(m1, solora.make_mask(4, "l", 1, 32, 8, 0.3, np.diag(stats.cov)))


def test_baselines_train_what_their_method_says():
    lora = attach_adapter(tiny_model(), AdapterConfig(method="lora", rank=4))
    ffa = attach_adapter(tiny_model(), AdapterConfig(method="ffa", rank=4))
    layer = next(iter(lora.layers))
    assert lora.A(0, layer).requires_grad and lora.B(0, layer).requires_grad
    assert not ffa.A(0, layer).requires_grad and ffa.B(0, layer).requires_grad
    assert set(lora.get_update(0)) == {f"{n}.lora_{w}" for n in lora.layers for w in "AB"}
    assert set(ffa.get_update(0)) == {f"{n}.lora_B" for n in ffa.layers}
    assert not ffa.masks  # dense B
    # same seed -> same A on every device (decentralized averaging needs a common start)
    other = attach_adapter(tiny_model(), AdapterConfig(method="ffa", rank=4))
    assert torch.equal(ffa.A(0, layer), other.A(0, layer))


def test_update_round_trip_and_shape_errors():
    adapted = attach_adapter(tiny_model(), AdapterConfig(rank=4, density=0.5))
    upd = adapted.get_update(0)
    rng = np.random.default_rng(0)
    noisy = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in upd.items()}
    adapted.set_update(0, noisy)
    got = adapted.get_update(0)
    for k in got:
        mask = adapted.get_masks(0)[k]
        np.testing.assert_array_equal(got[k][~mask], 0)  # masks re-applied on load
        np.testing.assert_allclose(got[k][mask], noisy[k][mask])
    bad = dict(noisy)
    key = next(iter(bad))
    bad[key] = bad[key][:, :2]
    with pytest.raises(AdapterError):
        adapted.set_update(0, bad)


def test_config_errors_name_field_and_value():
    with pytest.raises(ConfigError, match="density=1.5"):
        AdapterConfig(density=1.5)
    with pytest.raises(ConfigError, match="method='dora'"):
        AdapterConfig(method="dora")


def test_a_target_that_matches_no_layer_is_named_not_silently_skipped(caplog):
    # a fused projection (phi3's qkv_proj) leaves q/k/v_proj matching nothing: only o_proj would train
    with caplog.at_level("WARNING", logger="edgedfl.adapters"):
        adapted = attach_adapter(tiny_model(seed=0), AdapterConfig(target_modules=["qkv_proj", "o_proj"]))
    assert {name.rsplit(".", 1)[-1] for name in adapted.layers} == {"o_proj"}
    assert "['qkv_proj'] match no layer" in caplog.text
