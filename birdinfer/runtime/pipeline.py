"""The whole path over a set of recordings: decode → front end → models → ensemble → output.

:class:`Predictor` holds a model folder's compiled networks and front end. Its users: ``submit``
(:mod:`birdinfer.jobs.submit`: a folder of soundscapes → ``submission.csv``, within a :mod:`birdinfer.runtime.budget`
time budget), ``predict`` (:mod:`birdinfer.jobs.predict`), ``pseudo-label`` and ``bench``.

Every folder runs on one engine (:class:`birdinfer.runtime.engine.SpecEngine`): a version 1 folder (the 4th
place's mel groups) is upgraded to a version 2 spec when it is loaded (:mod:`birdinfer.spec.upgrade`).
Recordings are processed in blocks of the manifest's ``block_seconds`` (60 s for an upgraded version 1
folder, each block like one BirdCLEF soundscape, so memory stays bounded and a 60 s file is exactly the
reference computation; ``null``: the whole file at once). Row rule (:meth:`birdinfer.spec.v2.ManifestV2.n_rows`):
a block of N samples gives ``N // row`` rows (a trailing remainder shorter than a row is dropped, unless
``rows.partial`` keeps it), except that a file shorter than a row gives one row computed on its zero-padded
input. So a 60 s file gives 12 rows of 5 s, a 62 s file 12, a 65 s file 13, a 3 s file 1. The file-scope
steps (row steps, smoothing, the ensemble tree) run over all rows of a file.

Decoding and the front end of the next block run in a background thread while the models run on the current
one (numpy, soundfile and OpenVINO release the GIL), so the front end is mostly hidden; ``frontend_thread=False``
runs them inline (:mod:`birdinfer.runtime.block_feed`).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from ..io.audio import iter_audio_blocks
from .block_feed import SKIPPED, ThreadFeed, feed_blocks
from .engine import WHOLE_FILE_SECONDS, SpecEngine
from .fusion import FileRows, fuse
from .dag import checked_keep, output_rows
from .streaming import WholeFileStream
from .budget import TimeBudget  # noqa: F401 - `from birdinfer.runtime.pipeline import TimeBudget` keeps working
from ..errors import AudioDecodeError, ParameterError
from ..spec.dag import dependents
from ..spec.manifest import Manifest
from .cpu import effective_isa, spare_siblings
from .frontend_plan import plan_frontend, with_planned_frontend
from .models import LoadedModel, describe_precisions, load_models, plan_models
from .ov_requests import REQUEST_CHUNKS
from .threads import BlasThreads, InferencePriority, process_threads
from ..spec.upgrade import V1_BLOCK_SECONDS, upgrade

__all__ = ["BLOCK_SECONDS", "Predictor", "FileResult", "TimeBudget"]

log = logging.getLogger(__name__)

#: Block length of an upgraded version 1 folder (each block is processed like one soundscape).
BLOCK_SECONDS = V1_BLOCK_SECONDS


@dataclass
class FileResult:
    """Window probabilities of one recording (or the reason it failed)."""

    path: Path
    probs: np.ndarray | None  # (n_windows, n_labels), ensembled and smoothed; None when failed or held (below)
    error: str | None = None
    seconds: float = 0.0  # wall time spent on the models for this file
    models_used: tuple[str, ...] = ()
    members: FileRows | None = None  # rows before fusion (iter_files(members=True), or a spec held for the submission)
    notes: tuple[str, ...] = ()  # what its steps skipped (e.g. a file name the prior's pattern does not match)
    outputs: dict = field(default_factory=dict)  # (model, output) → (n_windows, width): Predictor(keep_outputs=...)

    @property
    def stem(self) -> str:
        return self.path.stem

    @property
    def ok(self) -> bool:
        return self.error is None


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
        backend: str = "auto",
        cache_dir: str | Path | None = None,
        verify_checksums: bool = True,
        model_names: Sequence[str] | None = None,
        threads: int | None = None,
        parallel_models: int | None = None,
        pin_decode_thread: bool = True,
        frontend_thread: bool | None = None,
        frontend_threads: int | None = None,
        keep_outputs: Sequence[tuple[str, str]] = (),
        request_chunks: int | None = REQUEST_CHUNKS,
        prune_outputs: bool = True,
        frontend_priority: bool = True,
    ):
        """``threads``: threads per model call (default: the backend's split-batch streams, one single-threaded
        request per physical core; see :mod:`birdinfer.runtime.models`); ``parallel_models``: how many different
        models run at once in worker threads (default 1; with more, each model gets one thread). Measured on
        2 cores, split-batch streams were the fastest of the three (benchmarks/tune_openvino.py).
        ``pin_decode_thread``: on CPUs with hyper-threads, keep the decode / front-end thread on the sibling
        logical CPUs (:func:`birdinfer.runtime.cpu.spare_siblings`), off the ones OpenVINO's streams use.
        ``frontend_thread``: decode and compute the front end in a background thread (True, the default) or
        inline between the models' calls (False; :mod:`birdinfer.runtime.block_feed` has the figures).
        ``frontend_threads``: threads the front-end ops may use (``Block.threads``, default 1; BirdNET's FFTs
        split over them, measured slower on 2 cores).
        ``keep_outputs``: ``(model, output)`` graph outputs (e.g. BirdNET's ``embedding``) also given per file, on
        the model's rows (``FileResult.outputs``, :meth:`predict_array` with ``outputs=True``). ``request_chunks``:
        rows per request of a model with a free batch axis (:mod:`birdinfer.runtime.ov_requests`). ``prune_outputs``:
        only the columns a ``label_map`` reads (:mod:`birdinfer.runtime.prune_outputs`); False: every column.
        ``frontend_priority``: while the front end runs in its own single thread, the threads this Predictor
        started for inference run at nice +5 so that thread goes first (:mod:`birdinfer.runtime.threads`)."""
        threads_before = process_threads()  # the threads started from here on are the inference's
        if parallel_models is None:
            parallel_models = 1
        if int(parallel_models) < 1:
            raise ParameterError(f"parallel_models must be >= 1, got {parallel_models!r}")
        if frontend_threads is not None and int(frontend_threads) < 1:
            raise ParameterError(f"frontend_threads must be >= 1, got {frontend_threads!r}")
        self.frontend_threads = 1 if frontend_threads is None else int(frontend_threads)
        self.parallel_models = int(parallel_models)
        if threads is None and self.parallel_models > 1:
            threads = 1
        manifest = upgrade(models if isinstance(models, Manifest) else Manifest.load(models))
        if model_names is not None:
            manifest = manifest.select(model_names)
        self.manifest = manifest
        self.sample_rate = manifest.sample_rate
        self.window_samples = manifest.window_samples
        self.block_seconds = manifest.block_seconds or WHOLE_FILE_SECONDS  # None: the whole file at once
        self.block_samples = int(round(self.block_seconds * manifest.sample_rate))
        start = time.perf_counter()
        self.isa = effective_isa()
        plans, self.plan_summary = plan_models(manifest, precision=precision, backend=backend, isa=self.isa)
        log.info("%s", self.plan_summary)
        self.frontend_plan = plan_frontend(manifest, plans)  # a feature runs a variant's front-end record, or its own
        manifest = self.manifest = with_planned_frontend(manifest, self.frontend_plan)
        self.models: list[LoadedModel] = load_models(
            manifest, precision=precision, backend=backend, cache_dir=cache_dir, verify_checksums=verify_checksums,
            threads=threads, isa=self.isa, plans=plans, request_chunks=request_chunks, prune_outputs=prune_outputs,
            keep_outputs=keep_outputs)
        self.decode_cpus = spare_siblings() if pin_decode_thread else []
        self.frontend_thread = True if frontend_thread is None else bool(frontend_thread)
        self._priority = InferencePriority(threads_before) if frontend_priority else None
        self._blas = BlasThreads()  # numpy's BLAS on the calling thread while this Predictor runs
        if self.parallel_models > 1 and len(self.models) > 1:
            self._first_calls()
        self.load_seconds = time.perf_counter() - start
        self.precision = describe_precisions(self.models)
        self.keep_outputs = checked_keep(self.models, keep_outputs)
        self._engine = SpecEngine(manifest, self.models, parallel_models=self.parallel_models, keep=self.keep_outputs,
                                  frontend_threads=self.frontend_threads)
        self._stream = WholeFileStream.for_manifest(manifest, threads=self.frontend_threads)  # bounded memory
        self.backend = backend  # as asked ("auto": per model, birdinfer.runtime.plan); what ran: ran_backends
        self.active: list[str] = [m.name for m in self.models]
        self.model_seconds: dict[str, float] = {m.name: 0.0 for m in self.models}
        self.model_calls: dict[str, int] = {m.name: 0 for m in self.models}

    def _first_calls(self) -> None:
        """One call per model from this thread before any worker thread touches OpenVINO: a first use of its
        numpy bridge from two threads at once was seen to deadlock (pybind11 call-once guard)."""
        for model in self.models:
            if getattr(model.entry, "source", None) is not None:  # runs per file on another model's output
                continue
            shape = tuple(model.entry.input_shape[1:])
            if any(d <= 0 for d in shape):
                shape = self.manifest.feature_shapes[model.entry.input].shape() or ()
            if shape and all(d > 0 for d in shape):
                model.run(np.full((1,) + tuple(shape), model.entry.pad_value, np.float32))

    @property
    def ran_backends(self) -> str:
        """The backends the loaded models run on, e.g. ``"openvino"`` or ``"openvino + onnxruntime (probe)"``."""
        on_ort = [m.name for m in self.models if m.backend == "onnxruntime"]
        if not on_ort:
            return "openvino"
        if len(on_ort) == len(self.models):
            return "onnxruntime"
        return f"openvino + onnxruntime ({', '.join(on_ort)})"

    def close(self) -> None:
        """Stop the model worker threads (also done when the predictor is garbage-collected)."""
        self._engine.close()

    # ------------------------------------------------------------------ properties
    @property
    def labels(self) -> tuple[str, ...]:
        return self.manifest.labels

    def drop(self, name: str) -> None:
        """Stop running model ``name`` (used by the time budget), and with it every model that reads its outputs
        (:func:`birdinfer.spec.dag.dependents`); refused (logged) when nothing would be left to run."""
        if name not in self.active:
            return
        gone = [name] + [n for n in dependents(self.manifest.models, name) if n in self.active]
        if len(gone) >= len(self.active):
            if len(gone) > 1:
                log.warning("time budget: not dropping %s: the models left (%s) all need it", name, ", ".join(self.active))
            return
        if len(gone) > 1:
            log.warning("time budget: dropping %s drops %s too (they read its outputs)", name, ", ".join(gone[1:]))
        for n in gone:
            self.active.remove(n)

    # ------------------------------------------------------------------ blocks
    def block_windows(self, n_samples: int, block_index: int) -> int:
        """Rows of a block (see the module docstring for the rule)."""
        return self.manifest.n_rows(n_samples, block_index)

    def features(self, block: np.ndarray) -> dict:
        """One block's model inputs for the active models (``{feature name: Signal}``)."""
        return self._engine.features(block, self.active)

    def infer_block(self, features: dict, n_windows: int, clock: Callable[[], float] = time.perf_counter) -> dict[str, np.ndarray]:
        """Run every active model on one block's features → per-model rows ``(n_windows, C)``.

        With ``parallel_models > 1`` the models run side by side in worker threads, longest first; each model
        is then charged its share of the block's wall time (as read by ``clock``), in proportion to its own
        run time, so the charges add up to wall time as the time budget assumes."""
        return self._engine.infer_block(features, n_windows, self.active, self.model_seconds, self.model_calls, clock)

    def finish(self, parts: list[dict[str, np.ndarray]], name: str | None = None) -> np.ndarray:
        """A file's per-block model rows → its ensembled rows ``(n_windows, n_labels)`` (row steps, the
        ensemble tree and its smoothing run over all rows of the file; ``name``: its file name, for steps that
        read it). A spec with steps over the whole submission (:attr:`held`) fuses this file alone."""
        return self._engine.finish(parts, name)

    @property
    def held(self) -> bool:
        """Whether the ensemble has steps over the whole submission: :meth:`iter_files` then yields each file's
        rows before fusion (``FileResult.members``, ``probs`` None) and :meth:`fuse` computes every file's rows."""
        return self._engine.held

    def fuse(self, results: Sequence[FileResult]) -> None:
        """Set ``probs`` (and add the notes) of every successful result of a held spec from the rows before fusion
        of all of them (:func:`birdinfer.runtime.fusion.fuse`); nothing to do for other specs."""
        good = [r for r in results if r.ok and r.members is not None and r.probs is None]
        if not self.held or not good:
            return
        for r, rows in zip(good, fuse(self.manifest.ensemble, [r.members for r in good])):
            if rows is None:
                raise ParameterError(f"{r.path}: no model of the ensemble ran")
            r.probs, r.notes = np.asarray(rows, dtype=np.float32), tuple(r.members.notes)

    # ------------------------------------------------------------------ one recording
    def predict_array(self, y: np.ndarray, *, outputs: bool = False):
        """Mono float32 samples at the manifest's rate → ``(n_windows, n_labels)`` probabilities (``outputs``: and
        the kept outputs, ``{(model, output): (n_windows, width)}``)."""
        y = np.asarray(y, dtype=np.float32)
        if y.ndim != 1:
            raise ParameterError(f"predict_array needs mono samples of shape (n,), got shape {y.shape}")
        if y.size == 0:
            raise ParameterError("predict_array got no samples")
        parts = []
        with self._blas.single():
            for index, start in enumerate(range(0, y.size, self.block_samples)):
                block = y[start : start + self.block_samples]
                n = self.block_windows(block.size, index)
                if n:
                    parts.append(self.infer_block(self.features(block), n))
            return (self.finish(parts), self._kept_rows(parts)) if outputs else self.finish(parts)

    def _kept_rows(self, parts: list) -> dict:
        whole = self.manifest.block_seconds is None
        return {key: output_rows(parts, key, whole) for key in self.keep_outputs if parts and key in parts[0].kept}

    def _file_blocks(self, path) -> Iterator[tuple[int, Callable[[], dict]]]:
        """``(rows, compute the features)`` per block of one recording: decoded blocks, or the streamed blocks
        of a whole-file spec (:mod:`birdinfer.runtime.streaming`: its statistics passes run before the first)."""
        if self._stream is not None:
            yield from self._stream.blocks(path, self.active, self.features)
            return
        blocks = iter_audio_blocks(path, block_seconds=self.block_seconds, sample_rate=self.sample_rate,
                                   speed=self.manifest.audio_speed)
        for index, block in enumerate(blocks):
            yield self.block_windows(block.size, index), (lambda block=block: self.features(block))

    def predict_file(self, path: str | Path) -> np.ndarray:
        """Decode one recording (any length, any rate, mono or not) → ``(n_windows, n_labels)``."""
        parts, blocks = [], 0
        with self._blas.single():
            for n, compute in self._file_blocks(path):
                blocks += 1
                if n:
                    parts.append(self.infer_block(compute(), n))
            if not blocks:
                raise AudioDecodeError(path, "no samples")
            return self.finish(parts, Path(path).name)  # no rows when the file is shorter than the spec's rows.min_seconds

    # ------------------------------------------------------------------ many recordings
    def iter_files(
        self,
        paths: Sequence[str | Path],
        *,
        prefetch: int = 2,
        on_file_start: Callable[[int], bool] | None = None,
        clock: Callable[[], float] = time.perf_counter,
        stats: dict | None = None,
        members: bool = False,
    ) -> Iterator[FileResult]:
        """Yield one :class:`FileResult` per path, in order. Decoding and the front end of upcoming blocks
        run in a background thread (``prefetch`` blocks ahead) or inline (:attr:`frontend_thread`). ``on_file_start(i)`` is called before file
        ``i``'s models run; returning False skips the rest (they are yielded as failed with reason
        "skipped"). ``members``: keep each file's rows before fusion (always kept for a :attr:`held` spec,
        whose ``probs`` are set by :meth:`fuse` once every file is done). numpy's BLAS runs on one thread meanwhile
        (:class:`birdinfer.runtime.threads.BlasThreads`)."""
        with self._blas.single():
            yield from self._iter_files([Path(p) for p in paths], prefetch, on_file_start, clock, stats, members)

    def _iter_files(self, paths: list[Path], prefetch: int, on_file_start, clock, stats, members: bool):
        started: set[int] = set()

        def ask(index: int) -> bool:  # inline: asked before the file is decoded
            started.add(index)
            return on_file_start(index)

        feed = (ThreadFeed(paths, self._file_blocks, prefetch=prefetch, cpus=self.decode_cpus) if self.frontend_thread
                else None)
        blocks = iter(feed) if feed is not None else feed_blocks(paths, self._file_blocks,
                                                                 ask if on_file_start is not None else None)
        prioritise = feed is not None and self._priority is not None and self.frontend_threads == 1
        stats = stats if stats is not None else {}
        for key in ("decode_seconds", "front_end_seconds", "front_end_cpu_seconds", "wait_seconds"):
            stats.setdefault(key, 0.0)
        try:
            current, parts, file_start = -1, [], 0.0
            skipping = False
            while True:
                t_wait = time.perf_counter()
                item = next(blocks, None)
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
                        yield FileResult(path, None, SKIPPED, 0.0)
                    continue
                if item.error is not None:
                    yield FileResult(path, None, item.error, clock() - file_start)
                    continue
                if item.n_windows:
                    parts.append(self.infer_block(item.features, item.n_windows, clock))
                    if prioritise:  # once the models have run: every inference thread exists
                        self._priority.lower(keep=(threading.get_native_id(), feed.native_id))
                        prioritise = False
                if item.last:
                    yield self._result(path, parts, clock() - file_start, members)
        finally:
            if feed is not None:
                feed.close()

    def _result(self, path: Path, parts: list, seconds: float, members: bool) -> FileResult:
        if not parts:  # no block gave a row
            return FileResult(path, np.zeros((0, len(self.labels)), np.float32), None, seconds, tuple(self.active))
        rows = self._engine.file_rows(parts, path.name)
        kept = self._kept_rows(parts)
        if self.held:
            return FileResult(path, None, None, seconds, tuple(self.active), rows, tuple(rows.notes))
        if rows.final is None:
            raise ParameterError("no model of the ensemble ran")
        probs = np.asarray(rows.final, dtype=np.float32)
        return FileResult(path, probs, None, seconds, tuple(self.active), rows if members else None, tuple(rows.notes), kept)
