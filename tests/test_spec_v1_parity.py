"""The 4th-place ensemble written as a manifest version 2 spec on disk gives the submission of its version 1
folder (upgraded in memory when loaded; both run on the one engine, and tests/test_pipeline.py holds the
version 1 folder to the torch + librosa + cv2 reference).

Real parts: the session's small model folder (tf_efficientnet_lite0 in the three reference mel groups,
exported by birdinfer_export), real OGG files, OpenVINO f32. The v2 folder holds the same graph files;
only the manifest differs (birdinfer.spec.upgrade.spec_from_v1).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from birdinfer.spec.upgrade import spec_from_v1
from birdinfer.spec.manifest import Manifest
from birdinfer.jobs.submit import make_submission
from birdinfer.runtime.pipeline import Predictor
from birdinfer.spec.v2 import ManifestV2

from conftest import write_ogg


@pytest.fixture(scope="module")
def v2_folder(small_model_folder, tmp_path_factory):
    v1 = Manifest.load(small_model_folder, upgrade=False)
    out = tmp_path_factory.mktemp("v2_from_v1")
    for name in v1.files:
        shutil.copyfile(small_model_folder / name, out / name)
    (out / "manifest.json").write_text(json.dumps(spec_from_v1(v1), indent=2))
    return out


def test_v2_folder_loads_as_version_2(v2_folder):
    manifest = Manifest.load(v2_folder)
    assert isinstance(manifest, ManifestV2)
    assert manifest.format_version == 2
    assert [g.name for g in manifest.ensemble.members] == ["v1", "v2", "v3"]
    manifest.verify_checksums()


def test_same_submission_as_version_1(small_model_folder, v2_folder, tmp_path):
    audio = tmp_path / "audio"
    write_ogg(audio / "soundscape_a.ogg", 60.0, seed=1)
    write_ogg(audio / "soundscape_b.ogg", 67.0, seed=2)  # two blocks, partial row dropped
    write_ogg(audio / "soundscape_c.ogg", 3.0, seed=3)  # shorter than a row: one zero-filled row
    v1 = make_submission(audio, small_model_folder, out=None, precision="f32", progress=False)
    v2 = make_submission(audio, v2_folder, out=None, precision="f32", progress=False)
    assert list(v1["row_id"]) == list(v2["row_id"])
    assert len(v1) == 12 + 13 + 1
    diff = np.abs(v1.iloc[:, 1:].to_numpy() - v2.iloc[:, 1:].to_numpy()).max()
    assert diff <= 1e-6, diff
    assert v1.iloc[:, 1:].to_numpy().std() > 1e-3  # the models are not constant: the comparison means something


def test_the_upgrade_in_memory_is_the_spec_on_disk(small_model_folder, v2_folder):
    upgraded, on_disk = Manifest.load(small_model_folder), Manifest.load(v2_folder)
    assert isinstance(upgraded, ManifestV2) and upgraded.v1 is not None and on_disk.v1 is None
    assert upgraded.features == on_disk.features and upgraded.ensemble == on_disk.ensemble
    assert [m.variants for m in upgraded.models] == [m.variants for m in on_disk.models]
    assert spec_from_v1(upgraded) == spec_from_v1(upgraded.v1)


@pytest.mark.parametrize("folder", ["v1", "v2"])
def test_predictor_runs_the_spec_engine_for_both(folder, small_model_folder, v2_folder):
    predictor = Predictor(small_model_folder if folder == "v1" else v2_folder, precision="f32")
    assert isinstance(predictor.manifest, ManifestV2) and predictor.block_seconds == 60.0
    rng = np.random.default_rng(0)
    probs = predictor.predict_array((0.05 * rng.standard_normal(32000 * 12)).astype(np.float32))
    assert probs.shape == (2, len(predictor.labels)) and np.all((probs >= 0) & (probs <= 1))
