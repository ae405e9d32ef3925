"""RoutedDecoder: the whole routed forward of a decoder-only model in plain tensor ops, for export.

Families (``config.model_type``): llama, mistral, qwen2, qwen3, smollm3, phi3
(fused ``qkv_proj`` and ``gate_up_proj``, partial rotary) and gemma3 (``gemma3_text``:
scaled embeddings, ``1 + w`` norms, norms around attention and MLP, per-head
q/k norms, local and global RoPE, sliding-window layers, soft-capping). What a
family differs in is read from the transformers modules themselves (the
attention's ``scaling`` and ``sliding_window``, which norms and projections a
layer has); a model outside these families, or with a RoPE that changes with
the sequence length, is refused with an :class:`AdapterError` naming what is missing.
``RoutedLlama`` is the same class under its first name.

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
#: the families this module exports (``config.model_type``)
FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "smollm3", "phi3", "gemma3_text")
#: RoPE types whose frequencies do not depend on the sequence length
STATIC_ROPE = ("default", "linear", "llama3", "yarn")
_ACTS = {"silu": "silu", "swish": "silu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh",
         "gelu": "gelu"}

#: (weight (d_out, d_in), bias (d_out,) or None, experts' (A_cat, B_cat) or None) of one projection
Member = tuple[torch.Tensor, torch.Tensor | None, tuple[torch.Tensor, torch.Tensor] | None]


def _t(w: torch.Tensor) -> torch.Tensor:
    return w.detach().float().t().contiguous()


class _Proj(nn.Module):
    """Linear layers that read the same input, fused: one base MatMul, one expert A, one expert B.

    Members (q/k/v, or gate/up, or a single projection) are concatenated along
    the output: ``weight`` (d_in, Σ d_out), ``bias`` (Σ d_out) where any member
    has one, ``lora_A`` (d_in, G·K·r) and a block-diagonal ``lora_B`` (G·K·r, Σ d_out)
    (a member without experts gets zero blocks). Fewer, larger MatMuls are what a CPU runtime runs fastest.
    """

    weight: torch.Tensor
    bias: torch.Tensor
    lora_A: torch.Tensor
    lora_B: torch.Tensor

    def __init__(self, members: list[Member], lora_cols: int) -> None:
        super().__init__()
        self.sizes = [int(w.shape[0]) for w, _, _ in members]
        self.register_buffer("weight", torch.cat([_t(w) for w, _, _ in members], dim=1))  # (d_in, Σ d_out)
        self.has_bias = any(b is not None for _, b, _ in members)
        if self.has_bias:
            self.register_buffer("bias", torch.cat([
                b.detach().float() if b is not None else torch.zeros(int(w.shape[0])) for w, b, _ in members
            ]))  # (Σ d_out,)
        self.has_lora = any(lora is not None for _, _, lora in members)
        self.groups = len(members)
        if self.has_lora:
            d_in = int(members[0][0].shape[1])
            a_blocks, b_block = [], torch.zeros(len(members) * lora_cols, sum(self.sizes))
            offset = 0
            for g, (w, _, lora) in enumerate(members):
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
        if self.has_bias:
            y = y + self.bias
        if self.has_lora:
            w_g = w_rep.repeat(1, 1, self.groups) if self.groups > 1 else w_rep  # (B, 1, G*K*r)
            y = y + ((x @ self.lora_A) * w_g) @ self.lora_B  # (B, T, Σ d_out)
        return y


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    var = x.pow(2).mean(-1, keepdim=True)  # (..., 1)
    return x * torch.rsqrt(var + eps) * weight  # (..., d)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding on the first ``cos.shape[-1]`` dims of each head (all of them, or a part: phi3)."""
    d = cos.shape[-1]
    if d == x.shape[-1]:
        return x * cos + _rotate_half(x) * sin
    rot, rest = x[..., :d], x[..., d:]
    return torch.cat([rot * cos + _rotate_half(rot) * sin, rest], dim=-1)


def _softcap(x: torch.Tensor, cap: float | None) -> torch.Tensor:
    return x if cap is None else torch.tanh(x / cap) * cap


def _norm_weight(norm: Any, offset: float) -> torch.Tensor:
    """A norm's effective scale: ``w`` (Llama style) or ``1 + w`` (Gemma style), on the host."""
    return norm.weight.detach().float().cpu().clone() + offset


def _members(owner: Any, names: tuple[str, ...]) -> tuple[str, ...] | None:
    return names if all(hasattr(owner, n) for n in names) else None


class _Layer(nn.Module):
    ln1: torch.Tensor
    ln2: torch.Tensor
    post_attn: torch.Tensor
    post_mlp: torch.Tensor
    q_norm: torch.Tensor
    k_norm: torch.Tensor
    qkv: _Proj
    o_proj: _Proj
    gate_up: _Proj
    down_proj: _Proj

    def __init__(self, hf_layer: Any, lookup: Any, prefix: str, lora_cols: int, norm_offset: float,
                 dims: tuple[int, int, int]) -> None:
        super().__init__()
        nh, nkv, hd = dims
        attn, mlp = hf_layer.self_attn, hf_layer.mlp
        self.register_buffer("ln1", _norm_weight(hf_layer.input_layernorm, norm_offset))  # (d,)
        #: gemma3: a norm on the attention output and one on the MLP output, before each residual add
        self.sandwich = hasattr(hf_layer, "pre_feedforward_layernorm")
        if self.sandwich:
            self.register_buffer("post_attn", _norm_weight(hf_layer.post_attention_layernorm, norm_offset))
            self.register_buffer("ln2", _norm_weight(hf_layer.pre_feedforward_layernorm, norm_offset))
            self.register_buffer("post_mlp", _norm_weight(hf_layer.post_feedforward_layernorm, norm_offset))
        else:
            self.register_buffer("ln2", _norm_weight(hf_layer.post_attention_layernorm, norm_offset))  # (d,)
        self.qk_norm = hasattr(attn, "q_norm") and hasattr(attn, "k_norm")
        if self.qk_norm:  # per head, before RoPE (qwen3, gemma3)
            self.register_buffer("q_norm", _norm_weight(attn.q_norm, norm_offset))  # (hd,)
            self.register_buffer("k_norm", _norm_weight(attn.k_norm, norm_offset))  # (hd,)
        self.scaling = float(getattr(attn, "scaling", hd**-0.5))
        self.use_rope = bool(getattr(attn, "use_rope", True))  # smollm3 leaves RoPE out of some layers
        self.layer_type = str(getattr(attn, "layer_type", None) or "full_attention")

        def proj(owner: Any, names: tuple[str, ...], where: str) -> _Proj:
            return _Proj([lookup(getattr(owner, n), f"{prefix}.{where}.{n}") for n in names], lora_cols)

        qkv = _members(attn, ATTN[:3]) or _members(attn, ("qkv_proj",))
        gate_up = _members(mlp, MLP[:2]) or _members(mlp, ("gate_up_proj",))
        if qkv is None or not hasattr(attn, "o_proj"):
            raise AdapterError(f"{prefix}.self_attn: export needs q_proj/k_proj/v_proj (or a fused qkv_proj) "
                               "and o_proj")
        if gate_up is None or not hasattr(mlp, "down_proj"):
            raise AdapterError(f"{prefix}.mlp: export needs gate_proj/up_proj (or a fused gate_up_proj) and down_proj")
        #: the adapted projections inside the fused q/k/v MatMul, in order (routing reads their A)
        self.qkv_names = qkv
        self.qkv = proj(attn, qkv, "self_attn")
        self.o_proj = proj(attn, ATTN[3:], "self_attn")
        self.gate_up = proj(mlp, gate_up, "mlp")
        self.down_proj = proj(mlp, MLP[2:], "mlp")
        #: q, k, v widths and gate, up widths: how the fused outputs split (members or one fused projection)
        self.qkv_split = [nh * hd, nkv * hd, nkv * hd]
        d_ff = sum(self.gate_up.sizes) // 2
        self.gate_up_split = [d_ff, d_ff]
        if sum(self.qkv.sizes) != sum(self.qkv_split):
            raise AdapterError(f"{prefix}.self_attn: q/k/v widths {self.qkv.sizes} do not match "
                               f"{nh} heads and {nkv} key/value heads of {hd}")


def _rotary(inner: Any, cfg: Any) -> dict[str, tuple[torch.Tensor, float]]:
    """Layer type -> (inv_freq (rd/2,), cos/sin scaling) of the model's rotary embedding."""
    rot = getattr(inner, "rotary_emb", None)
    if rot is None:
        raise AdapterError(f"{cfg.model_type}: export needs a rotary embedding (model.rotary_emb)")
    kinds = getattr(rot, "rope_type", "default")
    for kind in (kinds.values() if isinstance(kinds, dict) else [kinds]):
        if kind not in STATIC_ROPE:
            raise AdapterError(f"RoPE type {kind!r} changes with the sequence length; export supports {STATIC_ROPE}")
    if hasattr(rot, "inv_freq"):
        one = (rot.inv_freq.detach().float().cpu().clone(), float(getattr(rot, "attention_scaling", 1.0)))
        return {t: one for t in {*(getattr(cfg, "layer_types", None) or []), "full_attention"}}
    out = {}
    for t in getattr(rot, "layer_types", []):  # gemma3: a local and a global RoPE
        if hasattr(rot, f"{t}_inv_freq"):
            out[t] = (getattr(rot, f"{t}_inv_freq").detach().float().cpu().clone(),
                      float(getattr(rot, f"{t}_attention_scaling", 1.0)))
    if not out:
        raise AdapterError(f"{cfg.model_type}: no inverse frequencies found on its rotary embedding")
    return out


class RoutedDecoder(nn.Module):
    """Base + every expert + router of a :class:`~edgedfl.routing.router.RoutedModel`, export-ready.

    Built from host copies of the model's tensors, wherever the model lives (a CUDA node's experts export
    to the same CPU graph as a CPU node's)."""

    embed: torch.Tensor
    norm: torch.Tensor
    lm_head: torch.Tensor
    code_means: torch.Tensor
    code_factors: torch.Tensor

    def __init__(self, routed: Any, *, merge_slot: int | None = None) -> None:
        """``merge_slot`` k: the baseline of one merged adapter instead (W + s·B_k·A_k, no router, no
        experts; the same inputs and outputs, ``expert`` always k)."""
        super().__init__()
        adapted = routed.adapted
        hf = adapted.peft_model.base_model.model  # the transformers CausalLM, LoRA layers inside
        cfg = hf.config
        model_type = getattr(cfg, "model_type", "?")
        if model_type not in FAMILIES or not hasattr(hf, "model"):
            raise AdapterError(f"export supports the decoder families {', '.join(FAMILIES)}; not {model_type!r} "
                               "(README, 'Other models')")
        # layer name -> (A_cat (K*r, d_in), B_cat (d_out, K*r)), on the host
        stacks = {n: (a.cpu(), b.cpu()) for n, (a, b) in routed.expert_stacks().items()}
        inner = hf.model
        self.model_type = model_type
        self.num_layers = int(cfg.num_hidden_layers)
        self.num_heads = int(cfg.num_attention_heads)
        self.num_kv = int(cfg.num_key_value_heads)
        self.head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
        self.num_experts = int(routed.num_experts)
        self.rank = int(adapted.config.rank)
        self.eps = float(getattr(cfg, "rms_norm_eps", 1e-6))
        self.top_k = min(int(routed.config.top_k), self.num_experts)
        self.temperature = float(routed.config.temperature)
        self.pooling = routed.config.pooling
        self.routing_layer = int(routed.config.layer)
        if self.routing_layer >= self.num_layers:
            raise AdapterError(f"routing layer {self.routing_layer} >= {self.num_layers} layers")
        gemma = model_type.startswith("gemma")
        norm_offset = 1.0 if gemma else 0.0  # gemma norms scale by 1 + w
        self.embed_scale = float(getattr(inner.embed_tokens, "scalar_embed_scale", 1.0))  # gemma: sqrt(d)
        act = getattr(cfg, "hidden_activation", None) or getattr(cfg, "hidden_act", "silu")
        if act not in _ACTS:
            raise AdapterError(f"MLP activation {act!r}: export supports {sorted(_ACTS)}")
        self.act = _ACTS[act]
        self.attn_softcap = getattr(cfg, "attn_logit_softcapping", None)
        self.final_softcap = getattr(cfg, "final_logit_softcapping", None)

        by_module = {}
        for name, layer in adapted.layers.items():
            by_module[id(layer)] = name

        self.merge_slot = merge_slot
        #: export the graph that takes every row's route as given (no router): the decode branch
        self.route_given = False
        if merge_slot is not None and not 0 <= merge_slot < self.num_experts:
            raise AdapterError(f"merge_slot {merge_slot} out of range ({self.num_experts} experts)")

        def lookup(module: Any, path: str) -> Member:
            """(base weight (d_out, d_in), bias or None, experts' (A_cat, B_cat) or None) of one projection."""
            name = by_module.get(id(module))
            base = module if name is None else module.base_layer
            weight = base.weight
            if type(weight) not in (torch.Tensor, nn.Parameter) or not weight.dtype.is_floating_point:
                raise AdapterError(f"{path}: export needs an unquantized base (load it with quant 'none'), "
                                   f"found {type(weight).__name__}")
            weight = weight.detach().cpu()
            bias = None if getattr(base, "bias", None) is None else base.bias.detach().cpu()
            if name is None:
                return weight, bias, None
            if merge_slot is not None:  # one adapter merged into the weight
                k, r = merge_slot, self.rank
                a, b = stacks[name]  # (K*r, d_in), (d_out, K*r), scaling folded into b
                delta = b[:, k * r : (k + 1) * r] @ a[k * r : (k + 1) * r]  # (d_out, d_in)
                return weight + delta, bias, None
            return weight, bias, stacks[name]  # a peft LoraLayer: base weight + experts

        self.register_buffer("embed", inner.embed_tokens.weight.detach().float().clone())  # (V, d)
        dims = (self.num_heads, self.num_kv, self.head_dim)
        self.layers = nn.ModuleList(
            [_Layer(layer, lookup, f"model.layers.{i}", self.num_experts * self.rank, norm_offset, dims)
             for i, layer in enumerate(inner.layers)]
        )
        self.register_buffer("norm", _norm_weight(inner.norm, norm_offset))  # (d,)
        self.tied = bool(getattr(cfg, "tie_word_embeddings", False)) and (
            hf.lm_head.weight.data_ptr() == inner.embed_tokens.weight.data_ptr()
        )
        if not self.tied:
            self.register_buffer("lm_head", _t(hf.lm_head.weight))  # (d, V)
        # RoPE per layer type (one for most families; gemma3: local and global), and each layer's window
        rotary = _rotary(inner, cfg)
        self.rope_kinds = sorted(rotary)
        for i, kind in enumerate(self.rope_kinds):
            self.register_buffer(f"inv_freq_{i}", rotary[kind][0])  # (rd/2,)
        self.rope_scales = [rotary[kind][1] for kind in self.rope_kinds]
        self.layer_rope: list[int] = []
        self.layer_window: list[int | None] = []
        for i, hf_layer in enumerate(inner.layers):
            kind = self.layer(i).layer_type
            if kind not in rotary:
                raise AdapterError(f"layer {i}: no RoPE for layer type {kind!r}")
            self.layer_rope.append(self.rope_kinds.index(kind))
            attn = hf_layer.self_attn
            window = attn.sliding_window if hasattr(attn, "sliding_window") else getattr(cfg, "sliding_window", None)
            self.layer_window.append(int(window) if window else None)
        self.windows = sorted({w for w in self.layer_window if w is not None})
        # router: which projections' A_cat project the pooled state, and the codes
        short = [m.rsplit(".", 1)[-1] for m in routed.routing_modules]
        members = self.layer(self.routing_layer).qkv_names
        missing = [m for m in short if m not in members]
        if missing:
            raise AdapterError(f"routing modules {missing} are not among layer {self.routing_layer}'s "
                               f"attention input projections {list(members)}")
        #: positions of the routing modules inside the fused attention-input projection, in the codes' order
        self.route_index = [members.index(m) for m in short]
        self.qkv_groups = len(members)
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
        q, k, v = layer.qkv(x, w_rep).split(layer.qkv_split, dim=-1)  # (B, T, nh*hd), (B, T, nkv*hd) x 2
        q = q.reshape(b, t, nh, hd).transpose(1, 2)  # (B, nh, T, hd)
        k = k.reshape(b, t, nkv, hd).transpose(1, 2)  # (B, nkv, T, hd)
        v = v.reshape(b, t, nkv, hd).transpose(1, 2)  # (B, nkv, T, hd)
        if layer.qk_norm:
            q = _rms(q, layer.q_norm, self.eps)
            k = _rms(k, layer.k_norm, self.eps)
        if layer.use_rope:
            q = _rope(q, cos, sin)
            k = _rope(k, cos, sin)
        if past_k is not None and past_v is not None:
            k = torch.cat([past_k, k], dim=2)  # (B, nkv, P+T, hd)
            v = torch.cat([past_v, v], dim=2)  # (B, nkv, P+T, hd)
        s = k.shape[2]
        group = nh // nkv
        k_rep = k[:, :, None].expand(b, nkv, group, s, hd).reshape(b, nh, s, hd)  # (B, nh, S, hd)
        v_rep = v[:, :, None].expand(b, nkv, group, s, hd).reshape(b, nh, s, hd)  # (B, nh, S, hd)
        scores = _softcap((q @ k_rep.transpose(-1, -2)) * layer.scaling, self.attn_softcap) + bias  # (B, nh, T, S)
        probs = torch.softmax(scores, dim=-1)  # (B, nh, T, S)
        out = (probs @ v_rep).transpose(1, 2).reshape(b, t, nh * hd)  # (B, T, nh*hd)
        return layer.o_proj(out, w_rep), k, v

    def _act(self, x: torch.Tensor) -> torch.Tensor:
        if self.act == "silu":
            return torch.nn.functional.silu(x)
        return torch.nn.functional.gelu(x, approximate="tanh" if self.act == "gelu_tanh" else "none")

    def _block(
        self, i: int, h: torch.Tensor, w_rep: torch.Tensor, ropes: list[tuple[torch.Tensor, torch.Tensor]],
        biases: dict[int | None, torch.Tensor], past_k: torch.Tensor | None, past_v: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        layer = self.layer(i)
        cos, sin = ropes[self.layer_rope[i]]
        a, k, v = self._attention(layer, _rms(h, layer.ln1, self.eps), w_rep, cos, sin,
                                  biases[self.layer_window[i]], past_k, past_v)
        if layer.sandwich:
            a = _rms(a, layer.post_attn, self.eps)
        h = h + a  # (B, T, d)
        x = _rms(h, layer.ln2, self.eps)  # (B, T, d)
        gate, up = layer.gate_up(x, w_rep).split(layer.gate_up_split, dim=-1)  # (B, T, d_ff) x 2
        mlp = layer.down_proj(self._act(gate) * up, w_rep)  # (B, T, d)
        if layer.sandwich:
            mlp = _rms(mlp, layer.post_mlp, self.eps)
        return h + mlp, k, v

    def _route(self, x_route: torch.Tensor, mask_now: torch.Tensor, route: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(weights (B, K), distances (B, K)) from the routing layer's normed input (B, T, d)."""
        b = x_route.shape[0]
        if self.pooling == "last":
            pooled = x_route[:, -1]  # (B, d)
        else:
            m = mask_now.to(x_route.dtype)[..., None]  # (B, T, 1)
            pooled = (x_route * m).sum(1) / m.sum(1).clamp(min=1.0)  # (B, d)
        qkv_a = self.layer(self.routing_layer).qkv.lora_A  # (d, G*K*r): one block per q/k/v member
        full = (pooled @ qkv_a).view(b, self.qkv_groups, self.num_experts, self.rank)  # (B, G, K, r)
        z = full[:, self.route_index].permute(0, 2, 1, 3).reshape(b, self.num_experts, -1)  # (B, K, D)
        white = torch.einsum("bkd,kde->bke", z - self.code_means, self.code_factors)  # (B, K, D)
        dist = (white * white).sum(-1)  # (B, K)
        vals, idx = torch.topk(-dist, self.top_k, dim=1)  # (B, k)
        w_top = torch.softmax(vals / (2.0 * self.temperature), dim=1)  # (B, k)
        routed = torch.zeros_like(dist).scatter(1, idx, w_top)  # (B, K)
        given = route.abs().sum(-1, keepdim=True) > 0  # (B, 1)
        return torch.where(given, route, routed), dist

    def _logits(self, h: torch.Tensor) -> torch.Tensor:
        h = _rms(h, self.norm, self.eps)  # (B, T, d)
        return _softcap(h @ (self.embed.t() if self.tied else self.lm_head), self.final_softcap)  # (B, T, V)

    @staticmethod
    def _biases(allowed: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor,
                windows: list[int]) -> dict[int | None, torch.Tensor]:
        """Additive attention bias (B, 1, T, S) per window (None: causal only; w: keys within w positions)."""
        low = torch.finfo(torch.float32).min
        out: dict[int | None, torch.Tensor] = {None: torch.where(allowed, 0.0, low)[:, None]}
        for w in windows:
            near = (k_pos[None, :] > q_pos[:, None] - w)[None]  # (1, T, S)
            out[w] = torch.where(allowed & near, 0.0, low)[:, None]
        return out

    # -- forward -----------------------------------------------------------------

    def forward(
        self,
        input_ids: torch.Tensor,  # (B, T) int64
        attention_mask: torch.Tensor,  # (B, T) int64, 1 = real token
        route: torch.Tensor,  # (B, K) float32; all-zero rows are routed by the graph
        past_mask: torch.Tensor,  # (B, P) int64
        past: list[torch.Tensor],  # 2L tensors (B, n_kv, P, hd): key 0, value 0, key 1, ...
    ) -> tuple[torch.Tensor, ...]:
        t = input_ids.shape[1]
        p = past_mask.shape[1]
        full_mask = torch.cat([past_mask, attention_mask], dim=1)  # (B, P+T)
        pos = (full_mask.cumsum(-1) - 1).clamp(min=0)[:, p:]  # (B, T)
        ropes = []
        for i, scale in enumerate(self.rope_scales):
            freqs = pos[..., None].float() * getattr(self, f"inv_freq_{i}")  # (B, T, rd/2)
            emb = torch.cat([freqs, freqs], dim=-1)  # (B, T, rd)
            ropes.append(((emb.cos() * scale)[:, None], (emb.sin() * scale)[:, None]))  # (B, 1, T, rd) x 2
        q_pos = torch.arange(t, device=input_ids.device) + p  # (T,)
        k_pos = torch.arange(p + t, device=input_ids.device)  # (S,)
        allowed = (k_pos[None, :] <= q_pos[:, None])[None] & (full_mask[:, None, :] > 0)  # (B, T, S)
        biases = self._biases(allowed, q_pos, k_pos, self.windows)

        h = self.embed[input_ids]  # (B, T, d)
        if self.embed_scale != 1.0:
            h = h * self.embed_scale
        weights, dist = self._weights(h, ropes, attention_mask, route)  # (B, K), (B, K)
        w_rep = weights.repeat_interleave(self.rank, dim=1)[:, None, :]  # (B, 1, K*r)
        presents: list[torch.Tensor] = []
        for i in range(self.num_layers):
            h, k, v = self._block(i, h, w_rep, ropes, biases, past[2 * i], past[2 * i + 1])
            presents += [k, v]
        return (self._logits(h), weights.argmax(-1), weights, dist, full_mask, *presents)

    def _weights(
        self, h: torch.Tensor, ropes: list[tuple[torch.Tensor, torch.Tensor]], attention_mask: torch.Tensor,
        route: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(expert weights (B, K), distances (B, K)) of this call, from the embedded input h (B, T, d).

        The merged-adapter baseline always weighs its slot 1 (its layers carry no experts); the route-given
        graph (the decode branch) takes ``route`` as it is, with zero distances; the routed graph runs the
        router on the frozen base, its layers before the routing layer without experts and without cache."""
        b, t, _ = h.shape
        if self.merge_slot is not None:
            weights = torch.zeros(b, self.num_experts, dtype=h.dtype)
            weights[:, self.merge_slot] = 1.0  # (B, K)
            return weights, torch.zeros_like(weights)
        if self.route_given:
            return route, torch.zeros_like(route)
        h_route = h
        if self.routing_layer > 0:
            zero_rep = torch.zeros(b, 1, self.num_experts * self.rank, dtype=h.dtype)  # (B, 1, K*r)
            t_pos = torch.arange(t)
            own = (t_pos[None, :] <= t_pos[:, None])[None] & (attention_mask[:, None, :] > 0)  # (B, T, T)
            own_biases = self._biases(own, t_pos, t_pos, self.windows)
            for i in range(self.routing_layer):
                h_route, _, _ = self._block(i, h_route, zero_rep, ropes, own_biases, None, None)
        x_route = _rms(h_route, self.layer(self.routing_layer).ln1, self.eps)  # (B, T, d)
        weights, dist = self._route(x_route, attention_mask, route)
        return weights, dist

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


#: the first name of :class:`RoutedDecoder` (it began with Llama-style decoders)
RoutedLlama = RoutedDecoder
