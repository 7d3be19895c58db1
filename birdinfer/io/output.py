"""Output tables: submission rows, column alignment to ``sample_submission.csv``, per-window tables (CSV,
parquet, Raven selection tables) of ``predict``, atomic writes."""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from ..errors import MissingDependencyError, OutputError, ParameterError

__all__ = ["ColumnPlan", "plan_columns", "row_ids", "submission_frame", "write_csv_atomic", "atomic_write", "check_writable",
           "RAVEN_COLUMNS", "raven_table", "require_pyarrow", "window_schema", "window_table", "write_window_table"]

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


# ------------------------------------------------------------------------------- per-window tables (predict)
def require_pyarrow(needed_for: str, install: str):
    """``pyarrow``, or a :class:`MissingDependencyError` saying what needs it and what to install."""
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401
    except ImportError as e:
        raise MissingDependencyError(f"{needed_for} needs pyarrow: pip install {install} ({e})") from e
    return pyarrow


def _window_times(n_rows: int, window_seconds: float, span_seconds: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Row k starts at ``k·window_seconds`` and ends ``span_seconds`` later (default: the next row's start)."""
    start = np.arange(n_rows, dtype=np.float64) * window_seconds
    return start, start + (window_seconds if span_seconds is None else span_seconds)


def window_schema(labels: Sequence[str]):
    """Parquet schema of ``predict`` output: ``file`` (string), ``start_s``, ``end_s`` (float64), then one
    float32 column per label."""
    import pyarrow as pa

    fields = [pa.field("file", pa.string()), pa.field("start_s", pa.float64()), pa.field("end_s", pa.float64())]
    return pa.schema(fields + [pa.field(str(label), pa.float32()) for label in labels])


def window_table(name: str, probs: np.ndarray, labels: Sequence[str], window_seconds: float,
                 span_seconds: float | None = None):
    """One recording's rows as a ``pyarrow.Table``: ``probs`` ``(n_windows, n_labels)`` → window k covers
    ``[k·window_seconds, (k+1)·window_seconds)`` (or ``k·window_seconds + span_seconds``); ``file`` = ``name``
    on every row."""
    import pyarrow as pa

    start, end = _window_times(len(probs), window_seconds, span_seconds)
    columns = [pa.array([name] * len(probs), pa.string()), pa.array(start), pa.array(end)]
    columns += [pa.array(np.ascontiguousarray(probs[:, j], dtype=np.float32)) for j in range(probs.shape[1])]
    return pa.Table.from_arrays(columns, schema=window_schema(labels))


def _window_csv(name: str, probs: np.ndarray, labels: Sequence[str], window_seconds: float, header: bool,
                span_seconds: float | None = None) -> bytes:
    start, end = _window_times(len(probs), window_seconds, span_seconds)
    frame = pd.DataFrame(probs, columns=list(labels))
    frame.insert(0, "end_s", end)
    frame.insert(0, "start_s", start)
    frame.insert(0, "file", name)
    return frame.to_csv(index=False, header=header, lineterminator="\n").encode("utf-8")


def write_window_table(out: Path, format: str, items: Iterable[tuple[str, np.ndarray]], labels: Sequence[str],
                       window_seconds: float, span_seconds: float | None = None) -> None:
    """Write ``(file name, probs)`` items as one CSV or parquet table (atomically; one recording in memory)."""
    if format == "csv":
        def write(f):
            f.write(_window_csv("", np.zeros((0, len(labels)), np.float32), labels, window_seconds, True))
            for name, probs in items:
                f.write(_window_csv(name, probs, labels, window_seconds, False, span_seconds))

        atomic_write(out, write)
        return
    require_pyarrow("--format parquet", "'birdinfer[parquet]' (or pyarrow), or use --format csv")
    import pyarrow.parquet as pq

    schema = window_schema(labels)

    def write(f):
        written = 0
        with pq.ParquetWriter(f, schema) as writer:
            for name, probs in items:  # one row group per recording: memory bounded by one recording
                writer.write_table(window_table(name, probs, labels, window_seconds, span_seconds))
                written += 1
            if not written:
                writer.write_table(schema.empty_table())

    atomic_write(out, write)


RAVEN_COLUMNS = ("Selection", "View", "Channel", "Begin Time (s)", "End Time (s)", "Low Freq (Hz)", "High Freq (Hz)",
                 "Species", "Score")


def raven_table(probs: np.ndarray, labels: Sequence[str], *, threshold: float, window_seconds: float,
                low_hz: float, high_hz: float, span_seconds: float | None = None) -> str:
    """A Raven Pro selection table (tab-separated text): one selection per (window, species) whose
    probability is ``>= threshold``, in window order then label order. ``probs``: ``(n_windows, n_labels)``."""
    lines = ["\t".join(RAVEN_COLUMNS)]
    selection, span = 0, window_seconds if span_seconds is None else span_seconds
    for k, row in enumerate(probs):
        for j in np.flatnonzero(row >= threshold):
            selection += 1
            lines.append("\t".join([
                str(selection), "Spectrogram 1", "1", f"{k * window_seconds:g}", f"{k * window_seconds + span:g}",
                f"{low_hz:g}", f"{high_hz:g}", str(labels[j]), f"{float(row[j]):.4f}",
            ]))
    return "\n".join(lines) + "\n"
