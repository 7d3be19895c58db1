"""Measured precision records at write time (``birdinfer import``): bf16 against f32 per variant on this CPU
class, INT8 variants for a version 2 spec checked per CPU class, and the runtime running (and logging) only
what was recorded. Expectations derive from this process's CPU class (``effective_isa``), never from the
machine the tests were written on."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import numpy as np
import pytest

from birdinfer.cli import main
from birdinfer.runtime.cpu import effective_isa
from birdinfer.tools.importer import import_folder
from birdinfer.spec.manifest import Manifest
from birdinfer.runtime.models import bf16_valid, describe_precisions, plan_models, variant_valid
from birdinfer.tools.precision import BF16_BAR, audio_set

from conftest import write_ogg

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

from test_import import FRAMES, LABELS, N_MELS, SPEC  # noqa: E402  (after the skips: needs torch)


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("precision_src")
    torch.manual_seed(0)
    net = timm.create_model("mobilenetv3_small_050", pretrained=False, in_chans=1, num_classes=len(LABELS)).eval()
    with torch.no_grad():
        net.get_classifier().weight.mul_(20.0)
    torch.onnx.export(net, torch.zeros(2, 1, N_MELS, FRAMES), str(folder / "tiny.onnx"), input_names=["x"],
                      output_names=["logits"], dynamic_axes={"x": {0: "windows"}, "logits": {0: "windows"}},
                      opset_version=17, dynamo=False)
    (folder / "spec.json").write_text(json.dumps(SPEC, indent=2))
    return folder


@pytest.fixture(scope="module")
def int8_folder(source, tmp_path_factory) -> Path:
    pytest.importorskip("nncf")
    out = tmp_path_factory.mktemp("precision") / "models"
    calibration = out.parent / "calibration"
    for seed in range(3):  # two calibrate, one is held out
        write_ogg(calibration / f"s{seed}.ogg", 20.0, seed=40 + seed)
    assert main(["import", str(source / "spec.json"), "--out", str(out), "--precision", "int8",
                 "--calibration", str(calibration)]) == 0
    return out


def test_import_records_bf16_for_this_class(source, tmp_path):
    isa = effective_isa()
    manifest = import_folder(source / "spec.json", tmp_path / "m")
    record = manifest.models[0].variants["f32"].bf16
    assert record is not None and record["measured_on"] == isa.cpu_class
    if isa.bf16_native:  # measured: figures, and the class listed only when within the bar
        assert record["windows"] == 24 and 0 <= record["max_abs_dp"] and record["bar"] == BF16_BAR  # 2 × 60 s synthetic
        assert record["cpu_classes"] == ([isa.cpu_class] if record["max_abs_dp"] <= BF16_BAR else [])
        assert record["ran"] == "bf16"
    else:  # cannot be measured where bf16 is emulated: said, and no class listed
        assert record["cpu_classes"] == [] and "not native" in record["not_measurable"]
    again = Manifest.load(tmp_path / "m")  # the record survives loading and saving
    assert again.models[0].variants["f32"].bf16 == record
    assert import_folder(source / "spec.json", tmp_path / "n", measure=False).models[0].variants["f32"].bf16 is None


def test_int8_import_round_trip(int8_folder):
    isa = effective_isa()
    manifest = Manifest.load(int8_folder)
    manifest.verify_checksums()
    entry = manifest.models[0]
    assert set(entry.variants) == {"f32", "int8"} and {"tiny.int8.xml", "tiny.int8.bin"} <= set(manifest.files)
    int8 = entry.variants["int8"]
    checks = int8.verification["per_class"]
    assert isa.cpu_class in checks  # measured here, in a child process under this class
    bar = int8.verification["bar"]["mean_abs_dp"]
    for cpu_class, figures in checks.items():  # each measured class is listed exactly when within the bar
        assert figures["cpu_class"] == cpu_class and figures["windows"] == 4  # the held-out 20 s file
        assert figures["speedup_vs_f32"] > 0 and figures["ran"] == "int8+f32"
        assert (cpu_class in int8.cpu_classes) is (figures["mean_abs_dp"] <= bar)
    assert int8.verification["calibration_windows"] == 8  # two 20 s files, 4 rows each
    for name in ("f32", "int8"):  # bf16 measured for the float layers of both variants
        assert entry.variants[name].bf16["measured_on"] == isa.cpu_class

    plans, summary = plan_models(manifest, precision="fast", isa=isa)
    faster = checks.get(isa.cpu_class, {}).get("speedup_vs_f32", 1.0) >= 1.0  # fast never picks a slower variant
    want = "int8" if variant_valid(int8, isa) and faster else "f32"
    assert plans[0].variant == want
    assert plans[0].hint == ("bf16" if bf16_valid(entry.variants[want], isa) else "f32")


def test_fast_runs_int8_and_the_log_says_what_ran(int8_folder, tmp_path, caplog):
    from birdinfer.runtime.pipeline import Predictor

    audio = tmp_path / "audio"
    write_ogg(audio / "a.ogg", 15.0, seed=7)
    results = {}
    for precision in ("f32", "auto", "fast"):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="birdinfer"):
            predictor = Predictor(int8_folder, precision=precision)
        plans, _ = plan_models(Manifest.load(int8_folder), precision=precision)
        ran = describe_precisions(predictor.models)
        assert ran == f"{plans[0].label} ×1"  # what ran, read back from the compiled model, is what was planned
        assert f"runs {ran} [tiny {plans[0].label}]" in caplog.text  # and what the log says
        assert "float layers" not in caplog.text
        results[precision] = (plans[0].label, predictor.predict_file(audio / "a.ogg"))
        predictor.close()
    if results["auto"][0] == "f32":  # auto ran what f32 runs: the same numbers
        np.testing.assert_array_equal(results["auto"][1], results["f32"][1])
    assert results["f32"][1].shape == (3, len(LABELS)) and np.isfinite(results["fast"][1]).all()


def test_spec_with_bad_bf16_record_is_refused(source, tmp_path):
    bad = copy.deepcopy(SPEC)
    bad["models"][0]["variants"]["f32"]["bf16"] = {"cpu_classes": "avx512_vnni_bf16"}
    from birdinfer.errors import ModelFolderError
    from birdinfer.spec.parse import parse_spec

    with pytest.raises(ModelFolderError, match=r"variants\.f32.*bf16 must be an object with a list 'cpu_classes'"):
        parse_spec(bad, require_files=False, source="spec.json")


def test_audio_set_splits_calibration_and_held_out(tmp_path):
    synthetic = audio_set(None, 32000)
    assert synthetic.folder is None and not set(synthetic.calibration) & set(synthetic.held_out)
    for i in range(6):
        write_ogg(tmp_path / f"f{i}.ogg", 1.0, seed=i)
    real = audio_set(tmp_path, 32000)
    assert real.held_out == ("f5.ogg",) and real.calibration == tuple(f"f{i}.ogg" for i in range(5))
    assert type(real).from_dict(json.loads(json.dumps(real.to_dict()))) == real


def test_export_recipe_of_a_spec_adds_int8_variants(tmp_path):
    """`birdinfer export --recipe <v2 spec> --precision int8`: the spec's checkpoints exported, INT8 variants
    added and checked per class, bf16 recorded, as `birdinfer import --precision int8` does."""
    pytest.importorskip("nncf")
    from birdinfer_export import export_models
    from birdinfer_export.solutions import build_solution, save_solution_checkpoint

    weights = Path(__file__).resolve().parents[1] / "weights"
    spec_path, modules = build_solution(weights / "birdclef2024_1st.spec.json", tmp_path / "build", n_classes=12,
                                        arch="tinynet_e", models=["80low_trainnolab_10sec_gr20sec_ep7oo7"])
    for entry in json.loads(spec_path.read_text())["models"]:
        save_solution_checkpoint(entry, modules[entry["name"]], tmp_path / "checkpoints")
    calibration = tmp_path / "calibration"
    for seed in range(2):
        write_ogg(calibration / f"s{seed}.ogg", 10.0, seed=50 + seed)
    manifest = export_models(tmp_path / "checkpoints", tmp_path / "models", recipe=spec_path, precision="int8",
                             calibration=calibration, progress=False)
    manifest.verify_checksums()
    variants = manifest.models[0].variants
    assert set(variants) == {"f32", "int8"}
    assert effective_isa().cpu_class in variants["int8"].verification["per_class"]
    assert variants["int8"].cpu_classes is not None
    assert all(v.bf16["measured_on"] == effective_isa().cpu_class for v in variants.values())


def test_a_folder_names_its_int8_bar_and_recipe(source, tmp_path):
    """A folder's own INT8 bar (top-1 agreement on confident rows beside mean |Δp|) and recipe fields (node names
    left in float, asymmetric activations), through `birdinfer import --precision int8`: the recipe recorded,
    every measured class's figures carry the top-1 agreements, and each class is listed exactly where its
    figures meet every term of the folder's bar. A calibration file too short for one row is skipped."""
    pytest.importorskip("nncf")
    import shutil

    from birdinfer_export.variants import _EXACT, meets_bar

    bar = {"top1_agreement_confident": 0.9, "mean_abs_dp": 0.05}
    spec = copy.deepcopy(SPEC)
    spec["rows"]["min_seconds"] = 3.0  # a last row needs 3 s of audio
    spec["extra"] = {"precision_check": {"int8_bar": bar, "int8_recipe": {"float_names": ["^/classifier.*"],
                                                                          "preset": "mixed"}}}
    shutil.copyfile(source / "tiny.onnx", tmp_path / "tiny.onnx")
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    calibration = tmp_path / "calibration"
    write_ogg(calibration / "a_short.ogg", 2.0, seed=60)  # under min_seconds: no rows, skipped
    for seed in range(2):  # s0 calibrates, s1 is held out
        write_ogg(calibration / f"s{seed}.ogg", 20.0, seed=61 + seed)
    out = tmp_path / "models"
    assert main(["import", str(tmp_path / "spec.json"), "--out", str(out), "--precision", "int8",
                 "--calibration", str(calibration), "--no-precision-check"]) == 0
    int8 = Manifest.load(out).models[0].variants["int8"]
    v = int8.verification
    assert v["bar"] == bar and v["preset"] == "mixed" and v["float_names"] == ["^/classifier.*"]
    assert v["calibration_windows"] == 4  # s0 only: 20 s in 5 s rows
    assert effective_isa().cpu_class in v["per_class"]
    for cpu_class, figures in v["per_class"].items():
        top1 = figures["top1_agreement_confident"]
        assert figures["windows"] == 4 and 0 <= figures["top1_agreement"] <= 1
        assert (top1 is None) is (figures["confident_windows"] == 0) and (top1 is None or 0 <= top1 <= 1)
        within = figures["mean_abs_dp"] <= bar["mean_abs_dp"] and top1 is not None and top1 >= 0.9
        assert meets_bar(figures, bar) is within
        assert (cpu_class in int8.cpu_classes) is within
    exact_ok = any(c in _EXACT and meets_bar(f, bar) for c, f in v["per_class"].items())
    for cpu_class in set(int8.cpu_classes) - set(v["per_class"]):  # listed unmeasured: shares an exact class's result
        assert cpu_class in _EXACT and exact_ok


def test_folder_int8_settings_are_checked(tmp_path):
    from types import SimpleNamespace

    from birdinfer.errors import ParameterError
    from birdinfer_export.variants import INT8_MEAN_DP_BAR, folder_int8_settings

    def settings(check):
        return folder_int8_settings(tmp_path, SimpleNamespace(extra={"precision_check": check}))

    assert settings({}) == (None, {})
    assert settings({"int8_bar": {"top1_agreement": 0.99}, "int8_recipe": {"float_ops": ["Multiply"]}}) == (
        {"top1_agreement": 0.99}, {"float_ops": ("Multiply",)})
    for bad, field in [({"int8_bar": {"auc": 0.9}}, "int8_bar"), ({"int8_bar": {"mean_abs_dp": "small"}}, "int8_bar"),
                       ({"int8_bar": {}}, "int8_bar"), ({"int8_recipe": {"preset": "fastest"}}, "int8_recipe"),
                       ({"int8_recipe": {"float_names": "^a"}}, r"int8_recipe\.float_names"),
                       ({"int8_recipe": {"bits": 4}}, "int8_recipe")]:
        with pytest.raises(ParameterError, match=rf"{tmp_path}: extra\.precision_check\.{field}"):
            settings(bad)
    assert INT8_MEAN_DP_BAR == 0.0125  # the bar of every folder that names none


def test_compare_rows_top1_agreement():
    from birdinfer.tools.precision import CONFIDENT_SCORE, TIE_MARGIN, compare_rows

    rng = np.random.default_rng(3)
    ref = [rng.uniform(0, 0.05, (6, 5)), rng.uniform(0, 0.05, (4, 5))]
    ref[0][:3, 1] = 0.5  # three confident rows (top label 1), the rest below CONFIDENT_SCORE
    other = [a.copy() for a in ref]
    other[0][0, 2] = 0.9  # a confident row whose top label changes
    other[1][0] = other[1][0][::-1] + 1e-3 * np.arange(5)  # an unconfident row whose top label changes
    moved = int(ref[1][0].argmax() != other[1][0].argmax())
    ref[0][2, 3] = 0.5 - TIE_MARGIN / 2  # the third confident row is a tie: confident, not decided
    other[0][2, 3] = 0.6  # and its top label changes
    figures = compare_rows(ref, other)
    assert figures["windows"] == 10 and figures["confident_windows"] == 3 and figures["confident_score"] == CONFIDENT_SCORE
    assert figures["top1_agreement_confident"] == pytest.approx(1 / 3)
    assert figures["decided_windows"] == 2 and figures["top1_agreement_decided"] == pytest.approx(1 / 2)
    assert figures["top1_agreement"] == pytest.approx((10 - 2 - moved) / 10)
    assert figures["max_abs_dp"] == pytest.approx(np.abs(0.9 - ref[0][0, 2]))
    assert compare_rows([ref[1]], [ref[1]])["top1_agreement_confident"] is None  # no confident row: not measured


def _labelled_calibration(folder: Path, n_files: int = 6, seconds: float = 20.0, window: float = 5.0) -> Path:
    """Soundscapes and their solution CSV (row_id = <stem>_<end second>, a seeded 0/1 per class and row)."""
    import pandas as pd

    rng = np.random.default_rng(3)
    rows = []
    for i in range(n_files):
        write_ogg(folder / f"s{i}.ogg", seconds, seed=80 + i)
        for k in range(int(seconds // window)):
            rows.append({"row_id": f"s{i}_{int((k + 1) * window)}", **{c: int(rng.random() < 0.4) for c in LABELS}})
    labels = folder.parent / "solution.csv"
    pd.DataFrame(rows).to_csv(labels, index=False)
    return labels


def test_int8_with_labels_is_judged_by_delta_auc(source, tmp_path):
    """With ``--calibration-labels`` half the calibration files are held out and INT8 is valid on a class exactly
    where its held-out macro ROC-AUC is within 0.002 of f32's; f32's AUC is recomputed here from the runtime's
    own f32 rows and sklearn, over the classes with positives and negatives among the held-out rows."""
    pytest.importorskip("nncf")
    import pandas as pd
    from sklearn.metrics import roc_auc_score

    from birdinfer.runtime.pipeline import Predictor

    calibration = tmp_path / "calibration"
    labels = _labelled_calibration(calibration)
    out = tmp_path / "models"
    assert main(["import", str(source / "spec.json"), "--out", str(out), "--precision", "int8", "--calibration",
                 str(calibration), "--calibration-labels", str(labels), "--no-precision-check"]) == 0
    int8 = Manifest.load(out).models[0].variants["int8"]
    v = int8.verification
    assert v["bar"] == {"delta_auc": -0.002} and "labelled by" in v["held_out"]
    held = ["s3", "s4", "s5"]  # the last half of six files
    truth = pd.read_csv(labels).set_index("row_id").loc[[f"{s}_{5 * (k + 1)}" for s in held for k in range(4)], LABELS]
    predictor = Predictor(out, precision="f32")  # the model's own rows (before the ensemble's smoothing)
    f32_rows = np.concatenate([r.members.models["tiny"] for r in
                               predictor.iter_files([calibration / f"{s}.ogg" for s in held], members=True)])
    predictor.close()
    scored = [j for j, c in enumerate(LABELS) if 0 < truth[c].sum() < len(truth)]
    want_auc = float(np.mean([roc_auc_score(truth.iloc[:, j], f32_rows[:, j]) for j in scored]))
    assert effective_isa().cpu_class in v["per_class"]
    for cpu_class, figures in v["per_class"].items():
        assert figures["windows"] == 12 and figures["scored_classes"] == len(scored) > 0
        assert figures["auc_f32"] == pytest.approx(want_auc, abs=1e-4)
        assert figures["delta_auc"] == pytest.approx(figures["auc"] - figures["auc_f32"], abs=1e-12)
        assert (cpu_class in int8.cpu_classes) is (figures["delta_auc"] >= -0.002)


def test_calibration_labels_are_checked(source, tmp_path, capsys):
    """A labels file that misses a held-out row names the file and the row; labels without INT8, or a file that
    does not exist, are refused before anything is written."""
    pytest.importorskip("nncf")
    import pandas as pd

    from birdinfer.errors import ParameterError
    from birdinfer.tools.held_out_labels import read_held_out_labels

    calibration = tmp_path / "calibration"
    labels = _labelled_calibration(calibration, n_files=2)
    table = pd.read_csv(labels)
    table[table.row_id != "s1_15"].to_csv(tmp_path / "holes.csv", index=False)
    with pytest.raises(ParameterError, match=r"holes\.csv: no row for 's1_15'"):
        read_held_out_labels(tmp_path / "holes.csv", [("s1", 4)], 5.0, LABELS)
    pd.concat([table, table.tail(1)]).to_csv(tmp_path / "twice.csv", index=False)
    with pytest.raises(ParameterError, match=r"twice\.csv: duplicate row_id 's1_20'"):
        read_held_out_labels(tmp_path / "twice.csv", [("s1", 4)], 5.0, LABELS)
    table.assign(owl=2).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ParameterError, match=r"bad\.csv: values must be 0 or 1"):
        read_held_out_labels(tmp_path / "bad.csv", [("s1", 4)], 5.0, LABELS)
    table.rename(columns={c: c.upper() for c in LABELS}).to_csv(tmp_path / "none.csv", index=False)
    with pytest.raises(ParameterError, match=r"none\.csv: none of the folder's labels"):
        read_held_out_labels(tmp_path / "none.csv", [("s1", 4)], 5.0, LABELS)
    for args, given, message in (([], labels, "goes with --precision int8"),
                                 (["--precision", "int8", "--calibration", str(calibration)], tmp_path / "missing.csv",
                                  "no such file")):
        out = tmp_path / "m"
        code = main(["import", str(source / "spec.json"), "--out", str(out), *args, "--calibration-labels", str(given)])
        assert code == 2 and message in capsys.readouterr().err and not out.exists()
