"""Export: reference-format checkpoints → verified ONNX / OpenVINO model folders (issue 3).

Real timm architectures with random weights (the lightest, tf_efficientnet_lite0, once per mel group);
every export costs a few seconds, so exports are module-scoped fixtures shared by several tests.
"""

from __future__ import annotations

import csv
import json
import pickle
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")
pytest.importorskip("onnx")
ov = pytest.importorskip("openvino")

import soundfile as sf  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

from birdinfer.io.audio import load_audio  # noqa: E402
from birdinfer.errors import ChecksumError, CheckpointError, ParameterError  # noqa: E402
from birdinfer.runtime.mel_frontend import MelFrontEnd  # noqa: E402
from birdinfer.spec.manifest import Manifest
from birdinfer.spec.files import sha256_file  # noqa: E402
from birdinfer_export import (  # noqa: E402
    PARITY_TOLERANCE,
    ExportError,
    SEDNet,
    export_models,
    load_checkpoint,
    load_recipe,
    random_checkpoint,
    save_reference_checkpoint,
)
from birdinfer_export import convert as convert_module  # noqa: E402
from birdinfer_export.recipe import Recipe, RecipeModel, default_recipe_path  # noqa: E402
from birdinfer_export.verify import synthetic_audio  # noqa: E402

ARCH = "tf_efficientnet_lite0"
N_CLASSES = 12
LABELS = [f"sp{i:02d}x" for i in range(N_CLASSES)]
SR = 32000


def _small_recipe(models: list[RecipeModel]) -> Recipe:
    base = load_recipe()
    return Recipe(name="test", groups=base.groups, models=tuple(models), smoothing=base.smoothing)


def _write_taxonomy(path: Path) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["primary_label", "inat_taxon_id", "scientific_name", "common_name", "class_name"])
        for i, label in enumerate(LABELS):
            w.writerow([label, 1000 + i, f"Avis {i}", f"Bird {i}", "Aves"])
    return path


def _recorded_vs_openvino(manifest: Manifest, entry, batch: np.ndarray, checkpoint: Path) -> float:
    """Max abs logit difference torch (float64) vs the folder's OpenVINO f32 IR, computed here independently."""
    group = manifest.group(entry.group)
    model = load_checkpoint(checkpoint, arch=entry.arch, n_mels=group.n_mels, n_classes=len(manifest.labels))
    with torch.no_grad():
        expected = model.double()(torch.from_numpy(batch).double()).numpy()
    compiled = ov.Core().compile_model(str(manifest.path_of(entry.variants["f32"].openvino)), "CPU",
                                       {"INFERENCE_PRECISION_HINT": "f32"})
    got = compiled(batch)[0]
    return float(np.max(np.abs(got.astype(np.float64) - expected)))


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def three_groups(tmp_path_factory):
    """One lite0 model per mel group exported (f32, synthetic verification audio) with a 12-label taxonomy."""
    root = tmp_path_factory.mktemp("export3")
    checkpoints = root / "ckpt"
    checkpoints.mkdir()
    models = [RecipeModel(f"lite0_{g}_first10.pth", ARCH, g, w) for g, w in (("v1", 0.5), ("v2", 1.0), ("v3", 2.0))]
    recipe = _small_recipe(models)
    recipe_path = recipe.save(root / "recipe.json")
    for seed, m in enumerate(models):
        random_checkpoint(m.arch, recipe.group(m.group).n_mels, N_CLASSES, checkpoints / m.checkpoint, seed=seed,
                          group=recipe.group(m.group))
    # a stray checkpoint not in the recipe is ignored
    (checkpoints / "not_in_recipe.pth").write_bytes(b"ignored")
    taxonomy = _write_taxonomy(root / "taxonomy.csv")
    out = root / "models"
    manifest = export_models(checkpoints, out, recipe=recipe_path, taxonomy=taxonomy, progress=False)
    return {"root": root, "checkpoints": checkpoints, "out": out, "manifest": manifest, "recipe": recipe}


@pytest.fixture(scope="module")
def calibration_dir(tmp_path_factory):
    """Three 20 s OGG soundscapes (libsndfile), synthetic bird-like content."""
    folder = tmp_path_factory.mktemp("calib")
    for i in range(3):
        sf.write(folder / f"soundscape_{i}.ogg", synthetic_audio(20.0, seed=50 + i), SR, format="OGG", subtype="VORBIS")
    return folder


@pytest.fixture(scope="module")
def int8_export(tmp_path_factory, calibration_dir):
    """lite0 in group v3 exported with INT8, calibrated on real OGG files, 2 chunks per call, no taxonomy."""
    root = tmp_path_factory.mktemp("export_int8")
    checkpoints = root / "ckpt"
    checkpoints.mkdir()
    spec = RecipeModel("lite0_v3_int8.pth", ARCH, "v3", 1.0)
    recipe = _small_recipe([spec])
    random_checkpoint(ARCH, 224, N_CLASSES, checkpoints / spec.checkpoint, seed=7, group=recipe.group("v3"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        manifest = export_models(checkpoints, root / "models", recipe=recipe, precision="int8",
                                 calibration=calibration_dir, chunks=2, progress=False)
    return {"manifest": manifest, "checkpoints": checkpoints, "spec": spec, "warnings": [str(w.message) for w in caught]}


# --------------------------------------------------------------------------------------------- recipe
def test_default_recipe_is_the_4th_place_ensemble():
    recipe = load_recipe()
    assert len(recipe.models) == 16
    assert recipe.smoothing == 0.15
    groups = {g.name: g for g in recipe.groups}
    assert {n: g.weight for n, g in groups.items()} == {"v1": 2.5, "v2": 1.0, "v3": 1.0}
    assert (groups["v1"].n_fft, groups["v1"].hop_length, groups["v1"].n_mels, groups["v1"].fmin, groups["v1"].frames_per_window) == (2048, 64, 256, 60.0, 256)
    assert (groups["v2"].n_fft, groups["v2"].hop_length, groups["v2"].n_mels, groups["v2"].fmin, groups["v2"].frames_per_window) == (1536, 64, 192, 50.0, 384)
    assert (groups["v3"].n_fft, groups["v3"].hop_length, groups["v3"].n_mels, groups["v3"].fmin, groups["v3"].frames_per_window) == (2048, 128, 224, 40.0, 288)
    assert [m.group for m in recipe.models].count("v1") == 12
    first, last = recipe.models[0], recipe.models[-1]
    assert (first.checkpoint, first.arch, first.group, first.weight) == ("efficientnet_b2_v1_first10.pth", "efficientnet_b2", "v1", 1.5)
    assert (last.checkpoint, last.arch, last.group, last.weight) == ("efficientnet_b2_v3_first10.pth", "efficientnet_b2", "v3", 1.5)
    assert sum(m.weight for m in recipe.models) == pytest.approx(26.35)  # sum of the table of REFERENCE.md section 4


def test_packaged_recipe_copy_matches_weights_folder():
    repo_copy = Path(__file__).resolve().parent.parent / "weights" / "birdclef2025_4th.json"
    package_copy = Path(__file__).resolve().parent.parent / "export" / "data" / "birdclef2025_4th.json"
    assert default_recipe_path() == repo_copy
    assert json.loads(repo_copy.read_text()) == json.loads(package_copy.read_text())


# ----------------------------------------------------------------------------------- f32 model folder
def test_manifest_records_models_labels_and_checksums(three_groups):
    manifest = Manifest.load(three_groups["out"], upgrade=False)  # as written: version 1
    manifest.verify_checksums()
    assert manifest.labels == tuple(LABELS)
    assert [g.name for g in manifest.groups] == ["v1", "v2", "v3"]
    assert manifest.smoothing == 0.15
    shapes = {m.group: (m.input_shape, m.frames_per_chunk) for m in manifest.models}
    assert shapes == {"v1": ((6, 1, 256, 512), 16), "v2": ((6, 1, 192, 768), 24), "v3": ((6, 1, 224, 576), 18)}
    assert [m.name for m in manifest.models] == ["lite0_v1_first10", "lite0_v2_first10", "lite0_v3_first10"]
    assert "not_in_recipe" not in {m.name for m in manifest.models}
    for m in manifest.models:
        assert set(m.variants) == {"f32"}
        assert m.export["checkpoint_sha256"] == sha256_file(three_groups["checkpoints"] / m.export["checkpoint"])
        assert set(m.export["versions"]) >= {"torch", "timm", "onnx", "onnxruntime", "openvino", "nncf"}
        assert m.export["versions"]["torch"] == torch.__version__.split("+")[0]


def test_recorded_parity_within_tolerance_and_meaningful(three_groups):
    for m in three_groups["manifest"].models:
        v = m.variants["f32"].verification
        assert 0 <= v["max_abs_logit_diff_onnxruntime"] <= PARITY_TOLERANCE
        assert 0 <= v["max_abs_logit_diff_openvino"] <= PARITY_TOLERANCE
        assert 0 < v["max_abs_logit_diff_torch_f32"] <= PARITY_TOLERANCE
        assert v["tolerance"] == pytest.approx(
            max(PARITY_TOLERANCE + 1e-5 * v["logit_abs_max"], 4 * v["max_abs_logit_diff_torch_f32"]), rel=1e-12)
        assert v["reference"] == "torch float64 (eval)"
        # the compared logits vary with the input, so a small difference is not a trivial one
        assert v["logit_std"] > 0.01
        assert "synthetic" in v["input"]


def test_recorded_openvino_parity_is_recomputed(three_groups):
    manifest = three_groups["manifest"]
    entry = next(m for m in manifest.models if m.group == "v2")
    front_end = MelFrontEnd(manifest.groups, sample_rate=manifest.sample_rate, window_seconds=manifest.window_seconds)
    batch = front_end(synthetic_audio(60.0, seed=0))["v2"][:6]
    assert batch.shape == (6, 1, 192, 768)
    recomputed = _recorded_vs_openvino(manifest, entry, batch, three_groups["checkpoints"] / entry.export["checkpoint"])
    recorded = entry.variants["f32"].verification["max_abs_logit_diff_openvino"]
    assert recomputed == pytest.approx(recorded, rel=1e-3, abs=1e-8)


def test_runtime_loads_the_folder_and_matches_torch(three_groups):
    from birdinfer.runtime.models import load_models

    manifest = Manifest.load(three_groups["out"], upgrade=False)
    loaded = load_models(manifest, precision="f32")
    front_end = MelFrontEnd(manifest.groups)
    mel = front_end(synthetic_audio(30.0, seed=3))  # 3 chunks: the runtime pads to the fixed 6
    for lm in loaded:
        chunks = mel[lm.entry.group]
        got = lm.run(chunks)
        group = manifest.group(lm.entry.group)
        model = load_checkpoint(three_groups["checkpoints"] / lm.entry.export["checkpoint"], arch=ARCH,
                                n_mels=group.n_mels, n_classes=N_CLASSES)
        with torch.no_grad():
            expected = model(torch.from_numpy(chunks)).numpy()
        assert got.shape == (3, N_CLASSES, lm.entry.frames_per_chunk)
        assert np.max(np.abs(got - expected)) <= PARITY_TOLERANCE


def test_changed_file_fails_checksum(three_groups, tmp_path):
    copy = tmp_path / "models"
    shutil.copytree(three_groups["out"], copy)
    manifest = Manifest.load(copy)
    name = manifest.models[0].variants["f32"].openvino_bin
    data = bytearray((copy / name).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / name).write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match=name):
        manifest.verify_checksums()


def test_dynamic_chunk_axis(tmp_path):
    checkpoints = tmp_path / "ckpt"
    checkpoints.mkdir()
    spec = RecipeModel("dyn_v3.pth", ARCH, "v3", 1.0)
    recipe = _small_recipe([spec])
    random_checkpoint(ARCH, 224, N_CLASSES, checkpoints / spec.checkpoint, seed=3)
    manifest = export_models(checkpoints, tmp_path / "models", recipe=recipe, taxonomy=_write_taxonomy(tmp_path / "t.csv"),
                             chunks=2, dynamic_chunks=True, progress=False)
    entry = manifest.models[0]
    assert entry.input_shape == (-1, 1, 224, 576) and entry.batch_chunks is None
    compiled = ov.Core().compile_model(str(manifest.path_of(entry.variants["f32"].openvino)), "CPU",
                                       {"INFERENCE_PRECISION_HINT": "f32"})
    x = MelFrontEnd(manifest.groups)(synthetic_audio(30.0, seed=9))["v3"]  # 3 chunks, not the 2 exported with
    model = load_checkpoint(checkpoints / spec.checkpoint, arch=ARCH, n_mels=224, n_classes=N_CLASSES)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    got = compiled(x)[0]
    assert got.shape == (3, N_CLASSES, 18)
    assert np.max(np.abs(got - expected)) <= PARITY_TOLERANCE


def test_export_without_onnx_and_with_f16_ir_weights(three_groups, tmp_path):
    """``keep_onnx=False``: ONNX verified, then left out; ``ir_weights="f16"``: half-size IR whose torch difference
    is recorded (measured beside the f32 export of the same checkpoint) and bounded only against a broken conversion."""
    from birdinfer.errors import ModelFolderError
    from birdinfer.runtime.pipeline import Predictor

    name = "lite0_v1_first10"
    with pytest.raises(ParameterError, match="f32 folders only"):
        export_models(three_groups["checkpoints"], tmp_path / "x", recipe=three_groups["root"] / "recipe.json",
                      models=[name], precision="int8", ir_weights="f16", progress=False)
    lean = export_models(three_groups["checkpoints"], tmp_path / "lean", recipe=three_groups["root"] / "recipe.json",
                         taxonomy=three_groups["root"] / "taxonomy.csv", models=[name], keep_onnx=False,
                         ir_weights="f16", progress=False)
    assert not list((tmp_path / "lean").glob("*.onnx")) and sorted(lean.files) == [f"{name}.bin", f"{name}.xml"]
    entry, full = lean.models[0], three_groups["manifest"].models[0]
    v, v32 = entry.variants["f32"].verification, full.variants["f32"].verification
    assert entry.variants["f32"].onnx is None and lean.extra["ir_weights"] == "f16" and v["ir_weights"] == "f16"
    assert v["max_abs_logit_diff_onnxruntime"] <= v["tolerance"] and "left out" in v["onnx_file"]  # ONNX was verified
    size = lean.path_of(f"{name}.bin").stat().st_size / three_groups["manifest"].path_of(f"{name}.bin").stat().st_size
    assert 0.45 < size < 0.55, size
    assert v32["max_abs_logit_diff_openvino"] < v["max_abs_logit_diff_openvino"] <= v["openvino_bound"]
    print(f"\nIR weights f16: .bin {size:.1%} of f32; max|dlogit| vs torch f64 {v['max_abs_logit_diff_openvino']:.3g} "
          f"(f32 IR {v32['max_abs_logit_diff_openvino']:.3g}, f32 tolerance {v32['tolerance']:.3g}; logits up to {v['logit_abs_max']:.3g})")
    predictor = Predictor(tmp_path / "lean", precision="f32")
    assert predictor.precision == "f32 ×1"  # what ran, per model (describe_precisions)
    with pytest.raises(ModelFolderError, match=f"{name}.*no ONNX file.*--backend openvino"):
        Predictor(tmp_path / "lean", precision="f32", backend="onnxruntime")


def test_parity_failure_raises_and_writes_no_manifest(tmp_path, monkeypatch, three_groups):
    out = tmp_path / "models"
    out.mkdir()
    (out / "manifest.json").write_text("{}")  # a stale manifest from an earlier export must not survive
    monkeypatch.setattr(convert_module, "PARITY_TOLERANCE", 0.0)  # any real float difference now fails
    monkeypatch.setattr(convert_module, "PARITY_RELATIVE_TOLERANCE", 0.0)
    monkeypatch.setattr(convert_module, "PARITY_F32_FACTOR", 0.0)
    spec = three_groups["recipe"].models[2]
    with pytest.raises(ExportError, match=r"lite0_v3_first10 .*max abs logit difference"):
        export_models(three_groups["checkpoints"], out, recipe=three_groups["recipe"], models=[spec.name],
                      taxonomy=_write_taxonomy(tmp_path / "t.csv"), chunks=1, progress=False)
    assert not (out / "manifest.json").exists()


def test_missing_requested_and_no_checkpoints(tmp_path, three_groups):
    recipe = three_groups["recipe"]
    with pytest.raises(CheckpointError, match="lite0_v2_first10.pth"):
        export_models(tmp_path, tmp_path / "out", recipe=recipe, models=["lite0_v2_first10"], progress=False)
    with pytest.raises(CheckpointError, match=r"no checkpoint .*lite0_v1_first10\.pth"):
        export_models(tmp_path, tmp_path / "out", recipe=recipe, progress=False)
    assert not (tmp_path / "out" / "manifest.json").exists()


# ------------------------------------------------------------------------------------ checkpoint files
@pytest.fixture(scope="module")
def lite0_model():
    torch.manual_seed(0)
    return SEDNet(ARCH, n_mels=224, n_classes=N_CLASSES).eval()


def _outputs(model, seed=0):
    x = -40.0 + 15.0 * torch.randn(2, 1, 224, 64, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model(x)


def test_averaged_model_checkpoint_loads(lite0_model, tmp_path):
    averaged = torch.optim.swa_utils.AveragedModel(lite0_model)
    path = tmp_path / "swa.pth"
    torch.save({"model_state_dict": averaged.state_dict(), "epoch": 21}, path)
    loaded = load_checkpoint(path, arch=ARCH, n_mels=224, n_classes=N_CLASSES)
    assert not loaded.training
    torch.testing.assert_close(_outputs(loaded), _outputs(lite0_model), rtol=0, atol=0)
    # our writer produces exactly the keys AveragedModel produces
    ours = tmp_path / "ours.pth"
    save_reference_checkpoint(lite0_model, ours, n_averaged=5)
    saved = torch.load(ours, weights_only=True)["model_state_dict"]
    assert set(saved) == set(averaged.state_dict())
    assert int(saved["n_averaged"]) == 5


@pytest.mark.parametrize("layout", ["plain", "state_dict"])
def test_plain_state_dict_loads(lite0_model, tmp_path, layout):
    path = tmp_path / f"{layout}.pth"
    state = lite0_model.state_dict()
    torch.save(state if layout == "plain" else {"state_dict": state}, path)
    loaded = load_checkpoint(path, arch=ARCH, n_mels=224, n_classes=N_CLASSES)
    torch.testing.assert_close(_outputs(loaded, 1), _outputs(lite0_model, 1), rtol=0, atol=0)


def test_not_a_torch_file(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("this is not a checkpoint\n")
    with pytest.raises(CheckpointError, match=r"notes\.pth: not a torch checkpoint"):
        load_checkpoint(path, arch=ARCH, n_mels=224, n_classes=N_CLASSES)
    with pytest.raises(CheckpointError, match=r"missing\.pth not found"):
        load_checkpoint(tmp_path / "missing.pth", arch=ARCH, n_mels=224, n_classes=N_CLASSES)


class _Payload:
    """Unpickling this would create a file: proof that arbitrary code ran."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_pickled_object_is_refused_not_executed(lite0_model, tmp_path):
    marker = tmp_path / "code_ran"
    path = tmp_path / "evil.pth"
    torch.save({"model_state_dict": lite0_model.state_dict(), "extra": _Payload(str(marker))}, path)
    with pytest.raises(CheckpointError, match=r"evil\.pth: refused .*weights_only"):
        load_checkpoint(path, arch=ARCH, n_mels=224, n_classes=N_CLASSES)
    assert not marker.exists()
    # a plain pickle (not even a torch file) is refused the same way
    plain = tmp_path / "plain_pickle.pth"
    plain.write_bytes(pickle.dumps(_Payload(str(marker))))
    with pytest.raises(CheckpointError, match=r"plain_pickle\.pth"):
        load_checkpoint(plain, arch=ARCH, n_mels=224, n_classes=N_CLASSES)
    assert not marker.exists()


def test_wrong_architecture_lists_keys(lite0_model, tmp_path):
    path = save_reference_checkpoint(lite0_model, tmp_path / "lite0.pth")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, arch="tf_efficientnet_lite1", n_mels=224, n_classes=N_CLASSES)
    message = str(info.value)
    assert "lite0.pth" in message and "'tf_efficientnet_lite1'" in message
    assert "missing keys" in message and "encoder." in message
    assert len(message) < 1500  # listed briefly


def test_wrong_class_count(lite0_model, tmp_path):
    path = save_reference_checkpoint(lite0_model, tmp_path / "classes.pth")
    with pytest.raises(CheckpointError, match=r"classes\.pth: .*emits 12 classes .*206 labels"):
        load_checkpoint(path, arch=ARCH, n_mels=224, n_classes=206)


def test_wrong_mel_count(lite0_model, tmp_path):
    path = save_reference_checkpoint(lite0_model, tmp_path / "mels.pth")
    with pytest.raises(CheckpointError, match=r"mels\.pth: .*takes 224 mel bins .*n_mels=256"):
        load_checkpoint(path, arch=ARCH, n_mels=256, n_classes=N_CLASSES)


def test_export_names_bad_checkpoint_against_taxonomy(tmp_path, three_groups):
    """A checkpoint with 12 classes exported with a 13-row taxonomy fails naming the file."""
    taxonomy = tmp_path / "taxonomy.csv"
    with open(taxonomy, "w", newline="") as f:
        csv.writer(f).writerows([["primary_label"]] + [[f"s{i}"] for i in range(13)])
    with pytest.raises(CheckpointError, match=r"lite0_v1_first10\.pth: .*12 classes .*13 labels"):
        export_models(three_groups["checkpoints"], tmp_path / "out", recipe=three_groups["recipe"],
                      models=["lite0_v1_first10"], taxonomy=taxonomy, progress=False)


def test_random_checkpoint_outputs_depend_on_input(tmp_path):
    path = random_checkpoint(ARCH, 224, N_CLASSES, tmp_path / "r.pth", seed=1)
    model = load_checkpoint(path, arch=ARCH, n_mels=224, n_classes=N_CLASSES)
    assert float(model.bn0.running_mean.mean()) == pytest.approx(-40.0, abs=3.0)
    assert 100.0 <= float(model.bn0.running_var.min()) and float(model.bn0.running_var.max()) <= 400.0
    a, b = _outputs(model, 0), _outputs(model, 1)
    assert float((a - b).abs().mean()) > 1e-2


# ------------------------------------------------------------------------------------------------ INT8
def test_int8_ir_holds_quantized_ops_and_is_checksummed(int8_export):
    manifest = int8_export["manifest"]
    manifest.verify_checksums()
    entry = manifest.models[0]
    assert set(entry.variants) == {"f32", "int8"}
    assert entry.input_shape == (2, 1, 224, 576)
    xml = manifest.path_of(entry.variants["int8"].openvino).read_text()
    assert 'type="FakeQuantize"' in xml or 'type="FakeConvert"' in xml
    assert 'type="FakeQuantize"' not in manifest.path_of(entry.variants["f32"].openvino).read_text()
    v = entry.variants["int8"].verification
    assert v["quantized_ops"] > 0
    assert v["held_out_files"] == ["soundscape_2.ogg"]
    assert v["calibration_chunks"] == 4  # two 20 s files, 2 chunks each


def test_int8_without_taxonomy_labels_and_warns(int8_export):
    assert int8_export["manifest"].labels == tuple(f"class_{i:03d}" for i in range(N_CLASSES))
    assert any("no taxonomy.csv" in w for w in int8_export["warnings"])


def test_int8_runs_in_runtime_and_reported_deviation_is_recomputed(int8_export, calibration_dir):
    from birdinfer.runtime.models import load_models

    manifest = int8_export["manifest"]
    entry = manifest.models[0]
    v = entry.variants["int8"].verification
    held_out = MelFrontEnd(manifest.groups)(load_audio(calibration_dir / v["held_out_files"][0]))["v3"]
    assert held_out.shape[0] == v["held_out_chunks"] == 2

    core = ov.Core()
    f32 = core.compile_model(str(manifest.path_of(entry.variants["f32"].openvino)), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    int8 = core.compile_model(str(manifest.path_of(entry.variants["int8"].openvino)), "CPU", dict(v["compile_config"]))
    a = f32(held_out)[0].astype(np.float64)
    b = int8(held_out)[0].astype(np.float64)
    pa, pb = 1 / (1 + np.exp(-a)), 1 / (1 + np.exp(-b))
    assert np.max(np.abs(pa - pb)) == pytest.approx(v["max_abs_prob_diff"], rel=1e-4, abs=1e-7)
    assert np.mean(np.abs(pa - pb)) == pytest.approx(v["mean_abs_prob_diff"], rel=1e-4, abs=1e-7)
    rhos = [spearmanr(a[c, :, t], b[c, :, t])[0] for c in range(a.shape[0]) for t in range(a.shape[2])]
    assert np.mean(rhos) == pytest.approx(v["rank_agreement_spearman"], abs=1e-9)
    top1 = np.mean(a.argmax(axis=1) == b.argmax(axis=1))
    assert top1 == pytest.approx(v["top1_agreement"], abs=1e-12)
    assert np.max(np.abs(pa - pb)) > 0  # quantization really changed something

    loaded = load_models(manifest, precision="int8")
    assert loaded[0].variant == "int8" and loaded[0].precision.startswith("int8")
    out = loaded[0].run(held_out)
    assert out.shape == (2, N_CLASSES, 18) and np.isfinite(out).all()


# ------------------------------------------------------------------------------------------------ slow
@pytest.mark.slow
def test_all_16_recipe_architectures_export_and_verify(tmp_path):
    """Every model of the default recipe, random weights, 206 classes: exported, parity recorded (minutes)."""
    recipe = load_recipe()
    checkpoints = tmp_path / "ckpt"
    for seed, spec in enumerate(recipe.models):
        random_checkpoint(spec.arch, recipe.group(spec.group).n_mels, 206, checkpoints / spec.checkpoint, seed=seed,
                          group=recipe.group(spec.group))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        manifest = export_models(checkpoints, tmp_path / "models", progress=False)
    assert [m.name for m in manifest.models] == [m.name for m in recipe.models]
    manifest.verify_checksums()
    for m in manifest.models:
        v = m.variants["f32"].verification
        assert v["max_abs_logit_diff_onnxruntime"] <= PARITY_TOLERANCE
        assert v["max_abs_logit_diff_openvino"] <= PARITY_TOLERANCE


def _group_convolutions_fed_by_quantizers(model) -> tuple[int, int]:
    """(GroupConvolution ops, how many of them take their data input from a FakeQuantize/FakeConvert)."""
    total = quantized = 0
    for op in model.get_ops():
        if op.get_type_name() == "GroupConvolution":
            total += 1
            source = op.input_value(0).get_node()
            quantized += source.get_type_name() in ("FakeQuantize", "FakeConvert")
    return total, quantized


def _int8_weight_range(model) -> int:
    """Largest |value| of the int8 weights (NNCF stores quantized weights as int8) of convolutions and matrix
    products, depthwise ones (5-D GroupConvolution weights) excluded: NNCF's overflow fix leaves those 8-bit."""
    return max(int(np.abs(op.get_data().astype(np.int16)).max()) for op in model.get_ops()
               if op.get_type_name() == "Constant" and "int8_t" in str(op.get_element_type())
               and "u" not in str(op.get_element_type()) and len(op.get_output_shape(0)) < 5)


def test_int8_configurations_depthwise_float_and_overflow_fix(int8_export, calibration_dir, tmp_path):
    """The default export follows INT8_RECIPES (recorded in the manifest); quantize_ir's options really change
    the graph: depthwise convolutions left in float, and 7-bit weights everywhere with the overflow fix."""
    import openvino as ov

    from birdinfer_export import DEPTHWISE_OPS
    from birdinfer_export.quantize import INT8_RECIPES, quantize_ir
    from birdinfer_export.variants import INT8_MEAN_DP_BAR
    from birdinfer_export.verify import batches_of, prepare_inputs

    manifest = int8_export["manifest"]
    entry = manifest.models[0]
    recipe = INT8_RECIPES["int8"]
    v = entry.variants["int8"].verification
    assert v["float_op_types"] == list(recipe.float_ops) and v["overflow_fix"] == recipe.overflow_fix
    assert set(entry.variants) == {"f32", *INT8_RECIPES}
    # Where the variant is valid is measured on this folder's model per class, not taken from the recipe.
    per_class = v["per_class"]
    assert per_class and v["bar"] == {"mean_abs_dp": INT8_MEAN_DP_BAR}
    for cpu_class, figures in per_class.items():
        assert (cpu_class in entry.variants["int8"].cpu_classes) is (figures["mean_abs_dp"] <= INT8_MEAN_DP_BAR)

    core = ov.Core()
    group = manifest.group(entry.group)
    inputs = prepare_inputs([group], calibration=calibration_dir, sample_rate=manifest.sample_rate,
                            window_seconds=manifest.window_seconds, synthetic_clips=1)
    f32_xml = manifest.path_of(entry.variants["f32"].openvino)
    batches = batches_of(inputs.calibration[group.name], 2)
    built = {}
    for name, options in {"nncf": {}, "dw": {"float_ops": DEPTHWISE_OPS}, "fix": {"overflow_fix": "enable"}}.items():
        out = tmp_path / f"{name}.int8.xml"
        assert quantize_ir(core, f32_xml, out, batches, **options) > 0
        built[name] = core.read_model(str(out))
    total, quantized = _group_convolutions_fed_by_quantizers(built["nncf"])
    assert total > 0 and quantized > 0  # NNCF's defaults quantize EfficientNet's depthwise convolutions
    assert _group_convolutions_fed_by_quantizers(built["dw"]) == (total, 0)
    assert _int8_weight_range(built["nncf"]) > 64  # 8-bit weights past the first layer
    assert _int8_weight_range(built["fix"]) <= 64  # overflow fix: 7-bit weights in every such layer


def test_int8_float_ops_need_int8(tmp_path):
    with pytest.raises(ParameterError, match="int8_float_ops"):
        export_models(tmp_path, tmp_path / "out", precision="f32", int8_float_ops=("GroupConvolution",), progress=False)
