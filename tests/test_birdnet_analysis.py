"""BirdNET-Analyzer's remaining analysis options in ``birdinfer predict``: ``--merge-consecutive`` (its
``--merge_consecutive``), ``--fmin`` / ``--fmax`` (its bandpass filter) and ``--locale`` (its translated common
names).

The reference is BirdNET-Analyzer 2.4.0 itself, run with LiteRT on the same recordings as in
tests/test_birdnet_outputs.py (tests/birdnet_analyzer_run.py): every table it writes must equal birdinfer's byte
for byte. The recordings are real (the opensoundscape sample, 10 s, and 31 s built from it), written as 48 kHz
float WAV files so both read the same samples. Without network, LiteRT or librosa the tests skip, saying why.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from birdinfer.cli import main
from birdinfer.io.audio import load_audio
from birdinfer.io.detections import merge_consecutive

litert = pytest.importorskip("ai_edge_litert", reason="LiteRT (ai-edge-litert, requirements-dev.txt) is the reference")

from test_birdnet import SAMPLE_MEMBER, _fetched, birdnet_files  # noqa: E402,F401 (a fixture)
from test_birdnet_outputs import FORMATS, _analyzer, _tables, analyzer  # noqa: E402,F401 (a fixture)

from birdinfer.tools.birdnet_import import import_birdnet  # noqa: E402


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


def _compare(analyzer, birdnet_files, folder, recordings, tmp_path, options: dict, flags: list[str],
             formats=tuple(FORMATS)) -> dict[str, bytes]:
    """BirdNET-Analyzer's tables (and combined ones) for ``options`` against birdinfer's with ``flags``."""
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
        assert ours[name] == expected[name], f"{name} differs:\n{ours[name][:800]!r}\n{expected[name][:800]!r}"
    return expected


# ------------------------------------------------------------------------------------ merge consecutive
MERGES = {
    "2, overlap 1.5, min_conf 0.1": ({"merge_consecutive": 2, "overlap": 1.5, "min_conf": 0.1},
                                     ["--merge-consecutive", "2", "--overlap", "1.5", "--min-confidence", "0.1"]),
    "3, overlap 0, min_conf 0.05": ({"merge_consecutive": 3, "min_conf": 0.05},
                                    ["--merge-consecutive", "3", "--min-confidence", "0.05"]),
    "1000, overlap 2.5, defaults": ({"merge_consecutive": 1000, "overlap": 2.5},
                                    ["--merge-consecutive", "1000", "--overlap", "2.5"]),
    "1, overlap 1": ({"merge_consecutive": 1, "overlap": 1.0, "min_conf": 0.1},
                     ["--merge-consecutive", "1", "--overlap", "1", "--min-confidence", "0.1"]),
}


@pytest.mark.parametrize("setting", list(MERGES))
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


def test_bad_merge_values_fail_before_any_audio(folder, tmp_path, capsys):
    audio = tmp_path / "a.wav"
    sf.write(audio, np.zeros(48000 * 4, np.float32), 48000)
    for flags, message in ((["--merge-consecutive", "0"], "--merge-consecutive must be a whole number >= 1"),
                           (["--merge-consecutive", "-3"], "got -3"),
                           (["--merge-consecutive", "2", "--format", "csv"], "not --format csv")):
        out = tmp_path / "out"
        code = main(["predict", str(audio), "--models", str(folder), "--out", str(out), "--format", "birdnet_csv",
                     *flags])
        err = capsys.readouterr().err
        assert code == 2 and message in err and "Traceback" not in err, err
        assert not out.exists() and not (tmp_path / "out.parts").exists()
