"""birdinfer.runtime.budget / birdinfer.spec.info: the time budget weighs a model by its share of the ensemble tree
(the product of each level's normalised weight from the root down), for version 1 folders and specs alike."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from birdinfer.runtime.budget import TimeBudget
from birdinfer.spec.upgrade import spec_from_v1
from birdinfer.spec.manifest import Manifest
from birdinfer.spec.files import FORMAT
from birdinfer.spec.parse import parse_spec
from birdinfer.spec.info import effective_weights
from birdinfer.spec.upgrade import upgrade

from conftest import REFERENCE_RECIPE, recipe_manifest


def fourth_place_v1() -> Manifest:
    """The 4th place's 16 models, 3 mel groups and weights (weights/birdclef2025_4th.json), version 1."""
    return recipe_manifest(json.loads(REFERENCE_RECIPE.read_text()))


def v1_weights(manifest: Manifest) -> dict[str, float]:
    """Version 1's rule, written out: model weight / its group's sum × group weight / sum of group weights."""
    groups = manifest.used_groups()
    total_group = sum(g.weight for g in groups)
    out = {}
    for g in groups:
        members = manifest.models_of(g.name)
        for m in members:
            out[m.name] = m.weight / sum(x.weight for x in members) * g.weight / total_group
    return out


def test_fourth_place_weights_are_the_tree_product():
    v1 = fourth_place_v1()
    spec = parse_spec(spec_from_v1(v1))
    expected = v1_weights(v1)
    assert set(expected) == {m.name for m in v1.models} and len(expected) == 16
    for manifest in (v1, spec):
        got = effective_weights(manifest)
        assert got == pytest.approx(expected, rel=1e-12)
        assert sum(got.values()) == pytest.approx(1.0)
    # not one flattened group: tf_efficientnetv2_s_v3 weighs its group share, not model weight / all weights
    name = next(m.name for m in v1.models if m.arch == "tf_efficientnetv2_s" and m.group == "v3")
    flat = v1.models_of("v3")[0].weight / sum(m.weight for m in v1.models)
    assert effective_weights(spec)[name] == pytest.approx(expected[name])
    assert abs(expected[name] - flat) > 0.01


def _fake_predictor(manifest, seconds: dict[str, float], files_done: int):
    return SimpleNamespace(manifest=manifest, active=[m.name for m in manifest.models],
                           model_seconds={n: s * files_done for n, s in seconds.items()})


@pytest.mark.parametrize("budget_s", [400.0, 250.0, 120.0])
def test_fourth_place_v1_and_its_spec_drop_the_same_models(budget_s):
    v1 = fourth_place_v1()
    spec = parse_spec(spec_from_v1(v1))
    # a cost per model that is not proportional to its weight: ~ input size, with a per-architecture factor
    seconds = {m.name: (1.0 + 0.1 * len(m.arch)) * m.input_shape[2] / 256 for m in v1.models}
    drops = []
    for manifest in (v1, spec):
        budget = TimeBudget(budget_s)
        predictor = _fake_predictor(manifest, seconds, files_done=10)
        drops.append(budget.plan(predictor, elapsed=100.0, files_done=10, files_left=20, overhead_per_file=0.5))
    assert drops[0] == drops[1]
    assert drops[0], "this budget must drop models"
    assert len(drops[0]) < 16
    # each drop was the lowest weight per second among the models still running at that point
    active = [m.name for m in v1.models]
    for victim in drops[0]:
        weights = v1_weights(v1.select(active)) if active else {}
        assert victim == min(active, key=lambda n: weights[n] / seconds[n])
        active.remove(victim)


def _nested_spec(weights: dict) -> dict:
    """A 3-level tree over 4 models (the parse needs no graph file)."""
    feature = {"steps": [{"op": "windows", "length_seconds": 1.0, "step_seconds": 1.0}]}
    model = lambda name: {"name": name, "input": "wave", "input_shape": [-1, 160], "outputs": [{"name": "p", "kind": "probabilities"}],  # noqa: E731
                          "steps": [{"step": "clip_rows"}], "variants": {"f32": {"openvino": f"{name}.xml"}}}
    return {"format": FORMAT, "format_version": 2, "sample_rate": 160, "labels": ["a", "b"],
            "rows": {"seconds": 1.0}, "features": {"wave": feature}, "models": [model(n) for n in "abcd"],
            "ensemble": {"steps": [{"step": "weighted_mean"}], "members": [
                {"model": "a", "weight": weights["a"]},
                {"name": "g", "weight": weights["g"], "members": [
                    {"model": "b", "weight": weights["b"]},
                    {"name": "h", "weight": weights["h"], "members": [{"model": "c", "weight": weights["c"]},
                                                                         {"model": "d", "weight": weights["d"]}]}]}]}}


def test_nested_tree_weights_and_active_members():
    w = {"a": 1.0, "g": 3.0, "b": 2.0, "h": 2.0, "c": 1.0, "d": 3.0}
    spec = parse_spec(_nested_spec(w))
    got = effective_weights(spec)
    assert got["a"] == pytest.approx(1 / 4)
    assert got["b"] == pytest.approx(3 / 4 * 2 / 4)
    assert got["c"] == pytest.approx(3 / 4 * 2 / 4 * 1 / 4)
    assert got["d"] == pytest.approx(3 / 4 * 2 / 4 * 3 / 4)
    # members that no longer run do not count: their siblings share their part, as the engine combines them
    without_b = effective_weights(spec, ["a", "c", "d"])
    assert set(without_b) == {"a", "c", "d"}
    assert without_b["d"] == pytest.approx(3 / 4 * 3 / 4)
    assert sum(without_b.values()) == pytest.approx(1.0)
    assert upgrade(spec) is spec


def test_submission_budget_on_a_v2_folder_drops_by_tree_weight(small_v2_folder, tmp_path):
    """make_submission's budget on a three-level tree: with equal costs the smallest share of the tree goes
    first (lite0_v2: 2/3 × 1/4 × 1/2), not the smallest model weight (lite0_v1b's 0.5); every row is kept."""
    import numpy as np

    from birdinfer.jobs.submit import make_submission
    from conftest import LABELS, write_ogg

    ticks = iter(range(10**9))
    files = [write_ogg(tmp_path / f"s{i}.ogg", 10.0, seed=300 + i) for i in range(6)]
    frame = make_submission(files, small_v2_folder, out=None, precision="f32", progress=False, time_budget_s=60.0,
                            clock=lambda: float(next(ticks)))
    dropped = [e["model"] for e in frame.attrs["birdinfer"]["dropped"]]
    weights = effective_weights(Manifest.load(small_v2_folder))
    assert dropped and dropped[0] == min(weights, key=weights.get) == "lite0_v2"
    assert len(dropped) < 4
    assert len(frame) == 6 * 2 and np.isfinite(frame[LABELS].to_numpy()).all()
