"""birdinfer.io.audio: decoding, mono mixdown, resampling (oracle: librosa.load), NaN/Inf repair, errors."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from birdinfer.io.audio import (
    AUDIO_EXTENSIONS,
    AudioInfo,
    audio_info,
    iter_audio_blocks,
    list_audio_files,
    load_audio,
    repair_non_finite,
)
from birdinfer.errors import AudioDecodeError, BirdinferError, ParameterError

SR = 32000


def _signal(seconds: float, rate: int, *, channels: int = 1, seed: int = 0) -> np.ndarray:
    """Seeded test audio: a chirp, a tone and noise; ``(n,)`` or ``(n, channels)`` float32 in [-1, 1]."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * rate))
    t = np.arange(n) / rate
    cols = []
    for c in range(channels):
        y = 0.3 * np.sin(2 * np.pi * (400 + 100 * c) * t + 2 * np.pi * 600 * t**2)
        y += 0.1 * np.sin(2 * np.pi * 2500 * t) + 0.02 * rng.standard_normal(n)
        cols.append(y)
    data = np.stack(cols, axis=1) if channels > 1 else cols[0]
    return data.astype(np.float32)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("audio")
    out = {}

    def write(name, data, rate, **kw):
        sf.write(d / name, data, rate, **kw)
        out[name] = d / name

    write("mono32k.ogg", _signal(7.5, SR), SR)
    write("mono32k.wav", _signal(3.0, SR, seed=1), SR, subtype="PCM_16")
    write("mono32k.flac", _signal(3.0, SR, seed=2), SR)
    write("mono32k.mp3", _signal(3.0, SR, seed=6), SR)
    write("stereo32k.wav", _signal(2.0, SR, channels=2, seed=3), SR, subtype="FLOAT")
    write("stereo44k.ogg", _signal(4.3, 44100, channels=2, seed=4), 44100)
    write("mono22k.flac", _signal(4.1, 22050, seed=5), 22050)
    return out


@pytest.fixture(scope="module")
def librosa_load():
    librosa = pytest.importorskip("librosa")
    return lambda path: librosa.load(path, sr=SR)[0]


# ------------------------------------------------------------------------------------------- decoding
@pytest.mark.parametrize("name", ["mono32k.ogg", "mono32k.wav", "mono32k.flac", "mono32k.mp3", "stereo32k.wav"])
def test_decode_equals_librosa_load(files, librosa_load, name):
    y = load_audio(files[name])
    assert y.dtype == np.float32 and y.ndim == 1 and y.flags.c_contiguous
    np.testing.assert_array_equal(y, librosa_load(files[name]))


def test_wav_decodes_to_written_samples(files):
    y = load_audio(files["mono32k.wav"])
    written = _signal(3.0, SR, seed=1)
    assert len(y) == len(written)
    np.testing.assert_allclose(y, written, atol=1.0 / 32768)  # PCM_16 quantisation


def test_stereo_mixdown_is_channel_mean(files):
    data = _signal(2.0, SR, channels=2, seed=3)  # written as FLOAT WAV: lossless
    y = load_audio(files["stereo32k.wav"])
    np.testing.assert_array_equal(y, np.mean(data.T, axis=0))
    assert not np.array_equal(y, data[:, 0])


@pytest.mark.parametrize("name,rate,seconds", [("stereo44k.ogg", 44100, 4.3), ("mono22k.flac", 22050, 4.1)])
def test_resampling_matches_librosa_load(files, librosa_load, name, rate, seconds):
    y = load_audio(files[name])
    assert len(y) == int(np.ceil(round(seconds * rate) * SR / rate))
    np.testing.assert_array_equal(y, librosa_load(files[name]))


def test_load_at_other_rate(files):
    y = load_audio(files["mono32k.flac"], sample_rate=16000)
    assert len(y) == 48000 and y.dtype == np.float32


# ------------------------------------------------------------------------------------------- blocks
def test_blocks_concatenate_to_load_audio_same_rate(files):
    whole = load_audio(files["mono32k.ogg"])
    blocks = list(iter_audio_blocks(files["mono32k.ogg"], block_seconds=2.0))
    assert [len(b) for b in blocks] == [64000, 64000, 64000, 48000]
    assert all(b.dtype == np.float32 for b in blocks)
    np.testing.assert_array_equal(np.concatenate(blocks), whole)


def test_blocks_default_60s_one_block(files):
    blocks = list(iter_audio_blocks(files["mono32k.flac"]))
    assert len(blocks) == 1
    np.testing.assert_array_equal(blocks[0], load_audio(files["mono32k.flac"]))


@pytest.mark.parametrize("name", ["stereo44k.ogg", "mono22k.flac"])
def test_blocks_resampled_match_load_audio(files, name):
    whole = load_audio(files[name])
    blocks = list(iter_audio_blocks(files[name], block_seconds=1.5))
    assert all(len(b) == 48000 for b in blocks[:-1]) and 0 < len(blocks[-1]) <= 48000
    joined = np.concatenate(blocks)
    assert len(joined) == len(whole)
    np.testing.assert_allclose(joined, whole, atol=1e-6)


def test_blocks_bad_arguments(files):
    with pytest.raises(ParameterError):
        next(iter_audio_blocks(files["mono32k.ogg"], block_seconds=0))
    with pytest.raises(ParameterError):
        load_audio(files["mono32k.ogg"], sample_rate=0)


# ------------------------------------------------------------------------------------- NaN / Inf repair
def test_nan_and_inf_replaced_by_mean_of_finite(tmp_path):
    data = _signal(1.0, SR, seed=7)
    bad = [10, 500, 31000]
    data[bad[0]], data[bad[1]], data[bad[2]] = np.nan, np.inf, -np.inf
    path = tmp_path / "nan.wav"
    sf.write(path, data, SR, subtype="FLOAT")
    y = load_audio(path)
    assert np.isfinite(y).all()
    finite = np.delete(data, bad)
    with_nan = data.copy()
    with_nan[bad] = np.nan
    expected = np.nanmean(with_nan)  # the reference's "mean of the non-NaN samples"
    assert expected == pytest.approx(np.mean(finite.astype(np.float64)), rel=1e-5)
    assert expected != 0
    np.testing.assert_array_equal(y[bad], np.full(3, expected, dtype=np.float32))
    np.testing.assert_array_equal(np.delete(y, bad), finite)


def test_all_nan_becomes_zeros(tmp_path):
    path = tmp_path / "allnan.wav"
    sf.write(path, np.full(800, np.nan, dtype=np.float32), SR, subtype="FLOAT")
    y = load_audio(path)
    np.testing.assert_array_equal(y, np.zeros(800, dtype=np.float32))


def test_nan_in_one_channel_repairs_the_mono_sample(tmp_path):
    data = _signal(0.5, SR, channels=2, seed=8)
    data[100, 1] = np.nan
    path = tmp_path / "nan_stereo.wav"
    sf.write(path, data, SR, subtype="FLOAT")
    y = load_audio(path)
    mono = np.mean(data.T, axis=0)
    assert y[100] == np.float32(np.nanmean(mono))


def test_blocks_repair_nan_per_block(tmp_path):
    data = _signal(2.0, SR, seed=9)
    data[5] = np.nan  # first block
    data[40000] = np.inf  # second block
    path = tmp_path / "nan_blocks.wav"
    sf.write(path, data, SR, subtype="FLOAT")
    first, second = iter_audio_blocks(path, block_seconds=1.0)
    assert first[5] == np.float32(np.nanmean(data[:32000]))
    second_block = data[32000:].copy()
    second_block[40000 - 32000] = np.nan
    assert second[40000 - 32000] == np.nanmean(second_block)


def test_repair_non_finite_in_place():
    y = np.array([1.0, np.nan, 3.0, -np.inf], dtype=np.float32)
    out = repair_non_finite(y)
    assert out is y
    np.testing.assert_array_equal(y, [1.0, 2.0, 3.0, 2.0])


# ------------------------------------------------------------------------------------------- errors
def _decode_error(path, fn=load_audio) -> AudioDecodeError:
    with pytest.raises(AudioDecodeError) as info:
        result = fn(path)
        if not isinstance(result, np.ndarray):
            list(result)
    error = info.value
    assert isinstance(error, BirdinferError)
    assert str(path) in str(error) and error.path == str(path)
    return error


@pytest.mark.parametrize("fn", [load_audio, iter_audio_blocks, audio_info])
def test_missing_file(tmp_path, fn):
    error = _decode_error(tmp_path / "nope.ogg", fn)
    assert "not found" in error.reason


@pytest.mark.parametrize("fn", [load_audio, iter_audio_blocks, audio_info])
def test_text_file_named_ogg(tmp_path, fn):
    path = tmp_path / "notes.ogg"
    path.write_text("this is not audio, just some text\n" * 20)
    error = _decode_error(path, fn)
    assert "not an audio file" in error.reason


@pytest.mark.parametrize("fn", [load_audio, iter_audio_blocks])
@pytest.mark.parametrize("keep", [0.02, 0.5, 0.97])
def test_truncated_ogg(files, tmp_path, fn, keep):
    whole = files["mono32k.ogg"].read_bytes()
    path = tmp_path / f"cut_{keep}.ogg"
    path.write_bytes(whole[: int(len(whole) * keep)])
    error = _decode_error(path, fn)
    assert "truncated" in error.reason


def test_complete_ogg_is_not_reported_truncated(files):
    assert len(load_audio(files["stereo44k.ogg"])) > 0  # the end-of-stream check accepts a whole file


def test_truncated_flac(files, tmp_path):
    whole = files["mono32k.flac"].read_bytes()
    path = tmp_path / "cut.flac"
    path.write_bytes(whole[: len(whole) // 2])
    error = _decode_error(path)
    assert "truncated or corrupt" in error.reason


@pytest.mark.parametrize("fn", [load_audio, iter_audio_blocks])
def test_zero_length_wav(tmp_path, fn):
    path = tmp_path / "empty.wav"
    sf.write(path, np.zeros(0, dtype=np.float32), SR)
    error = _decode_error(path, fn)
    assert "no audio samples" in error.reason


def test_folder_is_not_a_file(tmp_path):
    error = _decode_error(tmp_path)
    assert "folder" in error.reason


# ------------------------------------------------------------------------------------- info and listing
def test_audio_info(files):
    info = audio_info(files["stereo44k.ogg"])
    assert isinstance(info, AudioInfo)
    assert (info.sample_rate, info.channels, info.frames) == (44100, 2, round(4.3 * 44100))
    assert info.duration_s == pytest.approx(4.3)


def test_list_audio_files(tmp_path):
    for name in ["b.ogg", "a.WAV", "c.flac", "notes.txt", ".hidden.ogg", "d.mp3"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "e.ogg").write_bytes(b"x")
    (tmp_path / "dir.ogg").mkdir()  # a folder with an audio suffix is not a file
    assert [p.name for p in list_audio_files(tmp_path)] == ["a.WAV", "b.ogg", "c.flac", "d.mp3"]
    assert [p.relative_to(tmp_path).as_posix() for p in list_audio_files(tmp_path, recursive=True)] == [
        "a.WAV", "b.ogg", "c.flac", "d.mp3", "sub/e.ogg"]
    assert ".ogg" in AUDIO_EXTENSIONS and ".mp3" in AUDIO_EXTENSIONS
    with pytest.raises(ParameterError):
        list_audio_files(tmp_path / "missing")
