"""The BirdCLEF 2026 recipe's steps (issue 21, items 2 and 3): label maps by scientific name with the genus-max
fallback, temperatures per taxon class, top-k / rank-aware file scaling, ``[0.1, 0.8, 0.1]`` smoothing, a prior
table indexed by fields of the file name, rank fusion and normalisation over the whole submission, and
``submit --member-rows``.

Every expected value is a plain numpy transcription written here from the description in docs/manifest_v2.md,
not a call of the step. The end-to-end test imports a real folder (two small ONNX graphs written with
onnx.helper) and runs ``birdinfer submit`` / ``predict`` on BirdCLEF-2026-style file names.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.stats
import soundfile as sf

from birdinfer.errors import ChecksumError, ModelFolderError, ParameterError
from birdinfer.ops.file_steps import FileContext, run_row_steps
from birdinfer.ops.registry import build_params
from birdinfer.ops.steps import MODEL_STEPS, ROW_STEPS, Outputs
from birdinfer.ops.submission import rank_fuse
from birdinfer.ops.tables import TableSource
from birdinfer.ops import WindowLayout
from birdinfer.runtime.fusion import FileRows, file_rows, fuse, node_names
from birdinfer.spec.manifest import Manifest
from birdinfer.spec.parse import parse_spec
from birdinfer.spec.v2 import Step

from conftest import write_ogg

SR = 32000
ROW = 5 * SR
LABELS = ["amecro", "tytalb", "bubvir", "strvar", "frog1", "insect9"]
TAXONOMY = """primary_label,scientific_name,class_name
amecro,Corvus brachyrhynchos,Aves
tytalb,Tyto alba,Aves
bubvir,Bubo virginianus,Aves
strvar,Strix varia,Aves
frog1,Leptodactylus fuscus,Amphibia
insect9,Gryllus sp.,Insecta
"""
#: Perch-style labels: scientific names, one with odd case and spacing, a genus-only class, non-bird classes.
MODEL_LABELS = ["Corvus brachyrhynchos", "Corvus corax", "tyto  ALBA", "Bubo bubo", "Bubo scandiacus", "Leptodactylus",
                "Homo sapiens", "Engine", "Passer domesticus"]
PRIOR_TABLE = """site,hour,amecro,tytalb,bubvir,strvar
S05,1,0.9,0.2,0.05,0.5
S07,14,0.1,0.6,0.3,0.02
"""
PATTERN = r"_(?P<site>S\d+)_\d{8}_(?P<hour>\d{2})\d{4}$"
EXAMPLE = "BC2026_Test_0001_S05_20250227_010002.ogg"


def step(registry, name: str, *args, **params):
    entry = registry[name]
    return entry.fn(*args, build_params(entry.params, params, where="test"))


def source(files: dict[str, str], labels=LABELS) -> TableSource:
    return TableSource(files.__getitem__, tuple(labels), tuple(labels))


def bound(registry, name: str, files: dict[str, str], **params):
    entry = registry[name]
    return entry.extras["bind"](build_params(entry.params, params, where="test"), source(files))


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


def logit(p, eps=1e-6):
    p = np.clip(np.asarray(p, np.float64), eps, 1 - eps)
    return np.log(p / (1 - p))


# ----------------------------------------------------------------------------------- transcriptions
def label_map_reference(x: np.ndarray, fill: float, genus: bool = True) -> np.ndarray:
    """Each folder label: the max over the model classes of its scientific name (compared lower-case, spaces
    collapsed), else over the classes of its genus (first word), else ``fill``."""
    names = [" ".join(n.lower().split()) for n in MODEL_LABELS]
    sci = {row.split(",")[0]: " ".join(row.split(",")[1].lower().split()) for row in TAXONOMY.strip().splitlines()[1:]}
    out = np.full((x.shape[0], len(LABELS)) + x.shape[2:], fill, dtype=np.float64)
    for j, label in enumerate(LABELS):
        cols = [i for i, n in enumerate(names) if n == sci[label]]
        if not cols and genus:
            cols = [i for i, n in enumerate(names) if n.split()[0] == sci[label].split()[0]]
        if cols:
            out[:, j] = x[:, cols].max(axis=1)
    return out


def file_scale_reference(p: np.ndarray, k: int, power: float) -> np.ndarray:
    """``p · (mean of the file's k largest windows of the class)^power``, class by class."""
    out = np.empty_like(p, dtype=np.float64)
    for c in range(p.shape[1]):
        top = sorted(p[:, c], reverse=True)[:k]
        out[:, c] = p[:, c] * (sum(top) / len(top)) ** power
    return out


def smooth_reference(p: np.ndarray, kernel=(0.1, 0.8, 0.1)) -> np.ndarray:
    """Row r = 0.1·row(r−1) + 0.8·row(r) + 0.1·row(r+1), a missing neighbour replaced by the edge row."""
    padded = np.concatenate([p[:1], p, p[-1:]]).astype(np.float64)
    return kernel[0] * padded[:-2] + kernel[1] * padded[1:-1] + kernel[2] * padded[2:]


def unit_rank_reference(x: np.ndarray) -> np.ndarray:
    """scipy.stats.rankdata per class (ties averaged), scaled by (rank − 1)/(N − 1)."""
    out = np.empty(x.shape)
    for c in range(x.shape[1]):
        out[:, c] = (scipy.stats.rankdata(x[:, c], method="average") - 1) / (len(x) - 1)
    return out


def rank_fusion_reference(members: list[list[np.ndarray | None]], weights: list[float]) -> list[np.ndarray]:
    """Each member's rows of all files ranked per class, then per file Σ wᵢ rankᵢ / Σ wᵢ over the members present."""
    ranked = []
    for files in members:
        present = [f for f, v in enumerate(files) if v is not None]
        ranks = unit_rank_reference(np.concatenate([files[f] for f in present]))
        per_file, start = {}, 0
        for f in present:
            per_file[f] = ranks[start : start + len(files[f])]
            start += len(files[f])
        ranked.append(per_file)
    out = []
    for f in range(len(members[0])):
        total = sum(w * r[f] for r, w in zip(ranked, weights) if f in r)
        out.append(total / sum(w for r, w in zip(ranked, weights) if f in r))
    return out


# ------------------------------------------------------------------------------------------- label map
def test_label_map_direct_genus_missing_against_transcription():
    plan = bound(MODEL_STEPS, "label_map", {"labels.csv": "name\n" + "\n".join(MODEL_LABELS), "taxonomy.csv": TAXONOMY},
                 labels="labels.csv", taxonomy="taxonomy.csv", output="logits", fill=-8.0)
    assert (plan.direct, plan.by_genus, plan.missing) == (("amecro", "tytalb"), ("bubvir", "frog1"), ("strvar", "insect9"))
    assert "2 direct, 2 by genus, 2 missing" in plan.summary
    rng = np.random.default_rng(0)
    clip = rng.standard_normal((5, len(MODEL_LABELS))).astype(np.float32) * 3
    frames = rng.standard_normal((4, len(MODEL_LABELS), 7)).astype(np.float32)
    layout = WindowLayout(5, 1.0, 1, 0.0)
    got = MODEL_STEPS["label_map"].fn(Outputs({"logits": clip}, layout, 5), plan).get("logits")
    np.testing.assert_array_equal(got, label_map_reference(clip, -8.0).astype(np.float32))
    got = MODEL_STEPS["label_map"].fn(Outputs({"logits": frames}, layout, 4), plan).get("logits")
    assert got.shape == (4, len(LABELS), 7)
    np.testing.assert_array_equal(got, label_map_reference(frames, -8.0).astype(np.float32))
    no_genus = bound(MODEL_STEPS, "label_map", {"labels.csv": "name\n" + "\n".join(MODEL_LABELS), "taxonomy.csv": TAXONOMY},
                     labels="labels.csv", taxonomy="taxonomy.csv", output="logits", genus=False, fill=0.5)
    got = MODEL_STEPS["label_map"].fn(Outputs({"logits": clip}, layout, 5), no_genus).get("logits")
    np.testing.assert_array_equal(got, label_map_reference(clip, 0.5, genus=False).astype(np.float32))
    with pytest.raises(ParameterError, match="has 8 classes, labels.csv lists 9"):
        MODEL_STEPS["label_map"].fn(Outputs({"logits": clip[:, :8]}, layout, 5), plan)


def test_label_map_of_any_width_by_column():
    """14,795 model classes in the second column of a CSV, 234 folder labels: a wide map, checked by its plan."""
    rng = np.random.default_rng(1)
    genera = [f"Genus{g}" for g in range(600)]
    model = [f"{genera[i % 600]} species{i}" for i in range(14795)]
    labels = [f"c{j}" for j in range(234)]
    taxonomy = "primary_label,scientific_name\n" + "\n".join(
        f"c{j},{model[j * 60] if j % 3 else genera[j] + ' novus'}" for j in range(234))
    files = {"labels.csv": "index,name\n" + "\n".join(f"{i},{n}" for i, n in enumerate(model)), "tax.csv": taxonomy}
    entry = MODEL_STEPS["label_map"]
    plan = entry.extras["bind"](build_params(entry.params, {"labels": "labels.csv", "taxonomy": "tax.csv", "label_column": "name",
                                                            "output": "x"}, where="test"),
                                TableSource(files.__getitem__, tuple(labels), tuple(labels)))
    assert (plan.n_model, len(plan.direct), len(plan.by_genus), len(plan.missing)) == (14795, 156, 78, 0)
    x = rng.standard_normal((3, 14795)).astype(np.float32)
    got = entry.fn(Outputs({"x": x}, WindowLayout(3, 1.0, 1, 0.0), 3), plan).get("x")
    for j in range(234):
        want = x[:, j * 60] if j % 3 else x[:, [i for i in range(14795) if i % 600 == j]].max(axis=1)
        np.testing.assert_array_equal(got[:, j], want)


def test_a_label_map_that_maps_nothing_is_refused_naming_the_files():
    with pytest.raises(ValueError, match=r"labels\.csv and taxonomy\.csv map nothing"):
        bound(MODEL_STEPS, "label_map", {"labels.csv": "name\nHomo sapiens\nEngine\n", "taxonomy.csv": TAXONOMY},
              labels="labels.csv", taxonomy="taxonomy.csv", output="x")
    with pytest.raises(ValueError, match=r"taxonomy\.csv has no column 'latin'"):
        bound(MODEL_STEPS, "label_map", {"labels.csv": "name\nBubo bubo\n", "taxonomy.csv": TAXONOMY},
              labels="labels.csv", taxonomy="taxonomy.csv", output="x", name_field="latin")


# ------------------------------------------------------------------------------------ file-level steps
def test_temperature_per_taxon_class():
    plan = bound(ROW_STEPS, "temperature", {"taxonomy.csv": TAXONOMY}, taxonomy="taxonomy.csv",
                 temperatures={"Aves": 1.5, "Amphibia": 0.7})
    p = np.random.default_rng(2).random((7, len(LABELS)))
    t = np.array([1.5, 1.5, 1.5, 1.5, 0.7, 1.0])  # four Aves, one Amphibia, Insecta at the default
    np.testing.assert_allclose(ROW_STEPS["temperature"].fn(p, plan), sigmoid(logit(p) / t), rtol=0, atol=1e-12)
    on_logits = bound(ROW_STEPS, "temperature", {"taxonomy.csv": TAXONOMY}, taxonomy="taxonomy.csv",
                      temperatures={"Aves": 2.0}, default=0.5, input="logits")
    np.testing.assert_allclose(ROW_STEPS["temperature"].fn(p, on_logits), p / np.array([2, 2, 2, 2, 0.5, 0.5]))
    with pytest.raises(ValueError, match=r"temperatures: class_name 'Birds' is not in taxonomy\.csv"):
        bound(ROW_STEPS, "temperature", {"taxonomy.csv": TAXONOMY}, taxonomy="taxonomy.csv", temperatures={"Birds": 1.2})
    with pytest.raises(ModelFolderError, match=r"parameter 'temperatures'=\{'Aves': 0\.0\}: must be a finite number in \(0, 1000\]"):
        build_params(ROW_STEPS["temperature"].params, {"taxonomy": "t.csv", "temperatures": {"Aves": 0.0}}, where="test")


def test_confidence_and_rank_aware_scaling_and_smoothing_are_the_existing_steps():
    """Top-2 confidence scaling (mean of the file's top-2 windows ^0.4), rank-aware scaling (file max ^0.4) and
    [0.1, 0.8, 0.1] smoothing, as the 2026 solutions state them."""
    p = np.random.default_rng(3).random((12, 5))
    np.testing.assert_allclose(step(ROW_STEPS, "file_scale", p, top_k=2, power=0.4), file_scale_reference(p, 2, 0.4), atol=1e-12)
    np.testing.assert_allclose(step(ROW_STEPS, "file_scale", p, top_k=1, power=0.4), file_scale_reference(p, 1, 0.4), atol=1e-12)
    np.testing.assert_allclose(step(ROW_STEPS, "smooth", p, kernel=[0.1, 0.8, 0.1]), smooth_reference(p), atol=1e-12)


def delta_smooth_reference(p: np.ndarray, alpha: float, adaptive: bool = True) -> np.ndarray:
    """Window by window, from the original rows: a = alpha·(1 − the window's max over classes) (or alpha), the
    neighbours' mean (the first window: itself and the next; the last: the previous and itself), mixed in by a."""
    out = p.astype(np.float64).copy()
    n = len(p)
    for t in range(n if n > 1 else 0):
        a = alpha * (1.0 - p[t].max()) if adaptive else alpha
        pair = (p[t], p[t + 1]) if t == 0 else (p[t - 1], p[t]) if t == n - 1 else (p[t - 1], p[t + 1])
        out[t] = (1.0 - a) * p[t] + a * (pair[0] + pair[1]) / 2.0
    return out


@pytest.mark.parametrize("n, adaptive", [(12, True), (12, False), (2, True), (1, True)])
def test_adaptive_delta_smoothing(n, adaptive):
    """The 2026 2nd place's adaptive delta smoothing (base alpha 0.20), a constant-alpha variant, and the edges
    (one row: unchanged)."""
    p = np.random.default_rng(n).random((n, 5)) ** 3
    got = step(ROW_STEPS, "delta_smooth", p, alpha=0.2, adaptive=adaptive)
    np.testing.assert_allclose(got, delta_smooth_reference(p, 0.2, adaptive), rtol=0, atol=1e-12)
    assert n == 1 or np.abs(got - p).max() > 1e-3


def prior_plan(**params):
    return bound(ROW_STEPS, "file_prior", {"prior.csv": PRIOR_TABLE}, table="prior.csv", **{"pattern": PATTERN, **params})


def test_file_prior_from_the_file_name():
    plan = prior_plan(weight=0.5, example=EXAMPLE)
    assert plan.keys == ("site", "hour") and "2 rows by (site, hour), priors for 4 labels" in plan.summary
    p = np.random.default_rng(4).random((12, len(LABELS)))
    ctx = FileContext(EXAMPLE)
    prior = np.array([0.9, 0.2, 0.05, 0.5])  # row S05, hour 1 ("01" in the name)
    want = p.copy()
    want[:, :4] = sigmoid(logit(p[:, :4]) + 0.5 * logit(prior))
    np.testing.assert_allclose(ROW_STEPS["file_prior"].fn(p, ctx, plan), want, atol=1e-12)
    assert ctx.notes == []
    on_logits = prior_plan(weight=2.0, input="logits")
    got = ROW_STEPS["file_prior"].fn(p, FileContext("BC2026_Test_0002_S07_20250301_140000.flac"), on_logits)
    np.testing.assert_allclose(got[:, :4], p[:, :4] + 2.0 * logit([0.1, 0.6, 0.3, 0.02]), atol=1e-12)
    np.testing.assert_allclose(got[:, 4:], p[:, 4:])  # labels without a prior column


@pytest.mark.parametrize("name,note", [("soundscape_0001.ogg", "does not match the pattern"),
                                       ("BC2026_Test_0003_S09_20250301_050000.ogg", r"has no row for \{'site': 'S09', 'hour': '5'\}"),
                                       (None, "file name None does not match")])
def test_file_prior_skipped_for_a_name_without_a_prior(name, note):
    p = np.random.default_rng(5).random((3, len(LABELS)))
    ctx = FileContext(name)
    np.testing.assert_array_equal(run_row_steps([Step(ROW_STEPS["file_prior"], prior_plan(weight=1.0), "test")], p, ctx), p)
    assert len(ctx.notes) == 1 and re.search(note, ctx.notes[0])


@pytest.mark.parametrize("params,message", [
    ({"pattern": r"_(S\d+)_"}, "has no named group"),
    ({"pattern": r"_(?P<site>S\d+"}, "is not a regular expression"),
    ({"keys": ["station"]}, r"keys \['station'\] are not named groups"),
    ({"example": "site5_hour1.wav"}, "does not match the example file name 'site5_hour1.wav'"),
    ({"eps": 0.5}, r"eps must be in \(0, 0.5\)"),
])
def test_file_prior_pattern_checked_at_load(params, message):
    with pytest.raises(ModelFolderError, match=message):
        build_params(ROW_STEPS["file_prior"].params, {"table": "p.csv", "pattern": PATTERN, "weight": 1.0, **params},
                     where="test")


@pytest.mark.parametrize("table,message", [
    ("station,hour,amecro\nS05,1,0.5\n", "prior.csv has no column 'site'"),
    ("site,hour,owl\nS05,1,0.5\n", "no column is a label"),
    ("site,hour,amecro\nS05,1,0.5\nS05,01,0.2\n", r"line 3: a second row for \{'site': 'S05', 'hour': '1'\}"),
    ("site,hour,amecro\nS05,1,1.5\n", r"a prior must be in \[0, 1\]"),
])
def test_prior_table_checked_at_load(table, message):
    with pytest.raises(ValueError, match=message):
        bound(ROW_STEPS, "file_prior", {"prior.csv": table}, table="prior.csv", pattern=PATTERN, weight=1.0)


# ------------------------------------------------------------------------------------- submission steps
def test_rank_fusion_over_a_submission_against_rankdata():
    """Two members over four files of different lengths; the second member did not run on file 2 (a time budget
    dropped it): its ranks are over the other files and file 2 gets the first member's ranks alone."""
    rng = np.random.default_rng(6)
    lengths = [12, 3, 1, 7]
    a = [rng.random((n, 5)) for n in lengths]
    b = [rng.random((n, 5)) for n in lengths]
    b[2] = None
    a[0][:, 4] = 0.25  # ties inside a class
    got = rank_fuse([a, b], [0.8, 0.2])
    want = rank_fusion_reference([a, b], [0.8, 0.2])
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=0, atol=1e-6)
    np.testing.assert_allclose(got[2], unit_rank_reference(np.concatenate(a))[15:16], atol=1e-12)


def _spec(ensemble: dict, models=("cnn", "perch")) -> dict:
    return {"format": "birdinfer-model-folder", "format_version": 2, "sample_rate": SR, "labels": LABELS,
            "rows": {"seconds": 5.0}, "block_seconds": None,
            "features": {"wave": {"steps": [{"op": "windows", "length_seconds": 5.0, "step_seconds": 5.0}]}},
            "models": [{"name": name, "input": "wave", "input_shape": [-1, ROW], "outputs": [{"name": "p", "kind": "probabilities"}],
                        "steps": [{"step": "clip_rows"}], "variants": {"f32": {"onnx": f"{name}.onnx"}}} for name in models],
            "ensemble": ensemble}


def test_submission_tree_fused_against_transcription():
    """rank_mean over the submission (0.8 a group, 0.2 a model) → [0.1, 0.8, 0.1] per file → min-max per class
    over the submission; the group under it (weighted mean → power) runs per file."""
    spec = parse_spec(_spec({"members": [
        {"name": "finetuned", "weight": 0.8, "members": [{"model": "cnn", "weight": 1.0}, {"model": "cnn2", "weight": 3.0}],
         "steps": [{"step": "weighted_mean"}, {"step": "power", "exponent": 2.0}]},
        {"model": "perch", "weight": 0.2}],
        "steps": [{"step": "rank_mean", "scope": "submission"}, {"step": "smooth", "kernel": [0.1, 0.8, 0.1]},
                  {"step": "column_normalize", "method": "minmax"}]}, models=("cnn", "cnn2", "perch")))
    rng = np.random.default_rng(7)
    files = []
    for i, n in enumerate([12, 2, 1, 5]):
        rows = FileRows(f"f{i}.ogg", {m: rng.random((n, len(LABELS))) for m in ("cnn", "cnn2", "perch")})
        assert file_rows(spec.ensemble, rows.models, rows) is None  # held: fused once every file is done
        files.append(rows)
    got = fuse(spec.ensemble, files)
    group = [((0.25 * f.models["cnn"] + 0.75 * f.models["cnn2"]) ** 2) for f in files]
    np.testing.assert_allclose(files[0].groups["ensemble.members[0]"], group[0], atol=1e-12)
    ranked = rank_fusion_reference([group, [f.models["perch"] for f in files]], [0.8, 0.2])
    smoothed = np.concatenate([smooth_reference(r) for r in ranked])
    lo, hi = smoothed.min(axis=0), smoothed.max(axis=0)
    want = (smoothed - lo) / (hi - lo)
    np.testing.assert_allclose(np.concatenate(got), want, rtol=0, atol=1e-6)
    assert node_names(spec.ensemble) == {("group", "ensemble.members[0]"): "finetuned", ("model", "cnn"): "cnn",
                                         ("model", "cnn2"): "cnn2", ("model", "perch"): "perch"}


def test_submission_steps_only_in_the_ensemble():
    spec = _spec({"steps": [{"step": "weighted_mean"}]})
    spec["models"][0]["steps"].append({"step": "column_normalize", "method": "rank"})
    with pytest.raises(ModelFolderError, match=r"models\['cnn'\]\.steps\[1\] \(step 'column_normalize'\): scope "):
        parse_spec(spec)


# ------------------------------------------------------------------------------------ a real folder
def _onnx(path: Path, n_out: int, seed: int) -> np.ndarray:
    """A waveform model (W, 160000) → (W, n_out): the mean |sample| of 1000 pieces of 160 samples, times a matrix."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    w = (np.random.default_rng(seed).standard_normal((1000, n_out)) * 0.5).astype(np.float32)
    b = np.full(n_out, -1.0, np.float32)
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["r"]), helper.make_node("Abs", ["r"], ["a"]),
             helper.make_node("ReduceMean", ["a"], ["m"], axes=[2], keepdims=0),
             helper.make_node("MatMul", ["m", "w"], ["mw"]), helper.make_node("Add", ["mw", "b"], ["out"])]
    graph = helper.make_graph(nodes, path.stem, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["W", ROW])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["W", n_out])],
                              [numpy_helper.from_array(np.array([0, 1000, 160], np.int64), "shape"),
                               numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return w


RECIPE_ENSEMBLE = {"members": [
    {"name": "finetuned", "weight": 0.8, "members": [{"model": "cnn", "weight": 1.0}],
     "steps": [{"step": "weighted_mean"},
               {"step": "file_prior", "table": "prior.csv", "pattern": PATTERN, "weight": 0.5, "example": EXAMPLE},
               {"step": "temperature", "taxonomy": "taxonomy.csv", "temperatures": {"Aves": 1.5, "Amphibia": 0.7}}]},
    {"model": "perch", "weight": 0.2}],
    "steps": [{"step": "rank_mean", "scope": "submission"}, {"step": "smooth", "kernel": [0.1, 0.8, 0.1]},
              {"step": "column_normalize", "method": "minmax"}]}


@pytest.fixture(scope="module")
def recipe_source(tmp_path_factory) -> tuple[Path, dict]:
    src = tmp_path_factory.mktemp("recipe2026_src")
    weights = {"cnn": _onnx(src / "cnn.onnx", len(LABELS), 1), "perch": _onnx(src / "perch.onnx", len(MODEL_LABELS), 2)}
    (src / "taxonomy.csv").write_text(TAXONOMY)
    (src / "perch_labels.csv").write_text("inat2024_fsd50k\n" + "\n".join(MODEL_LABELS) + "\n")
    (src / "prior.csv").write_text(PRIOR_TABLE)
    spec = _spec(copy.deepcopy(RECIPE_ENSEMBLE))
    spec["models"][0]["steps"] = [{"step": "sigmoid"}, {"step": "clip_rows"}, {"step": "file_scale", "top_k": 2, "power": 0.4}]
    spec["models"][1]["steps"] = [{"step": "label_map", "labels": "perch_labels.csv", "taxonomy": "taxonomy.csv", "fill": -8.0},
                                  {"step": "sigmoid"}, {"step": "clip_rows"}, {"step": "file_scale", "top_k": 1, "power": 0.4}]
    (src / "spec.json").write_text(json.dumps(spec, indent=1))
    return src, weights


@pytest.fixture(scope="module")
def recipe_folder(recipe_source, tmp_path_factory) -> Path:
    from birdinfer.tools.importer import import_folder

    out = tmp_path_factory.mktemp("recipe2026") / "models"
    import_folder(recipe_source[0] / "spec.json", out, measure=False)
    return out


@pytest.fixture(scope="module")
def soundscapes(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("recipe2026_audio")
    for name, seconds, seed in [(EXAMPLE, 31.0, 1), ("BC2026_Test_0002_S07_20250301_140000.ogg", 12.3, 2),
                                ("BC2026_Test_0003_S09_20250301_050000.ogg", 3.0, 3), ("other_recording.ogg", 66.0, 4)]:
        write_ogg(folder / name, seconds, seed=seed)
    return folder


def _windows(path: Path) -> np.ndarray:
    y, sr = sf.read(path, dtype="float32")
    assert sr == SR
    n = max(1, len(y) // ROW)
    y = np.concatenate([y, np.zeros(n * ROW, np.float32)])[: n * ROW]
    return y.reshape(n, ROW).astype(np.float64)


def _recipe_reference(paths: list[Path], weights: dict) -> tuple[dict, list[np.ndarray]]:
    """The recipe written out: per file the models' rows and the finetuned group's, then the fusion."""
    members = {"cnn": [], "perch": [], "finetuned": []}
    prior = {("S05", "1"): [0.9, 0.2, 0.05, 0.5], ("S07", "14"): [0.1, 0.6, 0.3, 0.02]}
    t = np.array([1.5, 1.5, 1.5, 1.5, 0.7, 1.0])
    for path in paths:
        feats = np.abs(_windows(path).reshape(-1, 1000, 160)).mean(axis=2)
        cnn = file_scale_reference(sigmoid(feats @ weights["cnn"] - 1.0), 2, 0.4)
        perch = file_scale_reference(sigmoid(label_map_reference(feats @ weights["perch"] - 1.0, -8.0)), 1, 0.4)
        parts = path.stem.split("_")
        group = cnn.copy()
        if len(parts) == 6 and (parts[3], str(int(parts[5][:2]))) in prior:
            group[:, :4] = sigmoid(logit(group[:, :4]) + 0.5 * logit(prior[parts[3], str(int(parts[5][:2]))]))
        group = sigmoid(logit(group) / t)
        for name, value in (("cnn", cnn), ("perch", perch), ("finetuned", group)):
            members[name].append(value)
    ranked = rank_fusion_reference([members["finetuned"], members["perch"]], [0.8, 0.2])
    smoothed = [smooth_reference(r) for r in ranked]
    whole = np.concatenate(smoothed)
    lo, hi = whole.min(axis=0), whole.max(axis=0)
    return members, [(s - lo) / (hi - lo) for s in smoothed]


def _no_rank_swap(reference: np.ndarray, got: np.ndarray) -> float:
    """Checks that ranking ``got`` per class gives the ranks of ``reference``, and returns the margin: with every
    value within δ of the reference (δ = the largest difference, plus 1e-7 for the float32 rounding of the CSV),
    two rows can swap only where their reference values are closer than 2δ; rows tied in the reference (a class
    the label map fills) must be tied in ``got`` too."""
    delta = float(np.abs(got - reference).max()) + 1e-7
    margin = np.inf
    for c in range(reference.shape[1]):
        distinct = np.unique(reference[:, c])
        if len(distinct) == 1:
            assert np.ptp(got[:, c]) == 0
            continue
        margin = min(margin, np.diff(distinct).min() / (2 * delta))
    assert margin > 1, f"two rows of a class are within {2 * delta:g} of each other: pick other test data"
    return margin


def test_recipe_folder_submit_with_member_rows(recipe_folder, recipe_source, soundscapes, tmp_path):
    """Import (label map, prior table and taxonomy copied and checksummed), submit with --member-rows and
    --report on four BirdCLEF-2026-style files (31 s, 12.3 s, 3 s, and a 66 s one streamed in blocks).

    Bound: every member's rows equal the transcription within 1e-5 (float32 graph vs float64 numpy). Rank fusion
    turns a difference into a rank swap only between rows of a class closer than twice the members' largest
    difference; :func:`_no_rank_swap` asserts there is no such pair (and that the rows the label map fills are
    exactly tied in both), so the ranks are the transcription's and the fused rows agree within 1e-6 (the float
    error of the weighted means and the min-max)."""
    from birdinfer.cli import main

    manifest = Manifest.load(recipe_folder)
    assert {"perch_labels.csv", "taxonomy.csv", "prior.csv"} <= set(manifest.files)
    out, report, member_dir = tmp_path / "submission.csv", tmp_path / "report.json", tmp_path / "members"
    assert main(["submit", str(soundscapes), "--models", str(recipe_folder), "--out", str(out), "--precision", "f32",
                 "--report", str(report), "--member-rows", str(member_dir)]) == 0
    paths = sorted(soundscapes.iterdir())
    members, fused = _recipe_reference(paths, recipe_source[1])
    assert sorted(p.name for p in member_dir.iterdir()) == ["cnn.csv", "finetuned.csv", "perch.csv"]
    ids = [f"{p.stem}_{5 * (k + 1)}" for p, m in zip(paths, members["cnn"]) for k in range(len(m))]
    assert len(ids) == 6 + 2 + 1 + 13
    for name, want in members.items():
        table = pd.read_csv(member_dir / f"{name}.csv")
        assert list(table.row_id) == ids and list(table.columns[1:]) == LABELS
        np.testing.assert_allclose(table[LABELS].to_numpy(), np.concatenate(want), rtol=0, atol=1e-5)
        assert np.ptp(table[LABELS].to_numpy(), axis=0)[:3].min() > 1e-3  # the rows differ: not vacuous
        if name != "cnn":  # the two members of the rank fusion
            _no_rank_swap(np.concatenate(want), table[LABELS].to_numpy())
    sub = pd.read_csv(out)
    assert list(sub.row_id) == ids
    np.testing.assert_allclose(sub[LABELS].to_numpy(), np.concatenate(fused), rtol=0, atol=1e-6)

    info = json.loads(report.read_text())
    label_map = next(s for s in info["steps"] if s["step"].startswith("models['perch']"))
    assert (label_map["direct"], label_map["by_genus"], label_map["missing"]) == (2, 2, ["strvar", "insect9"])
    assert info["file_prior"][0]["unmatched"] == ["other_recording.ogg"]
    notes = {Path(n["file"]).name: n["note"] for n in info["notes"]}
    assert set(notes) == {"other_recording.ogg", "BC2026_Test_0003_S09_20250301_050000.ogg"}
    assert "does not match the pattern" in notes["other_recording.ogg"]
    assert info["member_rows"]["perch"].endswith("perch.csv")


def test_recipe_folder_predict_holds_rows_then_fuses(recipe_folder, recipe_source, soundscapes, tmp_path):
    """predict on the same files: the parts hold the rows before fusion, the output is fused from all of them."""
    from birdinfer.jobs.predict import predict

    table = pd.read_csv(predict([soundscapes], recipe_folder, tmp_path / "p.csv", precision="f32", progress=False))
    _, fused = _recipe_reference(sorted(soundscapes.iterdir()), recipe_source[1])
    np.testing.assert_allclose(table[LABELS].to_numpy(), np.concatenate(fused), rtol=0, atol=1e-6)
    assert not (tmp_path / "p.csv.parts").exists()


def test_label_map_errors_named_at_load_before_any_audio(recipe_source, recipe_folder, tmp_path):
    from birdinfer.tools.importer import import_folder

    src = recipe_source[0]
    spec = json.loads((src / "spec.json").read_text())
    (src / "nothing.csv").write_text("name\nHomo sapiens\nEngine\n")
    spec["models"][1]["steps"][0]["labels"] = "nothing.csv"
    (src / "nothing.json").write_text(json.dumps(spec))
    with pytest.raises(ModelFolderError, match=r"nothing\.json: models\['perch'\]\.steps\[0\] \(step 'label_map'\): "
                                               r"nothing\.csv and taxonomy\.csv map nothing"):
        import_folder(src / "nothing.json", tmp_path / "m1", measure=False)
    assert not (tmp_path / "m1").exists()  # refused before the output folder or any graph

    spec["models"][1]["steps"][0]["labels"] = "../perch_labels.csv"
    (src / "escape.json").write_text(json.dumps(spec))
    with pytest.raises(ModelFolderError, match=r"'\.\./perch_labels\.csv' must be a plain name"):
        import_folder(src / "escape.json", tmp_path / "m2", measure=False)

    copy_ = tmp_path / "edited"
    shutil.copytree(recipe_folder, copy_)
    (copy_ / "perch_labels.csv").write_text("inat2024_fsd50k\n" + "\n".join(reversed(MODEL_LABELS)) + "\n")
    with pytest.raises(ChecksumError, match=r"perch_labels\.csv: sha256 .* differs from the manifest's"):
        Manifest.load(copy_)
    shutil.copyfile(recipe_folder / "perch_labels.csv", copy_ / "perch_labels.csv")
    data = json.loads((recipe_folder / "manifest.json").read_text())
    del data["files"]["prior.csv"]
    (copy_ / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ModelFolderError, match=r"ensemble\.members\[0\]\.steps\[1\] \(step 'file_prior'\): file 'prior\.csv' "
                                               r"has no sha256"):
        Manifest.load(copy_)


def test_unbound_steps_say_to_load_the_folder(recipe_source):
    spec = parse_spec(json.loads((recipe_source[0] / "spec.json").read_text()))  # no folder: files not read
    perch = spec.models[1]
    assert perch.n_classes == 0
    with pytest.raises(ParameterError, match=r"step 'label_map': its files were not read.*perch_labels\.csv, taxonomy\.csv"):
        perch.block_steps[0](Outputs({"p": np.zeros((1, 9), np.float32)}, WindowLayout(1, 1.0, 1, 0.0), 1))
    bound_spec = parse_spec(json.loads((recipe_source[0] / "spec.json").read_text()), require_files=False,
                            files_dir=recipe_source[0])
    assert bound_spec.models[1].n_classes == len(MODEL_LABELS)


def test_ray_refuses_a_spec_fused_over_the_submission(recipe_folder, soundscapes, tmp_path):
    pytest.importorskip("ray")
    from birdinfer.jobs.distributed import predict_ray

    with pytest.raises(ParameterError, match="steps over the whole submission.*--engine local"):
        predict_ray([soundscapes], recipe_folder, tmp_path / "ray_out", progress=False)


def test_member_rows_of_a_spec_without_submission_steps(recipe_source, tmp_path, soundscapes):
    """A per-file ensemble (weighted mean): --member-rows writes every model's rows; the submission is unchanged."""
    from birdinfer.jobs.submit import make_submission
    from birdinfer.tools.importer import import_folder

    src = recipe_source[0]
    spec = json.loads((src / "spec.json").read_text())
    spec["ensemble"] = {"members": [{"model": "cnn", "weight": 3.0}, {"model": "perch", "weight": 1.0}],
                        "steps": [{"step": "weighted_mean"}]}
    (src / "mean.json").write_text(json.dumps(spec))
    models = tmp_path / "models"
    import_folder(src / "mean.json", models, measure=False)
    files = sorted(soundscapes.iterdir())[:2]
    sub = make_submission(files, models, out=None, precision="f32", progress=False, member_rows=tmp_path / "rows")
    cnn, perch = (pd.read_csv(tmp_path / "rows" / f"{m}.csv") for m in ("cnn", "perch"))
    assert list(cnn.row_id) == list(sub.row_id) == list(perch.row_id)
    np.testing.assert_allclose(sub[LABELS].to_numpy(), 0.75 * cnn[LABELS].to_numpy() + 0.25 * perch[LABELS].to_numpy(),
                               atol=1e-6)


def test_time_budget_drops_a_model_before_the_rank_fusion(recipe_folder, soundscapes, tmp_path):
    """A budget on a fake clock drops perch (the smallest share of the tree) after some files: its ranks are over
    the files it ran on, and the later files are fused from the finetuned group alone (transcription on the
    member rows written)."""
    from birdinfer.jobs.submit import make_submission

    ticks = iter(range(10**9))
    paths = sorted(soundscapes.iterdir())
    frame = make_submission(paths, recipe_folder, out=None, precision="f32", progress=False, time_budget_s=30.0,
                            clock=lambda: float(next(ticks)), member_rows=tmp_path / "rows")
    assert [e["model"] for e in frame.attrs["birdinfer"]["dropped"]] == ["perch"]
    tables = {m: pd.read_csv(tmp_path / "rows" / f"{m}.csv") for m in ("finetuned", "perch")}
    members: dict[str, list] = {"finetuned": [], "perch": []}
    for path in paths:
        for name, table in tables.items():
            rows = table[table.row_id.str.rsplit("_", n=1).str[0] == path.stem][LABELS].to_numpy(np.float64)
            members[name].append(rows if len(rows) else None)
    ran = [v is not None for v in members["perch"]]
    assert ran[0] and not ran[-1]  # dropped part-way
    ranked = rank_fusion_reference([members["finetuned"], members["perch"]], [0.8, 0.2])
    smoothed = np.concatenate([smooth_reference(r) for r in ranked])
    want = (smoothed - smoothed.min(axis=0)) / (smoothed.max(axis=0) - smoothed.min(axis=0))
    np.testing.assert_allclose(frame[LABELS].to_numpy(), want, rtol=0, atol=1e-6)
