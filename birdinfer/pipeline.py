"""The whole path over a set of recordings: decode → front end → models → ensemble → output.

:class:`Predictor` holds a model folder's compiled networks and front end. Its users: ``submit``
(:mod:`birdinfer.submit`: a folder of soundscapes → ``submission.csv``, within a :mod:`birdinfer.budget`
time budget), ``predict`` (:mod:`birdinfer.predict`), ``pseudo-label`` and ``bench``.

Recordings are processed in blocks of 60 s (:data:`BLOCK_SECONDS`), each block like one BirdCLEF
soundscape, so memory stays bounded for recordings of any length and a 60 s file is exactly the
reference computation. Row rule: a block of N samples gives ``N // window`` rows (5 s windows; a trailing
remainder shorter than 5 s is dropped), except that a file shorter than 5 s gives one row computed on
its zero-padded spectrogram. So a 60 s file gives 12 rows, a 62 s file 12, a 65 s file 13, a 3 s file 1.
Smoothing runs over all rows of a file.

Decoding and the front end of the next block run in a background thread while the models run on the
current one (numpy, soundfile and OpenVINO release the GIL), so the front end is mostly hidden.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from .audio import iter_audio_blocks
from .engine import WHOLE_FILE_SECONDS, SpecEngine
from .streaming import WholeFileStream
from .ensemble import combine, smooth, window_probabilities
from .budget import TimeBudget  # noqa: F401 - `from birdinfer.pipeline import TimeBudget` keeps working
from .errors import AudioDecodeError, ParameterError
from .features import FrontEnd
from .manifest import Manifest
from .cpu import effective_isa, spare_siblings
from .models import LoadedModel, describe_precisions, load_models, plan_models

__all__ = ["BLOCK_SECONDS", "Predictor", "FileResult", "TimeBudget"]

log = logging.getLogger(__name__)

#: Recordings are cut into blocks of this length; each block is processed like one soundscape.
BLOCK_SECONDS = 60.0


@dataclass
class FileResult:
    """Window probabilities of one recording (or the reason it failed)."""

    path: Path
    probs: np.ndarray | None  # (n_windows, n_labels), ensembled and smoothed; None when failed
    error: str | None = None
    seconds: float = 0.0  # wall time spent on the models for this file
    models_used: tuple[str, ...] = ()

    @property
    def stem(self) -> str:
        return self.path.stem

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class _Block:
    file_index: int
    features: dict[str, np.ndarray] | None
    n_windows: int
    last: bool
    error: str | None = None
    decode_seconds: float = 0.0
    front_end_seconds: float = 0.0
    cpu_seconds: float = 0.0  # CPU time of this thread for decode + front end (excludes time preempted by inference)


class Predictor:
    """A model folder, loaded: front end + compiled networks + ensemble rules.

    >>> predictor = Predictor("models/", precision="f32")          # doctest: +SKIP
    >>> probs = predictor.predict_file("soundscape_123.ogg")        # (12, n_labels) for 60 s  # doctest: +SKIP
    """

    def __init__(
        self,
        models: str | Path | Manifest,
        *,
        precision: str = "auto",
        backend: str = "openvino",
        cache_dir: str | Path | None = None,
        verify_checksums: bool = True,
        model_names: Sequence[str] | None = None,
        threads: int | None = None,
        parallel_models: int | None = None,
        pin_decode_thread: bool = True,
    ):
        """``threads``: threads per model call (default: the backend's split-batch streams, one single-threaded
        request per physical core; see :mod:`birdinfer.models`); ``parallel_models``: how many different
        models run at once in worker threads (default 1; with more, each model gets one thread). Measured on
        2 cores, split-batch streams were the fastest of the three (benchmarks/tune_openvino.py).
        ``pin_decode_thread``: on CPUs with hyper-threads, keep the decode / front-end thread on the sibling
        logical CPUs (:func:`birdinfer.cpu.spare_siblings`), off the ones OpenVINO's streams use."""
        if parallel_models is None:
            parallel_models = 1
        if int(parallel_models) < 1:
            raise ParameterError(f"parallel_models must be >= 1, got {parallel_models!r}")
        self.parallel_models = int(parallel_models)
        if threads is None and self.parallel_models > 1:
            threads = 1
        manifest = models if isinstance(models, Manifest) else Manifest.load(models)
        if model_names is not None:
            manifest = manifest.select(model_names)
        self.manifest = manifest
        self.sample_rate = manifest.sample_rate
        self.window_samples = manifest.window_samples
        # Version 2 folders (birdinfer.spec) state their own block length; None = the whole file at once.
        v2 = manifest.format_version == 2
        self.block_seconds = (manifest.block_seconds or WHOLE_FILE_SECONDS) if v2 else BLOCK_SECONDS
        if v2:
            self.parallel_models = 1
        self.block_samples = int(round(self.block_seconds * manifest.sample_rate))
        start = time.perf_counter()
        self.isa = effective_isa()
        plans, self.plan_summary = plan_models(manifest, precision=precision, backend=backend, isa=self.isa)
        log.info("%s", self.plan_summary)
        self.models: list[LoadedModel] = load_models(
            manifest, precision=precision, backend=backend, cache_dir=cache_dir, verify_checksums=verify_checksums,
            threads=threads, isa=self.isa, plans=plans,
        )
        self.decode_cpus = spare_siblings() if pin_decode_thread else []
        if self.parallel_models > 1 and len(self.models) > 1:
            # One call per model from this thread before any worker thread touches OpenVINO: a first use of
            # its numpy bridge from two threads at once was seen to deadlock (pybind11 call-once guard).
            for model in self.models:
                model.run(np.full((1,) + tuple(model.entry.input_shape[1:]), -100.0, np.float32))
        self.load_seconds = time.perf_counter() - start
        self.precision = describe_precisions(self.models)
        self._engine = SpecEngine(manifest, self.models) if v2 else None
        self._stream = WholeFileStream.for_manifest(manifest) if v2 else None  # whole-file specs, bounded memory
        self.backend = backend
        self.active: list[str] = [m.name for m in self.models]
        self._front_ends: dict[tuple[str, ...], FrontEnd] = {}
        self.model_seconds: dict[str, float] = {m.name: 0.0 for m in self.models}
        self.model_calls: dict[str, int] = {m.name: 0 for m in self.models}
        self._pool = (ThreadPoolExecutor(self.parallel_models, thread_name_prefix="birdinfer-model")
                      if self.parallel_models > 1 and len(self.models) > 1 else None)

    def close(self) -> None:
        """Stop the model worker threads (also done when the predictor is garbage-collected)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    # ------------------------------------------------------------------ properties
    @property
    def labels(self) -> tuple[str, ...]:
        return self.manifest.labels

    def front_end(self) -> FrontEnd:
        """Front end for the groups the active models need (built once per distinct set)."""
        active = set(self.active)
        names = tuple(g.name for g in self.manifest.groups if any(m.group == g.name and m.name in active for m in self.manifest.models))
        if names not in self._front_ends:
            groups = [self.manifest.group(n) for n in names]
            self._front_ends[names] = FrontEnd(groups, sample_rate=self.sample_rate, window_seconds=self.manifest.window_seconds)
        return self._front_ends[names]

    def drop(self, name: str) -> None:
        """Stop running model ``name`` (used by the time budget)."""
        if name in self.active and len(self.active) > 1:
            self.active.remove(name)

    # ------------------------------------------------------------------ blocks
    def block_windows(self, n_samples: int, block_index: int) -> int:
        """Rows of a block (see the module docstring for the rule)."""
        if self._engine is not None:
            return self.manifest.n_rows(n_samples, block_index)
        rows = n_samples // self.window_samples
        return 1 if rows == 0 and block_index == 0 and n_samples > 0 else rows

    def features(self, block: np.ndarray) -> dict[str, np.ndarray]:
        if self._engine is not None:
            return self._engine.features(block, self.active)
        return self.front_end()(block)

    def _combine(self, per_model: dict[str, np.ndarray]):
        """One block's ensemble (version 1); version 2 keeps the per-model rows for :meth:`finish`."""
        return per_model if self._engine is not None else combine(self.manifest, per_model)

    def infer_block(self, features: dict[str, np.ndarray], n_windows: int, clock: Callable[[], float] = time.perf_counter) -> dict[str, np.ndarray]:
        """Run every active model on one block's features → per-model window probabilities.

        With ``parallel_models > 1`` the models run side by side in worker threads, longest first (OpenVINO
        and ONNX Runtime release the GIL). Each model is then charged its share of the block's wall time (as
        read by ``clock``), in proportion to its own run time, so the charges add up to wall time as the
        time budget assumes."""
        if self._engine is not None:
            return self._engine.infer_block(features, n_windows, self.active, self.model_seconds, self.model_calls, clock)
        active = set(self.active)
        if self._pool is not None and len(active) > 1:
            return self._infer_parallel([m for m in self.models if m.name in active], features, n_windows, clock)
        out = {}
        for model in self.models:
            if model.name not in active:
                continue
            start = clock()
            logits = model.run(features[model.entry.group])
            self.model_seconds[model.name] += clock() - start
            self.model_calls[model.name] += 1
            out[model.name] = window_probabilities(logits, n_windows)
        return out

    def _infer_parallel(self, models: list[LoadedModel], features, n_windows: int, clock) -> dict[str, np.ndarray]:
        def expected(m: LoadedModel) -> float:  # measured mean, else input size
            calls = self.model_calls[m.name]
            return self.model_seconds[m.name] / calls if calls else float(np.prod(m.entry.input_shape[1:]))

        def run(m: LoadedModel):
            t = time.perf_counter()
            logits = m.run(features[m.entry.group])
            return logits, time.perf_counter() - t

        # The clock is read once per model at submission and once at collection, as the sequential path
        # reads it (a test clock that counts reads sees the same time); the block's wall time is then
        # split by the models' own run times.
        ordered = sorted(models, key=expected, reverse=True)
        futures = []
        for m in ordered:
            futures.append((m, clock(), self._pool.submit(run, m)))
        results, end = {}, 0.0
        for m, _, future in futures:
            results[m.name] = future.result()
            end = clock()
        wall = end - futures[0][1]
        busy = sum(seconds for _, seconds in results.values()) or 1.0
        out = {}
        for m in models:  # manifest order
            logits, seconds = results[m.name]
            self.model_seconds[m.name] += wall * seconds / busy
            self.model_calls[m.name] += 1
            out[m.name] = window_probabilities(logits, n_windows)
        return out

    def finish(self, parts: list[np.ndarray]) -> np.ndarray:
        """Concatenate a file's per-block ensembled rows and smooth them."""
        if self._engine is not None:
            return self._engine.finish(parts)
        rows = np.concatenate(parts, axis=0) if parts else np.zeros((0, len(self.labels)), np.float32)
        return smooth(rows, self.manifest.smoothing)

    # ------------------------------------------------------------------ one recording
    def predict_array(self, y: np.ndarray) -> np.ndarray:
        """Mono float32 samples at the manifest's rate → ``(n_windows, n_labels)`` probabilities."""
        y = np.asarray(y, dtype=np.float32)
        if y.ndim != 1:
            raise ParameterError(f"predict_array needs mono samples of shape (n,), got shape {y.shape}")
        if y.size == 0:
            raise ParameterError("predict_array got no samples")
        parts = []
        for index, start in enumerate(range(0, y.size, self.block_samples)):
            block = y[start : start + self.block_samples]
            n = self.block_windows(block.size, index)
            if n:
                parts.append(self._combine(self.infer_block(self.features(block), n)))
        return self.finish(parts)

    def _file_blocks(self, path) -> Iterator[tuple[int, Callable[[], dict]]]:
        """``(rows, compute the features)`` per block of one recording: decoded blocks, or the streamed blocks
        of a whole-file spec (:mod:`birdinfer.streaming`: its statistics passes run before the first)."""
        if self._stream is not None:
            yield from self._stream.blocks(path, self.active, self.features)
            return
        for index, block in enumerate(iter_audio_blocks(path, block_seconds=self.block_seconds, sample_rate=self.sample_rate)):
            yield self.block_windows(block.size, index), (lambda block=block: self.features(block))

    def predict_file(self, path: str | Path) -> np.ndarray:
        """Decode one recording (any length, any rate, mono or not) → ``(n_windows, n_labels)``."""
        parts = []
        for n, compute in self._file_blocks(path):
            if n:
                parts.append(self._combine(self.infer_block(compute(), n)))
        if not parts:
            raise AudioDecodeError(path, "no samples")
        return self.finish(parts)

    # ------------------------------------------------------------------ many recordings
    def _produce(self, paths: Sequence[Path], out: "queue.Queue[_Block | None]", stop: threading.Event) -> None:
        """Background thread: decode and compute features block by block, a bounded queue ahead."""
        if self.decode_cpus and hasattr(os, "sched_setaffinity"):
            try:  # Linux: pid 0 is this thread only
                os.sched_setaffinity(0, self.decode_cpus)
            except OSError as e:
                log.debug("cannot pin the decode thread to %s: %s", self.decode_cpus, e)
        try:
            for index, path in enumerate(paths):
                if stop.is_set():
                    return
                try:
                    blocks = self._file_blocks(path)
                    block_index = 0
                    pending: _Block | None = None
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
                            out.put(pending)
                        pending = _Block(index, features, n, False, None, t1 - t0, t2 - t1, c2 - c0)
                        block_index += 1
                    if pending is None:
                        raise AudioDecodeError(path, "no samples")
                    pending.last = True
                    out.put(pending)
                except AudioDecodeError as e:
                    out.put(_Block(index, None, 0, True, e.reason))
                except Exception as e:  # noqa: BLE001 - one bad file must not cost the run; reported per file
                    log.debug("unexpected error on %s", path, exc_info=True)
                    out.put(_Block(index, None, 0, True, f"{type(e).__name__}: {e}"))
        finally:
            out.put(None)

    def iter_files(
        self,
        paths: Sequence[str | Path],
        *,
        prefetch: int = 2,
        on_file_start: Callable[[int], bool] | None = None,
        clock: Callable[[], float] = time.perf_counter,
        stats: dict | None = None,
    ) -> Iterator[FileResult]:
        """Yield one :class:`FileResult` per path, in order. Decoding and the front end of upcoming blocks
        run in a background thread (``prefetch`` blocks ahead). ``on_file_start(i)`` is called before file
        ``i``'s models run; returning False skips the rest (they are yielded as failed with reason
        "skipped")."""
        paths = [Path(p) for p in paths]
        blocks: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
        stop = threading.Event()
        worker = threading.Thread(target=self._produce, args=(paths, blocks, stop), name="birdinfer-decode", daemon=True)
        worker.start()
        stats = stats if stats is not None else {}
        stats.setdefault("decode_seconds", 0.0)
        stats.setdefault("front_end_seconds", 0.0)
        stats.setdefault("front_end_cpu_seconds", 0.0)
        stats.setdefault("wait_seconds", 0.0)
        try:
            current, parts, file_start, started = -1, [], 0.0, set()
            skipping = False
            while True:
                t_wait = time.perf_counter()
                item = blocks.get()
                stats["wait_seconds"] += time.perf_counter() - t_wait
                if item is None:
                    break
                stats["decode_seconds"] += item.decode_seconds
                stats["front_end_seconds"] += item.front_end_seconds
                stats["front_end_cpu_seconds"] += item.cpu_seconds
                if item.file_index != current:
                    current, parts, file_start = item.file_index, [], clock()
                    if on_file_start is not None and item.file_index not in started:
                        started.add(item.file_index)
                        skipping = not on_file_start(item.file_index)
                path = paths[item.file_index]
                if skipping:
                    if item.last:
                        yield FileResult(path, None, "skipped: time budget exhausted", 0.0)
                    continue
                if item.error is not None:
                    yield FileResult(path, None, item.error, clock() - file_start)
                    continue
                if item.n_windows:
                    parts.append(self._combine(self.infer_block(item.features, item.n_windows, clock)))
                if item.last:
                    yield FileResult(path, self.finish(parts), None, clock() - file_start, tuple(self.active))
        finally:
            stop.set()
            while worker.is_alive():  # unblock the producer if it waits on a full queue
                try:
                    blocks.get(timeout=0.1)
                except queue.Empty:
                    pass
            worker.join()


def __getattr__(name):
    """``from birdinfer.pipeline import make_submission`` (and ``resolve_inputs``, ``FALLBACK_SECONDS``) keep
    working: they live in :mod:`birdinfer.submit`, which imports this module, so they are looked up lazily."""
    if name in ("make_submission", "resolve_inputs", "FALLBACK_SECONDS"):
        from . import submit

        return getattr(submit, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
