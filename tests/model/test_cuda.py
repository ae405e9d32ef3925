"""CUDA paths (the Jetson profile): bitsandbytes nf4 base on the GPU trains sparse-orthogonal LoRA.

Skipped, with the reason, where torch sees no GPU (CI, laptops, this project's
dev machines). Run them on a GPU host or a Jetson with
``python -m pytest tests/model/test_cuda.py -q -rs``; docs/jetson.md records
where they were run.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from edgedfl.adapters import AdapterConfig, attach_adapter
from edgedfl.data.examples import Example
from edgedfl.model import quantize
from edgedfl.model.tiny import tiny_model, tiny_tokenizer
from edgedfl.train.batching import collate_train

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: torch.cuda.is_available() is False"),
]


def _batch() -> dict[str, torch.Tensor]:
    examples = [Example("Question: 3+4?\nAnswer:", " 7", "arith"), Example("Question: 9-5?\nAnswer:", " 4", "arith")]
    return {k: v.cuda() for k, v in collate_train(tiny_tokenizer(), examples, 48).items()}


def _nf4_solora() -> tuple[Any, list[Any]]:
    if not quantize.is_available("bnb-nf4"):
        pytest.skip("bitsandbytes not installed: pip install 'edgedfl[bnb]'")
    import bitsandbytes as bnb

    base, name = quantize.quantize_model(tiny_model(seed=0).cuda(), "bnb-nf4")
    assert name == "bnb-nf4"
    layers = [m for m in base.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers and all(m.weight.device.type == "cuda" and m.weight.quant_type == "nf4" for m in layers)
    adapted = attach_adapter(base, AdapterConfig(method="solora", rank=4, num_slots=2, density=0.25))
    return adapted, layers


def test_nf4_on_cuda_lora_gradients_after_an_eval_pass_and_masks_hold_under_adamw():
    am, _ = _nf4_solora()  # AdaptedModel, its Linear4bit layers
    batch = _batch()
    # an eval-mode no-grad pass first: the step that silently zeroes 4-bit gradients on some CPUs
    am.peft_model.eval()
    with torch.no_grad():
        am.peft_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    am.peft_model.train()
    params = am.trainable_parameters()
    assert params and all(p.is_cuda for p in params)
    opt = torch.optim.AdamW(params, lr=1e-2)
    losses = []

    for step in range(5):
        opt.zero_grad()
        loss = am.peft_model(**batch).loss
        loss.backward()
        b_grads = {n: p.grad for n, p in am.named_trainable() if "lora_B" in n}
        assert b_grads and all(g is not None for g in b_grads.values())
        assert sum(float(g.norm()) for g in b_grads.values()) > 0, f"step {step}: B gradients are zero"
        opt.step()
        am.apply_masks(am.active_slot)
        losses.append(float(loss))

    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]
    for layer in am.layers:
        B = am.B(0, layer).detach()  # (d_out, r)
        mask = am.masks[0][layer].to(B.device).bool()  # (d_out, r)
        assert float(B[~mask].abs().max()) == 0.0, f"{layer}: a masked entry of B moved"
        assert float(B[mask].abs().max()) > 0.0, f"{layer}: no kept entry of B trained"
        assert float(am.B(1, layer).abs().max()) == 0.0  # the other slot did not train
    update = am.get_update(0)
    assert all(v.dtype.name == "float32" for v in update.values())  # what travels comes back to the host


def test_quantize_model_auto_on_the_jetson_profile_picks_nf4_on_cuda():
    if not quantize.is_available("bnb-nf4"):
        pytest.skip("bitsandbytes not installed: pip install 'edgedfl[bnb]'")
    from edgedfl.devices import PROFILES

    assert quantize.choose_backend("auto", PROFILES["jetson"]) == "bnb-nf4"


def test_doctor_reports_cuda_and_a_working_nf4():
    from edgedfl.doctor import format_report, run_doctor

    report = run_doctor()

    cuda = report["cuda"]
    assert cuda["available"] is True and cuda["device_count"] >= 1
    dev = cuda["devices"][0]
    assert dev["name"] and dev["total_mb"] > 0 and dev["free_mb"] > 0
    assert report["torch"]["cuda_build"]
    if quantize.is_available("bnb-nf4"):
        nf4 = report["quantization"]["bnb-nf4"]
        assert nf4["works"] is True and nf4["device"] == "cuda", nf4
    print(format_report(report))  # shown with -s: the record docs/jetson.md quotes
