"""Quantized base models: a dispatcher over optional backends.

Backends, first available match wins when ``auto`` is asked:

==============  ===========================================  ===============
name            what                                         needs
==============  ===========================================  ===============
none            fp32 / bf16 weights as loaded                 -
torchao-int8    int8 weight-only, per row                     torchao
torchao-int4    int4 weight-only, groups of 32 (CPU default   torchao
                on phones)
bnb-nf4         bitsandbytes 4-bit NF4 (CUDA default)         bitsandbytes
bnb-int8        bitsandbytes LLM.int8                         bitsandbytes
==============  ===========================================  ===============

Only the decoder's ``nn.Linear`` layers are quantized; embeddings, norms and
``lm_head`` stay in full precision. LoRA wraps the quantized layers through
peft afterwards, so every base that peft's LoRA supports trains.

Where the model runs is the ``device`` setting (``auto``, ``cpu``, ``cuda``;
:func:`edgedfl.model.placement.resolve_device`). When torch sees a GPU,
``auto`` takes it for bitsandbytes (its kernels' home) and for an
unquantized base on a profile that expects CUDA (jetson); torchao's
weight-only kernels, the CPU fallback, stay on the CPU unless ``cuda`` is
asked for. ``cpu`` keeps even bitsandbytes on the CPU of a machine with a GPU.
:func:`quantize_model` places the model there and quantizes it there.

bitsandbytes on CPUs with AVX512-BF16: after an eval-mode forward a
``Linear4bit`` repacks itself and later LoRA gradients are silently zero. Every
``Linear4bit`` gets ``support_avx512bf16_for_cpu = False`` right here, before
any forward can happen (see :func:`guard_bnb_cpu`).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import logging
import warnings
from collections.abc import Callable
from typing import Any

from edgedfl.devices import DeviceConfig, DeviceProfile, detect_profile, resolve_dtype
from edgedfl.errors import BackendUnavailable, ConfigError
from edgedfl.model.placement import choose_attention, model_device, place_model, resolve_device

log = logging.getLogger("edgedfl.model")


@dataclasses.dataclass(frozen=True)
class QuantBackend:
    name: str
    description: str
    package: str | None
    install_hint: str
    #: ``apply(model, device)``: quantize ``model`` in place for ``device``; returns it, wholly on ``device``
    apply: Callable[[Any, str], Any]
    #: where device ``auto`` puts a model of this backend when torch sees a GPU: "cuda", "cpu", or
    #: "profile" (CUDA if the device profile expects it)
    auto_device: str = "profile"


def _linear_filter(module: Any, fqn: str) -> bool:
    import torch

    return isinstance(module, torch.nn.Linear) and not fqn.endswith("lm_head")


def release_freed_memory(collect: bool = True) -> None:
    """Hand the heap's freed pages back to the system (glibc ``malloc_trim``; elsewhere a no-op).

    Quantizing frees the fp32 weights, but glibc keeps freed heap pages in the
    process: without this, an int4 base leaves the process larger than an fp32 one.
    ``collect=False`` skips the garbage collector's full pass: a freed weight goes by reference count, and
    one pass over an interpreter that holds transformers costs about 0.3 s, so one per linear layer
    cost a SmolLM2 base a minute for no byte (same resident and peak memory, measured).
    """
    import gc

    if collect:
        gc.collect()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.lru_cache(maxsize=1)
def _malloc_trim() -> Any:
    """glibc's ``malloc_trim``, or None (not glibc). Looked up once: ``find_library`` runs ldconfig."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


def _torchao(config_factory: Callable[[], Any]) -> Callable[[Any, str], Any]:
    def apply(model: Any, device: str) -> Any:
        from torchao.quantization import quantize_

        place_model(model, device)  # torchao quantizes the weights where they live
        config = config_factory()
        # one linear layer at a time, the freed fp32 weights handed back as we go: the transient copies
        # quantization makes stay one layer's size (bench/results/train.md: added memory)
        for fqn, module in list(model.named_modules()):
            if _linear_filter(module, fqn):
                quantize_(module, config, filter_fn=lambda m, _fqn, target=module: m is target)
                release_freed_memory(collect=False)  # quantize_model collects once at the end
        return model

    return apply


def _torchao_int8() -> Any:
    from torchao.quantization import Int8WeightOnlyConfig

    return Int8WeightOnlyConfig()


def _torchao_int4() -> Any:
    import torch
    from torchao.quantization import IntxWeightOnlyConfig
    from torchao.quantization.granularity import PerGroup

    return IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(32))  # type: ignore[attr-defined]


def _bnb(kind: str) -> Callable[[Any, str], Any]:
    def apply(model: Any, device: str) -> Any:
        import bitsandbytes as bnb
        import torch

        # each layer is quantized as it moves to ``device``; the full-precision base never sits
        # on the GPU as a whole
        for fqn, parent in list(model.named_modules()):
            for cname, child in list(parent.named_children()):
                full = f"{fqn}.{cname}" if fqn else cname
                if not _linear_filter(child, full):
                    continue
                # from a host copy: Int8Params quantizes only when it moves off the CPU
                weight = child.weight.data.detach().clone().float().cpu()
                new: Any
                if kind == "nf4":
                    new = bnb.nn.Linear4bit(
                        child.in_features,
                        child.out_features,
                        bias=child.bias is not None,
                        compute_dtype=weight.dtype,
                        quant_type="nf4",
                    )
                    new.weight = bnb.nn.Params4bit(weight, requires_grad=False, quant_type="nf4")
                else:
                    new = bnb.nn.Linear8bitLt(
                        child.in_features, child.out_features, bias=child.bias is not None, has_fp16_weights=False
                    )
                    new.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False)
                if child.bias is not None:
                    new.bias = torch.nn.Parameter(child.bias.data.clone(), requires_grad=False)
                new = new.to(device)  # quantizes the weights
                setattr(parent, cname, new)
        place_model(model, device)  # embeddings, norms and lm_head follow the quantized layers
        guard_bnb_cpu(model)
        if kind == "int8":
            # LLM.int8 on CPU warns about a float16 cast on every call.
            warnings.filterwarnings("ignore", message=".*inputs will be cast from.*")
        return model

    return apply


def guard_bnb_cpu(model: Any) -> int:
    """Turn off the AVX512-BF16 repacking of every ``Linear4bit``; returns how many were guarded."""
    try:
        import bitsandbytes as bnb
    except ImportError:
        return 0
    n = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
            n += 1
    return n


BACKENDS: dict[str, QuantBackend] = {
    "none": QuantBackend("none", "full-precision weights", None, "", place_model),
    "torchao-int8": QuantBackend(
        "torchao-int8", "torchao int8 weight-only", "torchao", "pip install torchao==0.18.0", _torchao(_torchao_int8),
        auto_device="cpu",
    ),
    "torchao-int4": QuantBackend(
        "torchao-int4", "torchao int4 weight-only", "torchao", "pip install torchao==0.18.0", _torchao(_torchao_int4),
        auto_device="cpu",
    ),
    "bnb-nf4": QuantBackend(
        "bnb-nf4", "bitsandbytes 4-bit NF4", "bitsandbytes", "pip install 'edgedfl[bnb]'", _bnb("nf4"),
        auto_device="cuda",
    ),
    "bnb-int8": QuantBackend(
        "bnb-int8", "bitsandbytes LLM.int8", "bitsandbytes", "pip install 'edgedfl[bnb]'", _bnb("int8"),
        auto_device="cuda",
    ),
}


def is_available(name: str) -> bool:
    backend = BACKENDS[name]
    return backend.package is None or importlib.util.find_spec(backend.package) is not None


def _cuda_available() -> bool:
    from edgedfl.model.placement import cuda_available

    return cuda_available()


def available_backends() -> list[str]:
    return [name for name in BACKENDS if is_available(name)]


def choose_backend(requested: str = "auto", profile: DeviceProfile | None = None, device: str = "auto") -> str:
    """Resolve ``requested`` (a backend name or ``auto``) to an available backend.

    ``auto`` takes the device profile's default, falling back on CPUs (no GPU
    visible, or ``device`` 'cpu') from a CUDA default (bnb-nf4) to
    torchao-int8, then to none.
    """
    if requested != "auto":
        if requested not in BACKENDS:
            raise ConfigError(f"quant={requested!r}: unknown backend; choose from {['auto', *BACKENDS]}")
        if not is_available(requested):
            b = BACKENDS[requested]
            raise BackendUnavailable(f"quantization backend {requested!r} needs {b.package}: {b.install_hint}")
        return requested
    profile = profile or detect_profile()
    order = [profile.default_quant]
    if profile.accelerator == "cuda" and (device == "cpu" or not _cuda_available()):
        order = []
    order += ["torchao-int8", "none"]
    for name in order:
        if is_available(name):
            return name
    return "none"  # pragma: no cover - "none" is always available


def quantize_model(
    model: Any, backend: str = "auto", profile: DeviceProfile | None = None, device: str = "auto"
) -> tuple[Any, str]:
    """Place ``model`` on ``device`` and quantize it there with the chosen backend; returns (model, backend name).

    ``device`` is ``DeviceConfig.device`` (see :func:`~edgedfl.model.placement.resolve_device`):
    ``cpu`` keeps every backend, bitsandbytes included, on the CPU even where a GPU is visible.
    """
    profile = profile or detect_profile()
    name = choose_backend(backend, profile, device)
    chosen = BACKENDS[name]
    want_cuda = chosen.auto_device == "cuda" or (chosen.auto_device == "profile" and profile.accelerator == "cuda")
    where = resolve_device(device, want_cuda=want_cuda, current=model_device(model))
    log.info("quantizing base with %s on %s", name, where)
    model = chosen.apply(model, where)
    choose_attention(model)
    if name != "none":
        own_plain_tensors(model)
        release_freed_memory()
    return model, name


def load_device_base(spec: str, seed: int, cfg: DeviceConfig) -> tuple[Any, Any, str]:
    """(base, tokenizer, quantization backend) of a device: ``spec`` loaded in the device's dtype
    (``cfg.dtype``), then placed and quantized as ``cfg`` says. Every path that builds a device's
    model (a node, a device host, a local run) goes through here, so they load it the same way."""
    from edgedfl.model.loading import load_model

    base, tok = load_model(spec, seed=seed, dtype=resolve_dtype(cfg.dtype, cfg.device))
    base, backend = quantize_model(base, cfg.quant, cfg.device_profile(), cfg.device)
    return base, tok, backend


def own_plain_tensors(model: Any) -> None:
    """Copy the weights quantization left as they were (embeddings, norms) out of the loader's memory map.

    The checkpoint is memory-mapped and every weight a forward pass reads stays
    resident as file pages; while one tensor still points into the map, the fp32
    weights that quantization replaced stay resident too. Copying the few plain
    tensors lets the map go: a quantized SmolLM2 then holds about half the
    memory of its fp32 base instead of more (bench/results/train.md). Tied weights
    stay tied (one parameter object, copied once).
    """
    import torch

    seen: set[int] = set()
    with torch.no_grad():
        for module in model.modules():
            for param in module.parameters(recurse=False):
                if type(param.data) is torch.Tensor and id(param) not in seen and param.device.type == "cpu":
                    seen.add(id(param))
                    param.data = param.data.clone()
            for key, buf in list(module.named_buffers(recurse=False)):
                if type(buf) is torch.Tensor and id(buf) not in seen and buf.device.type == "cpu":
                    seen.add(id(buf))
                    module._buffers[key] = buf.clone()
