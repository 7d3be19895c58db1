"""Model folder manifest: round trip, validation, path safety, checksums."""

import json

import pytest

from birdinfer.errors import ChecksumError, ModelFolderError
from birdinfer.spec.manifest import Manifest, MelGroup, ModelEntry
from birdinfer.spec.files import ModelVariant, safe_join, sha256_file


def _write_folder(tmp_path, xml_name="m.xml"):
    (tmp_path / "m.xml").write_text("<net/>")
    (tmp_path / "m.bin").write_bytes(b"\x00" * 16)
    files = {"m.xml": sha256_file(tmp_path / "m.xml"), "m.bin": sha256_file(tmp_path / "m.bin")}
    manifest = Manifest(
        labels=("a", "b"),
        groups=(MelGroup("v1", 2048, 64, 256, 60, 16000, 256, weight=2.5),),
        models=(ModelEntry("m", "tf_efficientnet_lite0", "v1", 1.0, (6, 1, 256, 512), 16,
                           {"f32": ModelVariant(openvino=xml_name)}),),
        files=files,
    )
    manifest.save(tmp_path)
    return manifest


def test_round_trip_and_checksums(tmp_path):
    written = _write_folder(tmp_path)
    loaded = Manifest.load(tmp_path, upgrade=False)  # as written
    assert loaded.to_dict() == written.to_dict()
    assert Manifest.load(tmp_path).v1.to_dict() == written.to_dict()  # as it runs: upgraded, the original kept
    loaded.verify_checksums()
    (tmp_path / "m.bin").write_bytes(b"\x01" * 16)
    with pytest.raises(ChecksumError, match="m.bin"):
        loaded.verify_checksums()


@pytest.mark.parametrize("name", ["../evil.xml", "/etc/passwd.xml", "sub/../../x.xml"])
def test_names_never_escape_the_folder(tmp_path, name):
    _write_folder(tmp_path)
    data = json.loads((tmp_path / "manifest.json").read_text())
    data["models"][0]["variants"]["f32"]["openvino"] = name
    data["files"][name] = "0" * 64
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    for upgrade in (True, False):  # as it runs and as written: refused when loaded, before any file is read
        with pytest.raises(ModelFolderError, match="model folder|plain name"):
            Manifest.load(tmp_path, upgrade=upgrade)


def test_symlink_escape_refused(tmp_path):
    (tmp_path / "inside").mkdir()
    (tmp_path / "inside" / "link.xml").symlink_to(tmp_path / "outside.xml")
    with pytest.raises(ModelFolderError, match="outside"):
        safe_join(tmp_path / "inside", "link.xml")


def test_clear_errors(tmp_path):
    with pytest.raises(ModelFolderError, match="does not exist"):
        Manifest.load(tmp_path / "nope")
    with pytest.raises(ModelFolderError, match="manifest.json not found"):
        Manifest.load(tmp_path)
    (tmp_path / "manifest.json").write_text("{broken")
    with pytest.raises(ModelFolderError, match="cannot read"):
        Manifest.load(tmp_path)
    _write_folder(tmp_path)
    data = json.loads((tmp_path / "manifest.json").read_text())
    data["models"][0]["input_shape"] = [6, 1, 128, 512]
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ModelFolderError, match="does not fit group"):
        Manifest.load(tmp_path)
