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
``_SUCCESS``
    Written last: the index of the complete output in input order (JSON: ``labels``, ``files`` with each
    shard's sha256, ``failed``, and ``run``: workers, threads per worker, model load seconds, wall and
    processing seconds, seconds of audio computed by this run); it lists only shards that exist and verify
    when it is written. :func:`read_output` reads the shards in that order (checking their sha256); the table
    equals the single-machine ``predict`` output for the same inputs.

One run per output folder: a run holds ``<OUT_DIR>.lock`` (:mod:`birdinfer.io.lock`, the lock of
single-machine ``predict``) from before Ray starts until the end; a second run on the same folder stops at
once with a sentence naming the holder's PID.

Audio is read by path on the workers: the workers must see the input files and the model folder at
the same paths as the driver (a shared file system, or identical copies). Only paths go out and only
probabilities come back (a 60 s file: 12 × n_labels float32); shards are written by the driver, so the
workers need no write access and ``_done.jsonl`` has a single writer.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import BackendError, BirdinferError, MissingDependencyError, OutputError, ParameterError  # noqa: F401
from ..spec.manifest import Manifest
from .._console import progress_bar, say
from ..io.lock import OutputLock
from .predict import Recording, collect_inputs
from .shards import (ERRORS_FILE, SHARDS_FOLDER, OutputFolder, require_shard_pyarrow, fingerprint, output_schema, read_output,
                     shard_table)

__all__ = ["SHARDS_FOLDER", "predict_ray", "read_output", "shard_table", "output_schema"]

log = logging.getLogger(__name__)

#: A worker process that dies is restarted this many times (each restart recompiles the models) ...
_MAX_RESTARTS = 4
#: ... and the calls it had in flight are re-run this many times before their files count as failed.
_MAX_TASK_RETRIES = 2


# ------------------------------------------------------------------------------------- dependencies
def _require_ray():
    try:
        import ray
    except ImportError as e:
        raise MissingDependencyError(
            f"--engine ray needs Ray: pip install 'birdinfer[ray]' (ray[default]>=2.9 and pyarrow), "
            f"or run without --engine ray on one machine ({e})"
        ) from e
    return ray


# -------------------------------------------------------------------------------------------- worker
class _Worker:
    """Ray actor body: one compiled ensemble, kept for the life of the process."""

    def __init__(self, models: str | Manifest, precision: str, backend: str, threads: int | None, cache_dir: str | None):
        from ..runtime.pipeline import Predictor

        self.predictor = Predictor(models, precision=precision, backend=backend, threads=threads, cache_dir=cache_dir)

    def describe(self) -> dict:
        return {"pid": os.getpid(), "precision": self.predictor.precision, "load_seconds": self.predictor.load_seconds}

    def run(self, batch: list[tuple[str, str]]) -> list[dict[str, Any]]:
        """``[(key, path), ...]`` → one dict per recording, in order: ``key``, ``probs`` (float32
        ``(n_windows, n_labels)`` or None), ``error`` (None or the reason), ``audio_s``."""
        from ..io.audio import audio_info

        window_seconds = self.predictor.manifest.window_seconds
        results = []
        for (key, _), result in zip(batch, self.predictor.iter_files([path for _, path in batch])):
            audio_s = 0.0
            if result.ok:
                try:
                    audio_s = float(audio_info(result.path).duration_s)
                except BirdinferError:
                    audio_s = len(result.probs) * window_seconds
            results.append({"key": key, "probs": result.probs, "error": result.error, "audio_s": audio_s})
        return results


@dataclass
class _Slot:
    """One place in the worker pool: its actor handle and how often it was replaced."""

    actor: Any
    replaced: int = 0


# ------------------------------------------------------------------------------------------- predict
def _refuse_held(manifest: Manifest) -> Manifest:
    """Shards are written per recording; a spec fused over all recordings cannot be (before any audio work)."""
    from ..runtime.fusion import is_held
    from ..spec.upgrade import upgrade

    if is_held(upgrade(manifest).ensemble):
        raise ParameterError(f"{manifest.folder or 'the model folder'}: its ensemble has steps over the whole submission "
                             "(scope 'submission'), which --engine ray cannot run shard by shard; use --engine local")
    return manifest


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
) -> Path:
    """Per-5 s-window probabilities of every recording in ``inputs``, computed on a Ray cluster.

    Parameters
    ----------
    inputs : audio files, folders (walked recursively) and ``.txt`` file lists, as for
        :func:`birdinfer.jobs.predict.predict`; the workers read them by path.
    models : model folder written by ``birdinfer export`` (or a loaded :class:`Manifest`), readable by
        the workers at the same path.
    out_dir : output folder (see the module docstring): one parquet shard per recording, ``_done.jsonl``,
        ``_errors.csv``, ``_SUCCESS``. :func:`read_output` gives the combined table, equal to
        ``predict(..., format="parquet")`` for the same inputs.
    address : Ray cluster to join (``ray.init(address=...)``). Default: if this process is already
        connected to Ray, use that; otherwise start a local instance with ``os.cpu_count()`` CPUs, shut
        down at the end.
    precision, backend, cache_dir : as for :func:`birdinfer.jobs.predict.predict`.
    resume : skip recordings listed in ``_done.jsonl`` by an earlier run with the same settings whose
        shard and input still verify (the others are computed again); ``False`` deletes earlier results first.
    progress : progress bar on stderr (files done, hours of audio per hour of wall time, failures).
    num_workers : actors, each holding one compiled copy of the models (mind memory with large
        ensembles on many-core nodes). Default: one per CPU of the cluster, each with one inference
        thread: on the 2-core machine 2 workers × 1 thread processed 32–43 h of audio per hour against
        23–28 h/h for 1 worker × 2 threads (3 real models, ``benchmarks/bench_ray.py``).
    files_per_task : recordings per actor call (1 is right for minute-long files; raise it for many
        very short files).

    Each actor reserves ``C/N`` of the cluster's ``C`` CPUs and runs OpenVINO with that many threads.
    Returns ``out_dir``. Fails before any audio work (:class:`BirdinferError`) on: no input files, a
    missing or invalid model folder, an output folder that cannot be written or that another run is
    writing (``<out_dir>.lock``), results from other settings, Ray or pyarrow missing, workers that cannot load the models. Recordings that cannot be
    decoded, or whose worker crashed on every retry, get no rows and are listed in ``_errors.csv``.
    """
    wall_start = time.perf_counter()
    _check_counts(files_per_task, num_workers)
    ray = _require_ray()
    require_shard_pyarrow()
    out_dir = Path(out_dir)
    manifest = _refuse_held(models if isinstance(models, Manifest) else Manifest.load(models))
    recordings = collect_inputs(inputs)
    if not recordings:
        raise ParameterError(f"no audio files found in {', '.join(map(str, [inputs] if isinstance(inputs, (str, Path)) else inputs))} "
                             "(folders are walked recursively)")
    lock = OutputLock(out_dir).acquire()  # the same lock as single-machine predict: a second run fails here
    try:
        folder, todo = _open_output(recordings, manifest, out_dir, precision=precision, backend=backend, resume=resume)
        resumed = len(recordings) - len(todo)
        errors: dict[str, str] = {}
        run: dict = {"audio_seconds": 0.0, "files_computed": len(todo), "files_resumed": resumed}
        if todo:
            run |= _compute(ray, address, todo, folder, errors, manifest=manifest, models=models, precision=precision,
                            backend=backend, cache_dir=cache_dir, num_workers=num_workers, files_per_task=files_per_task,
                            progress=progress, resumed=resumed, total=len(recordings))
        wall = time.perf_counter() - wall_start
        run["wall_seconds"] = round(wall, 3)
        folder.finish(recordings, errors, manifest.labels, run)
    finally:
        lock.release()
    audio_this_run = run["audio_seconds"]

    hours = sum(float(folder.done[r.key].get("audio_s", 0.0)) for r in recordings if r.key in folder.done) / 3600.0
    speed = f"{audio_this_run / wall:.0f} h of audio per hour" if audio_this_run and wall > 0 else "nothing new to compute"
    say(progress, f"birdinfer predict (ray): {len(recordings)} files ({resumed} resumed), {len(errors)} failed, "
                   f"{hours:.2f} h of audio, {wall:.1f} s, {speed} → {out_dir}")
    return out_dir


def _compute(ray, address: str | None, todo: list[Recording], folder: OutputFolder, errors: dict[str, str], *,
             manifest: Manifest, models, precision: str, backend: str, cache_dir, **pool) -> dict:
    """Connect to Ray (starting a local instance unless ``address``/a connection is given), run ``todo`` on the
    pool, disconnect when this call connected; returns the run figures of :func:`_run_pool`."""
    started_here = _connect(ray, address)
    try:
        return _run_pool(
            ray, todo, folder, errors, manifest=manifest,
            models=models if isinstance(models, Manifest) else str(Path(models).resolve()),
            precision=precision, backend=backend, cache_dir=None if cache_dir is None else str(cache_dir), **pool,
        )
    finally:
        if started_here:
            ray.shutdown()


def _open_output(recordings: list[Recording], manifest: Manifest, out_dir: Path, *, precision: str, backend: str,
                 resume: bool) -> tuple[OutputFolder, list[Recording]]:
    """``(the output folder, the recordings not done and verified by an earlier run with these settings)``."""
    folder = OutputFolder(out_dir, fingerprint(manifest, precision, backend), manifest.labels, resume=resume)
    done = folder.journal.verified(recordings)  # a shard that fails a check is logged and computed again
    todo = [rec for rec in recordings if rec.key not in done]
    folder.journal.watch(todo)
    if len(todo) < len(recordings):
        log.info("resuming: %d of %d recordings already done in %s", len(recordings) - len(todo), len(recordings), out_dir)
    return folder, todo


def _check_counts(files_per_task, num_workers) -> None:
    if not (isinstance(files_per_task, int) and files_per_task >= 1):
        raise ParameterError(f"files_per_task must be a positive integer, got {files_per_task!r}")
    if num_workers is not None and not (isinstance(num_workers, int) and num_workers >= 1):
        raise ParameterError(f"num_workers must be a positive integer or None, got {num_workers!r}")


def _connect(ray, address: str | None) -> bool:
    """Connect to Ray; True when this call connected (and so must disconnect / shut down)."""
    if ray.is_initialized():
        if address is not None:
            log.warning("already connected to Ray; ignoring address=%r", address)
        return False
    try:
        if address is None:
            # "local": always a new instance, never some other user's cluster found on this machine
            ray.init(address="local", num_cpus=os.cpu_count() or 1, include_dashboard=False, log_to_driver=True)
        else:
            ray.init(address=address)
    except (ConnectionError, RuntimeError, ValueError) as e:
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise BackendError(f"cannot start or reach {where}: {e}; check --address (ray status shows it on a node)") from e
    return True


def _record(batch: list[Recording], results: list[dict], folder: OutputFolder, errors: dict[str, str],
            manifest: Manifest) -> float:
    """Write the shards of one call's results (or note their errors); returns the seconds of audio done."""
    audio = 0.0
    for rec, result in zip(batch, results):
        error = result["error"]
        if error is None:
            error = folder.add(rec, result["probs"], result["audio_s"], manifest.labels, manifest.window_seconds)
            audio += result["audio_s"] if error is None else 0.0
        if error is not None:
            errors[rec.key] = error
            log.warning("%s: %s; no rows written for it (listed in %s)", rec.name, error, folder.folder / ERRORS_FILE)
    return audio


def _start_actors(ray, models, precision: str, backend: str, cache_dir: str | None, num_workers: int | None,
                  n_batches: int) -> tuple[list[_Slot], Callable[[], Any], int, list[dict]]:
    """The pool: ``(slots, new_actor, threads per actor, what each actor loaded)``; each actor reserves ``C/N`` of
    the cluster's ``C`` CPUs (default N: one per CPU, never more than there are calls)."""
    from ray.exceptions import RayError

    cluster_cpus = float(ray.cluster_resources().get("CPU", 1.0))
    if num_workers is None:
        num_workers = max(1, int(cluster_cpus))
    num_workers = max(1, min(num_workers, n_batches))
    cpus_per_worker = cluster_cpus / num_workers
    threads = max(1, int(cpus_per_worker))
    actor_class = ray.remote(_Worker).options(
        num_cpus=cpus_per_worker, max_restarts=_MAX_RESTARTS, max_task_retries=_MAX_TASK_RETRIES
    )

    def new_actor():
        return actor_class.remote(models, precision, backend, threads, cache_dir)

    slots = [_Slot(new_actor()) for _ in range(num_workers)]
    try:
        described = ray.get([slot.actor.describe.remote() for slot in slots])
    except RayError as e:
        raise BackendError(f"Ray workers could not load the models of {models}: {e}") from e
    log.info("ray: %d workers × %d threads, precision %s, models loaded in %.1f s", num_workers, threads,
             described[0]["precision"], max(d["load_seconds"] for d in described))
    return slots, new_actor, threads, described


def _run_pool(ray, todo: list[Recording], folder: OutputFolder, errors: dict[str, str], *, manifest: Manifest,
              models, precision: str, backend: str, cache_dir: str | None, num_workers: int | None,
              files_per_task: int, progress: bool, resumed: int, total: int) -> dict:
    """Run ``todo`` on a pool of actors; write shards as results arrive. Returns run figures: ``workers``,
    ``threads_per_worker``, ``load_seconds`` (actors created and models compiled), ``processing_seconds``
    (from then to the last result), ``audio_seconds`` done, ``workers_replaced``."""
    from ray.exceptions import RayActorError, RayTaskError

    batches = deque([todo[i : i + files_per_task] for i in range(0, len(todo), files_per_task)])
    load_start = time.perf_counter()
    slots, new_actor, threads, described = _start_actors(ray, models, precision, backend, cache_dir, num_workers,
                                                         len(batches))
    num_workers = len(slots)

    bar = progress_bar(progress, total=total, initial=resumed, desc="birdinfer predict (ray)")
    in_flight: dict[Any, tuple[int, Any, list[Recording]]] = {}  # call → (slot, actor, its recordings)
    audio_done = 0.0
    run_start = time.perf_counter()

    def submit(index: int) -> None:
        if batches:
            batch = batches.popleft()
            ref = slots[index].actor.run.remote([(rec.key, str(rec.path)) for rec in batch])
            in_flight[ref] = (index, slots[index].actor, batch)

    try:
        # one call in flight per actor: the driver's round trip (~ms) is nothing next to a file's compute, and
        # a call queued behind one that crashes its worker would lose its retries with it
        for index in range(num_workers):
            submit(index)
        while in_flight:
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            index, actor, batch = in_flight.pop(ready[0])
            try:
                results = ray.get(ready[0])
            except RayActorError as e:
                # the worker died on every retry of this call (or for good): its files fail, the run goes on
                reason = f"the Ray worker running it died {_MAX_TASK_RETRIES + 1} times ({type(e).__name__})"
                for rec in batch:
                    errors[rec.key] = reason
                    log.warning("%s: %s; no rows written for it (listed in %s)", rec.name, reason, folder.folder / ERRORS_FILE)
                ray.kill(actor, no_restart=True)  # restarts may be used up: a fresh actor for the next files
                slots[index] = _Slot(new_actor(), slots[index].replaced + 1)
                results = []
            except RayTaskError as e:  # a bug, not a bad file (those come back as results): report, go on
                for rec in batch:
                    errors[rec.key] = f"worker error: {getattr(e, 'cause', None) or e}"
                    log.warning("%s: %s", rec.name, errors[rec.key])
                results = []
            audio_done += _record(batch, results, folder, errors, manifest)
            if bar is not None:
                elapsed = max(time.perf_counter() - run_start, 1e-9)
                bar.set_postfix({"audio h/h": f"{audio_done / elapsed:.0f}", "failed": len(errors)}, refresh=False)
                bar.update(len(batch))
            submit(index)
    finally:
        if bar is not None:
            bar.close()
        for slot in slots:
            ray.kill(slot.actor, no_restart=True)
    return {
        "workers": num_workers, "threads_per_worker": threads, "precision": described[0]["precision"],
        "load_seconds": round(run_start - load_start, 3), "processing_seconds": round(time.perf_counter() - run_start, 3),
        "audio_seconds": round(audio_done, 3), "workers_replaced": sum(slot.replaced for slot in slots),
    }
