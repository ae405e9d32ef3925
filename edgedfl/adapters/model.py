"""AdaptedModel: expert slots of sparse-orthogonal LoRA (or a baseline) on a peft model.

Every slot is a peft LoRA adapter named ``slot<k>`` on the same base, so peft's
machinery (quantized bases, mixed-batch ``adapter_names``, save/load) works for
all of them. What differs between methods is only how A is initialised, what
trains and what travels:

=======  ======================================  =========  ==================
method   A                                       trains     travels per round
=======  ======================================  =========  ==================
solora   orthonormal rows of a seeded basis,     masked B   B values under a
         exactly orthogonal across slots                    fixed mask
lora     seeded Kaiming-uniform (peft default)   A and B    dense A and B
ffa      seeded Kaiming-uniform, frozen          dense B    dense B
=======  ======================================  =========  ==================

All A matrices derive from (swarm seed, layer name, slot), so every device of a
swarm starts from the same adapter without exchanging anything. Masked entries
of B stay exactly zero: their gradients are masked by a hook and
:meth:`AdaptedModel.apply_masks` runs after every optimizer step.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgedfl.adapters import solora
from edgedfl.adapters.config import FUSED_INTO, AdapterConfig
from edgedfl.adapters.solora import b_key
from edgedfl.errors import AdapterError
from edgedfl.model.placement import model_device, to_device, to_numpy

log = logging.getLogger("edgedfl.adapters")

BASE_PREFIX = "base_model.model."


def slot_name(slot: int) -> str:
    return f"slot{slot}"


def resolve_targets(model: Any, targets: Sequence[str]) -> list[str]:
    """``targets`` for this model: a name no linear layer has, whose fused projection it has, becomes that one.

    phi3 computes q, k and v in one ``qkv_proj`` and gate and up in one
    ``gate_up_proj``: the default targets (q/k/v/o) adapt ``qkv_proj`` and
    ``o_proj`` there, the same places as on a Llama. Order is kept, repeats dropped.
    """
    from torch import nn

    leaves = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    out: list[str] = []
    for t in targets:
        name = FUSED_INTO[t] if t not in leaves and FUSED_INTO.get(t) in leaves else t
        if name not in out:
            out.append(name)
    if out != list(targets):
        log.info("target_modules %s -> %s on this model (fused projections)", list(targets), out)
    return out


class AdaptedModel:
    """A base model with ``num_slots`` LoRA expert slots of one method."""

    def __init__(self, base_model: Any, config: AdapterConfig) -> None:
        import torch
        from peft import LoraConfig, get_peft_model

        self.config = config
        #: the method object: what trains, what travels
        self.spec = config.spec
        self._torch = torch
        #: what peft adapts: the configured names, each fused projection standing in for its parts (phi3)
        self.target_modules = resolve_targets(base_model, config.target_modules)
        lora_cfg = LoraConfig(
            r=config.rank,
            lora_alpha=config.alpha,  # type: ignore[arg-type]  # peft accepts float alpha
            target_modules=self.target_modules,
            lora_dropout=config.dropout,
            bias="none",
            task_type="CAUSAL_LM",
        )
        self.lora_config = lora_cfg
        self.peft_model: Any = get_peft_model(base_model, lora_cfg, adapter_name=slot_name(0))
        for k in range(1, config.num_slots):
            self.peft_model.add_adapter(slot_name(k), lora_cfg)
        self.layers: dict[str, Any] = self._find_layers()
        if not self.layers:
            raise AdapterError(f"no layer matches target_modules={config.target_modules}")
        missing = [t for t in self.target_modules if not any(n.rsplit(".", 1)[-1] == t for n in self.layers)]
        if missing:  # e.g. a fused qkv_proj (phi3): q/k/v_proj match nothing and only o_proj would train
            log.warning("target_modules %s match no layer of this model; adapted: %s", missing,
                        sorted({n.rsplit(".", 1)[-1] for n in self.layers}))
        #: slot -> layer -> bool tensor (d_out, r), for the gradient hooks; sparse methods only
        self.masks: dict[int, dict[str, Any]] = {}
        #: slot -> layer -> density actually used
        self.densities: dict[int, dict[str, float]] = {}
        self._init_weights()
        self._hooks = []
        if self.spec.sparse:
            for name, layer in self.layers.items():
                for k in range(config.num_slots):
                    B = layer.lora_B[slot_name(k)].weight.requires_grad_(True)  # hooks need a grad leaf
                    self._hooks.append(B.register_hook(self._grad_mask_hook(k, name)))
        self.active_slot = 0
        self.activate(0)

    # -- structure ------------------------------------------------------------

    def _find_layers(self) -> dict[str, Any]:
        from peft.tuners.lora import LoraLayer

        found = {}
        for name, module in self.peft_model.named_modules():
            if isinstance(module, LoraLayer):
                found[name.removeprefix(BASE_PREFIX)] = module
        return dict(sorted(found.items()))

    @property
    def method(self) -> str:
        return self.config.method

    @property
    def num_slots(self) -> int:
        return self.config.num_slots

    def layer_shapes(self) -> dict[str, tuple[int, int]]:
        """layer -> (d_in, d_out)."""
        return {n: (int(m.in_features), int(m.out_features)) for n, m in self.layers.items()}

    def A(self, slot: int, layer: str) -> Any:
        return self.layers[layer].lora_A[slot_name(slot)].weight  # (r, d_in)

    def B(self, slot: int, layer: str) -> Any:
        return self.layers[layer].lora_B[slot_name(slot)].weight  # (d_out, r)

    # -- initialisation -------------------------------------------------------

    def _init_weights(self) -> None:
        cfg = self.config
        torch = self._torch
        with torch.no_grad():
            for name, layer in self.layers.items():
                d_in = int(layer.in_features)
                for k in range(cfg.num_slots):
                    a = self.spec.init_A(cfg.seed, name, d_in, cfg.rank, k, cfg.num_slots, cfg.a_scale)  # (r, d_in)
                    A = layer.lora_A[slot_name(k)].weight
                    A.copy_(torch.from_numpy(a).to(A.dtype))
                    layer.lora_B[slot_name(k)].weight.zero_()
            if self.spec.sparse:
                for k in range(cfg.num_slots):
                    self.set_uniform_masks(k, cfg.density)

    def _grad_mask_hook(self, slot: int, layer: str) -> Any:
        def hook(grad: Any) -> Any:
            mask = self.masks.get(slot, {}).get(layer)
            return grad if mask is None else grad * mask

        return hook

    # -- masks ----------------------------------------------------------------

    def set_uniform_masks(self, slot: int, density: float, *, random_positions: bool = False) -> None:
        """Masks with the same density in every layer (before calibration, or the ablation)."""
        cfg = self.config
        masks = {}
        for name, (_, d_out) in self.layer_shapes().items():
            if random_positions:
                masks[b_key(name)] = solora.random_mask(cfg.seed, name, slot, d_out, cfg.rank, density)
            else:
                masks[b_key(name)] = solora.make_mask(cfg.seed, name, slot, d_out, cfg.rank, density)
        self.set_masks(slot, masks, {k: density for k in masks})

    def masks_from_stats(self, slot: int, stats: dict[str, solora.LayerStats]) -> tuple[dict, dict]:
        """Spectrum-based masks of ``slot`` from calibration statistics (own, or a cluster's pooled).

        Returns (masks, densities), both keyed by the tensor a mask applies to (``<layer>.lora_B``).
        """
        cfg = self.config
        missing = sorted(set(self.layers) - set(stats))
        if missing:
            raise AdapterError(f"calibration statistics missing for layers {missing[:3]}...")
        sizes = {n: self.layer_shapes()[n][1] * cfg.rank for n in self.layers}
        scores = {n: solora.layer_score(stats[n], cfg.density_proxy) for n in self.layers}
        dens = solora.allocate_densities(sizes, scores, cfg.density, cfg.density_min)
        masks = {
            b_key(n): solora.make_mask(cfg.seed, n, slot, self.layer_shapes()[n][1], cfg.rank, dens[n],
                                       np.diag(stats[n].cov))
            for n in self.layers
        }
        return masks, {b_key(n): d for n, d in dens.items()}

    def set_masks(self, slot: int, masks: dict[str, np.ndarray], densities: dict[str, float] | None = None) -> None:
        """Masks of ``slot``'s B, keyed ``<layer>.lora_B`` (the update's own tensor names); applied at once."""
        torch = self._torch
        if not self.spec.sparse:
            raise AdapterError(f"method {self.method!r} has dense B; masks belong to sparse methods")
        out = {}
        for name, (_, d_out) in self.layer_shapes().items():
            if b_key(name) not in masks:
                raise AdapterError(f"no mask for {b_key(name)} (masks are keyed by tensor name)")
            m = np.asarray(masks[b_key(name)], dtype=bool)
            if m.shape != (d_out, self.config.rank):
                raise AdapterError(f"mask of {name} has shape {m.shape}, expected {(d_out, self.config.rank)}")
            B = self.B(slot, name)
            out[name] = torch.from_numpy(m.copy()).to(device=B.device, dtype=B.dtype)  # (d_out, r)
        self.masks[slot] = out
        self.densities[slot] = dict(densities or {k: float(np.asarray(m).mean()) for k, m in masks.items()})
        self.apply_masks(slot)

    def drop_masks(self, slot: int) -> None:
        """Forget ``slot``'s mask (an expert that arrived dense: nothing of it is masked here)."""
        self.masks.pop(slot, None)
        self.densities.pop(slot, None)

    def apply_masks(self, slot: int | None = None) -> None:
        """Zero every masked entry of B (after each optimizer step)."""
        with self._torch.no_grad():
            for k in ([slot] if slot is not None else list(self.masks)):
                for name, mask in self.masks.get(k, {}).items():
                    self.B(k, name).mul_(mask)

    def get_masks(self, slot: int) -> dict[str, np.ndarray]:
        """``<layer>.lora_B`` -> bool mask (d_out, r) of ``slot`` (empty: no mask)."""
        return {b_key(n): to_numpy(m.bool()) for n, m in self.masks.get(slot, {}).items()}

    # -- calibration ----------------------------------------------------------

    def calibrate(self, batches: Iterable[dict[str, Any]], slot: int | None = None) -> dict[str, solora.LayerStats]:
        """Input statistics of every adapted layer in ``slot``'s subspace, on the frozen base.

        ``batches`` yield ``input_ids`` and ``attention_mask`` (on any device: they are moved to the
        model's); padding is excluded. The statistics accumulate on the model's device in float64.
        """
        torch = self._torch
        slot = self.active_slot if slot is None else slot
        device = model_device(self.peft_model)
        acc: dict[str, list[Any]] = {}
        current_mask: list[Any] = [None]
        handles = []

        def make_hook(name: str) -> Any:
            A = self.A(slot, name).detach().double()  # (r, d_in)

            def hook(module: Any, args: tuple[Any, ...]) -> None:
                x = args[0].detach().double()  # (B, T, d_in)
                keep = current_mask[0]  # (B, T)
                x = x[keep.bool()] if keep is not None else x.reshape(-1, x.shape[-1])  # (N, d_in)
                proj = x @ A.T  # (N, r)
                entry = acc.setdefault(
                    name, [torch.zeros(A.shape[0], A.shape[0], dtype=torch.float64, device=A.device), 0.0, 0]
                )
                entry[0] += proj.T @ proj  # (r, r)
                entry[1] += float((x * x).sum())
                entry[2] += int(x.shape[0])

            return hook

        for name, layer in self.layers.items():
            handles.append(layer.register_forward_pre_hook(make_hook(name)))
        try:
            with torch.no_grad(), self.peft_model.disable_adapter():
                for batch in batches:
                    batch = to_device(batch, device)
                    current_mask[0] = batch.get("attention_mask")
                    self.peft_model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"))
        finally:
            for h in handles:
                h.remove()
            # leaving peft's disable_adapter() makes the active adapter's A trainable again
            self.activate(self.active_slot)
        if not acc:
            raise AdapterError("calibration saw no tokens")
        shapes = self.layer_shapes()
        return {
            n: solora.LayerStats(to_numpy(c), e, t, shapes[n][0], shapes[n][1]) for n, (c, e, t) in acc.items()
        }

    # -- activation and parameters ---------------------------------------------

    def activate(self, slot: int) -> None:
        """Make ``slot`` the one adapter that runs and trains (A frozen unless the method trains it)."""
        if not 0 <= slot < self.num_slots:
            raise AdapterError(f"slot {slot} out of range (num_slots={self.num_slots})")
        self.peft_model.base_model.set_adapter(slot_name(slot))
        for p in self.peft_model.parameters():
            p.requires_grad_(False)
        for name in self.layers:
            self.B(slot, name).requires_grad_(True)
            if self.spec.trains_A:
                self.A(slot, name).requires_grad_(True)
        self.active_slot = slot

    def trainable_parameters(self) -> list[Any]:
        return [p for p in self.peft_model.parameters() if p.requires_grad]

    def named_trainable(self) -> Iterator[tuple[str, Any]]:
        for name, p in self.peft_model.named_parameters():
            if p.requires_grad:
                yield name, p

    # -- what travels -----------------------------------------------------------

    def get_update(self, slot: int) -> dict[str, np.ndarray]:
        """The tensors this method sends for ``slot``: ``<layer>.lora_B`` (and ``.lora_A`` for lora).

        For solora the B arrays are dense with zeros outside the mask; the wire
        codec sends only the values under the mask.
        """
        out: dict[str, np.ndarray] = {}
        for name in self.layers:
            out[f"{name}.lora_B"] = to_numpy(self.B(slot, name).float()).copy()
            if self.spec.trains_A:
                out[f"{name}.lora_A"] = to_numpy(self.A(slot, name).float()).copy()
        return out

    def expected_update_shapes(self) -> dict[str, tuple[int, int]]:
        return self.spec.update_shapes(self.layer_shapes(), self.config.rank)

    def set_update(self, slot: int, tensors: dict[str, np.ndarray]) -> None:
        """Load tensors of the form :meth:`get_update` returns into ``slot`` (masks re-applied)."""
        torch = self._torch
        expected = self.expected_update_shapes()
        if set(tensors) != set(expected):
            extra, missing = sorted(set(tensors) - set(expected)), sorted(set(expected) - set(tensors))
            raise AdapterError(f"update tensors do not match: missing {missing[:3]}, unexpected {extra[:3]}")
        for key, arr in tensors.items():
            if tuple(arr.shape) != expected[key]:
                raise AdapterError(f"{key}: shape {tuple(arr.shape)}, expected {expected[key]}")
        with torch.no_grad():
            for key, arr in tensors.items():
                layer, which = key.rsplit(".", 1)
                target = self.B(slot, layer) if which == "lora_B" else self.A(slot, layer)
                target.copy_(torch.from_numpy(np.ascontiguousarray(arr)).to(target.dtype))
        if slot in self.masks:
            self.apply_masks(slot)

    # -- state (checkpoints) -------------------------------------------------------

    def state_tensors(self) -> dict[str, Any]:
        """Everything that is not derivable from the seed: trained weights and masks of every slot."""
        out: dict[str, Any] = {}
        for k in range(self.num_slots):
            for name in self.layers:
                out[f"{slot_name(k)}/{name}.lora_B"] = self.B(k, name).detach().clone()
                if self.spec.trains_A:
                    out[f"{slot_name(k)}/{name}.lora_A"] = self.A(k, name).detach().clone()
                if k in self.masks:
                    out[f"{slot_name(k)}/{name}.mask"] = self.masks[k][name].bool().clone()
        return out

    def load_state_tensors(self, tensors: dict[str, Any]) -> None:
        torch = self._torch
        masks: dict[int, dict[str, np.ndarray]] = {}
        with torch.no_grad():
            for key, value in tensors.items():
                slot_s, rest = key.split("/", 1)
                k = int(slot_s.removeprefix("slot"))
                layer, which = rest.rsplit(".", 1)
                if which == "mask":
                    masks.setdefault(k, {})[b_key(layer)] = to_numpy(value.bool())
                elif which == "lora_B":
                    self.B(k, layer).copy_(value)
                else:
                    self.A(k, layer).copy_(value)
        for k, m in masks.items():
            self.set_masks(k, m)

    # -- export ---------------------------------------------------------------------

    def export_peft(self, path: str | os.PathLike[str], slot: int | None = None) -> Path:
        """Write one expert as a standard peft LoRA adapter that plain ``PeftModel.from_pretrained`` loads."""
        from peft import get_peft_model_state_dict
        from safetensors.torch import save_file

        slot = self.active_slot if slot is None else slot
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = get_peft_model_state_dict(self.peft_model, adapter_name=slot_name(slot))
        state = {k: v.detach().contiguous().float().clone() for k, v in state.items()}
        save_file(state, str(path / "adapter_model.safetensors"), metadata={"format": "pt"})
        cfg = self.peft_model.peft_config[slot_name(slot)]
        cfg_dict = cfg.to_dict()
        cfg_dict["inference_mode"] = True
        base_name = getattr(self.peft_model.base_model.model.config, "_name_or_path", "") or None
        cfg_dict["base_model_name_or_path"] = base_name
        for key, value in list(cfg_dict.items()):
            if isinstance(value, set):
                cfg_dict[key] = sorted(value)
        (path / "adapter_config.json").write_text(json.dumps(cfg_dict, indent=2, sort_keys=True, default=str))
        return path
