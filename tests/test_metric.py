"""The competition metric against scikit-learn (the Kaggle scorer calls roc_auc_score(average='macro'))."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from birdinfer.errors import ParameterError
from birdinfer.tools.metric import binary_roc_auc, macro_roc_auc, score_files


def _kaggle_reference(solution: pd.DataFrame, submission: pd.DataFrame) -> float:
    """Transcription of the Kaggle BirdCLEF 2025 scorer: keep columns with a positive, sklearn macro AUC."""
    sums = solution.sum(axis=0)
    scored = list(sums[sums > 0].index)
    return roc_auc_score(solution[scored].values, submission[scored].values, average="macro")


def _random_case(rng, n_rows=60, n_species=9, *, quantise=None):
    species = [f"sp{i:02d}" for i in range(n_species)]
    truth = (rng.random((n_rows, n_species)) < rng.uniform(0.05, 0.5, n_species)).astype(int)
    truth[:, 0] = 0  # a species absent from the solution: must be skipped
    truth[0, 1:] = 1  # everything else has at least one positive
    truth[1, 1:] = 0  # ... and one negative
    scores = rng.random((n_rows, n_species)) + 0.6 * truth
    if quantise:  # many ties, as with rounded probabilities
        scores = np.round(scores * quantise) / quantise
    return pd.DataFrame(truth, columns=species), pd.DataFrame(scores, columns=species)


@pytest.mark.parametrize("quantise", [None, 4, 1])
@pytest.mark.parametrize("seed", range(5))
def test_macro_auc_equals_sklearn(seed, quantise):
    rng = np.random.default_rng(seed)
    solution, submission = _random_case(rng, quantise=quantise)
    ours = macro_roc_auc(solution, submission)
    assert ours == pytest.approx(_kaggle_reference(solution, submission), abs=1e-12)


def test_binary_auc_known_values():
    assert binary_roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.75)
    assert binary_roc_auc(np.array([0, 1]), np.array([0.5, 0.5])) == pytest.approx(0.5)  # tie counts one half
    assert binary_roc_auc(np.array([1, 0, 0]), np.array([3.0, 2.0, 1.0])) == 1.0
    assert binary_roc_auc(np.array([1, 0, 0]), np.array([0.0, 2.0, 1.0])) == 0.0


def test_row_id_column_is_ignored_and_skipped_species_do_not_count():
    solution = pd.DataFrame({"row_id": ["a_5", "a_10", "a_15"], "x": [1, 0, 0], "absent": [0, 0, 0]})
    submission = pd.DataFrame({"row_id": ["a_5", "a_10", "a_15"], "x": [0.9, 0.2, 0.1], "absent": [1.0, 0.0, 0.0]})
    assert macro_roc_auc(solution, submission) == 1.0


def test_single_class_column_raises_naming_species():
    solution = pd.DataFrame({"x": [1, 1, 1], "y": [1, 0, 0]})
    with pytest.raises(ParameterError, match="'x'"):
        macro_roc_auc(solution, solution.astype(float))


def _write(path, frame):
    frame.to_csv(path, index=False)
    return path


def test_score_files_aligns_rows_by_row_id(tmp_path):
    rng = np.random.default_rng(7)
    solution, submission = _random_case(rng, n_rows=24)
    row_ids = [f"soundscape_{i // 12}_{5 * (i % 12 + 1)}" for i in range(24)]
    solution.insert(0, "row_id", row_ids)
    submission.insert(0, "row_id", row_ids)
    expected = _kaggle_reference(solution.drop(columns="row_id"), submission.drop(columns="row_id"))
    shuffled = submission.sample(frac=1.0, random_state=3)  # rows in another order, columns too
    shuffled = shuffled[["row_id"] + list(shuffled.columns[1:][::-1])]
    sol = _write(tmp_path / "solution.csv", solution)
    sub = _write(tmp_path / "submission.csv", shuffled)
    assert score_files(sub, sol) == pytest.approx(expected, abs=1e-12)


def test_score_files_names_file_for_missing_rows_and_columns(tmp_path):
    solution = pd.DataFrame({"row_id": ["a_5", "a_10", "a_15"], "x": [1, 0, 0], "y": [0, 1, 0]})
    sol = _write(tmp_path / "solution.csv", solution)
    short = _write(tmp_path / "short.csv", solution.iloc[:2].astype({"x": float}))
    with pytest.raises(ParameterError, match=r"short\.csv.*a_15"):
        score_files(short, sol)
    no_y = _write(tmp_path / "no_y.csv", solution.drop(columns="y"))
    with pytest.raises(ParameterError, match=r"no_y\.csv.*'y'"):
        score_files(no_y, sol)
    with pytest.raises(ParameterError, match="does not exist"):
        score_files(tmp_path / "nothing.csv", sol)
