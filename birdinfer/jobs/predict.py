"""``birdinfer predict``: per-5 s-window probabilities for recordings of any length, resumable.

Data flow: inputs (files, folders walked recursively, ``.txt`` file lists) → sorted, de-duplicated list
of recordings → :meth:`Predictor.iter_files` (decode + front end in a background thread, 60 s blocks) →
one *part* per finished recording → final assembly of the output in input order.

Resumable: every finished recording's probabilities are written to ``<out>.parts/`` (one ``.npy`` per
recording, written to a temporary name and renamed, then an entry with its sha256 and its input's size and
sha256 appended to ``done.txt``: :mod:`birdinfer.jobs.journal`). A run killed at any moment (even SIGKILL)
and started again with the same arguments checks each finished part (its bytes, its shape, its input's
content), computes again the ones that fail (one log line each), skips the others and assembles exactly the
bytes an uninterrupted run writes: the output is always built from the parts, in input order, into a
temporary file that is renamed into place (temporary files of a run killed while writing are removed by the
next run on the same output); the parts folder is removed afterwards. Parts made with other models, spec,
precision or backend, or by an engine version whose outputs may differ
(:data:`birdinfer.jobs.journal.ENGINE_VERSION`), are refused (``resume=False`` starts over).

Bad recordings (corrupt, truncated, empty, not audio, unreadable) are never fatal: each is logged with
its error, gets **no rows** (unlike ``submit``, which must fill every row), and is listed in
``<out>.errors.csv`` (columns ``file, error``; removed when a run has no failures). They are retried
when the run is started again.

A spec with steps over the whole submission (``rank_mean`` / ``column_normalize`` with ``scope: "submission"``)
keeps each recording's rows before fusion as its part (every member the fusion reads, float32) and fuses them
when every recording is done: that step holds all recordings' rows at once (rows only, never audio:
``recordings × rows × members × labels × 4`` bytes, e.g. 10,000 one-hour recordings × 720 rows × 2 members ×
234 labels ≈ 13.5 GB), and the output is written from them.

Memory: recordings are decoded and processed in 60 s blocks (at most a few blocks in flight), so peak
memory does not grow with the recording's length. Measured with ``benchmarks/memory_long_recording.py``
(4-model test ensemble, f32): peak RSS 364 MB with the models loaded, 796 MB predicting a 60 s OGG,
866 MB for 20 minutes and 861 MB for 60 minutes — the bound is "a 60 s file's peak + ~70 MB", whereas
the 60-minute file's decoded samples alone would be 439 MB.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from ..io.audio import AUDIO_EXTENSIONS, audio_info, list_audio_files
from ..errors import BirdinferError, ParameterError
from ..spec.manifest import Manifest
from ..runtime.models import plan_variants
from .._console import progress_bar, say
from .journal import ENGINE_VERSION, Journal, run_fingerprint
from ..io.lock import OutputLock
from ..io.detections import DETECTION_FORMATS
from ..io.output import RAVEN_COLUMNS, atomic_write, raven_table, require_pyarrow
from ..spec.upgrade import upgrade
from ..spec.options import option_values, with_options
from ..runtime.fusion import is_held
from .members import HeldParts
from .outputs import OutputPlan, check_output, output_plan, sweep_outputs, write_output
from .species import species_mask
from .embeddings import EmbeddingPlan, embedding_plan, sweep as sweep_embeddings, write_embeddings

__all__ = ["ENGINE_VERSION", "FORMATS", "RAVEN_COLUMNS", "Recording", "checked_plan", "collect_inputs", "predict",
           "raven_table", "run_fingerprint"]

log = logging.getLogger(__name__)

#: Output formats of :func:`predict`.
FORMATS = ("csv", "parquet", "raven") + DETECTION_FORMATS
_SUFFIX_FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
_DONE_LIST = "done.txt"
_RUN_FILE = "run.json"


@dataclass(frozen=True)
class Recording:
    """One input recording: ``path`` to open, ``name`` written in the ``file`` column (the path as the
    user gave it: a folder argument joined with the path below it), ``relative`` = path below its folder
    argument (the file name for files given directly; used for Raven table names)."""

    path: Path
    name: str
    relative: str

    @property
    def key(self) -> str:
        """Stable identifier of the recording's part file (independent of the other inputs)."""
        return hashlib.sha1(self.name.encode("utf-8", "surrogateescape")).hexdigest()[:20]  # names' bytes as on disk


# ------------------------------------------------------------------------------------------- inputs
def _is_audio_name(path: Path) -> bool:
    return path.suffix.lower() in AUDIO_EXTENSIONS


def _read_file_list(list_path: Path) -> list[Recording]:
    """A ``.txt`` list: one path per line (blank lines and ``#`` comments skipped); relative paths are
    relative to the list's folder. Missing entries are kept: they fail (reported) like any bad file. Bytes
    that are not UTF-8 are kept as such (a name of the file system, byte-exact in the outputs)."""
    try:
        lines = list_path.read_text(encoding="utf-8", errors="surrogateescape").splitlines()
    except OSError as e:
        raise ParameterError(f"cannot read the file list {list_path}: {e}") from e
    out = []
    for line in lines:
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        path = Path(entry)
        if not path.is_absolute():
            path = list_path.parent / path
        out.append(Recording(path, path.as_posix(), path.name))
    return out


def collect_inputs(inputs: str | Path | Iterable[str | Path]) -> list[Recording]:
    """Files, folders (walked recursively; audio extensions of :data:`birdinfer.io.audio.AUDIO_EXTENSIONS`,
    any case; hidden files skipped) and ``.txt`` file lists → recordings sorted by ``name``, each file once
    (de-duplicated by resolved path). Raises :class:`ParameterError` for an input that does not exist. Entries
    that are not regular files (FIFOs, sockets, devices, link loops, dangling links) are kept: reading refuses
    them with a reason, so they are listed in the errors, never opened (:mod:`birdinfer.io.paths`)."""
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    found: list[Recording] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            for f in list_audio_files(path, recursive=True):
                found.append(Recording(f, f.as_posix(), f.relative_to(path).as_posix()))
        elif path.suffix.lower() == ".txt" and path.is_file():
            found += _read_file_list(path)
        elif path.exists() or path.is_symlink():
            found.append(Recording(path, path.as_posix(), path.name))
        else:
            raise ParameterError(f"input {path} does not exist; pass audio files, folders or .txt file lists")
    seen, unique = set(), []
    for rec in sorted(found, key=lambda r: r.name):
        try:
            identity = str(rec.path.resolve())
        except (OSError, RuntimeError):  # a symbolic link loop (RuntimeError up to Python 3.12)
            identity = rec.name
        if identity not in seen:
            seen.add(identity)
            unique.append(rec)
    return unique


# ------------------------------------------------------------------------------------------- output
def _resolve_format(out: Path, format: str | None) -> str:
    if format is None:
        format = _SUFFIX_FORMATS.get(out.suffix.lower(), "csv")
    if format not in FORMATS:
        raise ParameterError(f"format={format!r} is not one of {FORMATS}")
    return format


def _side_path(out: Path, suffix: str) -> Path:
    return out.with_name(out.name + suffix)


# -------------------------------------------------------------------------------------------- parts
class _Parts:
    """``<out>.parts/``, the run's :class:`birdinfer.jobs.journal.Journal`: ``run.json`` (what produced the parts),
    ``<key>.npy`` per finished recording (float32 ``(n_windows, n_labels)``), ``done.txt`` (one JSON line per
    finished recording with the sha256 of its part and its input's identity, verified on resume)."""

    def __init__(self, folder: Path, fingerprint: dict, n_labels: int, *, resume: bool):
        self.folder = folder
        self.journal = Journal(folder, fingerprint, run_name=_RUN_FILE, done_name=_DONE_LIST, suffix=".npy",
                               inspect=functools.partial(_npy_shape, n_labels=n_labels)).open(resume=resume)

    @property
    def done(self) -> dict[str, dict]:
        return self.journal.done

    def load(self, key: str) -> np.ndarray:
        return np.load(io.BytesIO(self.journal.read_part(key)), allow_pickle=False)

    def add(self, rec: Recording, probs: np.ndarray, audio_seconds: float) -> str | None:
        """Store a finished recording's rows; None, or why they were not stored (see :meth:`Journal.add`)."""
        buffer = io.BytesIO()
        np.save(buffer, np.ascontiguousarray(probs, np.float32))
        return self.journal.add(rec, buffer.getvalue(), probs.shape, audio_seconds)


def _npy_shape(data: bytes, n_labels: int) -> tuple[int, int]:
    probs = np.load(io.BytesIO(data), allow_pickle=False)
    if probs.ndim != 2 or probs.shape[1] != n_labels or probs.dtype != np.float32:
        raise ValueError(f"a {probs.dtype} array of shape {probs.shape}, not float32 (rows, {n_labels})")
    return probs.shape


def _audio_seconds(path: Path, rows: int, window_seconds: float) -> float:
    try:
        return float(audio_info(path).duration_s)
    except BirdinferError:
        return rows * window_seconds


# ------------------------------------------------------------------------------------------ predict
def predict(
    inputs: str | Path | Sequence[str | Path],
    models: str | Path | Manifest,
    out: str | Path,
    *,
    format: str | None = None, threshold: float | None = None, precision: str = "auto", backend: str = "auto",
    resume: bool = True, progress: bool = True, cache_dir: str | Path | None = None,
    options: Mapping[str, float | None] | None = None,
    min_confidence: float | None = None, top_k: int | None = None, species_list: str | Path | None = None,
    lat: float | None = None, lon: float | None = None, week: int | None = None, sf_thresh: float | None = None,
    combine: bool = False, species_codes: str | Path | None = None, embeddings: str | Path | None = None,
    merge_consecutive: int | None = None, locale: str | None = None,
) -> Path:
    """Per-5 s-window probabilities of every recording in ``inputs``, written to ``out``.

    Parameters
    ----------
    inputs : audio files, folders (walked recursively) and ``.txt`` file lists (one path per line,
        relative to the list's folder); sorted by path, each file once.
    models : model folder written by ``birdinfer export`` (or a loaded :class:`Manifest`).
    out : output file (``csv``, ``parquet``) or folder (``raven`` and BirdNET-Analyzer's formats).
    format : ``csv`` | ``parquet`` (one row per window: ``file`` as given, ``start_s``, ``end_s``, one float32
        column per label, in manifest order; the row rule of :mod:`birdinfer.runtime.pipeline` or the folder's)
        | ``raven`` | ``birdnet_csv`` | ``audacity`` | ``kaleidoscope`` (one table per recording in the ``out``
        folder: :mod:`birdinfer.jobs.outputs`); default from ``out``'s suffix (``.parquet``/``.pq``), else csv.
    threshold : Raven detection threshold in [0, 1] (default 0.5; BirdNET folders: ``min_confidence``).
    precision, backend : as for :func:`birdinfer.jobs.submit.make_submission`.
    resume : skip recordings finished by an earlier, interrupted run with the same settings (see the
        module docstring); ``False`` discards earlier partial results.
    progress : show a progress bar and print a one-line summary on stderr.
    cache_dir : OpenVINO compiled-model cache folder.
    options : values of options the model folder declares (:mod:`birdinfer.spec.options`), e.g. BirdNET's
        ``{"overlap": 1.5, "sensitivity": 1.25}``; an option the folder does not declare is refused.
    min_confidence, top_k : detections kept per window (BirdNET-Analyzer's ``--min_conf``, default 0.25, and
        ``--top_n``); the per-window table keeps every score unless given (the others are then 0.0).
    species_list, lat, lon, week, sf_thresh : the species filter, a list file or a location and week
        (:mod:`birdinfer.jobs.species`); the per-window table keeps only those columns. Filters apply to the
        output, never to the resumable parts. ``combine``: also BirdNET-Analyzer's combined tables;
        ``species_codes``: a JSON file label → code for BirdNET's Raven tables; ``merge_consecutive``, ``locale``:
        BirdNET-Analyzer's ``--merge_consecutive`` and ``--locale`` (:mod:`birdinfer.jobs.outputs`).
    embeddings : a folder: also each window's embedding (BirdNET's 1024-d layer before the classifier), one
        ``<stem>.birdnet.embeddings.txt`` per recording, from the same run (:mod:`birdinfer.jobs.embeddings`).

    Returns the output path. Fails before any audio work (:class:`BirdinferError`) on: no input files,
    a missing or empty model folder, a manifest checksum mismatch, an output that cannot be written,
    parquet without pyarrow, partial results from different settings. Recordings that cannot be decoded
    get no rows; they are logged and listed in ``<out>.errors.csv``. Peak memory does not grow with the
    recording's length (60 s blocks; module docstring).
    """
    wall_start = time.perf_counter()
    out = Path(out)
    plan, manifest, recordings, emb = _checked_run(
        inputs, models, out, format=format, precision=precision, backend=backend, options=options,
        outputs=dict(threshold=threshold, min_confidence=min_confidence, top_k=top_k, combine=combine,
                     species_codes=species_codes, merge_consecutive=merge_consecutive, locale=locale),
        species=dict(species_list=species_list, lat=lat, lon=lon, week=week, sf_thresh=sf_thresh), embeddings=embeddings)
    lock = OutputLock(out).acquire()  # a second run on this output fails here, before any audio work
    try:
        held, parts = _open_parts(out, plan, manifest, precision, backend, emb, resume)
        parts.journal.verified(recordings)  # a part that fails a check is logged and computed again
        todo = [rec for rec in recordings if rec.key not in parts.done]
        parts.journal.watch(todo)
        resumed = len(recordings) - len(todo)
        if resumed:
            log.info("resuming: %d of %d recordings already done in %s", resumed, len(recordings), parts.folder)

        errors: dict[str, str] = {}
        audio_this_run = _compute(todo, parts, errors, manifest, out=out, precision=precision, backend=backend,
                                  cache_dir=cache_dir, progress=progress, total=len(recordings), held=held,
                                  emb=emb) if todo else 0.0

        _assemble(out, plan, recordings, parts, manifest, held, emb)
        _write_errors(_side_path(out, ".errors.csv"), [(rec.name, errors[rec.key]) for rec in recordings if rec.key in errors])
        shutil.rmtree(parts.folder, ignore_errors=True)
    finally:
        lock.release()

    _say_summary(progress, recordings, parts, resumed, len(errors), audio_this_run, time.perf_counter() - wall_start, out)
    return out


def _say_summary(progress: bool, recordings, parts, resumed: int, failed: int, audio_this_run: float, wall: float,
                 out: Path) -> None:
    hours = sum(float(parts.done[r.key].get("audio_s", 0.0)) for r in recordings if r.key in parts.done) / 3600.0
    speed = f"{audio_this_run / wall:.0f}× real time" if audio_this_run and wall > 0 else "nothing new to compute"
    say(progress, f"birdinfer predict: {len(recordings)} files ({resumed} resumed), {failed} failed, "
                   f"{hours:.2f} h of audio, {wall:.1f} s, {speed} → {out}")


def _checked_run(inputs, models, out: Path, *, format: str | None, precision: str, backend: str, options=None,
                 outputs: Mapping, species: Mapping, embeddings=None
                 ) -> tuple[OutputPlan, Manifest, list[Recording], EmbeddingPlan | None]:
    """Everything :func:`predict` refuses before any audio work: ``(output plan, manifest, recordings)``."""
    format = _resolve_format(out, format)
    if format == "parquet":
        require_pyarrow("--format parquet", "'birdinfer[parquet]' (or pyarrow), or use --format csv")
    manifest = with_options(models if isinstance(models, Manifest) else Manifest.load(models), options)
    plan = checked_plan(manifest, format, options, outputs, species)
    plan_variants(manifest, precision=precision, backend=backend)  # e.g. no ONNX files for onnxruntime: fail now
    recordings = collect_inputs(inputs)
    if not recordings:
        raise ParameterError(
            f"no audio files found in {', '.join(str(i) for i in ([inputs] if isinstance(inputs, (str, Path)) else inputs))} "
            f"(extensions {', '.join(AUDIO_EXTENSIONS)}, any case; folders are walked recursively)"
        )
    check_output(out, format)
    return plan, manifest, recordings, embedding_plan(manifest, embeddings)


def checked_plan(manifest: Manifest, format: str, options: Mapping | None, outputs: Mapping, species: Mapping) -> OutputPlan:
    """The run's checked output plan (``outputs``: :func:`output_plan`'s keywords, ``species``: :func:`species_mask`'s;
    the meta model runs here), before any audio work; Kaleidoscope reports the folder's options and the location."""
    allowed = species_mask(manifest, **species)  # lat/lon/week checked, the meta model run: before any audio
    settings = {**option_values(manifest), **{k: v for k, v in (options or {}).items() if v is not None},
                **{k: v for k, v in species.items() if k in ("lat", "lon", "week") and v is not None}}
    return output_plan(manifest, format, allowed=allowed, settings=settings, **outputs)


def _open_parts(out: Path, plan: OutputPlan, manifest: Manifest, precision: str, backend: str,
                emb: EmbeddingPlan | None, resume: bool) -> tuple[HeldParts | None, _Parts]:
    """Called holding the lock: the temporary files of a killed run removed, the run's journal opened (each part
    holds a recording's rows, and its embedding rows beside them when asked)."""
    sweep_outputs(out, plan)
    sweep_embeddings(emb, out)
    held = _held(manifest)  # a spec fused over all recordings: parts hold the rows before fusion
    fingerprint = {**run_fingerprint(manifest, precision, backend), **(emb.fingerprint() if emb else {})}
    width = held.width if held else len(manifest.labels) + (emb.width if emb else 0)
    return held, _Parts(_side_path(out, ".parts"), fingerprint, width, resume=resume)


def _held(manifest: Manifest) -> HeldParts | None:
    spec = upgrade(manifest)
    return HeldParts(spec) if is_held(spec.ensemble) else None


def _compute(todo: Sequence[Recording], parts: _Parts, errors: dict[str, str], manifest: Manifest, *, out: Path,
             precision: str, backend: str, cache_dir, progress: bool, total: int, held: HeldParts | None = None,
             emb: EmbeddingPlan | None = None) -> float:
    """Run the models over ``todo``: each finished recording becomes a part, each failure an entry of
    ``errors``. Returns the seconds of audio computed."""
    from ..runtime.pipeline import Predictor  # checksums are verified and models compiled here, before any audio work

    predictor = Predictor(manifest, precision=precision, backend=backend, cache_dir=cache_dir,
                          keep_outputs=[emb.key] if emb else ())
    say(progress, f"birdinfer predict: {len(predictor.models)} models loaded in {predictor.load_seconds:.1f} s; "
                   f"{predictor.ran_backends} precision: {predictor.precision}")
    bar = progress_bar(progress, total=total, initial=total - len(todo), desc="birdinfer predict")
    audio_seconds = 0.0
    try:
        for rec, result in zip(todo, predictor.iter_files([r.path for r in todo])):
            if result.ok:
                probs = result.probs if held is None else held.stack(result.members)
                probs = emb.joined(probs, result.outputs) if emb else probs
                seconds = _audio_seconds(rec.path, len(probs), manifest.window_seconds)
                error = parts.add(rec, probs, seconds)
                audio_seconds += seconds if error is None else 0.0
                for note in result.notes:
                    log.warning("%s: %s", rec.name, note)
            else:
                error = result.error
            if error is not None:
                errors[rec.key] = error
                log.warning("%s: %s; no rows written for it (listed in %s)", rec.name, error,
                            _side_path(out, ".errors.csv"))
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        predictor.close()
    return audio_seconds


def _assemble(out: Path, plan: OutputPlan, recordings: Sequence[Recording], parts: _Parts, manifest: Manifest,
              held: HeldParts | None = None, emb: EmbeddingPlan | None = None) -> None:
    """Build the final output from the parts, in input order (the same bytes however the run went); a held spec's
    parts are fused first, all at once."""
    done = [rec for rec in recordings if rec.key in parts.done]
    load = parts.load if emb is None else (lambda key: emb.scores(parts.load(key)))
    if held is not None:
        load = dict(zip([r.key for r in done], held.fused([r.path.name for r in done], [parts.load(r.key) for r in done]))).get
    write_output(out, plan, recordings, done, load, manifest)  # one recording's part in memory at a time (unless held)
    if emb is not None:
        write_embeddings(emb, recordings, done, parts.load, manifest)


def _write_errors(path: Path, rows: list[tuple[str, str]]) -> None:
    if not rows:
        path.unlink(missing_ok=True)  # a stale list from an earlier run would mislead
        return
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["file", "error"])
    writer.writerows(rows)
    atomic_write(path, lambda f: f.write(buffer.getvalue().encode("utf-8", "surrogateescape")))  # names byte-exact
