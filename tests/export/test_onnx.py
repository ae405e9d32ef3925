"""The exported routed model: plain-tensor module and ONNX Runtime against the peft RoutedModel."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from edgedfl.export.module import RoutedLlama
from edgedfl.infer import OnnxLM
from edgedfl.train.batching import collate_prompts

K = 3


def _empty(module: RoutedLlama, batch: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    kv = [torch.zeros(batch, module.num_kv, 0, module.head_dim) for _ in range(2 * module.num_layers)]
    return torch.zeros(batch, 0, dtype=torch.long), kv


@pytest.fixture(scope="module")
def batch(routed_tok, mixed_prompts):
    _, tok = routed_tok
    return collate_prompts(tok, mixed_prompts[0], 256)


def test_plain_module_matches_the_peft_routed_model(routed_tok, mixed_prompts, batch):
    routed, tok = routed_tok
    ids, mask = batch["input_ids"], batch["attention_mask"]
    ref, route = routed.logits(ids, mask)
    assert route.experts.tolist() == mixed_prompts[1]  # routes the built-in tasks right
    module = RoutedLlama(routed).eval()
    pmask, past = _empty(module, len(ids))
    with torch.no_grad():
        out = module(ids, mask, torch.zeros(len(ids), K), pmask, past)
    real = mask.bool()
    torch.testing.assert_close(out[0][real], ref[real], atol=1e-4, rtol=1e-4)
    assert out[1].tolist() == route.experts.tolist()
    torch.testing.assert_close(out[3], route.distances, rtol=1e-4, atol=1e-3)
    # greedy decode with the KV cache and the route fed back == RoutedModel.generate
    new, _ = routed.generate(ids, mask, max_new_tokens=5, pad_token_id=tok.pad_token_id)
    route_in, toks = torch.zeros(len(ids), K), []
    with torch.no_grad():
        for _ in range(5):
            out = module(ids, mask, route_in, pmask, past)
            nxt = out[0][:, -1].argmax(-1)
            toks.append(nxt)
            route_in, pmask, past = out[2], out[4], list(out[5:])
            ids, mask = nxt[:, None], torch.ones(len(nxt), 1, dtype=torch.long)
    assert torch.equal(torch.stack(toks, 1), new)


def test_onnxruntime_matches_torch(routed_tok, mixed_prompts, batch, exported):
    routed, _ = routed_tok
    ids, mask = batch["input_ids"], batch["attention_mask"]
    ref, route = routed.logits(ids, mask)
    lm = OnnxLM(exported)
    out = lm.forward(ids.numpy(), mask.numpy())
    real = mask.bool().numpy()
    assert np.abs(out["logits"][real] - ref.numpy()[real]).max() < 1e-4
    assert out["expert"].tolist() == route.experts.tolist() == mixed_prompts[1]
    np.testing.assert_allclose(out["route_weights"], route.weights.numpy())


@pytest.mark.parametrize("mode", ["single", "merge"])
def test_forced_routes_match_the_modes(routed_tok, batch, exported, mode):
    routed, _ = routed_tok
    ids, mask = batch["input_ids"], batch["attention_mask"]
    lm = OnnxLM(exported)
    if mode == "single":
        ref, _ = routed.logits(ids, mask, "single", 2)
        route = lm.route_for(len(ids), expert=2)
    else:
        ref, _ = routed.logits(ids, mask, "merge")
        route = lm.route_for(len(ids), merge=True)
    out = lm.forward(ids.numpy(), mask.numpy(), route)
    real = mask.bool().numpy()
    assert np.abs(out["logits"][real] - ref.numpy()[real]).max() < 1e-4


def test_runtime_generation_matches_torch_generate(routed_tok, mixed_prompts, exported):
    routed, tok = routed_tok
    prompts, truth = mixed_prompts
    texts, route = routed.generate_text(tok, prompts, max_new_tokens=6, max_length=512)
    lm = OnnxLM(exported)
    gens = lm.generate(prompts, max_new_tokens=6, max_length=512)
    assert [g.text for g in gens] == texts
    assert [g.expert for g in gens] == route.experts.tolist() == truth
    assert [g.expert_name for g in gens] == [routed.names[k] for k in truth]
    one = lm.generate(prompts[1], max_new_tokens=6)[0]  # alone == in the batch
    assert (one.text, one.expert) == (gens[1].text, gens[1].expert)
    assert one.new_tokens >= 1 and one.prefill_s > 0


def test_runtime_tokenizer_matches_transformers(routed_tok, mixed_prompts, batch, exported):
    lm = OnnxLM(exported)
    ids, mask = lm.encode(mixed_prompts[0], max_length=256)
    np.testing.assert_array_equal(ids, batch["input_ids"].numpy())
    np.testing.assert_array_equal(mask, batch["attention_mask"].numpy())


def test_metadata_and_int8(exported, batch):
    import onnx

    from edgedfl.export.onnx import META_KEY, quantize_int8

    meta = json.loads({p.key: p.value for p in onnx.load(str(exported)).metadata_props}[META_KEY])
    assert meta["experts"] == ["topic", "arith", "strtf"] and meta["num_experts"] == K and not meta["int8"]
    q = quantize_int8(exported, exported.parent / "int8.onnx")  # shares tokenizer.json
    assert q.stat().st_size < exported.stat().st_size
    fp32, int8 = OnnxLM(exported), OnnxLM(q)
    assert int8.meta["int8"]
    ids, mask = batch["input_ids"].numpy(), batch["attention_mask"].numpy()
    a, b = fp32.forward(ids, mask), int8.forward(ids, mask)
    assert a["expert"].tolist() == b["expert"].tolist()
    real = mask.astype(bool)
    assert np.corrcoef(a["logits"][real].ravel(), b["logits"][real].ravel())[0, 1] > 0.99


def test_merged_adapter_baseline_matches_single_expert(routed_tok, batch):
    routed, _ = routed_tok
    ids, mask = batch["input_ids"], batch["attention_mask"]
    ref, _ = routed.logits(ids, mask, "single", 1)
    module = RoutedLlama(routed, merge_slot=1).eval()
    pmask, past = _empty(module, len(ids))
    with torch.no_grad():
        out = module(ids, mask, torch.zeros(len(ids), K), pmask, past)
    real = mask.bool()
    torch.testing.assert_close(out[0][real], ref[real], atol=1e-4, rtol=1e-4)
    assert out[1].tolist() == [1] * len(ids)
