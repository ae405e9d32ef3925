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
``present_*`` and ``route_weights`` back. With the router past layer 0 the
model holds two branches under one ``If`` (:func:`join_on_given_route`): a
call with a cache (P > 0) whose every row carries a route skips the frozen
layers before the routing layer and the router, and returns zero
``distances``; every other call (prefill, forced routes included) routes as
one graph would. The weights are stored once. Everything a runtime needs to drive
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
#: the top node of a model with a decode branch (:func:`join_on_given_route`)
IF_NODE = "route_given_or_routed"


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

    source = onnx.load(str(src), load_external_data=True)
    branches = split_on_given_route(source)
    if branches is None:
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
        model = onnx.load(str(dst))
    else:  # the quantizer leaves MatMuls inside an If alone: quantize each branch alone, then join again
        with tempfile.TemporaryDirectory(dir=Path(dst).parent, prefix=".quantize-") as tmp:
            done = []
            for name, branch in zip(("full", "given"), branches):
                onnx.save(branch, str(Path(tmp) / f"{name}.onnx"))
                quantize_dynamic(str(Path(tmp) / f"{name}.onnx"), str(Path(tmp) / f"{name}8.onnx"),
                                 weight_type=QuantType.QInt8)
                done.append(onnx.load(str(Path(tmp) / f"{name}8.onnx"), load_external_data=True))
        model = join_on_given_route(done[0], done[1])
    src_meta = {p.key: p.value for p in source.metadata_props}
    del model.metadata_props[:]
    for key, value in src_meta.items():
        if key == META_KEY:
            value = json.dumps({**json.loads(value), "int8": True}, sort_keys=True)
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(dst))
    return Path(dst)


def _renamed(proto: Any, name: str) -> Any:
    """A copy of an ONNX tensor or value info under another name."""
    copy = type(proto)()
    copy.CopyFrom(proto)
    copy.name = name
    return copy


def _renamed_node(node: Any, rename_in: Any, rename_out: Any) -> Any:
    """A copy of an ONNX node reading ``rename_in(input)`` and writing ``rename_out(output)``."""
    from onnx import helper

    copy = helper.make_node(node.op_type, [rename_in(i) for i in node.input], [rename_out(o) for o in node.output],
                            name=rename_out(node.name), domain=node.domain or None)
    copy.attribute.extend(node.attribute)
    return copy


def _prefixed_branch(graph: Any, prefix: str, keep: set[str], shared: dict[str, str], name: str) -> Any:
    """``graph`` as the body of an ``If`` branch: its nodes, every tensor name it makes prefixed (so the two
    branches never collide), reading the outer graph's inputs (``keep``) and initializers (``shared``: its
    initializer name -> the name it has at the top level) by name; its outputs are the graph's outputs."""
    from onnx import helper

    def ref(n: str) -> str:
        if not n or n in keep:
            return n
        return shared.get(n, prefix + n)

    nodes = []
    for node in graph.node:
        if any(a.type in (a.GRAPH, a.GRAPHS) for a in node.attribute):
            raise RuntimeError(f"node {node.name} ({node.op_type}) holds a subgraph; cannot nest it in a branch")
        nodes.append(_renamed_node(node, ref, lambda o: prefix + o))
    outputs = [_renamed(out, ref(out.name)) for out in graph.output]
    infos = [_renamed(info, prefix + info.name) for info in graph.value_info]
    return helper.make_graph(nodes, name, [], outputs, value_info=infos)


def join_on_given_route(full: Any, given: Any) -> Any:
    """One model from two exports of the same module: ``given`` (every row's route given: no router) runs
    on decode steps whose rows all carry a route (``past_mask`` not empty, no all-zero ``route`` row),
    ``full`` (router and pre-pass) on every other call. An ONNX ``If`` at the top picks the branch; the
    weights are stored once and read by both branches from the top graph."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    if [i.name for i in full.graph.input] != [i.name for i in given.graph.input] or \
            [o.name for o in full.graph.output] != [o.name for o in given.graph.output]:
        raise RuntimeError("the two graphs to join have different inputs or outputs")
    inputs = {i.name for i in full.graph.input}
    top = {t.name: t for t in full.graph.initializer}
    shared_full = {name: name for name in top}
    shared_given: dict[str, str] = {}
    extra = []
    for t in given.graph.initializer:
        mine = top.get(t.name)
        if mine is not None and list(mine.dims) == list(t.dims) and mine.data_type == t.data_type and \
                np.array_equal(numpy_helper.to_array(mine), numpy_helper.to_array(t)):
            shared_given[t.name] = t.name
        else:  # a constant of the given graph alone (or one that differs under the same name)
            shared_given[t.name] = "given/" + t.name
            extra.append(_renamed(t, shared_given[t.name]))
    then_graph = _prefixed_branch(given.graph, "given/", inputs, shared_given, "route_given")
    else_graph = _prefixed_branch(full.graph, "full/", inputs, shared_full, "routed")
    cond = [
        helper.make_node("Abs", ["route"], ["cond/abs"], name="cond/Abs"),
        helper.make_node("ReduceSum", ["cond/abs", "cond/axis1"], ["cond/row"], name="cond/ReduceSum", keepdims=0),
        helper.make_node("ReduceMin", ["cond/row"], ["cond/least"], name="cond/ReduceMin", keepdims=0),
        helper.make_node("Greater", ["cond/least", "cond/zero_f"], ["cond/all_given"], name="cond/AllGiven"),
        helper.make_node("Shape", ["past_mask"], ["cond/past_len"], name="cond/PastLen", start=1, end=2),
        helper.make_node("Greater", ["cond/past_len", "cond/zero_i"], ["cond/has_past"], name="cond/HasPast"),
        helper.make_node("And", ["cond/all_given", "cond/has_past"], ["cond/given"], name="cond/Given"),
        helper.make_node("If", ["cond/given"], [o.name for o in full.graph.output], name=IF_NODE,
                         then_branch=then_graph, else_branch=else_graph),
    ]
    consts = [helper.make_tensor("cond/axis1", TensorProto.INT64, [1], [1]),
              helper.make_tensor("cond/zero_f", TensorProto.FLOAT, [], [0.0]),
              helper.make_tensor("cond/zero_i", TensorProto.INT64, [], [0])]
    graph = helper.make_graph(cond, full.graph.name, list(full.graph.input), list(full.graph.output),
                              initializer=[*full.graph.initializer, *extra, *consts])
    model = helper.make_model(graph, opset_imports=list(full.opset_import), ir_version=full.ir_version,
                              producer_name=full.producer_name, producer_version=full.producer_version)
    return model


def split_on_given_route(model: Any) -> tuple[Any, Any] | None:
    """The two standalone models (full, given) that :func:`join_on_given_route` joined, or None for a
    model of one graph (each branch with the top graph's inputs, outputs and the initializers it reads)."""
    from onnx import helper

    ifs = [n for n in model.graph.node if n.name == IF_NODE]
    if not ifs:
        return None
    branches = {a.name: a.g for a in ifs[0].attribute}
    top = {t.name: t for t in model.graph.initializer}

    def standalone(branch: Any, prefix: str) -> Any:
        def plain(n: str) -> str:
            return n.removeprefix(prefix)

        nodes = [_renamed_node(node, plain, plain) for node in branch.node]
        used = {i for node in branch.node for i in node.input}
        inits = [_renamed(top[name], plain(name)) for name in sorted(used & set(top))]
        outputs = [_renamed(vi, plain(vi.name)) for vi in branch.output]
        infos = [_renamed(vi, plain(vi.name)) for vi in branch.value_info]
        graph = helper.make_graph(nodes, model.graph.name, list(model.graph.input), outputs, initializer=inits,
                                  value_info=infos)
        return helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)

    return standalone(branches["else_branch"], "full/"), standalone(branches["then_branch"], "given/")


def export_onnx(
    routed: Any,
    tokenizer: Any,
    out: str | os.PathLike[str],
    *,
    int8: bool = False,
    extra_meta: dict[str, Any] | None = None,
    merge_slot: int | None = None,
    decode_branch: bool = True,
) -> ExportInfo:
    """Write ``routed`` as one ONNX model at ``out`` (and ``tokenizer.json`` beside it).

    ``merge_slot`` k exports the single-merged-adapter baseline instead (expert k merged into the
    base weights, no router): the same interface, for latency comparisons. With a router past layer 0
    the model holds a second, router-free branch that decode steps take (:func:`join_on_given_route`);
    ``decode_branch=False`` leaves it out (one graph, the router's pre-pass in every call: for benchmarks).
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
    # a router past layer 0 runs the frozen layers before it; decode steps, whose route is the prompt's,
    # skip them through a second, router-free branch (bench/results/onnx-router-layer.md)
    two_branches = decode_branch and merge_slot is None and module.routing_layer > 0
    meta = export_metadata(module, routed, tokenizer, {**(extra_meta or {}), "merged_slot": merge_slot,
                                                       "decode_branch": two_branches})
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".export-") as tmp:

        def export_graph(name: str) -> Any:
            path = Path(tmp) / name
            with torch.no_grad():
                program = torch.onnx.export(
                    module, args, dynamo=True, dynamic_shapes=dynamic_shapes,
                    input_names=module.input_names(), output_names=module.output_names(), verbose=False,
                )
            assert program is not None
            program.save(str(path))
            return onnx.load(str(path), load_external_data=True)

        fp32 = Path(tmp) / "fp32.onnx"
        model = export_graph("routed.onnx")
        if two_branches:
            module.route_given = True
            try:
                model = join_on_given_route(model, export_graph("given.onnx"))
            finally:
                module.route_given = False
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
