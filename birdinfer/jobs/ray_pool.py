"""The Ray side of ``predict --engine ray`` (:mod:`birdinfer.jobs.distributed`): connecting to a cluster, the actor
that holds one compiled ensemble, and the pool that feeds it recordings and hands each result to the driver.

Why actors, how faults are handled and what was measured: the docstring of :mod:`birdinfer.jobs.distributed`.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from ..errors import BackendError, BirdinferError, MissingDependencyError
from ..spec.manifest import Manifest
from .._console import progress_bar
from .predict import Recording

__all__ = ["require_ray", "connect", "run_pool"]

log = logging.getLogger(__name__)

#: A worker process that dies is restarted this many times (each restart recompiles the models) ...
_MAX_RESTARTS = 4
#: ... and the calls it had in flight are re-run this many times before their files count as failed.
_MAX_TASK_RETRIES = 2


def require_ray():
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

    def __init__(self, models: str | Manifest, precision: str, backend: str, threads: int | None, cache_dir: str | None,
                 keep_outputs: Sequence[tuple[str, str]] = (), options: dict[str, float] | None = None):
        from ..runtime.pipeline import Predictor
        from ..spec.options import with_options

        if options:  # the driver's very manifest, from the folder's path and a few numbers (small arguments)
            models = with_options(models if isinstance(models, Manifest) else Manifest.load(models), options)
        self.predictor = Predictor(models, precision=precision, backend=backend, threads=threads, cache_dir=cache_dir,
                                   keep_outputs=keep_outputs)

    def describe(self) -> dict:
        return {"pid": os.getpid(), "precision": self.predictor.precision, "load_seconds": self.predictor.load_seconds}

    def run(self, batch: list[tuple[str, str]]) -> list[dict[str, Any]]:
        """``[(key, path), ...]`` → one dict per recording, in order: ``key``, ``probs`` (float32
        ``(n_windows, n_labels)`` or None), ``outputs`` (the kept graph outputs' rows, ``{(model, output): array}``),
        ``error`` (None or the reason), ``audio_s``."""
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
            results.append({"key": key, "probs": result.probs, "outputs": dict(result.outputs) if result.ok else {},
                            "error": result.error, "audio_s": audio_s})
        return results


@dataclass
class _Slot:
    """One place in the worker pool: its actor handle and how often it was replaced."""

    actor: Any
    replaced: int = 0


# ------------------------------------------------------------------------------------------- cluster
def connect(ray, address: str | None) -> bool:
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


def _start_actors(ray, models, precision: str, backend: str, cache_dir: str | None, num_workers: int | None,
                  n_batches: int, keep_outputs: Sequence[tuple[str, str]], options: dict[str, float] | None
                  ) -> tuple[list[_Slot], Callable[[], Any], int, list[dict]]:
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
        return actor_class.remote(models, precision, backend, threads, cache_dir, list(keep_outputs), options)

    slots = [_Slot(new_actor()) for _ in range(num_workers)]
    try:
        described = ray.get([slot.actor.describe.remote() for slot in slots])
    except RayError as e:
        where = getattr(models, "folder", None) or models
        raise BackendError(f"Ray workers could not load the models of {where}: {e}") from e
    log.info("ray: %d workers × %d threads, precision %s, models loaded in %.1f s", num_workers, threads,
             described[0]["precision"], max(d["load_seconds"] for d in described))
    return slots, new_actor, threads, described


# ---------------------------------------------------------------------------------------------- pool
def run_pool(ray, todo: list[Recording], record: Callable[[list[Recording], list[dict]], float],
             errors: dict[str, str], *, errors_file, models, precision: str, backend: str, cache_dir: str | None,
             keep_outputs: Sequence[tuple[str, str]] = (), options: dict[str, float] | None = None, num_workers: int | None, files_per_task: int, progress: bool,
             resumed: int, total: int) -> dict:
    """Run ``todo`` on a pool of actors; ``record(batch, results)`` stores each call's results as they arrive (and
    returns the seconds of audio stored). Returns run figures: ``workers``, ``threads_per_worker``, ``load_seconds``
    (actors created and models compiled), ``processing_seconds`` (from then to the last result), ``audio_seconds``
    done, ``workers_replaced``."""
    from ray.exceptions import RayActorError, RayTaskError

    batches = deque([todo[i : i + files_per_task] for i in range(0, len(todo), files_per_task)])
    load_start = time.perf_counter()
    slots, new_actor, threads, described = _start_actors(ray, models, precision, backend, cache_dir, num_workers,
                                                         len(batches), keep_outputs, options)
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
                    log.warning("%s: %s; no rows written for it (listed in %s)", rec.name, reason, errors_file)
                ray.kill(actor, no_restart=True)  # restarts may be used up: a fresh actor for the next files
                slots[index] = _Slot(new_actor(), slots[index].replaced + 1)
                results = []
            except RayTaskError as e:  # a bug, not a bad file (those come back as results): report, go on
                for rec in batch:
                    errors[rec.key] = f"worker error: {getattr(e, 'cause', None) or e}"
                    log.warning("%s: %s", rec.name, errors[rec.key])
                results = []
            audio_done += record(batch, results)
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
