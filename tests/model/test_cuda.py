"""CUDA paths (the Jetson profile): the real node and training paths on the GPU, and bnb nf4 there.

What runs here on a GPU:

* ``edgedfl train`` (a subprocess) on the tiny model with ``--profile jetson --device cuda``: the
  calibration, training, checkpoints, resume, evaluation and export of one device;
* ``edgedfl emulate`` (a subprocess) with two ``jetson`` devices on the tiny model: signature,
  clustering, calibration, masks, rounds, expert exchange, routing and the final evaluation of
  real node processes, each on the GPU;
* signature, calibration, masks, routing codes, routed logits and evaluation of a CUDA model,
  compared with the same model on the CPU (allclose);
* bitsandbytes nf4 on the GPU training sparse-orthogonal LoRA, and nf4 kept on the CPU when asked.

Skipped, with the reason, where torch sees no GPU (CI, laptops, this project's dev machines).
Run them on a GPU host or a Jetson with ``python -m pytest tests/model/test_cuda.py -q -rs``;
docs/jetson.md records where they were run. The CPU side of the device rule is
tests/model/test_placement.py.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from edgedfl.adapters import AdapterConfig, attach_adapter
from edgedfl.data.examples import Example
from edgedfl.model import quantize
from edgedfl.model.batching import collate_prompts
from edgedfl.model.placement import model_device, to_numpy
from edgedfl.model.tiny import tiny_model, tiny_tokenizer
from edgedfl.train.batching import collate_train

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: torch.cuda.is_available() is False"),
]

#: prompts of two "tasks" the tiny byte-level model tells apart at the routing layer
LETTERS = ["abcabd", "hgfedcba", "cabbage", "badge face", "deaf bed", "fade"]
DIGITS = ["0123", "98765", "4242 17", "31415926", "271828", "1000 0"]


def _batch() -> dict[str, torch.Tensor]:
    examples = [Example("Question: 3+4?\nAnswer:", " 7", "arith"), Example("Question: 9-5?\nAnswer:", " 4", "arith")]
    return {k: v.cuda() for k, v in collate_train(tiny_tokenizer(), examples, 48).items()}


def _require_bnb() -> None:
    if not quantize.is_available("bnb-nf4"):
        pytest.skip("bitsandbytes not installed: pip install 'edgedfl[bnb]'")


def _nf4_solora() -> tuple[Any, list[Any]]:
    _require_bnb()
    import bitsandbytes as bnb

    base, name = quantize.quantize_model(tiny_model(seed=0), "bnb-nf4", device="cuda")
    assert name == "bnb-nf4"
    layers = [m for m in base.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers and all(m.weight.device.type == "cuda" and m.weight.quant_type == "nf4" for m in layers)
    assert all(p.is_cuda for p in base.parameters())  # embeddings, norms and lm_head followed
    adapted = attach_adapter(base, AdapterConfig(method="solora", rank=4, num_slots=2, density=0.25))
    return adapted, layers


def _edgedfl(*args: str, timeout: int = 540) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "edgedfl.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, check=False)


def _ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc.stdout


# -- bitsandbytes ----------------------------------------------------------------------------


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
    assert all(m.is_cuda for m in am.masks[0].values())
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
        mask = am.masks[0][layer].bool()  # (d_out, r)
        assert float(B[~mask].abs().max()) == 0.0, f"{layer}: a masked entry of B moved"
        assert float(B[mask].abs().max()) > 0.0, f"{layer}: no kept entry of B trained"
        assert float(am.B(1, layer).abs().max()) == 0.0  # the other slot did not train
    update = am.get_update(0)
    assert all(isinstance(v, np.ndarray) and v.dtype.name == "float32" for v in update.values())  # host arrays
    masks = am.get_masks(0)
    assert masks and all(isinstance(m, np.ndarray) and m.dtype == bool for m in masks.values())


def test_nf4_of_a_model_already_on_cuda():
    _require_bnb()
    base, _ = quantize.quantize_model(tiny_model(seed=0).cuda(), "bnb-nf4")  # auto keeps it on its GPU
    assert all(p.is_cuda for p in base.parameters())


def test_nf4_stays_on_the_cpu_when_asked_although_a_gpu_is_visible():
    _require_bnb()
    import bitsandbytes as bnb

    base, name = quantize.quantize_model(tiny_model(seed=0), "bnb-nf4", device="cpu")

    assert name == "bnb-nf4"
    assert all(p.device.type == "cpu" for p in base.parameters())
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in base.modules())


def test_quantize_model_auto_on_the_jetson_profile_picks_nf4_on_cuda():
    _require_bnb()
    from edgedfl.devices import PROFILES

    assert quantize.choose_backend("auto", PROFILES["jetson"]) == "bnb-nf4"
    assert quantize.choose_backend("auto", PROFILES["jetson"], device="cpu") == "torchao-int8"
    base, name = quantize.quantize_model(tiny_model(seed=0), "auto", PROFILES["jetson"])
    assert name == "bnb-nf4" and model_device(base).type == "cuda"


# -- the device rule: the same numbers on the GPU as on the CPU ------------------------------------


def _adapted_on(device: str) -> Any:
    base, _ = quantize.quantize_model(tiny_model(seed=0), "none", device=device)
    return attach_adapter(base, AdapterConfig(method="solora", rank=4, num_slots=2, density=0.25, seed=0))


def _close(got: Any, want: Any, what: str) -> None:
    np.testing.assert_allclose(np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64),
                               rtol=1e-4, atol=1e-4, err_msg=what)


def device_parity(device: str) -> None:
    """Signature, calibration, masks, codes, routes, routed logits and evaluation on ``device``
    against the CPU. Every input handed in is built on the host: the code under test moves it."""
    from edgedfl.node.signature import signature_and_spread
    from edgedfl.routing.calibrate import compute_codes
    from edgedfl.routing.config import RouterConfig
    from edgedfl.routing.router import RoutedModel
    from edgedfl.train.evaluate import evaluate

    tok = tiny_tokenizer()
    cpu, dev = _adapted_on("cpu"), _adapted_on(device)
    assert model_device(dev).type == torch.device(device).type
    assert all(p.device.type == torch.device(device).type for p in dev.peft_model.parameters())
    prompts = LETTERS + DIGITS

    # task signature (what a node says in its hello)
    sig, spread = signature_and_spread(dev, tok, prompts, seed=0, max_length=64, depth=0.5)
    assert isinstance(sig, np.ndarray)
    cpu_sig, cpu_spread = signature_and_spread(cpu, tok, prompts, seed=0, max_length=64, depth=0.5)
    _close(sig, cpu_sig, "signature")
    _close(np.array([spread]), np.array([cpu_spread]), "signature spread")

    # calibration statistics and the masks derived from them
    def batches() -> list[dict[str, Any]]:
        return [collate_prompts(tok, prompts[:7], 64), collate_prompts(tok, prompts[7:], 64)]

    stats_dev, stats_cpu = dev.calibrate(batches(), 0), cpu.calibrate(batches(), 0)
    assert stats_dev.keys() == stats_cpu.keys()
    for name, s in stats_dev.items():
        assert isinstance(s.cov, np.ndarray) and s.n_tokens == stats_cpu[name].n_tokens
        _close(s.cov, stats_cpu[name].cov, f"calibration cov {name}")
        _close(s.total_energy, stats_cpu[name].total_energy, f"calibration energy {name}")
    for k in (0, 1):
        masks, densities = cpu.masks_from_stats(k, stats_cpu)
        cpu.set_masks(k, masks, densities)
        dev.set_masks(k, masks, densities)
        got = dev.get_masks(k)
        assert all(isinstance(m, np.ndarray) and np.array_equal(m, masks[key]) for key, m in got.items())
    assert all(m.device.type == torch.device(device).type for m in dev.masks[0].values())

    # the same trained-looking experts on both: random B, masked, through the wire form
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name in cpu.layers:
            for k in (0, 1):
                cpu.B(k, name).copy_(0.3 * torch.randn(cpu.B(k, name).shape, generator=gen))
    cpu.apply_masks()
    for k in (0, 1):
        dev.set_update(k, cpu.get_update(k))
        _close(to_numpy(torch.stack([dev.B(k, n).float().flatten()[:8] for n in dev.layers])),
               torch.stack([cpu.B(k, n).float().flatten()[:8] for n in cpu.layers]).detach().numpy(), "set_update")

    # latent codes, routes and routed logits (the final evaluation's model)
    router = RouterConfig()
    codes_dev = compute_codes(dev, tok, {0: LETTERS, 1: DIGITS}, router, max_length=64)
    codes_cpu = compute_codes(cpu, tok, {0: LETTERS, 1: DIGITS}, router, max_length=64)
    for k in (0, 1):
        _close(codes_dev[k].mean, codes_cpu[k].mean, f"code mean {k}")
        _close(codes_dev[k].cov, codes_cpu[k].cov, f"code cov {k}")
    routed_dev, routed_cpu = RoutedModel(dev, codes_cpu, router), RoutedModel(cpu, codes_cpu, router)
    assert routed_dev.code_means.device.type == torch.device(device).type
    batch = collate_prompts(tok, ["abc", "123", "face", "9876"], 64)  # on the host
    for mode, slots in [("implicit", None), ("oracle", [0, 1, 0, 1]), ("merge", None), ("single", 1), ("none", None)]:
        logits_dev, route_dev = routed_dev.logits(batch["input_ids"], batch["attention_mask"], mode, slots)
        logits_cpu, route_cpu = routed_cpu.logits(batch["input_ids"], batch["attention_mask"], mode, slots)
        _close(to_numpy(logits_dev), to_numpy(logits_cpu), f"routed logits ({mode})")
        assert to_numpy(route_dev.experts).tolist() == to_numpy(route_cpu.experts).tolist(), mode
    texts, route = routed_dev.generate_text(tok, ["abc", "123"], "implicit", max_new_tokens=4, max_length=64)
    assert len(texts) == 2 and to_numpy(route.experts).tolist() == [0, 1]

    # evaluation (generation and completion loss) of the plain peft model
    examples = [Example("Question: 2+3?\nAnswer:", " 5", "arith"), Example("Question: 7-1?\nAnswer:", " 6", "arith")]
    m_dev = evaluate(dev.peft_model, tok, examples, batch_size=2, max_length=64, max_new_tokens=4)
    m_cpu = evaluate(cpu.peft_model, tok, examples, batch_size=2, max_length=64, max_new_tokens=4)
    _close(m_dev["loss"], m_cpu["loss"], "completion loss")


def test_signature_calibration_masks_routing_and_evaluation_on_cuda_match_the_cpu():
    device_parity("cuda")


# -- the real commands -----------------------------------------------------------------------


@pytest.mark.parametrize(("quant", "expected"), [("auto", "bnb-nf4"), ("none", "none")])
def test_edgedfl_train_on_cuda_trains_checkpoints_resumes_and_exports(tmp_path: Path, quant: str, expected: str):
    if expected.startswith("bnb"):
        _require_bnb()  # the jetson profile's own backend on CUDA
    run = tmp_path / "run"
    cmd = ["train", "--model", "tiny", "--profile", "jetson", "--device", "cuda", "--quant", quant, "--data", "arith",
           "--n-train", "64", "--n-eval", "8", "--steps", "6", "--batch-size", "4", "--checkpoint-every", "3",
           "--no-progress", "--out", str(run)]

    first = json.loads(_ok(_edgedfl(*cmd)))
    again = json.loads(_ok(_edgedfl(*cmd)))  # the same command resumes from the last checkpoint

    assert first["device"].startswith("cuda") and first["quant"] == expected
    assert first["steps"] == 6 and math.isfinite(first["train_loss"])
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    assert json.loads((run / "run_config.json").read_text())["device"] == "cuda"
    # resumed onto the GPU with the trained adapter: the same evaluation, no step taken
    assert again["steps"] == 6 and again["device"].startswith("cuda")
    assert again["eval"]["loss"] == pytest.approx(first["eval"]["loss"], rel=1e-5)


def test_edgedfl_emulate_two_jetson_devices_on_cuda_finish_with_a_report(tmp_path: Path):
    _require_bnb()  # device auto puts a jetson node on the GPU with its bnb-nf4 base
    out = tmp_path / "emu"

    _ok(_edgedfl("emulate", "--model", "tiny", "--profiles", "jetson", "--devices", "2", "--tasks", "arith,strtf",
                 "--rounds", "1", "--local-steps", "4", "--n-train", "64", "--n-eval", "8",
                 "--final-modes", "implicit,oracle,merge", "--out", str(out), "--quiet"))

    report = json.loads((out / "report.json").read_text())
    assert sorted(report["per_device"]) == ["dev00", "dev01"]
    assert all(not d["crashes"] and d["experts_held"] for d in report["per_device"].values()), report["per_device"]
    assert report["final"]["routing_accuracy"] is not None
    for node in ("dev00", "dev01"):
        final = json.loads((out / node / "final.json").read_text())
        assert final["device"].startswith("cuda"), final.get("device")
        assert final["quant"] == "bnb-nf4"


# -- the doctor --------------------------------------------------------------------------------


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
