"""RoutedModel on the tiny model: routing accuracy on separated inputs, every mode, generation, bundles."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from routing_helpers import synthetic_prompts, tiny_routed

from edgedfl.errors import ConfigError, TensorValidationError
from edgedfl.model.batching import collate_prompts
from edgedfl.routing.bundle import LATENT_FILE, load_bundle, save_bundle
from edgedfl.routing.config import RouterConfig
from edgedfl.routing.router import position_ids

K = 3


@pytest.fixture(scope="module")
def routed_tok():
    return tiny_routed(K, rank=4, seed=0)


@pytest.fixture(scope="module")
def mixed(routed_tok):
    """Held-out prompts of every expert, interleaved (a mixed batch), and their true experts."""
    _, tok = routed_tok
    per = [synthetic_prompts(k, 6, seed=99) for k in range(K)]
    prompts = [per[k][i] for i in range(6) for k in range(K)]
    truth = [k for _ in range(6) for k in range(K)]
    return collate_prompts(tok, prompts, 64), truth


def _real(batch):
    return batch["attention_mask"].bool()


def _merged_reference(routed, batch):
    """Logits of the base with Σ_k s·B_k·A_k added to every adapted weight (merge-all by hand)."""
    adapted = routed.adapted
    deltas = {}
    with torch.no_grad():
        for name, layer in adapted.layers.items():
            d = sum(float(layer.scaling[f"slot{k}"]) * adapted.B(k, name) @ adapted.A(k, name) for k in range(K))
            layer.base_layer.weight += d
            deltas[name] = d
        try:
            with adapted.peft_model.disable_adapter():
                return adapted.peft_model(**batch, position_ids=position_ids(batch["attention_mask"])).logits
        finally:
            for name, layer in adapted.layers.items():
                layer.base_layer.weight -= deltas[name]


def test_implicit_routing_picks_the_right_expert(routed_tok, mixed):
    routed, _ = routed_tok
    batch, truth = mixed
    route = routed.route(batch["input_ids"], batch["attention_mask"])
    assert route.experts.tolist() == truth
    assert route.distances.shape == (len(truth), K)
    torch.testing.assert_close(route.weights, torch.nn.functional.one_hot(torch.tensor(truth), K).float())


def test_oracle_and_single_match_peft_mixed_batch(routed_tok, mixed):
    routed, _ = routed_tok
    batch, truth = mixed
    real = _real(batch)
    oracle, route = routed.logits(batch["input_ids"], batch["attention_mask"], "oracle", truth)
    assert route.experts.tolist() == truth
    peft_ref = routed.peft_logits(batch["input_ids"], batch["attention_mask"], truth)
    torch.testing.assert_close(oracle[real], peft_ref[real], atol=1e-4, rtol=1e-4)
    implicit, _ = routed.logits(batch["input_ids"], batch["attention_mask"])  # routes right, so == oracle
    torch.testing.assert_close(implicit, oracle)
    single, route = routed.logits(batch["input_ids"], batch["attention_mask"], "single", 1)
    assert route.experts.tolist() == [1] * len(truth)
    ref = routed.peft_logits(batch["input_ids"], batch["attention_mask"], [1] * len(truth))
    torch.testing.assert_close(single[real], ref[real], atol=1e-4, rtol=1e-4)


def test_merge_all_is_the_sum_of_every_expert(routed_tok, mixed):
    routed, _ = routed_tok
    batch, _ = mixed
    merged, route = routed.logits(batch["input_ids"], batch["attention_mask"], "merge")
    assert torch.equal(route.weights, torch.ones(len(route.weights), K))
    ref = _merged_reference(routed, batch)
    real = _real(batch)
    torch.testing.assert_close(merged[real], ref[real], atol=1e-4, rtol=1e-4)
    base, _ = routed.logits(batch["input_ids"], batch["attention_mask"], "none")
    assert (merged - base).abs().max() > 1.0  # the experts do change the output


def test_rows_of_a_mixed_batch_are_independent(routed_tok, mixed):
    routed, tok = routed_tok
    batch, truth = mixed
    logits, _ = routed.logits(batch["input_ids"], batch["attention_mask"])
    alone = collate_prompts(tok, [tok.decode(batch["input_ids"][4][_real(batch)[4]])], 64)
    single, route = routed.logits(alone["input_ids"], alone["attention_mask"])
    assert route.experts.tolist() == [truth[4]]
    n = int(alone["attention_mask"].sum())
    torch.testing.assert_close(logits[4, -n:], single[0, -n:], atol=1e-4, rtol=1e-4)


def test_top_k_mixes_the_nearest_experts():
    routed, tok = tiny_routed(K, rank=4, seed=0, router=RouterConfig(top_k=2, temperature=50.0))
    batch = collate_prompts(tok, synthetic_prompts(0, 4, seed=7), 64)
    route = routed.route(batch["input_ids"], batch["attention_mask"])
    assert ((route.weights > 0).sum(1) == 2).all()
    torch.testing.assert_close(route.weights.sum(1), torch.ones(4))
    assert route.experts.tolist() == route.distances.argmin(1).tolist() == [0] * 4


def test_generation_keeps_the_prompt_route(routed_tok, mixed):
    routed, tok = routed_tok
    batch, truth = mixed
    new, _ = routed.generate(batch["input_ids"], batch["attention_mask"], max_new_tokens=6,
                                 pad_token_id=tok.pad_token_id)
    ref, _ = routed.generate(batch["input_ids"], batch["attention_mask"], "oracle", truth, max_new_tokens=6,
                             pad_token_id=tok.pad_token_id)
    assert torch.equal(new, ref)
    other, _ = routed.generate(batch["input_ids"], batch["attention_mask"], "single", 0, max_new_tokens=6,
                               pad_token_id=tok.pad_token_id)
    assert not torch.equal(new, other)


def test_modes_need_their_slots(routed_tok, mixed):
    routed, _ = routed_tok
    batch, _ = mixed
    with pytest.raises(ConfigError):
        routed.route(batch["input_ids"], batch["attention_mask"], "oracle")
    with pytest.raises(ConfigError):
        routed.route(batch["input_ids"], batch["attention_mask"], "single", [0, 1])
    with pytest.raises(ConfigError):
        routed.route(batch["input_ids"], batch["attention_mask"], "nonsense")


def test_bundle_round_trip_and_tampered_codes(routed_tok, mixed, tmp_path):
    from safetensors.numpy import load_file, save_file

    routed, _ = routed_tok
    batch, truth = mixed
    save_bundle(tmp_path / "b", routed, "tiny")
    loaded, _, meta = load_bundle(tmp_path / "b")
    assert meta["experts"][1] == {"slot": 1, "name": "expert1"}
    a, _ = routed.logits(batch["input_ids"], batch["attention_mask"])
    b, route = loaded.logits(batch["input_ids"], batch["attention_mask"])
    assert route.experts.tolist() == truth
    torch.testing.assert_close(a, b)
    # another top_k keeps the bundle's own router (its codes were computed at layer 0, not the default layer)
    wider, _, _ = load_bundle(tmp_path / "b", top_k=2)
    assert (wider.config.layer, wider.config.top_k) == (0, 2) and routed.config.layer == 0
    latent = {k: v.copy() for k, v in load_file(str(tmp_path / "b" / LATENT_FILE)).items()}
    latent["slot2/latent.mean"][0] = np.inf
    save_file(latent, str(tmp_path / "b" / LATENT_FILE))
    with pytest.raises(TensorValidationError, match="slot2|infinite|latent.mean"):
        load_bundle(tmp_path / "b")


def test_layer0_shortcut_equals_the_partial_forward(routed_tok, mixed):
    from edgedfl.routing import router as router_mod

    routed, _ = routed_tok
    batch, _ = mixed
    fast = routed.pooled(batch["input_ids"], batch["attention_mask"])
    original = router_mod._layer0_state
    router_mod._layer0_state = lambda adapted, ids: None  # force the hooked partial forward
    try:
        slow = routed.pooled(batch["input_ids"], batch["attention_mask"])
    finally:
        router_mod._layer0_state = original
    torch.testing.assert_close(fast, slow)
