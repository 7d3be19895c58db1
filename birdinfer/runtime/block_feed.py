"""Decoded blocks with their features, in file order, for :meth:`birdinfer.runtime.pipeline.Predictor.iter_files`.

Two ways to feed the models, the same blocks either way:

* **background** (:class:`ThreadFeed`, the default): a thread decodes and computes the next blocks (``prefetch``
  ahead) while the models run, pinned to the hyper-thread siblings OpenVINO's streams leave free where there are
  some (Kaggle's 2 cores with 4 logical CPUs), so the front end is hidden behind the models.
* **inline** (:func:`feed_blocks`, ``Predictor(frontend_thread=False)``): the caller's thread decodes and computes
  a block's features, then the models run on it; the time budget is asked before a file is decoded. Measured
  slower than the thread even on 2 cores without hyper-threads (BirdNET V2.4, front end as heavy as the model,
  ``benchmarks/bench_birdnet.py --schedules thread,inline1``, 2-core Zen 4: 10.2 s per hour of audio with the
  thread, 10.5 inline on one thread, 11.3 inline with the FFTs on two threads): OpenVINO's workers, still
  spinning after a call, take the cores the front end would use.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

from ..errors import AudioDecodeError

__all__ = ["FedBlock", "feed_blocks", "ThreadFeed", "SKIPPED"]

#: The error of a recording the caller's ``before_file`` refused (the time budget is spent).
SKIPPED = "skipped: time budget exhausted"

log = logging.getLogger(__name__)

#: ``path → (rows, compute the features)`` per block of one recording.
FileBlocks = Callable[[Path], Iterable[tuple[int, Callable[[], dict]]]]


@dataclass
class FedBlock:
    file_index: int
    features: dict | None
    n_windows: int
    last: bool
    error: str | None = None
    decode_seconds: float = 0.0
    front_end_seconds: float = 0.0
    cpu_seconds: float = 0.0  # CPU time of the feeding thread for decode + front end (excludes time preempted by inference)


def feed_blocks(paths: Sequence[Path], file_blocks: FileBlocks,
                before_file: Callable[[int], bool] | None = None) -> Iterator[FedBlock]:
    """Every block of every recording, in order, computed in the calling thread when the next one is asked for;
    a recording's last block is marked ``last``. A recording that cannot be read gives one block with its
    ``error`` (one bad file must not cost the run). ``before_file(index)``, asked before a recording is decoded:
    False gives one block with the error :data:`SKIPPED` instead (nothing decoded)."""
    for index, path in enumerate(paths):
        if before_file is not None and not before_file(index):
            yield FedBlock(index, None, 0, True, SKIPPED)
            continue
        try:
            blocks = iter(file_blocks(path))
            pending: FedBlock | None = None
            while True:
                t0, c0 = time.perf_counter(), time.thread_time()
                block = next(blocks, None)
                t1 = time.perf_counter()
                if block is None:
                    break
                n, compute = block
                features = compute() if n else None
                t2, c2 = time.perf_counter(), time.thread_time()
                if pending is not None:
                    yield pending
                pending = FedBlock(index, features, n, False, None, t1 - t0, t2 - t1, c2 - c0)
            if pending is None:
                raise AudioDecodeError(path, "no samples")
            pending.last = True
            yield pending
        except AudioDecodeError as e:
            yield FedBlock(index, None, 0, True, e.reason)
        except Exception as e:  # noqa: BLE001 - reported per file
            log.debug("unexpected error on %s", path, exc_info=True)
            yield FedBlock(index, None, 0, True, f"{type(e).__name__}: {e}")


class ThreadFeed:
    """:func:`feed_blocks` run in a background thread, ``prefetch`` blocks ahead, on logical CPUs ``cpus`` (none:
    anywhere). Iterate it once; :meth:`close` stops and joins the thread (also when the iteration stops early)."""

    def __init__(self, paths: Sequence[Path], file_blocks: FileBlocks, *, prefetch: int = 2, cpus: Sequence[int] = ()):
        self._queue: queue.Queue[FedBlock | None] = queue.Queue(maxsize=max(1, prefetch))
        self._stop = threading.Event()
        self._cpus = list(cpus)
        self._thread = threading.Thread(target=self._run, args=(paths, file_blocks), name="birdinfer-decode", daemon=True)
        self._thread.start()

    def _run(self, paths: Sequence[Path], file_blocks: FileBlocks) -> None:
        if self._cpus and hasattr(os, "sched_setaffinity"):
            try:  # Linux: pid 0 is this thread only
                os.sched_setaffinity(0, self._cpus)
            except OSError as e:
                log.debug("cannot pin the decode thread to %s: %s", self._cpus, e)
        try:
            for item in feed_blocks(paths, file_blocks):
                if self._stop.is_set():
                    return
                self._queue.put(item)
        finally:
            self._queue.put(None)

    @property
    def native_id(self) -> int | None:
        """The feeding thread's id in the OS (:func:`threading.get_native_id`)."""
        return self._thread.native_id

    def __iter__(self) -> Iterator[FedBlock]:
        while (item := self._queue.get()) is not None:
            yield item

    def close(self) -> None:
        self._stop.set()
        while self._thread.is_alive():  # unblock the producer if it waits on a full queue
            try:
                self._queue.get(timeout=0.1)
            except queue.Empty:
                pass
        self._thread.join()
