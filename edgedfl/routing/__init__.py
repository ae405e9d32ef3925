"""Implicit mixture of experts: each prompt picks its expert, with no trained gate.

=================  ==================================================  ==========
module             what                                                needs
=================  ==================================================  ==========
``config``         :class:`RouterConfig` (routing layer, modules,      stdlib
                   pooling, ridge, top-k)
``codes``          :class:`LatentCode`, distances, top-k weights,      numpy
                   wire encoding and validation
``router``         :class:`RoutedModel`: route and apply experts on    torch, peft
                   an AdaptedModel (mixed batches, generation)
``calibrate``      latent codes from an expert's calibration prompts   torch
``bundle``         the on-disk layout of K experts + codes             torch
=================  ==================================================  ==========

Importing this package loads only ``config`` and ``codes`` (no torch). Experts
trained locally (one per task, or from ``edgedfl train`` runs) are put on one
model by :mod:`edgedfl.experts`, a layer up: it runs training.
"""

from __future__ import annotations

from edgedfl.routing.codes import (
    CODE_TENSORS,
    LatentCode,
    code_spec,
    decode_code,
    distances,
    encode_code,
    route_weights,
    stack_codes,
)
from edgedfl.routing.config import MODES, ROUTING_MODULES, RouterConfig

__all__ = [
    "CODE_TENSORS",
    "MODES",
    "ROUTING_MODULES",
    "LatentCode",
    "RouterConfig",
    "code_spec",
    "decode_code",
    "distances",
    "encode_code",
    "route_weights",
    "stack_codes",
]
