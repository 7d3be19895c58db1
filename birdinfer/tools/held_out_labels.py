"""Labelled held-out audio for the INT8 check: ΔAUC against f32 where the user has labels.

No label-free figure was shown to track ΔAUC on trained models (``benchmarks/proxy_vs_auc.py``), so a user who
has labels for their calibration soundscapes (a BirdCLEF-style solution: ``row_id`` = ``<stem>_<end second>``
and one 0/1 column per class) can have INT8 judged by what the competition scores: the macro ROC-AUC of a
model's rows on the held-out files, INT8 minus f32 under the same CPU class. Classes with positives and
negatives in the held-out rows are scored; the figure is ``delta_auc`` (a bar term: ``delta_auc >= -0.002``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import ParameterError
from ..io.output import row_ids
from .metric import _read_table, binary_roc_auc

__all__ = ["DELTA_AUC_BAR", "read_held_out_labels", "labelled_figures"]

#: With labels, INT8 is valid on a class where its held-out macro ROC-AUC is at most this far below f32's.
DELTA_AUC_BAR = 0.002


def read_held_out_labels(path: str | Path, stems_rows: Sequence[tuple[str, int]], window_seconds: float,
                         labels: Sequence[str]) -> np.ndarray:
    """The 0/1 truth ``(rows, classes)`` of the held-out rows (each file's ``(stem, n_rows)`` in order), in the
    folder's label order (a label absent from the file counts as never present). :class:`ParameterError`
    naming the file for a missing file, an unreadable table, a missing ``row_id`` column or row, a row id listed
    twice (as the scorer, :func:`birdinfer.tools.metric.score_files`, refuses it), a value other than 0 / 1, or
    no label of the folder among the columns."""
    path = Path(path)
    table = _read_table(path, "--calibration-labels")  # the scorer's reader: row_id present and unique
    known = [name for name in labels if name in table.columns]
    if not known:
        raise ParameterError(f"--calibration-labels {path}: none of the folder's labels ({', '.join(labels[:5])}, ...) "
                             "is a column; give one 0/1 column per class")
    table = table.set_index("row_id")
    ids = [i for stem, n in stems_rows for i in row_ids(stem, n, window_seconds)]
    missing = [i for i in ids if i not in table.index]
    if missing:
        raise ParameterError(f"--calibration-labels {path}: no row for {missing[0]!r} ({len(missing)} of the "
                             f"{len(ids)} held-out rows missing); label every window of the held-out files")
    values = table.loc[ids, known].to_numpy()
    if not np.isin(values, (0, 1)).all():
        raise ParameterError(f"--calibration-labels {path}: values must be 0 or 1")
    truth = np.zeros((len(ids), len(labels)), dtype=np.uint8)
    truth[:, [list(labels).index(k) for k in known]] = values
    return truth


def _macro_auc(truth: np.ndarray, scores: np.ndarray, columns: np.ndarray) -> float:
    return float(np.mean([binary_roc_auc(truth[:, c], scores[:, c]) for c in columns]))


def labelled_figures(truth: np.ndarray, reference: Sequence[np.ndarray], other: Sequence[np.ndarray]) -> dict:
    """``{"auc_f32", "auc", "delta_auc", "scored_classes"}`` of one model's rows (per file, in the folder's label
    order) against ``truth``; ``delta_auc`` is None when no class has both positives and negatives."""
    ref, new = np.concatenate(list(reference)), np.concatenate(list(other))
    if ref.ndim != 2 or ref.shape != truth.shape:  # not a per-class score (an embedding, another width)
        return {"auc_f32": None, "auc": None, "delta_auc": None, "scored_classes": 0}
    positives = truth.sum(axis=0)
    columns = np.flatnonzero((positives > 0) & (positives < len(truth)))
    if len(columns) == 0:
        return {"auc_f32": None, "auc": None, "delta_auc": None, "scored_classes": 0}
    auc_f32, auc = _macro_auc(truth, ref, columns), _macro_auc(truth, new, columns)
    return {"auc_f32": auc_f32, "auc": auc, "delta_auc": auc - auc_f32, "scored_classes": int(len(columns))}
