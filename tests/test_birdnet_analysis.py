"""BirdNET-Analyzer's remaining analysis options in ``birdinfer predict``: ``--merge-consecutive`` (its
``--merge_consecutive``), ``--fmin`` / ``--fmax`` (its bandpass filter) and ``--locale`` (its translated common
names).

The reference is BirdNET-Analyzer 2.4.0 itself, run with LiteRT on the same recordings as in
tests/test_birdnet_outputs.py (tests/birdnet_analyzer_run.py): every table it writes must equal birdinfer's byte
for byte. The recordings are real (the opensoundscape sample, 10 s, and 31 s built from it), written as 48 kHz
float WAV files so both read the same samples. Without network, LiteRT or librosa the tests skip, saying why.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from birdinfer.cli import main
from birdinfer.errors import ChecksumError, ParameterError
from birdinfer.io.audio import load_audio
from birdinfer.io.detections import merge_consecutive
from birdinfer.jobs.outputs import locale_names
from birdinfer.spec.manifest import Manifest

litert = pytest.importorskip("ai_edge_litert", reason="LiteRT (ai-edge-litert, requirements-dev.txt) is the reference")

from test_birdnet import SAMPLE_MEMBER, _fetched, birdnet_files  # noqa: E402,F401 (a fixture)
from test_birdnet_outputs import FORMATS, _analyzer, _tables, analyzer  # noqa: E402,F401 (a fixture)

from birdinfer.tools.birdnet_import import import_birdnet  # noqa: E402
from birdinfer.tools.birdnet_labels import add_translated_labels  # noqa: E402


@pytest.fixture(scope="module")
def folder(birdnet_files, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("birdnet") / "models"
    import_birdnet(birdnet_files["model"], birdnet_files["labels"], out, check_parity=False)
    return out


@pytest.fixture(scope="module")
def recordings(tmp_path_factory) -> Path:
    (sample,) = _fetched("opensoundscape==0.13.2", [SAMPLE_MEMBER])
    y = load_audio(sample, sample_rate=48000)
    root = tmp_path_factory.mktemp("recordings") / "rec"
    (root / "sub").mkdir(parents=True)
    sf.write(root / "sub" / "warblers.wav", y, 48000, subtype="FLOAT")
    long = np.concatenate([y, y[::-1], y[len(y) // 3 :], y[: len(y) // 2]])  # 31.7 s
    sf.write(root / "long.wav", long, 48000, subtype="FLOAT")
    return root


def _same_but_rounding(ours: bytes, expected: bytes) -> bool:
    """Raven or CSV tables equal but for confidences 0.0001 apart (a score within 1e-4 rounding the other way)."""
    a, b = ours.decode().splitlines(), expected.decode().splitlines()
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        sep = "\t" if "\t" in y else ","
        cells_x, cells_y = x.split(sep), y.split(sep)
        at = 9 if sep == "\t" else 4  # the Confidence column
        if len(cells_x) != len(cells_y) or cells_x[:at] + cells_x[at + 1 :] != cells_y[:at] + cells_y[at + 1 :]:
            return False
        if cells_x[at] != cells_y[at] and abs(float(cells_x[at]) - float(cells_y[at])) > 0.0001 + 1e-9:
            return False
    return True


def _compare(analyzer, birdnet_files, folder, recordings, tmp_path, options: dict, flags: list[str],
             formats=tuple(FORMATS), rounding: bool = False) -> dict[str, bytes]:
    """BirdNET-Analyzer's tables (and combined ones) for ``options`` against birdinfer's with ``flags``: byte for
    byte, or with ``rounding`` equal but for confidences one unit of the 4th decimal apart."""
    reference = tmp_path / "birdnet_analyzer"
    _analyzer(analyzer, birdnet_files, input=str(recordings), output=str(reference),
              options={"overlap": 0.0, **options, "rtype": [FORMATS[f] for f in formats], "combine_results": True})
    expected, ours = _tables(reference), {}
    for fmt in formats:
        out = tmp_path / f"birdinfer_{fmt}"
        combine = [] if fmt == "audacity" else ["--combine"]
        assert main(["-q", "predict", str(recordings), "--models", str(folder), "--out", str(out), "--format", fmt,
                     "--precision", "f32", *flags, *combine]) == 0
        ours.update(_tables(out))
    assert sorted(ours) == sorted(expected)
    for name in expected:
        same = ours[name] == expected[name] or (rounding and _same_but_rounding(ours[name], expected[name]))
        assert same, f"{name} differs:\n{ours[name][:800]!r}\n{expected[name][:800]!r}"
    return expected


# ------------------------------------------------------------------------------------ merge consecutive
MERGES = {
    "2, overlap 1.5, min_conf 0.1": ({"merge_consecutive": 2, "overlap": 1.5, "min_conf": 0.1},
                                     ["--merge-consecutive", "2", "--overlap", "1.5", "--min-confidence", "0.1"]),
    "3, overlap 0, min_conf 0.05": ({"merge_consecutive": 3, "min_conf": 0.05},
                                    ["--merge-consecutive", "3", "--min-confidence", "0.05"]),  # slow (CI's budget)
    "1000, overlap 2.5, defaults": ({"merge_consecutive": 1000, "overlap": 2.5},
                                    ["--merge-consecutive", "1000", "--overlap", "2.5"]),
    "1, overlap 1": ({"merge_consecutive": 1, "overlap": 1.0, "min_conf": 0.1},
                     ["--merge-consecutive", "1", "--overlap", "1", "--min-confidence", "0.1"]),
}


@pytest.mark.parametrize("setting", [pytest.param(k, marks=pytest.mark.slow) if k.startswith("3,") else k for k in MERGES])
def test_merged_tables_equal_birdnet_analyzers(setting, analyzer, birdnet_files, folder, recordings, tmp_path):
    """Tables with merged detections equal BirdNET-Analyzer's byte for byte: row order, merged spans, the mean of
    the 3 best scores, the combined tables."""
    options, flags = MERGES[setting]
    expected = _compare(analyzer, birdnet_files, folder, recordings, tmp_path, options, flags)
    rows = expected["long.BirdNET.results.csv"].decode().splitlines()[1:]
    spans = [float(r.split(",")[1]) - float(r.split(",")[0]) for r in rows]
    window = 3.0
    if options["merge_consecutive"] > 1:  # real merges compared, not only single windows
        assert max(spans) > window + 0.01, rows
    else:
        assert max(spans) <= window + 1e-9


def test_merging_rules():
    """The rules on hand-made detections: runs cut at ``most`` windows, gaps not merged, the top-3 mean in float32,
    windows regrouped in start order with labels in first-detected order."""
    stamps = [("0.0", "3.0"), ("3.0", "6.0"), ("6.0", "9.0"), ("9.0", "12.0"), ("15.0", "18.0")]
    found = [[(0, 0.9), (1, 0.3)], [(0, 0.5)], [(1, 0.7), (0, 0.2)], [(0, 0.4)], [(0, 0.8)]]
    assert merge_consecutive(stamps, found, 1) == (stamps, found)
    merged, rows = merge_consecutive(stamps, found, 2)
    assert merged == [("0.0", "6.0"), ("0.0", "3.0"), ("6.0", "12.0"), ("6.0", "9.0"), ("15.0", "18.0")]
    assert rows == [[(0, pytest.approx(0.7))], [(1, 0.3)], [(0, pytest.approx(0.3))], [(1, 0.7)], [(0, 0.8)]]
    merged, rows = merge_consecutive(stamps, found, 10)
    assert merged == [("0.0", "12.0"), ("0.0", "3.0"), ("6.0", "9.0"), ("15.0", "18.0")]
    top3 = (np.float32(0.9) + np.float32(0.5) + np.float32(0.4)) / np.float32(3)
    assert rows[0] == [(0, float(np.float32(top3)))]


BAD = [
    (["--merge-consecutive", "0"], "--merge-consecutive must be a whole number >= 1"),
    (["--merge-consecutive", "-3"], "got -3"),
    (["--merge-consecutive", "2", "--format", "csv"], "not --format csv"),
    (["--fmin", "6000", "--fmax", "3000"], "--fmin 6000 must be below --fmax 3000"),
    (["--fmin", "4000", "--fmax", "4000"], "--fmin 4000 must be below --fmax 4000"),
    (["--fmin", "15000"], "--fmin 15000 must be below --fmax 15000"),
    (["--fmax", "0"], "--fmin 0 must be below --fmax 0"),
    (["--fmax", "20000"], "--fmax 20000.0 is outside [0, 15000]"),
    (["--fmin", "-5"], "--fmin -5.0 is outside [0, 15000]"),
]


def test_bad_values_fail_before_any_audio(folder, tmp_path, capsys):
    """Each bad value ends with exit 2 and one sentence naming the option and the value, before any audio is read."""
    audio = tmp_path / "a.wav"
    sf.write(audio, np.zeros(48000 * 4, np.float32), 48000)
    for flags, message in BAD:
        out = tmp_path / "out"
        code = main(["predict", str(audio), "--models", str(folder), "--out", str(out), "--format", "birdnet_csv",
                     *flags])
        err = capsys.readouterr().err
        assert code == 2 and message in err and "Traceback" not in err, err
        assert not out.exists() and not (tmp_path / "out.parts").exists()


# ------------------------------------------------------------------------------------ bandpass
def _analyzer_scores(analyzer, birdnet_files, recordings, tmp_path, **settings) -> dict[str, np.ndarray]:
    """BirdNET-Analyzer's scores per window, by file name below the recordings folder."""
    out = tmp_path / f"scores_{len(list(tmp_path.glob('scores_*')))}.jsonl"
    _analyzer(analyzer, birdnet_files, input=str(recordings), output=str(out), scores={"overlap": 0.0, **settings})
    rows: dict[str, list] = {}
    for line in out.read_text(encoding="utf-8").splitlines():
        path, _, _, values = json.loads(line)
        rows.setdefault(Path(path).relative_to(recordings).as_posix(), []).append(values)
    return {name: np.array(values, np.float32) for name, values in rows.items()}


def _our_scores(folder, recordings, tmp_path, flags) -> dict[str, np.ndarray]:
    out = tmp_path / f"ours_{len(list(tmp_path.glob('ours_*')))}.csv"
    assert main(["-q", "predict", str(recordings), "--models", str(folder), "--out", str(out), "--precision", "f32",
                 *flags]) == 0
    table = pd.read_csv(out)
    return {Path(name).relative_to(recordings).as_posix(): rows.iloc[:, 3:].to_numpy(np.float32)
            for name, rows in table.groupby("file", sort=False)}


BANDS = {
    "high-pass 2000": ({"fmin": 2000}, ["--fmin", "2000"]),
    "low-pass 5000, overlap 1.5": ({"fmax": 5000, "overlap": 1.5}, ["--fmax", "5000", "--overlap", "1.5"]),
    "band 1000-8000": ({"fmin": 1000, "fmax": 8000}, ["--fmin", "1000", "--fmax", "8000"]),
}


@pytest.mark.parametrize("setting", list(BANDS))
def test_bandpass_scores_equal_birdnet_analyzers(setting, analyzer, birdnet_files, folder, recordings, tmp_path):
    """Every window's score with BirdNET-Analyzer's bandpass within 1e-4 of its own run (and the filter moves scores
    far more than that); its Raven tables with the filtered band equal birdinfer's byte for byte."""
    settings, flags = BANDS[setting]
    expected = _analyzer_scores(analyzer, birdnet_files, recordings, tmp_path, **settings)
    ours = _our_scores(folder, recordings, tmp_path, flags)
    plain = _our_scores(folder, recordings, tmp_path, ["--overlap", str(settings.get("overlap", 0.0))])
    assert sorted(ours) == sorted(expected) == ["long.wav", "sub/warblers.wav"]
    for name in expected:
        assert ours[name].shape == expected[name].shape
        gap = np.abs(ours[name] - expected[name]).max()
        print(f"{setting}: {name} max |score - BirdNET-Analyzer's| {gap:.2e}")
        assert gap < 1e-4, name
        assert np.abs(plain[name] - expected[name]).max() > 1e-2, name  # the filter changes the scores
    options = {**settings, "min_conf": 0.1}
    tables = _compare(analyzer, birdnet_files, folder, recordings, tmp_path, options, [*flags, "--min-confidence", "0.1"],
                      formats=("raven", "birdnet_csv"), rounding=True)
    low, high = settings.get("fmin", 0), settings.get("fmax", 15000)
    assert f"\t{low}\t{high}\t" in tables["long.BirdNET.selection.table.txt"].decode()


def test_a_filtered_long_recording_streams_with_the_whole_file_scores(folder, recordings, tmp_path):
    """With --fmin / --fmax a recording longer than a block still streams (the filter runs over the decoded
    pieces in order, its state carried): its scores equal the whole-recording run's, and differ from the
    unfiltered ones."""
    from birdinfer.runtime.pipeline import Predictor
    from birdinfer.runtime.streaming import WholeFileStream, plan_reason
    from birdinfer.spec.manifest import Manifest
    from birdinfer.spec.options import with_options

    y = load_audio(recordings / "long.wav", sample_rate=48000)
    path = tmp_path / "long75.wav"
    sf.write(path, np.concatenate([y, y[::-1], y[: len(y) // 3]]), 48000, subtype="FLOAT")  # 73.9 s
    manifest = with_options(Manifest.load(folder), {"fmin": 1000.0, "fmax": 8000.0})
    assert plan_reason(manifest) is None and WholeFileStream(manifest).prefilter is not None
    predictor = Predictor(manifest, precision="f32")
    predictor._stream = WholeFileStream(predictor.manifest, block_seconds=30.0)
    streamed = predictor.predict_file(path)
    predictor._stream = None
    whole = predictor.predict_file(path)
    plain = Predictor(Manifest.load(folder), precision="f32").predict_file(path)
    assert streamed.shape == whole.shape == (25, len(manifest.labels))
    np.testing.assert_allclose(streamed, whole, rtol=0, atol=1e-6)
    assert np.abs(whole - plain).max() > 1e-2


def test_a_folder_imported_before_the_filter_says_to_import_it_again(folder, tmp_path, capsys):
    old = tmp_path / "old"
    shutil.copytree(folder, old)
    manifest = json.loads((old / "manifest.json").read_text(encoding="utf-8"))
    for name in ("fmin", "fmax"):  # the folder as the import wrote it before: no bandpass step, no options
        del manifest["options"][name]
    assert manifest["features"]["birdnet"]["steps"].pop(0)["op"] == "bandpass"
    manifest["options"]["overlap"]["sets"][1]["field"] = "features.birdnet.steps[1].step_seconds"
    (old / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    audio = tmp_path / "a.wav"
    sf.write(audio, np.zeros(48000 * 4, np.float32), 48000)
    assert main(["predict", str(audio), "--models", str(old), "--out", str(tmp_path / "o.csv"), "--fmin", "500"]) == 2
    err = capsys.readouterr().err
    assert "declares no option 'fmin'" in err and "import it again" in err
    assert main(["-q", "predict", str(audio), "--models", str(old), "--out", str(tmp_path / "o.csv"), "--overlap", "1"]) == 0


# ------------------------------------------------------------------------------------ locale
@pytest.fixture(scope="module")
def translations(analyzer) -> Path:
    """BirdNET-Analyzer's translated labels (its wheel's labels/V2.4), read at test time: never committed."""
    return analyzer / "birdnet_analyzer" / "labels" / "V2.4"


@pytest.fixture(scope="module")
def localized(folder, birdnet_files, translations, tmp_path_factory) -> Path:
    """The folder with the translations added as ``birdinfer import --translated-labels`` adds them."""
    out = tmp_path_factory.mktemp("localized") / "models"
    shutil.copytree(folder, out)
    add_translated_labels(out, translations, birdnet_files["labels"].name)
    return out


LOCALES = {
    "de": ({"locale": "de", "min_conf": 0.1}, ["--locale", "de", "--min-confidence", "0.1"]),
    "ja, merge 3, overlap 1.5": ({"locale": "ja", "merge_consecutive": 3, "overlap": 1.5},
                                 ["--locale", "ja", "--merge-consecutive", "3", "--overlap", "1.5"]),
}


@pytest.mark.parametrize("setting", list(LOCALES))
def test_translated_tables_equal_birdnet_analyzers(setting, analyzer, birdnet_files, localized, recordings, tmp_path):
    options, flags = LOCALES[setting]
    expected = _compare(analyzer, birdnet_files, localized, recordings, tmp_path, options, flags)
    text = expected["long.BirdNET.results.csv"].decode()
    english = {line.split("_", 1)[1] for line in birdnet_files["labels"].read_text(encoding="utf-8").splitlines()}
    names = {row.split(",")[3] for row in text.splitlines()[1:]}
    assert names and not names & english  # translated names compared, not the English ones


def test_translations_are_checked_and_checksummed(localized, birdnet_files, translations, tmp_path, capsys):
    manifest = Manifest.load(localized)
    table = manifest.extra["translated_labels"]
    assert {"de", "ja", "en_uk", "pt_BR"} <= set(table) and table["de"] == "labels_de.txt"
    assert table["de"] in manifest.files
    assert locale_names(manifest, "en") is None and locale_names(manifest, "de")[0].split("_")[0] == manifest.labels[0].split("_")[0]
    audio = tmp_path / "a.wav"
    sf.write(audio, np.zeros(48000 * 4, np.float32), 48000)
    for models, flags, message in (
            (localized, ["--locale", "xx"], "--locale 'xx': "),
            (localized, ["--locale", "de", "--format", "csv"], "not --format csv")):
        out = tmp_path / "out"
        assert main(["predict", str(audio), "--models", str(models), "--out", str(out), "--format", "birdnet_csv",
                     *flags]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and not out.exists(), err
    with pytest.raises(ParameterError, match=r"has no translated labels for it; choose one of en, af, .*de, .*zh"):
        locale_names(manifest, "xx")
    copy = tmp_path / "copy"
    shutil.copytree(localized, copy)
    (copy / "labels_de.txt").write_text("changed\n", encoding="utf-8")
    with pytest.raises(ChecksumError, match="labels_de.txt"):
        locale_names(Manifest.load(copy), "de")


def test_a_folder_without_translations_says_how_to_add_them(folder):
    with pytest.raises(ParameterError, match="import the model again with --translated-labels DIR"):
        locale_names(Manifest.load(folder), "de")


def test_bad_translations_are_refused_before_the_import(birdnet_files, translations, tmp_path, capsys):
    stem = birdnet_files["labels"].stem
    lines = (translations / f"{stem}_de.txt").read_text(encoding="utf-8").splitlines()
    short, swapped, empty = tmp_path / "short", tmp_path / "swapped", tmp_path / "empty"
    for d in (short, swapped, empty):
        d.mkdir()
    (short / f"{stem}_de.txt").write_text("\n".join(lines[:-1]) + "\n", encoding="utf-8")
    (swapped / f"{stem}_fr.txt").write_text("\n".join([lines[1], lines[0], *lines[2:]]) + "\n", encoding="utf-8")
    for source, message in ((short, "6521 lines for the folder's 6522 labels"),
                            (swapped, "line 1: "), (empty, f"no file named {stem}_<locale>.txt")):
        out = tmp_path / "models"
        assert main(["import", str(birdnet_files["model"]), "--labels", str(birdnet_files["labels"]), "--out", str(out),
                     "--translated-labels", str(source)]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and not out.exists(), err


def test_bandpass_embeddings_equal_birdnet_analyzers(analyzer, birdnet_files, folder, recordings, tmp_path):
    """``--embeddings`` of a filtered run are BirdNET-Analyzer's ``embeddings`` command's with the same bandpass
    (its parser takes ``--fmin`` / ``--fmax`` too): same windows, every value within 2e-4. Measured: 1.13e-4 on the
    31.7 s recording (1.9e-5 without a filter, tests/test_birdnet_embeddings.py); the filtered audio is the same
    bit for bit (checked by hand against its ``audio.bandpass``), so the gap is OpenVINO's against LiteRT on
    band-limited windows, not the filter."""
    from test_birdnet_embeddings import SUFFIX, _ours

    reference = tmp_path / "reference.jsonl"
    _analyzer(analyzer, birdnet_files, input=str(recordings), output=str(reference),
              embeddings={"overlap": 0.0, "fmin": 1000, "fmax": 8000})
    expected: dict[str, list] = {}
    for line in reference.read_text(encoding="utf-8").splitlines():
        path, start, end, values = json.loads(line)
        name = Path(path).relative_to(recordings).with_suffix("").as_posix() + SUFFIX
        expected.setdefault(name, []).append((str(start), str(end), np.array(values, np.float32)))
    emb = tmp_path / "emb"
    assert main(["-q", "predict", str(recordings), "--models", str(folder), "--out", str(tmp_path / "t.csv"),
                 "--embeddings", str(emb), "--fmin", "1000", "--fmax", "8000", "--precision", "f32"]) == 0
    ours = _ours(emb)
    assert sorted(ours) == sorted(expected) == ["long" + SUFFIX, "sub/warblers" + SUFFIX]
    for name, rows in expected.items():
        assert [(s, e) for s, e, _ in ours[name]] == [(s, e) for s, e, _ in rows]
        gap = max(float(np.abs(a - b).max()) for (_, _, a), (_, _, b) in zip(ours[name], rows))
        print(f"embeddings {name}: max |Δ| {gap:.2e}")
        assert gap < 2e-4, name
