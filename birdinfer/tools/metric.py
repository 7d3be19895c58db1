"""The competition metric (REFERENCE.md section 1): macro ROC-AUC over the species that occur.

Kaggle's BirdCLEF 2025 scorer keeps the species columns whose solution sum is > 0 and calls
``sklearn.metrics.roc_auc_score(average="macro")`` on them. This module computes the same number with
numpy only (the runtime must not need scikit-learn): per column, the Mann-Whitney form of the AUC with
tied scores given their average rank, which is exactly sklearn's trapezoidal ROC area.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import ParameterError

__all__ = ["ROW_ID", "binary_roc_auc", "macro_roc_auc", "score_files"]

#: Name of the row id column in submissions and solutions.
ROW_ID = "row_id"


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of ``values`` (shape ``(n,)``), ties sharing the mean of their ranks; float64 ``(n,)``."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    # Start index of every run of equal values in sorted order.
    run_starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    run_ends = np.r_[run_starts[1:], len(values)]  # exclusive
    mean_rank_of_run = (run_starts + 1 + run_ends) / 2.0  # mean of ranks start+1 .. end
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.repeat(mean_rank_of_run, run_ends - run_starts)
    return ranks


def binary_roc_auc(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """ROC-AUC of one binary column: ``y_true`` 0/1 ``(n,)``, ``y_score`` ``(n,)``; ties count one half.

    Raises :class:`ParameterError` when ``y_true`` holds only one class (the AUC is undefined; sklearn and
    hence the Kaggle scorer raise too).
    """
    y_true = np.asarray(y_true)
    y_score = np.asarray(y_score, dtype=np.float64)
    positive = y_true > 0.5  # solutions are 0/1; anything else is rejected by the caller
    n_pos = int(positive.sum())
    n_neg = len(y_true) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ParameterError(f"ROC-AUC is undefined for a column with only one class ({n_pos} positives of {len(y_true)} rows)")
    ranks = _average_ranks(y_score)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def macro_roc_auc(solution_df: pd.DataFrame, submission_df: pd.DataFrame) -> float:
    """Competition score: mean ROC-AUC over the species columns of ``solution_df`` that have a positive.

    Both frames are row-aligned (same length, same row order); a ``row_id`` column, if present, is ignored
    (use :func:`score_files` to align by row id). ``solution_df`` holds 0/1 values; ``submission_df`` must
    contain every scored species column, with finite numbers.
    """
    solution = solution_df.drop(columns=[ROW_ID], errors="ignore")
    submission = submission_df.drop(columns=[ROW_ID], errors="ignore")
    if len(solution) != len(submission):
        raise ParameterError(f"solution has {len(solution)} rows but the submission has {len(submission)}")
    if len(solution) == 0:
        raise ParameterError("the solution has no rows")
    truth = solution.to_numpy()
    if not np.issubdtype(truth.dtype, np.number) or not np.isin(truth, (0, 1)).all():
        raise ParameterError("solution values must all be 0 or 1")
    sums = truth.sum(axis=0)
    scored = [name for name, total in zip(solution.columns, sums) if total > 0]
    if not scored:
        raise ParameterError("no species column of the solution has a positive row: the score is undefined")
    missing = [name for name in scored if name not in submission.columns]
    if missing:
        raise ParameterError(f"submission lacks {len(missing)} scored species column(s): {missing[:10]}")
    scores = submission[scored]
    if not all(np.issubdtype(t, np.number) for t in scores.dtypes):
        bad = [c for c, t in zip(scored, scores.dtypes) if not np.issubdtype(t, np.number)]
        raise ParameterError(f"submission columns must be numeric; not numeric: {bad[:10]}")
    predicted = scores.to_numpy(dtype=np.float64)
    if not np.isfinite(predicted).all():
        raise ParameterError("submission holds NaN or infinite values in scored columns")
    truth_scored = solution[scored].to_numpy()
    aucs = []
    for j, name in enumerate(scored):
        try:
            aucs.append(binary_roc_auc(truth_scored[:, j], predicted[:, j]))
        except ParameterError as e:
            raise ParameterError(f"species {name!r}: {e}") from e
    return float(np.mean(aucs))


def _read_table(path: Path, what: str) -> pd.DataFrame:
    if not path.is_file():
        raise ParameterError(f"{what} file {path} does not exist")
    try:
        table = pd.read_csv(path, dtype={ROW_ID: str})
    except (OSError, ValueError, pd.errors.ParserError) as e:
        raise ParameterError(f"{what} file {path}: cannot read it as CSV: {e}") from e
    if ROW_ID not in table.columns:
        raise ParameterError(f"{what} file {path} has no {ROW_ID!r} column")
    if table[ROW_ID].duplicated().any():
        dup = table.loc[table[ROW_ID].duplicated(), ROW_ID].iloc[0]
        raise ParameterError(f"{what} file {path}: duplicate row_id {dup!r}")
    return table


def score_files(submission: str | Path, solution: str | Path) -> float:
    """Score a submission CSV against a solution CSV (both with ``row_id``); rows are matched by row id.

    Raises :class:`ParameterError` naming the file when the submission misses solution rows or scored
    species columns. Extra submission rows and columns are ignored.
    """
    submission, solution = Path(submission), Path(solution)
    sub = _read_table(submission, "submission")
    sol = _read_table(solution, "solution")
    missing_rows = sol.loc[~sol[ROW_ID].isin(sub[ROW_ID]), ROW_ID]
    if len(missing_rows):
        raise ParameterError(
            f"submission file {submission} lacks {len(missing_rows)} row_id(s) of the solution {solution}, "
            f"e.g. {list(missing_rows.iloc[:5])}"
        )
    species = [c for c in sol.columns if c != ROW_ID]
    scored = [c for c in species if sol[c].sum() > 0]
    missing_cols = [c for c in scored if c not in sub.columns]
    if missing_cols:
        raise ParameterError(
            f"submission file {submission} lacks {len(missing_cols)} species column(s) scored by {solution}: {missing_cols[:10]}"
        )
    aligned = sub.set_index(ROW_ID).loc[sol[ROW_ID], scored].reset_index(drop=True)
    try:
        return macro_roc_auc(sol.drop(columns=[ROW_ID]).reset_index(drop=True), aligned)
    except ParameterError as e:
        raise ParameterError(f"scoring {submission} against {solution}: {e}") from e
