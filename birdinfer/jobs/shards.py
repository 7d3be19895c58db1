"""The output folder of ``birdinfer predict --engine ray`` (layout: :mod:`birdinfer.jobs.distributed`): one parquet
shard per recording, the resume journal (:class:`birdinfer.jobs.journal.Journal`), the error list and ``_SUCCESS``,
:class:`EmbeddingParts` (the embedding rows of ``--embeddings``, a journal of their own), and :func:`read_output`,
which reads a finished folder back as one table."""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import OutputError
from .journal import Journal, run_fingerprint
from ..spec.manifest import Manifest
from ..io.output import atomic_write, require_pyarrow, sweep_temporaries, temporaries_of, window_schema, window_table
from .predict import Recording

__all__ = ["SHARDS_FOLDER", "ERRORS_FILE", "EMBEDDINGS_FOLDER", "EmbeddingParts", "OutputFolder", "fingerprint",
           "require_shard_pyarrow", "output_schema", "read_output", "shard_table"]

#: Sub-folder of ``OUT_DIR`` holding one parquet shard per recording.
SHARDS_FOLDER = "shards"
_RUN_FILE = "_run.json"
_DONE_LIST = "_done.jsonl"
ERRORS_FILE = "_errors.csv"
_SUCCESS_FILE = "_SUCCESS"
#: Sub-folder of ``OUT_DIR`` holding one ``.npy`` of embedding rows per recording (``--embeddings``).
EMBEDDINGS_FOLDER = "embeddings"
_EMBEDDINGS_RUN = "_embeddings_run.json"
_EMBEDDINGS_DONE = "_embeddings_done.jsonl"
_FORMAT_VERSION = 1

log = logging.getLogger(__name__)


def require_shard_pyarrow():
    return require_pyarrow("--engine ray (parquet shards)", "'birdinfer[ray]'")


#: The parquet schema and one recording's table are ``predict``'s (:mod:`birdinfer.io.output`).
output_schema = window_schema
shard_table = window_table


def read_output(out_dir: str | Path):
    """The complete output of a finished :func:`predict_ray` run as one ``pyarrow.Table`` (shards
    concatenated in input order; ``.to_pandas()`` for a DataFrame). Raises :class:`OutputError` when the
    run has not finished (no ``_SUCCESS``) or a shard is not the one it lists (its sha256)."""
    require_shard_pyarrow()
    import pyarrow as pa
    import pyarrow.parquet as pq

    out_dir = Path(out_dir)
    index_path = out_dir / _SUCCESS_FILE
    again = "run `birdinfer predict --engine ray` again with the same arguments to finish it"
    try:
        index = json.loads(index_path.read_bytes().decode("utf-8"))
        schema = output_schema(index["labels"])
        shards = [(out_dir / entry["shard"], entry.get("sha256")) for entry in index["files"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise OutputError(f"{out_dir} holds no finished run ({index_path}: {e}); {again}") from e
    tables = []
    for path, digest in shards:
        try:
            data = path.read_bytes()
        except OSError as e:
            raise OutputError(f"the shard {path} of {out_dir} cannot be read ({e.strerror or e}); {again}") from e
        if digest is not None and hashlib.sha256(data).hexdigest() != digest:
            raise OutputError(f"the shard {path} does not hold the bytes its run wrote (sha256 differs); {again}")
        tables.append(pq.read_table(pa.BufferReader(data), schema=schema))
    return pa.concat_tables(tables) if tables else schema.empty_table()


def _atomic_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode("utf-8", "surrogateescape")))


# ------------------------------------------------------------------------------------- output folder
class OutputFolder:
    """``OUT_DIR`` and its bookkeeping (see the module docstring); the shards and the done list are a
    :class:`birdinfer.jobs.journal.Journal`, the same as single-machine ``predict``'s parts."""

    def __init__(self, folder: Path, fingerprint: dict, labels: Sequence[str], *, resume: bool):
        self.folder = folder
        if folder.exists() and not folder.is_dir():
            raise OutputError(f"--engine ray writes a folder of shards, but {folder} is a file; give a folder as --out")
        if folder.exists() and not resume:
            for name in (ERRORS_FILE, _SUCCESS_FILE, _EMBEDDINGS_RUN, _EMBEDDINGS_DONE):
                (folder / name).unlink(missing_ok=True)
            if (folder / EMBEDDINGS_FOLDER).is_dir() and not (folder / EMBEDDINGS_FOLDER).is_symlink():
                for part in (folder / EMBEDDINGS_FOLDER).glob("*.npy"):  # start over: no embedding rows kept either
                    part.unlink()
        try:
            folder.mkdir(parents=True, exist_ok=True)
            probe = folder / ".birdinfer-write-probe"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise OutputError(f"cannot write into the output folder {folder}: {e.strerror or e}; choose a writable --out") from e
        sweep_temporaries([t for name in (ERRORS_FILE, _SUCCESS_FILE) for t in temporaries_of(folder / name)], folder)
        self.journal = Journal(folder, fingerprint, run_name=_RUN_FILE, done_name=_DONE_LIST, parts=SHARDS_FOLDER,
                               suffix=".parquet", inspect=functools.partial(_shard_shape, labels=list(labels)))
        self.journal.open(resume=resume)
        self.shards = self.journal.parts
        (folder / _SUCCESS_FILE).unlink(missing_ok=True)  # the folder is incomplete until this run ends

    @property
    def done(self) -> dict[str, dict]:
        return self.journal.done

    def add(self, rec: Recording, probs: np.ndarray, audio_seconds: float, labels: Sequence[str],
            window_seconds: float, span_seconds: float | None = None) -> str | None:
        """Write one recording's shard and journal it; None, or why it was not stored (:meth:`Journal.add`)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        sink = pa.BufferOutputStream()
        pq.write_table(shard_table(rec.name, probs, labels, window_seconds, span_seconds), sink)
        return self.journal.add(rec, sink.getvalue().to_pybytes(), probs.shape, audio_seconds)

    def load(self, key: str) -> np.ndarray:
        """A done recording's scores as its shard holds them (checked once more): float32 ``(rows, labels)``, the
        part single-machine ``predict`` keeps for it."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pq.read_table(pa.BufferReader(self.journal.read_part(key)))
        probs = np.empty((table.num_rows, table.num_columns - 3), np.float32)
        for j in range(probs.shape[1]):
            probs[:, j] = table.column(j + 3).to_numpy()
        return probs

    def finish(self, recordings: Sequence[Recording], errors: dict[str, str], labels: Sequence[str], run: dict) -> None:
        """Write ``_errors.csv`` and, last, ``_SUCCESS``: it lists only shards that exist and verify now."""
        files = []
        for rec in recordings:
            if rec.key not in self.done:
                continue
            why = self.journal.recheck(rec.key)
            if why is not None:  # changed by someone else during the run: not part of the output
                errors[rec.key] = f"{why}; run again to compute it"
                log.warning("%s: %s", rec.name, errors[rec.key])
                continue
            entry = self.done[rec.key]
            files.append({"key": rec.key, "file": rec.name, "shard": entry["part"], "rows": entry["rows"],
                          "audio_s": entry["audio_s"], "sha256": entry["sha256"]})
        failed = [(rec.name, errors[rec.key]) for rec in recordings if rec.key in errors]
        errors_path = self.folder / ERRORS_FILE
        if failed:
            buffer = io.StringIO()
            writer = csv.writer(buffer, lineterminator="\n")
            writer.writerow(["file", "error"])
            writer.writerows(failed)
            _atomic_text(errors_path, buffer.getvalue())
        else:
            errors_path.unlink(missing_ok=True)  # a stale list from an earlier run would mislead
        index = {
            "format_version": _FORMAT_VERSION,
            "labels": list(labels),
            "files": files,
            "failed": [{"file": name, "error": error} for name, error in failed],
            "run": run,
        }
        _atomic_text(self.folder / _SUCCESS_FILE, json.dumps(index, indent=1) + "\n")


class EmbeddingParts:
    """``OUT_DIR/embeddings/<key>.npy`` (float32 ``(rows, width)``: a recording's embedding rows), journalled in
    ``_embeddings_done.jsonl`` under the fingerprint ``_embeddings_run.json`` (the run's and the embedding output's):
    a journal of their own beside the shards', so the scores of a run stay resumable whether or not a later run
    asks for embeddings, and a run that asks for them computes the recordings whose rows are missing."""

    def __init__(self, folder: Path, fingerprint: dict, width: int, *, resume: bool):
        self.journal = Journal(folder, fingerprint, run_name=_EMBEDDINGS_RUN, done_name=_EMBEDDINGS_DONE,
                               parts=EMBEDDINGS_FOLDER, suffix=".npy",
                               inspect=functools.partial(_npy_shape, width=width)).open(resume=resume)
        self.width = width

    @property
    def done(self) -> dict[str, dict]:
        return self.journal.done

    def add(self, rec: Recording, rows, n_windows: int, audio_seconds: float) -> str | None:
        """Store one recording's embedding rows (one per window of its scores); None, or why they were not stored."""
        rows = None if rows is None else np.ascontiguousarray(rows, np.float32)
        if rows is None or rows.shape != (n_windows, self.width):
            shape = None if rows is None else list(rows.shape)
            return f"its embedding rows have shape {shape}, not ({n_windows}, {self.width}); no embeddings stored"
        buffer = io.BytesIO()
        np.save(buffer, rows)
        return self.journal.add(rec, buffer.getvalue(), rows.shape, audio_seconds)

    def load(self, key: str) -> np.ndarray:
        return np.load(io.BytesIO(self.journal.read_part(key)), allow_pickle=False)


def _npy_shape(data: bytes, width: int) -> tuple[int, int]:
    rows = np.load(io.BytesIO(data), allow_pickle=False)
    if rows.ndim != 2 or rows.shape[1] != width or rows.dtype != np.float32:
        raise ValueError(f"a {rows.dtype} array of shape {rows.shape}, not float32 (rows, {width})")
    return rows.shape


def _shard_shape(data: bytes, labels: list[str]) -> tuple[int, int]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    meta = pq.read_metadata(pa.BufferReader(data))
    if not meta.schema.to_arrow_schema().equals(output_schema(labels)):
        raise ValueError(f"its columns are not file, start_s, end_s and the {len(labels)} labels")
    return meta.num_rows, len(labels)


def fingerprint(manifest: Manifest, precision: str, backend: str) -> dict:
    return {**run_fingerprint(manifest, precision, backend), "format_version": _FORMAT_VERSION}
