"""RoutedModel: implicit mixture of experts over an AdaptedModel's slots, in torch.

Each slot of the :class:`~edgedfl.adapters.model.AdaptedModel` is an expert
with a :class:`~edgedfl.routing.codes.LatentCode`. For a batch of prompts:

1. **Pool.** The routing layer's normed attention input ``x`` (B, T, d) on
   the frozen base (adapters off), pooled over the real prompt tokens, gives
   ``h`` (B, d). The default layer sits at 0.4 of the depth
   (:data:`~edgedfl.routing.config.ROUTER_DEPTH`): a partial forward of L
   frozen layers, stopped by a hook at the routing module, once per prompt.
   Layer 0 is free (``input_layernorm(embed_tokens(ids))``, read directly: the
   route is known before the first adapted matmul) but blind to a question
   that differs in one word over the same input (the long suite's
   first/last), which a middle layer still tells apart.
2. **Project and score.** ``z`` (B, K, D) = ``h`` through every expert's A of
   every routing module; squared Mahalanobis distances (B, K) to the codes.
3. **Apply.** Route weights (B, K) (one-hot for top-1) are applied at *every*
   adapted layer: peft's own adapters are switched off and a forward hook on
   each LoRA layer adds ``Σ_k w[b, k] · s_k · B_k A_k x`` — the experts'
   A and B concatenated into one rank-K·r pair, so top-1, top-k, merge-all and
   single expert are the same code path (the exported ONNX graph does the
   same, see :mod:`edgedfl.export.module`). Rows of one batch may use
   different experts.

Devices: the codes live on the model's device, and every entry point moves the
prompt tensors it is given there (:mod:`edgedfl.model.placement`); a
:class:`Route` lives on the model's device too (``to_numpy`` brings it home).

The route is computed once from the prompt and kept for every generated token
(the hook's weights stay fixed for the whole ``generate`` call). As an
independent reference for one-hot routes, :meth:`RoutedModel.peft_logits` runs
peft's own mixed-batch path (``adapter_names`` per row).

Modes (:data:`~edgedfl.routing.config.MODES`): ``implicit`` (the router),
``oracle`` (the true slot of each row, given by the caller), ``merge`` (sum of
all experts' deltas, weight 1 each), ``single`` (one given slot for every row)
and ``none`` (the frozen base).
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from edgedfl.adapters.config import FUSED_INTO
from edgedfl.adapters.model import slot_name
from edgedfl.errors import AdapterError, ConfigError
from edgedfl.model.batching import collate_prompts
from edgedfl.model.loading import num_layers
from edgedfl.model.placement import model_device
from edgedfl.routing.codes import LatentCode, stack_codes
from edgedfl.routing.config import MODES, RouterConfig


class _StopForward(Exception):
    """Raised by the capture hook: the partial forward has what it needs."""


@dataclasses.dataclass
class Route:
    """The route of a batch: weights (B, K), top-1 expert (B,), distances (B, K) or None; on the model's device."""

    weights: Any  # torch (B, K) float32
    experts: Any  # torch (B,) int64
    distances: Any | None = None  # torch (B, K) float32, implicit mode only


def resolved_config(adapted: Any, config: RouterConfig) -> RouterConfig:
    """``config`` with its automatic layer made concrete for ``adapted``'s base model."""
    return config.resolved(num_layers(adapted.peft_model.base_model.model))


def routing_module_names(adapted: Any, config: RouterConfig) -> list[str]:
    """The adapted-layer names (keys of ``adapted.layers``) the router projects through.

    On a model whose attention input goes through one fused ``qkv_proj`` (phi3),
    ``q_proj``/``k_proj``/``v_proj`` name that projection: the default modules
    route there too, with one rank-r block instead of three.
    """
    config = resolved_config(adapted, config)
    names: list[str] = []
    for module in config.modules:
        pattern = re.compile(rf"(^|\.)layers\.{config.layer}\.self_attn\.{module}$")
        found = [n for n in adapted.layers if pattern.search(n)]
        if not found and module in FUSED_INTO:
            fused = re.compile(rf"(^|\.)layers\.{config.layer}\.self_attn\.{FUSED_INTO[module]}$")
            found = [n for n in adapted.layers if fused.search(n)]
        if len(found) != 1:
            raise AdapterError(
                f"routing module {module!r} of layer {config.layer} is not an adapted layer "
                f"(found {found}); adapt it (target_modules) or change RouterConfig.modules"
            )
        if found[0] not in names:
            names.append(found[0])
    return names


class RoutedModel:
    """An AdaptedModel whose slots are experts chosen per prompt (see the module docstring)."""

    def __init__(
        self,
        adapted: Any,
        codes: Mapping[int, LatentCode] | Sequence[LatentCode],
        config: RouterConfig | None = None,
        names: Sequence[str] | None = None,
    ) -> None:
        import torch

        self._torch = torch
        self.adapted = adapted
        adapted.peft_model.eval()  # inference only: no dropout, and peft refuses adapter_names in train mode
        self.config = resolved_config(adapted, config or RouterConfig())
        code_list = list(codes.values()) if isinstance(codes, Mapping) else list(codes)
        if isinstance(codes, Mapping) and sorted(codes) != list(range(adapted.num_slots)):
            raise AdapterError(f"need one latent code per slot 0..{adapted.num_slots - 1}, got {sorted(codes)}")
        if isinstance(codes, Mapping):
            code_list = [codes[k] for k in range(adapted.num_slots)]
        if len(code_list) != adapted.num_slots:
            raise AdapterError(f"{len(code_list)} latent codes for {adapted.num_slots} slots")
        self.codes = code_list
        self.names = list(names) if names is not None else [slot_name(k) for k in range(adapted.num_slots)]
        if len(self.names) != adapted.num_slots:
            raise AdapterError(f"{len(self.names)} expert names for {adapted.num_slots} slots")
        self.routing_modules = routing_module_names(adapted, self.config)
        dim = len(self.routing_modules) * adapted.config.rank
        if any(c.dim != dim for c in self.codes):
            raise AdapterError(f"latent codes must have dimension {dim} (modules x rank), got "
                               f"{sorted({c.dim for c in self.codes})}")
        means, factors = stack_codes(self.codes, self.config.ridge)
        device = model_device(adapted.peft_model)  # the codes meet the model's states there
        self.code_means = torch.from_numpy(means).float().to(device)  # (K, D)
        self.code_factors = torch.from_numpy(factors).float().to(device)  # (K, D, D)
        self._stacks: tuple[tuple[Any, ...], dict[str, tuple[Any, Any]]] | None = None

    @property
    def num_experts(self) -> int:
        return int(self.adapted.num_slots)

    @property
    def peft_model(self) -> Any:
        return self.adapted.peft_model

    def _on_model(self, *tensors: Any) -> tuple[Any, ...]:
        """``tensors`` on the model's device (no-ops where they already are; None stays None)."""
        device = model_device(self.peft_model)
        return tuple(None if t is None else t.to(device) for t in tensors)

    # -- router ------------------------------------------------------------------

    def pooled(self, input_ids: Any, attention_mask: Any) -> Any:
        """Pooled routing-layer state (B, d) of the frozen base: a partial forward, adapters off."""
        return pooled_state(self.adapted, self.config, self.routing_modules, input_ids, attention_mask)

    def project(self, pooled: Any) -> Any:
        """Routing features (B, K, D) of pooled states (B, d): through every expert's A of every module."""
        return project(self.adapted, self.routing_modules, pooled)

    def features(self, input_ids: Any, attention_mask: Any) -> Any:
        return self.project(self.pooled(input_ids, attention_mask))  # (B, K, D)

    def distances(self, input_ids: Any, attention_mask: Any) -> Any:
        """Squared Mahalanobis distance (B, K) of each prompt to each expert's code."""
        z = self.features(input_ids, attention_mask)  # (B, K, D)
        white = self._torch.einsum("bkd,kde->bke", z - self.code_means, self.code_factors)  # (B, K, D)
        return (white**2).sum(-1)  # (B, K)

    def route(
        self, input_ids: Any, attention_mask: Any, mode: str = "implicit", slots: int | Sequence[int] | None = None
    ) -> Route:
        """The route of a batch under ``mode``; ``slots`` is the true slot per row (oracle) or one slot (single)."""
        torch = self._torch
        batch, k = int(input_ids.shape[0]), self.num_experts
        if mode not in MODES:
            raise ConfigError(f"routing mode {mode!r}: choose from {MODES}")
        input_ids, attention_mask = self._on_model(input_ids, attention_mask)
        device = input_ids.device
        dist = None
        if mode == "implicit":
            dist = self.distances(input_ids, attention_mask)  # (B, K)
            weights = weights_from_distances(dist, self.config.top_k, self.config.temperature)
        elif mode == "merge":
            weights = torch.ones(batch, k, device=device)  # (B, K)
        elif mode == "none":
            weights = torch.zeros(batch, k, device=device)  # (B, K)
        else:
            rows = _slots_for(mode, slots, batch, k)
            weights = torch.nn.functional.one_hot(torch.tensor(rows, device=device), k).float()  # (B, K)
        experts = weights.argmax(-1) if mode != "none" else torch.full((batch,), -1, device=device)
        return Route(weights, experts, dist)

    # -- applying a route ----------------------------------------------------------

    def expert_stacks(self) -> dict[str, tuple[Any, Any]]:
        """layer -> (A_cat (K·r, d_in), B_cat (d_out, K·r) with each slot's scaling folded in).

        Cached until any A or B changes in place (torch bumps a tensor's version on every write).
        """
        torch = self._torch
        key = tuple(
            (self.adapted.A(k, n)._version, self.adapted.B(k, n)._version, id(self.adapted.B(k, n)))
            for n in self.adapted.layers for k in range(self.num_experts)
        )
        if self._stacks is not None and self._stacks[0] == key:
            return dict(self._stacks[1])
        out = {}
        for name, layer in self.adapted.layers.items():
            a = torch.cat([self.adapted.A(k, name).detach() for k in range(self.num_experts)], 0)  # (K*r, d_in)
            b = torch.cat([
                self.adapted.B(k, name).detach() * float(layer.scaling[slot_name(k)])
                for k in range(self.num_experts)
            ], 1)  # (d_out, K*r)
            out[name] = (a, b)
        self._stacks = (key, out)
        return dict(out)

    @contextlib.contextmanager
    def applied(self, weights: Any) -> Iterator[None]:
        """Within the block the peft model runs the base plus the experts weighted by ``weights`` (B, K)."""
        torch = self._torch
        rank = self.adapted.config.rank
        w_rep = weights.float().repeat_interleave(rank, dim=1)[:, None, :]  # (B, 1, K*r)
        handles = []

        def make_hook(a: Any, b: Any) -> Any:
            def hook(module: Any, args: tuple[Any, ...], output: Any) -> Any:
                x = args[0]  # (B, T, d_in)
                if x.shape[0] != w_rep.shape[0]:
                    raise AdapterError(f"route has {w_rep.shape[0]} rows, the batch {x.shape[0]}")
                h = (x.to(a.dtype) @ a.T) * w_rep.to(device=a.device, dtype=a.dtype)  # (B, T, K*r)
                return output + (h @ b.T).to(output.dtype)  # (B, T, d_out)

            return hook

        for name, (a, b) in self.expert_stacks().items():
            handles.append(self.adapted.layers[name].register_forward_hook(make_hook(a, b)))
        try:
            with torch.no_grad(), self.peft_model.disable_adapter():
                yield
        finally:
            for h in handles:
                h.remove()

    def logits(
        self, input_ids: Any, attention_mask: Any, mode: str = "implicit", slots: int | Sequence[int] | None = None
    ) -> tuple[Any, Route]:
        """(logits (B, T, V), route) of one routed forward."""
        input_ids, attention_mask = self._on_model(input_ids, attention_mask)
        route = self.route(input_ids, attention_mask, mode, slots)
        with self.applied(route.weights):
            out = self.peft_model(input_ids=input_ids, attention_mask=attention_mask,
                                  position_ids=position_ids(attention_mask))
        return out.logits, route

    def peft_logits(self, input_ids: Any, attention_mask: Any, experts: Sequence[int]) -> Any:
        """Reference: peft's own mixed-batch forward, expert ``experts[b]`` on row b (top-1 routes only)."""
        torch = self._torch
        names = [slot_name(int(k)) if int(k) >= 0 else "__base__" for k in experts]
        input_ids, attention_mask = self._on_model(input_ids, attention_mask)
        self.peft_model.eval()
        with torch.no_grad():
            return self.peft_model(input_ids=input_ids, attention_mask=attention_mask, adapter_names=names,
                                   position_ids=position_ids(attention_mask)).logits

    def generate(
        self,
        input_ids: Any,
        attention_mask: Any,
        mode: str = "implicit",
        slots: int | Sequence[int] | None = None,
        *,
        max_new_tokens: int = 16,
        pad_token_id: int | None = None,
        eos_token_id: int | None = None,
    ) -> tuple[Any, Route]:
        """Greedy generation (new tokens (B, N)) with the route chosen once from the prompt."""
        input_ids, attention_mask = self._on_model(input_ids, attention_mask)
        route = self.route(input_ids, attention_mask, mode, slots)
        with self.applied(route.weights):
            out = self.peft_model.generate(
                input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens,
                do_sample=False, pad_token_id=pad_token_id, eos_token_id=eos_token_id,
            )
        return out[:, input_ids.shape[1]:], route

    def generate_text(
        self,
        tokenizer: Any,
        prompts: Sequence[str],
        mode: str = "implicit",
        slots: int | Sequence[int] | None = None,
        *,
        max_new_tokens: int = 16,
        max_length: int = 256,
    ) -> tuple[list[str], Route]:
        """Decoded greedy answers for ``prompts`` and their route."""
        batch = collate_prompts(tokenizer, prompts, max_length)
        new, route = self.generate(
            batch["input_ids"], batch["attention_mask"], mode, slots, max_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        )
        return tokenizer.batch_decode(new.cpu(), skip_special_tokens=True), route


# -- helpers ----------------------------------------------------------------------


def pooled_state(adapted: Any, config: RouterConfig, modules: Sequence[str], input_ids: Any,
                 attention_mask: Any) -> Any:
    """Pooled input (B, d) of the routing module ``modules[0]`` on the frozen base.

    Layer 0 of a Llama-style model reads ``input_layernorm(embed_tokens(ids))``
    directly (no forward at all); other layers, or other architectures, run a
    partial forward that stops at the routing module. The prompt tensors are moved to the model's device.
    """
    import torch

    config = resolved_config(adapted, config)
    device = model_device(adapted.peft_model)
    input_ids = input_ids.to(device)
    attention_mask = None if attention_mask is None else attention_mask.to(device)

    if config.layer == 0:
        direct = _layer0_state(adapted, input_ids)
        if direct is not None:
            return pool(direct.float(), attention_mask, config.pooling)  # (B, d)
    captured: list[Any] = []

    def hook(module: Any, args: tuple[Any, ...]) -> None:
        captured.append(args[0].detach())
        raise _StopForward

    handle = adapted.layers[modules[0]].register_forward_pre_hook(hook)
    try:
        with torch.no_grad(), adapted.peft_model.disable_adapter():
            adapted.peft_model(input_ids=input_ids, attention_mask=attention_mask)
    except _StopForward:
        pass
    finally:
        handle.remove()
    if not captured:
        raise AdapterError("the routing module never ran: is RouterConfig.layer within the model?")
    return pool(captured[0].float(), attention_mask, config.pooling)  # (B, d)


def _layer0_state(adapted: Any, input_ids: Any) -> Any | None:
    """``input_layernorm(embed_tokens(ids))`` of layer 0 (B, T, d), or None if the model is not Llama-shaped."""
    import torch

    hf = adapted.peft_model.base_model.model
    layers = getattr(getattr(hf, "model", None), "layers", None)
    norm = getattr(layers[0], "input_layernorm", None) if layers is not None and len(layers) else None
    if norm is None:
        return None
    with torch.no_grad():
        return norm(hf.get_input_embeddings()(input_ids))  # (B, T, d)


def project(adapted: Any, modules: Sequence[str], pooled: Any) -> Any:
    """Features (B, K, D) of pooled states (B, d) through every slot's A of every routing module."""
    import torch

    parts = []
    for name in modules:
        A = torch.stack([adapted.A(k, name).detach().float() for k in range(adapted.num_slots)])  # (K, r, d)
        parts.append(torch.einsum("bd,krd->bkr", pooled, A))  # (B, K, r)
    return torch.cat(parts, dim=-1)  # (B, K, D)


def pool(x: Any, attention_mask: Any | None, pooling: str) -> Any:
    """Pool hidden states (B, T, d) over real tokens: 'mean' or 'last' (prompts are left-padded)."""
    if pooling == "last" or attention_mask is None:
        return x[:, -1] if pooling == "last" else x.mean(1)  # (B, d)
    m = attention_mask[:, -x.shape[1]:].to(x.dtype)[..., None]  # (B, T, 1)
    return (x * m).sum(1) / m.sum(1).clamp(min=1.0)  # (B, d)


def position_ids(attention_mask: Any) -> Any:
    """Positions of left-padded rows as ``generate`` numbers them: real tokens count from 0."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, T)


def weights_from_distances(dist: Any, top_k: int, temperature: float) -> Any:
    """Torch twin of :func:`edgedfl.routing.codes.route_weights`: (B, K) weights, top-k softmax(-d/2T)."""
    import torch

    k = min(top_k, dist.shape[1])
    vals, idx = torch.topk(-dist, k, dim=1)  # (B, k) largest -d = smallest d
    w = torch.softmax(vals / (2.0 * temperature), dim=1)  # (B, k)
    return torch.zeros_like(dist).scatter(1, idx, w)  # (B, K)


def _slots_for(mode: str, slots: int | Sequence[int] | None, batch: int, k: int) -> list[int]:
    if slots is None:
        raise ConfigError(f"routing mode {mode!r} needs slots (oracle: one per row; single: one slot)")
    if mode == "single":
        if not isinstance(slots, (int, np.integer)):
            raise ConfigError(f"routing mode 'single' takes one slot, got {slots!r}")
        rows = [int(slots)] * batch
    else:
        rows = [slots] * batch if isinstance(slots, (int, np.integer)) else [int(s) for s in slots]
    if len(rows) != batch or any(not 0 <= s < k for s in rows):
        raise ConfigError(f"slots {rows} do not fit a batch of {batch} rows and {k} experts")
    return rows
