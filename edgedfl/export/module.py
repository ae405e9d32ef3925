"""RoutedLlama: the whole routed forward of a Llama-family model in plain tensor ops, for export.

No peft, no Python control flow that depends on data: every expert's A and B
of a layer are concatenated into one rank-K·r pair (``A_cat`` (d_in, K·r),
``B_cat`` (K·r, d_out), each slot's LoRA scaling folded into B), and a route
(B, K) of weights scales the K·r intermediate columns, so

    y = x W + ((x A_cat) ⊙ repeat(w, r)) B_cat

is the base plus the chosen expert (one-hot w), the top-k mix, or the sum of
all experts (w = 1), in one graph. Projections that read the same input
(q/k/v, gate/up) are fused into one MatMul each, experts included (a
block-diagonal B), in the routed graph and the merged baseline alike. A gather of the chosen expert's A and B per
row would do less arithmetic for large K; at K·r = 32 the dense form costs a
few percent of a forward and keeps the graph to plain MatMuls (measured in
bench/bench_onnx.py).

The router runs inside the graph: the routing layer's normed attention input
on the frozen base, pooled over the current call's real tokens, projected
through the routing modules' A_cat (the same tensors the experts use), scored
against the codes (means (K, D), precision factors (K, D, D)) and turned into
top-k weights. A ``route`` input (B, K) overrides it row by row wherever the
row is non-zero: decode steps feed back the prefill's ``route_weights`` so the
expert chosen for the prompt is kept for every generated token, and callers
force oracle, single-expert (one-hot) or merge-all (ones) routes the same way.

KV cache: ``past_mask`` (B, P) and ``past.<i>.key/value`` (B, n_kv, P, hd) in,
``present_mask`` (B, P+T) and ``present.<i>.key/value`` out; P may be 0
(prefill). Carrying the padding mask as part of the cache keeps every dynamic
dimension independent (batch, T, P), which torch.export needs. Positions
follow ``generate``: each row's real tokens count from 0 (left padding).
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import nn

from edgedfl.errors import AdapterError

#: Llama projection names, in forward order
ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")


def _t(w: torch.Tensor) -> torch.Tensor:
    return w.detach().float().t().contiguous()


class _Proj(nn.Module):
    """Linear layers that read the same input, fused: one base MatMul, one expert A, one expert B.

    Members (q/k/v, or gate/up, or a single projection) are concatenated along
    the output: ``weight`` (d_in, Σ d_out), ``lora_A`` (d_in, G·K·r) and a
    block-diagonal ``lora_B`` (G·K·r, Σ d_out) (a member without experts gets
    zero blocks). Fewer, larger MatMuls are what a CPU runtime runs fastest.
    """

    weight: torch.Tensor
    lora_A: torch.Tensor
    lora_B: torch.Tensor

    def __init__(self, members: list[tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]],
                 lora_cols: int) -> None:
        super().__init__()
        self.sizes = [int(w.shape[0]) for w, _ in members]
        self.register_buffer("weight", torch.cat([_t(w) for w, _ in members], dim=1))  # (d_in, Σ d_out)
        self.has_lora = any(lora is not None for _, lora in members)
        self.groups = len(members)
        if self.has_lora:
            d_in = int(members[0][0].shape[1])
            a_blocks, b_block = [], torch.zeros(len(members) * lora_cols, sum(self.sizes))
            offset = 0
            for g, (w, lora) in enumerate(members):
                if lora is not None:
                    a_blocks.append(_t(lora[0]))  # (d_in, K*r)
                    b_block[g * lora_cols : (g + 1) * lora_cols, offset : offset + w.shape[0]] = _t(lora[1])
                else:
                    a_blocks.append(torch.zeros(d_in, lora_cols))
                offset += int(w.shape[0])
            self.register_buffer("lora_A", torch.cat(a_blocks, dim=1))  # (d_in, G*K*r)
            self.register_buffer("lora_B", b_block)  # (G*K*r, Σ d_out), block-diagonal

    def forward(self, x: torch.Tensor, w_rep: torch.Tensor) -> torch.Tensor:
        y = x @ self.weight  # (B, T, Σ d_out)
        if self.has_lora:
            w_g = w_rep.repeat(1, 1, self.groups) if self.groups > 1 else w_rep  # (B, 1, G*K*r)
            y = y + ((x @ self.lora_A) * w_g) @ self.lora_B  # (B, T, Σ d_out)
        return y


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    var = x.pow(2).mean(-1, keepdim=True)  # (B, T, 1)
    return x * torch.rsqrt(var + eps) * weight  # (B, T, d)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class _Layer(nn.Module):
    ln1: torch.Tensor
    ln2: torch.Tensor
    qkv: _Proj
    o_proj: _Proj
    gate_up: _Proj
    down_proj: _Proj

    def __init__(self, hf_layer: Any, lookup: Any, prefix: str, eps: float, lora_cols: int) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("ln1", hf_layer.input_layernorm.weight.detach().float().clone())  # (d,)
        self.register_buffer("ln2", hf_layer.post_attention_layernorm.weight.detach().float().clone())  # (d,)
        attn, mlp = hf_layer.self_attn, hf_layer.mlp

        def proj(owner: Any, names: tuple[str, ...], where: str) -> _Proj:
            return _Proj([lookup(getattr(owner, n), f"{prefix}.{where}.{n}") for n in names], lora_cols)

        self.qkv = proj(attn, ATTN[:3], "self_attn")
        self.o_proj = proj(attn, ATTN[3:], "self_attn")
        self.gate_up = proj(mlp, MLP[:2], "mlp")
        self.down_proj = proj(mlp, MLP[2:], "mlp")


class RoutedLlama(nn.Module):
    """Base + every expert + router of a :class:`~edgedfl.routing.router.RoutedModel`, export-ready.

    Built from host copies of the model's tensors, wherever the model lives (a CUDA node's experts export
    to the same CPU graph as a CPU node's)."""

    embed: torch.Tensor
    norm: torch.Tensor
    lm_head: torch.Tensor
    inv_freq: torch.Tensor
    code_means: torch.Tensor
    code_factors: torch.Tensor

    def __init__(self, routed: Any, *, merge_slot: int | None = None) -> None:
        """``merge_slot`` k: the baseline of one merged adapter instead (W + s·B_k·A_k, no router, no
        experts; the same inputs and outputs, ``expert`` always k)."""
        super().__init__()
        adapted = routed.adapted
        hf = adapted.peft_model.base_model.model  # the transformers CausalLM, LoRA layers inside
        cfg = hf.config
        if getattr(cfg, "model_type", "") not in ("llama", "mistral", "qwen2", "smollm3") or not hasattr(hf, "model"):
            raise AdapterError(f"RoutedLlama exports Llama-style decoders, not {getattr(cfg, 'model_type', '?')!r}")
        if getattr(cfg, "attention_bias", False) or getattr(cfg, "mlp_bias", False):
            raise AdapterError("RoutedLlama does not export attention or MLP biases")
        # layer name -> (A_cat (K*r, d_in), B_cat (d_out, K*r)), on the host
        stacks = {n: (a.cpu(), b.cpu()) for n, (a, b) in routed.expert_stacks().items()}
        inner = hf.model
        self.num_layers = int(cfg.num_hidden_layers)
        self.num_heads = int(cfg.num_attention_heads)
        self.num_kv = int(cfg.num_key_value_heads)
        self.head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
        self.num_experts = int(routed.num_experts)
        self.rank = int(adapted.config.rank)
        self.eps = float(cfg.rms_norm_eps)
        self.top_k = min(int(routed.config.top_k), self.num_experts)
        self.temperature = float(routed.config.temperature)
        self.pooling = routed.config.pooling
        self.routing_layer = int(routed.config.layer)
        if self.routing_layer >= self.num_layers:
            raise AdapterError(f"routing layer {self.routing_layer} >= {self.num_layers} layers")

        by_module = {}
        for name, layer in adapted.layers.items():
            by_module[id(layer)] = name

        self.merge_slot = merge_slot
        if merge_slot is not None and not 0 <= merge_slot < self.num_experts:
            raise AdapterError(f"merge_slot {merge_slot} out of range ({self.num_experts} experts)")

        def lookup(module: Any, path: str) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
            """(base weight (d_out, d_in), experts' (A_cat, B_cat) or None) of one projection."""
            name = by_module.get(id(module))
            weight = module.weight if name is None else module.base_layer.weight
            if type(weight) not in (torch.Tensor, nn.Parameter) or not weight.dtype.is_floating_point:
                raise AdapterError(f"{path}: export needs an unquantized base (load it with quant 'none'), "
                                   f"found {type(weight).__name__}")
            weight = weight.cpu()
            if name is None:
                return weight.detach(), None
            if merge_slot is not None:  # one adapter merged into the weight
                k, r = merge_slot, self.rank
                a, b = stacks[name]  # (K*r, d_in), (d_out, K*r), scaling folded into b
                delta = b[:, k * r : (k + 1) * r] @ a[k * r : (k + 1) * r]  # (d_out, d_in)
                return weight.detach() + delta, None
            return weight.detach(), stacks[name]  # a peft LoraLayer: base weight + experts

        self.register_buffer("embed", inner.embed_tokens.weight.detach().float().clone())  # (V, d)
        self.layers = nn.ModuleList(
            [_Layer(layer, lookup, f"model.layers.{i}", self.eps, self.num_experts * self.rank)
             for i, layer in enumerate(inner.layers)]
        )
        self.register_buffer("norm", inner.norm.weight.detach().float().clone())  # (d,)
        self.tied = bool(getattr(cfg, "tie_word_embeddings", False)) and (
            hf.lm_head.weight.data_ptr() == inner.embed_tokens.weight.data_ptr()
        )
        if not self.tied:
            self.register_buffer("lm_head", _t(hf.lm_head.weight))  # (d, V)
        rot = inner.rotary_emb
        self.register_buffer("inv_freq", rot.inv_freq.detach().float().clone())  # (hd/2,)
        self.rope_scale = float(getattr(rot, "attention_scaling", 1.0))
        # router: which projections' A_cat project the pooled state, and the codes
        short = [m.rsplit(".", 1)[-1] for m in routed.routing_modules]
        #: positions of the routing modules inside the fused q/k/v projection, in the codes' order
        self.route_index = [ATTN[:3].index(m) for m in short]
        if merge_slot is None and not self.layer(self.routing_layer).qkv.has_lora:
            raise AdapterError("every routing module must be adapted")
        self.register_buffer("code_means", routed.code_means.float().clone())  # (K, D)
        self.register_buffer("code_factors", routed.code_factors.float().clone())  # (K, D, D)
        self.to("cpu")  # embeddings, norms, lm_head, rotary and codes of a CUDA model: export runs on the host

    # -- pieces -----------------------------------------------------------------

    def layer(self, i: int) -> _Layer:
        return cast(_Layer, self.layers[i])

    def _attention(
        self, layer: _Layer, x: torch.Tensor, w_rep: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
        bias: torch.Tensor, past_k: torch.Tensor | None, past_v: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, t, _ = x.shape
        hd, nh, nkv = self.head_dim, self.num_heads, self.num_kv
        q, k, v = layer.qkv(x, w_rep).split(layer.qkv.sizes, dim=-1)  # (B, T, nh*hd), (B, T, nkv*hd) x 2
        q = q.reshape(b, t, nh, hd).transpose(1, 2)  # (B, nh, T, hd)
        k = k.reshape(b, t, nkv, hd).transpose(1, 2)  # (B, nkv, T, hd)
        v = v.reshape(b, t, nkv, hd).transpose(1, 2)  # (B, nkv, T, hd)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        if past_k is not None and past_v is not None:
            k = torch.cat([past_k, k], dim=2)  # (B, nkv, P+T, hd)
            v = torch.cat([past_v, v], dim=2)  # (B, nkv, P+T, hd)
        s = k.shape[2]
        group = nh // nkv
        k_rep = k[:, :, None].expand(b, nkv, group, s, hd).reshape(b, nh, s, hd)  # (B, nh, S, hd)
        v_rep = v[:, :, None].expand(b, nkv, group, s, hd).reshape(b, nh, s, hd)  # (B, nh, S, hd)
        scores = (q @ k_rep.transpose(-1, -2)) * (hd**-0.5) + bias  # (B, nh, T, S)
        probs = torch.softmax(scores, dim=-1)  # (B, nh, T, S)
        out = (probs @ v_rep).transpose(1, 2).reshape(b, t, nh * hd)  # (B, T, nh*hd)
        return layer.o_proj(out, w_rep), k, v

    def _block(
        self, layer: _Layer, h: torch.Tensor, w_rep: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
        bias: torch.Tensor, past_k: torch.Tensor | None, past_v: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        a, k, v = self._attention(layer, _rms(h, layer.ln1, self.eps), w_rep, cos, sin, bias, past_k, past_v)
        h = h + a  # (B, T, d)
        x = _rms(h, layer.ln2, self.eps)  # (B, T, d)
        gate, up = layer.gate_up(x, w_rep).split(layer.gate_up.sizes, dim=-1)  # (B, T, d_ff) x 2
        mlp = layer.down_proj(torch.nn.functional.silu(gate) * up, w_rep)  # (B, T, d)
        return h + mlp, k, v

    def _route(self, x_route: torch.Tensor, mask_now: torch.Tensor, route: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(weights (B, K), distances (B, K)) from the routing layer's normed input (B, T, d)."""
        b = x_route.shape[0]
        if self.pooling == "last":
            pooled = x_route[:, -1]  # (B, d)
        else:
            m = mask_now.to(x_route.dtype)[..., None]  # (B, T, 1)
            pooled = (x_route * m).sum(1) / m.sum(1).clamp(min=1.0)  # (B, d)
        qkv_a = self.layer(self.routing_layer).qkv.lora_A  # (d, 3*K*r): q, k, v blocks
        full = (pooled @ qkv_a).view(b, 3, self.num_experts, self.rank)  # (B, 3, K, r)
        z = full[:, self.route_index].permute(0, 2, 1, 3).reshape(b, self.num_experts, -1)  # (B, K, D)
        white = torch.einsum("bkd,kde->bke", z - self.code_means, self.code_factors)  # (B, K, D)
        dist = (white * white).sum(-1)  # (B, K)
        vals, idx = torch.topk(-dist, self.top_k, dim=1)  # (B, k)
        w_top = torch.softmax(vals / (2.0 * self.temperature), dim=1)  # (B, k)
        routed = torch.zeros_like(dist).scatter(1, idx, w_top)  # (B, K)
        given = route.abs().sum(-1, keepdim=True) > 0  # (B, 1)
        return torch.where(given, route, routed), dist

    # -- forward -----------------------------------------------------------------

    def forward(
        self,
        input_ids: torch.Tensor,  # (B, T) int64
        attention_mask: torch.Tensor,  # (B, T) int64, 1 = real token
        route: torch.Tensor,  # (B, K) float32; all-zero rows are routed by the graph
        past_mask: torch.Tensor,  # (B, P) int64
        past: list[torch.Tensor],  # 2L tensors (B, n_kv, P, hd): key 0, value 0, key 1, ...
    ) -> tuple[torch.Tensor, ...]:
        b, t = input_ids.shape
        p = past_mask.shape[1]
        full_mask = torch.cat([past_mask, attention_mask], dim=1)  # (B, P+T)
        pos = (full_mask.cumsum(-1) - 1).clamp(min=0)[:, p:]  # (B, T)
        freqs = pos[..., None].float() * self.inv_freq  # (B, T, hd/2)
        emb = torch.cat([freqs, freqs], dim=-1)  # (B, T, hd)
        cos = (emb.cos() * self.rope_scale)[:, None]  # (B, 1, T, hd)
        sin = (emb.sin() * self.rope_scale)[:, None]  # (B, 1, T, hd)
        q_pos = torch.arange(t, device=input_ids.device) + p  # (T,)
        k_pos = torch.arange(p + t, device=input_ids.device)  # (S,)
        allowed = (k_pos[None, :] <= q_pos[:, None])[None] & (full_mask[:, None, :] > 0)  # (B, T, S)
        bias = torch.where(allowed, 0.0, torch.finfo(torch.float32).min)[:, None]  # (B, 1, T, S)

        h = self.embed[input_ids]  # (B, T, d)
        if self.merge_slot is not None:  # the merged-adapter baseline: no router, no experts
            weights = torch.zeros(b, self.num_experts, dtype=h.dtype)
            weights[:, self.merge_slot] = 1.0  # (B, K)
            presents_m: list[torch.Tensor] = []
            for i in range(self.num_layers):
                h, k, v = self._block(self.layer(i), h, weights, cos, sin, bias, past[2 * i], past[2 * i + 1])
                presents_m += [k, v]
            h = _rms(h, self.norm, self.eps)  # (B, T, d)
            logits = h @ (self.embed.t() if self.tied else self.lm_head)  # (B, T, V)
            return (logits, weights.argmax(-1), weights, torch.zeros_like(weights), full_mask, *presents_m)
        # router on the frozen base: layers before the routing layer run without experts (no cache)
        h_route = h
        zero_rep = torch.zeros(b, 1, self.num_experts * self.rank, dtype=h.dtype)  # (B, 1, K*r)
        if self.routing_layer > 0:
            own = torch.where(
                (torch.arange(t)[None, :] <= torch.arange(t)[:, None])[None] & (attention_mask[:, None, :] > 0),
                0.0, torch.finfo(torch.float32).min,
            )[:, None]  # (B, 1, T, T)
            for i in range(self.routing_layer):
                h_route, _, _ = self._block(self.layer(i), h_route, zero_rep, cos, sin, own, None, None)
        x_route = _rms(h_route, self.layer(self.routing_layer).ln1, self.eps)  # (B, T, d)
        weights, dist = self._route(x_route, attention_mask, route)  # (B, K), (B, K)
        w_rep = weights.repeat_interleave(self.rank, dim=1)[:, None, :]  # (B, 1, K*r)

        presents: list[torch.Tensor] = []
        for i in range(self.num_layers):
            h, k, v = self._block(self.layer(i), h, w_rep, cos, sin, bias, past[2 * i], past[2 * i + 1])
            presents += [k, v]
        h = _rms(h, self.norm, self.eps)  # (B, T, d)
        logits = h @ (self.embed.t() if self.tied else self.lm_head)  # (B, T, V)
        expert = weights.argmax(-1)  # (B,)
        return (logits, expert, weights, dist, full_mask, *presents)

    # -- names for export and runtime ----------------------------------------------

    def input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "route", "past_mask"] + [
            f"past.{i}.{kv}" for i in range(self.num_layers) for kv in ("key", "value")
        ]

    def output_names(self) -> list[str]:
        return ["logits", "expert", "route_weights", "distances", "present_mask"] + [
            f"present.{i}.{kv}" for i in range(self.num_layers) for kv in ("key", "value")
        ]

    def example_inputs(self, batch: int = 2, seq: int = 5, past: int = 3) -> tuple[Any, ...]:
        ids = torch.randint(3, int(self.embed.shape[0]), (batch, seq))  # (B, T)
        mask = torch.ones(batch, seq, dtype=torch.long)  # (B, T)
        route = torch.zeros(batch, self.num_experts)  # (B, K)
        pmask = torch.ones(batch, past, dtype=torch.long)  # (B, P)
        kv = [torch.zeros(batch, self.num_kv, past, self.head_dim) for _ in range(2 * self.num_layers)]
        return ids, mask, route, pmask, kv
