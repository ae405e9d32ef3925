"""One ONNX model per device: base, every expert, and the router, run by ONNX Runtime alone.

:func:`export_onnx` turns a :class:`~edgedfl.routing.router.RoutedModel` into
``model.onnx`` (graph of :class:`~edgedfl.export.module.RoutedLlama`, exported
with ``torch.onnx.export(dynamo=True)``; optimum-onnx does not install next to
transformers 5) and writes the tokenizer as ``tokenizer.json`` next to it, so
:mod:`edgedfl.infer` needs only ``onnxruntime`` and ``tokenizers``.

Graph interface (names fixed; B batch, T new tokens, P cached tokens, K experts)::

    inputs   input_ids (B, T) int64     attention_mask (B, T) int64
             route (B, K) float32       all-zero row = let the graph route it
             past_mask (B, P) int64     past.<i>.key / past.<i>.value (B, n_kv, P, hd)
    outputs  logits (B, T, V)           expert (B,) int64 (top-1)
             route_weights (B, K)       distances (B, K) (squared Mahalanobis)
             present_mask (B, P+T)      present.<i>.key / present.<i>.value (B, n_kv, P+T, hd)

Prefill passes P = 0 and a zero route; each decode step passes the previous
``present_*`` and ``route_weights`` back. Everything a runtime needs to drive
it (layer count, heads, experts' names, special tokens) is in the model's
metadata under the key ``edgedfl`` (JSON, :data:`META_KEY`).

``int8=True`` quantizes the weights of every MatMul with
``onnxruntime.quantization.quantize_dynamic`` (activations stay float; the
tied embedding/lm_head matrix is read by a Gather and a transposed MatMul, and
stays float32).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from edgedfl._version import __version__
from edgedfl.errors import BackendUnavailable

log = logging.getLogger("edgedfl.export")

META_KEY = "edgedfl"
FORMAT = "edgedfl-routed-llm/1"
TOKENIZER_FILE = "tokenizer.json"


@dataclasses.dataclass
class ExportInfo:
    """What :func:`export_onnx` wrote."""

    path: Path
    tokenizer_path: Path
    bytes: int
    int8: bool
    seconds: float
    meta: dict[str, Any]


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise BackendUnavailable(
            "ONNX export needs onnx and onnxscript: pip install 'edgedfl[onnx]'"
        ) from exc


def export_metadata(module: Any, routed: Any, tokenizer: Any, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "edgedfl_version": __version__,
        "num_layers": module.num_layers,
        "num_kv_heads": module.num_kv,
        "head_dim": module.head_dim,
        "num_experts": module.num_experts,
        "experts": list(routed.names),
        "router": routed.config.to_dict(),
        "adapter": routed.adapted.config.to_dict(),
        "vocab_size": int(module.embed.shape[0]),
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "tokenizer": TOKENIZER_FILE,
        **(extra or {}),
    }


def quantize_int8(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> Path:
    """int8 weights for every MatMul of ``src`` (dynamic quantization), metadata kept, ``int8`` set."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
    model = onnx.load(str(dst))
    src_meta = {p.key: p.value for p in onnx.load(str(src), load_external_data=False).metadata_props}
    del model.metadata_props[:]
    for key, value in src_meta.items():
        if key == META_KEY:
            value = json.dumps({**json.loads(value), "int8": True}, sort_keys=True)
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(dst))
    return Path(dst)


def export_onnx(
    routed: Any,
    tokenizer: Any,
    out: str | os.PathLike[str],
    *,
    int8: bool = False,
    extra_meta: dict[str, Any] | None = None,
    merge_slot: int | None = None,
) -> ExportInfo:
    """Write ``routed`` as one ONNX model at ``out`` (and ``tokenizer.json`` beside it).

    ``merge_slot`` k exports the single-merged-adapter baseline instead (expert k merged into the
    base weights, no router): the same interface, for latency comparisons.
    """
    _require_onnx()
    import onnx
    import torch

    from edgedfl.export.module import RoutedLlama

    t0 = time.monotonic()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    module = RoutedLlama(routed, merge_slot=merge_slot).eval()
    args = module.example_inputs()
    batch, seq, past = torch.export.Dim("batch"), torch.export.Dim("seq"), torch.export.Dim("past")
    dynamic_shapes = {
        "input_ids": {0: batch, 1: seq},
        "attention_mask": {0: batch, 1: seq},
        "route": {0: batch},
        "past_mask": {0: batch, 1: past},
        "past": [{0: batch, 2: past} for _ in range(2 * module.num_layers)],
    }
    meta = export_metadata(module, routed, tokenizer, {**(extra_meta or {}), "merged_slot": merge_slot})
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".export-") as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        with torch.no_grad():
            program = torch.onnx.export(
                module, args, dynamo=True, dynamic_shapes=dynamic_shapes,
                input_names=module.input_names(), output_names=module.output_names(), verbose=False,
            )
        assert program is not None
        program.save(str(fp32))
        model = onnx.load(str(fp32), load_external_data=True)
        del model.metadata_props[:]
        entry = model.metadata_props.add()
        entry.key, entry.value = META_KEY, json.dumps({**meta, "int8": int8}, sort_keys=True)
        final = Path(tmp) / "final.onnx"
        onnx.save(model, str(fp32 if not int8 else Path(tmp) / "meta.onnx"))
        if int8:
            quantize_int8(Path(tmp) / "meta.onnx", final)
        else:
            final = fp32
        os.replace(final, out)
    tok_path = out.parent / TOKENIZER_FILE
    tokenizer.backend_tokenizer.save(str(tok_path))
    size = out.stat().st_size
    log.info("exported %s (%.1f MB, int8=%s) in %.0f s", out, size / 1e6, int8, time.monotonic() - t0)
    return ExportInfo(out, tok_path, size, int8, time.monotonic() - t0, meta)
