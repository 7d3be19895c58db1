"""The one resume journal of ``predict`` and ``predict --engine ray``: what produced the results, which
recordings are done, and proof that each stored result still belongs to its input as it is now.

A journal folder (``<out>.parts/`` for ``predict``, ``OUT_DIR`` for the Ray engine) holds

* a *fingerprint* file (JSON: the folder's labels, model files and checksums, the spec's sha256, precision,
  backend, the front-end record a feature runs, if any, and :data:`ENGINE_VERSION`). A run with other settings, or after an upgrade that may change the
  outputs of the same folder, is refused (``resume=False`` starts over), so one output never mixes rows of
  two engines;
* one *part* per finished recording (its rows: ``.npy`` or a parquet shard), written to a temporary file,
  fsync'ed and renamed into place;
* a *done list*: one JSON line per part, appended and fsync'ed after the part is in place: ``key``,
  ``file``, ``part`` (path below the journal folder), ``sha256`` and ``bytes`` of the part, ``shape``
  (rows, labels), ``audio_s``, and ``input``: the recording's ``size``, ``mtime_ns`` and ``sha256``.

On resume (:meth:`Journal.verified`) each recording of the run with a done entry is checked: its part
exists and holds the bytes written (sha256), parses as a result of the recorded shape, and the input has the
recorded size and content (sha256 of the whole file). A part that fails any check is deleted and its
recording computed again; the log says so, one line per part naming the file and the reason. A garbled
part, two parts swapped, a part of a replaced or edited recording: all are redone. The content decides,
not the time stamp: a recording only touched (same bytes) keeps its part, since its rows would be the same.

Why the whole input is hashed rather than, say, its first and last MiB plus its size: sha256 runs at
~0.7 GB/s on one core of a shared 2-core EPYC with the SHA extensions (measured; a few times slower without
them), so an hour of 32 kHz 16-bit mono WAV (230 MB) costs ~0.3 s (an OGG of it far less) against ~50-120 s
of model compute for the same hour (the 16-model ensemble on 2 cores: 0.8-2 s per 60 s file), and the file
was just read for decoding, so it is in the page cache. A sampled hash would miss an edit inside a file of
the same size whose time stamp was kept (``cp -p``, ``rsync -t``, a restored backup), the one case the time
stamp cannot catch. Non-regular inputs (FIFOs, devices) cannot be read twice: their parts are never reused.

A recording that changes while it is being computed (its size or time stamp differ between the start of the
run and its result) is not journalled: it is reported as failed and computed by the next run.

What cannot be trusted is never trusted: a fingerprint file that is missing while results exist, or that is
not a JSON object (non-UTF-8, garbled), means the results' settings are unknown; they are discarded with a
log line and computed again. A journal folder that is a file stops the run (:class:`OutputError`, naming the
path): it is not birdinfer's to delete.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import stat
from pathlib import Path
from typing import Callable, Iterable, Protocol

from ..errors import OutputError
from ..io.output import atomic_write, sweep_temporaries, temporaries_of, temporary_files
from ..spec.manifest import Manifest
from ..spec.upgrade import upgrade
from ..runtime.frontend_plan import plan_frontend
from ..runtime.plan import plan_models

__all__ = ["ENGINE_VERSION", "Journal", "file_sha256", "input_identity", "run_fingerprint", "resolved_backend"]

log = logging.getLogger(__name__)

#: Bumped whenever the outputs of the same model folder may change (engine, ops, steps, the row rule,
#: the v1 → v2 upgrade): results written before the change are not resumed after it.
ENGINE_VERSION = 2
#: 2: done entries carry the part's sha256 and shape and the input's identity.
_PARTS_VERSION = 2
_CHUNK = 1 << 20


def run_fingerprint(manifest: Manifest, precision: str, backend: str) -> dict:
    """What decides the rows of a run: compared before resuming one."""
    upgraded = upgrade(manifest)
    plans = plan_models(upgraded, precision=precision, backend=backend, warn=False)[0]  # the run warns
    spec = upgraded.to_dict()
    spec.pop("files", None)
    spec.pop("extra", None)
    return {
        "parts_version": _PARTS_VERSION,
        "engine_version": ENGINE_VERSION,
        "labels": list(manifest.labels),
        "model_files": dict(sorted(manifest.files.items())),
        "models": [m.name for m in manifest.models],
        "spec_sha256": hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode("utf-8")).hexdigest(),
        "precision": precision,
        "backend": resolved_backend(manifest, precision, backend, plans=plans),
        "window_seconds": manifest.window_seconds,
        **_frontend(upgraded, plans),
    }


def _frontend(spec, plans) -> dict:
    """``{"frontend": {feature: record}}`` when ``plans`` run a feature of ``spec`` (version 2) with a variant's
    front-end record (:mod:`birdinfer.runtime.frontend_plan`), else nothing (so runs of the feature's own steps
    resume as before)."""
    identity = plan_frontend(spec, plans).identity()
    return {"frontend": identity} if identity else {}


def resolved_backend(manifest: Manifest, precision: str, backend: str, plans=None) -> str | dict[str, str]:
    """The backend the models run on: ``backend`` itself, or for ``auto`` what the plan picks here
    (:func:`birdinfer.runtime.plan.plan_models`; ``plans``: already planned for this precision and backend): one
    name when every model runs on the same backend (so a run started with ``openvino`` resumes under ``auto`` on a
    folder without backend records), else ``{model: backend}``."""
    if backend != "auto":
        return backend
    plans = plans if plans is not None else plan_models(manifest, precision=precision, backend="auto", warn=False)[0]
    picked = {p.entry.name: p.backend for p in plans}
    return next(iter(picked.values())) if len(set(picked.values())) == 1 else picked


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def input_identity(path: str | Path) -> dict:
    """``{"size", "mtime_ns", "sha256"}`` of an input file (``sha256`` None for a FIFO, device or socket, which
    cannot be read a second time). Raises ``OSError`` when it cannot be read."""
    st = os.stat(path)
    regular = stat.S_ISREG(st.st_mode)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": file_sha256(path) if regular else None}


def _stat_key(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


class Input(Protocol):
    """What the journal needs of a recording (:class:`birdinfer.jobs.predict.Recording` is one)."""

    key: str
    name: str
    path: Path


def _is_count(value) -> bool:
    return type(value) is int and value >= 0


def _well_formed(entry: dict, part: str) -> bool:
    identity = entry.get("input")
    return (entry.get("part") == part and isinstance(entry.get("sha256"), str) and _is_count(entry.get("bytes"))
            and isinstance(entry.get("shape"), list) and len(entry["shape"]) == 2 and all(map(_is_count, entry["shape"]))
            and entry.get("rows") == entry["shape"][0] and isinstance(identity, dict)
            and _is_count(identity.get("size")) and isinstance(identity.get("sha256"), (str, type(None))))


class Journal:
    """The journal in ``folder`` (see the module docstring): ``folder/run_name`` (the fingerprint),
    ``folder/done_name`` (the done list) and the parts ``folder/parts/<key><suffix>``. ``inspect(bytes)``
    parses a part and returns its ``(rows, labels)`` shape, raising ``ValueError`` for anything else."""

    def __init__(self, folder: Path, fingerprint: dict, *, run_name: str, done_name: str, parts: str = "",
                 suffix: str, inspect: Callable[[bytes], tuple[int, int]]):
        self.folder = Path(folder)
        self.fingerprint = fingerprint
        self.run_file = self.folder / run_name
        self.done_file = self.folder / done_name
        self.parts = self.folder / parts if parts else self.folder
        self.suffix = suffix
        self.inspect = inspect
        self.done: dict[str, dict] = {}
        self._before: dict[str, tuple[int, int] | None] = {}

    def part_path(self, key: str) -> Path:
        return self.parts / f"{key}{self.suffix}"

    def _part_name(self, key: str) -> str:
        return self.part_path(key).relative_to(self.folder).as_posix()

    # ------------------------------------------------------------------------------------------ opening
    def open(self, *, resume: bool) -> "Journal":
        """Claim the folder for this run: refuse results of other settings, discard results whose settings are
        unknown (or all of them when not ``resume``), remove temporary files a killed run left, record this
        run's fingerprint. Raises :class:`OutputError` naming the path when the folder cannot be used."""
        for path in (self.folder, self.parts):
            if (path.exists() or path.is_symlink()) and not path.is_dir():
                raise OutputError(f"{path} is in the way: birdinfer keeps the finished recordings of a run in a folder "
                                  "there, but it is a file; move it away or choose another --out")
        for path in (self.run_file, self.done_file):
            if (path.exists() or path.is_symlink()) and not path.is_file():
                raise OutputError(f"{path} is in the way: birdinfer keeps a file of its own there, but it is not a "
                                  "regular file; move it away or choose another --out")
        try:
            if not resume:
                self._discard()
            else:
                self._claim()
            found = [f for n in (self.run_file, self.done_file) for f in temporaries_of(n)]
            sweep_temporaries(found + temporary_files(self.parts, r"[^/]+" + re.escape(self.suffix)), self.folder)
            self.parts.mkdir(parents=True, exist_ok=True)
            if not self.run_file.is_file():
                atomic_write(self.run_file, lambda f: f.write(json.dumps(self.fingerprint, sort_keys=True).encode("utf-8")))
        except OSError as e:
            raise OutputError(f"cannot use {self.folder} to keep this run's finished recordings ({e.strerror or e}: "
                              f"{e.filename}); fix or move it away, or choose another --out") from e
        return self

    def _claim(self) -> None:
        if not (self.run_file.exists() or self.run_file.is_symlink()):
            if self.done_file.exists() or any(self.parts.glob(f"*{self.suffix}")):
                self._discard(f"{self.run_file} is missing")
            return
        try:
            previous = json.loads(self.run_file.read_bytes().decode("utf-8"))
            if not isinstance(previous, dict):
                raise ValueError(f"a JSON {type(previous).__name__}, not an object")
        except (OSError, ValueError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            self._discard(f"{self.run_file} cannot be read ({getattr(e, 'strerror', None) or e})")
            return
        if previous != self.fingerprint:
            differ = sorted(k for k in set(previous) | set(self.fingerprint) if previous.get(k) != self.fingerprint.get(k))
            raise OutputError(
                f"{self.folder} holds results made with other models, precision or backend (or an older birdinfer "
                f"engine) than this run (differing: {', '.join(map(str, differ))}); run again with the same settings "
                "to resume, or pass --no-resume (resume=False) to start over"
            )

    def _discard(self, why: str | None = None) -> None:
        """Remove this journal's own files (fingerprint, done list, parts); nothing else in the folder."""
        parts = sorted(self.parts.glob(f"*{self.suffix}")) if self.parts.is_dir() else []
        if why is not None:
            log.warning("discarding %d finished recordings in %s: %s, so the settings that made them are unknown; "
                        "they are computed again", len(parts), self.folder, why)
        for path in (self.run_file, self.done_file, *parts):
            if path.is_file() or path.is_symlink():
                path.unlink()

    # ------------------------------------------------------------------------------------------ resuming
    def _entries(self) -> dict[str, dict]:
        """The last done entry of each key. A line cut short by a kill is skipped (its recording is done again)
        and ended, so the next entry starts clean."""
        if not self.done_file.is_file():
            return {}
        text = self.done_file.read_bytes().decode("utf-8", errors="replace")
        if text and not text.endswith("\n"):
            with open(self.done_file, "a", encoding="utf-8") as f:
                f.write("\n")
        entries = {}
        for line in text.splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and isinstance(entry.get("key"), str):
                entries[entry["key"]] = entry
        return entries

    def verified(self, recordings: Iterable[Input]) -> dict[str, dict]:
        """``{key: entry}`` of the recordings whose part passes every check (module docstring). Each part that
        fails is deleted and named in the log with its reason; its recording is to be computed again."""
        entries = self._entries()
        self.done = {}
        for rec in recordings:
            entry = entries.get(rec.key)
            if entry is None:
                continue
            why = self._check(entry, rec)
            if why is None:
                self.done[rec.key] = entry
                continue
            log.warning("redoing %s: %s", rec.name, why)
            self.part_path(rec.key).unlink(missing_ok=True)
        return self.done

    def _check(self, entry: dict, rec: Input) -> str | None:
        part = self.part_path(rec.key)
        if entry.get("file") != rec.name or not _well_formed(entry, self._part_name(rec.key)):
            return f"its entry in {self.done_file} is malformed"
        why = self._part_problem(entry, part)
        if why is not None:
            return why
        return _input_problem(rec.path, entry["input"])

    def _part_problem(self, entry: dict, part: Path, data: bytes | None = None) -> str | None:
        """Why ``part`` is not the part ``entry`` records (None when it is)."""
        if data is None:
            try:
                data = part.read_bytes()
            except FileNotFoundError:
                return f"its part {part} is missing"
            except OSError as e:
                return f"its part {part} cannot be read ({e.strerror or e})"
        if len(data) != entry["bytes"] or hashlib.sha256(data).hexdigest() != entry["sha256"]:
            return f"its part {part} does not hold the bytes written for it (sha256 or size differs)"
        try:
            shape = [int(n) for n in self.inspect(data)]
        except (ValueError, OSError, EOFError) as e:
            return f"its part {part} is not a valid result ({e})"
        if shape != entry["shape"]:
            return f"its part {part} holds {shape[0]} rows × {shape[1]} labels, its entry says {entry['shape'][0]} × {entry['shape'][1]}"
        return None

    # ------------------------------------------------------------------------------------------- writing
    def watch(self, recordings: Iterable[Input]) -> None:
        """Note the size and time stamp of each input before it is computed (see :meth:`add`)."""
        for rec in recordings:
            self._before[rec.key] = _stat_key(rec.path)

    def add(self, rec: Input, data: bytes, shape: tuple[int, int], audio_seconds: float) -> str | None:
        """Store one finished recording's part (``data``: its bytes) and journal it, durably. Returns None, or why
        it was not stored: its input changed or vanished while it was computed (the next run computes it)."""
        try:
            identity = input_identity(rec.path)
        except OSError as e:
            return f"it could not be read again after it was computed ({e.strerror or e}); run again to compute it"
        watched, before = rec.key in self._before, self._before.pop(rec.key, None)
        if watched and identity["sha256"] is not None and before != (identity["size"], identity["mtime_ns"]):
            return "it changed while it was being computed; run again to compute it"
        part = self.part_path(rec.key)
        atomic_write(part, lambda f: f.write(data))
        entry = {"key": rec.key, "file": rec.name, "part": self._part_name(rec.key),
                 "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data), "shape": [int(n) for n in shape],
                 "rows": int(shape[0]), "audio_s": round(float(audio_seconds), 3), "input": identity}
        with open(self.done_file, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.done[rec.key] = entry
        return None

    def read_part(self, key: str) -> bytes:
        """The bytes of a done recording's part, checked against its entry once more (:class:`OutputError` if
        they changed since it was verified or written)."""
        entry, part = self.done[key], self.part_path(key)
        try:
            data = part.read_bytes()
        except OSError:
            data = b""
        why = self._part_problem(entry, part, data)
        if why is not None:
            raise OutputError(f"{entry['file']}: {why}, after it was checked in this run (was {self.folder} changed by "
                              "another program?); run the same command again to compute it anew")
        return data

    def recheck(self, key: str) -> str | None:
        """Why a done recording's part no longer verifies (None when it does)."""
        return self._part_problem(self.done[key], self.part_path(key))


def _input_problem(path: Path, recorded: dict) -> str | None:
    """Why the input at ``path`` is not the one ``recorded`` (None when it is)."""
    try:
        st = os.stat(path)
    except OSError as e:
        return f"its input {path} cannot be read now ({e.strerror or e})"
    if st.st_size != recorded["size"]:
        return f"its input {path} changed since its part was written (size {recorded['size']} → {st.st_size} bytes)"
    if recorded["sha256"] is None or not stat.S_ISREG(st.st_mode):
        return f"its input {path} is not a regular file, whose content cannot be checked again"
    try:
        digest = file_sha256(path)
    except OSError as e:
        return f"its input {path} cannot be read now ({e.strerror or e})"
    if digest != recorded["sha256"]:
        return f"its input {path} changed since its part was written (same size, other content)"
    return None
