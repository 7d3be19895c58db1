"""Soft labels for the semi-supervised round (REFERENCE.md section 5).

An ensemble of labelling models predicts the unlabelled ``train_soundscapes`` in 5 s windows; the weighted
mean of their probabilities becomes the soft labels of extra training samples. The runtime writes the
predictions (:func:`birdinfer.jobs.pseudo.pseudo_label`, fast OpenVINO inference); this module combines
prediction tables and hands them to :func:`birdinfer_train.train` (``pseudo_labels=`` CSV), which turns
each 10 s chunk of a soundscape into a sample labelled with the max of its two windows' probabilities.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd

from birdinfer.jobs.pseudo import combine_predictions

__all__ = ["soft_labels_from_predictions"]


def soft_labels_from_predictions(
    predictions: Sequence[str | Path | pd.DataFrame],
    *,
    weights: Sequence[float] | None = None,
    out: str | Path | None = None,
) -> pd.DataFrame:
    """Weighted mean of prediction tables or CSV files (``row_id`` + per-species probabilities).

    ``out``: also write the soft labels as CSV (the ``pseudo_labels=`` input of ``train``).
    """
    tables = [p if isinstance(p, pd.DataFrame) else pd.read_csv(p, dtype={"row_id": str}) for p in predictions]
    labels = combine_predictions(tables, weights)
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        labels.to_csv(out, index=False)
    return labels
