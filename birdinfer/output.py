"""Output tables: submission rows, column alignment to ``sample_submission.csv``, atomic writes."""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .errors import OutputError, ParameterError

__all__ = ["ColumnPlan", "plan_columns", "row_ids", "submission_frame", "write_csv_atomic", "atomic_write", "check_writable"]

log = logging.getLogger(__name__)


def row_ids(stem: str, n_windows: int, window_seconds: float = 5.0) -> list[str]:
    """``<stem>_<end second>`` for each window: a 60 s file gives ``stem_5 … stem_60``."""
    return [f"{stem}_{_seconds((k + 1) * window_seconds)}" for k in range(n_windows)]


def _seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


@dataclass(frozen=True)
class ColumnPlan:
    """How model label order maps to output columns."""

    columns: tuple[str, ...]  # output species columns, in order
    source_index: np.ndarray  # for each output column, the model label index, or -1 (→ 0.0)
    missing: tuple[str, ...]  # output columns the model does not predict (filled with 0.0)
    dropped: tuple[str, ...]  # model labels not in the output

    def apply(self, probs: np.ndarray) -> np.ndarray:
        """``(rows, n_model_labels)`` → ``(rows, len(columns))``."""
        out = np.zeros((probs.shape[0], len(self.columns)), dtype=np.float32)
        have = self.source_index >= 0
        out[:, have] = probs[:, self.source_index[have]]
        return out


def plan_columns(labels: Sequence[str], sample_submission: str | Path | None = None) -> ColumnPlan:
    """Columns in ``sample_submission.csv`` order when given (missing classes 0.0, extra model classes
    dropped with a warning), else the model's label order. Fails when the two share no species."""
    labels = [str(x) for x in labels]
    if sample_submission is None:
        return ColumnPlan(tuple(labels), np.arange(len(labels)), (), ())
    path = Path(sample_submission)
    try:
        header = list(pd.read_csv(path, nrows=0).columns)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise ParameterError(f"{path}: cannot read the sample submission header: {e}") from e
    if not header or header[0] != "row_id":
        raise ParameterError(f"{path}: the first column of a sample submission must be 'row_id', got {header[:1]}")
    columns = [str(c) for c in header[1:]]
    index = {label: i for i, label in enumerate(labels)}
    source = np.array([index.get(c, -1) for c in columns], dtype=np.int64)
    missing = tuple(c for c in columns if c not in index)
    dropped = tuple(label for label in labels if label not in set(columns))
    if columns and len(missing) == len(columns):
        raise ParameterError(
            f"{path}: none of its {len(columns)} species columns (e.g. {columns[:3]}) is among the model's "
            f"{len(labels)} labels (e.g. {labels[:3]}): wrong sample submission or wrong taxonomy at export"
        )
    if missing:
        log.warning("%d species of %s are not predicted by the models and get 0.0: %s%s", len(missing), path.name,
                    ", ".join(missing[:10]), " …" if len(missing) > 10 else "")
    if dropped:
        log.warning("%d model classes are not columns of %s and are dropped: %s%s", len(dropped), path.name,
                    ", ".join(dropped[:10]), " …" if len(dropped) > 10 else "")
    return ColumnPlan(tuple(columns), source, missing, dropped)


def submission_frame(ids: Sequence[str], probs: np.ndarray, plan: ColumnPlan) -> pd.DataFrame:
    """``row_id`` + one float column per output species."""
    values = plan.apply(probs) if len(ids) else np.zeros((0, len(plan.columns)), dtype=np.float32)
    frame = pd.DataFrame(values, columns=list(plan.columns))
    frame.insert(0, "row_id", list(ids))
    return frame


def check_writable(path: str | Path) -> Path:
    """Fail fast (before minutes of work) when ``path`` cannot be written."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise OutputError(f"output path {path} is a folder; give a file name such as {path / 'submission.csv'}")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OutputError(f"cannot write to {path}: {e.strerror or e}; choose a writable --out") from e
    return path


def atomic_write(path: str | Path, write, *, text: bool = False) -> Path:
    """Call ``write(file)`` on a temporary file next to ``path`` (binary, or UTF-8 text with ``text=True``),
    fsync, and rename it into place, so a run killed while writing never leaves a half-written file
    (readers see the old or the new one)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with (os.fdopen(fd, "w", newline="", encoding="utf-8") if text else os.fdopen(fd, "wb")) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def write_csv_atomic(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write a CSV atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda f: frame.to_csv(f, index=False), text=True)
