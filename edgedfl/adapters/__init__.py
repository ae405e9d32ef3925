"""Adapters on a (quantized) base: sparse-orthogonal LoRA and the baselines, one API.

``attach_adapter(model, AdapterConfig(method=...))`` returns an
:class:`AdaptedModel`; each method is one object in :mod:`edgedfl.adapters.methods`; the maths of sparse-orthogonal LoRA is in
:mod:`edgedfl.adapters.solora` (numpy only).
"""

from __future__ import annotations

from typing import Any

from edgedfl.adapters.config import AdapterConfig
from edgedfl.adapters.methods import AdapterMethod, get_method, method_names, register

__all__ = ["AdapterConfig", "AdapterMethod", "attach_adapter", "get_method", "method_names", "register"]


def attach_adapter(base_model: Any, config: AdapterConfig) -> Any:
    """Wrap ``base_model`` in ``config.num_slots`` expert slots of ``config.method``."""
    from edgedfl.adapters.model import AdaptedModel

    return AdaptedModel(base_model, config)
