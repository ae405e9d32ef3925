"""Other decoder families, each a tiny random config saved as a model folder, through the user's path:
`edgedfl train --model DIR`, `edgedfl export-adapter`, plain peft with the same logits, and `edgedfl export onnx`
(which either works or refuses with an error naming what is missing)."""

from __future__ import annotations

import json
from pathlib import Path

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
)

from edgedfl.cli import main
from edgedfl.model.tiny import TINY_VOCAB, tiny_tokenizer
from edgedfl.train.batching import collate_prompts

COMMON = {"vocab_size": TINY_VOCAB, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
          "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512,
          "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, "initializer_range": 0.2}
#: family -> (config, the layers edgedfl adapts there, what `export onnx` says: None = it exports)
FAMILIES = {
    "llama": (LlamaConfig(**COMMON), "q_proj,k_proj,v_proj,o_proj", None),
    "qwen2": (Qwen2Config(**COMMON, tie_word_embeddings=True), "q_proj,k_proj,v_proj,o_proj", None),
    "mistral": (MistralConfig(**COMMON), "q_proj,k_proj,v_proj,o_proj", None),
    "phi3": (Phi3Config(**COMMON), "qkv_proj,o_proj", "routing module 'q_proj'"),
    "gemma3": (Gemma3TextConfig(**COMMON, head_dim=16, tie_word_embeddings=True), "q_proj,k_proj,v_proj,o_proj",
               "Llama-style decoders, not 'gemma3_text'"),
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_a_family_trains_exports_a_peft_adapter_and_exports_or_says_why_not(family: str, tmp_path: Path,
                                                                             capsys: pytest.CaptureFixture) -> None:
    # Prepare: the family's tiny model as a folder, as a user's own model would be
    config, targets, refusal = FAMILIES[family]
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "model")
    tiny_tokenizer().save_pretrained(tmp_path / "model")
    model, run = str(tmp_path / "model"), tmp_path / "run"
    run_cfg = tmp_path / "run.json"
    run_cfg.write_text(json.dumps({"adapter": {"target_modules": targets.split(","), "rank": 4}}))

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
    if refusal is None:
        assert code == 0 and (tmp_path / "m.onnx").stat().st_size > 10_000
    else:
        assert code == 1 and refusal in capsys.readouterr().err
