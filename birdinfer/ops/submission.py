"""Steps over the whole submission: their numbers depend on every file's rows, not one file's.

A step has submission scope when its parameter ``scope`` is ``"submission"``:

* ``rank_mean`` with ``scope: "submission"`` (a combine step, :mod:`birdinfer.ops.steps`): each member's rows of
  **all files** ranked per class (ties averaged), scaled to [0, 1] by ``(rank − 1)/(N − 1)`` (``N`` = that
  member's rows over the submission; 0.5 when ``N`` is 1), then per row the weighted mean of the members that
  ran for its file (weights renormalised per file; all-zero weights count as equal). The 2026 1st place's
  rank fusion of its fine-tuned models (0.8) with native Perch (0.2); the 2nd place's per-class percentile rank
  averaging.
* ``column_normalize`` (a row step): per class over all rows of the submission, ``minmax``
  ``(x − min)/(max − min)`` (0.5 for a constant column) or ``rank`` (as above). With ``scope: "file"`` it works
  within each file instead.

The engine holds every file's member rows until all files are done, then runs these steps on the rows of all
files at once (:mod:`birdinfer.runtime.fusion`). The functions here are pure: lists of per-file arrays in,
lists out; a file where a member did not run (``None``) is left out of that member's ranks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np
import scipy.stats

from .steps import ROW_STEPS

__all__ = ["is_submission", "rank_fuse", "across_files", "ColumnNormalizeParams", "column_normalize", "unit_ranks"]


def is_submission(step) -> bool:
    """Whether a parsed step works over the whole submission (its parameter ``scope`` is ``"submission"``)."""
    return getattr(step.params, "scope", "file") == "submission"


def unit_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks per column (ties averaged) scaled to [0, 1] by ``(rank − 1)/(N − 1)``; 0.5 for a single row."""
    if len(x) < 2:
        return np.full(x.shape, 0.5)
    return (scipy.stats.rankdata(x, axis=0, method="average") - 1.0) / (len(x) - 1.0)


def across_files(fn, values: Sequence[np.ndarray | None]) -> list[np.ndarray | None]:
    """``fn`` on the rows of every file at once (files without rows left out), split back per file."""
    present = [i for i, v in enumerate(values) if v is not None]
    out: list[np.ndarray | None] = [None] * len(values)
    if not present:
        return out
    whole = fn(np.concatenate([np.asarray(values[i], np.float64) for i in present]))
    bounds = np.cumsum([0] + [len(values[i]) for i in present])
    for i, lo, hi in zip(present, bounds[:-1], bounds[1:]):
        out[i] = whole[lo:hi]
    return out


def rank_fuse(members: Sequence[Sequence[np.ndarray | None]], weights: Sequence[float]) -> list[np.ndarray | None]:
    """``members[m][f]``: member ``m``'s rows of file ``f`` (None: it did not run there) → per file the weighted
    mean of the members' submission-wide unit ranks (module docstring)."""
    ranked = [across_files(unit_ranks, files) for files in members]
    n_files = len(members[0]) if members else 0
    out: list[np.ndarray | None] = []
    for f in range(n_files):
        present = [(r[f], w) for r, w in zip(ranked, weights) if r[f] is not None]
        if not present:
            out.append(None)
            continue
        w = np.asarray([w for _, w in present], dtype=np.float64)
        w = np.ones_like(w) if w.sum() <= 0 else w
        out.append(np.tensordot(w / w.sum(), np.stack([r for r, _ in present]), axes=1))
    return out


@dataclass(frozen=True)
class ColumnNormalizeParams:
    method: Literal["minmax", "rank"] = "minmax"
    scope: Literal["submission", "file"] = "submission"


@ROW_STEPS.register("column_normalize", ColumnNormalizeParams)
def column_normalize(rows: np.ndarray, p: ColumnNormalizeParams) -> np.ndarray:
    """Per column: ``(x − min)/(max − min)`` (0.5 where the column is constant) or unit ranks, over the rows given
    (the whole submission's rows when ``scope`` is ``"submission"``: the engine passes them all at once)."""
    x = rows.astype(np.float64)
    if not len(x):
        return x
    if p.method == "rank":
        return unit_ranks(x)
    lo, hi = x.min(axis=0, keepdims=True), x.max(axis=0, keepdims=True)
    span = hi - lo
    return np.where(span > 0, (x - lo) / np.where(span > 0, span, 1.0), 0.5)
