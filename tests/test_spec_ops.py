"""Each front-end op of manifest version 2 alone, against a plain numpy / librosa / OpenCV oracle."""

from __future__ import annotations

import numpy as np
import pytest

from birdinfer.ops import spectral as spectral_ops
from birdinfer.runtime.engine import FrontEndGraph
from birdinfer.ops import OPS, Block, Signal, WindowLayout
from birdinfer.ops.frontend import fit_padding
from birdinfer.ops.registry import build_params
from birdinfer.spec.parse import parse_spec

librosa = pytest.importorskip("librosa")

SR = 32000
ROW = 5 * SR


def signal(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    return (0.05 * rng.standard_normal(t.size) + 0.3 * np.sin(2 * np.pi * (800 + 3000 * t / max(seconds, 1)) * t)).astype(np.float32)


def op(name: str, x: Signal, block: Block, **params) -> Signal:
    entry = OPS[name]
    return entry.fn(x, build_params(entry.params, params, where="test"), block)


def block_for(y: np.ndarray, n_rows: int | None = None, partial: str = "drop") -> Block:
    rows = n_rows if n_rows is not None else max(1, len(y) // ROW)
    return Block(len(y), rows, SR, ROW, partial)


@pytest.mark.parametrize("pad_mode", ["constant", "reflect"])
@pytest.mark.parametrize("win_length", [None, 800])
def test_stft_power_equals_librosa(pad_mode, win_length):
    y = signal(2.0)
    x = op("stft", Signal(y), block_for(y), n_fft=1024, hop_length=320, win_length=win_length, pad_mode=pad_mode)
    expected = np.abs(librosa.stft(y, n_fft=1024, hop_length=320, win_length=win_length, center=True, pad_mode=pad_mode)) ** 2
    assert x.data.shape == expected.shape
    np.testing.assert_allclose(x.data, expected, rtol=2e-4, atol=1e-6 * expected.max())


def test_stft_normalized_and_magnitude():
    y = signal(1.0, seed=1)
    window = spectral_ops.analysis_window(build_params(spectral_ops.StftParams, {"n_fft": 512, "hop_length": 128}, where="t"))
    raw = np.abs(librosa.stft(y, n_fft=512, hop_length=128, center=True, pad_mode="reflect"))
    norm = float(np.sqrt(np.sum(window.astype(np.float64) ** 2)))
    power = op("stft", Signal(y), block_for(y), n_fft=512, hop_length=128, pad_mode="reflect", normalized=True)
    np.testing.assert_allclose(power.data, (raw / norm) ** 2, rtol=2e-4, atol=1e-6 * ((raw / norm) ** 2).max())
    magnitude = op("stft", Signal(y), block_for(y), n_fft=512, hop_length=128, power=1.0)
    np.testing.assert_allclose(magnitude.data, np.abs(librosa.stft(y, n_fft=512, hop_length=128, pad_mode="constant")),
                               rtol=2e-4, atol=1e-5)


@pytest.mark.parametrize("scale,norm", [("slaney", "slaney"), ("htk", None), ("htk", "slaney"), ("slaney", None)])
def test_mel_basis_equals_librosa(scale, norm):
    p = build_params(spectral_ops.MelParams, {"n_mels": 64, "fmin": 40.0, "fmax": 15000.0, "scale": scale, "norm": norm}, where="t")
    ours = spectral_ops.mel_basis(SR, 1024, p)
    theirs = librosa.filters.mel(sr=SR, n_fft=1024, n_mels=64, fmin=40.0, fmax=15000.0, htk=scale == "htk", norm=norm)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("ref", [1.0, "max"])
def test_db_whole_and_per_window_equal_power_to_db(ref):
    rng = np.random.default_rng(2)
    spec = rng.gamma(0.5, 1e-3, size=(32, 400)).astype(np.float32)
    spec[:, :50] = 0.0
    ref_fn = 1.0 if ref == 1.0 else np.max
    whole = op("db", Signal(spec, kind="spec"), Block(0, 1, SR, ROW), top_db=80.0, ref=ref)
    np.testing.assert_allclose(whole.data, librosa.power_to_db(spec, ref=ref_fn, top_db=80.0), atol=1e-4)
    windows = Signal(np.stack([spec[:, :200], spec[:, 200:]]), kind="spec", windows=WindowLayout(2, 1.0, 1, 0.0))
    per_window = op("db", windows, Block(0, 2, SR, ROW), top_db=30.0, ref=ref)
    for k, part in enumerate((spec[:, :200], spec[:, 200:])):
        np.testing.assert_allclose(per_window.data[k], librosa.power_to_db(part, ref=ref_fn, top_db=30.0), atol=1e-4)
    file_scope = op("db", windows, Block(0, 2, SR, ROW), top_db=30.0, scope="file")
    np.testing.assert_allclose(np.concatenate(list(file_scope.data), axis=1), librosa.power_to_db(spec, top_db=30.0), atol=1e-4)


def test_log_and_gain():
    x = np.abs(np.random.default_rng(3).standard_normal((4, 5))).astype(np.float32)
    np.testing.assert_allclose(op("log", Signal(x, kind="spec"), Block(0, 1, SR, ROW), eps=1e-3).data, np.log(x + 1e-3), rtol=1e-6)
    np.testing.assert_allclose(op("log", Signal(x), Block(0, 1, SR, ROW), base="10", multiplier=10.0).data,
                               10 * np.log10(x + 1e-6), rtol=1e-5)
    np.testing.assert_array_equal(op("gain", Signal(x), Block(0, 1, SR, ROW), factor=1024.0).data, x * np.float32(1024))


def test_normalize_methods():
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((3, 8, 20)) * 20 - 40).astype(np.float32)
    windows = Signal(x, kind="spec", windows=WindowLayout(3, 1.0, 1, 0.0))
    b = Block(0, 3, SR, ROW)
    got = op("normalize", windows, b, method="zscore_minmax").data
    for k in range(3):
        z = (x[k] - x[k].mean()) / (x[k].std(ddof=1) + 1e-6)
        np.testing.assert_allclose(got[k], (z - z.min()) / (z.max() - z.min() + 1e-6), atol=1e-6)
    whole = op("normalize", Signal(x[0], kind="spec"), b, method="minmax", eps=0.0).data
    np.testing.assert_allclose(whole, (x[0] - x[0].min()) / (x[0].max() - x[0].min()), atol=1e-6)
    np.testing.assert_allclose(op("normalize", windows, b, method="affine", scale=1 / 80, offset=-0.5).data, (x - 40) / 80, atol=1e-6)
    np.testing.assert_allclose(op("normalize", windows, b, method="clamp", scale=1 / 80, offset=1.0).data,
                               np.clip((x + 80) / 80, 0, 1), atol=1e-6)
    np.testing.assert_allclose(op("normalize", windows, b, method="zscore", ddof=0, scope="file").data,
                               (x - x.mean()) / (x.std() + 1e-6), atol=1e-5)


def test_resize_time_equals_cv2():
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(5)
    n = 3 * ROW + 1234
    spec = rng.random((16, 1 + n // 64)).astype(np.float32)
    got = op("resize_time", Signal(spec, kind="spec"), block_for(np.zeros(n)), frames_per_row=256)
    width = n * 256 // ROW
    np.testing.assert_allclose(got.data, cv2.resize(spec, (width, 16), interpolation=cv2.INTER_LINEAR), atol=1e-6)
    assert got.frames_per_row == 256


def test_waveform_windows_are_views_with_centre_lead_and_fill():
    y = signal(20.0)
    padded = op("pad", Signal(y), block_for(y), left_seconds=2.5, right_seconds=2.5)
    assert padded.pad_left == 2.5 * SR and len(padded.data) == len(y) + 5 * SR
    w = op("windows", padded, block_for(y), length_seconds=10.0, step_seconds=5.0, lead_seconds="centre")
    assert w.data.shape == (4, 10 * SR) and np.shares_memory(w.data, padded.data)
    for k in range(4):  # window k covers file time [5k - 2.5, 5k + 7.5)
        lo = int((5 * k - 2.5) * SR)
        expected = np.zeros(10 * SR, np.float32)
        src = y[max(lo, 0) : lo + 10 * SR]
        expected[max(0, -lo) : max(0, -lo) + len(src)] = src
        np.testing.assert_array_equal(w.data[k], expected)
    assert w.windows == WindowLayout(4, 2.0, 1, 0.5)
    short = signal(3.0)  # shorter than a row: one window, zero-filled
    w = op("windows", Signal(short), block_for(short), length_seconds=5.0, step_seconds=5.0)
    np.testing.assert_array_equal(w.data[0, : len(short)], short)
    assert not w.data[0, len(short) :].any()


def test_partial_last_row_left_padded_and_peak_normalised():
    y = signal(7.3)
    b = block_for(y, n_rows=2, partial="pad_left")
    w = op("windows", Signal(y), b, length_seconds=5.0, step_seconds=5.0)
    tail = len(y) - ROW
    np.testing.assert_array_equal(w.data[0], y[:ROW])
    assert not w.data[1, : ROW - tail].any()
    np.testing.assert_array_equal(w.data[1, ROW - tail :], y[ROW:])
    normed = op("normalize_wave", w, b, method="peak")
    for k in range(2):
        np.testing.assert_allclose(normed.data[k], librosa.util.normalize(w.data[k]), rtol=1e-6)
    silent = op("normalize_wave", Signal(np.zeros((2, 10), np.float32)), b, method="peak")
    assert not silent.data.any()


def test_pad_fit_gives_the_frames_of_the_windows():
    for seconds in (60.0, 7.0, 33.3):
        y = np.zeros(int(seconds * SR), np.float32)
        rows = max(1, len(y) // ROW)
        side = fit_padding(len(y), rows, {"hop_length": 1252, "length_frames": 512, "step_frames": 128})
        total = (512 + (rows - 1) * 128 - 1) * 1252
        assert side == max(0, int(np.ceil((total - len(y)) / 2)))
        assert 1 + (len(y) + 2 * side) // 1252 == 512 + (rows - 1) * 128


def test_spectrum_windows_channels_neighbours_crop():
    rng = np.random.default_rng(6)
    spec = rng.random((8, 100)).astype(np.float32)
    b = Block(3 * ROW, 3, SR, ROW)
    w = op("windows", Signal(spec, kind="spec"), b, length_frames=40, step_frames=30, frames_per_row=30, lead_frames="centre")
    assert w.data.shape == (3, 8, 40) and np.shares_memory(w.data, spec)
    np.testing.assert_array_equal(w.data[2, :, :10], spec[:, 60:70])
    np.testing.assert_array_equal(w.data[2, :, 40 - 1], spec[:, 99])
    assert w.windows == WindowLayout(3, 40 / 30, 1, 5 / 30)
    ch = op("channels", w, b, layout=["x", "x", "ramp"])
    assert ch.data.shape == (3, 3, 8, 40)
    np.testing.assert_array_equal(ch.data[:, 1], w.data)
    np.testing.assert_allclose(ch.data[0, 2, :, 0], np.linspace(0, 1, 8))
    chunks = Signal(rng.random((4, 8, 10)).astype(np.float32), kind="spec", windows=WindowLayout(4, 1.0, 1, 0.0))
    cropped = op("crop_time", chunks, b, start=0, length=9)
    np.testing.assert_array_equal(cropped.data, chunks.data[..., :9])
    nb = op("neighbours", chunks, b, before=1, after=1, crop_frames=20, edge="repeat")
    v = chunks.data
    for k in range(4):
        joined = np.concatenate([v[max(k - 1, 0)], v[k], v[min(k + 1, 3)]], axis=-1)
        np.testing.assert_array_equal(nb.data[k], joined[:, 5:25])
    zeros = op("neighbours", chunks, b, before=1, after=1, edge="zeros")
    assert not zeros.data[0, :, :10].any() and not zeros.data[3, :, 20:].any()


@pytest.mark.parametrize("shared_chain", [True, False])
def test_graph_shares_identical_prefixes(monkeypatch, shared_chain):
    calls = []
    if shared_chain:  # stft → mel runs as one chain (birdinfer.dsp.resized_mel_power)
        real = spectral_ops.resized_mel_power
        monkeypatch.setattr(spectral_ops, "resized_mel_power", lambda *a, **k: calls.append(1) or real(*a, **k))
    else:  # the ops on their own
        import birdinfer.runtime.engine

        monkeypatch.setattr(birdinfer.runtime.engine, "CHAINS", ())
        real = spectral_ops.stft
        monkeypatch.setattr(spectral_ops, "stft", lambda *a, **k: calls.append(1) or real(*a, **k))
    steps = [{"op": "stft", "n_fft": 512, "hop_length": 160}, {"op": "mel", "n_mels": 32}]
    tail = [{"op": "windows", "length_frames": 200, "step_frames": 100, "frames_per_row": 100}]
    spec = {"format": "birdinfer-model-folder", "format_version": 2, "labels": ["a"],
            "features": {"a": {"steps": steps + [{"op": "db"}] + tail}, "b": {"steps": steps + [{"op": "log"}] + tail}},
            "models": [{"name": n, "input": n, "input_shape": [-1, 32, 200], "outputs": [{"name": "o", "kind": "probabilities"}],
                        "steps": [{"step": "clip_rows"}], "variants": {"f32": {"onnx": f"{n}.onnx"}}} for n in "ab"],
            "ensemble": {"steps": [{"step": "mean"}]}}
    out = FrontEndGraph(parse_spec(spec))(signal(10.0))
    assert len(calls) == 1
    assert out["a"].data.shape == out["b"].data.shape == (2, 32, 200)


def test_pad_modes_and_wave_normalisations():
    y = signal(1.0, seed=7)
    b = block_for(y)
    for mode in ("reflect", "edge"):
        got = op("pad", Signal(y), b, left_seconds=0.01, right_seconds=0.02, mode=mode)
        np.testing.assert_array_equal(got.data, np.pad(y, (320, 640), mode=mode))
    np.testing.assert_array_equal(op("pad", Signal(y), b, left_seconds=0.01, value=0.5).data[:320], 0.5)
    z = op("normalize_wave", Signal(y), b, method="zscore").data
    np.testing.assert_allclose(z, (y - y.mean()) / (y.std() + 1e-8), atol=1e-5)
    r = op("normalize_wave", Signal(y), b, method="rms").data
    np.testing.assert_allclose(r, y / (np.sqrt(np.mean(y.astype(np.float64) ** 2)) + 1e-8), atol=1e-5)


def test_fused_stft_resize_equals_the_two_ops():
    from birdinfer.ops.spectral import FUSED

    y = signal(12.3, seed=8)
    b = block_for(y)
    stft_params = {"n_fft": 2048, "hop_length": 64}
    two = op("resize_time", op("stft", Signal(y), b, **stft_params), b, frames_per_row=256)
    fused = FUSED[("stft", "resize_time")](Signal(y), build_params(spectral_ops.StftParams, stft_params, where="t"),
                                            build_params(spectral_ops.ResizeParams, {"frames_per_row": 256}, where="t"), b)
    np.testing.assert_array_equal(fused.data, two.data)
    assert (fused.kind, fused.hop, fused.n_fft, fused.frames_per_row) == ("spec", 64, 2048, 256.0)


def _db(a: np.ndarray, floor: float) -> np.ndarray:
    return 10 * np.log10(np.maximum(a.astype(np.float64), floor))


@pytest.mark.parametrize("stft_params,mels", [
    ({"n_fft": 2048, "window": "hann", "center": True, "pad_mode": "constant", "power": 2.0},
     [({"n_mels": 128, "fmin": 40.0, "fmax": 16000.0}, 64, 256), ({"n_mels": 96, "fmin": 50.0}, 128, 250)]),
    ({"n_fft": 1024, "win_length": 800, "window": "hamming", "center": True, "pad_mode": "reflect", "power": 1.0,
      "normalized": True}, [({"n_mels": 64, "scale": "htk", "norm": None, "fmax": 14000.0}, 160, 200)]),
    ({"n_fft": 512, "window": "hann_symmetric", "center": False, "power": 2.0},
     [({"n_mels": 40, "fmin": 300.0, "fmax": 8000.0}, 100, 313), ({"n_mels": 40, "scale": "htk"}, 200, 100)]),
    ({"n_fft": 1024, "center": True, "pad_mode": "reflect", "power": 2.0},  # stft → mel, no resize
     [({"n_mels": 128, "scale": "htk", "norm": None}, 320, None), ({"n_mels": 64, "fmin": 40.0}, 160, 250)]),
])
@pytest.mark.parametrize("seconds", [12.3, 0.4])
def test_shared_stft_resize_mel_equals_the_three_ops(stft_params, mels, seconds):
    """stft → resize_time → mel (and stft → mel) prefixes of one frame-sharing key, run together by the executor,
    give the numbers of the ops run one after the other (whole STFT, cv2 resize, dense mel): within 1e-4 dB."""
    y = signal(seconds, seed=9)
    b = block_for(y)
    chains = []
    for mel_params, hop, frames_per_row in mels:
        chains.append((build_params(spectral_ops.StftParams, {**stft_params, "hop_length": hop}, where="t"),
                       None if frames_per_row is None else
                       build_params(spectral_ops.ResizeParams, {"frames_per_row": frames_per_row}, where="t"),
                       build_params(spectral_ops.MelParams, mel_params, where="t")))
    fused = spectral_ops.stft_resize_mel(Signal(y), chains, b)
    for (sp, rp, mp), got in zip(chains, fused):
        x = spectral_ops.stft_op(Signal(y), sp, b)
        x = x if rp is None else spectral_ops.resize_time(x, rp, b)
        want = spectral_ops.mel(x, mp, b)
        assert got.data.shape == want.data.shape and got.data.dtype == np.float32
        assert (got.kind, got.hop, got.n_fft, got.frames_per_row) == (want.kind, want.hop, want.n_fft, want.frames_per_row)
        floor = float(want.data.max()) * 1e-8  # a (local) 80 dB floor, below which dB is the floor on both sides
        assert np.abs(_db(got.data, floor) - _db(want.data, floor)).max() <= 1e-4


def test_graph_runs_the_shared_chain_once_per_frame_key(monkeypatch):
    calls = []
    real = spectral_ops.resized_mel_power
    monkeypatch.setattr(spectral_ops, "resized_mel_power", lambda *a, **k: calls.append(len(a[2])) or real(*a, **k))
    chain = lambda hop, n_mels: [{"op": "stft", "n_fft": 1024, "hop_length": hop}, {"op": "resize_time", "frames_per_row": 100},  # noqa: E731
                                 {"op": "mel", "n_mels": n_mels}, {"op": "windows", "length_frames": 100, "step_frames": 100}]
    spec = {"format": "birdinfer-model-folder", "format_version": 2, "labels": ["a"],
            "features": {"a": {"steps": chain(64, 32)}, "b": {"steps": chain(128, 48)}, "c": {"steps": chain(64, 32)}},
            "models": [{"name": n, "input": n, "input_shape": [-1, s, 100], "outputs": [{"name": "o", "kind": "probabilities"}],
                        "steps": [{"step": "clip_rows"}], "variants": {"f32": {"onnx": f"{n}.onnx"}}}
                       for n, s in (("a", 32), ("b", 48), ("c", 32))],
            "ensemble": {"steps": [{"step": "mean"}]}}
    out = FrontEndGraph(parse_spec(spec))(signal(10.0))
    assert calls == [2]  # one call, two distinct chains (a and c are the same)
    assert out["a"].data.shape == out["c"].data.shape == (2, 32, 100) and out["b"].data.shape == (2, 48, 100)
    np.testing.assert_array_equal(out["a"].data, out["c"].data)
