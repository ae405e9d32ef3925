"""The torch modules a bundle exports, and their lowering to ExecuTorch programs.

Three programs, all with A of the phone's slot as an input (see
:mod:`edgedfl.android.manifest` for why):

* :class:`TrainProgram` ``(input_ids, labels, attention_mask, *A) -> (loss,)``:
  the peft model of :mod:`edgedfl.adapters` with one slot whose B (one per
  adapted layer) are the only parameters with a gradient; the base is frozen.
  The loss is the one the Python nodes train on (Hugging Face's causal-LM
  loss: shifted, completion tokens only, mean over them). Shapes are fixed
  (batch, max_length): ExecuTorch's training runtime plans memory once; the
  phone pads to them.
* :class:`FeaturesProgram` ``(input_ids, attention_mask, *A) -> (pooled, cov,
  energy, tokens, routing)`` on the frozen base: the mean-pooled output of the
  signature's decoder layer per prompt (the task signature's input, as
  ``edgedfl.node.signature`` computes it at the swarm's ``signature_depth``), per adapted layer the statistics of its input in the slot's
  subspace (as ``AdaptedModel.calibrate`` computes them; padding excluded), and
  the prompt's routing features in the slot's subspace (as
  ``edgedfl.routing.calibrate.routing_features``: the latent code's input).
* :class:`InferProgram` ``(input_ids, attention_mask, route, code_means,
  code_factors, *B_cat) -> (logits, expert, route_weights)``: the routed model
  of :mod:`edgedfl.export.module` (base + every expert + router in plain tensor
  ops) with the experts' B and the latent codes as inputs, so the phone plugs
  in the experts it trained and collected without a new export. No KV cache:
  the phone's greedy loop re-runs the prompt (short prompts; keeps the
  program to one dynamic sequence dimension).

Attention runs the "eager" implementation: ExecuTorch has no out-variant of
the fused CPU attention backward, and eager attention lowers everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from edgedfl.errors import AdapterError
from edgedfl.model.placement import set_eager_attention


class _Current:
    """The A inputs of the call in progress, by layer (shared by a program and its ``_InputA`` modules).

    A plain object rather than a dict attribute: torch.export snapshots and
    restores containers held by modules, which would split the sharing.
    """

    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}


class _InputA(nn.Module):
    """Stands in for peft's ``lora_A`` Linear: multiplies by the A passed to the current call."""

    weight: torch.Tensor

    def __init__(self, current: _Current, name: str) -> None:
        super().__init__()
        self.current = current
        self.name = name
        # peft reads lora_A.weight.dtype to cast the input; a one-element stand-in, not saved
        self.register_buffer("weight", torch.zeros(1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.current.tensors[self.name].t()  # (B, T, d_in) @ (d_in, r) -> (B, T, r)


class TrainProgram(nn.Module):
    """Loss of one slot's LoRA with A as inputs and B the only trainable tensors."""

    def __init__(self, adapted: Any, slot: int = 0) -> None:
        super().__init__()
        if adapted.spec.trains_A:
            raise AdapterError(f"the Android training program trains B only, not method {adapted.method!r} (it trains A)")
        self.layer_names: list[str] = list(adapted.layers)
        self.slot = slot
        self._current = _Current()
        adapted.activate(slot)
        key = f"slot{slot}"
        for name, layer in adapted.layers.items():
            layer.lora_A[key] = _InputA(self._current, name)
        set_eager_attention(adapted.peft_model.base_model.model)
        adapted.peft_model.eval()  # no dropout; gradients still flow
        for p in adapted.peft_model.parameters():
            p.requires_grad_(False)
        for name in self.layer_names:
            adapted.B(slot, name).requires_grad_(True)
        self.model = adapted.peft_model
        self._adapted = adapted

    def parameter_names(self) -> dict[str, str]:
        """layer -> fully qualified name of its B in this module (and so in the program)."""
        ids = {id(self._adapted.B(self.slot, n)): n for n in self.layer_names}
        return {ids[id(p)]: fqn for fqn, p in self.named_parameters() if id(p) in ids}

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor, attention_mask: torch.Tensor,
                *lora_A: torch.Tensor) -> tuple[torch.Tensor]:
        if len(lora_A) != len(self.layer_names):
            raise AdapterError(f"{len(lora_A)} A inputs for {len(self.layer_names)} layers")
        self._current.tensors = dict(zip(self.layer_names, lora_A))
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
        return (out.loss,)


class FeaturesProgram(nn.Module):
    """Pooled hidden states and per-layer input statistics of the frozen base (no LoRA)."""

    def __init__(self, base_model: Any, layer_names: Sequence[str], routing_modules: Sequence[str] = (),
                 pooling: str = "mean", signature_layer: int = -1) -> None:
        super().__init__()
        #: index into the decoder's hidden states (0: embeddings, i: layer i's output, the last after the norm)
        self.signature_layer = signature_layer
        set_eager_attention(base_model)
        base_model.eval()
        for p in base_model.parameters():
            p.requires_grad_(False)
        self.base = base_model
        self.layer_names = list(layer_names)
        self.routing = [self.layer_names.index(n) for n in routing_modules]
        self.pooling = pooling
        self._seen = _Current()
        modules = dict(base_model.named_modules())
        missing = [n for n in self.layer_names if n not in modules]
        if missing:
            raise AdapterError(f"base model has no layers {missing[:3]}")
        for name in self.layer_names:
            modules[name].register_forward_pre_hook(self._make_hook(name))

    def _make_hook(self, name: str) -> Any:
        def hook(module: Any, args: tuple[Any, ...]) -> None:
            self._seen.tensors[name] = args[0]

        return hook

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                *lora_A: torch.Tensor) -> tuple[torch.Tensor, ...]:
        self._seen.tensors = {}
        out = self.base.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        m = attention_mask.to(torch.float32)[..., None]  # (B, T, 1)
        h = out.hidden_states[self.signature_layer].float()  # (B, T, H)
        pooled = (h * m).sum(1) / m.sum(1)  # (B, H)
        covs, energies = [], []
        for name, a in zip(self.layer_names, lora_A):
            x = self._seen.tensors[name].float() * m  # (B, T, d_in), padding zeroed
            proj = x @ a.t()  # (B, T, r)
            flat = proj.reshape(-1, proj.shape[-1])  # (B*T, r)
            covs.append(flat.t() @ flat)  # (r, r)
            energies.append((x * x).sum())
        outputs = [pooled, torch.stack(covs), torch.stack(energies), m.sum()]
        if self.routing:  # routing features in the slot's subspace, as edgedfl.routing.calibrate computes them
            parts = []
            for i in self.routing:
                x = self._seen.tensors[self.layer_names[i]].float()  # (B, T, d_in)
                if self.pooling == "last":
                    pooled_x = x[:, -1]  # (B, d_in)
                else:
                    pooled_x = (x * m).sum(1) / m.sum(1)  # (B, d_in)
                parts.append(pooled_x @ lora_A[i].t())  # (B, r)
            outputs.append(torch.cat(parts, dim=-1))  # (B, D)
        return tuple(outputs)


#: adapted projection -> (fused module of RoutedLlama, position inside it)
_FUSED = {"q_proj": ("qkv", 0), "k_proj": ("qkv", 1), "v_proj": ("qkv", 2), "o_proj": ("o_proj", 0),
          "gate_proj": ("gate_up", 0), "up_proj": ("gate_up", 1), "down_proj": ("down_proj", 0),
          "qkv_proj": ("qkv", 0), "gate_up_proj": ("gate_up", 0)}


class InferProgram(nn.Module):
    """The routed model with the experts' B and the latent codes as inputs (no KV cache).

    Inputs keep one B per adapted layer, ``(K·r, d_out)``: what the phone holds
    and receives. The routed model fuses projections that read the same input
    (q/k/v, gate/up) into one block-diagonal B; ``forward`` assembles those
    blocks from the per-layer inputs (zero blocks for members not adapted).
    """

    def __init__(self, routed_llama: Any, layer_names: Sequence[str]) -> None:
        super().__init__()
        self.inner = routed_llama
        self.layer_names = list(layer_names)
        modules = dict(routed_llama.named_modules())
        #: fused buffer key -> (sizes of its members, {member position: index into the B inputs})
        self.fused: dict[str, tuple[list[int], dict[int, int]]] = {}
        for i, name in enumerate(self.layer_names):
            # adapted "model.layers.<i>.<self_attn|mlp>.<proj>" -> RoutedLlama "layers.<i>.<fused>.lora_B"
            parts = name.split(".")
            if len(parts) != 5 or parts[0] != "model" or parts[1] != "layers" or parts[4] not in _FUSED:
                raise AdapterError(f"cannot map layer {name!r} onto the routed model")
            fused, pos = _FUSED[parts[4]]
            owner = modules.get(f"layers.{parts[2]}.{fused}")
            if owner is None or not getattr(owner, "has_lora", False):
                raise AdapterError(f"routed model has no layers.{parts[2]}.{fused}.lora_B for layer {name}")
            entry = self.fused.setdefault(f"layers.{parts[2]}.{fused}.lora_B", (list(owner.sizes), {}))
            entry[1][pos] = i

    def _block(self, sizes: list[int], members: dict[int, int], lora_B: tuple[torch.Tensor, ...]) -> torch.Tensor:
        rows_per = int(lora_B[next(iter(members.values()))].shape[0])  # K*r
        total = sum(sizes)
        rows, offset = [], 0
        for g, size in enumerate(sizes):
            if g in members:
                b = lora_B[members[g]]  # (K*r, size)
                left = b.new_zeros(rows_per, offset)
                right = b.new_zeros(rows_per, total - offset - size)
                rows.append(torch.cat([left, b, right], dim=1))
            else:
                rows.append(lora_B[0].new_zeros(rows_per, total))
            offset += size
        return torch.cat(rows, dim=0)  # (G*K*r, Σ d_out), block-diagonal

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, route: torch.Tensor,
                code_means: torch.Tensor, code_factors: torch.Tensor,
                *lora_B: torch.Tensor) -> tuple[torch.Tensor, ...]:
        inner = self.inner
        b = input_ids.shape[0]
        past_mask = torch.ones(b, 1, dtype=attention_mask.dtype)[:, :0]  # (B, 0): no cache
        past = [torch.zeros(b, inner.num_kv, 0, inner.head_dim) for _ in range(2 * inner.num_layers)]
        swap = {key: self._block(sizes, members, lora_B) for key, (sizes, members) in self.fused.items()}
        swap.update(code_means=code_means, code_factors=code_factors)
        out = torch.func.functional_call(inner, swap, (input_ids, attention_mask, route, past_mask, past))
        return out[0], out[1], out[2]


# -- lowering ---------------------------------------------------------------------------


def rewrite_empty_permuted(gm: torch.fx.GraphModule) -> int:
    """Replace each ``aten.empty_permuted`` (no ExecuTorch kernel) by ``aten.empty`` + ``aten.permute``.

    ``empty_permuted(size, perm)`` is an uninitialised tensor of logical shape
    ``size`` whose memory is laid out in the order ``perm``: the same as an
    empty tensor of shape ``size[perm]`` viewed through the inverse permutation.
    Returns the number of nodes rewritten.
    """
    graph = gm.graph
    count = 0
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target != torch.ops.aten.empty_permuted.default:
            continue
        size, perm = list(node.args[0]), list(node.args[1])  # type: ignore[arg-type]
        inverse = [perm.index(i) for i in range(len(perm))]
        with graph.inserting_before(node):
            physical = graph.call_function(torch.ops.aten.empty.memory_format, ([size[p] for p in perm],),
                                           dict(node.kwargs))
            logical = graph.call_function(torch.ops.aten.permute.default, (physical, inverse))
        logical.meta = dict(node.meta)
        node.replace_all_uses_with(logical)
        graph.erase_node(node)
        count += 1
    graph.lint()
    gm.recompile()
    return count


def lower_training(module: nn.Module, example_inputs: tuple[Any, ...]) -> bytes:
    """Forward + backward of ``module`` (first output the loss) as an ExecuTorch training program."""
    from executorch.exir import EdgeCompileConfig, to_edge
    from torch.export.experimental import _export_forward_backward

    ep = torch.export.export(module, example_inputs, strict=False)
    ep = _export_forward_backward(ep, joint_loss_index=0)
    rewrite_empty_permuted(ep.graph_module)
    edge = to_edge(ep, compile_config=EdgeCompileConfig(_check_ir_validity=False))
    return bytes(edge.to_executorch().buffer)


def lower_xnnpack(module: nn.Module, example_inputs: tuple[Any, ...], dynamic_shapes: Any = None) -> bytes:
    """An inference program delegated to XNNPACK where it can (the rest on portable kernels)."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    with torch.no_grad():
        ep = torch.export.export(module, example_inputs, dynamic_shapes=dynamic_shapes, strict=False)
    lowered = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()])
    return bytes(lowered.to_executorch().buffer)
