"""Other decoder families, each a tiny random config saved as a model folder, through the user's path:
`edgedfl train --model DIR`, `edgedfl export-adapter`, plain peft with the same logits, `edgedfl export onnx`
and ONNX Runtime with the same logits; and the routed export module against the peft routed model per family
(fused projections, biases, Gemma norms and scaling, sliding windows, local and global RoPE)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from peft import PeftModel
from transformers import (
    AutoModelForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    MistralConfig,
    Phi3Config,
    Qwen2Config,
    Qwen3Config,
)

from edgedfl.cli import main
from edgedfl.infer import OnnxLM
from edgedfl.model.tiny import TINY_VOCAB, tiny_tokenizer
from edgedfl.train.batching import collate_prompts

COMMON = {"vocab_size": TINY_VOCAB, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
          "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512,
          "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, "initializer_range": 0.2}
#: family -> (config, the layers edgedfl adapts there given the default targets)
FAMILIES = {
    "llama": (LlamaConfig(**COMMON), "q_proj,k_proj,v_proj,o_proj"),
    "qwen2": (Qwen2Config(**COMMON, tie_word_embeddings=True), "q_proj,k_proj,v_proj,o_proj"),
    "qwen3": (Qwen3Config(**COMMON, head_dim=16), "q_proj,k_proj,v_proj,o_proj"),
    "mistral": (MistralConfig(**COMMON, sliding_window=6), "q_proj,k_proj,v_proj,o_proj"),
    "phi3": (Phi3Config(**COMMON, partial_rotary_factor=0.5), "qkv_proj,o_proj"),
    "gemma3": (Gemma3TextConfig(**COMMON, head_dim=16, tie_word_embeddings=True, sliding_window=6,
                                layer_types=["sliding_attention", "full_attention"], final_logit_softcapping=30.0),
               "q_proj,k_proj,v_proj,o_proj"),
}
ALL_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _model_dir(family: str, where: Path) -> str:
    """The family's tiny random model saved as a folder; every bias random too (qwen2's q/k/v have them)."""
    config, _ = FAMILIES[family]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Linear) and m.bias is not None:
                m.bias.normal_(0.0, 0.2)
    model.save_pretrained(where)
    tiny_tokenizer().save_pretrained(where)
    return str(where)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_a_family_trains_exports_a_peft_adapter_and_exports_or_says_why_not(family: str, tmp_path: Path,
                                                                             capsys: pytest.CaptureFixture) -> None:
    # Prepare: the family's tiny model as a folder, as a user's own model would be
    _, targets = FAMILIES[family]
    model, run = _model_dir(family, tmp_path / "model"), tmp_path / "run"
    run_cfg = tmp_path / "run.json"  # the default targets: phi3 adapts its fused qkv_proj in their place
    run_cfg.write_text(json.dumps({"adapter": {"rank": 4}}))

    # Execute: the CLI, in this process
    assert main(["train", "--config", str(run_cfg), "--model", model, "--data", "arith", "--steps", "3",
                 "--n-train", "16", "--n-eval", "4", "--quant", "none", "--lr", "0.05", "--no-progress",
                 "--out", str(run)]) == 0
    assert main(["export-adapter", "--run", str(run), "--out", str(tmp_path / "adapter")]) == 0
    code = main(["export", "onnx", "--run", str(run), "--model", model, "--out", str(tmp_path / "m.onnx")])

    # Assert: every target trained, plain peft reproduces the expert, the export works or names its gap
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["train_loss"] == metrics["train_loss"]  # finite
    adapter_cfg = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert sorted(adapter_cfg["target_modules"]) == sorted(targets.split(","))
    plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model), str(tmp_path / "adapter")).eval()
    base = AutoModelForCausalLM.from_pretrained(model).eval()
    batch = collate_prompts(tiny_tokenizer(), ["Q: 2+3\nAnswer:"], 32)
    with torch.no_grad():
        assert (plain(**batch).logits - base(**batch).logits).abs().max() > 1e-4  # the adapter does something
        want = plain(**batch).logits.numpy()
    assert code == 0 and (tmp_path / "m.onnx").stat().st_size > 10_000
    lm = OnnxLM(tmp_path / "m.onnx")  # one expert: routed or forced, it is the trained adapter
    ids, mask = batch["input_ids"].numpy(), batch["attention_mask"].numpy()
    got = lm.forward(ids, mask, lm.route_for(1, expert=0))
    assert np.abs(got["logits"] - want).max() < 1e-3
    # a cached decode step (the router past layer 0: the model's router-free branch) = the longer prompt at once
    nxt = got["logits"][:, -1].argmax(-1)[:, None]  # (1, 1)
    step = lm.forward(nxt, np.ones_like(nxt), got["route_weights"], lm.next_cache(got))
    whole = lm.forward(np.concatenate([ids, nxt], 1), np.concatenate([mask, np.ones_like(nxt)], 1),
                       lm.route_for(1, expert=0))
    assert lm.meta["decode_branch"] and (step["distances"] == 0).all()
    assert np.abs(step["logits"][:, -1] - whole["logits"][:, -1]).max() < 1e-3


@pytest.mark.parametrize("family", list(FAMILIES))
def test_the_routed_export_module_matches_the_peft_routed_model(family: str, tmp_path: Path) -> None:
    # Prepare: three experts with random B on every projection, codes from disjoint alphabets, padded prompts
    # longer than the sliding windows
    from routing.routing_helpers import synthetic_prompts  # tests/routing (tests/ is on sys.path)

    from edgedfl.adapters import AdapterConfig, attach_adapter
    from edgedfl.export.module import RoutedDecoder
    from edgedfl.model.loading import load_model
    from edgedfl.routing.calibrate import compute_code
    from edgedfl.routing.config import RouterConfig
    from edgedfl.routing.router import RoutedModel

    base, tok = load_model(_model_dir(family, tmp_path / "model"))
    adapted = attach_adapter(base, AdapterConfig(num_slots=3, rank=4, seed=0, target_modules=ALL_TARGETS))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name in adapted.layers:
            for k in range(3):
                b = adapted.B(k, name)
                b.copy_(0.3 * torch.randn(b.shape, generator=gen))
    adapted.apply_masks()
    router = RouterConfig(layer=1)  # one frozen-base layer before the router: the routing pre-pass runs too
    codes = [compute_code(adapted, tok, synthetic_prompts(k, 32), router, k) for k in range(3)]
    routed = RoutedModel(adapted, codes, router)
    prompts = [p for k in range(3) for p in synthetic_prompts(k, 3, seed=1, length=(4, 20))]
    batch = collate_prompts(tok, prompts, 64)
    ids, mask = batch["input_ids"], batch["attention_mask"]

    # Execute: the peft routed model and the plain-tensor module, prefill then cached greedy decoding
    ref, route = routed.logits(ids, mask)
    new, _ = routed.generate(ids, mask, max_new_tokens=4, pad_token_id=tok.pad_token_id)
    module = RoutedDecoder(routed).eval()
    kv = [torch.zeros(len(ids), module.num_kv, 0, module.head_dim) for _ in range(2 * module.num_layers)]
    pmask, route_in, toks = torch.zeros(len(ids), 0, dtype=torch.long), torch.zeros(len(ids), 3), []
    with torch.no_grad():
        first = module(ids, mask, route_in, pmask, kv)
        out = first
        for _ in range(4):
            nxt = out[0][:, -1].argmax(-1)
            toks.append(nxt)
            route_in, pmask, kv = out[2], out[4], list(out[5:])
            out = module(nxt[:, None], torch.ones(len(nxt), 1, dtype=torch.long), route_in, pmask, kv)

    # Assert: same logits on real tokens, same routes, same greedy continuation
    real = mask.bool()
    torch.testing.assert_close(first[0][real], ref[real], atol=2e-4, rtol=2e-4)
    assert first[1].tolist() == route.experts.tolist() and len(set(first[1].tolist())) > 1
    assert torch.equal(torch.stack(toks, 1), new)
