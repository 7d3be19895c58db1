"""Only the columns a label map reads (birdinfer.runtime.prune_outputs): a Perch-v2-shaped stand-in (the ONNX
of tests/test_recipe2026_dag.py: ``[N, 160000]`` → ``label`` ``[N, 14795]``, ``embedding`` ``[N, 1536]``) whose
14,795 classes are mapped onto six labels (direct names, a genus fallback over two classes, a genus-only class,
one label missing), run through the whole pipeline with and without the cut; the cut graph against the whole one;
graphs that cannot be cut (a log-softmax head, a weight read from the input, a shared node) run whole and say why."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import write_ogg
from test_recipe2026_dag import (DIRECT, EMB, FILL, N_PERCH, ROW, SR, PerchLike, Probe, _export, _windows,
                                 write_perch_labels)
from test_recipe2026_steps import LABELS, TAXONOMY

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
ov = pytest.importorskip("openvino")

from birdinfer.runtime.pipeline import Predictor  # noqa: E402
from birdinfer.runtime.prune_outputs import OutputColumns, label_map_columns, prune_output  # noqa: E402

#: The distinct model classes the map reads: the direct ones, both Strix species (strvar's genus) and the
#: genus-only Leptodactylus class (frog1's genus); insect9 maps to nothing.
COLUMNS = sorted({i for cols in DIRECT.values() for i in cols})


class LogSoftmaxPerch(PerchLike):
    """The stand-in with a log-softmax over its classes: every logit depends on every column, nothing can be cut."""

    def forward(self, x):
        label, emb = super().forward(x)
        return torch.log_softmax(label, dim=1), emb


def _spec() -> dict:
    wave = {"windows": {"steps": [{"op": "windows", "length_seconds": 5.0, "step_seconds": 5.0}]}}
    models = [
        {"name": "perch", "input": "windows", "input_shape": [-1, ROW],
         "outputs": [{"name": "label", "kind": "clip_logits", "index": 0},
                     {"name": "embedding", "kind": "embedding", "index": 1, "shape": [-1, EMB]}],
         "steps": [{"step": "label_map", "labels": "perch_labels.csv", "taxonomy": "taxonomy.csv", "output": "label",
                    "fill": FILL}, {"step": "sigmoid", "output": "label"}, {"step": "clip_rows", "output": "label"}],
         "variants": {"f32": {"onnx": "perch.onnx"}}},
        {"name": "probe", "input": {"model": "perch", "output": "embedding", "context": ["mean", "std"]},
         "input_shape": [-1, 3 * EMB], "outputs": [{"name": "logits", "kind": "clip_logits"}],
         "steps": [{"step": "sigmoid"}, {"step": "clip_rows"}], "variants": {"f32": {"onnx": "probe.onnx"}}},
    ]
    return {"format": "birdinfer-model-folder", "format_version": 2, "sample_rate": SR, "labels": LABELS,
            "rows": {"seconds": 5.0}, "block_seconds": None, "features": wave, "models": models,
            "ensemble": {"members": [{"model": "perch", "weight": 0.5}, {"model": "probe", "weight": 0.5}]}}


def _folder(root: Path, net) -> tuple[Path, Path]:
    from birdinfer.tools.importer import import_folder

    src = root / "src"
    src.mkdir()
    torch.manual_seed(1)
    _export(net(), torch.zeros(2, ROW), src / "perch.onnx", ["x"], ["label", "embedding"],
            {"x": {0: "n"}, "label": {0: "n"}, "embedding": {0: "n"}})
    _export(Probe(), torch.zeros(2, 3 * EMB), src / "probe.onnx", ["x"], ["logits"], {"x": {0: "n"}, "logits": {0: "n"}})
    write_perch_labels(src)
    (src / "taxonomy.csv").write_text(TAXONOMY)
    (src / "spec.json").write_text(json.dumps(_spec(), indent=1))
    import_folder(src / "spec.json", root / "models", measure=False)
    return src, root / "models"


@pytest.fixture(scope="module")
def perch_folder(tmp_path_factory) -> tuple[Path, Path]:
    return _folder(tmp_path_factory.mktemp("prune"), PerchLike)


@pytest.fixture(scope="module")
def softmax_folder(tmp_path_factory) -> tuple[Path, Path]:
    return _folder(tmp_path_factory.mktemp("prune_softmax"), LogSoftmaxPerch)


@pytest.fixture(scope="module")
def audio(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("prune_audio")
    return [write_ogg(root / "a.ogg", 12.3, seed=5), write_ogg(root / "b.ogg", 21.0, seed=6)]


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


def reference_rows(src: Path, paths: list[Path], shift: int = 0) -> np.ndarray:
    """The perch member's rows by ONNX Runtime on the whole graph and numpy: per label the max over its classes
    (direct, or its genus), ``FILL`` where none, then the sigmoid. ``shift``: read the class ``shift`` further on
    instead (a wrong map, to show the comparison can fail)."""
    session = ort.InferenceSession(str(src / "perch.onnx"), providers=["CPUExecutionProvider"])
    out = []
    for path in paths:
        label = session.run(["label"], {"x": _windows(path)})[0]
        mapped = np.full((len(label), len(LABELS)), FILL)
        for c, name in enumerate(LABELS):
            if DIRECT[name]:
                mapped[:, c] = label[:, [(i + shift) % N_PERCH for i in DIRECT[name]]].max(axis=1)
        out.append(sigmoid(mapped))
    return np.concatenate(out)


def member_rows(predictor: Predictor, paths: list[Path], name: str = "perch") -> np.ndarray:
    return np.concatenate([r.members.models[name] for r in predictor.iter_files(paths, members=True)])


def _model(predictor: Predictor, name: str = "perch"):
    return next(m for m in predictor.models if m.name == name)


# ------------------------------------------------------------------------------------------ the pipeline
def test_cut_graph_gives_the_same_mapped_rows(perch_folder, audio, caplog):
    """OpenVINO with the cut (6 of 14,795 columns computed) against OpenVINO whole: the same rows within 1e-5;
    both against ONNX Runtime + numpy within 1e-4; the label missing from the model's classes is the fill."""
    src, folder = perch_folder
    with caplog.at_level(logging.INFO, logger="birdinfer"):
        cut = Predictor(folder, precision="f32")
    whole = Predictor(folder, precision="f32", prune_outputs=False)
    line = f"label: {N_PERCH} → {len(COLUMNS)} columns computed (label_map)"
    assert _model(cut).columns == line
    assert any(r.getMessage() == f"perch: {line}" for r in caplog.records)
    assert _model(whole).columns == f"label: all {N_PERCH} columns computed: output pruning is off"
    got, want = member_rows(cut, audio), member_rows(whole, audio)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    np.testing.assert_allclose(got, reference_rows(src, audio), rtol=0, atol=1e-4)
    assert np.abs(reference_rows(src, audio, shift=1) - want)[:, :5].min(axis=0).min() > 1e-3  # a wrong class shows
    np.testing.assert_allclose(got[:, LABELS.index("insect9")], sigmoid(FILL), rtol=0, atol=1e-7)
    fused_cut = np.concatenate([r.probs for r in cut.iter_files(audio)])
    fused_whole = np.concatenate([r.probs for r in whole.iter_files(audio)])
    np.testing.assert_allclose(fused_cut, fused_whole, rtol=0, atol=1e-5)  # the probe on the embedding is untouched


def test_cut_graph_outputs_the_read_columns(perch_folder, audio):
    """The compiled graph gives ``[N, K]``: column ``i`` is the whole graph's column ``COLUMNS[i]`` (same products)
    and the embedding is unchanged; the loaded label map gathers from those positions."""
    _, folder = perch_folder
    cut, whole = Predictor(folder, precision="f32"), Predictor(folder, precision="f32", prune_outputs=False)
    x = _windows(audio[1])
    label, emb = _model(cut).runner(x)
    full, full_emb = _model(whole).runner(x)
    assert label.shape == (len(x), len(COLUMNS)) and full.shape == (len(x), N_PERCH)
    np.testing.assert_allclose(label, full[:, COLUMNS], rtol=0, atol=1e-5)
    np.testing.assert_allclose(emb, full_emb, rtol=0, atol=1e-5)
    assert np.abs(full[:, COLUMNS] - full[:, [c - 1 for c in COLUMNS]]).max(axis=0).min() > 1e-2  # neighbours differ
    plan = _model(cut).entry.block_steps[0].params
    original = _model(whole).entry.block_steps[0].params
    assert (plan.n_model, original.n_model) == (len(COLUMNS), N_PERCH)
    np.testing.assert_array_equal(np.asarray(COLUMNS)[plan.gather], original.gather)
    np.testing.assert_array_equal(plan.starts, original.starts)
    np.testing.assert_array_equal(plan.targets, original.targets)


def test_bench_counts_the_cut_head(perch_folder):
    """``birdinfer bench``'s GFLOP per window of a cut model counts the head it runs: the whole graph's count less
    2 × width × (14,795 − K) multiply-adds of the columns not computed; a model computed whole keeps no cut."""
    from birdinfer.tools.bench_stages import gflop_per_window

    _, folder = perch_folder
    cut, whole = Predictor(folder, precision="f32"), Predictor(folder, precision="f32", prune_outputs=False)
    assert _model(cut).cut is not None and _model(cut).cut.count == len(COLUMNS) and _model(whole).cut is None
    manifest = cut.manifest
    full = gflop_per_window(manifest, _model(whole).entry)
    counted = gflop_per_window(manifest, _model(cut).entry, cut=_model(cut).cut)
    width = PerchLike().width
    np.testing.assert_allclose(full - counted, 2 * width * (N_PERCH - len(COLUMNS)) / 1e9, rtol=1e-9)


def test_output_not_a_constant_matmul_runs_whole(softmax_folder, audio, caplog):
    """A log-softmax after the head mixes every column: the graph is compiled whole, the log says why, the rows
    are the reference's."""
    src, folder = softmax_folder
    with caplog.at_level(logging.INFO, logger="birdinfer"):
        predictor = Predictor(folder, precision="f32")
    said = _model(predictor).columns
    assert said.startswith(f"label: all {N_PERCH} columns computed: ") and "is not column-wise" in said, said
    assert "Softmax" in said
    assert [r.getMessage() for r in caplog.records].count(f"perch: {said}") == 1
    assert _model(predictor).runner(np.zeros((2, ROW), np.float32))[0].shape == (2, N_PERCH)
    np.testing.assert_allclose(member_rows(predictor, audio), reference_rows(src, audio), rtol=0, atol=1e-4)


def test_onnxruntime_backend_is_unaffected(perch_folder, audio):
    src, folder = perch_folder
    predictor = Predictor(folder, backend="onnxruntime")
    assert _model(predictor).columns == f"label: all {N_PERCH} columns computed: the onnxruntime backend computes every column"
    assert _model(predictor).entry.block_steps[0].params.n_model == N_PERCH
    np.testing.assert_allclose(member_rows(predictor, audio), reference_rows(src, audio), rtol=0, atol=1e-6)


def test_an_output_kept_raw_is_not_cut(perch_folder, audio):
    """``keep_outputs`` takes perch's raw label (e.g. for embeddings of logits): every column is computed."""
    _, folder = perch_folder
    predictor = Predictor(folder, precision="f32", keep_outputs=[("perch", "label")])
    assert _model(predictor).columns == f"label: all {N_PERCH} columns computed: perch.label is kept for the caller"
    result = next(predictor.iter_files(audio[:1]))
    assert result.outputs[("perch", "label")].shape[1] == N_PERCH


# -------------------------------------------------------------------------------------- who reads the output
def _step(name: str, **params):
    return SimpleNamespace(name=name, params=SimpleNamespace(**params))


def _mapped(name="perch", steps=None):
    plan = SimpleNamespace(output="label", gather=np.array([9, 3, 3, 40]), n_model=50)
    return SimpleNamespace(name=name, block_steps=steps or (SimpleNamespace(name="label_map", params=plan),),
                           outputs=(SimpleNamespace(name="label", index=0), SimpleNamespace(name="embedding", index=1)),
                           inputs=())


def _reader(output=None, rows=None):
    return SimpleNamespace(name="probe", block_steps=(), outputs=(),
                           inputs=(SimpleNamespace(model="perch", output=output, rows=rows),))


@pytest.mark.parametrize("others, keep, why", [
    ([], (), None),
    ([_reader(output="embedding")], (), None),  # another output
    ([_reader(rows="clip_rows")], (), None),  # its rows: after the map
    ([_reader(output="label")], (), "model 'probe' reads perch.label"),
    ([], [("perch", "label")], "perch.label is kept for the caller"),
    ([], [("perch", "embedding")], None),
])
def test_columns_only_when_nothing_else_reads_the_output(others, keep, why):
    wanted, reasons = label_map_columns([_mapped()] + others, keep)
    if why is None:
        assert list(wanted) == ["perch"] and not reasons
        assert wanted["perch"].columns.tolist() == [3, 9, 40] and wanted["perch"].index == 0
    else:
        assert not wanted and reasons == {"perch": f"label: all 50 columns computed: {why}"}


def test_a_step_before_the_map_keeps_every_column():
    m = _mapped()
    m.block_steps = (_step("sigmoid", output="label"),) + m.block_steps
    assert label_map_columns([m])[1] == {"perch": "label: all 50 columns computed: step 'sigmoid' runs before label_map"}


# ---------------------------------------------------------------------------------------- the graph rewrite
def _head(weight_axis_last: bool = False, compressed: bool = False, weight_param: bool = False, shared: bool = False):
    """``x [?, 8]`` → MatMul with a ``[50, 8]`` weight (transpose_b; or ``[8, 50]`` via a Transpose) + bias, × 3
    (a ``[1, 1]`` constant, broadcast over the columns); ``compressed``: f16 constants behind a Convert, as a saved
    IR holds them; ``weight_param``: the weight is a graph input; ``shared``: the MatMul also feeds a second output."""
    from openvino import opset13 as ops

    rng = np.random.default_rng(3)
    w, b = rng.standard_normal((50, 8)).astype(np.float32), rng.standard_normal(50).astype(np.float32)
    x = ops.parameter([-1, 8], np.float32, name="x")
    params = [x]

    def const(a):
        return ops.convert(ops.constant(a.astype(np.float16)), np.float32) if compressed else ops.constant(a)

    if weight_param:
        weight = ops.parameter([50, 8], np.float32, name="w")
        params.append(weight)
        mm = ops.matmul(x, weight, False, True)
    elif weight_axis_last:
        mm = ops.matmul(x, ops.transpose(const(w), ops.constant(np.array([1, 0], np.int64))), False, False)
    else:
        mm = ops.matmul(x, const(w), False, True)
    logits = ops.multiply(ops.add(mm, const(b)), ops.constant(np.full((1, 1), 3.0, np.float32)))  # [1, 1]: every column
    results = [ops.result(logits)] + ([ops.result(ops.relu(mm))] if shared else [])
    return ov.Model(results, params, "head")


def _run(model, x):
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return compiled(x)[compiled.output(0)]


@pytest.mark.parametrize("kind", ["plain", "compressed", "transposed"])
def test_rewrite_slices_weights_behind_convert_and_transpose(kind):
    x = np.random.default_rng(4).standard_normal((3, 8)).astype(np.float32)
    make = lambda: _head(weight_axis_last=kind == "transposed", compressed=kind == "compressed")  # noqa: E731
    columns = np.array([0, 7, 8, 31, 49])
    model = make()
    assert prune_output(model, OutputColumns("m", "label", 0, 50, columns)) is None
    assert model.output(0).get_partial_shape()[1].get_length() == len(columns)
    np.testing.assert_allclose(_run(model, x), _run(make(), x)[:, columns], rtol=0, atol=1e-5)


@pytest.mark.parametrize("kwargs, why", [
    ({"weight_param": True}, "takes its columns from the graph's input"),
    ({"shared": True}, "also feeds another part of the graph"),
])
def test_rewrite_refuses_and_leaves_the_graph(kwargs, why):
    model = _head(**kwargs)
    said = prune_output(model, OutputColumns("m", "label", 0, 50, np.array([1, 2])))
    assert said is not None and why in said, said
    assert model.output(0).get_partial_shape()[1].get_length() == 50
