"""End to end: real OGG files → make_submission (OpenVINO, f32) equals a plain torch + librosa + cv2
transcription of REFERENCE.md (tests/reference.py), and the submission format rules hold."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from birdinfer.spec.manifest import Manifest
from birdinfer.jobs.submit import make_submission
from birdinfer.runtime.pipeline import Predictor
from birdinfer.spec.v2 import ManifestV2

from conftest import LABELS, N_CLASSES, SMALL_RECIPE, write_ogg
import reference

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

LENGTHS = {"soundscape_a": 60.0, "soundscape_b": 20.0, "short_7s": 7.3, "tiny_3s": 3.0}


@pytest.fixture(scope="module")
def audio_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("soundscapes")
    for seed, (stem, seconds) in enumerate(LENGTHS.items()):
        write_ogg(folder / f"{stem}.ogg", seconds, seed=100 + seed)
    return folder


@pytest.fixture(scope="module")
def torch_members(small_model_folder, small_checkpoints):
    from birdinfer_export.checkpoint import load_checkpoint

    groups = {g["name"]: g for g in SMALL_RECIPE["groups"]}
    members = []
    for m in SMALL_RECIPE["models"]:
        module = load_checkpoint(small_checkpoints / m["checkpoint"], arch=m["arch"], n_mels=groups[m["group"]]["n_mels"], n_classes=N_CLASSES)
        members.append((module, m["group"], m["weight"]))
    mel = {name: ({k: g[k] for k in ("n_fft", "hop_length", "n_mels", "fmin", "fmax", "frames_per_window")}, g["weight"])
           for name, g in groups.items()}
    return members, mel


def test_submission_equals_reference_implementation(audio_dir, small_model_folder, torch_members, tmp_path):
    members, groups = torch_members
    out = tmp_path / "submission.csv"
    frame = make_submission(audio_dir, small_model_folder, out=out, precision="f32", progress=False)
    written = pd.read_csv(out)
    assert list(written.columns) == ["row_id"] + LABELS
    assert len(written) == len(frame)
    worst = 0.0
    for stem, seconds in LENGTHS.items():
        y = reference.load(audio_dir / f"{stem}.ogg")
        want = reference.predict(y, members, groups)
        rows = written[written.row_id.str.startswith(stem + "_")]
        assert list(rows.row_id) == [f"{stem}_{5 * (k + 1)}" for k in range(len(want))]
        got = rows[LABELS].to_numpy()
        worst = max(worst, float(np.abs(got - want).max()))
    print(f"max abs probability difference vs reference: {worst:.2e}")
    assert worst <= 1e-4
    # the row rule: 60 s → 12, 20 s → 4, 7.3 s → 1, 3 s → 1 (padded)
    counts = written.row_id.str.rsplit("_", n=1).str[0].value_counts().to_dict()
    assert counts == {"soundscape_a": 12, "soundscape_b": 4, "short_7s": 1, "tiny_3s": 1}
    assert frame.attrs["birdinfer"]["precision"].startswith("f32")


def test_long_recording_is_processed_in_60s_blocks(small_model_folder, torch_members, tmp_path):
    members, groups = torch_members
    path = write_ogg(tmp_path / "long.ogg", 130.0, seed=7)
    predictor = Predictor(small_model_folder, precision="f32")
    got = predictor.predict_file(path)
    assert got.shape == (26, N_CLASSES)
    y = reference.load(path)
    blocks = [y[i : i + 60 * reference.SR] for i in range(0, len(y), 60 * reference.SR)]
    raw = np.concatenate([reference.predict(b, members, groups, smoothing=0.0) for b in blocks])
    want, f = raw, 0.15  # smoothing runs over the whole file
    smoothed = want.copy()
    smoothed[0] = (1 - f) * want[0] + f * want[1]
    smoothed[-1] = (1 - f) * want[-1] + f * want[-2]
    smoothed[1:-1] = f * want[:-2] + (1 - 2 * f) * want[1:-1] + f * want[2:]
    assert np.abs(got - smoothed).max() <= 1e-4


def test_sample_submission_orders_columns_and_fills_missing(audio_dir, small_model_folder, tmp_path, caplog):
    sample = tmp_path / "sample_submission.csv"
    columns = ["row_id", "zz_unknown"] + LABELS[::-1][:-2]  # reversed, two model classes missing, one extra
    pd.DataFrame(columns=columns).to_csv(sample, index=False)
    frame = make_submission([audio_dir / "soundscape_b.ogg"], small_model_folder, out=None, sample_submission=sample,
                            precision="f32", progress=False)
    assert list(frame.columns) == columns
    assert (frame["zz_unknown"] == 0.0).all()
    assert "not predicted by the models" in caplog.text and "are dropped" in caplog.text
    full = make_submission([audio_dir / "soundscape_b.ogg"], small_model_folder, out=None, precision="f32", progress=False)
    np.testing.assert_allclose(frame[LABELS[::-1][:-2]].to_numpy(), full[LABELS[::-1][:-2]].to_numpy(), atol=1e-6)


def test_empty_folder_writes_header_only(small_model_folder, tmp_path, capsys):
    empty = tmp_path / "test_soundscapes"
    empty.mkdir()
    out = tmp_path / "submission.csv"
    frame = make_submission(empty, small_model_folder, out=out, progress=False)
    assert len(frame) == 0
    assert out.read_text().strip() == ",".join(["row_id"] + LABELS)
    assert "NO AUDIO FILES" in capsys.readouterr().err


def test_bad_file_gets_fallback_rows_and_run_continues(audio_dir, small_model_folder, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "a_good.ogg").write_bytes((audio_dir / "soundscape_b.ogg").read_bytes())
    (folder / "b_bad.ogg").write_text("this is not audio")
    report = tmp_path / "report.json"
    frame = make_submission(folder, small_model_folder, out=tmp_path / "s.csv", precision="f32", progress=False, report=report)
    bad = frame[frame.row_id.str.startswith("b_bad_")]
    assert len(bad) == 12  # no readable duration: a 60 s soundscape is assumed
    good = frame[frame.row_id.str.startswith("a_good_")][LABELS].to_numpy()
    np.testing.assert_allclose(bad[LABELS].to_numpy(), np.repeat(good.mean(axis=0, keepdims=True), 12, axis=0), atol=1e-6)
    info = json.loads(report.read_text())
    assert [f["file"].endswith("b_bad.ogg") for f in info["failed"]] == [True]


def test_time_budget_drops_models_and_keeps_every_row(audio_dir, small_model_folder):
    ticks = iter(range(10**9))

    def slow_clock():  # every clock read is one "second": each model call looks expensive
        return float(next(ticks)) * 1.0

    files = [audio_dir / "soundscape_a.ogg"] * 6
    frame = make_submission(files, small_model_folder, out=None, precision="f32", progress=False,
                            time_budget_s=60.0, clock=slow_clock)
    info = frame.attrs["birdinfer"]
    assert len(frame) == 6 * 12 and np.isfinite(frame[LABELS].to_numpy()).all()
    dropped = [e["model"] for e in info["dropped"]]
    assert dropped, "the budget should have dropped models"
    # lowest weight per cost first: the models' costs are equal under this clock, so the smallest
    # effective weight goes first: lite0_v1b (0.5/2.0 × 2.5/4.5) < lite0_v2 (1 × 1/4.5) < lite0_v3 ...
    assert dropped[0] == "lite0_v1b"
    assert len(dropped) < len(SMALL_RECIPE["models"])  # the last model is never dropped


def test_manifest_is_self_describing(small_model_folder):
    manifest = Manifest.load(small_model_folder, upgrade=False)  # as written: version 1, mel groups
    manifest.verify_checksums()
    assert manifest.format_version == 1 and manifest.labels == tuple(LABELS)
    assert [g.name for g in manifest.groups] == ["v1", "v2", "v3"]
    for m in manifest.models:
        assert m.input_shape == (6, 1, manifest.group(m.group).n_mels, 2 * manifest.group(m.group).frames_per_window)
    spec = Manifest.load(small_model_folder)  # as it runs: upgraded in memory to version 2, same files
    assert isinstance(spec, ManifestV2) and spec.v1 == manifest and spec.block_seconds == 60.0
    assert spec.files == manifest.files and spec.folder == manifest.folder
    assert [m.name for m in spec.models] == [m.name for m in manifest.models]
    assert all(s.variants == m.variants and s.input == m.group for s, m in zip(spec.models, manifest.models))
    assert [g.name for g in spec.ensemble.members] == ["v1", "v2", "v3"]
    spec.verify_checksums()


def test_parallel_models_give_the_same_rows_and_share_the_wall_time(small_model_folder):
    """``parallel_models`` runs different models at once in worker threads on the one engine (any folder): same
    rows as one at a time; each model is charged its share of the block's wall time, the shares adding up to it."""
    y = (0.05 * np.random.default_rng(5).standard_normal(60 * 32000)).astype(np.float32)
    serial = Predictor(small_model_folder, precision="f32")
    parallel = Predictor(small_model_folder, precision="f32", parallel_models=2)
    try:
        assert parallel._engine._pool is not None and len(parallel.models) > 1
        np.testing.assert_allclose(parallel.predict_array(y), serial.predict_array(y), rtol=0, atol=1e-6)
        ticks = iter(range(1000))
        before = dict(parallel.model_seconds)
        rows = parallel.infer_block(parallel.features(y), 12, clock=lambda: float(next(ticks)))
        assert set(rows) == {m.name for m in parallel.models} and all(r.shape == (12, N_CLASSES) for r in rows.values())
        charged = {n: parallel.model_seconds[n] - before[n] for n in before}
        # the clock is read once per model at submission and once at collection: wall = 2n - 1 ticks
        assert sum(charged.values()) == pytest.approx(2 * len(parallel.models) - 1)
        assert all(c > 0 for c in charged.values())
    finally:
        parallel.close()
        serial.close()
