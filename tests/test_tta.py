"""Shifted-window TTA (a model's ``tta`` field): the 2026 5th place's second pass 2.5 s later and the 2026 2nd
place's circular rolls by ±1.25 s, against transcriptions written here from the facts of their public inference
code (jak-ma/BirdCLEF2026-5th-solution, ``notebooks/5th-solution_ensemble_inference_script.ipynb``:
``load_and_prepare_audio`` and ``fuse_tta``; FlorentinGe/Birdclef2026-2ndplace, ``notebooks/2nd place ensemble
inference script.py``: ``_roll_chunks`` and the 1:2:2 mean), run through ONNX Runtime and numpy.

Facts used (docs/solutions/2026_5th.md): the 5th place cuts 12 windows [5k, 5k + 5) s and 11 shifted ones
[5k + 2.5, 5k + 7.5) s from the file (zero-padded to 60 s), applies a sigmoid to each pass, and gives row k
``0.5·n[k] + 0.25·s[k−1] + 0.25·s[k]``, rows 0 and 11 ``0.75·n + 0.25·s`` of their one shifted neighbour. The
2nd place pads the waveform with zeros to whole 5 s chunks, rolls it circularly by +1.25 s and −1.25 s
(``torch.roll``), re-chunks it and averages the probabilities ``(p + 2·p₊ + 2·p₋) / 5``.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from birdinfer.errors import ModelFolderError
from birdinfer.ops.tta import combine_passes
from birdinfer.spec.parse import parse_spec

from conftest import write_ogg

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

SR = 32000
ROW = 5 * SR
LABELS = ["a", "b", "c", "d", "e"]
#: BirdCLEF-2026-style names: a 3 s file (one zero-filled row), 12.3 s, a full minute, and 130 s (streamed in
#: 60 s blocks by the whole-file executor, or three blocks of its own with block_seconds 60).
FILES = [("BC2026_Test_0001_S05_20250227_010002.ogg", 3.0, 1), ("BC2026_Test_0002_S07_20250301_140000.ogg", 12.3, 2),
         ("BC2026_Test_0003_S09_20250301_050000.ogg", 60.0, 3), ("BC2026_Test_0004_S13_20250302_233000.ogg", 130.0, 4)]


class Clip(torch.nn.Module):
    """A small waveform classifier: strided conv, max over time, linear → clip logits (W, 5)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv1d(1, 8, 400, stride=160)
        self.head = torch.nn.Linear(8, len(LABELS))

    def forward(self, x):
        h = torch.relu(self.conv(x[:, None, :] * 10.0)).amax(dim=2)
        return self.head(h) * 3.0


def fifth_fuse(norm: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """The 5th place's fusion, for a file of any number of rows R ≥ 2 (R − 1 shifted rows)."""
    out = np.empty_like(norm)
    out[0] = 0.75 * norm[0] + 0.25 * shift[0]
    out[-1] = 0.75 * norm[-1] + 0.25 * shift[-1]
    out[1:-1] = 0.5 * norm[1:-1] + 0.25 * shift[:-1] + 0.25 * shift[1:]
    return out


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


# ------------------------------------------------------------------------------------------- unit level
@pytest.mark.parametrize("n_rows", [2, 3, 12, 13])
def test_shift_combination_is_the_fifth_places_fusion(n_rows):
    rng = np.random.default_rng(n_rows)
    norm, shifted = rng.random((n_rows, 7)), rng.random((n_rows, 7))  # shifted row R−1 reaches past the file
    got = combine_passes("shift", [(0.0, 0.5), (2.5, 0.5)], [norm, shifted], 5.0)
    np.testing.assert_allclose(got, fifth_fuse(norm, shifted[:-1]), rtol=0, atol=1e-6)


def test_shift_combination_edges_and_blocks():
    rng = np.random.default_rng(0)
    norm, shifted = rng.random((1, 3)), rng.random((1, 3))
    np.testing.assert_allclose(combine_passes("shift", [(0.0, 1.0), (2.5, 1.0)], [norm, shifted], 5.0), norm, atol=1e-7)
    # an earlier pass (−2.5 s): row k reads shifted rows k and k + 1; row 0 has no shifted row before it
    norm, shifted = rng.random((4, 3)), rng.random((4, 3))
    got = combine_passes("shift", [(0.0, 0.5), (-2.5, 0.5)], [norm, shifted], 5.0)
    np.testing.assert_allclose(got, fifth_fuse(norm, shifted[1:]), atol=1e-6)
    # a shift of 1 s: 0.8 of the shifted row stays on its row, 0.2 goes to the next
    got = combine_passes("shift", [(0.0, 1.0), (1.0, 1.0)], [norm, shifted], 5.0)
    expect = norm.copy() * 1.0
    expect[0] = (norm[0] + 0.8 * shifted[0] + 0.2 * norm[0]) / 2
    for k in (1, 2):
        expect[k] = (norm[k] + 0.8 * shifted[k] + 0.2 * shifted[k - 1]) / 2
    expect[3] = (norm[3] + 0.2 * shifted[2] + 0.8 * norm[3]) / 2
    np.testing.assert_allclose(got, expect, atol=1e-6)
    # blocks processed as files of their own: no shifted row reaches across a block boundary
    norm, shifted = rng.random((5, 2)), rng.random((5, 2))
    got = combine_passes("shift", [(0.0, 0.5), (2.5, 0.5)], [norm, shifted], 5.0, segments=[3, 2])
    np.testing.assert_allclose(got[:3], fifth_fuse(norm[:3], shifted[:2]), atol=1e-6)
    np.testing.assert_allclose(got[3:], fifth_fuse(norm[3:], shifted[3:4]), atol=1e-6)


# ------------------------------------------------------------------------------------------ end to end
def _spec(tta: dict, *, partial: str = "drop", block_seconds=None) -> dict:
    return {"format": "birdinfer-model-folder", "format_version": 2, "sample_rate": SR, "labels": LABELS,
            "rows": {"seconds": 5.0, "partial": partial}, "block_seconds": block_seconds,
            "features": {"wave": {"steps": [{"op": "windows", "length_seconds": 5.0, "step_seconds": 5.0}]}},
            "models": [{"name": "cnn", "input": "wave", "input_shape": [-1, ROW],
                        "outputs": [{"name": "logits", "kind": "clip_logits"}], "tta": tta,
                        "steps": [{"step": "sigmoid"}, {"step": "clip_rows"}], "variants": {"f32": {"onnx": "cnn.onnx"}}}],
            "ensemble": {"steps": [{"step": "weighted_mean"}]}}


FIFTH = {"mode": "shift", "passes": [{"seconds": 0.0, "weight": 0.5}, {"seconds": 2.5, "weight": 0.5}]}
SECOND = {"mode": "roll", "passes": [{"seconds": 0.0, "weight": 1.0}, {"seconds": 1.25, "weight": 2.0},
                                     {"seconds": -1.25, "weight": 2.0}]}


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("tta_src")
    torch.manual_seed(3)
    torch.onnx.export(Clip().eval(), torch.zeros(2, ROW), str(src / "cnn.onnx"), input_names=["x"], output_names=["logits"],
                      dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}}, opset_version=17, dynamo=False)
    return src


def _folder(source: Path, spec: dict, out: Path) -> Path:
    from birdinfer.tools.importer import import_folder

    (source / f"{out.name}.json").write_text(json.dumps(spec))
    import_folder(source / f"{out.name}.json", out, measure=False)
    return out


@pytest.fixture(scope="module")
def soundscapes(tmp_path_factory) -> list[Path]:
    audio = tmp_path_factory.mktemp("tta_audio")
    return [write_ogg(audio / name, seconds, seed=seed) for name, seconds, seed in FILES]


def _run(session, windows: np.ndarray) -> np.ndarray:
    return sigmoid(session.run(None, {"x": np.ascontiguousarray(windows, np.float32)})[0])


def fifth_reference(session, path: Path, block_rows: int | None = None) -> np.ndarray:
    """Rows of one file: 5 s windows (a trailing part dropped; a file shorter than 5 s zero-filled to one row),
    the windows 2.5 s later that lie inside the rows, each pass through the model and a sigmoid, then the 5th
    place's fusion (per block of ``block_rows`` rows when the spec has blocks)."""
    y, _ = sf.read(path, dtype="float32")
    n = max(1, len(y) // ROW)
    y = np.concatenate([y, np.zeros(ROW, np.float32)])[: n * ROW]
    out = []
    for start in range(0, n, block_rows or n):
        part = y[start * ROW : (start + (block_rows or n)) * ROW]
        r = len(part) // ROW
        norm = _run(session, part.reshape(r, ROW))
        if r == 1:
            out.append(norm)
            continue
        half = ROW // 2
        shifted = _run(session, np.stack([part[half + k * ROW : half + (k + 1) * ROW] for k in range(r - 1)]))
        out.append(fifth_fuse(norm, shifted))
    return np.concatenate(out)


def second_reference(session, path: Path) -> np.ndarray:
    """Rows of one file: zero-padded to whole 5 s chunks, rolled circularly by ±1.25 s, (p + 2p₊ + 2p₋) / 5."""
    y, _ = sf.read(path, dtype="float32")
    n = -(-len(y) // ROW)
    y = np.concatenate([y, np.zeros(n * ROW - len(y), np.float32)])
    shift = int(1.25 * SR)
    p = _run(session, y.reshape(n, ROW))
    fwd = _run(session, np.roll(y, shift).reshape(n, ROW))
    bwd = _run(session, np.roll(y, -shift).reshape(n, ROW))
    return (p + 2.0 * fwd + 2.0 * bwd) / 5.0


def _predict(folder: Path, paths: list[Path]) -> list[np.ndarray]:
    from birdinfer.runtime.pipeline import Predictor

    predictor = Predictor(folder, precision="f32", backend="openvino")
    try:
        return [r.probs for r in predictor.iter_files(paths)]
    finally:
        predictor.close()


def test_fifth_place_shift_pass_end_to_end(source, soundscapes, tmp_path, caplog):
    """Whole-file spec: the 130 s file is streamed in 60 s blocks (bounded memory); the shifted window that
    straddles two internal blocks is the whole file's, so the rows equal the transcription's on the whole file."""
    folder = _folder(source, _spec(FIFTH), tmp_path / "fifth")
    session = ort.InferenceSession(str(source / "cnn.onnx"), providers=["CPUExecutionProvider"])
    with caplog.at_level(logging.INFO, logger="birdinfer"):
        got = _predict(folder, soundscapes)
    assert "streamed exactly" in caplog.text
    for path, rows in zip(soundscapes, got):
        expect = fifth_reference(session, path)
        assert rows.shape == expect.shape
        np.testing.assert_allclose(rows, expect, rtol=0, atol=1e-4, err_msg=path.name)
    plain = _folder(source, {**_spec(FIFTH), "models": [{k: v for k, v in _spec(FIFTH)["models"][0].items() if k != "tta"}]},
                    tmp_path / "plain")
    without = _predict(plain, soundscapes[2:3])[0]
    assert np.abs(without - got[2]).max() > 1e-3  # the second pass changes the rows


def test_fifth_place_shift_pass_in_blocks_of_60_s(source, soundscapes, tmp_path):
    folder = _folder(source, _spec(FIFTH, block_seconds=60), tmp_path / "fifth60")
    session = ort.InferenceSession(str(source / "cnn.onnx"), providers=["CPUExecutionProvider"])
    got = _predict(folder, soundscapes[3:])[0]
    np.testing.assert_allclose(got, fifth_reference(session, soundscapes[3], block_rows=12), rtol=0, atol=1e-4)


def test_second_place_roll_passes_end_to_end(source, soundscapes, tmp_path, caplog):
    folder = _folder(source, _spec(SECOND, partial="pad_right"), tmp_path / "second")
    session = ort.InferenceSession(str(source / "cnn.onnx"), providers=["CPUExecutionProvider"])
    with caplog.at_level(logging.INFO, logger="birdinfer"):
        got = _predict(folder, soundscapes)
    assert "op 'roll' before 'windows' has no streamed form" in caplog.text  # a circular roll holds the whole file
    for path, rows in zip(soundscapes, got):
        np.testing.assert_allclose(rows, second_reference(session, path), rtol=0, atol=1e-4, err_msg=path.name)


# ------------------------------------------------------------------------------------- checked at load
def _set_tta(value, **model):
    spec = _spec(FIFTH)
    spec["models"][0]["tta"] = value
    spec["models"][0].update(model)
    return spec


@pytest.mark.parametrize("spec, message", [
    (_set_tta({"mode": "slide", "passes": FIFTH["passes"]}), r"models\['cnn'\].tta.mode='slide': must be one of shift, roll"),
    (_set_tta({"passes": [{"seconds": 2.5, "weight": 1.0}, {"seconds": 5.0, "weight": 1.0}]}),
     r"one pass must be the unshifted one \(seconds 0\), got \[2.5, 5.0\]"),
    (_set_tta({"passes": [{"seconds": 0.0, "weight": 1.0}]}), r"tta.passes must list at least two passes"),
    (_set_tta({"passes": [{"seconds": 0.0, "weight": 1.0}, {"seconds": 1e-6, "weight": 1.0}]}),
     r"passes\[1\].seconds=1e-06 is not a whole number of samples at 32000 Hz"),
    (_set_tta({"passes": [{"seconds": 0.0, "weight": 1.0}, {"seconds": 2.5, "weight": -1.0}]}), r"passes\[1\].weight=-1"),
    (_set_tta({"passes": [{"seconds": 0.0, "weight": 0.0}, {"seconds": 2.5, "weight": 0.0}]}), r"the weights sum to 0"),
    (_set_tta({"passes": [{"seconds": 0.0, "weight": 1.0}, {"seconds": 2.5, "weight": 1.0, "w": 1}]}),
     r"passes\[1\] must be \{\"seconds\": ..., \"weight\": ...\}"),
    (_set_tta({"mode": "roll", "passes": FIFTH["passes"]}, input_shape=[-1, 2 * ROW]) | {"features": {"wave": {"steps": [
        {"op": "pad", "left_seconds": 2.5, "right_seconds": 2.5},
        {"op": "windows", "length_seconds": 10.0, "step_seconds": 5.0, "lead_seconds": "centre"}]}}},
     r"models\['cnn'\].tta: mode 'roll' needs windows that tile the rows .* length 10 s, step 5 s, lead 2.5 s"),
])
def test_tta_is_checked_when_loaded(spec, message):
    with pytest.raises(ModelFolderError, match=message) as e:
        parse_spec(spec, source="tta/manifest.json")
    assert str(e.value).startswith("tta/manifest.json: ")


def test_tta_needs_waveform_windows():
    spec = copy.deepcopy(_set_tta(FIFTH, input_shape=[-1, 64, 500]))
    spec["features"]["wave"]["steps"] = [{"op": "stft", "n_fft": 1024, "hop_length": 320}, {"op": "mel", "n_mels": 64},
                                         {"op": "windows", "length_frames": 500, "step_frames": 500}]
    with pytest.raises(ModelFolderError, match=r"shifted passes need waveform windows, but feature 'wave' has spectrum"):
        parse_spec(spec, source="tta/manifest.json")


def test_parsed_tta_passes_and_their_features():
    m = parse_spec(_spec(SECOND, partial="pad_right"))
    tta = m.models[0].tta
    assert tta.mode == "roll" and [(p.seconds, p.weight) for p in tta.passes] == [(0.0, 1.0), (1.25, 2.0), (-1.25, 2.0)]
    rolled = m.features[tta.passes[1].feature]
    assert [s.name for s in rolled] == ["roll", "windows"] and rolled[0].params.seconds == -1.25
    shifted = parse_spec(_spec(FIFTH)).features["wave@shift+2.5"]
    assert shifted[-1].params.lead_seconds == -2.5
    assert "wave@shift+2.5" not in parse_spec(_spec(FIFTH)).to_dict()["features"]  # derived when loaded, not written


def test_tta_on_a_model_on_another_models_output_is_refused():
    spec = _spec(FIFTH)
    spec["models"][0]["outputs"][0]["shape"] = [-1, len(LABELS)]
    spec["models"].append({"name": "probe", "input": {"model": "cnn", "output": "logits"}, "input_shape": [-1, len(LABELS)],
                           "outputs": [{"name": "p", "kind": "clip_logits"}], "tta": FIFTH,
                           "steps": [{"step": "sigmoid"}, {"step": "clip_rows"}], "variants": {"f32": {"onnx": "p.onnx"}}})
    with pytest.raises(ModelFolderError, match=r"models\['probe'\].tta: a model on another model's output has no windows"):
        parse_spec(spec, source="tta/manifest.json")
