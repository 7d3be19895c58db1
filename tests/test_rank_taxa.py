"""``rank_mean`` with member weights per taxon class (``taxon_weights``) and percentile ranks (``ranks:
"percent"``), against a transcription of the 2026 2nd place's "taxon-weighted rank blend" written here with
pandas from the facts of its public inference script (FlorentinGe/Birdclef2026-2ndplace, ``notebooks/2nd place
ensemble inference script.py``, "Ensembling"): each model's probabilities ranked per class over every row of the
submission with ``rank(pct=True)`` (ties averaged, rank / N), each model's weight per column the weight of the
column's taxon class (``class_name`` of ``taxonomy.csv``), ``Σ w·rank / Σ w`` per column.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from birdinfer.errors import ModelFolderError, ParameterError
from birdinfer.runtime.fusion import FileRows, file_rows, fuse
from birdinfer.spec.parse import parse_spec

from test_recipe2026_steps import LABELS, SR, TAXONOMY  # six labels: four Aves, one Amphibia, one Insecta

ROW = 5 * SR
MODELS = ("perch", "sed", "exp85")
#: The shape of the 2nd place's registry: equal weights, and a model that counts for insects only.
TAXON_WEIGHTS = {"sed": {"Aves": 0.25, "Amphibia": 0.25, "Insecta": 0.17},
                 "exp85": {"Aves": 0.0, "Amphibia": 0.0, "Insecta": 1.25}}


def _spec(combine: dict) -> dict:
    return {"format": "birdinfer-model-folder", "format_version": 2, "sample_rate": SR, "labels": LABELS,
            "rows": {"seconds": 5.0}, "block_seconds": None,
            "features": {"wave": {"steps": [{"op": "windows", "length_seconds": 5.0, "step_seconds": 5.0}]}},
            "models": [{"name": m, "input": "wave", "input_shape": [-1, ROW], "outputs": [{"name": "p", "kind": "probabilities"}],
                        "steps": [{"step": "clip_rows"}], "variants": {"f32": {"onnx": f"{m}.onnx"}}} for m in MODELS],
            "ensemble": {"members": [{"model": m, "weight": 0.25} for m in MODELS], "steps": [combine]}}


def _parsed(tmp_path, combine: dict):
    (tmp_path / "taxonomy.csv").write_text(TAXONOMY)
    return parse_spec(_spec(combine), require_files=False, files_dir=tmp_path, source="taxa/manifest.json")


def _files(seed: int, lengths=(12, 3, 1, 12)) -> list[FileRows]:
    rng = np.random.default_rng(seed)
    files = []
    for i, n in enumerate(lengths):
        models = {m: rng.random((n, len(LABELS))) for m in MODELS}
        models["sed"][:, 0] = np.round(models["sed"][:, 0], 1)  # ties inside a class
        files.append(FileRows(f"BC2026_Test_{i:04d}_S05_20250227_010002.ogg", models))
    return files


def taxon_blend_reference(members: dict[str, np.ndarray], weights: dict[str, dict[str, float]]) -> np.ndarray:
    """The 2nd place's blend over the rows of the whole submission."""
    taxonomy = pd.read_csv(pd.io.common.StringIO(TAXONOMY)).set_index("primary_label")["class_name"].to_dict()
    taxon_per_col = np.array([taxonomy[label] for label in LABELS])
    total, blended = 0.0, 0.0
    for name, p in members.items():
        r = pd.DataFrame(p, columns=LABELS).rank(axis=0, pct=True).to_numpy(np.float64)
        w_vec = np.array([weights[name].get(t, 1.0) for t in taxon_per_col])
        total = total + w_vec
        blended = blended + w_vec * r
    return blended / total


def test_taxon_weighted_percentile_rank_blend_over_the_submission(tmp_path):
    spec = _parsed(tmp_path, {"step": "rank_mean", "scope": "submission", "ranks": "percent", "taxonomy": "taxonomy.csv",
                              "taxon_weights": TAXON_WEIGHTS})
    files = _files(1)
    for f in files:
        assert file_rows(spec.ensemble, f.models, f) is None  # held until every file is done
    got = np.concatenate(fuse(spec.ensemble, files))
    whole = {m: np.concatenate([f.models[m] for f in files]) for m in MODELS}
    want = taxon_blend_reference(whole, {"perch": {"Aves": 0.25, "Amphibia": 0.25, "Insecta": 0.25}, **TAXON_WEIGHTS})
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)
    # exp85 counts for the insect column only: the other columns are the plain mean of perch's and sed's ranks
    pct = {m: pd.DataFrame(whole[m]).rank(axis=0, pct=True).to_numpy() for m in ("perch", "sed")}
    np.testing.assert_allclose(got[:, :5], (pct["perch"][:, :5] + pct["sed"][:, :5]) / 2, rtol=0, atol=1e-9)


def test_taxon_weights_within_each_file_and_unit_ranks(tmp_path):
    spec = _parsed(tmp_path, {"step": "rank_mean", "taxonomy": "taxonomy.csv", "taxon_weights": TAXON_WEIGHTS})
    for f in _files(2):
        got = file_rows(spec.ensemble, f.models, f)
        n = len(f.models["perch"])
        if n == 1:
            np.testing.assert_allclose(got, 0.5)
            continue
        ranks = {m: (pd.DataFrame(v).rank(axis=0).to_numpy() - 1) / (n - 1) for m, v in f.models.items()}
        w = {"perch": np.full(6, 0.25), "sed": np.array([0.25] * 5 + [0.17]), "exp85": np.array([0.0] * 5 + [1.25])}
        want = sum(w[m] * ranks[m] for m in MODELS) / sum(w.values())
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


def test_a_member_missing_for_a_file_is_left_out_per_column(tmp_path):
    """A model dropped by the time budget for one file: that file's columns renormalise over the members that ran
    (its insect column then over perch and sed only); the ranks are over the files each member ran on."""
    spec = _parsed(tmp_path, {"step": "rank_mean", "scope": "submission", "ranks": "percent", "taxonomy": "taxonomy.csv",
                              "taxon_weights": TAXON_WEIGHTS})
    files = _files(3)
    del files[1].models["exp85"]
    got = fuse(spec.ensemble, files)
    ranked = {}
    for m in MODELS:
        present = [f.models[m] for f in files if m in f.models]
        r = pd.DataFrame(np.concatenate(present)).rank(axis=0, pct=True).to_numpy()
        ranked[m] = np.split(r, np.cumsum([len(x) for x in present])[:-1])
    r1 = {"perch": ranked["perch"][1], "sed": ranked["sed"][1]}
    want = (0.25 * r1["perch"] + np.array([0.25] * 5 + [0.17]) * r1["sed"]) / np.array([0.5] * 5 + [0.42])
    np.testing.assert_allclose(got[1], want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("combine, message", [
    ({"taxon_weights": {"sed": {"Insecta": 1.0}}}, "taxon_weights and taxonomy go together"),
    ({"taxonomy": "taxonomy.csv"}, "taxon_weights and taxonomy go together"),
    ({"taxonomy": "taxonomy.csv", "taxon_weights": {"cnn9": {"Aves": 1.0}}}, r"taxon_weights: member 'cnn9' is not in the group's members"),
    ({"taxonomy": "taxonomy.csv", "taxon_weights": {"sed": {"Reptilia": 1.0}}}, r"taxon_weights: class_name 'Reptilia' is not in taxonomy.csv"),
    ({"taxonomy": "taxonomy.csv", "taxon_weights": {"sed": {"Aves": -1.0}}}, r"parameter 'taxon_weights'"),
    ({"taxonomy": "taxonomy.csv", "taxon_weights": {"sed": {"Aves": 1.0}}, "class_field": "order"}, "has no column 'order'"),
    ({"ranks": "dense"}, r"parameter 'ranks'='dense'"),
])
def test_taxon_weights_are_checked_when_loaded(tmp_path, combine, message):
    with pytest.raises(ModelFolderError, match=message) as e:
        _parsed(tmp_path, {"step": "rank_mean", "scope": "submission", **combine})
    assert str(e.value).startswith("taxa/manifest.json: ")
    assert "ensemble.steps[0]" in str(e.value) or "rank_mean" in str(e.value)


def test_unbound_taxon_weights_say_to_load_the_folder():
    spec = parse_spec(_spec({"step": "rank_mean", "taxonomy": "taxonomy.csv", "taxon_weights": TAXON_WEIGHTS}))
    f = _files(4)[0]
    with pytest.raises(ParameterError, match="taxonomy.csv can be read"):
        file_rows(spec.ensemble, f.models, f)
