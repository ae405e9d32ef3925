"""Where tensors live: one rule for every path that feeds a model or reads from it.

**The model's device is the only device.** Inputs built on the host (token
batches, masks, router codes) go to the model's device before they meet its
tensors (:func:`to_device`); results leave through :func:`to_numpy`
(``detach().cpu().numpy()``). Signature, calibration, masks, training,
evaluation, routing and the final evaluation all follow it; export builds its
CPU graphs from host copies. On the CPU every move is a no-op (``Tensor.to``
returns the very tensor when it already lives there), so CPU runs are
bit-for-bit what they were before CUDA was a device.

Which device the model is placed on is the per-device setting
``DeviceConfig.device`` (``auto``, ``cpu``, ``cuda`` or ``cuda:N``), resolved
by :func:`resolve_device` when the base is quantized
(:func:`edgedfl.model.quantize.quantize_model`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from edgedfl.devices import is_device_name
from edgedfl.errors import BackendUnavailable, ConfigError


def model_device(model: Any) -> Any:
    """The ``torch.device`` of ``model``: where its first parameter (else buffer) lives; CPU if it has none.

    ``model`` is a torch module (a transformers or peft model) or anything holding one as
    ``peft_model`` (an :class:`~edgedfl.adapters.model.AdaptedModel`). A model split over
    devices is not supported: its first parameter names the device.
    """
    import torch

    module = getattr(model, "peft_model", model)
    for p in module.parameters():
        return p.device
    for b in module.buffers():
        return b.device
    return torch.device("cpu")


def to_device(batch: Mapping[str, Any], device: Any) -> dict[str, Any]:
    """``batch`` with every tensor on ``device`` (other values as they are); a no-op where they already live."""
    import torch

    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def to_numpy(tensor: Any) -> np.ndarray:
    """A host numpy array of ``tensor``, wherever it lives (shares memory with a CPU tensor)."""
    return np.asarray(tensor.detach().cpu().numpy())


def cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def resolve_device(requested: str = "auto", *, want_cuda: bool = False, current: Any = None) -> str:
    """The device a model is placed on, as a torch device string.

    ``cpu`` and ``cuda[:N]`` are taken as asked (``cuda`` without a GPU raises
    :class:`~edgedfl.errors.BackendUnavailable`). ``auto`` keeps a model that
    already lives on an accelerator (``current``) where it is; otherwise it is
    ``cuda`` when torch sees a GPU and ``want_cuda`` (the quantization backend,
    or the profile for an unquantized base, asks for one; see
    :func:`edgedfl.model.quantize.quantize_model`), else ``cpu``.
    """
    if not is_device_name(requested):
        raise ConfigError(f"device={requested!r}: choose 'auto', 'cpu', 'cuda' or 'cuda:N'")
    if requested == "cpu":
        return "cpu"
    if requested.startswith("cuda"):
        if not cuda_available():
            import torch

            build = torch.version.cuda or "none (a CPU-only torch)"
            raise BackendUnavailable(
                f"device={requested!r} but torch {torch.__version__} sees no CUDA GPU (CUDA build: {build}); "
                "install a CUDA torch (docs/jetson.md) or set device 'cpu' or 'auto'"
            )
        return requested
    if current is not None and getattr(current, "type", "cpu") != "cpu":
        return str(current)
    return "cuda" if want_cuda and cuda_available() else "cpu"


def model_dtype(model: Any) -> str:
    """The dtype name of ``model``'s first floating-point parameter (``float32`` if it has none)."""
    module = getattr(model, "peft_model", model)
    for p in module.parameters():
        if p.is_floating_point():
            return str(p.dtype).removeprefix("torch.")
    return "float32"


def choose_attention(model: Any) -> str:
    """Set the attention kernel that fits where ``model`` runs and in what dtype; returns its name.

    A half-precision model on the CPU runs ``eager`` attention: torch's CPU
    flash-attention backward in bfloat16 took a quarter of a SmolLM2 LoRA step
    and eager attention cut the whole step by about a fifth at the lengths
    devices train on (bench/results/train.md). Anything else keeps the model's
    own choice.
    """
    config = getattr(model, "config", None)
    current = getattr(config, "_attn_implementation", None) or "sdpa"
    if model_dtype(model) not in ("bfloat16", "float16") or model_device(model).type != "cpu" or config is None:
        return str(current)
    set_eager_attention(model)
    return "eager"


def set_eager_attention(hf_model: Any) -> None:
    """Run ``hf_model``'s attention as plain matmuls (transformers' ``eager``)."""
    if hasattr(hf_model, "set_attn_implementation"):
        hf_model.set_attn_implementation("eager")
    else:  # older transformers
        hf_model.config._attn_implementation = "eager"


def place_model(model: Any, device: str) -> Any:
    """Move ``model`` to ``device`` (in place, as ``nn.Module.to``); a CPU model asked for the CPU is untouched."""
    if device == "cpu" and model_device(model).type == "cpu":
        return model
    return model.to(device)
