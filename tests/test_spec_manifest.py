"""Manifest version 2 validation: every bad spec fails at load (before any audio), naming the file and field."""

from __future__ import annotations

import copy
import json
import re

import pytest

from birdinfer.errors import ModelFolderError
from birdinfer.spec.manifest import Manifest
from birdinfer.spec.v2 import ManifestV2

GOOD = {
    "format": "birdinfer-model-folder", "format_version": 2, "sample_rate": 32000,
    "labels": ["a", "b", "c"], "rows": {"seconds": 5.0}, "block_seconds": None,
    "features": {"wave": {"steps": [
        {"op": "pad", "left_seconds": 7.5, "right_seconds": 7.5},
        {"op": "windows", "length_seconds": 20.0, "step_seconds": 5.0, "lead_seconds": "centre"},
        {"op": "stft", "n_fft": 1024, "hop_length": 320},
        {"op": "mel", "n_mels": 64, "scale": "htk", "norm": None},
        {"op": "db", "top_db": 80},
        {"op": "channels", "repeat": 3},
    ]}},
    "models": [{
        "name": "m", "input": "wave", "input_shape": [-1, 3, 64, 2001],
        "outputs": [{"name": "frames", "kind": "frame_logits", "shape": [-1, 2, 8]}],
        "label_map": {"labels": ["a", "c"], "fill": 0.0},
        "steps": [{"step": "sigmoid"}, {"step": "timeline_rows"}, {"step": "file_scale", "top_k": 2}],
        "variants": {"f32": {"openvino": "m.xml"}},
    }],
    "ensemble": {"members": [{"name": "g", "weight": 1.0, "members": [{"model": "m"}], "steps": [{"step": "weighted_mean"}]}],
                 "steps": [{"step": "weighted_mean"}, {"step": "smooth", "kernel": [0.25, 0.5, 0.25]}]},
    "files": {"m.xml": "0" * 64, "m.bin": "0" * 64},
}


def load(tmp_path, data):
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    return Manifest.load(tmp_path)


def broken(tmp_path, change, pattern):
    data = copy.deepcopy(GOOD)
    change(data)
    with pytest.raises(ModelFolderError) as info:
        load(tmp_path, data)
    message = str(info.value)
    assert message.startswith(str(tmp_path / "manifest.json")), message
    assert re.search(pattern, message), message
    return message


def test_good_spec_loads(tmp_path):
    manifest = load(tmp_path, GOOD)
    assert isinstance(manifest, ManifestV2) and manifest.window_seconds == 5.0
    assert manifest.feature_shapes["wave"].shape() == (3, 64, 2001)
    assert [s.name for s in manifest.models[0].block_steps] == ["sigmoid", "timeline_rows"]
    assert [s.name for s in manifest.models[0].row_steps] == ["file_scale"]


def test_unknown_op_and_step(tmp_path):
    broken(tmp_path, lambda d: d["features"]["wave"]["steps"].insert(2, {"op": "wavelet"}),
           r"features\.wave\.steps\[2\]: unknown front-end op 'wavelet' in field 'op' \(known: .*stft")
    broken(tmp_path, lambda d: d["models"][0]["steps"].insert(0, {"step": "tanh"}),
           r"models\['m'\]\.steps\[0\]: unknown model step 'tanh'")
    broken(tmp_path, lambda d: d["ensemble"]["steps"].append({"step": "median"}), r"ensemble\.steps\[2\]: unknown row step 'median'")
    broken(tmp_path, lambda d: d["ensemble"].update(steps=[{"step": "smooth", "kernel": [1]}]),
           r"ensemble\.steps\[0\]: unknown combine step 'smooth'")


def test_bad_parameters(tmp_path):
    broken(tmp_path, lambda d: d["features"]["wave"]["steps"][4].update(topdb=80),
           r"steps\[4\] \(front-end op 'db'\): unknown parameter 'topdb' \(known: top_db, ref")
    broken(tmp_path, lambda d: d["features"]["wave"]["steps"][2].update(hop_length="fast"),
           r"op 'stft'\): parameter 'hop_length'='fast': must be a whole number")
    broken(tmp_path, lambda d: d["features"]["wave"]["steps"][3].update(scale="bark"),
           r"op 'mel'\): parameter 'scale'='bark': must be one of 'slaney', 'htk'")
    broken(tmp_path, lambda d: d["features"]["wave"]["steps"][2].pop("n_fft"), r"op 'stft'\): missing parameter 'n_fft'")
    broken(tmp_path, lambda d: d["ensemble"]["steps"][1].update(kernel=[]), r"row step 'smooth'\): kernel needs at least one value")
    broken(tmp_path, lambda d: d["models"][0]["steps"][1].update(output="clip"), r"steps\[1\] \(step 'timeline_rows'\): no model output named 'clip'")


def test_window_longer_than_the_padding_allows(tmp_path):
    broken(tmp_path, lambda d: d["features"]["wave"]["steps"][0].update(left_seconds=5.0),
           r"features\.wave\.steps\[1\] \(op 'windows'\): window longer than the padding allows: windows start 7\.5 s")
    broken(tmp_path, lambda d: d["features"]["wave"]["steps"][0].update(right_seconds=2.0),
           r"window longer than the padding allows: the last window reaches 7\.5 s past")
    broken(tmp_path, lambda d: d["features"]["wave"]["steps"][1].update(step_seconds=7.0), r"whole number of rows")


def test_output_shape_must_match_label_count(tmp_path):
    broken(tmp_path, lambda d: d["models"][0]["outputs"][0].update(shape=[-1, 3, 8]),
           r"models\['m'\]\.outputs\[0\]\.shape \[-1, 3, 8\]: .* C = 2 classes \(the label map\)")
    def no_map(d):
        d["models"][0].pop("label_map")
    broken(tmp_path, no_map, r"outputs\[0\]\.shape \[-1, 2, 8\]: .*C = 3 classes \(the labels\)")
    broken(tmp_path, lambda d: d["models"][0]["label_map"].update(labels=["x", "y"]), r"label_map\.labels shares no label")


def test_model_input_and_ensemble_checks(tmp_path):
    broken(tmp_path, lambda d: d["models"][0].update(input_shape=[-1, 1, 64, 2001]),
           r"models\['m'\]\.input_shape \[-1, 1, 64, 2001\] does not fit feature 'wave'.*\[-1, 3, 64, 2001\]")
    broken(tmp_path, lambda d: d["models"][0].update(input="mel"), r"models\['m'\]\.input: no feature named 'mel'")
    broken(tmp_path, lambda d: d["ensemble"]["members"][0]["members"].append({"model": "m"}), r"every model must be a member exactly once")
    broken(tmp_path, lambda d: d["models"][0]["steps"].pop(1), r"models\['m'\]\.steps\[1\]: row step 'file_scale' before a row step")
    broken(tmp_path, lambda d: d.update(block_seconds=7.0), r"block_seconds must be null or a positive multiple")
    broken(tmp_path, lambda d: d.update(smoothing=0.15), r"unknown field 'smoothing'")


def test_names_cannot_escape_the_folder(tmp_path):
    broken(tmp_path, lambda d: d["models"][0]["variants"]["f32"].update(openvino="../m.xml"),
           r"variants\.f32: file name '\.\./m\.xml' must be a plain name inside the model folder")
    broken(tmp_path, lambda d: d["files"].update({"/etc/passwd": "0" * 64}), r"files: file name '/etc/passwd'")
    broken(tmp_path, lambda d: d["files"].pop("m.bin"), r"variants\.f32: file 'm\.bin' has no sha256")


def test_version_1_manifests_load_upgraded_and_as_written(tmp_path):
    from conftest import REFERENCE_GROUPS

    from birdinfer.spec.manifest import ModelEntry
    from birdinfer.spec.files import ModelVariant

    entry = ModelEntry("x", "tf_efficientnet_lite0", "v1", 1.0, (6, 1, 256, 512), 16, {"f32": ModelVariant(openvino="x.xml")})
    v1 = Manifest(labels=("a", "b"), groups=REFERENCE_GROUPS, models=(entry,), files={"x.xml": "0", "x.bin": "0"})
    v1.save(tmp_path)
    manifest = Manifest.load(tmp_path, upgrade=False)  # as written
    assert type(manifest) is Manifest and manifest.format_version == 1 and manifest.to_dict() == v1.to_dict()
    spec = Manifest.load(tmp_path)  # as it runs: the same folder as a version 2 spec, upgraded in memory
    assert isinstance(spec, ManifestV2) and spec.v1 == manifest and spec.files == manifest.files
    assert [s.name for s in spec.features["v1"]] == ["stft", "resize_time", "mel", "windows", "db", "channels"]
    assert spec.models[0].input == "v1" and spec.models[0].variants == entry.variants and spec.block_seconds == 60.0


def test_bad_values_in_outputs_label_map_and_members(tmp_path):
    broken(tmp_path, lambda d: d["models"][0]["outputs"][0].update(index="first"), r"outputs\[0\]\.index='first': must be a whole number in \[0, 1000\]")
    broken(tmp_path, lambda d: d["models"][0]["label_map"].update(labels=["a", "a"]), r"label_map\.labels has duplicates")
    broken(tmp_path, lambda d: d["ensemble"]["members"][0].update(weight=-1), r"ensemble\.members\[0\]\.weight=-1: must be a finite number in \[0, 1000000\]")
    broken(tmp_path, lambda d: d["models"][0]["outputs"][0].update(kind="logits"), r"outputs\[0\]: needs 'name' and 'kind'")
