"""Android bundle export on the tiny model: 20 SGD steps through the ExecuTorch training program
match torch SGD on the same data (losses and B to 1e-5); the manifest, A, masks and tokenizer
are what a phone needs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgedfl.adapters import solora
from edgedfl.android import is_executorch_available
from edgedfl.android import manifest as mf

requires_executorch = pytest.mark.skipif(
    not is_executorch_available(), reason="executorch not installed (pip install -e '.[android]')"
)

SLOT = 1
SLOTS = 3
BATCH, MAX_LEN = 4, 48
LR = 0.5
STEPS = 20


def test_mask_bits_round_trip() -> None:
    rng = np.random.default_rng(0)
    for shape in [(64, 8), (13, 3), (1, 1)]:
        mask = rng.random(shape) < 0.3
        bits = mf.pack_mask(mask)
        assert bits.dtype == np.uint8 and bits.size == -(-mask.size // 8)
        assert np.array_equal(mf.unpack_mask(bits, shape), mask)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not is_executorch_available():
        pytest.skip("executorch not installed (pip install -e '.[android]')")
    from edgedfl.adapters import AdapterConfig
    from edgedfl.android.export import AndroidExportConfig, export_bundle

    out = tmp_path_factory.mktemp("bundle")
    cfg = AndroidExportConfig(
        out=str(out), slot=SLOT, batch_size=BATCH, max_length=MAX_LEN, lr=LR, programs=["train"],
        adapter=AdapterConfig(num_slots=SLOTS, seed=3, density=0.3),
    )
    return export_bundle(cfg)


def _batches(tok: object, n: int) -> list[dict]:
    import torch

    from edgedfl.data.sources import load_examples
    from edgedfl.train.batching import collate_train

    examples = load_examples("arith", "train", n=n * BATCH, seed=0)
    out = []
    for i in range(n):
        b = collate_train(tok, examples[i * BATCH : (i + 1) * BATCH], MAX_LEN)
        pad = MAX_LEN - b["input_ids"].shape[1]  # the program's shape is fixed: pad on the right
        out.append({
            "input_ids": torch.nn.functional.pad(b["input_ids"], (0, pad), value=tok.pad_token_id),
            "labels": torch.nn.functional.pad(b["labels"], (0, pad), value=-100),
            "attention_mask": torch.nn.functional.pad(b["attention_mask"], (0, pad), value=0),
        })
    return out


@requires_executorch
def test_manifest_a_masks_tokenizer(bundle: Path) -> None:
    manifest = mf.load_manifest(bundle)
    assert manifest["bundle_version"] == mf.BUNDLE_VERSION
    assert manifest["slot"] == SLOT and manifest["num_slots"] == SLOTS and manifest["rank"] == 8
    assert manifest["programs"]["train"]["batch_size"] == BATCH
    assert manifest["programs"]["train"]["check_loss_abs_diff"] < 1e-5
    layers = [e["name"] for e in manifest["layers"]]
    assert len(layers) == 8 and all(e["param"] for e in manifest["layers"])
    # A: regenerable from the seed, exactly what solora gives every node
    first = manifest["layers"][0]
    a = mf.read_lora_A(bundle / mf.LORA_A, SLOT, layers)[0]
    expected = solora.slot_A(3, first["name"], first["d_in"], 8, SLOT, SLOTS, manifest["a_scale"])
    np.testing.assert_allclose(a, expected, atol=1e-7)
    # masks: the planned slot's uniform masks, as packed bits
    masks = mf.read_masks(bundle / mf.MASKS, mf.layer_shapes(manifest))
    m0 = solora.make_mask(3, first["name"], SLOT, first["d_out"], 8, 0.3)
    assert np.array_equal(masks[first["name"]], m0)
    assert manifest["masks"]["source"] == "uniform"
    # the tokenizer file encodes like the model's tokenizer
    from tokenizers import Tokenizer

    from edgedfl.model.tiny import tiny_tokenizer

    raw = Tokenizer.from_file(str(bundle / manifest["tokenizer"]["file"]))
    text = "Task: string transformation\nInput: a b\nAnswer:"
    assert raw.encode(text).ids == tiny_tokenizer()(text)["input_ids"]
    assert manifest["tokenizer"]["eos_id"] == 2
    json.dumps(manifest)  # plain JSON all the way down


@requires_executorch
def test_executorch_sgd_matches_torch(bundle: Path) -> None:
    """20 SGD steps through train.pte (masked after each step) == torch SGD on the same batches."""
    import torch
    from executorch.extension.training import _load_for_executorch_for_training, get_sgd_optimizer

    from edgedfl.adapters import AdapterConfig, attach_adapter
    from edgedfl.model.loading import load_model

    # Prepare: the torch reference is the node's own model (peft, K slots, masks, SGD)
    manifest = mf.load_manifest(bundle)
    layers = [e["name"] for e in manifest["layers"]]
    params = {e["name"]: e["param"] for e in manifest["layers"]}
    masks = mf.read_masks(bundle / mf.MASKS, mf.layer_shapes(manifest))
    base, tok = load_model("tiny", seed=3)
    adapted = attach_adapter(base, AdapterConfig(num_slots=SLOTS, seed=3, density=0.3))
    adapted.activate(SLOT)
    adapted.set_masks(SLOT, {solora.b_key(n): m for n, m in masks.items()})  # the bundle's file is keyed by layer
    adapted.peft_model.eval()  # no dropout either way; gradients flow
    torch_opt = torch.optim.SGD(adapted.trainable_parameters(), lr=LR)
    a_inputs = [torch.from_numpy(a) for a in mf.read_lora_A(bundle / mf.LORA_A, SLOT, layers)]
    program = _load_for_executorch_for_training(str(bundle / mf.TRAIN_PTE))
    batches = _batches(tok, STEPS)
    torch_masks = {n: torch.from_numpy(m).float() for n, m in masks.items()}

    # Execute
    et_losses, torch_losses = [], []
    optimizer = None
    for batch in batches:
        loss = program.forward_backward(
            "forward", (batch["input_ids"], batch["labels"], batch["attention_mask"], *a_inputs))[0]
        et_losses.append(float(loss))
        if optimizer is None:  # parameters are known after the first call
            optimizer = get_sgd_optimizer(program.named_parameters(), LR, 0, 0, 0, False)
        optimizer.step(program.named_gradients())
        named = program.named_parameters()
        for n in layers:
            named[params[n]].mul_(torch_masks[n])  # masked entries stay exactly zero

        t_loss = adapted.peft_model(**batch).loss
        t_loss.backward()
        torch_opt.step()
        torch_opt.zero_grad()
        adapted.apply_masks(SLOT)
        torch_losses.append(float(t_loss.detach()))

    # Assert
    np.testing.assert_allclose(et_losses, torch_losses, atol=1e-5, rtol=0)
    assert torch_losses[-1] < torch_losses[0]  # it trains
    named = program.named_parameters()
    for n in layers:
        et_b = named[params[n]].numpy()
        t_b = adapted.B(SLOT, n).detach().numpy()
        np.testing.assert_allclose(et_b, t_b, atol=1e-5, rtol=0)
        assert not et_b[~masks[n]].any()
        assert np.abs(t_b).max() > 0


@requires_executorch
def test_b_written_into_the_program_is_used(bundle: Path) -> None:
    """What the stand-in does after aggregation: write B into the program's parameters in place."""
    import torch
    from executorch.extension.training import _load_for_executorch_for_training

    from edgedfl.adapters import AdapterConfig, attach_adapter
    from edgedfl.model.loading import load_model

    manifest = mf.load_manifest(bundle)
    layers = [e["name"] for e in manifest["layers"]]
    base, tok = load_model("tiny", seed=3)
    adapted = attach_adapter(base, AdapterConfig(num_slots=SLOTS, seed=3, density=0.3))
    adapted.activate(SLOT)
    rng = np.random.default_rng(1)
    new_b = {n: rng.normal(0, 0.05, adapted.B(SLOT, n).shape).astype(np.float32) for n in layers}
    adapted.set_update(SLOT, {f"{n}.lora_B": b for n, b in new_b.items()})
    new_b = {n: adapted.B(SLOT, n).detach().numpy().copy() for n in layers}  # masked, as a node holds it
    program = _load_for_executorch_for_training(str(bundle / mf.TRAIN_PTE))
    a_inputs = [torch.from_numpy(a) for a in mf.read_lora_A(bundle / mf.LORA_A, SLOT, layers)]
    batch = _batches(tok, 1)[0]
    inputs = (batch["input_ids"], batch["labels"], batch["attention_mask"], *a_inputs)
    program.forward_backward("forward", inputs)
    named = program.named_parameters()
    for e in manifest["layers"]:
        named[e["param"]].copy_(torch.from_numpy(new_b[e["name"]]))
    et_loss = float(program.forward_backward("forward", inputs)[0])
    with torch.no_grad():
        t_loss = float(adapted.peft_model(**batch).loss)
    assert abs(et_loss - t_loss) < 1e-5


def _expert_stacks(adapted: object, names: list[str], k: int, r: int, scaling: float) -> list[object]:
    """Per-layer (K*r, d_out) inputs as the phone builds them: rows k*r..(k+1)*r-1 = scaling * B_kᵀ."""
    import torch

    stacks = []
    for n in names:
        rows = [scaling * adapted.B(slot, n).detach().float().t() for slot in range(k)]  # type: ignore[attr-defined]
        stacks.append(torch.cat(rows, dim=0))
    return stacks


@requires_executorch
def test_infer_program_builds_the_fused_experts_from_per_layer_inputs() -> None:
    """The inference program takes one B per adapted layer and fuses q/k/v and gate/up itself:
    fed the routed model's own experts it gives the routed model's logits and expert, and the
    experts it is fed are the ones used."""
    import torch

    from edgedfl.adapters import AdapterConfig, attach_adapter
    from edgedfl.android.programs import InferProgram
    from edgedfl.export.module import RoutedLlama
    from edgedfl.model.loading import load_model
    from edgedfl.routing import LatentCode, RouterConfig
    from edgedfl.routing.router import RoutedModel, routing_module_names

    cfg = AdapterConfig(num_slots=SLOTS, seed=3, density=0.3)
    base, _ = load_model("tiny", seed=3)
    adapted = attach_adapter(base, cfg)
    names = list(adapted.layers)
    rng = np.random.default_rng(4)
    for slot in range(SLOTS):
        adapted.set_update(slot, {f"{n}.lora_B": rng.normal(0, 0.2, adapted.B(slot, n).shape).astype(np.float32)
                                  for n in names})
    router_cfg = RouterConfig()
    dim = len(routing_module_names(adapted, router_cfg)) * cfg.rank
    codes = []
    for _ in range(SLOTS):
        z = rng.normal(0, 1, (4 * dim, dim))
        codes.append(LatentCode.from_features(z + rng.normal(0, 3, dim)))
    routed = RoutedLlama(RoutedModel(adapted, codes, router_cfg))
    program = InferProgram(routed, names)
    stacks = _expert_stacks(adapted, names, SLOTS, cfg.rank, float(cfg.scaling))
    ids = torch.randint(3, int(routed.embed.shape[0]), (1, 11))
    mask = torch.ones_like(ids)
    past = [torch.zeros(1, routed.num_kv, 0, routed.head_dim) for _ in range(2 * routed.num_layers)]
    for route in (torch.zeros(1, SLOTS), torch.eye(SLOTS)[1:2]):
        with torch.no_grad():
            want = routed(ids, mask, route, mask[:, :0], past)
            got = program(ids, mask, route, routed.code_means, routed.code_factors, *stacks)
        assert torch.allclose(got[0], want[0], atol=1e-5)
        assert int(got[1]) == int(want[1])
    with torch.no_grad():
        forced = torch.eye(SLOTS)[1:2]
        other = [s.clone() for s in stacks]
        other[0][cfg.rank : 2 * cfg.rank] *= 2.0  # expert 1 of the first layer changes
        changed = program(ids, mask, forced, routed.code_means, routed.code_factors, *other)
        base_only = program(ids, mask, forced, routed.code_means, routed.code_factors,
                            *[torch.zeros_like(s) for s in stacks])
        want = routed(ids, mask, forced, mask[:, :0], past)
    assert not torch.allclose(changed[0], want[0], atol=1e-4)
    assert not torch.allclose(base_only[0], want[0], atol=1e-4)


@requires_executorch
def test_features_program_pools_the_layer_a_node_signs_with(tmp_path: Path) -> None:
    # Prepare: a features-only bundle at a signature depth, and the node's own pooling on the same base
    from android_bridge.standin.runtime import Features
    from android_bridge.standin.text import PhoneTokenizer
    from edgedfl.adapters import AdapterConfig, attach_adapter
    from edgedfl.android.export import AndroidExportConfig, export_bundle
    from edgedfl.model.loading import load_model
    from edgedfl.node.signature import pooled_hidden
    from edgedfl.topology.signatures import project_signature

    depth = 0.5  # layer 1 of the tiny model's 2: not the last layer, which the program used to pool
    adapter = AdapterConfig(num_slots=SLOTS, seed=3)
    out = export_bundle(AndroidExportConfig(out=str(tmp_path / "b"), programs=["features"], adapter=adapter,
                                            signature_depth=depth))
    manifest = mf.load_manifest(out)
    base, tok = load_model("tiny", seed=3)
    adapted = attach_adapter(base, adapter)
    prompts = ["Question: 12 + 30?\nAnswer:", "Task: string transformation\nInput: a b c\nAnswer:"]

    # Execute: the phone's program per prompt, the node's pooling over the same prompts
    phone_tok = PhoneTokenizer(out / manifest["tokenizer"]["file"], manifest["tokenizer"])
    features = Features(out, manifest)
    a = mf.read_lora_A(out / mf.LORA_A, 0, [e["name"] for e in manifest["layers"]])
    on_phone = np.stack([features.run(phone_tok.prompt_ids(p, 64), a).pooled for p in prompts])
    on_node = pooled_hidden(adapted, tok, prompts, max_length=64, depth=depth)

    # Assert: the same layer (1 of the tiny model's 2 at 0.5), the same pooled states and signature
    assert manifest["signature"]["layer"] == 1 and manifest["signature"]["layers"] == 2
    np.testing.assert_allclose(on_phone, on_node, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(project_signature(on_phone, 3), project_signature(on_node, 3), atol=1e-5)
