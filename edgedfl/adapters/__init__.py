"""Adapters on a (quantized) base: sparse-orthogonal LoRA and the baselines, one API.

``attach_adapter(model, AdapterConfig(method=...))`` returns an
:class:`AdaptedModel`; the maths of sparse-orthogonal LoRA is in
:mod:`edgedfl.adapters.solora` (numpy only).
"""

from __future__ import annotations

from typing import Any

from edgedfl.adapters.config import METHODS, AdapterConfig

__all__ = ["METHODS", "AdapterConfig", "attach_adapter"]


def attach_adapter(base_model: Any, config: AdapterConfig) -> Any:
    """Wrap ``base_model`` in ``config.num_slots`` expert slots of ``config.method``."""
    from edgedfl.adapters.model import AdaptedModel

    return AdaptedModel(base_model, config)
