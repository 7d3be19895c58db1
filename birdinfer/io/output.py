"""Output tables: submission rows, column alignment to ``sample_submission.csv``, per-window tables (CSV,
parquet, Raven selection tables) of ``predict``, atomic writes.

Every write goes through :func:`atomic_write`: a temporary file beside the target, renamed into place, so a
fault or a kill leaves the previous file or none (never a partial one). Its file mode follows the umask
(as ``open`` would give), not ``mkstemp``'s 0600. An operating-system fault (disk full, read-only file
system, permission denied, a folder in the way, ...) becomes an :class:`OutputError` of one sentence naming
the file and what to do (:func:`os_fault`), the temporary file removed.

File names that are not valid UTF-8 (held by Python as surrogates, see :mod:`birdinfer.io.paths`) are written
byte-exact into the CSV tables and the errors list (``surrogateescape``). Parquet strings must be valid
UTF-8: there such a name's undecodable bytes are written as ``\\xNN`` escapes (:func:`utf8_name`).
"""

from __future__ import annotations

import errno
import logging
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from ..errors import MissingDependencyError, OutputError, ParameterError

__all__ = ["ColumnPlan", "plan_columns", "row_ids", "submission_frame", "write_csv_atomic", "atomic_write", "check_writable",
           "check_writable_folder",
           "os_fault", "utf8_name", "RAVEN_COLUMNS", "raven_table", "require_pyarrow", "sweep_temporaries",
           "temporaries_of", "temporary_files", "window_schema", "window_table", "write_window_table"]

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
    frame.insert(0, "row_id", _text_column(ids, len(values)))
    return frame


def _text_column(values: Sequence[str], n: int):
    """A column of names for a table written as CSV: as given (pandas' string dtype), or of object dtype when
    a name holds surrogates (bytes that are not UTF-8), which pandas' arrow-backed strings refuse."""
    try:
        for value in set(values):
            value.encode("utf-8")
    except UnicodeEncodeError:
        return pd.Series(list(values), index=pd.RangeIndex(n), dtype=object)
    return list(values)


# What to do about an operating-system fault while writing, by errno ({option}: the option naming the path).
_ADVICE = {
    errno.ENOSPC: "free space on that disk or choose {option} on another one",
    errno.EDQUOT: "free space within the quota or choose {option} elsewhere",
    errno.EFBIG: "raise the file size limit (ulimit -f) or choose {option} on another file system",
    errno.EROFS: "choose {option} on a writable file system",
    errno.EACCES: "choose a writable {option} or change the folder's permissions",
    errno.EPERM: "choose a writable {option} or change the folder's permissions",
    errno.EISDIR: "remove that folder or choose another {option}",
    errno.ENOTDIR: "a part of the path is a file, not a folder: choose another {option}",
    errno.EIO: "check the disk (failing, or a lost network drive) or choose {option} elsewhere",
}


def os_fault(error: OSError, path: str | Path | None = None, *, option: str = "--out", beside: str | Path | None = None
             ) -> OutputError:
    """One sentence for an operating-system fault while writing ``path`` (default: the file the error names,
    else "``beside`` or a file beside it"): the file, what happened and what to do about it (``option``: the
    argument that chose the path)."""
    verb, target = ("cannot write to", path) if path is not None else ("cannot use", error.filename or None)
    if target is None and beside is not None:
        verb, target = "cannot write to", f"{beside} (or a file beside it)"
    name = errno.errorcode.get(error.errno or 0, "")
    what = f"{error.strerror or error}" + (f" ({name})" if name else "")
    advice = _ADVICE.get(error.errno, "choose another {option}").format(option=option)
    where = f"{verb} {target}" if target is not None else "an operating-system fault"
    return OutputError(f"{where}: {what}; {advice}")


def check_writable(path: str | Path, *, option: str = "--out", example: str = "submission.csv") -> Path:
    """Fail fast (before minutes of work) when ``path`` cannot be written; ``option`` and ``example`` name the
    argument and a file name in the message."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise OutputError(f"{option} {path} is a folder; give a file name such as {path / example}")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise os_fault(e, path, option=option) from e
    return path


def check_writable_folder(folder: str | Path, *, when_file: str, what: str, choose: str, probe: str) -> Path:
    """Fail fast when ``folder`` (an output folder) cannot be created and written: ``when_file`` is the message
    when it is a file, ``what`` names it and ``choose`` says what to do when it cannot be created; ``probe`` is a
    file name inside it checked as :func:`check_writable` does."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError(when_file)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create {what} {folder}: {e.strerror or e}; {choose}") from e
    check_writable(folder / probe)
    return folder


def _umask() -> int:
    """The process umask (read without changing it where Linux shows it; else set and restored at once)."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _follow_umask(fd: int) -> None:
    """Give the temporary file (``mkstemp``: 0600) the mode ``open`` would have given the target."""
    try:
        os.fchmod(fd, 0o666 & ~_umask())
    except OSError as e:  # a file system without modes (vfat, some network drives): keep what it has
        log.debug("cannot set the mode of a new output file: %s", e)


def atomic_write(path: str | Path, write, *, text: bool = False, option: str = "--out") -> Path:
    """Call ``write(file)`` on a temporary file next to ``path`` (binary, or UTF-8 text with ``text=True``;
    names held as surrogates are written as their bytes), fsync, and rename it into place, so a run killed
    while writing never leaves a half-written file (readers see the old or the new one). The file gets the
    mode ``open`` would give (0666 less the umask). An operating-system fault becomes an
    :class:`OutputError` naming ``path`` and what to do (``option``: the argument that chose it)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise os_fault(e, path, option=option) from e
    try:
        with (os.fdopen(fd, "w", newline="", encoding="utf-8", errors="surrogateescape") if text
              else os.fdopen(fd, "wb")) as f:
            write(f)
            f.flush()
            _follow_umask(f.fileno())
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise os_fault(e, path, option=option) from e
        raise
    return path


def write_csv_atomic(frame: pd.DataFrame, path: str | Path, *, option: str = "--out") -> Path:
    """Write a CSV atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda f: frame.to_csv(f, index=False), text=True, option=option)


#: What :func:`atomic_write` appends to ``.<name>``: ``tempfile.mkstemp``'s 8 random characters and ``.tmp``.
_TEMP_TAIL = r"\.[a-z0-9_]{8}\.tmp"


def temporary_files(folder: str | Path, name: str = r".+", *, recursive: bool = False) -> list[Path]:
    """The temporary files :func:`atomic_write` left in ``folder`` (a run killed while writing): regular files
    named ``.<name>.XXXXXXXX.tmp`` whose ``<name>`` matches the regular expression ``name`` (default: any), in
    ``folder`` or, with ``recursive``, below it (symlinked folders are not entered). Sorted; nothing else."""
    pattern = re.compile(r"\." + f"(?:{name})" + _TEMP_TAIL)
    found = []
    for root, dirs, files in os.walk(folder):
        found += [Path(root, f) for f in files if pattern.fullmatch(f) and Path(root, f).is_file()
                  and not Path(root, f).is_symlink()]
        if not recursive:
            break
    return sorted(found)


def temporaries_of(path: str | Path) -> list[Path]:
    """The temporary files :func:`atomic_write` left beside ``path`` when killed while writing it."""
    path = Path(path)
    return temporary_files(path.parent if str(path.parent) else Path("."), re.escape(path.name))


def sweep_temporaries(found: Iterable[Path], owner: str | Path) -> list[Path]:
    """Remove ``found`` (from :func:`temporary_files`), with one log line naming them and ``owner`` (the output
    they were left for). Call it only while holding ``owner``'s lock: another run's temporaries are never seen."""
    removed = []
    for path in found:
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        except OSError as e:
            log.warning("cannot remove the temporary file %s: %s", path, e.strerror or e)
            continue
        removed.append(path)
    if removed:
        log.warning("removed %d temporary file%s left by an interrupted run on %s: %s", len(removed),
                    "" if len(removed) == 1 else "s", owner, ", ".join(str(p) for p in removed))
    return removed


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


def utf8_name(name: str) -> str:
    """``name`` as valid UTF-8 text for parquet: a name held with surrogates (bytes that are not UTF-8, see
    :mod:`birdinfer.io.paths`) gets those bytes as ``\\xNN`` escapes (``caf\\xe9.ogg``); others unchanged."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return name


def window_table(name: str, probs: np.ndarray, labels: Sequence[str], window_seconds: float,
                 span_seconds: float | None = None):
    """One recording's rows as a ``pyarrow.Table``: ``probs`` ``(n_windows, n_labels)`` → window k covers
    ``[k·window_seconds, (k+1)·window_seconds)`` (or ``k·window_seconds + span_seconds``); ``file`` = ``name``
    on every row (:func:`utf8_name`)."""
    import pyarrow as pa

    start, end = _window_times(len(probs), window_seconds, span_seconds)
    columns = [pa.array([utf8_name(name)] * len(probs), pa.string()), pa.array(start), pa.array(end)]
    columns += [pa.array(np.ascontiguousarray(probs[:, j], dtype=np.float32)) for j in range(probs.shape[1])]
    return pa.Table.from_arrays(columns, schema=window_schema(labels))


def _window_csv(name: str, probs: np.ndarray, labels: Sequence[str], window_seconds: float, header: bool,
                span_seconds: float | None = None) -> bytes:
    start, end = _window_times(len(probs), window_seconds, span_seconds)
    frame = pd.DataFrame(probs, columns=list(labels))
    frame.insert(0, "end_s", end)
    frame.insert(0, "start_s", start)
    frame.insert(0, "file", _text_column([name] * len(probs), len(probs)))
    return frame.to_csv(index=False, header=header, lineterminator="\n").encode("utf-8", "surrogateescape")


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
