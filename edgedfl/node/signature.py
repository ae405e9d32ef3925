"""The task signature a device publishes: a seeded random projection of the frozen base's
mean-pooled hidden states, at one decoder layer, over a sample of its prompts. No raw text leaves
the device.

Which layer (``SwarmConfig.signature_depth``, default 0.6 of the depth): the
last layer's states are shaped for the next token, and two tasks that show the
same inputs and ask another question of them (the first word of a list, the
last word of it) land almost on top of each other there; a middle layer still
carries the question. Measured on SmolLM2 and Gemma 3 270M over both the
built-in suite and the long suite's colliding pairs: ``bench/results/clustering.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from edgedfl.errors import TopologyError
from edgedfl.model.loading import num_layers
from edgedfl.model.placement import model_device, to_device, to_numpy
from edgedfl.topology import project_signature
from edgedfl.topology.signatures import signature_layer, signature_spread
from edgedfl.train.batching import collate_prompts


def pooled_hidden(adapted: Any, tok: Any, prompts: Sequence[str], *, max_length: int, batch_size: int = 8,
                  depth: float = 1.0) -> np.ndarray:
    """Mean over non-pad tokens of one layer's hidden states, adapters off: (n_prompts, hidden).

    ``depth`` 1.0 is the last layer after the final norm; below 1 the output of decoder layer
    :func:`signature_layer` (the residual stream, before any norm).
    """
    import torch

    rows = []
    device = model_device(adapted.peft_model)
    causal = adapted.peft_model.base_model.model
    body = getattr(causal, "model", None)  # the decoder without its LM head: no logits over the vocabulary
    total = num_layers(causal)
    layer = signature_layer(total, depth)
    blocks = getattr(body, "layers", None)
    with torch.no_grad(), adapted.peft_model.disable_adapter():
        for i in range(0, len(prompts), batch_size):
            batch = to_device(collate_prompts(tok, prompts[i : i + batch_size], max_length), device)
            if body is not None and layer == total:
                h = body(**batch).last_hidden_state  # (B, T, H), after the final norm
            elif blocks is not None and len(blocks) == total:
                h = _layer_output(body, blocks[layer - 1], batch)  # (B, T, H): the layers above never run
            elif body is not None:
                h = body(**batch, output_hidden_states=True).hidden_states[layer]  # (B, T, H)
            else:
                h = adapted.peft_model(**batch, output_hidden_states=True).hidden_states[layer]  # (B, T, H)
            h = h.float()
            m = batch["attention_mask"].unsqueeze(-1).float()  # (B, T, 1)
            rows.append(to_numpy((h * m).sum(1) / m.sum(1)))  # (B, H)
    adapted.activate(adapted.active_slot)  # leaving disable_adapter() re-enables A's gradient
    return np.concatenate(rows).astype(np.float64)


class _Enough(Exception):
    """Raised by the hook of the signature's layer: the forward stops there."""


def _layer_output(body: Any, block: Any, batch: dict[str, Any]) -> Any:
    """The output (B, T, H) of decoder layer ``block`` for ``batch``, with no layer above it run (a signature
    at 0.6 of the depth skips 0.4 of the forward). The same tensor as ``hidden_states[layer]``."""
    captured: list[Any] = []

    def hook(module: Any, args: Any, output: Any) -> None:
        captured.append(output[0] if isinstance(output, tuple) else output)
        raise _Enough

    handle = block.register_forward_hook(hook)
    try:
        body(**batch)
    except _Enough:
        pass
    finally:
        handle.remove()
    if not captured:
        raise TopologyError("the signature's decoder layer never ran")
    return captured[0]


def signature_and_spread(adapted: Any, tok: Any, prompts: Sequence[str], *, seed: int,
                         max_length: int, depth: float) -> tuple[np.ndarray, float]:
    """The task signature and its expected same-task distance (:func:`~edgedfl.topology.signatures.signature_spread`)."""
    pooled = pooled_hidden(adapted, tok, prompts, max_length=max_length, depth=depth)
    return project_signature(pooled, seed), signature_spread(pooled, seed)
