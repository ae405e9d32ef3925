"""Quantized bases: the dispatcher, and LoRA gradients after an eval pass on every CPU backend.

The CPU cases ask for the CPU (``device="cpu"``): on a machine with a GPU, ``auto`` would
move bitsandbytes to CUDA, and these tests are about the CPU kernels."""

from __future__ import annotations

import pytest
import torch

from edgedfl.adapters import AdapterConfig, attach_adapter
from edgedfl.data.examples import Example
from edgedfl.devices import PROFILES
from edgedfl.errors import BackendUnavailable, ConfigError
from edgedfl.model import quantize
from edgedfl.model.tiny import tiny_model, tiny_tokenizer
from edgedfl.train.batching import collate_train

CPU_BACKENDS = [b for b in ("none", "torchao-int8", "torchao-int4", "bnb-nf4", "bnb-int8") if quantize.is_available(b)]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("method", ["solora", "lora"])
def test_lora_gradients_nonzero_after_an_eval_pass(backend, method):
    tok = tiny_tokenizer()
    base, name = quantize.quantize_model(tiny_model(), backend, device="cpu")
    assert name == backend
    assert all(p.device.type == "cpu" for p in base.parameters())
    adapted = attach_adapter(base, AdapterConfig(method=method, rank=4))
    batch = collate_train(tok, [Example("Question: 2+2?\nAnswer:", " 4", "arith")] * 2, 64)
    # eval-mode no-grad forward first: this is what breaks bnb 4-bit on AVX512-BF16 CPUs
    adapted.peft_model.eval()
    with torch.no_grad():
        adapted.peft_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    adapted.peft_model.train()
    for _ in range(2):  # B starts at zero: A's gradient (lora) appears from the second step on
        loss = adapted.peft_model(**batch).loss
        loss.backward()
        grads = {n: p.grad for n, p in adapted.named_trainable()}
        assert grads and all(g is not None for g in grads.values())
        b_norm = sum(float(g.norm()) for n, g in grads.items() if "lora_B" in n)
        assert b_norm > 0, f"{backend}: LoRA B gradients are zero after an eval pass"
        with torch.no_grad():
            for p in adapted.trainable_parameters():
                p -= 1e-2 * p.grad
                p.grad = None


def test_bnb_guard_is_applied_to_every_4bit_layer():
    if not quantize.is_available("bnb-nf4"):
        pytest.skip("bitsandbytes not installed")
    import bitsandbytes as bnb

    base, _ = quantize.quantize_model(tiny_model(), "bnb-nf4", device="cpu")
    layers = [m for m in base.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers and all(m.support_avx512bf16_for_cpu is False for m in layers)
    assert all(m.weight.device.type == "cpu" for m in layers)


def test_dispatcher_picks_profile_default_and_errors_clearly(monkeypatch):
    assert quantize.choose_backend("auto", PROFILES["laptop"]) == "torchao-int8"
    assert quantize.choose_backend("auto", PROFILES["phone"]) == "torchao-int4"
    if not torch.cuda.is_available():  # a CUDA default falls back on a CPU-only host
        assert quantize.choose_backend("auto", PROFILES["jetson"]) == "torchao-int8"
    with pytest.raises(ConfigError, match="unknown backend"):
        quantize.choose_backend("gptq")
    missing = quantize.QuantBackend("bnb-nf4", "x", "edgedfl_no_such_package", "pip install 'edgedfl[bnb]'",
                                    lambda m, device: m)
    monkeypatch.setitem(quantize.BACKENDS, "bnb-nf4", missing)
    with pytest.raises(BackendUnavailable, match=r"pip install 'edgedfl\[bnb\]'"):
        quantize.choose_backend("bnb-nf4")


def test_device_cpu_keeps_every_backend_on_the_cpu_when_a_gpu_is_visible(monkeypatch):
    """A GPU that torch would see (faked here) changes nothing once the device is 'cpu'."""
    from edgedfl.model import placement

    monkeypatch.setattr(placement, "cuda_available", lambda: True)
    # the jetson profile's CUDA default falls back as on a CPU-only host
    assert quantize.choose_backend("auto", PROFILES["jetson"], device="cpu") == "torchao-int8"
    for backend in [b for b in CPU_BACKENDS if b == "none" or b.startswith("bnb")]:
        base, name = quantize.quantize_model(tiny_model(), backend, PROFILES["jetson"], device="cpu")
        assert name == backend and all(p.device.type == "cpu" for p in base.parameters()), backend
    # auto keeps torchao's weight-only kernels (the CPU fallback) on the CPU too
    if "torchao-int8" in CPU_BACKENDS:
        base, _ = quantize.quantize_model(tiny_model(), "torchao-int8", PROFILES["jetson"], device="auto")
        assert all(p.device.type == "cpu" for p in base.parameters())


@pytest.mark.cuda
def test_bnb_nf4_on_cuda_trains():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU: torch.cuda.is_available() is False")
    tok = tiny_tokenizer()
    base, _ = quantize.quantize_model(tiny_model(), "bnb-nf4", device="cuda")
    adapted = attach_adapter(base, AdapterConfig(rank=4))
    batch = {k: v.cuda() for k, v in collate_train(tok, [Example("Q: 1+1?\nA:", " 2", "arith")] * 2, 32).items()}
    adapted.peft_model(**batch).loss.backward()
    assert sum(float(p.grad.norm()) for _, p in adapted.named_trainable()) > 0


@pytest.mark.parametrize("backend", [b for b in ("torchao-int8", "torchao-int4") if quantize.is_available(b)])
def test_layer_by_layer_quantization_equals_the_whole_model_and_frees_the_loaded_weights(backend):
    from torchao.quantization import quantize_

    tok = tiny_tokenizer()
    ids = tok("Question: 2+2?\nAnswer:", return_tensors="pt")
    whole = tiny_model()
    make = quantize._torchao_int8 if backend == "torchao-int8" else quantize._torchao_int4
    quantize_(whole, make(), filter_fn=quantize._linear_filter)  # the whole model in one call
    ours = tiny_model()
    embed = ours.get_input_embeddings().weight
    ptr = embed.data_ptr()
    ours, _ = quantize.quantize_model(ours, backend, device="cpu")
    with torch.no_grad():
        assert torch.equal(ours(**ids).logits, whole(**ids).logits)  # bit for bit
    # the weights quantization left plain now own their memory (the loaded storage can go); ties hold
    assert ours.get_input_embeddings().weight is embed and embed.data_ptr() != ptr
    if ours.config.tie_word_embeddings:
        assert ours.get_output_embeddings().weight is embed
