"""Reliability (issue 7): bad or odd input never crashes a run, long runs resume, outputs are atomic.

* A generated corpus of bad and odd recordings (the list is :data:`CORPUS`) run through ``submit`` and
  ``predict`` (CLI entry point, in-process): exit code 0, every good file's rows equal a clean run's,
  bad files reported, no crash.
* Hypothesis fuzzing of the decoder (random / mutated bytes with audio extensions) and of the front end
  (random float arrays with NaN/Inf/huge values).
* ``predict`` SIGKILLed mid-run and restarted: byte-identical output; ``submit`` SIGKILLed while writing
  never leaves a partial ``submission.csv``.
* Fail-fast checks (model folder, checksums, output path, sample submission, no inputs).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from birdinfer.io import audio as audio_mod
from birdinfer.cli import main as cli_main
from birdinfer.errors import (AudioDecodeError, ChecksumError, MissingDependencyError, ModelFolderError, OutputError,
                              ParameterError)

from conftest import (LABELS, SMALL_RECIPE, cli_env, recipe_spec, stop_process, synth_signal, unprivileged_prefix,
                      wait_for_lock, write_ogg)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

SR = 32000
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


# ============================================================================================ corpus
def _wav(path: Path, data: np.ndarray, sr: int, subtype: str = "PCM_16") -> None:
    sf.write(path, data, sr, subtype=subtype, format="WAV")


def _sf(path: Path, data: np.ndarray, sr: int, format: str, subtype: str) -> None:
    with sf.SoundFile(path, "w", samplerate=sr, channels=1 if data.ndim == 1 else data.shape[1], format=format, subtype=subtype) as f:
        for start in range(0, len(data), 10 * sr):  # libsndfile's Vorbis encoder dislikes huge writes
            f.write(data[start : start + 10 * sr])


def _tone(seconds: float, sr: int, seed: int) -> np.ndarray:
    """synth_signal at any rate (chirps up to 9 kHz: keep them under Nyquist for 8 kHz)."""
    y = synth_signal(seconds, seed, sr)
    if sr < 20000:
        y = (0.3 * np.sin(2 * np.pi * 1000 * np.arange(len(y)) / sr) + 0.05 * y).astype(np.float32)
    return y


def _truncated_ogg(path: Path) -> None:
    full = path.with_name("full_" + path.name)
    write_ogg(full, 12.0, seed=31)
    data = full.read_bytes()
    full.unlink()
    path.write_bytes(data[: int(len(data) * 0.6)])


def _nan_inf_wav(path: Path) -> None:
    y = _tone(7.0, SR, 32)
    y[1000:1100] = np.nan
    y[50000] = np.inf
    y[90000:90010] = -np.inf
    _wav(path, y, SR, "FLOAT")


def _unreadable(path: Path) -> None:
    write_ogg(path, 6.0, seed=33)
    path.chmod(0)


@dataclass(frozen=True)
class Kind:
    """One kind of input: ``name`` relative to the corpus folder, ``make(path)``, and whether it must
    decode (``good``: its rows must equal a clean run's) or be reported (``good=False``)."""

    name: str
    make: Callable[[Path], None]
    good: bool
    why: str
    fails_in: str = "decode"  # for bad kinds: "decode" (AudioDecodeError) or "front end" (ParameterError)


#: The corpus (issue 7 asks for at least 15 kinds of bad or odd input).
CORPUS = [
    # --- bad: reported, never fatal (submit: fallback rows; predict: no rows)
    Kind("corrupt.ogg", lambda p: p.write_bytes(b"OggS" + np.random.default_rng(1).bytes(20000)), False, "random bytes after an OggS magic"),
    Kind("truncated.ogg", _truncated_ogg, False, "a real OGG cut at 60 % of its bytes"),
    Kind("zero_length.ogg", lambda p: p.write_bytes(b""), False, "0 bytes"),
    Kind("empty_header_only.wav", lambda p: _wav(p, np.zeros(0, np.float32), SR), False, "a WAV header with no frames"),
    Kind("text_named.ogg", lambda p: p.write_text("this is a text file, not audio\n" * 40), False, "a text file named .ogg"),
    Kind("not_really.mp3", lambda p: p.write_text("<html><body>404 not found</body></html>\n" * 40), False, "an HTML page named .mp3"),
    Kind("huge_values.wav", lambda p: _wav(p, (_tone(6.0, SR, 34) * 1e30).astype(np.float32), SR, "FLOAT"), False,
         "float WAV of finite garbage (|x| ~ 1e29): would overflow the float32 power spectrum", "front end"),
    *([] if IS_ROOT else [Kind("unreadable.ogg", _unreadable, False, "permission 000 (skipped as root: root reads it)")]),
    # --- odd but good: decoded and scored like any recording
    Kind("rate_8k.wav", lambda p: _wav(p, _tone(6.0, 8000, 2), 8000), True, "8 kHz"),
    Kind("rate_22k.ogg", lambda p: _sf(p, _tone(6.0, 22050, 3), 22050, "OGG", "VORBIS"), True, "22.05 kHz Vorbis"),
    Kind("rate_44k.wav", lambda p: _wav(p, _tone(6.0, 44100, 4), 44100), True, "44.1 kHz"),
    Kind("rate_48k.ogg", lambda p: _sf(p, _tone(6.0, 48000, 5), 48000, "OGG", "VORBIS"), True, "48 kHz Vorbis"),
    Kind("rate_96k.wav", lambda p: _wav(p, _tone(6.0, 96000, 6), 96000, "PCM_24"), True, "96 kHz, 24-bit"),
    Kind("stereo.ogg", lambda p: _sf(p, np.stack([_tone(6.0, SR, 7), _tone(6.0, SR, 8)], 1), SR, "OGG", "VORBIS"), True, "2 channels"),
    Kind("six_channel.wav", lambda p: _wav(p, np.stack([_tone(6.0, SR, 10 + c) for c in range(6)], 1), SR), True, "6 channels"),
    Kind("nan_inf.wav", _nan_inf_wav, True, "float WAV with NaN and ±Inf samples"),
    Kind("silence.wav", lambda p: _wav(p, np.zeros(6 * SR, np.float32), SR), True, "digital silence"),
    Kind("clipping.wav", lambda p: _wav(p, np.sign(np.sin(2 * np.pi * 440 * np.arange(6 * SR) / SR) + 1e-9).astype(np.float32), SR),
         True, "full-scale square wave"),
    Kind("short_3s.ogg", lambda p: write_ogg(p, 3.0, seed=20), True, "< 5 s: one zero-padded row"),
    Kind("tiny_0p2s.wav", lambda p: _wav(p, _tone(0.2, SR, 21), SR), True, "0.2 s"),
    Kind("long_3min.ogg", lambda p: write_ogg(p, 180.0, seed=22), True, "3 minutes: three 60 s blocks"),
    Kind("lossless.flac", lambda p: _sf(p, _tone(7.0, SR, 23), SR, "FLAC", "PCM_16"), True, "FLAC"),
    Kind("UPPER_CASE.OGG", lambda p: write_ogg(p, 6.0, seed=24), True, "upper-case extension"),
    Kind("nested/deeper/in_subfolder.ogg", lambda p: write_ogg(p, 6.0, seed=25), True, "nested folder (predict only)"),
]
#: Present in the folder but not recordings: neither rows nor errors.
IGNORED = ["folder_named.ogg/", ".hidden.ogg", "notes.txt"]


def _build(folder: Path, kinds) -> Path:
    for kind in kinds:
        path = folder / kind.name
        path.parent.mkdir(parents=True, exist_ok=True)
        kind.make(path)
    return folder


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """``bad/``: the whole corpus plus ignored entries; ``clean/``: the good files alone, same names."""
    root = tmp_path_factory.mktemp("corpus")
    bad = _build(root / "bad", CORPUS)
    (bad / "folder_named.ogg").mkdir()
    write_ogg(bad / ".hidden.ogg", 6.0, seed=40)
    (bad / "notes.txt").write_text("field notes\n")
    clean = root / "clean"
    for kind in CORPUS:
        if kind.good:
            (clean / kind.name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(bad / kind.name, clean / kind.name)
    yield root
    for kind in CORPUS:  # let pytest clean up the permission-000 file
        if (bad / kind.name).exists():
            (bad / kind.name).chmod(0o644)


def _small_front_end():
    """The front end of the small test folder's three mel groups (its version 2 spec's features)."""
    from birdinfer.runtime.engine import FrontEndGraph

    return FrontEndGraph(recipe_spec(SMALL_RECIPE))


def test_corpus_is_what_it_claims(corpus):
    """The odd kinds really are odd (so the other tests test something)."""
    bad = corpus / "bad"
    assert len(CORPUS) + len(IGNORED) >= 15 and len([k for k in CORPUS if not k.good]) >= 6
    assert sf.info(str(bad / "rate_96k.wav")).samplerate == 96000
    assert sf.info(str(bad / "six_channel.wav")).channels == 6
    raw, _ = sf.read(str(bad / "nan_inf.wav"), dtype="float32")
    assert np.isnan(raw).any() and np.isinf(raw).any()
    assert sf.info(str(bad / "empty_header_only.wav")).frames == 0
    front_end = _small_front_end()
    for kind in CORPUS:
        if kind.good:
            y = audio_mod.load_audio(bad / kind.name)
            assert y.dtype == np.float32 and y.ndim == 1 and np.isfinite(y).all(), kind.name
        elif kind.fails_in == "decode":
            with pytest.raises(AudioDecodeError, match=Path(kind.name).name.replace(".", r"\.")):
                audio_mod.load_audio(bad / kind.name)
        else:
            y = audio_mod.load_audio(bad / kind.name)
            assert np.isfinite(y).all()
            with pytest.raises(ParameterError, match="overflow"):
                front_end(y)


# ========================================================================= corpus through submit / predict
def _good(predict_only: bool = True) -> list[Kind]:
    return [k for k in CORPUS if k.good and (predict_only or "/" not in k.name)]


def _bad() -> list[Kind]:
    return [k for k in CORPUS if not k.good]


@pytest.fixture(scope="module")
def clean_predict(corpus, small_model_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("clean") / "clean.csv"
    assert cli_main(["predict", str(corpus / "clean"), "--models", str(small_model_folder), "--out", str(out),
                     "--precision", "f32"]) == 0
    frame = pd.read_csv(out)
    frame["file"] = frame["file"].str.replace(str(corpus / "clean") + "/", "", regex=False)
    return frame


def test_predict_survives_the_corpus(corpus, small_model_folder, clean_predict, tmp_path, caplog):
    out = tmp_path / "windows.csv"
    code = cli_main(["predict", str(corpus / "bad"), "--models", str(small_model_folder), "--out", str(out), "--precision", "f32"])
    assert code == 0
    frame = pd.read_csv(out)
    frame["file"] = frame["file"].str.replace(str(corpus / "bad") + "/", "", regex=False)
    assert list(frame.columns) == ["file", "start_s", "end_s"] + LABELS
    # every good file (nested one included), and only those, has rows, equal to the clean run's
    assert sorted(frame.file.unique()) == sorted(k.name for k in _good()) == sorted(clean_predict.file.unique())
    pd.testing.assert_frame_equal(frame.reset_index(drop=True), clean_predict.reset_index(drop=True), check_exact=True)
    assert frame[LABELS].notna().all().all() and ((frame[LABELS] >= 0) & (frame[LABELS] <= 1)).all().all()
    rows = frame.groupby("file").size().to_dict()
    assert rows["long_3min.ogg"] == 36 and rows["tiny_0p2s.wav"] == 1 and rows["short_3s.ogg"] == 1
    # every bad file is reported (log + errors.csv), and nothing else
    errors = pd.read_csv(out.with_name(out.name + ".errors.csv"))
    assert sorted(Path(f).name for f in errors.file) == sorted(Path(k.name).name for k in _bad())
    assert errors.error.str.len().min() > 10
    logged = "\n".join(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    for kind in _bad():
        assert kind.name in logged
    assert not out.with_name(out.name + ".parts").exists()


def test_submit_survives_the_corpus(corpus, small_model_folder, clean_predict, tmp_path, caplog):
    out, report = tmp_path / "submission.csv", tmp_path / "report.json"
    code = cli_main(["submit", str(corpus / "bad"), "--models", str(small_model_folder), "--out", str(out),
                     "--precision", "f32", "--report", str(report)])
    assert code == 0
    sub = pd.read_csv(out)
    stems = sub.row_id.str.rsplit("_", n=1).str[0]
    # good files: rows equal the clean run's (submit is not recursive: the nested file is not there)
    for kind in _good(predict_only=False):
        stem = Path(kind.name).stem
        got = sub[stems == stem][LABELS].to_numpy()
        want = clean_predict[clean_predict.file == kind.name][LABELS].to_numpy()
        assert got.shape == want.shape and np.array_equal(got, want), kind.name
    assert "in_subfolder" not in set(stems)
    # bad files: reported, and they still get rows (the documented fallback: mean of the good rows)
    failed = json.loads(report.read_text())["failed"]
    assert sorted(Path(f["file"]).name for f in failed) == sorted(Path(k.name).name for k in _bad())
    good_rows = sub[stems.isin([Path(k.name).stem for k in _good(False)])][LABELS].to_numpy()
    for kind in _bad():
        rows = sub[stems == Path(kind.name).stem][LABELS].to_numpy()
        assert len(rows) >= 1, kind.name
        np.testing.assert_allclose(rows, np.repeat(good_rows.mean(0, keepdims=True), len(rows), 0), atol=2e-6)
    logged = "\n".join(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    for kind in _bad():
        assert kind.name in logged
    assert sub[LABELS].notna().all().all()


# ================================================================================== predict: formats
def test_predict_parquet_and_raven_match_csv(corpus, small_model_folder, clean_predict, tmp_path):
    pytest.importorskip("pyarrow")
    from birdinfer.jobs.predict import predict

    files = [corpus / "clean" / "UPPER_CASE.OGG", corpus / "clean" / "long_3min.ogg"]
    listing = tmp_path / "list.txt"
    listing.write_text(f"# two recordings\n{files[1]}\n\n{files[0]}\n{files[0]}\n")  # duplicate listed twice
    table = predict([listing], small_model_folder, tmp_path / "w.parquet", precision="f32", progress=False)
    frame = pd.read_parquet(table)
    assert list(frame.file.unique()) == [str(files[0]), str(files[1])]  # sorted, de-duplicated
    want = clean_predict[clean_predict.file.isin(["UPPER_CASE.OGG", "long_3min.ogg"])]
    np.testing.assert_array_equal(frame[LABELS].to_numpy(), want[LABELS].to_numpy().astype(np.float32))
    np.testing.assert_array_equal(frame.end_s - frame.start_s, 5.0)

    threshold = float(np.quantile(want[LABELS].to_numpy(), 0.9))
    raven = predict(files, small_model_folder, tmp_path / "raven", format="raven", threshold=threshold, precision="f32", progress=False)
    tables = sorted(p.name for p in raven.iterdir())
    assert tables == ["UPPER_CASE.selections.txt", "long_3min.selections.txt"]
    sel = pd.read_csv(raven / "long_3min.selections.txt", sep="\t")
    assert list(sel.columns) == ["Selection", "View", "Channel", "Begin Time (s)", "End Time (s)", "Low Freq (Hz)",
                                 "High Freq (Hz)", "Species", "Score"]
    probs = frame[frame.file == str(files[1])][LABELS].to_numpy()
    k, j = np.nonzero(probs >= threshold)
    assert len(sel) == len(k) > 0
    np.testing.assert_array_equal(sel["Begin Time (s)"], 5.0 * k)
    assert list(sel.Species) == [LABELS[i] for i in j]
    np.testing.assert_allclose(sel.Score, probs[k, j], atol=5e-5)


def test_parquet_without_pyarrow_fails_fast(corpus, tmp_path, monkeypatch):
    from birdinfer.jobs.predict import predict

    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow → ImportError
    with pytest.raises(MissingDependencyError, match="pyarrow"):
        predict([corpus / "clean"], tmp_path / "no_models", tmp_path / "w.parquet")


# ===================================================================================== fail fast
@pytest.fixture
def no_audio_work(monkeypatch):
    """Any decoding attempt fails the test: the error must come before audio work."""
    import birdinfer.runtime.pipeline as pipeline

    def forbidden(*a, **k):
        raise AssertionError("audio was decoded before the fail-fast check")

    monkeypatch.setattr(pipeline, "iter_audio_blocks", forbidden)


def test_fail_fast_model_folder(corpus, tmp_path, no_audio_work, capsys):
    from birdinfer.jobs.predict import predict

    with pytest.raises(ModelFolderError, match="does not exist"):
        predict([corpus / "clean"], tmp_path / "missing", tmp_path / "o.csv")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelFolderError, match="manifest.json not found"):
        predict([corpus / "clean"], tmp_path / "empty", tmp_path / "o.csv")
    code = cli_main(["submit", str(corpus / "clean"), "--models", str(tmp_path / "empty"), "--out", str(tmp_path / "s.csv")])
    assert code == 2 and "manifest.json not found" in capsys.readouterr().err
    assert not (tmp_path / "s.csv").exists()


def test_fail_fast_checksum_mismatch(corpus, small_model_folder, tmp_path, no_audio_work, capsys):
    """A copy of the model folder (hard links; the manifest refuses symlinks out of the folder) with one
    weight file changed by one byte."""
    models = tmp_path / "models"
    models.mkdir()
    bins = sorted(small_model_folder.glob("*.bin"))
    for f in small_model_folder.iterdir():
        if f.is_file() and f != bins[0]:
            try:
                os.link(f, models / f.name)
            except OSError:
                shutil.copyfile(f, models / f.name)
    data = bytearray(bins[0].read_bytes())
    data[len(data) // 2] ^= 0xFF
    (models / bins[0].name).write_bytes(bytes(data))
    from birdinfer.jobs.predict import predict

    with pytest.raises(ChecksumError, match=bins[0].name.replace(".", r"\.") + r".*sha256.*re-export"):
        predict([corpus / "clean"], models, tmp_path / "o.csv", precision="f32", progress=False)
    code = cli_main(["submit", str(corpus / "clean"), "--models", str(models), "--out", str(tmp_path / "s.csv")])
    assert code == 2 and bins[0].name in capsys.readouterr().err


def test_fail_fast_output_and_inputs(corpus, small_model_folder, tmp_path, no_audio_work):
    from birdinfer.jobs.submit import make_submission
    from birdinfer.jobs.predict import predict

    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="a_file"):
        predict([corpus / "clean"], small_model_folder, blocker / "o.csv")
    with pytest.raises(OutputError, match="a_file"):
        make_submission(corpus / "clean", small_model_folder, out=blocker / "submission.csv", progress=False)
    with pytest.raises(OutputError, match="is a file"):
        predict([corpus / "clean"], small_model_folder, blocker, format="raven")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(ParameterError, match="no audio files found"):
        predict([tmp_path / "empty_dir"], small_model_folder, tmp_path / "o.csv")
    with pytest.raises(ParameterError, match="does not exist"):
        predict([tmp_path / "no_such_dir"], small_model_folder, tmp_path / "o.csv")
    sample = tmp_path / "sample_submission.csv"
    sample.write_text("row_id,other1,other2\n")
    with pytest.raises(ParameterError, match="none of its 2 species"):
        make_submission(corpus / "clean", small_model_folder, out=tmp_path / "s.csv", sample_submission=sample, progress=False)


# ============================================================================================ fuzz
_MAGICS = [b"", b"OggS\x00\x02", b"RIFF\x24\x00\x00\x00WAVEfmt ", b"fLaC\x00\x00\x00\x22", b"ID3\x03\x00\x00\x00",
           b"\xff\xfb\x90\x64", b"FORM\x00\x00\x00\x00AIFF", b".snd"]


@pytest.fixture(scope="module")
def seed_files(tmp_path_factory):
    """Small valid files whose mutations reach deep into each decoder."""
    folder = tmp_path_factory.mktemp("seeds")
    y = _tone(1.5, SR, 50)
    out = {}
    for name, fmt, subtype in [("a.ogg", "OGG", "VORBIS"), ("a.wav", "WAV", "PCM_16"), ("f.wav", "WAV", "FLOAT"),
                               ("a.flac", "FLAC", "PCM_16")]:
        _sf(folder / name, y, SR, fmt, subtype)
        out[name] = (folder / name).read_bytes()
    return out


def test_fuzz_decoder(seed_files):
    pytest.importorskip("hypothesis")
    from hypothesis import HealthCheck, given, settings, strategies as st

    blobs = st.one_of(
        st.builds(lambda magic, tail: magic + tail, st.sampled_from(_MAGICS), st.binary(max_size=3000)),
        st.builds(_mutate, st.sampled_from(sorted(seed_files)).map(seed_files.get), st.integers(0, 2**32 - 1),
                  st.sampled_from(["flip", "truncate", "splice"])),
    )

    @settings(max_examples=80, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(blob=blobs, suffix=st.sampled_from(list(audio_mod.AUDIO_EXTENSIONS) + [".OGG", ".Wav"]))
    def check(blob, suffix):
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / f"fuzz{suffix}"
            path.write_bytes(blob)
            for decode in (lambda: audio_mod.load_audio(path),
                           lambda: np.concatenate(list(audio_mod.iter_audio_blocks(path, block_seconds=0.5)) or [np.zeros(0, np.float32)])):
                try:
                    y = decode()
                except AudioDecodeError as e:
                    assert str(path) in str(e)
                    continue
                assert y.dtype == np.float32 and y.ndim == 1 and np.isfinite(y).all()

    check()


def _mutate(data: bytes, seed: int, how: str) -> bytes:
    rng = np.random.default_rng(seed)
    buf = bytearray(data)
    if how == "flip":
        for at in rng.integers(0, len(buf), size=int(rng.integers(1, 40))):
            buf[at] = int(rng.integers(0, 256))
        return bytes(buf)
    if how == "truncate":
        return bytes(buf[: int(rng.integers(0, len(buf)))])
    at = int(rng.integers(0, len(buf)))
    return bytes(buf[:at]) + rng.bytes(int(rng.integers(1, 500))) + bytes(buf[at:])


def test_fuzz_front_end():
    pytest.importorskip("hypothesis")
    from hypothesis import given, settings, strategies as st

    front_end = _small_front_end()
    manifest = front_end.manifest
    specials = st.lists(st.tuples(st.floats(0, 1), st.sampled_from([np.nan, np.inf, -np.inf, 3.4e38, -3.4e38, 1e20, 1e-40])),
                        max_size=4)

    @settings(max_examples=40, deadline=None, derandomize=True)
    @given(n=st.one_of(st.integers(1, 4096), st.integers(SR, 3 * SR)), seed=st.integers(0, 2**32 - 1),
           scale=st.sampled_from([0.0, 1e-30, 1e-3, 1.0, 1e4, 1e12, 1e18, 1e30]), specials=specials)
    def check(n, seed, scale, specials):
        y = (np.random.default_rng(seed).standard_normal(n) * scale).astype(np.float32)
        for where, value in specials:
            y[min(n - 1, int(where * n))] = value
        try:
            out = front_end(y)
        except ParameterError:
            assert not np.isfinite(y).all() or np.abs(y).max() > 1e6  # only for non-finite or absurd samples
            return
        for name in front_end.names:
            data = out[name].data  # 10 s windows of two 5 s rows, the last one zero-filled when short
            assert data.shape == (-(-manifest.n_rows(n) // 2),) + tuple(manifest.feature_shapes[name].shape())
            assert data.dtype == np.float32 and np.isfinite(data).all()

    check()


# ===================================================================================== kill and resume
def _predict_cmd(inputs: Path, models: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "birdinfer.cli", "-q", "predict", str(inputs), "--models", str(models), "--out", str(out),
            "--precision", "f32"]


def _env() -> dict:
    return cli_env()


def test_predict_killed_and_resumed_gives_identical_output(small_model_folder, tmp_path):
    from birdinfer.jobs.predict import predict

    audio = tmp_path / "audio"
    for i in range(8):
        write_ogg(audio / f"rec_{i}.ogg", 5.0 + 0.5 * i, seed=60 + i)
    (audio / "rec_broken.ogg").write_bytes(b"OggS" + b"\x01" * 500)
    reference = predict([audio], small_model_folder, tmp_path / "reference.csv", precision="f32", progress=False)

    out = tmp_path / "resumed.csv"
    done_list = out.with_name(out.name + ".parts") / "done.txt"
    proc = subprocess.Popen(_predict_cmd(audio, small_model_folder, out), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        if done_list.is_file() and done_list.read_text().count("\n") >= 1:
            break
        time.sleep(0.02)
    assert proc.poll() is None, f"predict finished or died before it could be killed: {proc.stderr.read()[-2000:]!r}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    finished = done_list.read_text().count("\n")
    assert 1 <= finished < 8 and not out.exists()

    again = subprocess.run(_predict_cmd(audio, small_model_folder, out), env=_env(), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert out.read_bytes() == reference.read_bytes()
    assert out.with_name(out.name + ".errors.csv").read_text() == reference.with_name("reference.csv.errors.csv").read_text()
    assert not done_list.parent.exists()


def test_resume_refuses_parts_from_other_settings(small_model_folder, tmp_path):
    from birdinfer.jobs.predict import predict

    write_ogg(tmp_path / "a.ogg", 5.0, seed=70)
    parts = tmp_path / "o.csv.parts"
    parts.mkdir()
    (parts / "run.json").write_text(json.dumps({"parts_version": 1, "precision": "int8"}))
    with pytest.raises(OutputError, match="--no-resume"):
        predict([tmp_path / "a.ogg"], small_model_folder, tmp_path / "o.csv", precision="f32", progress=False)
    out = predict([tmp_path / "a.ogg"], small_model_folder, tmp_path / "o.csv", precision="f32", progress=False, resume=False)
    assert len(pd.read_csv(out)) == 1


_KILL_WHILE_WRITING = r"""
import os, signal, sys
import pandas as pd
original = pd.DataFrame.to_csv
def half_then_die(self, handle=None, *args, **kwargs):
    text = original(self, None, *args, **kwargs)
    handle.write(text[: len(text) // 2])
    handle.flush()
    os.kill(os.getpid(), signal.SIGKILL)
pd.DataFrame.to_csv = half_then_die
from birdinfer.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_killed_submit_never_leaves_a_partial_submission(small_model_folder, tmp_path):
    """SIGKILL in the middle of writing submission.csv: the file is absent (first run) or the previous
    complete one, byte for byte."""
    audio = tmp_path / "audio"
    write_ogg(audio / "soundscape_0.ogg", 5.0, seed=80)
    out = tmp_path / "submission.csv"
    cmd = [sys.executable, "-c", _KILL_WHILE_WRITING, "-q", "submit", str(audio), "--models", str(small_model_folder),
           "--out", str(out), "--precision", "f32"]

    first = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert first.returncode == -signal.SIGKILL, first.stderr[-3000:]
    leftovers = list(tmp_path.glob(".submission.csv.*.tmp"))
    assert leftovers and 0 < leftovers[0].stat().st_size  # it was killed mid-write ...
    assert not out.exists()  # ... and no submission.csv appeared

    previous = "row_id," + ",".join(LABELS) + "\nsoundscape_0_5," + ",".join(["0.5"] * len(LABELS)) + "\n"
    out.write_text(previous)
    second = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert second.returncode == -signal.SIGKILL, second.stderr[-3000:]
    assert out.read_text() == previous


# ================================================================================= one run per output
@pytest.fixture(scope="module")
def long_audio(tmp_path_factory) -> Path:
    """Eight 60 s recordings: a predict over them runs long enough to start a second one beside it."""
    folder = tmp_path_factory.mktemp("long_audio")
    for i in range(8):
        write_ogg(folder / f"rec_{i}.ogg", 60.0, seed=300 + i)
    return folder


def test_second_predict_on_the_same_output_fails_at_once(long_audio, small_model_folder, tmp_path):
    """Two real processes on one --out: the second fails before any model or audio work, naming the output and
    the first's PID; the first finishes with a complete output (issue 15: the second used to resume the
    first's unfinished parts and die at assembly)."""
    out = tmp_path / "windows.csv"
    lock = out.with_name(out.name + ".lock")
    first = subprocess.Popen(_predict_cmd(long_audio, small_model_folder, out), env=_env(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    try:
        holder = wait_for_lock(lock, first)
        assert holder["host"] and holder["started"] and "predict" in holder["command"]
        started = time.monotonic()
        second = subprocess.run(_predict_cmd(long_audio, small_model_folder, out), env=_env(), capture_output=True,
                                text=True, timeout=300)
        second_seconds = time.monotonic() - started
        assert first.poll() is None, "the first run must still be running while the second is refused"
        assert second.returncode == 2, second.stderr[-3000:]
        assert str(out) in second.stderr and f"PID {first.pid}" in second.stderr, second.stderr
        assert "models loaded" not in second.stderr
        assert first.wait(timeout=900) == 0, first.stderr.read()[-3000:]
    finally:
        stop_process(first)
    frame = pd.read_csv(out)
    assert frame.file.value_counts().to_dict() == {str(long_audio / f"rec_{i}.ogg"): 12 for i in range(8)}
    assert np.isfinite(frame[LABELS].to_numpy()).all()
    assert not lock.exists() and not out.with_name(out.name + ".parts").exists()
    assert not out.with_name(out.name + ".errors.csv").exists()
    print(f"\nsecond run refused after {second_seconds:.1f} s (interpreter start + imports + manifest)")


def test_lock_of_a_killed_run_is_taken_over(long_audio, small_model_folder, tmp_path):
    out = tmp_path / "windows.csv"
    lock = out.with_name(out.name + ".lock")
    files = [long_audio / "rec_0.ogg", long_audio / "rec_1.ogg"]
    listing = tmp_path / "two.txt"
    listing.write_text("\n".join(map(str, files)) + "\n")
    first = subprocess.Popen(_predict_cmd(listing, small_model_folder, out), env=_env(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    wait_for_lock(lock, first)
    first.send_signal(signal.SIGKILL)
    first.wait()
    first.stderr.close()
    assert json.loads(lock.read_text())["pid"] == first.pid  # the crash left its lock file behind
    again = subprocess.run(_predict_cmd(listing, small_model_folder, out), env=_env(), capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"taking over the lock {lock} left by PID {first.pid}" in again.stderr and "no longer running" in again.stderr
    assert len(pd.read_csv(out)) == 24 and not lock.exists()


_HOLD_LOCK = r"""
import sys, time
from birdinfer.io.lock import OutputLock
lock = OutputLock(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(120)
"""


def test_submit_refuses_an_output_another_process_holds(corpus, small_model_folder, tmp_path, no_audio_work, capsys):
    out = tmp_path / "submission.csv"
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(out)], env=_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        code = cli_main(["submit", str(corpus / "clean"), "--models", str(small_model_folder), "--out", str(out)])
        err = capsys.readouterr().err
        assert code == 2 and str(out) in err and f"PID {holder.pid}" in err, err
        assert not out.exists()
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()


# ============================================================================ as a user without privileges
_NO_DECODING = r"""
import sys
import birdinfer.runtime.pipeline as pipeline
def forbidden(*a, **k):
    raise SystemExit("audio was decoded before the fail-fast check")
pipeline.iter_audio_blocks = forbidden
from birdinfer.cli import main
sys.exit(main(sys.argv[1:]))
"""



def test_unreadable_file_is_reported_and_filled_without_privileges(small_model_folder, tmp_path):
    prefix = unprivileged_prefix()
    audio = tmp_path / "audio"
    for i in range(2):
        write_ogg(audio / f"good_{i}.ogg", 10.0, seed=400 + i)
    write_ogg(audio / "locked.ogg", 10.0, seed=402)
    (audio / "locked.ogg").chmod(0)
    try:
        out, report = tmp_path / "submission.csv", tmp_path / "report.json"
        run = subprocess.run(prefix + [sys.executable, "-m", "birdinfer.cli", "-q", "submit", str(audio), "--models",
                                       str(small_model_folder), "--out", str(out), "--report", str(report), "--precision", "f32"],
                             env=_env(), capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stderr[-3000:]
        failed = json.loads(report.read_text())["failed"]
        assert [Path(f["file"]).name for f in failed] == ["locked.ogg"] and "ermission denied" in failed[0]["error"]
        assert "locked.ogg" in run.stderr
        sub = pd.read_csv(out)
        stems = sub.row_id.str.rsplit("_", n=1).str[0]
        good = sub[stems != "locked"][LABELS].to_numpy()
        locked = sub[stems == "locked"][LABELS].to_numpy()
        assert len(good) == 4 and len(locked) >= 1  # its rows are there, filled as for a corrupt file
        np.testing.assert_allclose(locked, np.repeat(good.mean(0, keepdims=True), len(locked), 0), atol=2e-6)
    finally:
        (audio / "locked.ogg").chmod(0o644)


def test_output_folder_without_write_permission_fails_before_audio_work(corpus, small_model_folder, tmp_path):
    prefix = unprivileged_prefix()
    closed = tmp_path / "closed"
    closed.mkdir()
    closed.chmod(0o555)
    try:
        for command in (["submit", str(corpus / "clean")], ["predict", str(corpus / "clean")]):
            out = closed / "result.csv"
            run = subprocess.run(prefix + [sys.executable, "-c", _NO_DECODING, command[0], command[1], "--models",
                                           str(small_model_folder), "--out", str(out)],
                                 env=_env(), capture_output=True, text=True, timeout=600)
            assert run.returncode == 2, (command[0], run.stderr[-3000:])
            assert f"cannot write to {out}" in run.stderr and "ermission denied" in run.stderr, run.stderr
            assert list(closed.iterdir()) == []
    finally:
        closed.chmod(0o755)
