"""One expert exports as a standard peft LoRA adapter that plain peft loads with the same logits."""

from __future__ import annotations

import json

import torch
from peft import PeftModel

from edgedfl.adapters import AdapterConfig, attach_adapter
from edgedfl.model.tiny import tiny_model, tiny_tokenizer
from edgedfl.train.batching import collate_prompts


def test_exported_expert_gives_the_same_logits_in_plain_peft(tmp_path):
    tok = tiny_tokenizer()
    adapted = attach_adapter(tiny_model(seed=3), AdapterConfig(num_slots=3, rank=4, density=0.4))
    batch = collate_prompts(tok, ["what is 2 + 3?", "a short sentence about football"], 64)
    # give slot 1 non-trivial weights by training it a little
    adapted.activate(1)
    opt = torch.optim.AdamW(adapted.trainable_parameters(), lr=5e-2)
    for _ in range(5):
        adapted.peft_model(**batch, labels=batch["input_ids"]).loss.backward()
        opt.step()
        opt.zero_grad()
        adapted.apply_masks(1)
    adapted.peft_model.eval()
    with torch.no_grad():
        ours = adapted.peft_model(**batch).logits
        base_logits = tiny_model(seed=3)(**batch).logits
    assert (ours - base_logits).abs().max() > 1e-3  # the expert changes the output

    out = adapted.export_peft(tmp_path / "expert1", slot=1)
    assert json.loads((out / "adapter_config.json").read_text())["peft_type"] == "LORA"
    plain = PeftModel.from_pretrained(tiny_model(seed=3), str(out))
    plain.eval()
    with torch.no_grad():
        theirs = plain(**batch).logits
    assert torch.allclose(ours, theirs, atol=1e-5), (ours - theirs).abs().max()
