"""``birdinfer predict --engine ray``: the single-machine ``predict`` spread over a Ray cluster.

Data flow: inputs → :func:`birdinfer.jobs.predict.collect_inputs` on the driver (paths only) → batches of
``files_per_task`` paths sent to a fixed set of Ray *actors* → each actor decodes, runs the front end and
the models (:meth:`Predictor.iter_files`, the very code of the single-machine path) and returns the
``(n_windows, n_labels)`` float32 probabilities → the driver writes one parquet shard per recording.

Why actors and not Ray Data
---------------------------
* The expensive state is the compiled ensemble (159 s to compile the 16 reference models, several hundred
  MB each copy). An actor compiles it once in ``__init__`` and keeps it for the whole run; a restarted
  actor compiles it again once. Ray Data can hold state too (``map_batches`` with a callable class), but
  its autoscaling actor pool, block splitting and backpressure are built for many small rows, while here
  a row is a whole recording and one row costs seconds of compute: nothing for the streaming executor
  to optimise, only overhead and tuning knobs (``concurrency``, ``batch_size``, object-store limits).
* Per-file bookkeeping is the point of the output: one shard per recording, a done list for resuming,
  a per-file error list. With actors the driver sees each recording's result the moment it is ready and
  records it; Ray Data's ``write_parquet`` names files itself and reports nothing per recording.
* Fault tolerance is plain Ray: ``max_restarts`` restarts a killed worker process (recompiling the models),
  ``max_task_retries`` re-runs the calls it had in flight. A recording that kills its worker every time
  (a decoder crash) fails after the retries and is reported like any bad file; the run goes on.
* Measured (``benchmarks/bench_ray.py --overhead``, 2-core machine, shared and noisy): a no-op actor call
  round trip costs 1.0 ms; the same 200 no-op items through Ray Data ``map_batches`` (callable class,
  one actor) took 5.1 s (25.6 ms per item, executor start included). Against 1.4–2.7 s of compute per
  60 s file neither matters much, but actors cost less and give per-file control, so actors it is.
  End to end the 1-worker Ray path ran within ±5 % of single-machine ``predict`` on the same files
  (−85 and +102 ms per file in two runs: noise on this machine).

Output folder (``OUT_DIR``)
---------------------------
``shards/<key>.parquet``
    One per recording (``key`` = :attr:`birdinfer.jobs.predict.Recording.key`), the rows single-machine
    ``predict --format parquet`` writes for it: ``file, start_s, end_s`` then one float32 column per
    label. Written to a temporary name and renamed.
``_run.json``
    What produced the shards (labels, model files and checksums, the spec's sha256, precision, backend,
    engine version: :func:`birdinfer.jobs.journal.run_fingerprint`); a re-run with other settings, or after an
    upgrade that may change the outputs, is refused unless ``resume=False``.
``_done.jsonl``
    One JSON line per finished recording (``key, file, part, sha256, bytes, shape, rows, audio_s, input``),
    appended after its shard is in place: a run killed at any moment and started again checks these (the
    shard's bytes and shape, the input's size and content: the journal of single-machine ``predict``,
    :mod:`birdinfer.jobs.journal`), computes again the ones that fail (one log line each) and skips the rest.
``_errors.csv``
    ``file, error`` of the recordings that failed in the last run (absent when none). Failed recordings
    get no rows and are retried by the next run.
``embeddings/<key>.npy``, ``_embeddings_run.json``, ``_embeddings_done.jsonl``
    Only with ``--embeddings DIR``: each recording's embedding rows (float32 ``(rows, width)``, the folder's one
    ``embedding`` output, e.g. BirdNET's 1024-d layer; the workers return them with the scores), journalled as the
    shards are but under a fingerprint of their own (the run's plus the embedding output). When the scores and
    the rows of a recording are stored, ``DIR/<path below its folder argument, without suffix>.birdnet.embeddings.txt``
    is written from them, atomically, by :func:`birdinfer.jobs.embeddings.write_embeddings`: the bytes
    single-machine ``predict --embeddings`` writes for the same recordings and options. Resuming with or without
    ``--embeddings``: a run that asks for them computes every recording whose rows are missing (its shard, if
    stored, is kept), so adding ``--embeddings`` to a finished run computes the models again for every recording
    but rewrites no shard; a run that does not ask leaves stored rows alone (``--no-resume`` deletes them).
``_SUCCESS``
    Written last: the index of the complete output in input order (JSON: ``labels``, ``files`` with each
    shard's sha256, ``failed``, and ``run``: workers, threads per worker, model load seconds, wall and
    processing seconds, seconds of audio computed by this run); it lists only shards that exist and verify
    when it is written. :func:`read_output` reads the shards in that order (checking their sha256); the table
    equals the single-machine ``predict`` output for the same inputs.
Tables (``--format raven|birdnet_csv|audacity|kaleidoscope``)
    One per recording with a shard (and ``--combine``'s combined tables), named as single-machine ``predict`` names
    them in its ``--out`` folder, written when the run ends from the shards' scores by
    :func:`birdinfer.jobs.outputs.write_output` with the filters given (:func:`_table_plan`): the local engine's
    bytes. The shards keep every score (a resumed run reuses them, whatever it writes from them), so a filter without
    a table format is refused, as is ``--format csv``.

One run per output folder: a run holds ``<OUT_DIR>.lock`` (:mod:`birdinfer.io.lock`, the lock of
single-machine ``predict``) from before Ray starts until the end; a second run on the same folder stops at
once with a sentence naming the holder's PID.

Audio is read by path on the workers: the workers must see the input files and the model folder at
the same paths as the driver (a shared file system, or identical copies). Only paths go out and only
probabilities (and embedding rows when asked) come back (a 60 s file: 12 × n_labels float32); shards and
embeddings are written by the driver, so the workers need no write access and ``_done.jsonl`` has a single
writer. The actor and the pool are :mod:`birdinfer.jobs.ray_pool`.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Mapping, Sequence

from ..errors import BackendError, BirdinferError, MissingDependencyError, OutputError, ParameterError  # noqa: F401
from ..spec.manifest import Manifest
from ..spec.options import with_options
from .._console import say
from ..io.lock import OutputLock
from .embeddings import EmbeddingPlan, embedding_plan, sweep as sweep_embeddings, write_embeddings
from .outputs import FOLDER_FORMATS, OutputPlan, row_seconds, sweep_outputs, write_output
from .predict import Recording, checked_plan, collect_inputs
from .ray_pool import connect, require_ray, run_pool
from .shards import (ERRORS_FILE, SHARDS_FOLDER, EmbeddingParts, OutputFolder, require_shard_pyarrow, fingerprint,
                     output_schema, read_output, shard_table)

__all__ = ["SHARDS_FOLDER", "predict_ray", "read_output", "shard_table", "output_schema"]

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------- predict
def _refuse_held(manifest: Manifest) -> Manifest:
    """Shards are written per recording; a spec fused over all recordings cannot be (before any audio work)."""
    from ..runtime.fusion import is_held
    from ..spec.upgrade import upgrade

    if is_held(upgrade(manifest).ensemble):
        raise ParameterError(f"{manifest.folder or 'the model folder'}: its ensemble has steps over the whole submission "
                             "(scope 'submission'), which --engine ray cannot run shard by shard; use --engine local")
    return manifest


def _checked_models(models: str | Path | Manifest, options) -> tuple[Manifest, dict]:
    """``(the run's manifest, with the option values written in; what the workers load)``: the manifest itself when
    it was given loaded, else the folder's absolute path and the option values, which each worker writes into the
    manifest it loads as here (small actor arguments, kept by Ray for restarts). Before any audio work."""
    if isinstance(models, Manifest):
        manifest = _refuse_held(with_options(models, options))
        return manifest, {"models": manifest, "options": None}
    folder = str(Path(models).resolve())
    manifest = _refuse_held(with_options(Manifest.load(folder), options))
    return manifest, {"models": folder, "options": {k: v for k, v in (options or {}).items() if v is not None} or None}


#: ``predict`` keywords of the outputs written from the shards after the run (:func:`_table_plan`).
TABLE_KEYWORDS = ("threshold", "min_confidence", "top_k", "combine", "species_codes", "merge_consecutive", "locale")
SPECIES_KEYWORDS = ("species_list", "lat", "lon", "week", "sf_thresh")


def _table_plan(manifest: Manifest, out_dir: Path, format: str | None, options, tables: Mapping) -> OutputPlan | None:
    """The plan of the tables written from the shards when the run ends (``--format raven`` and BirdNET-Analyzer's
    formats, with ``tables``' filters), checked before any audio work; None for the shards alone. The shards keep
    every score whatever is asked (a resumed run reuses them), so what would filter them is refused, naming the flag."""
    given = [k for k in (*TABLE_KEYWORDS, *SPECIES_KEYWORDS) if tables.get(k) not in (None, False)]
    formats = ", ".join(FOLDER_FORMATS)
    if format in (None, "parquet"):
        if given:
            flag = "--" + given[0].replace("_", "-")
            raise ParameterError(f"{flag} with --engine ray goes with the tables written from its shards (--format "
                                 f"{formats}): the parquet shards in {out_dir} keep every score; for a filtered "
                                 "per-window csv / parquet table use --engine local")
        return None
    if format not in FOLDER_FORMATS:
        raise ParameterError(f"--format {format} with --engine ray: the run writes parquet shards into {out_dir} "
                             "(birdinfer.jobs.distributed.read_output reads them as one table); give --format "
                             f"{formats} for tables written from them, or use --engine local for one {format} file")
    return checked_plan(manifest, format, options, {k: tables.get(k) for k in TABLE_KEYWORDS},
                        {k: tables.get(k) for k in SPECIES_KEYWORDS})


def _write_tables(plan: OutputPlan | None, folder: OutputFolder, recordings: list[Recording], manifest: Manifest) -> None:
    """The tables of every recording with a shard, into the output folder: :func:`birdinfer.jobs.outputs.write_output`
    on the shards' scores, as single-machine ``predict`` writes them from its parts (the same bytes)."""
    if plan is not None:
        done = [rec for rec in recordings if rec.key in folder.done]
        write_output(folder.folder, plan, recordings, done, folder.load, manifest)


def _checked_run(inputs, models, options, embeddings
                 ) -> tuple[Manifest, dict, list[Recording], EmbeddingPlan | None]:
    """What :func:`predict_ray` checks before any audio work: ``(manifest, what the workers load, recordings, the
    embeddings plan or None)``."""
    manifest, worker_models = _checked_models(models, options)
    recordings = collect_inputs(inputs)
    if not recordings:
        raise ParameterError(f"no audio files found in {', '.join(map(str, [inputs] if isinstance(inputs, (str, Path)) else inputs))} "
                             "(folders are walked recursively)")
    return manifest, worker_models, recordings, embedding_plan(manifest, embeddings)


def predict_ray(
    inputs: str | Path | Sequence[str | Path],
    models: str | Path | Manifest,
    out_dir: str | Path,
    *,
    address: str | None = None,
    precision: str = "auto",
    backend: str = "auto",
    resume: bool = True,
    progress: bool = True,
    num_workers: int | None = None,
    files_per_task: int = 1,
    cache_dir: str | Path | None = None,
    options: dict[str, float | None] | None = None,
    embeddings: str | Path | None = None,
    format: str | None = None,
    **tables,
) -> Path:
    """Per-window probabilities of every recording in ``inputs``, computed on a Ray cluster.

    Parameters
    ----------
    inputs : audio files, folders (walked recursively) and ``.txt`` file lists, as for
        :func:`birdinfer.jobs.predict.predict`; the workers read them by path.
    models : model folder written by ``birdinfer export`` (or a loaded :class:`Manifest`), readable by
        the workers at the same path.
    out_dir : output folder (module docstring): one parquet shard per recording, ``_done.jsonl``, ``_errors.csv``,
        ``_SUCCESS``. :func:`read_output` gives the table ``predict(..., format="parquet")`` writes for the inputs.
    address : Ray cluster to join (``ray.init(address=...)``). Default: if this process is already
        connected to Ray, use that; otherwise start a local instance with ``os.cpu_count()`` CPUs, shut
        down at the end.
    precision, backend, cache_dir, options : as for :func:`birdinfer.jobs.predict.predict` (``options``: the
        folder's declared options, e.g. BirdNET's ``{"overlap": 1.5}``).
    resume : skip recordings listed in ``_done.jsonl`` by an earlier run with the same settings whose
        shard and input still verify (the others are computed again); ``False`` deletes earlier results first.
    progress : progress bar on stderr (files done, hours of audio per hour of wall time, failures).
    num_workers : actors, each holding one compiled copy of the models (mind memory with large
        ensembles on many-core nodes). Default: one per CPU of the cluster, each with one inference
        thread: on the 2-core machine 2 workers × 1 thread processed 32–43 h of audio per hour against
        23–28 h/h for 1 worker × 2 threads (3 real models, ``benchmarks/bench_ray.py``).
    files_per_task : recordings per actor call (1 is right for minute-long files; raise it for many
        very short files).
    embeddings : a folder: also each window's embedding, one ``<stem>.birdnet.embeddings.txt`` per recording, the
        bytes :func:`birdinfer.jobs.predict.predict` writes for the same recordings and options (module docstring).
    format, tables : ``raven``, ``birdnet_csv``, ``audacity`` or ``kaleidoscope``: also one table per recording in
        ``out_dir``, written from the shards when the run ends, with ``predict``'s keywords of :data:`TABLE_KEYWORDS`
        and :data:`SPECIES_KEYWORDS` (``min_confidence``, ``top_k``, ``species_list``, ``merge_consecutive``, ...):
        the files :func:`birdinfer.jobs.predict.predict` writes for the same arguments. ``None``/``parquet``: the
        shards alone (a filter is then refused, as is ``csv``).

    Each actor reserves ``C/N`` of the cluster's ``C`` CPUs and runs OpenVINO with that many threads. Returns
    ``out_dir``. Fails before any audio work (:class:`BirdinferError`) on: no input files, a missing or invalid model
    folder, an option it does not declare, ``embeddings`` from a folder without an embedding output, an output
    folder that cannot be written or that another run is writing (``<out_dir>.lock``), results from other
    settings, Ray or pyarrow missing, workers that cannot load the models. Recordings that cannot be decoded, or
    whose worker crashed on every retry, get no rows and are listed in ``_errors.csv``.
    """
    wall_start = time.perf_counter()
    _check_counts(files_per_task, num_workers)
    out_dir = Path(out_dir)
    unknown = sorted(set(tables) - set(TABLE_KEYWORDS) - set(SPECIES_KEYWORDS))
    if unknown:
        raise TypeError(f"predict_ray() got an unexpected keyword argument {unknown[0]!r}")
    manifest, worker_models, recordings, emb = _checked_run(inputs, models, options, embeddings)
    plan = _table_plan(manifest, out_dir, format, options, tables)  # the flags first: a wrong one is wrong with Ray too
    ray = require_ray()
    require_shard_pyarrow()
    lock = OutputLock(out_dir).acquire()  # the same lock as single-machine predict: a second run fails here
    try:
        folder, resumed, failed, run = _run_locked(
            ray, address, recordings, manifest, out_dir, emb, plan, wall_start, worker_models, resume=resume,
            precision=precision, backend=backend, cache_dir=cache_dir, num_workers=num_workers,
            files_per_task=files_per_task, progress=progress)
    finally:
        lock.release()
    _say_summary(progress, recordings, folder, resumed, failed, run, out_dir)
    return out_dir


def _run_locked(ray, address: str | None, recordings: list[Recording], manifest: Manifest, out_dir: Path, emb, plan,
                wall_start: float, worker_models: dict, *, resume: bool, precision: str, backend: str,
                **compute) -> tuple[OutputFolder, int, int, dict]:
    """:func:`predict_ray`'s work once it holds the output lock: earlier results swept or kept (``resume``), the
    recordings still to do computed on Ray, then embeddings, tables and the run record written. Returns the
    output folder, how many recordings were resumed, how many failed and the run figures."""
    sweep_embeddings(emb, out_dir)
    if plan is not None:
        sweep_outputs(out_dir, plan)
    folder, emb_parts, todo = _open_output(recordings, manifest, out_dir, precision=precision, backend=backend,
                                           resume=resume, emb=emb)
    resumed = len(recordings) - len(todo)
    errors: dict[str, str] = {}
    run: dict = {"audio_seconds": 0.0, "files_computed": len(todo), "files_resumed": resumed}
    if todo:
        record = functools.partial(_record, folder=folder, errors=errors, manifest=manifest, emb=emb,
                                   emb_parts=emb_parts)
        run |= _compute(ray, address, todo, record, errors, errors_file=folder.folder / ERRORS_FILE,
                        **worker_models, precision=precision, backend=backend,
                        keep_outputs=[emb.key] if emb else [], resumed=resumed, total=len(recordings), **compute)
    if emb is not None:
        _write_embeddings(emb, emb_parts, folder, recordings, manifest)
        run["embeddings"] = str(emb.folder)
    _write_tables(plan, folder, recordings, manifest)
    run["wall_seconds"] = round(time.perf_counter() - wall_start, 3)
    folder.finish(recordings, errors, manifest.labels, run)
    return folder, resumed, len(errors), run


def _say_summary(progress: bool, recordings: list[Recording], folder: OutputFolder, resumed: int, failed: int,
                 run: dict, out_dir: Path) -> None:
    wall, audio_this_run = run["wall_seconds"], run["audio_seconds"]
    hours = sum(float(folder.done[r.key].get("audio_s", 0.0)) for r in recordings if r.key in folder.done) / 3600.0
    speed = f"{audio_this_run / wall:.0f} h of audio per hour" if audio_this_run and wall > 0 else "nothing new to compute"
    say(progress, f"birdinfer predict (ray): {len(recordings)} files ({resumed} resumed), {failed} failed, "
                   f"{hours:.2f} h of audio, {wall:.1f} s, {speed} → {out_dir}")


def _compute(ray, address: str | None, todo: list[Recording], record, errors: dict[str, str], *, cache_dir,
             **pool) -> dict:
    """Connect to Ray (starting a local instance unless ``address``/a connection is given), run ``todo`` on the
    pool, disconnect when this call connected; returns the run figures of :func:`birdinfer.jobs.ray_pool.run_pool`."""
    started_here = connect(ray, address)
    try:
        return run_pool(ray, todo, record, errors, cache_dir=None if cache_dir is None else str(cache_dir), **pool)
    finally:
        if started_here:
            ray.shutdown()


def _open_output(recordings: list[Recording], manifest: Manifest, out_dir: Path, *, precision: str, backend: str,
                 resume: bool, emb: EmbeddingPlan | None = None
                 ) -> tuple[OutputFolder, EmbeddingParts | None, list[Recording]]:
    """``(the output folder, its embedding parts when asked, the recordings to compute)``: those not done and
    verified by an earlier run with these settings (their shard, or with ``emb`` their embedding rows, missing)."""
    run = fingerprint(manifest, precision, backend)
    folder = OutputFolder(out_dir, run, manifest.labels, resume=resume)
    done = folder.journal.verified(recordings)  # a shard that fails a check is logged and computed again
    emb_parts = None
    if emb is not None:
        emb_parts = EmbeddingParts(out_dir, {**run, **emb.fingerprint()}, emb.width, resume=resume)
        emb_parts.journal.verified(recordings)
        missing = sum(1 for rec in recordings if rec.key in done and rec.key not in emb_parts.done)
        if missing:
            log.info("computing again %d recordings whose scores are done in %s but not their embeddings", missing,
                     out_dir)
    todo = [rec for rec in recordings
            if rec.key not in done or (emb_parts is not None and rec.key not in emb_parts.done)]
    folder.journal.watch(todo)
    if emb_parts is not None:
        emb_parts.journal.watch(todo)
    if len(todo) < len(recordings):
        log.info("resuming: %d of %d recordings already done in %s", len(recordings) - len(todo), len(recordings), out_dir)
    return folder, emb_parts, todo


def _check_counts(files_per_task, num_workers) -> None:
    if not (isinstance(files_per_task, int) and files_per_task >= 1):
        raise ParameterError(f"files_per_task must be a positive integer, got {files_per_task!r}")
    if num_workers is not None and not (isinstance(num_workers, int) and num_workers >= 1):
        raise ParameterError(f"num_workers must be a positive integer or None, got {num_workers!r}")


def _record(batch: list[Recording], results: list[dict], *, folder: OutputFolder, errors: dict[str, str],
            manifest: Manifest, emb: EmbeddingPlan | None = None, emb_parts: EmbeddingParts | None = None) -> float:
    """Store one call's results: each recording's embedding rows (when asked) and its shard, whichever is not
    stored yet (or note why not). Returns the seconds of audio computed."""
    audio = 0.0
    step, span = row_seconds(manifest)  # as single-machine predict's tables
    for rec, result in zip(batch, results):
        error = result["error"]
        if error is None and emb_parts is not None and rec.key not in emb_parts.done:
            error = emb_parts.add(rec, result["outputs"].get(emb.key), len(result["probs"]), result["audio_s"])
        if error is None and rec.key not in folder.done:
            error = folder.add(rec, result["probs"], result["audio_s"], manifest.labels, step, span)
        if error is None:
            audio += result["audio_s"]
        else:
            errors[rec.key] = error
            log.warning("%s: %s; no rows written for it (listed in %s)", rec.name, error, folder.folder / ERRORS_FILE)
    return audio


def _write_embeddings(emb: EmbeddingPlan, emb_parts: EmbeddingParts, folder: OutputFolder,
                      recordings: list[Recording], manifest: Manifest) -> None:
    """One ``<stem>.birdnet.embeddings.txt`` per recording with both its shard and its embedding rows, each written
    atomically, with the names, times and text of single-machine ``predict --embeddings``."""
    done = [rec for rec in recordings if rec.key in folder.done and rec.key in emb_parts.done]
    write_embeddings(replace(emb, n_labels=0), recordings, done, emb_parts.load, manifest)
