"""BirdNET V2.4's embeddings in ``birdinfer predict --embeddings DIR``: the 1024-d layer before the classifier, one
``<stem>.birdnet.embeddings.txt`` per recording (``start<TAB>end<TAB>v1,...``), from the same run as the detections.

The reference is BirdNET-Analyzer 2.4.0 itself (its wheel run with LiteRT, tests/birdnet_analyzer_run.py): the windows
and vectors its ``embeddings`` command computes (``iterate_audio_chunks(file, embeddings=True)``, the tensor before the
output) must equal birdinfer's, within 1e-4 per value, with the same times as text, on real recordings of odd lengths
(the opensoundscape sample as 48 kHz float WAV, cut to 7.37 s and 1.4 s, and 62.5 s of it streamed in blocks).
Without network, LiteRT or librosa the tests skip, saying why.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import openvino as ov
import pytest
import soundfile as sf

from birdinfer.cli import main
from birdinfer.io.audio import load_audio

litert = pytest.importorskip("ai_edge_litert", reason="LiteRT (ai-edge-litert, requirements-dev.txt) is the reference")

from test_birdnet import SAMPLE_MEMBER, _fetched, birdnet_files  # noqa: E402,F401 (a fixture)
from test_birdnet_outputs import _analyzer, analyzer  # noqa: E402,F401 (a fixture)

import birdinfer.tools.birdnet_import as birdnet_import  # noqa: E402
from birdinfer.jobs.embeddings import EMBEDDINGS_SUFFIX  # noqa: E402
from birdinfer.spec.manifest import Manifest  # noqa: E402

SUFFIX = EMBEDDINGS_SUFFIX


@pytest.fixture(scope="module")
def folder(birdnet_files, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("birdnet") / "models"
    birdnet_import.import_birdnet(birdnet_files["model"], birdnet_files["labels"], out)
    return out


@pytest.fixture(scope="module")
def recordings(tmp_path_factory) -> Path:
    """Real audio of odd lengths in a folder tree; a 0.8 s file gets no window (BirdNET's 1 s minimum)."""
    (sample,) = _fetched("opensoundscape==0.13.2", [SAMPLE_MEMBER])
    y = load_audio(sample, sample_rate=48000)
    root = tmp_path_factory.mktemp("recordings") / "rec"
    (root / "sub").mkdir(parents=True)
    sf.write(root / "sub" / "warblers.wav", y, 48000, subtype="FLOAT")
    sf.write(root / "odd.wav", y[: int(7.37 * 48000)], 48000, subtype="FLOAT")
    sf.write(root / "short.wav", y[48000 * 2 : int(3.4 * 48000)], 48000, subtype="FLOAT")
    sf.write(root / "tiny.wav", y[: int(0.8 * 48000)], 48000, subtype="FLOAT")
    long = np.concatenate([y, y[::-1], y[len(y) // 3 :], y, y[: len(y) // 2], y, y])  # 62.5 s
    sf.write(root / "sub" / "long.wav", long, 48000, subtype="FLOAT")
    return root


def _read(path: Path) -> list[tuple[str, str, np.ndarray]]:
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        start, end, values = line.split("\t")
        out.append((start, end, np.array([float(v) for v in values.split(",")], np.float32)))
    return out


def _ours(out: Path) -> dict[str, list]:
    return {p.relative_to(out).as_posix(): _read(p) for p in sorted(out.rglob("*" + SUFFIX))}


def test_import_keeps_the_embedding_output_checked_against_litert(folder):
    """The IR's second output is the embedding (1024 wide, kind ``embedding``), checksummed with the IR, and the
    import's parity check compares it with LiteRT's tensor."""
    manifest = Manifest.load(folder)
    assert [(o["name"], o["kind"], o.get("shape")) for o in manifest.raw["models"][0]["outputs"]] == [
        ("logits", "clip_logits", [-1, 6522]), ("embedding", "embedding", [-1, 1024])]
    model = ov.Core().read_model(str(folder / "birdnet_v24.xml"))
    assert [o.get_partial_shape()[1].get_length() for o in model.outputs] == [6522, 1024]
    parity = manifest.extra["parity_vs_litert"]
    assert parity["max_abs_embedding"] <= 1e-4 and parity["max_abs_score"] <= 1e-4
    assert {"birdnet_v24.xml", "birdnet_v24.bin"} <= set(manifest.files)


@pytest.mark.parametrize("overlap", [0.0, 1.5])
def test_embeddings_equal_birdnet_analyzers(overlap, analyzer, birdnet_files, folder, recordings, tmp_path):
    """Same files (one per recording with windows), same windows and times, every value within 1e-4 of
    BirdNET-Analyzer 2.4.0's; the detections of the same run equal a run without embeddings."""
    reference = tmp_path / "reference.jsonl"
    _analyzer(analyzer, birdnet_files, input=str(recordings), output=str(reference), embeddings={"overlap": overlap})
    expected: dict[str, list] = {}
    for line in reference.read_text(encoding="utf-8").splitlines():
        path, start, end, values = json.loads(line)
        name = Path(path).relative_to(recordings).with_suffix("").as_posix() + SUFFIX
        expected.setdefault(name, []).append((str(start), str(end), np.array(values, np.float32)))
    emb, table, plain = tmp_path / "emb", tmp_path / "with.csv", tmp_path / "without.csv"
    flags = ["--overlap", str(overlap), "--precision", "f32"]
    assert main(["-q", "predict", str(recordings), "--models", str(folder), "--out", str(table), "--embeddings",
                 str(emb), *flags]) == 0
    ours = _ours(emb)
    assert sorted(expected) == ["odd" + SUFFIX, "short" + SUFFIX, "sub/long" + SUFFIX, "sub/warblers" + SUFFIX]
    assert ours.pop("tiny" + SUFFIX) == []  # under 1 s: no window, an empty file
    assert sorted(ours) == sorted(expected)
    worst = 0.0
    for name, lines in expected.items():
        assert [(s, e) for s, e, _ in ours[name]] == [(s, e) for s, e, _ in lines], name
        for (_, _, a), (_, _, b) in zip(ours[name], lines):
            assert a.shape == b.shape == (1024,)
            worst = max(worst, float(np.abs(a - b).max()))
    assert worst <= 1e-4, worst
    print(f"overlap {overlap}: max abs difference {worst:.3g} over {sum(map(len, expected.values()))} windows")
    assert float(expected["sub/long" + SUFFIX][-1][0]) >= 60.0  # windows in the second 60 s block (streamed)
    vectors = np.stack([v for lines in expected.values() for _, _, v in lines])
    assert vectors.std(axis=0).max() > 0.1 and (vectors > 0).mean() > 0.3  # real, varied vectors compared
    assert main(["-q", "predict", str(recordings), "--models", str(folder), "--out", str(plain), *flags]) == 0
    assert table.read_bytes() == plain.read_bytes()


def test_a_run_stopped_before_writing_resumes_without_computing(folder, recordings, tmp_path, monkeypatch, caplog,
                                                                capsys):
    """Killed after every recording's part is journalled (scores and embeddings together), a run started again
    computes nothing and writes what a fresh run writes; a run asking for embeddings does not reuse parts without."""
    import birdinfer.jobs.predict as job

    out, emb = tmp_path / "tables", tmp_path / "emb"

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(job, "write_embeddings", stop)
        with pytest.raises(KeyboardInterrupt):
            job.predict(recordings, folder, out, format="birdnet_csv", embeddings=emb, progress=False)
    assert len(list((tmp_path / "tables.parts").glob("*.npy"))) == 5 and not list(emb.rglob("*" + SUFFIX))
    caplog.set_level("INFO")
    job.predict(recordings, folder, out, format="birdnet_csv", embeddings=emb, progress=False)
    assert "resuming: 5 of 5 recordings already done" in caplog.text
    fresh, fresh_emb = tmp_path / "fresh", tmp_path / "fresh_emb"
    job.predict(recordings, folder, fresh, format="birdnet_csv", embeddings=fresh_emb, progress=False)
    assert {p.relative_to(emb): p.read_bytes() for p in emb.rglob("*" + SUFFIX)} == {
        p.relative_to(fresh_emb): p.read_bytes() for p in fresh_emb.rglob("*" + SUFFIX)}
    assert sorted(p.name for p in out.rglob("*.csv")) == sorted(p.name for p in fresh.rglob("*.csv"))

    with monkeypatch.context() as patch:
        patch.setattr(job, "write_output", stop)
        with pytest.raises(KeyboardInterrupt):
            job.predict(recordings, folder, tmp_path / "o.csv", progress=False)
    assert main(["predict", str(recordings), "--models", str(folder), "--out", str(tmp_path / "o.csv"),
                 "--embeddings", str(tmp_path / "e")]) == 2  # parts without embeddings: refused, says --no-resume
    err = capsys.readouterr().err
    assert "(differing: embeddings)" in err and "--no-resume" in err and "Traceback" not in err


def test_a_folder_imported_before_embeddings_says_to_import_again(birdnet_files, recordings, tmp_path, monkeypatch,
                                                                  capsys):
    """A BirdNET folder written before the embedding output (its graph has one output) still predicts; asked for
    embeddings it stops before any audio, saying to import it again."""
    real_ir, real_spec = birdnet_import.network_ir, birdnet_import.birdnet_spec

    def one_output_ir(path, found):
        model = real_ir(path, found)
        model.remove_result(model.get_results()[1])
        return model

    def one_output_spec(*args, **kwargs):
        spec = real_spec(*args, **kwargs)
        spec["models"][0]["outputs"] = [{"name": "logits", "kind": "clip_logits"}]
        return spec

    old = tmp_path / "old"
    with monkeypatch.context() as patch:
        patch.setattr(birdnet_import, "network_ir", one_output_ir)
        patch.setattr(birdnet_import, "birdnet_spec", one_output_spec)
        birdnet_import.import_birdnet(birdnet_files["model"], birdnet_files["labels"], old, check_parity=False)
    assert len(ov.Core().read_model(str(old / "birdnet_v24.xml")).outputs) == 1
    audio = recordings / "odd.wav"
    assert main(["-q", "predict", str(audio), "--models", str(old), "--out", str(tmp_path / "a.csv")]) == 0
    capsys.readouterr()
    out = tmp_path / "b.csv"
    assert main(["predict", str(audio), "--models", str(old), "--out", str(out), "--embeddings", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err
    assert "imported before birdinfer kept BirdNET's embedding" in err and "import it again" in err and str(old) in err
    assert "Traceback" not in err and not out.exists() and not (tmp_path / "b.csv.parts").exists()


def test_embeddings_refused_where_there_are_none(small_v2_folder, folder, recordings, tmp_path, capsys):
    """A folder without an embedding output (on either engine) and an embeddings path that is a file: exit 2, one
    sentence, before any audio."""
    audio = recordings / "odd.wav"
    cases = [([str(small_v2_folder)], "no model of this folder gives an embedding output"),
             ([str(folder)], "is a file; give a folder"),
             ([str(small_v2_folder), "--engine", "ray"], "no model of this folder gives an embedding output")]
    taken = tmp_path / "taken.txt"
    taken.write_text("x", encoding="utf-8")
    for (models, *flags), message in cases:
        target = taken if "file" in message else tmp_path / "emb"
        assert main(["predict", str(audio), "--models", models, "--out", str(tmp_path / "o.csv"), "--embeddings",
                     str(target), *flags]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
        assert not (tmp_path / "o.csv.parts").exists()
    shutil.rmtree(tmp_path / "emb", ignore_errors=True)


@pytest.mark.parametrize("at", ["a part", "an embeddings file"])
def test_a_killed_run_loses_nothing(at, folder, recordings, tmp_path):
    """A real run SIGKILLed while renaming the third recording's part into the journal, or the third recording's
    embeddings file into place: started again, it computes only what was not journalled, sweeps the killed write's
    temporary file, and writes the same files as an uninterrupted run."""
    from test_faults_resume import _SIGNAL_AT_RENAME, _env

    from birdinfer.jobs.predict import collect_inputs

    out, emb = tmp_path / "o.csv", tmp_path / "emb"
    third = collect_inputs(recordings)[2]
    assert third.relative == "sub/long.wav"
    target = (out.with_name("o.csv.parts") / f"{third.key}.npy") if at == "a part" else emb / ("sub/long" + SUFFIX)
    args = ["predict", str(recordings), "--models", str(folder), "--out", str(out), "--embeddings", str(emb)]
    killed = subprocess.run([sys.executable, "-c", _SIGNAL_AT_RENAME, str(target), "SIGKILL", *args], env=_env(),
                            capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert out.exists() is (at != "a part") and not target.exists()  # the table is written before the embeddings
    done = subprocess.run([sys.executable, "-m", "birdinfer.cli", *args], env=_env(), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert f"resuming: {2 if at == 'a part' else 5} of 5 recordings already done" in done.stderr
    assert not [p for p in tmp_path.rglob("*.tmp")]
    fresh, fresh_emb = tmp_path / "fresh.csv", tmp_path / "fresh_emb"
    assert main(["-q", "predict", str(recordings), "--models", str(folder), "--out", str(fresh), "--embeddings",
                 str(fresh_emb)]) == 0
    files = {p.relative_to(emb): p.read_bytes() for p in emb.rglob("*" + SUFFIX)}
    assert files == {p.relative_to(fresh_emb): p.read_bytes() for p in fresh_emb.rglob("*" + SUFFIX)} and len(files) == 5
    assert out.read_bytes() == fresh.read_bytes()
