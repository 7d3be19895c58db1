"""``birdinfer predict --audio-speed F``: BirdNET-Analyzer 2.4.0's ``--audio_speed``.

Its rule (``audio.open_audio_file``, ``analyze.utils.iterate_audio_chunks`` and ``generate_raven_table``): the file's
samples (channel mean) are taken as recorded at ``int(rate · speed)`` Hz and resampled from that rate to 48 kHz;
the 3 s windows (and the 1 s a last window needs) are cut from that audio; window k's times are
``k · (3 − overlap) · speed`` and ``min(start + 3 · speed, file duration)``, rounded to 0.01 s; the Raven band is
``max(0, int(fmin / speed))`` to ``min(Nyquist, int(15000 / speed), int(fmax / speed))``.

The tests transcribe that rule with numpy (birdinfer's resampler, soxr HQ, stands in for BirdNET-Analyzer's librosa
``kaiser_fast``, as at speed 1), run the transcribed 48 kHz audio through the same folder at speed 1 and compare
with ``--audio-speed``: same windows, scores within 1e-4, times of the recording. Real recording (the opensoundscape
sample, as a 44.1 kHz file so ``int(rate · speed)`` matters); the model and recording come from ``pip download``.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from birdinfer.cli import main
from birdinfer.io.audio import load_audio

pytest.importorskip("ai_edge_litert", reason="LiteRT (ai-edge-litert, requirements-dev.txt) reads the .tflite model")

from test_birdnet import SAMPLE_MEMBER, _fetched, birdnet_files  # noqa: E402,F401 (a fixture)
from test_birdnet_outputs import analyzer  # noqa: E402,F401 (a fixture: BirdNET-Analyzer's wheel, extracted)

from birdinfer.tools.birdnet_import import import_birdnet  # noqa: E402

RATE = 44100


@pytest.fixture(scope="module")
def folder(birdnet_files, tmp_path_factory):
    out = tmp_path_factory.mktemp("birdnet") / "models"
    import_birdnet(birdnet_files["model"], birdnet_files["labels"], out, check_parity=False)
    return out


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    (sample,) = _fetched("opensoundscape==0.13.2", [SAMPLE_MEMBER])
    path = tmp_path_factory.mktemp("rec") / "warblers.wav"
    y = load_audio(sample, sample_rate=RATE)
    sf.write(path, np.stack([y, 0.5 * y[::-1]], axis=1), RATE, subtype="FLOAT")  # stereo: the mean is read
    return path


def _transcribed(path, speed: float):
    """BirdNET-Analyzer's reading of ``path`` at ``speed``: (48 kHz samples, duration of the file in s)."""
    import soxr

    data, rate = sf.read(path, dtype="float32", always_2d=True)
    y = data.mean(axis=1, dtype=np.float32)
    assumed = int(rate * speed)
    out = soxr.resample(y, assumed, 48000, quality="HQ")
    size = int(math.ceil(len(y) * 48000 / assumed))
    out = out[:size] if len(out) >= size else np.concatenate([out, np.zeros(size - len(out), np.float32)])
    return out.astype(np.float32), len(y) / rate


def _windows(n: int, overlap: float) -> int:
    """BirdNET-Analyzer's ``split_signal`` window count on ``n`` samples at 48 kHz (3 s windows, 1 s minimum)."""
    chunk, step, least = 144000, int(48000 * (3.0 - overlap)), 48000
    last = int((n - chunk + step - 1) / step) * step
    last = 0 if last < 0 else last - step if n - last < least else last
    return last // step + 1


def _stamps(count: int, overlap: float, speed: float, duration: float) -> list[tuple[str, str]]:
    out = []
    for k in range(count):
        start = k * (3.0 - overlap) * speed
        out.append((str(round(start, 2)), str(round(min(start + 3.0 * speed, duration), 2))))
    return out


def _scores(path, folder, out, flags) -> pd.DataFrame:
    assert main(["-q", "predict", str(path), "--models", str(folder), "--out", str(out), "--precision", "f32", *flags]) == 0
    return pd.read_csv(out)


SPEEDS = [(0.5, 0.0), (2.0, 0.0), (0.25, 1.5), (1.7, 1.0)]


@pytest.mark.parametrize("speed,overlap", SPEEDS)
def test_speed_equals_the_transcribed_rule(speed, overlap, folder, recording, tmp_path):
    """Windows, scores (within 1e-4) and per-window times of ``--audio-speed`` equal the transcribed audio's run at
    speed 1, its times × speed; the scores differ from speed 1's."""
    audio, duration = _transcribed(recording, speed)
    sped = tmp_path / "sped.wav"
    sf.write(sped, audio, 48000, subtype="FLOAT")
    ours = _scores(recording, folder, tmp_path / "ours.csv", ["--audio-speed", str(speed), "--overlap", str(overlap)])
    reference = _scores(sped, folder, tmp_path / "ref.csv", ["--overlap", str(overlap)])
    plain = _scores(recording, folder, tmp_path / "plain.csv", ["--overlap", str(overlap)])
    assert len(ours) == len(reference) == _windows(len(audio), overlap) > 1
    gap = np.abs(ours.iloc[:, 3:].to_numpy() - reference.iloc[:, 3:].to_numpy()).max()
    print(f"speed {speed}, overlap {overlap}: {len(ours)} windows, max |Δscore| {gap:.2e}")
    assert gap < 1e-4
    np.testing.assert_allclose(ours["start_s"], reference["start_s"] * speed, rtol=0, atol=1e-6)
    np.testing.assert_allclose(ours["end_s"], reference["end_s"] * speed, rtol=0, atol=1e-6)
    n = min(len(plain), len(ours))
    assert np.abs(plain.iloc[:n, 3:].to_numpy() - ours.iloc[:n, 3:].to_numpy()).max() > 1e-2


@pytest.mark.parametrize("speed,overlap", SPEEDS[:2])
def test_tables_times_and_band_follow_birdnet_analyzer(speed, overlap, folder, recording, tmp_path):
    """BirdNET-Analyzer's tables at ``--audio-speed``: its window times (of the recording, the last one ending at the
    end of the file) and, in Raven tables, its band divided by the speed; the same rows as the transcribed run."""
    audio, duration = _transcribed(recording, speed)
    count = _windows(len(audio), overlap)
    expected = _stamps(count, overlap, speed, duration)
    out = tmp_path / "tables"
    flags = ["--audio-speed", str(speed), "--overlap", str(overlap), "--top-k", "1", "--fmin", "300", "--fmax", "9000"]
    assert main(["-q", "predict", str(recording), "--models", str(folder), "--out", str(out), "--format",
                 "birdnet_csv", "--precision", "f32", *flags]) == 0
    rows = pd.read_csv(out / "warblers.BirdNET.results.csv", dtype=str)
    assert list(zip(rows["Start (s)"], rows["End (s)"])) == expected
    assert expected[-1][1] == str(round(duration, 2))  # the last window ends at the end of the file
    assert main(["-q", "predict", str(recording), "--models", str(folder), "--out", str(out), "--format",
                 "raven", "--precision", "f32", *flags]) == 0
    lines = (out / "warblers.BirdNET.selection.table.txt").read_text(encoding="utf-8").splitlines()[1:]
    high = int(min(RATE / 2, int(15000 / speed), int(9000 / speed)))
    assert [tuple(line.split("\t")[3:7]) for line in lines] == [(s, e, str(int(300 / speed)), str(high))
                                                               for s, e in expected]


def test_values_are_checked_and_a_changed_speed_is_not_resumed(folder, recording, tmp_path, monkeypatch, capsys,
                                                               caplog):
    """Out of range: exit 2 naming the value and the range, before any audio; parts of a run at one speed are refused
    at another (like any changed setting) and resumed at the same."""
    import birdinfer.jobs.predict as job

    out = tmp_path / "o.csv"
    for value in ("0.001", "150", "nan"):
        assert main(["predict", str(recording), "--models", str(folder), "--out", str(out), "--audio-speed", value]) == 2
        err = capsys.readouterr().err
        assert "--audio-speed" in err and value in err and "Traceback" not in err, err
        assert not out.exists() and not (tmp_path / "o.csv.parts").exists()

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(job, "write_output", stop)
        with pytest.raises(KeyboardInterrupt):
            job.predict([recording], folder, out, options={"audio_speed": 0.5}, progress=False)
    assert len(list((tmp_path / "o.csv.parts").glob("*.npy"))) == 1
    assert main(["predict", str(recording), "--models", str(folder), "--out", str(out), "--audio-speed", "2"]) == 2
    err = capsys.readouterr().err
    assert "--no-resume" in err and "Traceback" not in err, err
    caplog.set_level("INFO")
    job.predict([recording], folder, out, options={"audio_speed": 0.5}, progress=False)
    assert "resuming: 1 of 1 recordings already done" in caplog.text
    assert len(pd.read_csv(out)) == _windows(len(_transcribed(recording, 0.5)[0]), 0.0)


def test_a_folder_imported_before_the_option_says_to_import_it_again(folder, recording, tmp_path, capsys):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(folder, old)
    manifest = json.loads((old / "manifest.json").read_text(encoding="utf-8"))
    del manifest["options"]["audio_speed"], manifest["audio_speed"]
    (old / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    assert main(["predict", str(recording), "--models", str(old), "--out", str(tmp_path / "o.csv"),
                 "--audio-speed", "0.5"]) == 2
    err = capsys.readouterr().err
    assert "declares no option 'audio_speed'" in err and "import it again" in err



# ------------------------------------------------------------------------------- against BirdNET-Analyzer itself
ANALYZED = {"speed 0.5": ({"audio_speed": 0.5}, ["--audio-speed", "0.5"]),
            "speed 2, overlap 1.5, band": ({"audio_speed": 2.0, "overlap": 1.5, "fmin": 500, "fmax": 6000},
                                           ["--audio-speed", "2", "--overlap", "1.5", "--fmin", "500", "--fmax", "6000"])}


@pytest.mark.parametrize("setting", list(ANALYZED))
def test_equal_to_birdnet_analyzers_own_run(setting, analyzer, birdnet_files, folder, recording, tmp_path):
    """BirdNET-Analyzer 2.4.0 run with ``audio_speed`` (its librosa resampling set to soxr HQ, birdinfer's resampler:
    its kaiser_fast needs resampy): every window's score within 1e-4, and every table of the four formats (and the
    combined ones) equal to birdinfer's, but for confidences one unit of the 4th decimal apart."""
    from test_birdnet_analysis import _same_but_rounding
    from test_birdnet_outputs import FORMATS, _analyzer, _tables

    settings, flags = ANALYZED[setting]
    inputs = tmp_path / "rec"
    inputs.mkdir()
    (inputs / recording.name).write_bytes(recording.read_bytes())
    scores = tmp_path / "scores.jsonl"
    _analyzer(analyzer, birdnet_files, input=str(inputs), output=str(scores), resample="soxr_hq",
              scores={"overlap": 0.0, **settings})
    expected = [json.loads(line) for line in scores.read_text(encoding="utf-8").splitlines()]
    ours = _scores(inputs, folder, tmp_path / "ours.csv", flags)
    assert len(ours) == len(expected) > 1
    duration = sf.info(recording).duration  # the per-window table's end is start + span; BirdNET clips it to the file
    assert [(s, e) for _, s, e, _ in expected] == [(round(s, 2), round(min(e, duration), 2))
                                                   for s, e in zip(ours["start_s"], ours["end_s"])]
    gap = np.abs(ours.iloc[:, 3:].to_numpy() - np.array([v for *_, v in expected], np.float32)).max()
    print(f"{setting}: {len(ours)} windows, max |score - BirdNET-Analyzer's| {gap:.2e}")
    assert gap < 1e-4

    reference = tmp_path / "birdnet_analyzer"
    options = {"overlap": 0.0, **settings, "min_conf": 0.1, "rtype": list(FORMATS.values()), "combine_results": True}
    _analyzer(analyzer, birdnet_files, input=str(inputs), output=str(reference), resample="soxr_hq", options=options)
    theirs, mine = _tables(reference), {}
    for fmt in FORMATS:
        out = tmp_path / f"birdinfer_{fmt}"
        combine = [] if fmt == "audacity" else ["--combine"]
        assert main(["-q", "predict", str(inputs), "--models", str(folder), "--out", str(out), "--format", fmt,
                     "--precision", "f32", "--min-confidence", "0.1", *flags, *combine]) == 0
        mine.update(_tables(out))
    assert sorted(mine) == sorted(theirs)
    for name in theirs:
        assert mine[name] == theirs[name] or _same_but_rounding(mine[name], theirs[name]), \
            f"{name} differs:\n{mine[name][:800]!r}\n{theirs[name][:800]!r}"


def test_a_rate_too_low_at_this_speed_fails_that_recording_only(folder, tmp_path):
    """A file whose rate × speed is under 1000 Hz is no audio to resample: it fails naming its rates and the flag,
    listed in the errors; the other recordings are computed."""
    rng = np.random.default_rng(7)
    sf.write(tmp_path / "low.wav", rng.normal(0, 0.1, 8000 * 2).astype(np.float32), 8000)
    sf.write(tmp_path / "ok.wav", rng.normal(0, 0.1, 48000 * 4).astype(np.float32), 48000)
    out = tmp_path / "o.csv"
    assert main(["-q", "predict", str(tmp_path / "low.wav"), str(tmp_path / "ok.wav"), "--models", str(folder),
                 "--out", str(out), "--audio-speed", "0.1"]) == 0
    (error,) = out.with_name("o.csv.errors.csv").read_text(encoding="utf-8").splitlines()[1:]
    assert error.startswith(str(tmp_path / "low.wav")) and "8000 Hz are read as 800 Hz" in error and "--audio-speed" in error
    rows = pd.read_csv(out)
    assert set(rows["file"]) == {str(tmp_path / "ok.wav")} and len(rows) == _windows(4 * 480000, 0.0) == 14
