"""The pieces the solution transcriptions and graphs are built from, each against an independent oracle:
torchaudio semantics (plain torch) against librosa, the exported conv-STFT mel against nnAudio and against the
torch.stft transcription, and the post-processing rules against hand-worked cases."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
librosa = pytest.importorskip("librosa")

from solutions import birdclef2024_1st as s2024  # noqa: E402
from solutions import birdclef2025_1st as s1  # noqa: E402
from solutions import birdclef2025_2nd as s2  # noqa: E402
from solutions import torchaudio_like as ta  # noqa: E402

from conftest import synth_signal  # noqa: E402

SR = 32000


@pytest.mark.parametrize("n_fft,n_mels,fmin,fmax", [(4096, 224, 0.0, 16000.0), (2048, 128, 20.0, 16000.0)])
def test_htk_filterbank_equals_librosa_htk_without_norm(n_fft, n_mels, fmin, fmax):
    ours = ta.melscale_fbanks_htk(n_fft // 2 + 1, fmin, fmax, n_mels, SR).numpy()
    want = librosa.filters.mel(sr=SR, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax, htk=True, norm=None).T
    assert ours.shape == want.shape
    assert np.abs(ours - want).max() < 5e-5  # torchaudio builds it in float32 (mel points rounded), librosa in float64
    assert (want > 0).sum(axis=0).min() > 0  # every filter has support: the comparison is not vacuous


def test_window_normalised_power_equals_librosa_stft():
    y = synth_signal(3.0, seed=5)
    ours = ta.power_spectrogram(torch.from_numpy(y)[None], n_fft=2048, hop_length=512, normalized=True)[0].numpy()
    window = np.asarray(torch.hann_window(2048), dtype=np.float64)
    stft = librosa.stft(y.astype(np.float64), n_fft=2048, hop_length=512, window="hann", center=True, pad_mode="reflect")
    want = np.abs(stft) ** 2 / np.sum(window**2)
    assert ours.shape == want.shape == (1025, 1 + len(y) // 512)
    assert np.abs(ours - want).max() <= 1e-5 * want.max()


def test_amplitude_to_db_matches_power_to_db_and_its_batch_rule():
    rng = np.random.default_rng(0)
    x = (rng.random((3, 16, 20)) ** 8 * 10).astype(np.float32)
    x[1] *= 1e-6  # a quiet item: its floor differs between per-item and whole-batch maxima
    whole = ta.amplitude_to_db(torch.from_numpy(x), top_db=80.0).numpy()
    np.testing.assert_allclose(whole, librosa.power_to_db(x, ref=1.0, top_db=80.0, amin=1e-10), atol=1e-4)
    per_item = ta.amplitude_to_db(torch.from_numpy(x)[:, None], top_db=80.0)[:, 0].numpy()
    for i in range(3):
        np.testing.assert_allclose(per_item[i], librosa.power_to_db(x[i], ref=1.0, top_db=80.0), atol=1e-4)
    assert not np.allclose(whole[1], per_item[1])


def test_zscore_minmax_uses_unbiased_std():
    x = torch.tensor([[[0.0, 1.0], [2.0, 5.0]]])
    mean, std = 2.0, float(np.std([0, 1, 2, 5], ddof=1))
    z = (np.array([0, 1, 2, 5]) - mean) / (std + 1e-6)
    want = (z - z.min()) / (z.max() - z.min() + 1e-6)
    np.testing.assert_allclose(ta.zscore_minmax(x).numpy().ravel(), want, rtol=1e-6)


def test_exported_conv_stft_mel_equals_nnaudio_and_torch_stft_oracles():
    from birdinfer_export.heads import WaveSEDNet

    pieces = torch.from_numpy(s2.pieces(synth_signal(12.0, seed=3)))  # 3 pieces, the last one left-padded
    graph = WaveSEDNet("tinynet_e", 4).eval()
    with torch.no_grad():
        ours = graph.spectrogram(pieces)
        via_stft = s2.frontend_oracle(pieces, use_nnaudio=False)
    assert ours.shape == (3, 1, 128, 313)
    assert float(ours.min()) == 0.0 and abs(float(ours.max()) - 1.0) < 1e-5
    assert (ours - via_stft).abs().max() < 1e-4
    pytest.importorskip("nnAudio")
    with torch.no_grad():
        assert (ours - s2.frontend_oracle(pieces, use_nnaudio=True)).abs().max() < 1e-6


def test_2nd_place_pieces_left_pad_and_peak_normalise():
    y = synth_signal(7.3, seed=1) * 0.3
    p = s2.pieces(y)
    assert p.shape == (2, 160000)
    tail = len(y) - 160000
    assert np.all(p[1, : 160000 - tail] == 0) and np.abs(p[1, 160000 - tail:]).max() == pytest.approx(1.0)
    np.testing.assert_allclose(p[0], y[:160000] / np.abs(y[:160000]).max(), rtol=1e-6)
    assert np.all(s2.pieces(np.zeros(1000, np.float32)) == 0)  # silence stays silent


def test_2nd_place_file_scale_multiplies_by_top_k_mean():
    p = np.array([[0.1, 0.5], [0.4, 0.2], [0.3, 0.9], [0.2, 0.1]])
    want = p * np.array([[(0.4 + 0.3 + 0.2) / 3, (0.9 + 0.5 + 0.2) / 3]])
    np.testing.assert_allclose(s2.file_scale(p, 3), want)


def test_1st_place_timeline_rows_on_a_worked_case():
    # 3 windows of 16 frames, step 4 frames per row: window s has the constant value v_s on all frames,
    # except window 1 which peaks at frame 9 (timeline position 13 = trimmed position 7 = row 1).
    values = [0.1, 0.2, 0.4]
    prob = np.zeros((3, 1, 16))
    for s, v in enumerate(values):
        prob[s, 0, :] = v
    prob[1, 0, 9] = 0.8
    rows = s1.head_rows(prob)[:, 0]
    # timeline length 24, coverage: positions 0-3 {0}, 4-7 {0,1}, 8-15 {0,1,2}, 16-19 {1,2}, 20-23 {2}; trim 6 → 12
    t = np.zeros(24)
    cover = np.zeros(24)
    for s, v in enumerate(values):
        seg = np.full(16, v)
        if s == 1:
            seg[9] = 0.8
        t[4 * s: 4 * s + 16] += seg
        cover[4 * s: 4 * s + 16] += 1
    t = (t / cover)[6:18]
    base = t.reshape(3, 4).max(1)
    left = [t[0:4].max(), t[2:6].max(), t[6:10].max()]
    right = [t[2:6].max(), t[6:10].max(), t[8:12].max()]
    want = 0.5 * base + 0.25 * np.array(left) + 0.25 * np.array(right)
    np.testing.assert_allclose(rows, want)
    assert rows[1] > rows[0]  # the peak lands in row 1


def test_1st_place_features_shape_range_and_padding():
    y = synth_signal(60.0, seed=2)
    x = s1.features(y)
    assert x.shape == (12, 3, 224, 512)
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert torch.equal(x[:, 0], x[:, 2])
    # consecutive windows overlap by 384 frames: the same whole-file normalised mel, sliced
    assert torch.equal(x[0, 0, :, 128:], x[1, 0, :, :384])


def test_2024_features_context_and_file_scope_db():
    y = synth_signal(20.0, seed=4)
    y[3 * 160000:] *= 1e-6  # the last chunk is 120 dB down: below the whole file's floor
    x = s2024.features(y)
    assert x.shape == (4, 1, 128, 640)
    # window k = last half of chunk k-1 | chunk k | first half of chunk k+1; the edges repeat the edge chunk
    np.testing.assert_array_equal(x[1, 0, :, :160], x[0, 0, :, 320:480])
    np.testing.assert_array_equal(x[2, 0, :, :160], x[1, 0, :, 320:480])
    np.testing.assert_array_equal(x[0, 0, :, :160], x[0, 0, :, 320:480])
    np.testing.assert_array_equal(x[3, 0, :, 480:], x[3, 0, :, 160:320])
    # one floor for the whole file (max over all chunks - 100 dB): the quiet chunk sits entirely on it
    floor = float(x.max()) - 100.0
    assert float(x.min()) == pytest.approx(floor, abs=1e-3)
    np.testing.assert_allclose(x[3, 0, :, 160:480], floor, atol=1e-3)
    assert float(x[0].min()) > floor + 1.0  # loud chunks are not clipped: the check above is not vacuous


def test_2024_box_mean_truncates_at_edges():
    p = np.arange(6, dtype=float)[:, None]
    want = np.array([np.mean([0, 1, 2]), np.mean([0, 1, 2, 3]), 2.0, 3.0, np.mean([2, 3, 4, 5]), np.mean([3, 4, 5])])
    np.testing.assert_allclose(s2024.smooth(p)[:, 0], want)
