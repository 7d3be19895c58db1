"""Row steps of the BirdCLEF 2026 2nd place's post-processing: ``delta_smooth`` and ``class_thresholds``,
against transcriptions written here as plain loops from the public inference script (FlorentinGe/
Birdclef2026-2ndplace, ``notebooks/2nd place ensemble inference script.py``: ``adaptive_delta_smooth`` and
``apply_per_class_thresholds``), and through a spec parsed like any folder's.
"""

from __future__ import annotations

import numpy as np
import pytest

from birdinfer.errors import ModelFolderError
from birdinfer.ops.registry import build_params
from birdinfer.ops.steps import ROW_STEPS
from birdinfer.ops.tables import TableSource

LABELS = ("a", "b", "c", "d")


def adaptive_reference(p: np.ndarray, base_alpha: float) -> np.ndarray:
    """One file's rows: row t moves toward the mean of its two neighbours (at an edge: itself and its one
    neighbour) by base_alpha · (1 − max of row t), reading the unsmoothed rows."""
    n, c = p.shape
    out = np.empty_like(p, dtype=np.float64)
    for t in range(n):
        conf = max(p[t])
        alpha = base_alpha * (1.0 - conf)
        for k in range(c):
            if t == 0:
                nb = (p[t, k] + p[t + 1, k]) / 2.0
            elif t == n - 1:
                nb = (p[t - 1, k] + p[t, k]) / 2.0
            else:
                nb = (p[t - 1, k] + p[t + 1, k]) / 2.0
            out[t, k] = (1.0 - alpha) * p[t, k] + alpha * nb
    return out


def thresholds_reference(p: np.ndarray, t: np.ndarray) -> np.ndarray:
    out = np.empty_like(p, dtype=np.float64)
    for i in range(p.shape[0]):
        for k in range(p.shape[1]):
            if p[i, k] > t[k]:
                v = 0.5 + 0.5 * (p[i, k] - t[k]) / (1 - t[k] + 1e-8)
            else:
                v = 0.5 * p[i, k] / (t[k] + 1e-8)
            out[i, k] = min(1.0, max(0.0, v))
    return out


def _step(name: str, **params):
    entry = ROW_STEPS[name]
    return entry.fn, build_params(entry.params, params, where="test")


def _bound(name: str, files: dict[str, str], **params):
    entry = ROW_STEPS[name]
    plan = entry.extras["bind"](build_params(entry.params, params, where="test"),
                                TableSource(files.__getitem__, LABELS, LABELS))
    return entry.fn, plan


@pytest.mark.parametrize("n_rows", [2, 3, 12, 13])
@pytest.mark.parametrize("base_alpha", [0.0, 0.2, 1.0])
def test_delta_smooth_against_transcription(n_rows, base_alpha):
    rows = np.random.default_rng(n_rows).random((n_rows, len(LABELS)))
    fn, params = _step("delta_smooth", alpha=base_alpha)
    np.testing.assert_allclose(fn(rows, params), adaptive_reference(rows, base_alpha), rtol=0, atol=1e-12)
    if base_alpha == 0.0:
        np.testing.assert_array_equal(fn(rows, params), rows)


def test_delta_smooth_of_one_row_and_of_confident_rows():
    fn, params = _step("delta_smooth", alpha=0.2)
    one = np.array([[0.1, 0.4, 0.3, 0.2]])
    np.testing.assert_array_equal(fn(one, params), one)
    confident = np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.5, 0.5], [0.2, 0.2, 0.2, 0.2]])
    got = fn(confident, params)
    np.testing.assert_array_equal(got[0], confident[0])  # a row with a score of 1 is not moved
    assert not np.allclose(got[2], confident[2])


@pytest.mark.parametrize("bad", [-0.1, 1.5])
def test_delta_smooth_refuses_alpha_outside_0_1(bad):
    with pytest.raises(ModelFolderError, match="alpha"):
        _step("delta_smooth", alpha=bad)


def test_class_thresholds_against_transcription():
    table = "primary_label,threshold\na,0.3\nc,0.05\nd,0.9\n"
    fn, plan = _bound("class_thresholds", {"th.csv": table}, table="th.csv")
    rows = np.random.default_rng(0).random((40, len(LABELS)))
    rows[0] = [0.3, 0.5, 0.05, 0.9]  # exactly at the thresholds
    t = np.array([0.3, 0.5, 0.05, 0.9])
    np.testing.assert_allclose(fn(rows, plan), thresholds_reference(rows, t), rtol=0, atol=1e-7)
    np.testing.assert_allclose(fn(rows, plan)[0], 0.5, atol=1e-7)  # a threshold lands on 0.5
    np.testing.assert_allclose(fn(rows, plan)[:, 1], rows[:, 1], atol=1e-12)  # b has no row: 0.5, unchanged
    assert "3 labels" in plan.summary


@pytest.mark.parametrize("table, message", [
    ("primary_label,threshold\na,1.0\n", r"threshold of 'a' must be a number in \(0, 1\)"),
    ("primary_label,threshold\na,x\n", r"threshold of 'a' must be a number"),
    ("primary_label,threshold\na,0.2\na,0.3\n", "label 'a' appears twice in column 'primary_label'"),
    ("primary_label,threshold\nzz,0.2\n", "'zz' is not one of the rows' labels"),
    ("label,threshold\na,0.2\n", "has no column 'primary_label'"),
])
def test_class_thresholds_refuses_a_bad_table(table, message):
    with pytest.raises(ValueError, match=message):
        _bound("class_thresholds", {"th.csv": table}, table="th.csv")
