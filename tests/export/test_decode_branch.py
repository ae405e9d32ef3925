"""A router past layer 0: decode steps whose route is given take a router-free branch of the same model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgedfl.data.tasks import load_task
from edgedfl.infer import OnnxLM

TASKS = ("topic", "arith", "strtf")


@pytest.fixture(scope="module")
def routed1():
    from routing.routing_helpers import tiny_routed

    from edgedfl.routing.router import RouterConfig

    calibration = [[e.prompt for e in load_task(t, "train", n=48)] for t in TASKS]
    routed, tok = tiny_routed(len(TASKS), rank=4, seed=0, calibration=calibration, router=RouterConfig(layer=1))
    routed.names = list(TASKS)
    return routed, tok


@pytest.fixture(scope="module")
def exported1(routed1, tmp_path_factory):
    from edgedfl.export.onnx import export_onnx

    routed, tok = routed1
    return export_onnx(routed, tok, tmp_path_factory.mktemp("decode-branch") / "model.onnx").path


@pytest.fixture(scope="module")
def reference(routed1):
    """The exported module in torch, one graph (the router's pre-pass in every call): numpy in, numpy out."""
    from edgedfl.export.module import RoutedDecoder

    module = RoutedDecoder(routed1[0]).eval()
    names = module.output_names()

    def forward(ids, mask, route, cache):
        past = [torch.from_numpy(cache[f"past.{i}.{kv}"]) for i in range(module.num_layers) for kv in ("key", "value")]
        with torch.no_grad():
            out = module(torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(route),
                         torch.from_numpy(cache["past_mask"]), past)
        return {n: o.numpy() for n, o in zip(names, out)}

    return forward


@pytest.fixture(scope="module")
def prompts():
    per = [[e.prompt for e in load_task(t, "test", n=2)] for t in TASKS]
    return [per[k][i] for i in range(2) for k in range(len(TASKS))]


def _top_ops(path):
    import onnx

    return [n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node]


def test_decode_steps_skip_the_router_and_match_the_one_graph_module(exported1, reference, prompts):
    assert _top_ops(exported1).count("If") == 1
    lm = OnnxLM(exported1)
    assert lm.meta["decode_branch"]
    ids, mask = lm.encode(prompts)
    a = lm.forward(ids, mask)  # prefill: the routed branch
    b = reference(ids, mask, lm.route_for(len(prompts)), lm.empty_cache(len(prompts)))
    np.testing.assert_allclose(a["logits"], b["logits"], atol=1e-4)
    np.testing.assert_allclose(a["distances"], b["distances"], rtol=1e-4)
    assert (a["distances"] > 0).all()
    route = a["route_weights"]
    for _ in range(3):
        nxt = a["logits"][:, -1].argmax(-1)[:, None]  # (B, 1)
        step = (nxt, np.ones_like(nxt), route, lm.next_cache(a))
        a, b = lm.forward(*step), reference(*step)
        assert (a["distances"] == 0).all()  # the router-free branch ran
        assert (b["distances"] > 0).all()  # one graph runs its router on the new token (and ignores it)
        np.testing.assert_allclose(a["logits"], b["logits"], atol=1e-4)
        np.testing.assert_array_equal(a["route_weights"], route)
        for name in a:
            if name.startswith("present."):
                np.testing.assert_allclose(a[name], b[name], atol=1e-4)


def test_a_decode_step_with_a_row_to_route_runs_the_router_for_the_whole_batch(exported1, reference, prompts):
    lm = OnnxLM(exported1)
    ids, mask = lm.encode(prompts)
    a = lm.forward(ids, mask)
    route = a["route_weights"].copy()
    route[1] = 0.0  # row 1 asks the graph to route its new token
    nxt = a["logits"][:, -1].argmax(-1)[:, None]
    step = (nxt, np.ones_like(nxt), route, lm.next_cache(a))
    a, b = lm.forward(*step), reference(*step)
    assert (a["distances"] > 0).all()
    np.testing.assert_allclose(a["route_weights"], b["route_weights"], atol=1e-6)
    np.testing.assert_allclose(a["logits"], b["logits"], atol=1e-4)


def test_generation_matches_torch_with_a_deeper_router(routed1, exported1, prompts):
    routed, tok = routed1
    texts, route = routed.generate_text(tok, prompts, max_new_tokens=6, max_length=512)
    gens = OnnxLM(exported1).generate(prompts, max_new_tokens=6, max_length=512)
    assert [g.text for g in gens] == texts
    assert [g.expert for g in gens] == route.experts.tolist()
    assert all(min(g.distances) > 0 for g in gens)  # the prompt's distances, from the routed branch


def test_int8_quantizes_both_branches_and_keeps_the_decode_branch(exported1, prompts):
    from edgedfl.export.onnx import quantize_int8

    two_path = exported1
    q = quantize_int8(two_path, two_path.parent / "int8.onnx")
    assert _top_ops(q).count("If") == 1
    assert q.stat().st_size < 0.6 * two_path.stat().st_size  # the MatMuls inside the branches are int8
    fp32, int8 = OnnxLM(two_path), OnnxLM(q)
    assert int8.meta["int8"] and int8.meta["decode_branch"]
    ids, mask = fp32.encode(prompts)
    a, b = fp32.forward(ids, mask), int8.forward(ids, mask)
    assert a["expert"].tolist() == b["expert"].tolist()
    nxt = b["logits"][:, -1].argmax(-1)[:, None]
    step = int8.forward(nxt, np.ones_like(nxt), b["route_weights"], int8.next_cache(b))
    assert (step["distances"] == 0).all()
    assert np.isfinite(step["logits"]).all()
