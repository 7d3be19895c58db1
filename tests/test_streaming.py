"""Whole-file specs streamed block by block (birdinfer.runtime.streaming): the front end of every block, the
statistics of every file-scope op and the rows equal the whole-file computation; a recording of one block
runs whole; a spec that cannot be streamed keeps the whole-file way and says why."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from birdinfer.io.audio import load_audio
from birdinfer.runtime.engine import FrontEndGraph
from birdinfer.spec.parse import parse_spec
from birdinfer.ops.steps import Outputs
from birdinfer.dsp import resize_plan
from birdinfer.runtime.stream_exec import FileFront, Samples, resize_columns
from birdinfer.runtime import streaming
from birdinfer.runtime.streaming import BLOCK_BUDGET_BYTES, WholeFileStream, block_bytes, choose_block_seconds
from birdinfer.runtime.streaming_rows import RowStream
from birdinfer.ops.filters import BandpassParams

from conftest import synth_signal, write_ogg

SR = 32000
WEIGHTS = Path(__file__).resolve().parents[1] / "weights"
SHIPPED = ["birdclef2024_1st", "birdclef2025_1st", "birdclef2025_2nd"]


class ArraySamples:
    """Samples from an array, refusing any range outside it (the executor must clip every request)."""

    def __init__(self, y):
        self.y = y

    def get(self, a, b):
        assert 0 <= a <= b <= len(self.y), (a, b, len(self.y))
        return self.y[a:b]

    def release(self):
        pass


def _model(feature: str, shape, kind="clip_logits", steps=None):
    return {"name": f"m_{feature}", "input": feature, "input_shape": shape,
            "outputs": [{"name": "out", "kind": kind}], "steps": steps or [{"step": "clip_rows"}],
            "variants": {"f32": {"onnx": f"m_{feature}.onnx"}}}


def _rank(name: str, steps) -> int:
    return 2 if "wave" in name else 4 if any(s["op"] == "channels" for s in steps) else 3


def spec_of(features: dict, partial="drop", models=None) -> dict:
    return {"format": "birdinfer-model-folder", "format_version": 2, "sample_rate": SR, "labels": ["a", "b", "c"],
            "rows": {"seconds": 5.0, "partial": partial}, "block_seconds": None,
            "features": {k: {"steps": v} for k, v in features.items()},
            "models": models or [_model(k, [-1] * _rank(k, v)) for k, v in features.items()],
            "ensemble": {"steps": [{"step": "weighted_mean"}]}}


# Every file-scope op, every pad mode, the fitted padding, both STFT centre modes, windows of waveform and
# spectrum with a lead, neighbours, and chains of up to three file-scope ops (three statistics passes).
OPS_SPEC = spec_of({
    "wave_a": [{"op": "pad", "left_seconds": 2.5, "right_seconds": 2.5, "mode": "reflect"},
               {"op": "normalize_wave", "method": "peak"}, {"op": "gain", "factor": 3.0},
               {"op": "windows", "length_seconds": 10.0, "step_seconds": 5.0, "lead_seconds": "centre"}],
    "spec_a": [{"op": "pad", "left_seconds": 2.5, "right_seconds": 2.5, "mode": "reflect"},
               {"op": "normalize_wave", "method": "peak"}, {"op": "gain", "factor": 3.0},
               {"op": "windows", "length_seconds": 10.0, "step_seconds": 5.0, "lead_seconds": "centre"},
               {"op": "stft", "n_fft": 512, "hop_length": 200, "pad_mode": "reflect"},
               {"op": "mel", "n_mels": 32, "fmax": 15000.0},
               {"op": "db", "top_db": 60.0, "ref": "max", "scope": "file"},
               {"op": "normalize", "method": "zscore_minmax", "scope": "file"},
               {"op": "channels", "layout": ["x", "ramp"]}],
    "spec_b": [{"op": "normalize_wave", "method": "zscore"},
               {"op": "pad", "left_seconds": 0.5, "right_seconds": 1.0, "mode": "edge"},
               {"op": "stft", "n_fft": 1024, "hop_length": 320, "center": False},
               {"op": "mel", "n_mels": 40, "scale": "htk", "norm": None},
               {"op": "db", "top_db": 80.0, "ref": "max"},
               {"op": "normalize", "method": "zscore", "ddof": 0},
               {"op": "windows", "length_frames": 1000, "step_frames": 500, "lead_frames": "centre", "frames_per_row": 500},
               {"op": "neighbours", "before": 1, "after": 2, "crop_frames": 2500, "edge": "zeros"},
               {"op": "normalize", "method": "minmax", "scope": "file"}],
    "spec_c": [{"op": "normalize_wave", "method": "rms"},
               {"op": "pad", "fit": {"hop_length": 320, "length_frames": 1000, "step_frames": 500}},
               {"op": "stft", "n_fft": 1024, "hop_length": 320, "power": 1.0},
               {"op": "log", "eps": 1e-4},
               {"op": "normalize", "method": "minmax"},
               {"op": "windows", "length_frames": 1000, "step_frames": 500, "lead_frames": "centre", "frames_per_row": 500},
               {"op": "db", "top_db": 50.0, "multiplier": 20.0, "scope": "window"}],
})

# The 4th place's front end (stft → resize_time → mel → windows → db per window; here with a file-scope dB
# before the windows and a non-integer resize ratio) and an upsampling resize.
RESIZE_SPEC = spec_of({
    "spec_r": [{"op": "stft", "n_fft": 2048, "hop_length": 512},
               {"op": "resize_time", "frames_per_row": 256},
               {"op": "mel", "n_mels": 64, "fmin": 20.0, "fmax": 16000.0},
               {"op": "db", "top_db": 80.0},
               {"op": "windows", "length_frames": 512, "step_frames": 512},
               {"op": "channels", "repeat": 1}],
    "spec_u": [{"op": "stft", "n_fft": 1024, "hop_length": 1000},
               {"op": "resize_time", "frames_per_row": 321},
               {"op": "normalize", "method": "zscore"},
               {"op": "windows", "length_frames": 642, "step_frames": 321, "lead_frames": "centre"}],
})

PARTIAL_SPEC = spec_of({
    "spec_p": [{"op": "pad", "right_seconds": 5.0, "value": 0.25},
               {"op": "windows", "length_seconds": 10.0, "step_seconds": 10.0},
               {"op": "normalize_wave", "method": "zscore"},
               {"op": "stft", "n_fft": 256, "hop_length": 128},
               {"op": "db", "top_db": 40.0, "ref": 1e-3, "scope": "file"}],
}, partial="pad_right")


def streamed(manifest, y: np.ndarray, block_seconds: float):
    """The streamed features of every block, concatenated over the window axis; and the pass count."""
    stream = WholeFileStream(manifest, block_seconds=block_seconds)
    front = FileFront(manifest, stream.chains, len(y), stream.block_rows)
    for depth in range(1, stream.passes + 1):
        front.collect(depth, stream.source(ArraySamples(y)))
    parts = {name: [] for name in manifest.features}
    samples = stream.source(ArraySamples(y))  # one reader for all blocks, as WholeFileStream.blocks reads
    for b in range(front.n_blocks):
        signals, spans = front.features(b, list(manifest.features), samples)
        samples.release()
        for name, signal in signals.items():
            assert signal.data.shape[0] == spans[name][1] - spans[name][0]
            parts[name].append(np.asarray(signal.data))
    return {k: np.concatenate(v) for k, v in parts.items()}, stream.passes, front.n_blocks


def assert_streamed_equals_whole(manifest, y, block_seconds, min_blocks=2):
    whole = FrontEndGraph(manifest)(y)
    got, passes, blocks = streamed(manifest, y, block_seconds)
    assert blocks >= min_blocks
    for name, signal in whole.items():
        want = np.asarray(signal.data)
        assert got[name].shape == want.shape, name
        scale = max(float(np.abs(want).max()), 1e-12)
        assert np.abs(got[name] - want).max() <= 1e-5 * scale, name
    return passes


@pytest.mark.parametrize("name", SHIPPED)
@pytest.mark.parametrize("seconds,block", [(63.3, 20.0), (130.0, 30.0), (47.9, 15.0), (40.0, 10.0)])
def test_shipped_front_ends_streamed_equal_whole_file(name, seconds, block):
    manifest = parse_spec(json.loads((WEIGHTS / f"{name}.spec.json").read_text()))
    y = synth_signal(seconds, seed=int(seconds))
    passes = assert_streamed_equals_whole(manifest, y, block)
    assert passes == {"birdclef2024_1st": 1, "birdclef2025_1st": 2, "birdclef2025_2nd": 0}[name]


BANDPASS = {"op": "bandpass", "fmin": 1000.0, "fmax": 8000.0}
FILTERED_SPEC = spec_of({
    "wave_f": [BANDPASS, {"op": "pad", "left_seconds": 2.5, "right_seconds": 2.5}, {"op": "normalize_wave", "method": "peak"},
               {"op": "windows", "length_seconds": 10.0, "step_seconds": 5.0, "lead_seconds": "centre"}],
    "spec_f": [BANDPASS, {"op": "pad", "right_seconds": 3.0},
               {"op": "windows", "length_seconds": 5.0, "step_seconds": 5.0},
               {"op": "stft", "n_fft": 1024, "hop_length": 320},
               {"op": "db", "top_db": 80.0, "scope": "file"}],
})


@pytest.mark.parametrize("seconds,block", [(61.7, 15.0), (95.0, 20.0)])
def test_a_leading_bandpass_streams_with_the_whole_file_result(seconds, block):
    """An active ``bandpass`` that every feature starts with runs over the samples in order, its state carried
    from piece to piece: the streamed features equal the whole-file run (the filter restarted per block would
    not: checked below), and the filter moves the features (the comparison is not vacuous)."""
    manifest = parse_spec(FILTERED_SPEC)
    assert streaming.plan_reason(manifest) is None and WholeFileStream(manifest).prefilter is not None
    y = synth_signal(seconds, seed=7)
    assert assert_streamed_equals_whole(manifest, y, block) == 1  # peak and file dB: one statistics pass
    unfiltered = FrontEndGraph(parse_spec(spec_of({k: v["steps"][1:] for k, v in FILTERED_SPEC["features"].items()})))(y)
    assert np.abs(np.asarray(unfiltered["wave_f"].data) - np.asarray(FrontEndGraph(manifest)(y)["wave_f"].data)).max() > 0.05
    restart = WholeFileStream(manifest, block_seconds=block)  # a filter that restarts at every read: not equal
    restart.source = _Restarting
    with pytest.raises(AssertionError):
        _assert_equal_with(restart, manifest, y)


class _Restarting:
    """Samples each filtered on their own from a zero state (what streaming without the carried state would do)."""

    def __init__(self, inner):
        self.inner = inner

    def get(self, a, b):
        from birdinfer.ops.filters import PieceFilter

        return PieceFilter(BandpassParams(fmin=1000.0, fmax=8000.0), SR)(self.inner.get(a, b))

    def release(self):
        self.inner.release()


def _assert_equal_with(stream, manifest, y):
    whole = FrontEndGraph(manifest)(y)
    front = FileFront(manifest, stream.chains, len(y), stream.block_rows)
    for depth in range(1, stream.passes + 1):
        front.collect(depth, stream.source(ArraySamples(y)))
    samples = stream.source(ArraySamples(y))
    for b in range(front.n_blocks):
        signals, spans = front.features(b, list(manifest.features), samples)
        samples.release()
        for name, signal in signals.items():
            want = np.asarray(whole[name].data)[spans[name][0] : spans[name][1]]
            assert np.abs(np.asarray(signal.data) - want).max() <= 1e-5 * max(float(np.abs(want).max()), 1e-12), name


def test_an_active_bandpass_elsewhere_keeps_the_whole_file_way():
    spec = spec_of({"wave_f": FILTERED_SPEC["features"]["wave_f"]["steps"],
                    "wave_g": [{"op": "gain", "factor": 2.0}, BANDPASS,
                               {"op": "windows", "length_seconds": 5.0, "step_seconds": 5.0}]})
    assert "bandpass" in streaming.plan_reason(parse_spec(spec))
    full = spec_of({"wave_f": [{**BANDPASS, "fmin": 0.0, "fmax": 15000.0}] + FILTERED_SPEC["features"]["wave_f"]["steps"][1:]})
    assert streaming.plan_reason(parse_spec(full)) is None and WholeFileStream(parse_spec(full)).prefilter is None


@pytest.mark.parametrize("seconds,block", [(61.7, 15.0), (95.0, 20.0), (33.1, 10.0)])
def test_every_file_scope_op_streamed_equals_whole_file(seconds, block):
    manifest = parse_spec(OPS_SPEC)
    y = synth_signal(seconds, seed=3) * np.linspace(0.2, 1.5, int(round(seconds * SR)), dtype=np.float32)
    assert assert_streamed_equals_whole(manifest, y, block) == 4  # spec_b: normalize_wave, db, normalize, normalize


@pytest.mark.parametrize("seconds", [52.3, 50.0, 47.1])
def test_partial_last_row_and_constant_padding_streamed(seconds):
    manifest = parse_spec(PARTIAL_SPEC)
    y = synth_signal(seconds, seed=4)
    assert assert_streamed_equals_whole(manifest, y, 10.0) == 1


@pytest.mark.parametrize("seconds,block", [(61.7, 15.0), (97.0, 20.0)])
def test_resize_time_streamed_equals_whole_file(seconds, block):
    manifest = parse_spec(RESIZE_SPEC)
    assert assert_streamed_equals_whole(manifest, synth_signal(seconds, seed=8), block) == 1  # one file-scope op each


def test_resize_columns_equal_the_whole_plan():
    for src, dst in [(3751, 3072), (1973, 6293), (10, 3)]:
        want = resize_plan(src, dst)
        for a, b in [(0, dst), (1, dst // 2), (dst // 3, dst)]:
            for w, g in zip(want, resize_columns(src, dst, a, b)):
                np.testing.assert_array_equal(g, w[a:b])


def test_the_statistics_matter():
    """The streamed front end is not equal by accident: per-block statistics would differ."""
    manifest = parse_spec(OPS_SPEC)
    y = synth_signal(61.7, seed=3) * np.linspace(0.2, 1.5, int(round(61.7 * SR)), dtype=np.float32)
    whole = np.asarray(FrontEndGraph(manifest)(y)["spec_b"].data)
    block = np.asarray(FrontEndGraph(manifest)(y[: 15 * SR])["spec_b"].data)
    assert np.abs(whole[:2] - block[:2]).max() > 1e-2 * np.abs(whole).max()


def _timeline_entry():
    spec = spec_of({"spec_c": OPS_SPEC["features"]["spec_c"]["steps"]}, models=[_model(
        "spec_c", [-1, -1, -1], kind="frame_logits",
        steps=[{"step": "sigmoid"}, {"step": "timeline_rows", "overlap": "mean", "reduce": "max",
                                     "shifts": [{"frames": 0, "weight": 0.5}, {"frames": -3, "weight": 0.25},
                                                {"frames": 3, "weight": 0.25}]}])])
    return parse_spec(spec)


@pytest.mark.parametrize("seconds,block", [(97.3, 20.0), (61.0, 15.0), (130.0, 60.0)])
def test_rows_streamed_equal_whole_file_rows(seconds, block):
    """timeline_rows over overlapping windows with shifts, and clip_rows: rows emitted block by block,
    concatenated, equal the rows of the whole file's windows."""
    manifest = _timeline_entry()
    entry = manifest.models[0]
    y = synth_signal(seconds, seed=7)
    whole = FrontEndGraph(manifest)(y)["spec_c"]

    def fake_model(x):  # (W, F, L) → frame logits (W, 3, 20): a deterministic function of each window
        w, f, length = x.shape
        pooled = x[:, : 3 * (f // 3)].reshape(w, 3, f // 3, 20, length // 20).mean(axis=(2, 4))
        return {"out": (pooled + 20.0) / 4.0}

    n_rows = manifest.n_rows(len(y))
    want = Outputs(fake_model(np.asarray(whole.data)), whole.windows, n_rows)
    for step in entry.block_steps:
        want = step(want)
    stream = WholeFileStream(manifest, block_seconds=block)
    front = FileFront(manifest, stream.chains, len(y), stream.block_rows)
    for depth in range(1, stream.passes + 1):
        front.collect(depth, ArraySamples(y))
    rows, parts = RowStream(front.n_rows), []
    for b in range(front.n_blocks):
        signals, spans = front.features(b, ["spec_c"], ArraySamples(y))
        sig = signals["spec_c"]
        parts.append(rows.rows(entry, fake_model(np.asarray(sig.data)), sig.windows, *spans["spec_c"], b == front.n_blocks - 1))
    got = np.concatenate(parts)
    assert got.shape == want.rows.shape == (n_rows, 3)
    np.testing.assert_allclose(got, want.rows, rtol=1e-5, atol=1e-6)
    assert len(parts[0]) < stream.block_rows  # the first block's last rows waited for the next block's windows


def test_block_length_and_memory_estimate(monkeypatch):
    for name in SHIPPED:
        manifest = parse_spec(json.loads((WEIGHTS / f"{name}.spec.json").read_text()))
        seconds = choose_block_seconds(manifest)
        assert seconds == 60.0  # a BirdCLEF soundscape: the models see the batch of a 60 s file
        one, two = block_bytes(manifest, 60.0), block_bytes(manifest, 120.0)
        assert 1.8 < two / one < 2.2  # linear in the block length; no file length anywhere
        assert block_bytes(manifest, seconds) <= BLOCK_BUDGET_BYTES
    manifest = parse_spec(OPS_SPEC)
    monkeypatch.setattr(streaming, "BLOCK_BUDGET_BYTES", block_bytes(manifest, 30.0))
    assert choose_block_seconds(manifest) == 30.0  # shorter blocks when the front end is large


def test_a_spec_that_cannot_be_streamed_keeps_the_whole_file_way(caplog, monkeypatch):
    """An op without a streamed form (every op has one today: pretend 'log' had none) keeps the old way."""
    manifest = parse_spec(OPS_SPEC)
    monkeypatch.setattr(streaming, "UNWINDOWED_OPS", streaming.UNWINDOWED_OPS - {"log"})
    with caplog.at_level(logging.INFO, logger="birdinfer.runtime.streaming"):
        assert WholeFileStream.for_manifest(manifest) is None
    assert "features.spec_c: op 'log' before 'windows'" in caplog.text and "processed whole" in caplog.text
    monkeypatch.undo()
    assert WholeFileStream.for_manifest(parse_spec({**OPS_SPEC, "block_seconds": 60.0})) is None  # blocks by the spec
    with caplog.at_level(logging.INFO, logger="birdinfer.runtime.streaming"):
        assert WholeFileStream.for_manifest(parse_spec(OPS_SPEC)) is not None
    assert "streamed exactly" in caplog.text


def test_samples_reader_holds_about_one_block(tmp_path):
    """The output pass over a file of 12 blocks never holds more than a block and its context."""
    manifest = parse_spec(json.loads((WEIGHTS / "birdclef2025_1st.spec.json").read_text()))
    path = write_ogg(tmp_path / "long.ogg", 240.0, seed=2)
    stream = WholeFileStream(manifest, block_seconds=20.0)
    y = load_audio(path, sample_rate=SR)
    front = FileFront(manifest, stream.chains, len(y), stream.block_rows)
    for depth in range(1, stream.passes + 1):
        front.collect(depth, Samples(path, SR, 5.0))
    samples, held, parts = Samples(path, SR, 5.0), [], []
    for b in range(front.n_blocks):
        parts.append(np.asarray(front.features(b, ["mel"], samples)[0]["mel"].data))
        held.append(sum(p.size for _, p in samples._held))
    assert max(held) <= (20 + 5 + 2 * 10) * SR  # block + a read piece + window context (20 s windows, centred)
    want = np.asarray(FrontEndGraph(manifest)(y)["mel"].data)
    np.testing.assert_allclose(np.concatenate(parts), want, rtol=0, atol=1e-5 * np.abs(want).max())


def _onnx_models(folder: Path) -> None:
    """Two small ONNX graphs written with onnx.helper: a frame model on a spectrum batch (W, 513, 1000) →
    (W, 3, 20) and a clip model on a waveform batch (W, 320000) → (W, 3)."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)

    def save(name, nodes, x_shape, y_shape, weights):
        graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                                  [helper.make_tensor_value_info("out", TensorProto.FLOAT, y_shape)],
                                  [numpy_helper.from_array(v, k) for k, v in weights.items()])
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(folder / f"{name}.onnx"))

    save("m_spec_c", [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 1]),
                      helper.make_node("MatMul", ["t", "w"], ["c"]),
                      helper.make_node("Add", ["c", "bias"], ["cb"]),
                      helper.make_node("Transpose", ["cb"], ["ct"], perm=[0, 2, 1]),
                      helper.make_node("MaxPool", ["ct"], ["out"], kernel_shape=[50], strides=[50])],
         ["W", 513, 1000], ["W", 3, 20],
         {"w": (rng.standard_normal((513, 3)) * 0.3).astype(np.float32), "bias": np.full(3, -3.0, np.float32)})
    save("m_wave_a", [helper.make_node("Reshape", ["x", "shape"], ["r"]),
                      helper.make_node("Abs", ["r"], ["a"]),
                      helper.make_node("ReduceMean", ["a"], ["m"], axes=[2], keepdims=0),
                      helper.make_node("MatMul", ["m", "w"], ["out"])],
         ["W", 320000], ["W", 3],
         {"shape": np.array([0, 1000, 320], np.int64), "w": (rng.standard_normal((1000, 3)) * 0.2).astype(np.float32)})


def test_predictor_streams_a_whole_file_spec_with_the_whole_file_result(tmp_path):
    """Predictor (predict_file and iter_files) on a 97.3 s and a 12.3 s OGG: streamed in 20 s blocks (the long
    file in 5 blocks after 2 statistics passes; the short one whole) equals the whole-file run."""
    from birdinfer.tools.importer import import_folder
    from birdinfer.runtime.pipeline import Predictor

    spec = spec_of({"wave_a": OPS_SPEC["features"]["wave_a"]["steps"], "spec_c": OPS_SPEC["features"]["spec_c"]["steps"]})
    spec["models"][1].update(outputs=[{"name": "out", "kind": "frame_logits"}], steps=[
        {"step": "sigmoid"}, {"step": "timeline_rows", "shifts": [{"frames": 0, "weight": 0.5}, {"frames": -2, "weight": 0.25},
                                                                  {"frames": 2, "weight": 0.25}]}])
    spec["models"][0].update(input_shape=[-1, 320000], steps=[{"step": "sigmoid"}, {"step": "clip_rows"}])
    spec["models"][1]["input_shape"] = [-1, 513, 1000]
    spec["ensemble"]["steps"].append({"step": "smooth", "kernel": [0.2, 0.6, 0.2]})
    src = tmp_path / "src"
    src.mkdir()
    _onnx_models(src)
    (src / "spec.json").write_text(json.dumps(spec))
    import_folder(src / "spec.json", tmp_path / "models")
    paths = [write_ogg(tmp_path / "long.ogg", 97.3, seed=5), write_ogg(tmp_path / "short.ogg", 12.3, seed=6)]
    predictor = Predictor(tmp_path / "models", precision="f32")
    assert predictor._stream is not None and predictor._stream.passes == 2
    assert len(list(WholeFileStream(predictor.manifest, block_seconds=20.0).blocks(paths[0], ["m_spec_c"], None))) == 5
    predictor._stream = None
    whole = [predictor.predict_file(p) for p in paths]
    predictor._stream = WholeFileStream(predictor.manifest, block_seconds=20.0)
    streamed_rows = [predictor.predict_file(p) for p in paths]
    iterated = [r.probs for r in predictor.iter_files(paths)]
    assert [w.shape for w in whole] == [(19, 3), (2, 3)]
    assert np.ptp(whole[0], axis=0).min() > 1e-3  # rows differ: the comparison is not vacuous
    for w, s, i in zip(whole, streamed_rows, iterated):
        np.testing.assert_allclose(s, w, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(i, w, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("header_error", [0, -7000, 9000])
def test_blocks_of_a_file_equal_whole_file_even_when_its_header_is_wrong(tmp_path, monkeypatch, header_error):
    """WholeFileStream.blocks on an OGG: the first statistics pass takes the length from the header and runs
    again when the decoder finds another; the blocks' features equal the whole file's."""
    manifest = parse_spec(json.loads((WEIGHTS / "birdclef2025_1st.spec.json").read_text()))
    path = write_ogg(tmp_path / "a.ogg", 71.3, seed=9)
    y = load_audio(path, sample_rate=SR)
    declared = streaming.declared_samples
    monkeypatch.setattr(streaming, "declared_samples", lambda p, sr, *speed: declared(p, sr, *speed) + header_error)
    calls = []
    monkeypatch.setattr(FileFront, "collect", lambda self, depth, samples, f=FileFront.collect: calls.append(depth) or f(self, depth, samples))
    stream = WholeFileStream(manifest, block_seconds=20.0)
    blocks = list(stream.blocks(path, [manifest.models[0].name], whole=None))
    got = np.concatenate([np.asarray(compute()["mel"].data) for _, compute in blocks])
    assert [n for n, _ in blocks] == [4, 4, 4, 2]
    assert calls == ([1, 1, 2] if header_error else [1, 2])
    want = np.asarray(FrontEndGraph(manifest)(y)["mel"].data)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("name,model", [("birdclef2024_1st", "regnety_10sec_gr60sec_fold0"),
                                        ("birdclef2025_1st", "tf_efficientnet_b3_sl"), ("birdclef2025_2nd", None)])
def test_shipped_specs_with_random_weights_streamed_equal_whole_file(name, model, tmp_path):
    """Each shipped spec, one small random-weight network (birdinfer_export.solutions), imported: predict on a
    151.7 s OGG streamed in its automatic 60 s blocks equals the whole-file run, and on a 7.3 s OGG (one block)."""
    pytest.importorskip("torch")
    pytest.importorskip("timm")
    from birdinfer.tools.importer import import_folder
    from birdinfer.runtime.pipeline import Predictor
    from birdinfer_export.solutions import build_solution

    build = {"arch": "tinynet_e", "n_classes": 12}
    build.update({"models": [model]} if model else {"folds": 1})
    spec_path, _ = build_solution(WEIGHTS / f"{name}.spec.json", tmp_path / "build", **build)
    import_folder(spec_path, tmp_path / "models")
    paths = [write_ogg(tmp_path / "long.ogg", 151.7, seed=11), write_ogg(tmp_path / "short.ogg", 7.3, seed=12)]
    predictor = Predictor(tmp_path / "models", precision="f32")
    assert predictor._stream is not None and predictor._stream.block_seconds == 60.0
    streamed_rows = [r.probs for r in predictor.iter_files(paths)]
    predictor._stream = None
    whole = [r.probs for r in predictor.iter_files(paths)]
    assert whole[0].shape[0] in (30, 31) and np.ptp(whole[0], axis=0).max() > 1e-4
    for s, w in zip(streamed_rows, whole):
        np.testing.assert_allclose(s, w, rtol=1e-5, atol=1e-6)
