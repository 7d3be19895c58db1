"""BirdNET-Analyzer's outputs and species filters in ``birdinfer predict``: its CSV, Audacity, Kaleidoscope and
Raven tables, ``--min-confidence``, ``--top-k``, ``--species-list`` and the location meta model
(``--lat --lon --week``; ``birdinfer species``).

The reference is BirdNET-Analyzer itself: its PyPI wheel (``birdnet-analyzer==2.4.0``, fetched with ``pip
download --no-deps`` into the test cache as tests/test_birdnet.py fetches the model) is run on the same
recordings with LiteRT (tests/birdnet_analyzer_run.py), and every table file it writes must equal birdinfer's
byte for byte. The recordings are 48 kHz float WAV files (so both read the same samples: BirdNET-Analyzer
resamples with librosa, birdinfer with its own resampler): the opensoundscape sample resampled once, and
5 s of silence, in a folder tree. Without network, LiteRT or librosa the tests skip, saying why.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from birdinfer.cli import main
from birdinfer.errors import ChecksumError, ModelFolderError, ParameterError
from birdinfer.io.audio import load_audio
from birdinfer.io.detections import Selection, audacity_text, birdnet_csv_text, mask_scores, select, window_stamps
from birdinfer.spec.manifest import Manifest

litert = pytest.importorskip("ai_edge_litert", reason="LiteRT (ai-edge-litert, requirements-dev.txt) is the reference")

from test_birdnet import CACHE, SAMPLE_MEMBER, _fetched, _tiny_tflite, birdnet_files  # noqa: E402,F401 (a fixture)

from birdinfer.jobs.species import location_species  # noqa: E402
from birdinfer.tools.birdnet_import import import_birdnet  # noqa: E402
from birdinfer.tools.wheel_audio import FetchError, wheel_file  # noqa: E402

ANALYZER = "birdnet-analyzer==2.4.0"
DRIVER = Path(__file__).with_name("birdnet_analyzer_run.py")
FORMATS = {"birdnet_csv": "csv", "audacity": "audacity", "kaleidoscope": "kaleidoscope", "raven": "table"}
PLACES = [(42.45, -76.48, 20), (52.52, 13.40, -1), (-33.92, 18.42, 1), (35.68, 139.69, 12), (0.0, 0.0, 48),
          (64.15, -21.94, 27), (-3.47, -62.37, 33)]


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def analyzer() -> Path:
    """The folder holding BirdNET-Analyzer's package ``birdnet_analyzer/`` (its wheel, extracted once)."""
    pytest.importorskip("librosa", reason="BirdNET-Analyzer reads audio with librosa")
    folder = CACHE / ANALYZER.replace("==", "-")
    if not (folder / "birdnet_analyzer" / "analyze" / "utils.py").is_file():
        try:
            wheel_path = wheel_file(ANALYZER, CACHE)
        except FetchError as e:
            pytest.skip(str(e))
        with zipfile.ZipFile(wheel_path) as wheel:
            wheel.extractall(folder, [m for m in wheel.namelist() if m.startswith("birdnet_analyzer/")])
    return folder


@pytest.fixture(scope="module")
def folder(birdnet_files, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("birdnet") / "models"
    import_birdnet(birdnet_files["model"], birdnet_files["labels"], out, meta_model=birdnet_files["meta"])
    return out


@pytest.fixture(scope="module")
def recordings(tmp_path_factory) -> Path:
    (sample,) = _fetched("opensoundscape==0.13.2", [SAMPLE_MEMBER])
    root = tmp_path_factory.mktemp("recordings") / "rec"
    (root / "sub").mkdir(parents=True)
    sf.write(root / "sub" / "warblers.wav", load_audio(sample, sample_rate=48000), 48000, subtype="FLOAT")
    sf.write(root / "silence.wav", np.zeros(5 * 48000, np.float32), 48000, subtype="FLOAT")
    return root


def _analyzer(analyzer: Path, files: dict, **args) -> subprocess.CompletedProcess:
    run = {"package_root": str(analyzer), "model": str(files["model"]), "labels": str(files["labels"]),
           "meta": str(files["meta"]), "codes": False, **args}
    done = subprocess.run([sys.executable, str(DRIVER), json.dumps(run)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def _tables(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != "BirdNET_analysis_params.csv"}


# ------------------------------------------------------------------------- the formats, against BirdNET-Analyzer
SETTINGS = {
    "overlap 1.5, min_conf 0.1": ({"overlap": 1.5, "min_conf": 0.1}, ["--overlap", "1.5", "--min-confidence", "0.1"]),
    "defaults": ({}, []),
    "top 3, sensitivity 1.25": ({"top_n": 3, "sensitivity": 1.25}, ["--top-k", "3", "--sensitivity", "1.25"]),
    "location, overlap 0.5": ({"lat": 42.45, "lon": -76.48, "week": 20, "min_conf": 0.05, "overlap": 0.5},
                              ["--lat", "42.45", "--lon", "-76.48", "--week", "20", "--min-confidence", "0.05",
                               "--overlap", "0.5"]),
    "species list": ({"slist": "LIST", "min_conf": 0.02}, ["--species-list", "LIST", "--min-confidence", "0.02"]),
}


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_tables_equal_birdnet_analyzers(setting, analyzer, birdnet_files, folder, recordings, tmp_path):
    """Every table BirdNET-Analyzer writes for the folder of recordings, in all four formats, equals birdinfer's
    byte for byte (same names below the output folder, same rows, same number formatting)."""
    options, flags = SETTINGS[setting]
    species = tmp_path / "species_list.txt"
    species.write_text("Setophaga fusca_Blackburnian Warbler\nLeiothlypis peregrina_Tennessee Warbler\n"
                       "Setophaga castanea_Bay-breasted Warbler\nTurdus migratorius_American Robin\n", encoding="utf-8")
    options = {"overlap": 0.0, **{k: (str(species) if v == "LIST" else v) for k, v in options.items()}}  # as its CLI
    # passes it (a float: Kaleidoscope's overlap column reads 0.0; its Python API's default is the integer 0)
    flags = [str(species) if f == "LIST" else f for f in flags]
    reference = tmp_path / "birdnet_analyzer"
    _analyzer(analyzer, birdnet_files, input=str(recordings), output=str(reference),
              options={**options, "rtype": list(FORMATS.values()), "combine_results": True})
    expected = _tables(reference)
    ours: dict[str, bytes] = {}
    for fmt in FORMATS:
        out = tmp_path / f"birdinfer_{fmt}"
        combine = [] if fmt == "audacity" else ["--combine"]  # BirdNET-Analyzer combines no Audacity labels
        assert main(["-q", "predict", str(recordings), "--models", str(folder), "--out", str(out), "--format", fmt,
                     "--precision", "f32", *flags, *combine]) == 0
        ours.update(_tables(out))
    assert sorted(ours) == sorted(expected) and len(expected) == 8 + 4  # 2 recordings × 4 formats, 4 combined files
    for name in expected:
        assert ours[name] == expected[name], f"{name} differs:\n{ours[name][:600]!r}\n{expected[name][:600]!r}"
    raven = expected["silence.BirdNET.selection.table.txt"].decode()
    if "top_n" not in options:  # silence: no detection, BirdNET-Analyzer's single "nocall" row
        assert raven.count("\n") == 2 and "\tnocall\tnocall\t1.0\t" in raven
    warblers = expected["sub/warblers.BirdNET.results.csv"].decode().splitlines()
    assert len(warblers) > 2  # real detections compared, not only headers
    combined = expected["BirdNET_SelectionTable.txt"].decode().splitlines()
    assert any(float(line.split("\t")[3]) > 5.0 for line in combined[1:])  # the second recording, shifted by 5 s


def test_raven_species_codes_equal_birdnet_analyzers(analyzer, birdnet_files, folder, recordings, tmp_path):
    """With BirdNET-Analyzer's own eBird code table (``--species-codes``) the Raven tables, combined too, equal the
    ones it writes with that table."""
    codes = sorted((analyzer / "birdnet_analyzer").glob("eBird_taxonomy_codes_*.json"))[-1]
    reference = tmp_path / "birdnet_analyzer"
    _analyzer(analyzer, birdnet_files, input=str(recordings), output=str(reference), codes=True,
              options={"overlap": 0.0, "min_conf": 0.1, "rtype": ["table"], "combine_results": True})
    out = tmp_path / "birdinfer"
    assert main(["-q", "predict", str(recordings), "--models", str(folder), "--out", str(out), "--format", "raven",
                 "--min-confidence", "0.1", "--species-codes", str(codes), "--combine"]) == 0
    expected = _tables(reference)
    assert _tables(out) == expected and len(expected) == 4
    assert "\tTennessee Warbler\ttenwar\t" in expected["sub/warblers.BirdNET.selection.table.txt"].decode()


# ------------------------------------------------------------------------------------ the meta model
def test_species_lists_equal_birdnet_analyzers(analyzer, birdnet_files, folder, capsys):
    """The species list of the meta model (OpenVINO, in the folder) equals BirdNET-Analyzer's (LiteRT) for 7 places
    and weeks, in the same order; also for another threshold, and through ``birdinfer species``."""
    manifest = Manifest.load(folder)
    for threshold in (0.03, 0.1):
        done = _analyzer(analyzer, birdnet_files, places=PLACES, sf_thresh=threshold)
        expected = json.loads(done.stdout.strip().splitlines()[-1])
        for (lat, lon, week), names in zip(PLACES, expected):
            ours = location_species(manifest, lat, lon, week, threshold)
            assert ours == names and len(names) > 10, (lat, lon, week, threshold)
    lat, lon, week = PLACES[0]
    assert main(["species", "--models", str(folder), "--lat", str(lat), "--lon", str(lon), "--week", str(week)]) == 0
    assert capsys.readouterr().out.splitlines() == location_species(manifest, lat, lon, week)


def test_meta_model_is_in_the_folder_and_checksummed(folder, birdnet_files, tmp_path):
    manifest = Manifest.load(folder)
    entry = manifest.extra["meta_model"]
    assert entry["openvino"] == "birdnet_meta.xml" and entry["source"]["file"] == birdnet_files["meta"].name
    assert {"birdnet_meta.xml", "birdnet_meta.bin"} <= set(manifest.files)
    copy = tmp_path / "models"
    shutil.copytree(folder, copy)
    data = bytearray((copy / "birdnet_meta.bin").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / "birdnet_meta.bin").write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match="birdnet_meta.bin"):
        location_species(Manifest.load(copy), 42.45, -76.48, 20)


def test_bad_meta_models_are_refused_before_the_import(birdnet_files, tmp_path, capsys):
    out, tiny = tmp_path / "models", tmp_path / "tiny.tflite"
    _tiny_tflite(tiny)  # a valid TFLite graph, input [-1, 10], output [-1, 3]
    with pytest.raises(ModelFolderError, match=r"not BirdNET's meta model for these 6522 labels .*expected one input \[-1, 3\]"):
        import_birdnet(birdnet_files["model"], birdnet_files["labels"], out, meta_model=tiny)
    with pytest.raises(ModelFolderError, match="not BirdNET's meta model: OpenVINO cannot read it"):
        import_birdnet(birdnet_files["model"], birdnet_files["labels"], out, meta_model=birdnet_files["model"])
    assert not out.exists()
    assert main(["import", str(birdnet_files["model"]), "--labels", str(birdnet_files["labels"]), "--out", str(out),
                 "--meta-model", str(tmp_path / "missing.tflite")]) == 2
    assert "missing.tflite is not a file" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ refused settings
@pytest.mark.parametrize("flags, message", [
    (["--lat", "95", "--lon", "10"], "--lat 95 is not a latitude"),
    (["--lat", "45", "--lon", "-190"], "--lon -190 is not a longitude"),
    (["--lat", "45", "--lon", "10", "--week", "49"], "--week 49"),
    (["--lat", "45", "--lon", "10", "--week", "0"], "--week 0"),
    (["--lat", "45"], "needs both --lat and --lon"),
    (["--week", "12"], "--week go with a location"),
    (["--lat", "45", "--lon", "10", "--sf-thresh", "1.5"], "--sf-thresh 1.5"),
    (["--lat", "45", "--lon", "10", "--species-list", "LIST"], "not both"),
    (["--species-list", "LIST_BAD"], "line 2: 'Turdus merula_Eurasian Blackbrid' is not a label"),
    (["--species-list", "MISSING"], "cannot read the species list"),
    (["--top-k", "0"], "--top-k must be a whole number >= 1"),
    (["--top-k", "7000"], "more than the folder's 6522 labels"),
    (["--min-confidence", "1.5"], "--min-confidence must be a probability"),
    (["--top-k", "2", "--min-confidence", "0.5"], "not both"),
    (["--threshold", "0.3", "--min-confidence", "0.5"], "give one"),
    (["--combine", "--format", "audacity"], "not --format audacity"),
    (["--species-codes", "LIST"], "goes with --format raven"),
    (["--species-codes", "LIST", "--format", "raven"], "cannot read the species codes"),
])
def test_bad_settings_fail_before_any_audio(flags, message, folder, tmp_path, capsys):
    """Each bad value ends with exit 2 and one sentence naming it, before any audio is read: no journal, no output."""
    good, bad = tmp_path / "good.txt", tmp_path / "bad.txt"
    good.write_text("Turdus merula_Eurasian Blackbird\n", encoding="utf-8")
    bad.write_text("Turdus merula_Eurasian Blackbird\nTurdus merula_Eurasian Blackbrid\n", encoding="utf-8")
    names = {"LIST": str(good), "LIST_BAD": str(bad), "MISSING": str(tmp_path / "none.txt")}
    audio = tmp_path / "a.wav"
    sf.write(audio, np.zeros(48000 * 4, np.float32), 48000)
    out = tmp_path / "out"
    code = main(["predict", str(audio), "--models", str(folder), "--out", str(out), "--format", "birdnet_csv",
                 *[names.get(f, f) for f in flags]])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert not out.exists() and not (tmp_path / "out.parts").exists()
    if "LIST_BAD" in flags:
        assert "closest label is 'Turdus merula_Eurasian Blackbird'" in err and str(bad) in err


def test_a_folder_without_meta_model_says_how_to_add_one(birdnet_files, tmp_path, capsys):
    plain = tmp_path / "plain"
    import_birdnet(birdnet_files["model"], birdnet_files["labels"], plain, check_parity=False)
    audio = tmp_path / "a.wav"
    sf.write(audio, np.zeros(48000 * 4, np.float32), 48000)
    assert main(["predict", str(audio), "--models", str(plain), "--out", str(tmp_path / "o.csv"), "--lat", "1",
                 "--lon", "2"]) == 2
    assert "no location meta model" in capsys.readouterr().err
    with pytest.raises(ParameterError, match="--meta-model"):
        location_species(Manifest.load(plain), 1.0, 2.0)


def test_ray_refuses_what_it_cannot_write(folder, tmp_path, capsys):
    """--engine ray writes tables from its shards (tests/test_ray_tables.py); a filter without a table format, or one
    csv file, it refuses naming the flag and --engine local."""
    audio = tmp_path / "a.wav"
    sf.write(audio, np.zeros(48000 * 4, np.float32), 48000)
    for flags in (["--format", "csv"], ["--min-confidence", "0.2"], ["--species-list", str(audio)]):
        assert main(["predict", str(audio), "--models", str(folder), "--out", str(tmp_path / "o"), "--engine", "ray",
                     *flags]) == 2
        err = capsys.readouterr().err
        assert flags[0] in err and "--engine local" in err and "Traceback" not in err, err


# ------------------------------------------------------------------------------ the per-window table, resume
def test_per_window_table_filters(folder, recordings, tmp_path):
    """csv: every score by default; --species-list keeps those columns; --min-confidence / --top-k zero the rest."""
    audio = recordings / "sub" / "warblers.wav"
    full, kept, top = tmp_path / "full.csv", tmp_path / "kept.csv", tmp_path / "top.csv"
    species = tmp_path / "list.txt"
    species.write_text("Setophaga fusca_Blackburnian Warbler\nLeiothlypis peregrina_Tennessee Warbler\n", encoding="utf-8")
    assert main(["-q", "predict", str(audio), "--models", str(folder), "--out", str(full)]) == 0
    assert main(["-q", "predict", str(audio), "--models", str(folder), "--out", str(kept), "--species-list",
                 str(species), "--min-confidence", "0.3"]) == 0
    assert main(["-q", "predict", str(audio), "--models", str(folder), "--out", str(top), "--top-k", "2"]) == 0
    a, b, c = pd.read_csv(full), pd.read_csv(kept), pd.read_csv(top)
    assert a.shape[1] == 3 + 6522 and (a.iloc[:, 3:].to_numpy() > 0).all()
    columns = ["Leiothlypis peregrina_Tennessee Warbler", "Setophaga fusca_Blackburnian Warbler"]  # label order
    assert list(b.columns) == ["file", "start_s", "end_s", *columns]
    scores = a[columns].to_numpy()
    np.testing.assert_array_equal(b[columns].to_numpy(), np.where(scores >= np.float32(0.3), scores, 0.0))
    assert ((b[columns] > 0).sum().sum()) > 0
    values = c.iloc[:, 3:].to_numpy()
    assert ((values > 0).sum(axis=1) == 2).all()
    best = np.sort(a.iloc[:, 3:].to_numpy(), axis=1)[:, -2:]
    np.testing.assert_array_equal(np.sort(values, axis=1)[:, -2:], best)


def test_filters_apply_to_the_output_not_the_parts(folder, recordings, tmp_path, monkeypatch, caplog):
    """A run stopped before its output is written resumes under other filters and another format without
    computing anything again: the journal holds every score; the output equals a fresh run's."""
    import birdinfer.jobs.predict as job

    out = tmp_path / "tables"

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(job, "write_output", stop)
        with pytest.raises(KeyboardInterrupt):
            job.predict(recordings, folder, out, format="birdnet_csv", min_confidence=0.5, progress=False)
    assert len(list((tmp_path / "tables.parts").glob("*.npy"))) == 2
    caplog.set_level("INFO")
    job.predict(recordings, folder, out, format="birdnet_csv", top_k=2, progress=False)
    assert "resuming: 2 of 2 recordings already done" in caplog.text
    fresh = tmp_path / "fresh"
    job.predict(recordings, folder, fresh, format="birdnet_csv", top_k=2, progress=False)
    assert _tables(out) == _tables(fresh) and len(_tables(out)) == 2


# ------------------------------------------------------------------------------ the formats on any labels
def test_detection_texts_for_labels_without_an_underscore():
    """Folders whose labels are not ``Scientific_Common``: the label is both names (as BirdNET-Analyzer splits)."""
    labels = ["sp00", "sp01", "Parus major_Great Tit"]
    probs = np.array([[0.2, 0.9, 0.5], [0.05, 0.01, 0.02]], np.float32)
    found = select(probs, Selection(min_confidence=0.1))
    assert found == [[(1, pytest.approx(0.9)), (2, pytest.approx(0.5)), (0, pytest.approx(0.2))], []]
    stamps = window_stamps(2, 5.0, 5.0, duration_s=7.25)
    assert stamps == [("0.0", "5.0"), ("5.0", "7.25")]
    assert birdnet_csv_text("a,b.wav", found, stamps, labels).splitlines() == [
        "Start (s),End (s),Scientific name,Common name,Confidence,File",
        '0.0,5.0,sp01,sp01,0.9000,"a,b.wav"', '0.0,5.0,Parus major,Great Tit,0.5000,"a,b.wav"',
        '0.0,5.0,sp00,sp00,0.2000,"a,b.wav"']
    assert audacity_text(found, stamps, labels).splitlines()[1] == "0.0\t5.0\tParus major, Great Tit\t0.5000"
    assert select(probs, Selection(top_k=1, allowed=np.array([True, False, True]))) == [
        [(2, pytest.approx(0.5))], [(0, pytest.approx(0.05))]]
    masked = mask_scores(probs, Selection(top_k=1))
    np.testing.assert_array_equal(masked, np.array([[0, 0.9, 0], [0.05, 0, 0]], np.float32))
