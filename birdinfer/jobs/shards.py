"""The output folder of ``birdinfer predict --engine ray`` (layout: :mod:`birdinfer.jobs.distributed`): one parquet
shard per recording, the resume journal (:class:`birdinfer.jobs.journal.Journal`), the error list and ``_SUCCESS``,
and :func:`read_output`, which reads a finished folder back as one table."""

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

__all__ = ["SHARDS_FOLDER", "ERRORS_FILE", "OutputFolder", "fingerprint", "require_shard_pyarrow", "output_schema", "read_output", "shard_table"]

#: Sub-folder of ``OUT_DIR`` holding one parquet shard per recording.
SHARDS_FOLDER = "shards"
_RUN_FILE = "_run.json"
_DONE_LIST = "_done.jsonl"
ERRORS_FILE = "_errors.csv"
_SUCCESS_FILE = "_SUCCESS"
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
            for name in (ERRORS_FILE, _SUCCESS_FILE):
                (folder / name).unlink(missing_ok=True)
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
            window_seconds: float) -> str | None:
        """Write one recording's shard and journal it; None, or why it was not stored (:meth:`Journal.add`)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        sink = pa.BufferOutputStream()
        pq.write_table(shard_table(rec.name, probs, labels, window_seconds), sink)
        return self.journal.add(rec, sink.getvalue().to_pybytes(), probs.shape, audio_seconds)

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


def _shard_shape(data: bytes, labels: list[str]) -> tuple[int, int]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    meta = pq.read_metadata(pa.BufferReader(data))
    if not meta.schema.to_arrow_schema().equals(output_schema(labels)):
        raise ValueError(f"its columns are not file, start_s, end_s and the {len(labels)} labels")
    return meta.num_rows, len(labels)


def fingerprint(manifest: Manifest, precision: str, backend: str) -> dict:
    return {**run_fingerprint(manifest, precision, backend), "format_version": _FORMAT_VERSION}
