"""How a call's chunks reach a compiled model (birdinfer.runtime.ov_requests): small static requests over the
streams give the same rows as one request, for any row count, on OpenVINO and ONNX Runtime; which models may be
cut (independent windows) and which may not (sequence models, models with several inputs, fixed chunk counts)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from birdinfer.runtime.models import _OnnxRuntimeLoader, _OpenVinoLoader  # noqa: E402
from birdinfer.runtime.ov_requests import RequestPlan, request_plan, rows_independent  # noqa: E402


def _graph(path, width=16, hidden=24, classes=7, batch="N"):
    """Two outputs: ``label`` = relu(x·W1)·W2 (per row) and ``embedding`` = relu(x·W1)."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((width, hidden)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((hidden, classes)).astype(np.float32), "w2")
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["embedding"]),
             helper.make_node("MatMul", ["embedding", "w2"], ["label"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, width])],
                              [helper.make_tensor_value_info("label", TensorProto.FLOAT, [batch, classes]),
                               helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [batch, hidden])],
                              initializer=[w1, w2])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _entry(batch_chunks=None, named=(0, 1), inputs=()):
    return SimpleNamespace(name="m", batch_chunks=batch_chunks, named_outputs=named, input_name=None, sources=(),
                           inputs=inputs)


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    return _graph(tmp_path_factory.mktemp("req") / "m.onnx")


@pytest.mark.parametrize("rows", [1, 2, 3, 5])
def test_small_requests_equal_one_request_for_any_row_count(graph, rows):
    pytest.importorskip("openvino")
    one = _OpenVinoLoader(cache_dir=None, threads=None, streams=1).load(graph, _entry(), "f32", "f32")[0]
    small = _OpenVinoLoader(cache_dir=None, threads=None, streams=2, request_chunks=rows).load(graph, _entry(), "f32", "f32")[0]
    assert small.request_plan == RequestPlan("small", 2, rows) and one.request_plan.mode == "one"
    x = np.random.default_rng(1).standard_normal((13, 16)).astype(np.float32)
    for n in (1, 2, 3, 4, 7, 12, 13):  # fewer rows than a request, exact multiples, remainders, > 2 × streams
        want, got = one(x[:n]), small(x[:n])
        assert [g.shape for g in got] == [(n, 7), (n, 24)]
        for w, g in zip(want, got):
            np.testing.assert_allclose(g, w, rtol=0, atol=1e-5)


def test_single_output_runner_and_fixed_split(graph, tmp_path):
    pytest.importorskip("openvino")
    x = np.random.default_rng(2).standard_normal((6, 16)).astype(np.float32)
    entry = _entry(named=None)
    one = _OpenVinoLoader(cache_dir=None, threads=None, streams=1).load(graph, entry, "f32", "f32")[0](x)
    small = _OpenVinoLoader(cache_dir=None, threads=None, streams=2).load(graph, entry, "f32", "f32")[0]
    assert small.request_plan.mode == "small"
    np.testing.assert_allclose(small(x), one, rtol=0, atol=1e-5)
    fixed = _OpenVinoLoader(cache_dir=None, threads=None, streams=2).load(
        _graph(tmp_path / "f.onnx", batch=6), _entry(batch_chunks=6, named=None), "f32", "f32")[0]
    assert fixed.request_plan == RequestPlan("split", 2, 3)
    np.testing.assert_allclose(fixed(x), one, rtol=0, atol=1e-5)


def test_onnxruntime_runs_the_same_rows_in_parts(graph):
    pytest.importorskip("onnxruntime")
    x = np.random.default_rng(3).standard_normal((11, 16)).astype(np.float32)
    whole = _OnnxRuntimeLoader(precision="f32", threads=1, request_chunks=None).load(graph, _entry(), "f32")[0](x)
    parts = _OnnxRuntimeLoader(precision="f32", threads=1, request_chunks=3).load(graph, _entry(), "f32")[0](x)
    for w, g in zip(whole, parts):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=0, atol=1e-5)


def test_which_models_may_be_cut():
    window = SimpleNamespace(sequence=False, ids=None)
    sequence = SimpleNamespace(sequence=True, ids=None)
    ids = SimpleNamespace(sequence=False, ids=object())
    assert rows_independent(_entry()) and rows_independent(_entry(inputs=(window,)))
    assert not rows_independent(_entry(inputs=(sequence,)))
    assert not rows_independent(_entry(inputs=(window, ids)))
    assert request_plan(_entry(), 2, 2) == RequestPlan("small", 2, 2)
    assert request_plan(_entry(), 1, 2).mode == "one"  # one stream: one request on every thread
    assert request_plan(_entry(), 2, None).mode == "one"  # small requests switched off
    assert request_plan(_entry(inputs=(sequence,)), 2, 2).mode == "one"
    assert request_plan(_entry(batch_chunks=1), 2, 2).mode == "one"  # a sequence graph's [1, windows, ...]
    assert request_plan(_entry(batch_chunks=12), 2, 2) == RequestPlan("split", 2, 6)
    assert request_plan(_entry(batch_chunks=5), 2, 2).mode == "one"
