"""The 4th place's mel front end on the one engine against the reference (librosa mel + cv2 resize + per-chunk
power_to_db): its groups as a version 2 spec (birdinfer.runtime.mel_frontend.MelFrontEnd, run by birdinfer.runtime.engine.FrontEndGraph,
whose ``stft → resize_time → mel`` prefixes share frames per n_fft: birdinfer.dsp.resized_mel_power), the
same with every op on its own, and the DSP pieces (birdinfer.dsp).

The reference is written here with the oracles the original system used; the inputs are real OGG files
written by libsndfile from seeded synthetic signals (chirps, tones, noise, silence) and decoded with
birdinfer.io.audio.load_audio, so both sides see the same samples.
"""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from birdinfer.io.audio import load_audio
from birdinfer.errors import ParameterError
import birdinfer.runtime.engine
from birdinfer.dsp import (
    SpectrumTarget,
    hann_window,
    mel_bands,
    mel_filterbank,
    resize_plan,
    resized_mel_power,
    resized_width,
    stft_frames,
)
from birdinfer.spec.manifest import MelGroup
from birdinfer.runtime.mel_frontend import MelFrontEnd

from conftest import REFERENCE_GROUPS

librosa = pytest.importorskip("librosa")
cv2 = pytest.importorskip("cv2")

SR = 32000
WINDOW = 5 * SR
GROUPS = REFERENCE_GROUPS
BY_NAME = {g.name: g for g in GROUPS}
LENGTHS = (60.0, 5.0, 7.3, 62.0, 3.0)
TOLERANCE_DB = 0.01


def _soundscape(seconds: float, seed: int) -> np.ndarray:
    """Seeded synthetic soundscape: noise floor, up/down chirps, steady tones, a silent gap."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * SR))
    t = np.arange(n) / SR
    y = 0.005 * rng.standard_normal(n)
    for k in range(int(seconds // 2) + 1):  # a 0.6 s chirp every 2 s, random band
        f0, f1 = rng.uniform(1000, 9000, size=2)
        start = k * 2.0 + rng.uniform(0, 1.2)
        m = (t >= start) & (t < start + 0.6)
        tau = t[m] - start
        y[m] += 0.3 * np.sin(2 * np.pi * (f0 * tau + 0.5 * (f1 - f0) / 0.6 * tau**2)) * np.hanning(m.sum())
    y += 0.05 * np.sin(2 * np.pi * 440 * t) + 0.02 * np.sin(2 * np.pi * 12000 * t)
    y[int(0.3 * n) : int(0.3 * n) + SR // 4] = 0.0  # digital silence
    return np.clip(y, -1, 1).astype(np.float32)


def reference_front_end(y: np.ndarray, group: MelGroup) -> list[np.ndarray]:
    """REFERENCE.md section 2 with librosa + cv2: a list of per-chunk dB arrays (n_mels, <= 2F)."""
    mel = librosa.feature.melspectrogram(
        y=y, sr=SR, n_fft=group.n_fft, hop_length=group.hop_length, n_mels=group.n_mels,
        fmin=group.fmin, fmax=group.fmax, power=2.0, center=True, pad_mode="constant",
    )
    width = max(1, len(y) * group.frames_per_window // WINDOW)
    resized = cv2.resize(mel, (width, group.n_mels), interpolation=cv2.INTER_LINEAR)
    step = group.frames_per_chunk
    return [librosa.power_to_db(resized[:, i : i + step], ref=1.0, top_db=80.0) for i in range(0, width, step)]


@pytest.fixture(scope="module")
def signals(tmp_path_factory):
    """Decoded samples of real OGG files, one per length."""
    folder = tmp_path_factory.mktemp("features")
    out = {}
    for seed, seconds in enumerate(LENGTHS):
        path = folder / f"soundscape_{seconds}.ogg"
        sf.write(path, _soundscape(seconds, seed), SR)
        out[seconds] = load_audio(path)
    return out


@pytest.fixture(scope="module")
def front_end():
    return MelFrontEnd(GROUPS)


@pytest.fixture(scope="module")
def outputs(signals, front_end):
    return {seconds: front_end(y) for seconds, y in signals.items()}


@pytest.fixture(scope="module")
def references(signals):
    cache = {}

    def get(seconds, name):
        if (seconds, name) not in cache:
            cache[(seconds, name)] = reference_front_end(signals[seconds], BY_NAME[name])
        return cache[(seconds, name)]

    return get


# ----------------------------------------------------------------------------------------------- parity
@pytest.mark.parametrize("name", [g.name for g in GROUPS])
@pytest.mark.parametrize("seconds", LENGTHS)
def test_parity_with_reference(outputs, references, signals, seconds, front_end, name):
    group = BY_NAME[name]
    ours = outputs[seconds][name]
    n_rows = front_end.n_windows(len(signals[seconds]))
    chunks = references(seconds, name)[: max(1, -(-n_rows // 2))]  # the chunks holding the rows
    assert ours.dtype == np.float32 and ours.flags.c_contiguous
    assert ours.shape == (len(chunks), 1, group.n_mels, group.frames_per_chunk)
    worst = 0.0
    for i, ref in enumerate(chunks):
        worst = max(worst, float(np.abs(ours[i, 0, :, : ref.shape[1]] - ref).max()))
    print(f"{seconds:5.1f} s {name}: max |dB difference| = {worst:.2e}")
    assert worst <= TOLERANCE_DB


def test_sixty_second_shapes(outputs):
    shapes = {name: a.shape for name, a in outputs[60.0].items()}
    assert shapes == {"v1": (6, 1, 256, 512), "v2": (6, 1, 192, 768), "v3": (6, 1, 224, 576)}
    assert list(outputs[60.0]) == ["v1", "v2", "v3"]


def test_a_trailing_part_row_makes_no_chunk(outputs):
    # 62 s: 12 rows of 5 s, so 6 chunks; the last 2 s make no row (the version 1 engine computed a 7th chunk
    # for them that no row read)
    assert {name: a.shape[0] for name, a in outputs[62.0].items()} == {"v1": 6, "v2": 6, "v3": 6}
    np.testing.assert_array_equal(outputs[62.0]["v2"][:6], outputs[62.0]["v2"])


@pytest.mark.parametrize("seconds", [7.3, 3.0])
def test_partial_chunk_is_padded_with_zero_power(outputs, seconds):
    for group in GROUPS:
        ours = outputs[seconds][group.name]
        width = resized_width(round(seconds * SR), group.frames_per_window, WINDOW)
        real = width - (ours.shape[0] - 1) * group.frames_per_chunk
        assert 0 < real < group.frames_per_chunk
        last = ours[-1, 0]
        chunk_max = last.max()
        assert chunk_max == last[:, :real].max()  # the padding does not raise the maximum
        pad_value = max(np.float32(10) * np.log10(np.float32(1e-10)), chunk_max - np.float32(80.0))
        np.testing.assert_array_equal(last[:, real:], np.full_like(last[:, real:], pad_value))


def test_each_chunk_has_its_own_80_db_floor(outputs):
    v1 = outputs[60.0]["v1"]
    for chunk in v1[:, 0]:
        assert chunk.min() == pytest.approx(chunk.max() - 80.0, abs=1e-4)


def test_groups_share_frames_without_changing_results(signals, outputs):
    y = signals[7.3]
    alone = {g.name: MelFrontEnd([g])(y)[g.name] for g in GROUPS}
    for name, a in alone.items():
        np.testing.assert_allclose(a, outputs[7.3][name], atol=1e-4, rtol=0)


@pytest.mark.parametrize("seconds", [60.0, 7.3, 3.0])
def test_shared_chain_equals_the_ops_one_by_one(signals, outputs, seconds, monkeypatch):
    """The executor's fused prefix (shared frames, blocked STFT over the needed bins, interpolation before a
    banded mel) gives the numbers of stft, resize_time and mel run on their own (whole STFT, dense mel)."""
    monkeypatch.setattr(birdinfer.runtime.engine, "FUSED", {})  # not even stft + resize_time together
    plain = MelFrontEnd(GROUPS)
    plain._graph._chains = []
    out = plain(signals[seconds])
    for name, a in out.items():
        assert a.shape == outputs[seconds][name].shape
        np.testing.assert_allclose(outputs[seconds][name], a, atol=1e-4, rtol=0)


@pytest.mark.parametrize("block_frames,fft_frames", [(8, 3), (37, 64), (1024, 200)])
def test_block_size_does_not_change_results(signals, block_frames, fft_frames):
    y = signals[7.3]
    pad = np.zeros(len(y) + 2048, np.float32)
    pad[1024:-1024] = y
    targets = []
    for g in (BY_NAME["v1"], BY_NAME["v3"]):  # n_fft 2048, hops 64 and 128: shared frames
        fb = mel_filterbank(sample_rate=SR, n_fft=g.n_fft, n_mels=g.n_mels, fmin=g.fmin, fmax=g.fmax)
        targets.append(SpectrumTarget(g.hop_length, resized_width(len(y), g.frames_per_window, WINDOW), mel_bands(fb)))
    want = resized_mel_power(pad, hann_window(2048), targets)
    got = resized_mel_power(pad, hann_window(2048), targets, block_frames=block_frames, fft_frames=fft_frames)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * float(b.max()))


@pytest.mark.filterwarnings("ignore:n_fft=.*is too large:UserWarning")
def test_short_signals(front_end):
    rng = np.random.default_rng(3)
    for n in [1, 100, 1023, 2049]:
        y = (0.1 * rng.standard_normal(n)).astype(np.float32)
        out = front_end(y)
        for g in GROUPS:
            assert out[g.name].shape == (1, 1, g.n_mels, g.frames_per_chunk)
            assert np.isfinite(out[g.name]).all()
            ref = reference_front_end(y, g)[0]
            np.testing.assert_allclose(out[g.name][0, 0, :, : ref.shape[1]], ref, atol=TOLERANCE_DB, rtol=0)


def test_empty_and_bad_input(front_end):
    empty = front_end(np.zeros(0, dtype=np.float32))
    assert {k: v.shape for k, v in empty.items()} == {
        "v1": (0, 1, 256, 512), "v2": (0, 1, 192, 768), "v3": (0, 1, 224, 576)}
    with pytest.raises(ParameterError, match="NaN"):
        front_end(np.array([0.0, np.nan, 0.1], dtype=np.float32))
    with pytest.raises(ParameterError, match="mono"):
        front_end(np.zeros((2, 100), dtype=np.float32))
    with pytest.raises(ParameterError, match="in magnitude"):  # float32 power would overflow
        front_end(np.full(SR, 1e13, dtype=np.float32))
    with pytest.raises(ParameterError):
        MelFrontEnd([])
    with pytest.raises(ParameterError):
        MelFrontEnd([GROUPS[0], GROUPS[0]])


def test_float64_input_is_accepted(front_end, signals):
    y = signals[3.0]
    out64 = front_end(y.astype(np.float64))
    np.testing.assert_array_equal(out64["v2"], front_end(y)["v2"])


# ------------------------------------------------------------------------------------------ the pieces
@pytest.mark.parametrize(
    "n_samples,expected",
    [(0, 0), (1, 1), (WINDOW - 1, 1), (WINDOW, 1), (2 * WINDOW - 1, 1), (2 * WINDOW, 2),
     (60 * SR, 12), (62 * SR, 12), (3 * SR, 1), (int(7.3 * SR), 1)],
)
def test_n_windows(front_end, n_samples, expected):
    assert front_end.n_windows(n_samples) == expected


def test_chunks_cover_the_windows(front_end):
    for n in [1, WINDOW - 1, WINDOW, 3 * WINDOW + 17, 12 * WINDOW, 13 * WINDOW - 1]:
        out = front_end(np.zeros(n, np.float32))
        for g in GROUPS:
            assert out[g.name].shape == front_end.output_shape(g, n)
            assert 2 * front_end.output_shape(g, n)[0] >= front_end.n_windows(n)


@pytest.mark.parametrize("group", GROUPS, ids=lambda g: g.name)
def test_filterbank_equals_librosa(group):
    ours = mel_filterbank(sample_rate=SR, n_fft=group.n_fft, n_mels=group.n_mels, fmin=group.fmin, fmax=group.fmax)
    ref = librosa.filters.mel(sr=SR, n_fft=group.n_fft, n_mels=group.n_mels, fmin=group.fmin, fmax=group.fmax)
    assert ours.dtype == np.float32 and ours.shape == ref.shape
    np.testing.assert_array_equal(ours, ref)


@pytest.mark.parametrize("params", [(22050, 1024, 64, 0.0, 8000.0), (32000, 512, 40, 300.0, 12000.0),
                                    (16000, 400, 80, 20.0, 8000.0)])
def test_filterbank_other_parameters(params):
    sr, n_fft, n_mels, fmin, fmax = params
    ours = mel_filterbank(sample_rate=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)
    ref = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=0)


@pytest.mark.parametrize("n_fft", [1536, 2048, 7])
def test_hann_window_is_periodic(n_fft):
    from scipy.signal import get_window

    w = hann_window(n_fft)
    assert w.dtype == np.float32 and w[0] == 0.0
    np.testing.assert_allclose(w, get_window("hann", n_fft, fftbins=True), atol=1e-7)
    # periodic, not symmetric: the window of length n+1 without its last point
    np.testing.assert_allclose(w, np.hanning(n_fft + 1)[:-1], atol=1e-7)


@pytest.mark.parametrize("src,dst", [(30001, 3072), (15001, 3456), (30001, 4608), (31001, 3174), (100, 1), (5, 17),
                                     (7, 7), (2, 3)])
def test_resize_plan_matches_cv2(src, dst):
    rng = np.random.default_rng(src + dst)
    a = rng.uniform(0, 1, size=(3, src)).astype(np.float32)
    i0, i1, frac = resize_plan(src, dst)
    ours = a[:, i0] * (np.float32(1) - frac) + a[:, i1] * frac
    ref = cv2.resize(a, (dst, 3), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(ours, ref, rtol=3e-6, atol=1e-7)
    assert i0.min() >= 0 and i1.max() <= src - 1


def test_stft_frame_count_matches_librosa():
    y = np.zeros(12345, dtype=np.float32)
    for g in GROUPS:
        spec = librosa.stft(y, n_fft=g.n_fft, hop_length=g.hop_length, center=True, pad_mode="constant")
        assert spec.shape[1] == stft_frames(len(y), g.n_fft, g.hop_length) == 1 + len(y) // g.hop_length


def test_silence_is_the_floor(front_end):
    out = front_end(np.zeros(3 * SR + 5, dtype=np.float32))
    floor = librosa.power_to_db(np.zeros((2, 2), dtype=np.float32), ref=1.0, top_db=80.0)[0, 0]  # float32 -100
    assert floor == pytest.approx(-100.0, abs=1e-4)
    for a in out.values():
        np.testing.assert_array_equal(a, np.full_like(a, floor))
