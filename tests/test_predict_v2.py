"""predict, its resume journal and pseudo-label on a format_version 2 folder: Raven bands come from the
front ends' mel ops, the resume fingerprint carries the engine version and the spec."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from birdinfer.jobs import journal
from birdinfer.errors import OutputError
from birdinfer.spec.manifest import Manifest
from birdinfer.spec.info import feature_band, frequency_band

from conftest import LABELS, write_ogg


@pytest.fixture(scope="module")
def recordings(tmp_path_factory):
    folder = tmp_path_factory.mktemp("v2_audio")
    write_ogg(folder / "a.ogg", 12.5, seed=200)
    write_ogg(folder / "b.ogg", 3.0, seed=201)
    return folder


def test_bands_come_from_the_mel_ops(small_v2_folder, small_model_folder):
    v2 = Manifest.load(small_v2_folder)
    assert feature_band(v2, "v3") == (150.0, 14000.0)
    assert frequency_band(v2) == (50.0, 16000.0)  # v1 60–16000, v2 50–16000, v3 150–14000
    assert frequency_band(v2, [v2.models[3].name]) == (150.0, 14000.0)  # only the features these models use
    assert frequency_band(Manifest.load(small_model_folder)) == (40.0, 16000.0)


def test_a_feature_without_mel_covers_zero_to_nyquist():
    from birdinfer.spec.files import FORMAT
    from birdinfer.spec.parse import parse_spec

    spec = {"format": FORMAT, "format_version": 2, "sample_rate": 16000, "labels": ["a"],
            "rows": {"seconds": 1.0}, "features": {"wave": {"steps": [{"op": "windows", "length_seconds": 1.0, "step_seconds": 1.0}]}},
            "models": [{"name": "m", "input": "wave", "input_shape": [-1, 16000], "outputs": [{"name": "p", "kind": "probabilities"}],
                        "steps": [{"step": "clip_rows"}], "variants": {"f32": {"openvino": "m.xml"}}}],
            "ensemble": {"steps": [{"step": "weighted_mean"}]}}
    assert frequency_band(parse_spec(spec)) == (0.0, 8000.0)


def test_raven_tables_of_a_v2_folder_carry_the_front_end_band(small_v2_folder, recordings, tmp_path):
    from birdinfer.jobs.predict import predict

    table = pd.read_csv(predict([recordings], small_v2_folder, tmp_path / "w.csv", precision="f32", progress=False))
    probs = table[table.file.str.endswith("a.ogg")][LABELS].to_numpy()
    assert probs.shape == (2, len(LABELS))
    threshold = float(np.quantile(probs, 0.5))
    out = predict([recordings], small_v2_folder, tmp_path / "raven", format="raven", threshold=threshold,
                  precision="f32", progress=False)
    sel = pd.read_csv(out / "a.selections.txt", sep="\t")
    assert len(sel) == int((probs >= threshold).sum()) > 0
    assert set(sel["Low Freq (Hz)"]) == {50.0} and set(sel["High Freq (Hz)"]) == {16000.0}


def test_resume_after_an_engine_upgrade_or_a_spec_edit_is_refused(small_v2_folder, recordings, tmp_path, monkeypatch):
    from birdinfer.jobs.predict import predict

    manifest = Manifest.load(small_v2_folder)
    fingerprint = journal.run_fingerprint(manifest, "f32", "openvino")
    assert fingerprint["engine_version"] == journal.ENGINE_VERSION
    parts = tmp_path / "o.csv.parts"
    parts.mkdir()
    (parts / "run.json").write_text(json.dumps({**fingerprint, "engine_version": journal.ENGINE_VERSION - 1}))
    with pytest.raises(OutputError, match="engine_version"):
        predict([recordings], small_v2_folder, tmp_path / "o.csv", precision="f32", progress=False)
    # the same model files under another ensemble: another spec, another fingerprint
    data = json.loads((small_v2_folder / "manifest.json").read_text())
    data["ensemble"]["members"][0]["weight"] = 5.0
    edited = Manifest.from_dict(data, folder=small_v2_folder)
    other = journal.run_fingerprint(edited, "f32", "openvino")
    assert other["model_files"] == fingerprint["model_files"] and other["spec_sha256"] != fingerprint["spec_sha256"]
    # parts of this very run resume
    (parts / "run.json").write_text(json.dumps(fingerprint, sort_keys=True))
    out = predict([recordings], small_v2_folder, tmp_path / "o.csv", precision="f32", progress=False)
    assert len(pd.read_csv(out)) == 3


def test_pseudo_label_on_a_v2_folder_matches_predict(small_v2_folder, recordings, tmp_path):
    from birdinfer.jobs.predict import predict
    from birdinfer.jobs.pseudo import pseudo_label

    labels = pseudo_label(recordings, small_v2_folder, tmp_path / "pseudo.csv")
    table = pd.read_csv(predict([recordings], small_v2_folder, tmp_path / "p.csv", precision="f32", progress=False))
    assert list(labels.row_id) == ["a_5", "a_10", "b_5"]
    np.testing.assert_allclose(labels[LABELS].to_numpy(), table[LABELS].to_numpy(), atol=1e-6)
