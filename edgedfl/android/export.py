"""``export_bundle``: write one phone's Android bundle (programs, tokenizer, A, masks, manifest).

The bundle's layout and the manifest's meaning are in
:mod:`edgedfl.android.manifest`, the exported modules in
:mod:`edgedfl.android.programs`. This file wires them: it loads the base three
times (each program wraps its own copy: peft injects into the model it is
given), lowers the programs, stores A of every slot exactly as the Python nodes
initialise them, writes the masks and the manifest, and checks that the
training program's loss equals torch's on an example batch and that the
``tokenizers`` file encodes like the model's tokenizer.

Exporting SmolLM2 takes minutes on two cores (the XNNPACK lowering dominates);
the tiny model takes about a minute.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgedfl._version import __version__
from edgedfl.adapters import solora
from edgedfl.adapters.config import AdapterConfig
from edgedfl.android import manifest as mf
from edgedfl.config import ConfigBase, check, option
from edgedfl.errors import AdapterError
from edgedfl.model.loading import num_layers
from edgedfl.model.placement import to_numpy
from edgedfl.protocol.topics import Topics
from edgedfl.routing.config import RouterConfig
from edgedfl.topology.signatures import DEFAULT_DEPTH, signature_layer
from edgedfl.wire.envelope import SCHEMA_VERSION

log = logging.getLogger("edgedfl.android")

PROGRAMS = ("train", "features", "infer")

#: strings the tokenizer check encodes both ways
_TOKENIZER_PROBES = ("Task: arithmetic word problem\nQuestion: 3 + 4?\nAnswer:", " 42", " BASE VALUE", "é ü 漢字 🙂")


@dataclasses.dataclass
class AndroidExportConfig(ConfigBase):
    model: str = option("tiny", help="base model: tiny, smollm2, a hub id, a directory or a .gguf")
    node: str = option("phone0", help="the phone's node id on the swarm")
    slot: int = option(0, help="the phone's planned expert slot (its masks in the bundle); "
                               "a phone in a live swarm takes the slot its cluster gets")
    task: str = option("arith", help="the phone's data: a built-in task or a JSONL file (recorded for the app)")
    out: str = option("", help="output folder (empty: android_bridge/out/<node>)")
    swarm: str = option("demo", help="swarm name: the MQTT topic prefix edgedfl/<swarm>/...")
    broker: str = option("", help="mqtt://host:port the phone connects to")
    batch_size: int = option(8, help="examples per training step (fixed in the training program)")
    max_length: int = option(128, help="tokens per training example (fixed; the phone pads to it)")
    local_steps: int = option(10, help="SGD steps per round")
    lr: float = option(2.0, help="SGD learning rate (ExecuTorch's Python bindings offer SGD only); 2.0 lowers the "
                                 "tiny model's loss in 30 steps at least as fast as the nodes' AdamW at 2e-3")
    momentum: float = option(0.0, help="SGD momentum")
    programs: list[str] = option(help=f"which programs to write, of {PROGRAMS}", factory=lambda: list(PROGRAMS))
    adapter: AdapterConfig = option(help="the swarm's adapter settings (seed, rank, slots, density)",
                                    factory=lambda: AdapterConfig(num_slots=4))
    signature_depth: float = option(
        DEFAULT_DEPTH, help="the swarm's signature_depth: the features program pools that decoder layer, as the "
        "nodes do (edgedfl.node.signature)",
    )
    router: RouterConfig = option(help="the swarm's router (its layer decides which layer's input the features "
                                       "program returns as routing features)", factory=RouterConfig)
    swarm_settings: dict[str, Any] = option(
        help="the swarm's full shared settings, copied into the manifest for the phone", factory=dict
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        n = type(self).__name__
        check(0 <= self.slot < self.adapter.num_slots, n, "slot", self.slot,
              f"must be in [0, {self.adapter.num_slots}) (adapter.num_slots)")
        check(not self.adapter.spec.trains_A, n, "adapter.method", self.adapter.method,
              "phones train B only: a method whose A is frozen (solora, ffa)")
        check(self.batch_size >= 1, n, "batch_size", self.batch_size, "must be >= 1")
        check(self.max_length >= 8, n, "max_length", self.max_length, "must be >= 8")
        check(self.lr > 0, n, "lr", self.lr, "must be > 0")
        check(0 < self.signature_depth <= 1, n, "signature_depth", self.signature_depth, "must be in (0, 1]")
        check(0 <= self.momentum < 1, n, "momentum", self.momentum, "must be in [0, 1)")
        check(bool(self.programs) and set(self.programs) <= set(PROGRAMS), n, "programs", self.programs,
              f"a non-empty subset of {PROGRAMS}")

    @property
    def out_dir(self) -> Path:
        return Path(self.out) if self.out else mf.default_bundle_dir(self.node)


def _load(cfg: AndroidExportConfig) -> tuple[Any, Any]:
    from edgedfl.model.loading import load_model

    return load_model(cfg.model, seed=cfg.adapter.seed)


def _attach(cfg: AndroidExportConfig, num_slots: int) -> tuple[Any, Any]:
    from edgedfl.adapters import attach_adapter

    base, tok = _load(cfg)
    return attach_adapter(base, dataclasses.replace(cfg.adapter, num_slots=num_slots)), tok


def example_train_batch(cfg: AndroidExportConfig, vocab: int, seed: int = 0) -> tuple[Any, Any, Any]:
    """A random right-padded batch of the training program's fixed shape (input_ids, labels, attention_mask)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    b, t = cfg.batch_size, cfg.max_length
    ids = torch.randint(3, vocab, (b, t), generator=g)  # (B, T)
    lengths = torch.randint(t // 2, t + 1, (b,), generator=g)  # (B,)
    mask = (torch.arange(t)[None, :] < lengths[:, None]).long()  # (B, T)
    labels = torch.where(mask.bool(), ids, torch.full_like(ids, -100))  # (B, T)
    labels[:, : t // 4] = -100  # a prompt: no loss on it
    return ids * mask, labels, mask


def _write_tokenizer(tok: Any, path: Path) -> dict[str, Any]:
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        raise AdapterError(f"{type(tok).__name__} has no fast (tokenizers) backend to export")
    backend.save(str(path))
    from tokenizers import Tokenizer

    raw = Tokenizer.from_file(str(path))
    for text in _TOKENIZER_PROBES:
        for special in (True, False):
            mine = raw.encode(text, add_special_tokens=special).ids
            theirs = list(tok(text, add_special_tokens=special)["input_ids"])
            if mine != theirs:
                raise AdapterError(f"tokenizer.json encodes {text!r} (special={special}) as {mine[:8]}..., "
                                   f"the model's tokenizer as {theirs[:8]}...")
    return {"file": mf.TOKENIZER, "pad_id": tok.pad_token_id, "eos_id": tok.eos_token_id,
            "bos_id": tok.bos_token_id, "prompt_special_tokens": True, "padding": "left for prompts, right for training"}


def _topics(cfg: AndroidExportConfig) -> dict[str, str]:
    t = Topics(cfg.swarm)
    return {
        "presence": t.presence(cfg.node), "hello": t.hello(cfg.node),
        "update": f"{t.base}/update/<slot>/<node>", "expert": f"{t.base}/expert/<slot>/<node>",
        "ack": f"{t.base}/ack/<to>/<node>",
    }


def export_bundle(cfg: AndroidExportConfig, *, masks: dict[str, np.ndarray] | None = None) -> Path:
    """Write the bundle of ``cfg`` into ``cfg.out_dir``; returns the folder.

    ``masks`` (layer -> bool (d_out, r)): the phone's masks if known (e.g. its
    cluster's, after calibration); default: uniform masks of ``cfg.slot``.
    """
    import torch

    from edgedfl.android.programs import FeaturesProgram, TrainProgram, lower_training, lower_xnnpack

    t0 = time.monotonic()
    out = cfg.out_dir
    out.mkdir(parents=True, exist_ok=True)
    a = cfg.adapter
    k_slots = a.num_slots

    # A of every slot, exactly as the nodes initialise them (the K-slot model also feeds the router)
    adapted_k, tok = _attach(cfg, k_slots)
    names = list(adapted_k.layers)
    shapes = adapted_k.layer_shapes()  # layer -> (d_in, d_out)
    a_tensors = {mf.a_key(k, n): to_numpy(adapted_k.A(k, n).float()).copy()
                 for k in range(k_slots) for n in names}
    from safetensors.numpy import save_file

    save_file(a_tensors, str(out / mf.LORA_A))
    vocab = int(adapted_k.peft_model.base_model.model.config.vocab_size)
    hidden = int(adapted_k.peft_model.base_model.model.config.hidden_size)
    n_layers = num_layers(adapted_k.peft_model.base_model.model)
    sig_layer = signature_layer(n_layers, cfg.signature_depth)
    scaling = float(a.scaling)

    if masks is None:
        masks = {n: solora.make_mask(a.seed, n, cfg.slot, shapes[n][1], a.rank, a.density) for n in names}
        mask_source = "uniform"
    else:
        mask_source = "given"
    mf.write_masks(out / mf.MASKS, masks)
    tokenizer = _write_tokenizer(tok, out / mf.TOKENIZER)
    from edgedfl.topology import DEFAULT_DIM, projection_matrix

    save_file({"projection": projection_matrix(a.seed, hidden, DEFAULT_DIM).astype(np.float32)},
              str(out / mf.SIGNATURE))
    from edgedfl.routing.router import resolved_config, routing_module_names

    router_cfg = resolved_config(adapted_k, cfg.router)
    routing_modules = routing_module_names(adapted_k, router_cfg)

    programs: dict[str, Any] = {}
    a_inputs = [f"lora_A[{n}] float32 ({a.rank}, {shapes[n][0]})" for n in names]
    slot_a = [torch.from_numpy(a_tensors[mf.a_key(cfg.slot, n)]) for n in names]
    param_names: dict[str, str] = {}
    check_diff = None
    if "train" in cfg.programs:
        adapted_1, _ = _attach(cfg, 1)
        train = TrainProgram(adapted_1, 0)
        param_names = train.parameter_names()
        batch = example_train_batch(cfg, vocab)
        (out / mf.TRAIN_PTE).write_bytes(lower_training(train, (*batch, *slot_a)))
        check_diff = _check_training(out / mf.TRAIN_PTE, train, (*batch, *slot_a))
        shape = f"int64 ({cfg.batch_size}, {cfg.max_length})"
        programs["train"] = {
            "file": mf.TRAIN_PTE, "method": "forward", "runtime": "executorch.extension.training",
            "inputs": [f"input_ids {shape}", f"labels {shape} (-100 = no loss)", f"attention_mask {shape}",
                       *a_inputs],
            "outputs": ["loss float32 ()"], "batch_size": cfg.batch_size, "max_length": cfg.max_length,
            "trainable": "one B per layer (see layers[].param); base and A frozen",
            "check_loss_abs_diff": check_diff,
        }
        log.info("train program written (%.0f s)", time.monotonic() - t0)
    if "features" in cfg.programs:
        from torch.export import Dim

        base_f, _ = _load(cfg)
        feats = FeaturesProgram(base_f, names, routing_modules, router_cfg.pooling, signature_layer=sig_layer)
        seq = Dim("seq", min=2, max=max(cfg.max_length, 16) * 4)
        ids = torch.randint(3, vocab, (1, 9))
        dyn = {"input_ids": {1: seq}, "attention_mask": {1: seq}, "lora_A": tuple({} for _ in names)}
        (out / mf.FEATURES_PTE).write_bytes(
            lower_xnnpack(feats, (ids, torch.ones_like(ids), *slot_a), dyn))
        programs["features"] = {
            "file": mf.FEATURES_PTE, "method": "forward", "backend": "xnnpack",
            "inputs": ["input_ids int64 (1, T)", "attention_mask int64 (1, T)", *a_inputs],
            "outputs": [(f"pooled float32 (1, {hidden}): mean over real tokens of decoder layer {sig_layer}'s output "
                         f"(of {n_layers}; the last one after the final norm)"),
                        f"cov float32 ({len(names)}, {a.rank}, {a.rank}): per layer sum over tokens of (x Aᵀ)ᵀ(x Aᵀ)",
                        f"energy float32 ({len(names)},): per layer sum of ||x||²", "tokens float32 ()",
                        (f"routing float32 (1, {len(routing_modules) * a.rank}): the prompt's routing features in "
                        "the slot's subspace (input of the latent code)")],
            "routing_modules": list(routing_modules), "router": router_cfg.to_dict(),
        }
        log.info("features program written (%.0f s)", time.monotonic() - t0)
    if "infer" in cfg.programs:
        programs["infer"] = _export_infer(cfg, adapted_k, names, out, router_cfg)
        log.info("inference program written (%.0f s)", time.monotonic() - t0)

    manifest = {
        "bundle_version": mf.BUNDLE_VERSION, "edgedfl_version": __version__, "wire_schema_version": SCHEMA_VERSION,
        "model": cfg.model, "vocab_size": vocab, "hidden_size": hidden, "node": cfg.node, "task": cfg.task,
        "method": a.method, "seed": a.seed, "slot": cfg.slot, "num_slots": k_slots, "rank": a.rank,
        "alpha": a.alpha, "scaling": scaling, "a_scale": a.a_scale, "density": a.density,
        "density_min": a.density_min, "density_proxy": a.density_proxy,
        "layers": [{"name": n, "d_in": shapes[n][0], "d_out": shapes[n][1], "param": param_names.get(n, "")}
                   for n in names],
        "programs": programs, "tokenizer": tokenizer,
        "signature": {"file": mf.SIGNATURE, "tensor": "projection", "shape": f"({hidden}, {DEFAULT_DIM})",
                      "rule": "(mean over prompts of pooled) @ projection, scaled to unit L2 norm",
                      "depth": cfg.signature_depth, "layer": sig_layer, "layers": n_layers},
        "lora_A": {"file": mf.LORA_A, "key": "slot<k>/<layer>", "dtype": "float32", "shape": "(r, d_in)"},
        "masks": {"file": mf.MASKS, "slot": cfg.slot, "source": mask_source,
                  "packing": "numpy.packbits of the bool (d_out, r) mask, row-major, big bit order",
                  "applied": "the training program trains dense B; multiply B by the mask after every SGD step"},
        "mqtt": {"swarm": cfg.swarm, "broker": cfg.broker, "topics": _topics(cfg), "qos": 1,
                 "presence": "retained 'online', last will 'offline'"},
        "training": {"optimizer": "sgd", "lr": cfg.lr, "momentum": cfg.momentum, "local_steps": cfg.local_steps,
                     "batch_size": cfg.batch_size, "max_length": cfg.max_length,
                     "loss": "mean cross-entropy over completion tokens (labels != -100), shifted by one"},
        "swarm_settings": cfg.swarm_settings, "export_s": round(time.monotonic() - t0, 1),
    }
    mf.write_manifest(out, manifest)
    log.info("bundle for %s written to %s in %.0f s", cfg.node, out, time.monotonic() - t0)
    return out


def _check_training(path: Path, module: Any, inputs: tuple[Any, ...]) -> float:
    """|loss(ExecuTorch) - loss(torch)| on the example batch; raises if they disagree."""
    from executorch.extension.training import _load_for_executorch_for_training

    program = _load_for_executorch_for_training(str(path))
    et_loss = float(program.forward_backward("forward", inputs)[0])
    torch_loss = float(module(*inputs)[0].detach())
    diff = abs(et_loss - torch_loss)
    if not diff <= 1e-4 * max(1.0, abs(torch_loss)):
        raise AdapterError(f"training program loss {et_loss} differs from torch's {torch_loss}")
    return diff


def _export_infer(cfg: AndroidExportConfig, adapted_k: Any, names: list[str], out: Path,
                  router_cfg: Any) -> dict[str, Any]:
    """The routed model (base + every expert + router) with B and codes as inputs, lowered to XNNPACK."""
    import torch
    from torch.export import Dim

    from edgedfl.android.programs import InferProgram, lower_xnnpack
    from edgedfl.export.module import RoutedLlama
    from edgedfl.routing import LatentCode
    from edgedfl.routing.router import RoutedModel, routing_module_names

    k, r = adapted_k.num_slots, adapted_k.config.rank
    modules = routing_module_names(adapted_k, router_cfg)
    dim = len(modules) * r
    placeholder = [LatentCode(2, np.zeros(dim), np.eye(dim)) for _ in range(k)]  # codes are program inputs
    routed = RoutedLlama(RoutedModel(adapted_k, placeholder, router_cfg))
    program = InferProgram(routed, names)
    shapes = adapted_k.layer_shapes()
    vocab = int(routed.embed.shape[0])
    ids = torch.randint(3, vocab, (1, 9))
    route = torch.zeros(1, k)
    means, factors = torch.zeros(k, dim), torch.eye(dim).repeat(k, 1, 1)
    b_cat = [torch.zeros(k * r, shapes[n][1]) for n in names]
    seq = Dim("seq", min=2, max=max(cfg.max_length, 16) * 4)
    dyn = {"input_ids": {1: seq}, "attention_mask": {1: seq}, "route": {}, "code_means": {}, "code_factors": {},
           "lora_B": tuple({} for _ in names)}
    (out / mf.INFER_PTE).write_bytes(lower_xnnpack(program, (ids, torch.ones_like(ids), route, means, factors,
                                                             *b_cat), dyn))
    return {
        "file": mf.INFER_PTE, "method": "forward", "backend": "xnnpack", "routed": True, "num_experts": k,
        "code_dim": dim, "router": router_cfg.to_dict(), "routing_modules": list(modules),
        "inputs": ["input_ids int64 (1, T)", "attention_mask int64 (1, T)",
                   f"route float32 (1, {k}): one-hot or weights to force experts, all zero = the router picks",
                   f"code_means float32 ({k}, {dim})", f"code_factors float32 ({k}, {dim}, {dim})",
                   *[f"lora_B[{n}] float32 ({k * r}, {shapes[n][1]}): rows k*r..(k+1)*r-1 = scaling * B_kᵀ"
                     for n in names]],
        "outputs": [f"logits float32 (1, T, {vocab})", "expert int64 (1,)", f"route_weights float32 (1, {k})"],
        "kv_cache": False,
    }
