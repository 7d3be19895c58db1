"""``birdinfer import`` end to end: a small real timm classifier exported to ONNX with torch, a spec with
min-max normalised 10 s windows, import → submit, checked against a plain librosa + torch computation of the
same inference on the same OGG files. Also the import's checks of the graph against the spec."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from birdinfer.cli import main
from birdinfer.errors import ModelFolderError
from birdinfer.tools.importer import import_folder
from birdinfer.spec.manifest import Manifest

from conftest import write_ogg

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")
librosa = pytest.importorskip("librosa")

SR = 32000
LABELS = ["owl", "wren", "crow", "jay"]
N_MELS, N_FFT, HOP = 64, 1024, 320
FRAMES = 1 + 10 * SR // HOP  # 1001 frames per 10 s window (centred STFT)

SPEC = {
    "format": "birdinfer-model-folder", "format_version": 2,
    "sample_rate": SR, "labels": LABELS, "rows": {"seconds": 5.0}, "block_seconds": None,
    "features": {"mel10": {"steps": [
        {"op": "pad", "left_seconds": 2.5, "right_seconds": 2.5},
        {"op": "windows", "length_seconds": 10.0, "step_seconds": 5.0, "lead_seconds": "centre"},
        {"op": "stft", "n_fft": N_FFT, "hop_length": HOP},
        {"op": "mel", "n_mels": N_MELS, "fmin": 50.0, "fmax": 14000.0},
        {"op": "db", "top_db": 80.0},
        {"op": "normalize", "method": "minmax"},
        {"op": "channels", "repeat": 1},
    ]}},
    "models": [{
        "name": "tiny", "input": "mel10", "input_shape": [-1, 1, N_MELS, FRAMES],
        "outputs": [{"name": "logits", "kind": "clip_logits"}],
        "steps": [{"step": "sigmoid"}, {"step": "clip_rows"}],
        "variants": {"f32": {"onnx": "tiny.onnx"}},
    }],
    "ensemble": {"steps": [{"step": "weighted_mean"}, {"step": "smooth", "kernel": [0.2, 0.6, 0.2], "mode": "nearest"}]},
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, "torch.nn.Module"]:
    folder = tmp_path_factory.mktemp("byo_src")
    torch.manual_seed(0)
    net = timm.create_model("mobilenetv3_small_050", pretrained=False, in_chans=1, num_classes=len(LABELS)).eval()
    with torch.no_grad():  # random weights give near-constant outputs: spread the classifier so rows differ
        net.get_classifier().weight.mul_(20.0)
    x = torch.zeros(2, 1, N_MELS, FRAMES)
    torch.onnx.export(net, x, str(folder / "tiny.onnx"), input_names=["x"], output_names=["logits"],
                      dynamic_axes={"x": {0: "windows"}, "logits": {0: "windows"}}, opset_version=17, dynamo=False)
    (folder / "spec.json").write_text(json.dumps(SPEC, indent=2))
    return folder, net


def _sigmoid_outputs(net, x: "torch.Tensor") -> np.ndarray:
    return torch.sigmoid(net(x)).numpy()


def _reference(path: Path, net, head=_sigmoid_outputs) -> np.ndarray:
    """The spec's inference with librosa and torch, written out plainly."""
    y, _ = librosa.load(path, sr=SR)
    rows = max(1, len(y) // (5 * SR))
    y = np.pad(y, (int(2.5 * SR), int(2.5 * SR) + 10 * SR))  # extra zeros: a short file's window is zero-filled
    windows = []
    for k in range(rows):
        w = y[k * 5 * SR : k * 5 * SR + 10 * SR]
        mel = librosa.feature.melspectrogram(y=w, sr=SR, n_fft=N_FFT, hop_length=HOP, n_mels=N_MELS, fmin=50.0,
                                             fmax=14000.0, pad_mode="constant")
        db = librosa.power_to_db(mel, ref=1.0, top_db=80.0)
        windows.append((db - db.min()) / (db.max() - db.min() + 1e-6))
    with torch.no_grad():
        probs = head(net, torch.from_numpy(np.stack(windows)[:, None].astype(np.float32)))
    from scipy.ndimage import convolve1d

    return convolve1d(probs.astype(np.float64), [0.2, 0.6, 0.2], axis=0, mode="nearest")


def test_import_then_submit_matches_librosa_and_torch(exported, tmp_path):
    folder, net = exported
    models = tmp_path / "models"
    assert main(["import", str(folder / "spec.json"), "--out", str(models)]) == 0
    manifest = Manifest.load(models)
    assert manifest.format_version == 2
    assert set(manifest.files) == {"tiny.onnx", "tiny.xml", "tiny.bin"}
    manifest.verify_checksums()
    assert manifest.models[0].outputs[0].shape == (-1, len(LABELS))

    audio = tmp_path / "audio"
    write_ogg(audio / "a.ogg", 30.0, seed=5)
    write_ogg(audio / "b.ogg", 12.0, seed=6)  # trailing 2 s dropped
    out = tmp_path / "submission.csv"
    assert main(["submit", str(audio), "--models", str(models), "--out", str(out), "--precision", "f32"]) == 0
    import pandas as pd

    sub = pd.read_csv(out)
    assert list(sub.columns) == ["row_id"] + LABELS
    assert list(sub["row_id"]) == [f"a_{5 * k}" for k in range(1, 7)] + ["b_5", "b_10"]
    expected = np.concatenate([_reference(audio / "a.ogg", net), _reference(audio / "b.ogg", net)])
    got = sub[LABELS].to_numpy()
    assert np.abs(got - expected).max() < 1e-4
    assert got.std() > 1e-3

    table = tmp_path / "detections.csv"  # `birdinfer predict` runs v2 folders too (same rows)
    assert main(["predict", str(audio), "--models", str(models), "--out", str(table), "--precision", "f32"]) == 0
    detections = pd.read_csv(table)
    assert list(detections["end_s"]) == [5.0 * k for k in range(1, 7)] + [5.0, 10.0]
    np.testing.assert_allclose(detections[LABELS].to_numpy(), got, atol=1e-6)


def test_import_refuses_a_graph_that_does_not_match(exported, tmp_path):
    folder, _ = exported
    bad = copy.deepcopy(SPEC)
    bad["labels"] = LABELS + ["extra"]
    (folder / "bad_labels.json").write_text(json.dumps(bad))
    with pytest.raises(ModelFolderError, match=r"bad_labels\.json.*models\['tiny'\].*outputs\[0\].*4 classes.*needs 5"):
        import_folder(folder / "bad_labels.json", tmp_path / "m1")
    assert not (tmp_path / "m1" / "manifest.json").exists()

    bad = copy.deepcopy(SPEC)
    bad["models"][0]["input_shape"] = [-1, 3, N_MELS, FRAMES]
    bad["features"]["mel10"]["steps"][-1] = {"op": "channels", "repeat": 3}
    (folder / "bad_shape.json").write_text(json.dumps(bad))
    with pytest.raises(ModelFolderError, match=r"bad_shape\.json.*input_shape.*axis 1 is 1"):
        import_folder(folder / "bad_shape.json", tmp_path / "m2")


def test_import_refuses_names_outside_the_spec_folder(exported, tmp_path):
    folder, _ = exported
    bad = copy.deepcopy(SPEC)
    bad["models"][0]["variants"]["f32"]["onnx"] = "../tiny.onnx"
    (folder / "escape.json").write_text(json.dumps(bad))
    with pytest.raises(ModelFolderError, match=r"escape\.json.*variants\.f32.*'\.\./tiny\.onnx'.*inside"):
        import_folder(folder / "escape.json", tmp_path / "m3")


def test_class_count_checked_when_the_models_are_compiled(exported, tmp_path):
    """A hand-edited folder whose outputs declare no shape: the compiled graph is checked, before any audio."""
    from birdinfer.runtime.pipeline import Predictor

    folder, _ = exported
    models = import_folder(folder / "spec.json", tmp_path / "models").folder
    data = json.loads((models / "manifest.json").read_text())
    data["labels"] = LABELS + ["extra"]
    data["models"][0]["outputs"][0].pop("shape")
    (models / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ModelFolderError, match=r"models: model 'tiny' \(tiny\.xml\): output 'logits' gives 4 classes .* lists 5 labels"):
        Predictor(models, precision="f32")


def test_import_refuses_two_files_with_one_name(exported, tmp_path):
    folder, _ = exported
    (folder / "other").mkdir(exist_ok=True)
    (folder / "other" / "tiny.onnx").write_bytes((folder / "tiny.onnx").read_bytes())
    two = copy.deepcopy(SPEC)
    second = copy.deepcopy(two["models"][0])
    second["name"] = "tiny2"
    second["variants"]["f32"]["onnx"] = "other/tiny.onnx"
    two["models"].append(second)
    (folder / "two.json").write_text(json.dumps(two))
    with pytest.raises(ModelFolderError, match=r"models\['tiny2'\]\.variants\.f32\.onnx: .*other/tiny\.onnx would be written as 'tiny\.onnx'"):
        import_folder(folder / "two.json", tmp_path / "m4")


class TwoHeads(torch.nn.Module):
    """A tiny network with two outputs: clip logits (B, C) and frame logits (B, C, T)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.conv = torch.nn.Conv2d(1, 8, kernel_size=(N_MELS, 25), stride=(1, 25))
        self.frame = torch.nn.Conv1d(8, len(LABELS), 1)
        self.clip = torch.nn.Linear(8, len(LABELS))

    def forward(self, x):
        h = torch.relu(self.conv(x * 4 - 2)).squeeze(2)  # (B, 8, T)
        return self.clip(h.mean(dim=2)), self.frame(h)


def _blend_head(net, x) -> np.ndarray:
    clip, frame = net(x)
    return (0.5 * torch.sigmoid(clip) + 0.5 * torch.sigmoid(frame).amax(dim=2)).numpy()


@pytest.mark.parametrize("backend", ["openvino", "onnxruntime"])
def test_two_named_outputs_blended(tmp_path, backend):
    if backend == "onnxruntime":
        pytest.importorskip("onnxruntime")
    net = TwoHeads().eval()
    torch.onnx.export(net, torch.zeros(2, 1, N_MELS, FRAMES), str(tmp_path / "two.onnx"), input_names=["x"],
                      output_names=["clip", "frame"], dynamic_axes={"x": {0: "w"}, "clip": {0: "w"}, "frame": {0: "w"}},
                      opset_version=17, dynamo=False)
    spec = copy.deepcopy(SPEC)
    spec["models"][0].update(name="two", variants={"f32": {"onnx": "two.onnx"}}, outputs=[
        {"name": "frames", "kind": "frame_logits", "index": 1}, {"name": "clip", "kind": "clip_logits", "index": 0}])
    spec["models"][0]["steps"] = [
        {"step": "sigmoid", "output": "clip"}, {"step": "sigmoid", "output": "frames"},
        {"step": "reduce_frames", "output": "frames", "into": "frame_max", "how": "max"},
        {"step": "blend", "weights": {"clip": 0.5, "frame_max": 0.5}, "into": "mix"},
        {"step": "clip_rows", "output": "mix"}]
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    manifest = import_folder(tmp_path / "spec.json", tmp_path / "models")
    assert manifest.models[0].outputs[0].shape == (-1, len(LABELS), FRAMES // 25)
    write_ogg(tmp_path / "audio" / "c.ogg", 20.0, seed=7)
    from birdinfer.jobs.submit import make_submission

    sub = make_submission(tmp_path / "audio", tmp_path / "models", out=None, precision="f32", backend=backend, progress=False)
    with torch.no_grad():
        expected = _reference(tmp_path / "audio" / "c.ogg", net, _blend_head)
    assert np.abs(sub[LABELS].to_numpy() - expected).max() < 1e-4
    assert sub[LABELS].to_numpy().std() > 1e-3
