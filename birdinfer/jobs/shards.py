"""The output folder of ``birdinfer predict --engine ray`` (layout: :mod:`birdinfer.jobs.distributed`): one parquet
shard per recording, the resume journal (:class:`birdinfer.jobs.journal.Journal`), the error list and ``_SUCCESS``,
and :func:`read_output`, which reads a finished folder back as one table."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import OutputError
from .journal import Journal, run_fingerprint
from ..spec.manifest import Manifest
from ..io.output import atomic_write, require_pyarrow, window_schema, window_table
from .predict import Recording

__all__ = ["SHARDS_FOLDER", "ERRORS_FILE", "OutputFolder", "fingerprint", "require_shard_pyarrow", "output_schema", "read_output", "shard_table"]

#: Sub-folder of ``OUT_DIR`` holding one parquet shard per recording.
SHARDS_FOLDER = "shards"
_RUN_FILE = "_run.json"
_DONE_LIST = "_done.jsonl"
ERRORS_FILE = "_errors.csv"
_SUCCESS_FILE = "_SUCCESS"
_FORMAT_VERSION = 1

def require_shard_pyarrow():
    return require_pyarrow("--engine ray (parquet shards)", "'birdinfer[ray]'")


#: The parquet schema and one recording's table are ``predict``'s (:mod:`birdinfer.io.output`).
output_schema = window_schema
shard_table = window_table


def read_output(out_dir: str | Path):
    """The complete output of a finished :func:`predict_ray` run as one ``pyarrow.Table`` (shards
    concatenated in input order; ``.to_pandas()`` for a DataFrame). Raises :class:`OutputError` when the
    run has not finished (no ``_SUCCESS``)."""
    require_shard_pyarrow()
    import pyarrow as pa
    import pyarrow.parquet as pq

    out_dir = Path(out_dir)
    index_path = out_dir / _SUCCESS_FILE
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise OutputError(f"{out_dir} holds no finished run ({index_path}: {e}); run `birdinfer predict --engine ray` "
                          "again with the same arguments to finish it") from e
    schema = output_schema(index["labels"])
    tables = [pq.read_table(out_dir / entry["shard"], schema=schema) for entry in index["files"]]
    return pa.concat_tables(tables) if tables else schema.empty_table()


def _atomic_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


# ------------------------------------------------------------------------------------- output folder
class OutputFolder:
    """``OUT_DIR`` and its bookkeeping (see the module docstring)."""

    def __init__(self, folder: Path, fingerprint: dict, *, resume: bool):
        self.folder = folder
        self.shards = folder / SHARDS_FOLDER
        if folder.exists() and not folder.is_dir():
            raise OutputError(f"--engine ray writes a folder of shards, but {folder} is a file; give a folder as --out")
        if folder.exists() and not resume:
            for name in (SHARDS_FOLDER,):
                shutil.rmtree(folder / name, ignore_errors=True)
            for name in (_RUN_FILE, _DONE_LIST, ERRORS_FILE, _SUCCESS_FILE):
                (folder / name).unlink(missing_ok=True)
        try:
            self.shards.mkdir(parents=True, exist_ok=True)
            probe = self.shards / ".birdinfer-write-probe"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise OutputError(f"cannot write into the output folder {folder}: {e.strerror or e}; choose a writable --out") from e
        self.journal = Journal(folder, fingerprint, run_name=_RUN_FILE, done_name=_DONE_LIST)
        self.journal.claim()
        (folder / _SUCCESS_FILE).unlink(missing_ok=True)  # the folder is incomplete until this run ends
        self.done: dict[str, dict] = self._read_done()

    def shard_path(self, key: str) -> Path:
        return self.shards / f"{key}.parquet"

    def _read_done(self) -> dict[str, dict]:
        import pyarrow.parquet as pq

        def in_place(entry: dict) -> bool:  # a shard gone or cut short: that recording is done again
            try:
                return pq.read_metadata(self.folder / entry["shard"]).num_rows == entry.get("rows")
            except (KeyError, TypeError, OSError, ValueError):
                return False

        return self.journal.read_done(in_place)

    def add(self, rec: Recording, probs: np.ndarray, audio_seconds: float, labels: Sequence[str], window_seconds: float) -> None:
        import pyarrow.parquet as pq

        table = shard_table(rec.name, probs, labels, window_seconds)
        shard = self.shard_path(rec.key)
        atomic_write(shard, lambda f: pq.write_table(table, f))
        entry = {"key": rec.key, "file": rec.name, "shard": shard.relative_to(self.folder).as_posix(),
                 "rows": int(len(probs)), "audio_s": round(float(audio_seconds), 3)}
        self.journal.append(entry)
        self.done[rec.key] = entry

    def finish(self, recordings: Sequence[Recording], errors: dict[str, str], labels: Sequence[str], run: dict) -> None:
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
            "files": [self.done[rec.key] for rec in recordings if rec.key in self.done],
            "failed": [{"file": name, "error": error} for name, error in failed],
            "run": run,
        }
        _atomic_text(self.folder / _SUCCESS_FILE, json.dumps(index, indent=1) + "\n")


def fingerprint(manifest: Manifest, precision: str, backend: str) -> dict:
    return {**run_fingerprint(manifest, precision, backend), "format_version": _FORMAT_VERSION}
