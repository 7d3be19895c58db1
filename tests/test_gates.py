"""``rank_mean``'s gates, ``column_group_max`` and ``rare_suppress`` (the 2026 2nd and 5th places' steps after the
rank blend, :mod:`birdinfer.ops.gates`): each rule on arrays small enough to check by hand, then the load-time
checks (unknown member, threshold out of range, a group naming no label, a taxonomy without the column).
The end-to-end proofs against the scripts' transcriptions are in test_recipe2026_2nd.py and test_recipe2026_5th.py.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

from birdinfer.errors import ModelFolderError, ParameterError
from birdinfer.ops.gates import ContextKernel, Gate, GateTarget, GateTest, context_rows, gate_blend
from birdinfer.runtime.fusion import FileRows, fuse
from birdinfer.spec.parse import parse_spec

from test_recipe2026_steps import LABELS, SR, TAXONOMY  # amecro tytalb bubvir strvar (Aves), frog1 (Amphibia), insect9

ROW = 5 * SR


def _spec(members: list[str], steps: list[dict]) -> dict:
    return {"format": "birdinfer-model-folder", "format_version": 2, "sample_rate": SR, "labels": LABELS,
            "rows": {"seconds": 5.0}, "block_seconds": None,
            "features": {"wave": {"steps": [{"op": "windows", "length_seconds": 5.0, "step_seconds": 5.0}]}},
            "models": [{"name": m, "input": "wave", "input_shape": [-1, ROW], "outputs": [{"name": "p", "kind": "probabilities"}],
                        "steps": [{"step": "clip_rows"}], "variants": {"f32": {"onnx": f"{m}.onnx"}}} for m in members],
            "ensemble": {"members": [{"model": m, "weight": 1.0} for m in members], "steps": steps}}


def _parsed(tmp_path, steps: list[dict], members=("a", "b"), taxonomy: str = TAXONOMY):
    (tmp_path / "taxonomy.csv").write_text(taxonomy)
    return parse_spec(_spec(list(members), steps), require_files=False, files_dir=tmp_path, source="gates/manifest.json")


def _rank(**more) -> dict:
    return {"step": "rank_mean", "scope": "submission", "ranks": "percent", **more}


def _gate(name="g", when=None, toward=None, alpha=0.5, **more) -> dict:
    return {"name": name, "when": when or [{"member": "a", "of": "rank", "above": 0.5}],
            "toward": toward or [{"member": "a", "of": "rank"}], "alpha": alpha, **more}


def _one_column(values: dict[str, list[list[float]]]) -> list[FileRows]:
    """Files of rows where every column holds the same value (one column's story, repeated over the labels)."""
    n_files = len(next(iter(values.values())))
    return [FileRows(f"f{i}.ogg", {m: np.repeat(np.array(v[i], float)[:, None], len(LABELS), axis=1)
                                   for m, v in values.items()}) for i in range(n_files)]


# ------------------------------------------------------------------------------------------- gate rules
def test_context_kernel_and_rows_by_hand():
    taps = ContextKernel(radius=1, scale=1.0, df=1.0).taps()  # (1 + k²)^−1: 0.5, 1, 0.5, normalised
    np.testing.assert_allclose(taps, [0.25, 0.5, 0.25])
    rows = np.array([[0.0], [4.0], [8.0]])
    np.testing.assert_allclose(context_rows(rows, ContextKernel(radius=1, scale=1.0, df=1.0)), [[1.0], [4.0], [7.0]])
    np.testing.assert_array_equal(context_rows(np.array([[0.3]]), ContextKernel()), [[0.3]])  # one row: as it is
    # the scripts' kernel (scale 1.2, df 2: exponent −1.5) over ±3
    k = np.arange(-3, 4)
    want = (1 + (k / 1.2) ** 2 / 2) ** -1.5
    np.testing.assert_allclose(ContextKernel().taps(), want / want.sum())


def test_gate_moves_only_where_every_test_holds_and_masks_accumulate():
    """Four rows of one file, one column. Gate 1 (a rank > 0.5 and b value < 0.3) moves row 2 half way to a's
    rank (row 1: rank 0.5 is not > 0.5; row 3: b's value 0.5); gate 2 (a rank > 0.25) would move rows 1, 2 and 3,
    but row 2 is taken: rows 1 and 3 move."""
    blended = [np.array([[0.1], [0.2], [0.3], [0.4]])]
    values = {"a": [np.array([[0.1], [0.2], [0.3], [0.4]])], "b": [np.array([[0.9], [0.1], [0.1], [0.5]])]}
    ranked = {"a": [np.array([[0.25], [0.5], [0.75], [1.0]])], "b": [np.array([[1.0], [0.375], [0.375], [0.75]])]}
    g1 = Gate("one", (GateTest("a", "rank", above=0.5), GateTest("b", "value", below=0.3)), (GateTarget("a"),), 0.5)
    g2 = Gate("two", (GateTest("a", "rank", above=0.25),), (GateTarget("a"),), 0.5)
    out, counts = gate_blend(blended, values, ranked, [g1, g2], rank_all=None)
    np.testing.assert_allclose(out[0][:, 0], [0.1, 0.35, 0.525, 0.7])
    assert counts == [1, 2]


def test_gate_toward_the_max_of_rank_and_context_over_the_submission(tmp_path, caplog):
    """A one-row file keeps its value as context; the context is ranked over every file's rows (pct ranks)."""
    gate = _gate(when=[{"member": "a", "of": "context", "above": 0.6}],
                 toward=[{"member": "a", "of": "rank"}, {"member": "a", "of": "context"}],
                 context={"radius": 1, "scale": 1.0, "df": 1.0})
    with caplog.at_level(logging.INFO):
        spec = _parsed(tmp_path, [_rank(gates=[gate])])
        files = _one_column({"a": [[0.0, 0.4, 0.8], [0.5]], "b": [[0.1, 0.2, 0.3], [0.4]]})
        got = np.concatenate(fuse(spec.ensemble, files))[:, 0]
    # a's values 0, 0.4, 0.8 | 0.5 → percentile ranks over the 4 rows 1/4, 2/4, 4/4 | 3/4; b's 1/4 … 4/4
    rank_a, rank_b = np.array([0.25, 0.5, 1.0, 0.75]), np.array([0.25, 0.5, 0.75, 1.0])
    # context (taps 0.25 0.5 0.25, edges repeated): 0.1, 0.4, 0.7 | 0.5 (one row) → ranks 0.25, 0.5, 1.0, 0.75
    context = np.array([0.25, 0.5, 1.0, 0.75])
    blend = (rank_a + rank_b) / 2
    moved = context > 0.6
    want = np.where(moved, 0.5 * blend + 0.5 * np.maximum(rank_a, context), blend)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    assert moved.sum() == 2 and not np.allclose(got, blend)
    assert "rank_mean gate 'g' moved 12 of 24 cells" in caplog.text  # 2 rows × 6 columns
    assert "gate g: where a context > 0.6: 0.5·blend + 0.5·max(a rank, a context)" in caplog.text  # load report


def test_a_file_where_a_gate_member_did_not_run_keeps_its_blend(tmp_path):
    spec = _parsed(tmp_path, [_rank(gates=[_gate(when=[{"member": "a", "of": "rank", "above": 0.0}],
                                                 toward=[{"member": "b", "of": "rank"}], alpha=1.0)])])
    files = _one_column({"a": [[0.1, 0.9], [0.5]], "b": [[0.2, 0.3], [0.4]]})
    del files[1].models["b"]  # the time budget dropped b for the second file
    got = fuse(spec.ensemble, files)
    np.testing.assert_allclose(got[0][:, 0], [0.5, 1.0])  # alpha 1: b's rank over the file it ran on
    np.testing.assert_allclose(got[1][:, 0], [2 / 3])  # a's rank only (0.5 among 0.1, 0.9, 0.5): not gated


def test_tests_over_several_members_are_the_2nd_places_gates_1_and_3():
    """The 2nd place's gates 1 and 3 written from its script on random ranks / probabilities of two files: gate 1
    ``(p_anchor > 0.5) & (mean of the CNNs' p < 0.05)`` → ``0.92·blended + 0.08·r_anchor``; gate 3 ``(max of the
    CNNs' ranks > 0.95) & (r_anchor < 0.80) & ~gate 1`` → ``0.88·blended + 0.12·max of the CNNs' ranks``; as gates
    whose tests reduce several members (mean of values, max of ranks). The thresholds are met in many cells."""
    rng = np.random.default_rng(4)
    cnns = ["sed", "c1", "c2"]
    shape = [(7, 5), (4, 5)]
    values = {m: [rng.uniform(0, 1, s) ** (4 if m != "perch" else 1) for s in shape] for m in ["perch"] + cnns}
    ranked = {m: [rng.uniform(0, 1, s) for s in shape] for m in ["perch"] + cnns}
    for f in range(2):  # spikes: some CNN ranks above 0.95
        ranked["c2"][f][::2, ::2] = 0.97
    blended = [rng.uniform(0, 1, s) for s in shape]
    g1 = Gate("noise", (GateTest("perch", "value", above=0.5), GateTest(members=tuple(cnns), of="value", below=0.05,
                                                                         reduce="mean")), (GateTarget("perch"),), 0.08)
    g3 = Gate("spike", (GateTest(members=tuple(cnns), of="rank", above=0.95, reduce="max"),
                        GateTest("perch", "rank", below=0.80)), tuple(GateTarget(m) for m in cnns), 0.12)
    out, counts = gate_blend(blended, values, ranked, [g1, g3], rank_all=None)
    for f in range(2):
        p_mean = np.mean([values[m][f] for m in cnns], axis=0)
        r_max = np.max([ranked[m][f] for m in cnns], axis=0)
        fake_only = (values["perch"][f] > 0.5) & (p_mean < 0.05)
        want = np.where(fake_only, 0.92 * blended[f] + 0.08 * ranked["perch"][f], blended[f])
        cnn_only = (r_max > 0.95) & (ranked["perch"][f] < 0.80) & ~fake_only
        want = np.where(cnn_only, 0.88 * want + 0.12 * r_max, want)
        np.testing.assert_allclose(out[f], want, rtol=0, atol=1e-12)
    assert counts[0] >= 3 and counts[1] >= 3
    # the reduction matters: the max of the values in place of their mean moves other cells
    g1_max = Gate("noise", (g1.when[0], GateTest(members=tuple(cnns), of="value", below=0.05, reduce="max")),
                  g1.toward, 0.08)
    assert gate_blend(blended, values, ranked, [g1_max], rank_all=None)[1][0] < counts[0]


def test_a_switched_off_gate_is_stated_and_moves_nothing(tmp_path, caplog):
    gate = _gate(when=[{"members": ["a", "b"], "of": "rank", "above": 0.0, "reduce": "min"}], alpha=1.0)
    with caplog.at_level(logging.INFO):
        on = _parsed(tmp_path, [_rank(gates=[gate])])
        off = _parsed(tmp_path, [_rank(gates=[{**gate, "enabled": False}])])
    files = _one_column({"a": [[0.1, 0.9], [0.5]], "b": [[0.2, 0.3], [0.4]]})
    rank_a, rank_b = np.array([1, 3, 2]) / 3, np.array([1, 2, 3]) / 3  # percent ranks over the 3 rows
    np.testing.assert_allclose(np.concatenate(fuse(on.ensemble, files))[:, 0], rank_a)  # alpha 1: a's rank
    plain = np.concatenate(fuse(off.ensemble, files))[:, 0]
    np.testing.assert_allclose(plain, (rank_a + rank_b) / 2)
    assert "gate g: where min(a, b) rank > 0: 0·blend + 1·max(a rank)" in caplog.text
    assert "gate g (off): where min(a, b) rank > 0" in caplog.text


# ----------------------------------------------------------------------------- column_group_max, rare_suppress
def test_column_group_max_by_hand_and_the_load_report(tmp_path, caplog):
    step = {"step": "column_group_max", "groups": [["amecro", "strvar"], ["tytalb", "47158son15"], ["frog1", "insect9", "x"]],
            "missing": "skip"}
    with caplog.at_level(logging.INFO):
        spec = _parsed(tmp_path, [_rank(), step])
    assert ("column_group_max: 2 of 3 groups matched the folder's labels; skipped (fewer than two of their labels in "
            "the folder): tytalb/47158son15") in caplog.text
    rows = np.array([[0.1, 0.2, 0.3, 0.4, 0.5, 0.6], [0.9, 0.8, 0.7, 0.6, 0.0, 0.1]])
    got = spec.ensemble.steps[0](rows)
    np.testing.assert_allclose(got, [[0.4, 0.2, 0.3, 0.4, 0.6, 0.6], [0.9, 0.8, 0.7, 0.9, 0.1, 0.1]])


def test_column_group_max_that_matches_nothing_says_so(tmp_path, caplog):
    with caplog.at_level(logging.INFO):
        spec = _parsed(tmp_path, [_rank(), {"step": "column_group_max", "groups": [["47158son15", "47158son16"]],
                                            "missing": "skip"}])
    assert "0 of 1 groups matched the folder's labels" in caplog.text and "the step changes nothing" in caplog.text
    rows = np.random.default_rng(0).random((3, 6))
    np.testing.assert_array_equal(spec.ensemble.steps[0](rows), rows)


def test_rare_suppress_by_hand_over_the_submission(tmp_path):
    """frog1 (Amphibia): column mean 0.3 → values below 0.35 times 0.9; the other columns untouched."""
    spec = _parsed(tmp_path, [_rank(), {"step": "rare_suppress", "taxonomy": "taxonomy.csv", "classes": ["Amphibia"]}])
    files = _one_column({"a": [[0.1, 0.2], [0.6]], "b": [[0.1, 0.2], [0.6]]})
    step = spec.ensemble.steps[0]
    assert step.params.scope == "submission" and step.params.mask.tolist() == [False] * 4 + [True, False]
    rows = np.array([[0.1] * 6, [0.2] * 6, [0.6] * 6])
    got = step(rows)
    np.testing.assert_allclose(got[:, 4], [0.09, 0.18, 0.6])
    np.testing.assert_array_equal(np.delete(got, 4, axis=1), np.delete(rows, 4, axis=1))
    # in the tree: the mean is over every file's rows (ranks 1/3, 2/3, 1 → mean 2/3 + 0.05: the first two scaled)
    fused = np.concatenate(fuse(spec.ensemble, files))
    np.testing.assert_allclose(fused[:, 4], [0.9 / 3, 1.8 / 3, 1.0])
    np.testing.assert_allclose(fused[:, 0], [1 / 3, 2 / 3, 1.0])


# ---------------------------------------------------------------------------------------- load-time errors
@pytest.mark.parametrize("steps, message", [
    ([_rank(gates=[_gate(when=[{"member": "perch", "of": "rank", "above": 0.5}])])],
     r"gates\[0\] \('g'\): member 'perch' is not in the group \(members: a, b\)"),
    ([_rank(gates=[_gate(toward=[{"member": "c"}])])], r"member 'c' is not in the group"),
    ([_rank(gates=[_gate(when=[{"member": "a", "of": "rank", "above": 1.5}])])],
     r"parameter 'gates'=.*\[0\]: when=.*above=1.5: must be a finite number in \[0, 1\]"),
    ([_rank(gates=[_gate(alpha=-0.1)])], r"alpha=-0.1: must be a finite number in \[0, 1\]"),
    ([_rank(gates=[_gate(when=[{"member": "a", "of": "rank"}])])], "needs exactly one of 'above' and 'below'"),
    ([_rank(gates=[_gate(when=[{"member": "a", "of": "mean", "above": 0.5}])])], r"of='mean': must be one of"),
    ([_rank(gates=[_gate(threshold=0.5)])], r"unknown field 'threshold'"),
    ([_rank(gates=[_gate(), _gate()])], "two gates share a name"),
    ([{"step": "rank_mean", "gates": [_gate()]}], "they need scope 'submission'"),
    ([_rank(gates=[_gate(context={"radius": 0})])], r"radius=0: must be a whole number in \[1, 1000\]"),
    ([_rank(gates=[_gate(when=[{"members": ["a", "perch"], "of": "value", "below": 0.05, "reduce": "mean"}])])],
     r"gates\[0\] \('g'\): member 'perch' is not in the group \(members: a, b\)"),
    ([_rank(gates=[_gate(when=[{"members": ["a", "b"], "of": "value", "below": 0.05}])])],
     r"a test of members \['a', 'b'\] needs 'reduce' \(mean, max or min\)"),
    ([_rank(gates=[_gate(when=[{"member": "a", "of": "value", "below": 0.05, "reduce": "max"}])])],
     r"'reduce' goes with a list of 'members', not with one member 'a'"),
    ([_rank(gates=[_gate(when=[{"member": "a", "members": ["a", "b"], "below": 0.05, "reduce": "max"}])])],
     r"a test names either one 'member' or a list of 'members'"),
    ([_rank(gates=[_gate(when=[{"members": ["a", "a"], "below": 0.05, "reduce": "max"}])])],
     r"a test's 'members' must be at least two different members, got \['a', 'a'\]"),
    ([_rank(gates=[_gate(when=[{"members": ["a", "b"], "below": 0.05, "reduce": "median"}])])],
     r"reduce='median': must be one of"),
    ([_rank(gates=[_gate(enabled="no")])], r"enabled='no'"),
    ([_rank(), {"step": "column_group_max", "groups": [["amecro", "47158son15"]]}],
     r"groups\[0\]: label '47158son15' is not one of the folder's labels \(set \"missing\": \"skip\""),
    ([_rank(), {"step": "column_group_max", "groups": [["amecro"]]}], "needs at least two different labels"),
    ([_rank(), {"step": "column_group_max", "groups": [["amecro", "tytalb"], ["tytalb", "frog1"]]}],
     "label 'tytalb' is in two groups"),
    ([_rank(), {"step": "rare_suppress", "taxonomy": "taxonomy.csv", "classes": ["Reptilia"]}],
     r"classes: class_name 'Reptilia' is not in taxonomy.csv"),
    ([_rank(), {"step": "rare_suppress", "taxonomy": "taxonomy.csv", "classes": ["Amphibia"], "class_field": "order"}],
     "taxonomy.csv has no column 'order'"),
    ([_rank(), {"step": "rare_suppress", "taxonomy": "taxonomy.csv", "classes": []}], "classes names no taxon class"),
])
def test_gates_and_steps_are_checked_when_loaded(tmp_path, steps, message):
    with pytest.raises(ModelFolderError, match=message) as e:
        _parsed(tmp_path, steps)
    assert str(e.value).startswith("gates/manifest.json: ")
    assert "ensemble.steps[" in str(e.value) or "rank_mean" in str(e.value)


def test_a_taxonomy_without_the_class_column_is_refused(tmp_path):
    with pytest.raises(ModelFolderError, match="taxonomy.csv has no column 'class_name'"):
        _parsed(tmp_path, [_rank(), {"step": "rare_suppress", "taxonomy": "taxonomy.csv", "classes": ["Amphibia"]}],
                taxonomy="primary_label,scientific_name\namecro,Corvus brachyrhynchos\n")


def test_unknown_gate_members_are_refused_without_the_folder_and_unbound_gates_say_to_load_it():
    with pytest.raises(ModelFolderError, match="member 'perch' is not in the group"):
        parse_spec(_spec(["a", "b"], [_rank(gates=[_gate(when=[{"member": "perch", "of": "rank", "above": 0.5}])])]))
    spec = parse_spec(_spec(["a", "b"], [_rank(gates=[_gate()])]))
    with pytest.raises(ParameterError, match="load the model folder"):
        fuse(spec.ensemble, _one_column({"a": [[0.1]], "b": [[0.2]]}))
