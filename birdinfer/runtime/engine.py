"""The runtime of manifest version 2 folders: front-end graph → models → model steps → ensemble tree.

:class:`FrontEndGraph` runs the ``features`` pipelines of a block, sharing identical step prefixes (one
STFT / mel per distinct parameters; windows of a whole-block spectrum are strided views).
:class:`SpecEngine` is what :class:`birdinfer.runtime.pipeline.Predictor` runs for every folder (a version 1
folder is upgraded to a version 2 spec when it is loaded, :mod:`birdinfer.spec.upgrade`): ``features``
(background thread), ``infer_block`` (models + model steps up to the rows, per block; models side by side
with ``parallel_models``) and ``file_rows`` / ``finish`` (per file: the model row steps, label maps, then the
ensemble group tree, :mod:`birdinfer.runtime.fusion`, which also fuses the files of a submission).
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

from ..errors import ParameterError
from ..ops.base import Block, Signal
from ..ops.spectral import FUSED, frame_sharing_key, stft_resize_mel
from ..spec.tta import pass_inputs
from ..spec.v2 import ManifestV2, ModelSpec
from ..ops.file_steps import run_row_steps
from ..ops.steps import block_rows
from ..ops.tta import combine_passes
from .dag import BlockRows, DagRunner
from .fusion import FileRows, file_rows, fuse, is_held

__all__ = ["FrontEndGraph", "SpecEngine", "WHOLE_FILE_SECONDS", "run_named"]

#: Feature prefixes run by :func:`birdinfer.ops.spectral.stft_resize_mel`, frames shared between features.
CHAINS = (("stft", "resize_time", "mel"), ("stft", "mel"))

#: Larger samples overflow float32 power spectra (|frame FFT|² reaches (n_fft · peak)², overflow seen from ~1e17).
MAX_ABS_SAMPLE = 1e12

#: Block length used for ``block_seconds: null`` (the whole file is one block).
WHOLE_FILE_SECONDS = 1e7

log = logging.getLogger(__name__)


class FrontEndGraph:
    """The ``features`` of a version 2 manifest, run on one block; identical prefixes computed once."""

    def __init__(self, manifest: ManifestV2, names: Iterable[str] | None = None, *, threads: int = 1):
        self.manifest = manifest
        self.threads = max(1, int(threads))  # threads the ops may use (Block.threads)
        self.names = tuple(names) if names is not None else tuple(manifest.features)
        self.row_samples = manifest.window_samples
        self._keys = {name: [f"{s.name}:{s.params!r}" for s in manifest.features[name]] for name in manifest.features}
        self._chains = self._shared_chains()

    def _chain_at(self, steps, i: int):
        """The ``stft → resize_time → mel`` / ``stft → mel`` chain starting at step ``i``, as ``(length, (stft,
        resize or None, mel) params)``, or None."""
        for chain in CHAINS:
            if tuple(s.name for s in steps[i : i + len(chain)]) == chain:
                p = [s.params for s in steps[i : i + len(chain)]]
                return len(chain), ((p[0], p[1], p[2]) if len(chain) == 3 else (p[0], None, p[1]))
        return None

    def _shared_chains(self) -> list[tuple[list[tuple[str, ...]], list]]:
        """The features that start with a chain, grouped by the frames they read
        (:func:`birdinfer.ops.spectral.frame_sharing_key`): per group the cache keys and the chains."""
        groups: dict[tuple, tuple[list, list]] = {}
        for name in self.names:
            found = self._chain_at(self.manifest.features[name], 0)
            if found is None:
                continue
            length, params = found
            key = tuple(self._keys[name][:length])
            keys, chains = groups.setdefault(frame_sharing_key(params[0]), ([], []))
            if key not in keys:
                keys.append(key)
                chains.append(params)
        return list(groups.values())

    def __call__(self, y: np.ndarray, n_rows: int | None = None) -> dict[str, Signal]:
        """``y`` float32 ``(N,)`` → ``{feature name: Signal}`` (model input batches in ``.data``)."""
        y = _checked(y)
        if n_rows is None:
            n_rows = self.manifest.n_rows(len(y))
        if n_rows == 0:
            raise ParameterError("the front end needs at least one row of audio")
        block = Block(len(y), n_rows, self.manifest.sample_rate, self.row_samples, self.manifest.row_partial,
                      threads=self.threads)
        cache: dict[tuple[str, ...], Signal] = {}
        for keys, chains in self._chains:  # frames shared by every chain of one n_fft
            cache.update(zip(keys, stft_resize_mel(Signal(y), chains, block)))
        out = {}
        for name in self.names:
            signal = self._run(name, Signal(y), block, cache)
            if not signal.data.flags.c_contiguous:  # model inputs laid out here, off the models' thread
                signal = replace(signal, data=np.ascontiguousarray(signal.data))
            out[name] = signal
        return out

    def _run(self, name: str, signal: Signal, block: Block, cache: dict) -> Signal:
        """One feature's steps; a prefix already in ``cache`` (same steps, same parameters) is not recomputed.
        On a whole waveform, a chain (stft → [resize_time →] mel) or a :data:`FUSED` pair runs as one function."""
        steps, keys, key, i = self.manifest.features[name], self._keys[name], (), 0
        while i < len(steps):
            on_wave = signal.data.ndim == 1
            chain = self._chain_at(steps, i) if on_wave else None
            pair = FUSED.get((steps[i].name, steps[i + 1].name)) if on_wave and i + 1 < len(steps) else None
            if chain is not None:  # only the frames and FFT bins it reads, banded mel
                n = chain[0]
                key = key + tuple(keys[i : i + n])
                if key not in cache:
                    cache[key] = stft_resize_mel(signal, [chain[1]], block)[0]
            elif pair is not None:  # e.g. stft + resize_time: only the frames the resize reads
                n = 2
                key = key + tuple(keys[i : i + n])
                if key not in cache:
                    cache[key] = pair(signal, steps[i].params, steps[i + 1].params, block)
            else:
                n = 1
                key = key + (keys[i],)
                if key not in cache:
                    cache[key] = steps[i].entry.fn(signal, steps[i].params, block)
            signal, i = cache[key], i + n
        return signal


def _checked(y: np.ndarray) -> np.ndarray:
    """A block's samples as contiguous float32 ``(N,)``: refuses other shapes, NaN/Inf and absurd magnitudes."""
    y = np.asarray(y)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.floating):
        raise ParameterError(f"the front end needs float mono samples of shape (n,), got {y.dtype} {y.shape}")
    y = np.ascontiguousarray(y, dtype=np.float32)
    peak = float(np.abs(y).max()) if y.size else 0.0
    if not np.isfinite(peak):
        raise ParameterError("the signal has NaN or Inf samples; load it with birdinfer.io.audio.load_audio (repairs them)")
    if peak > MAX_ABS_SAMPLE:
        raise ParameterError(
            f"the signal has samples up to {peak:.3g} in magnitude; a float32 power spectrum would overflow (limit "
            f"{MAX_ABS_SAMPLE:g}); audio samples belong in [-1, 1]: is it a float file holding garbage?")
    return y


def run_named(model, x) -> dict[str, np.ndarray]:
    """Run a loaded version 2 model on a batch of windows → ``{output name: array}``. ``x``: one array, or a list
    of arrays, one per graph input, for a model with several inputs (``entry.sources``: int64 file-name ids, the
    others float32).

    A model exported with a fixed batch gets its windows split into batches of that size, the last padded
    with ``pad_value``; the padding rows are dropped from every output."""
    entry: ModelSpec = model.entry
    several = isinstance(x, list)
    xs = [np.ascontiguousarray(a, dtype=np.int64 if s.ids is not None else np.float32)
          for a, s in zip(x, entry.sources)] if several else [np.ascontiguousarray(x, dtype=np.float32)]
    n, fixed = xs[0].shape[0], entry.batch_chunks
    if fixed is None or n == fixed:
        outs = model.runner(xs if several else xs[0])
    else:
        pieces = []
        for start in range(0, n, fixed):
            part = [_padded(a[start : start + fixed], fixed, entry.pad_value) for a in xs]
            pieces.append(model.runner(part if several else part[0]))
        outs = [np.concatenate([p[i] for p in pieces])[:n] for i in range(len(entry.outputs))]
    return {o.name: np.asarray(a, dtype=np.float32) for o, a in zip(entry.outputs, outs)}


def _padded(part: np.ndarray, fixed: int, pad_value: float) -> np.ndarray:
    if len(part) < fixed:
        fill = np.full((fixed - len(part),) + part.shape[1:], pad_value if part.dtype.kind == "f" else 0, part.dtype)
        part = np.concatenate([part, fill])
    return np.ascontiguousarray(part)


class SpecEngine:
    """Per-block and per-file work of a model folder for :class:`birdinfer.runtime.pipeline.Predictor`.

    ``parallel_models > 1``: the models of a block run side by side in that many worker threads, longest first
    (OpenVINO and ONNX Runtime release the GIL); each model is then charged its share of the block's wall time
    in proportion to its own run time, so the charges add up to wall time as the time budget assumes."""

    def __init__(self, manifest: ManifestV2, models: Sequence, *, parallel_models: int = 1,
                 keep: Sequence[tuple[str, str]] = (), frontend_threads: int = 1):
        self.manifest = manifest
        self.models = list(models)
        self.keep = tuple((str(m), str(o)) for m, o in keep)  # (model, output) kept per window for the caller
        self._graphs: dict[tuple[str, ...], FrontEndGraph] = {}
        self.frontend_threads = frontend_threads  # threads the front-end ops may use (Block.threads)
        self._label_index = {m.name: self._scatter_plan(m.entry) for m in self.models}
        self.dag = DagRunner(manifest, self.models)  # models on other models' outputs: per file (runtime.dag)
        self._charges: tuple[dict, dict] | None = None  # the seconds / calls of the last infer_block (dag models)
        self.held = is_held(manifest.ensemble)  # steps over the whole submission: rows held until every file is done
        self._held_said = False
        self._pool = (ThreadPoolExecutor(parallel_models, thread_name_prefix="birdinfer-model")
                      if parallel_models > 1 and len(self.models) > 1 else None)

    def close(self) -> None:
        """Stop the model worker threads."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def _scatter_plan(self, entry: ModelSpec):
        if entry.label_map is None:
            return None
        index = {label: i for i, label in enumerate(entry.label_map.labels)}
        return np.array([index.get(label, -1) for label in self.manifest.labels], dtype=np.int64)

    # ------------------------------------------------------------------------------ per block
    def features(self, y: np.ndarray, active: Iterable[str]) -> dict[str, Signal]:
        names = pass_inputs([m.entry for m in self.models], set(active))  # shifted TTA passes included
        if names not in self._graphs:
            self._graphs[names] = FrontEndGraph(self.manifest, names, threads=self.frontend_threads)
        return self._graphs[names](y)

    def infer_block(self, features: Mapping[str, Signal], n_rows: int, active: Iterable[str],
                    seconds: dict, calls: dict, clock: Callable[[], float] = time.perf_counter) -> dict[str, np.ndarray]:
        """Every active model on its feature's windows, then its block steps → ``{model: rows (n_rows, C)}``
        (a :class:`birdinfer.runtime.dag.BlockRows`, which also keeps the outputs models on other models' outputs
        read; those run per file, :meth:`file_rows`). ``seconds`` / ``calls`` (per model name) are charged with
        the model time read by ``clock``."""
        active = set(active)
        rows_of = getattr(features, "rows_of", None)  # a streamed whole-file block (birdinfer.runtime.streaming)
        models = [m for m in self.models if m.name in active and getattr(m.entry, "source", None) is None]
        self._charges = (seconds, calls)
        if self._pool is not None and len(models) > 1:
            arrays = self._run_parallel(models, features, seconds, calls, clock)
        else:
            arrays = {}
            for model in models:
                start = clock()
                arrays[model.name] = run_named(model, features[model.entry.input].data)
                seconds[model.name] += clock() - start
                calls[model.name] += 1
        out = BlockRows({}, dependents=[n for n in self.dag.names() if n in active])
        for model in models:
            signal = features[model.entry.input]
            out.kept.update(self.dag.kept(model.name, arrays[model.name]))
            out.kept.update({(m, o): arrays[m][o] for m, o in self.keep if m == model.name})
            out.layouts[model.name] = signal.windows
            out[model.name] = self._rows(model.entry, arrays[model.name], signal, n_rows, rows_of)
            if model.entry.tta is not None:
                out.passes[model.name] = self._passes(model, features, n_rows, rows_of, seconds, clock)
        return out

    @staticmethod
    def _rows(entry: ModelSpec, arrays: Mapping[str, np.ndarray], signal: Signal, n_rows: int, rows_of) -> np.ndarray:
        if rows_of is not None:  # a streamed whole-file block: rows once every window they need has run
            return rows_of(entry, arrays, signal)
        return block_rows(entry.block_steps, arrays, signal.windows, n_rows)

    def _passes(self, model, features, n_rows: int, rows_of, seconds: dict, clock) -> list[np.ndarray]:
        """The rows of a model's shifted TTA passes on this block (:mod:`birdinfer.spec.tta`), charged to the model."""
        out = []
        for p in model.entry.tta.passes[1:]:
            start = clock()
            arrays = run_named(model, features[p.feature].data)
            seconds[model.name] += clock() - start
            entry = replace(model.entry, name=f"{model.name}@{p.feature}", input=p.feature)  # its own row stream
            out.append(self._rows(entry, arrays, features[p.feature], n_rows, rows_of))
        return out

    def _run_parallel(self, models: list, features: Mapping[str, Signal], seconds: dict, calls: dict,
                      clock: Callable[[], float]) -> dict[str, dict[str, np.ndarray]]:
        def expected(m) -> float:  # measured mean, else input size
            n = calls[m.name]
            return seconds[m.name] / n if n else float(np.prod([abs(d) for d in m.entry.input_shape[1:]]))

        def run(m):
            t = time.perf_counter()
            result = run_named(m, features[m.entry.input].data)
            return result, time.perf_counter() - t

        # The clock is read once per model at submission and once at collection, as the sequential path
        # reads it (a test clock that counts reads sees the same time); the block's wall time is then
        # split by the models' own run times.
        futures = [(m, clock(), self._pool.submit(run, m)) for m in sorted(models, key=expected, reverse=True)]
        results, end = {}, 0.0
        for m, _, future in futures:
            results[m.name] = future.result()
            end = clock()
        wall = end - futures[0][1]
        busy = sum(t for _, t in results.values()) or 1.0
        for m in models:
            seconds[m.name] += wall * results[m.name][1] / busy
            calls[m.name] += 1
        return {name: result for name, (result, _) in results.items()}

    # -------------------------------------------------------------------------------- per file
    def file_rows(self, parts: list[Mapping[str, np.ndarray]], name: str | None = None) -> FileRows:
        """A file's per-block model rows → its rows before fusion (:mod:`birdinfer.runtime.fusion`): every model's
        rows after its row steps and label map, every ensemble group that does not wait for the submission.
        ``name``: the recording's file name (read by steps such as ``file_prior``)."""
        rows = FileRows(name)
        dag = self.dag.start(parts, name, rows.notes)  # models on other models' outputs (runtime.dag)
        staged: dict[str, dict[str, np.ndarray]] = {}  # model → rows after each step another model reads
        by_name = {m.name: m for m in self.models}

        def rows_of(model: str, after: str) -> np.ndarray | None:
            return staged.get(model, {}).get(after)

        done = {}
        for model in (by_name[n] for n in self.dag.order):
            if dag is not None and model.name in self.dag.names():
                values = dag.rows(model, run_named, self._charge, rows_of)
                if values is None:
                    continue
            elif not parts or model.name not in parts[0]:
                continue
            else:
                values = np.concatenate([p[model.name] for p in parts], axis=0)
                if model.entry.tta is not None:  # its shifted-window passes (spec.tta) → the model's rows
                    values = self._tta_rows(model.entry, values, parts)
            done[model.name] = self._row_steps(model.entry, values, rows, staged)
        rows.models.update((m.name, done[m.name]) for m in self.models if m.name in done)  # manifest order
        file_rows(self.manifest.ensemble, rows.models, rows)
        return rows

    def _row_steps(self, entry: ModelSpec, values: np.ndarray, rows: FileRows, staged: dict) -> np.ndarray:
        """A model's rows through its row steps → in the folder's labels; ``staged[model][step]``: the rows after
        each step other models read (``""``: after all of them)."""
        wanted = self.dag.rows_read.get(entry.name, set())
        keep = {}
        if entry.block_steps and entry.block_steps[-1].name in wanted:
            keep[entry.block_steps[-1].name] = self._to_labels(entry, values)
        for step in entry.row_steps:
            values = run_row_steps([step], values, rows.context())
            if step.name in wanted and step.name not in keep:
                keep[step.name] = self._to_labels(entry, values)
        values = self._to_labels(entry, values)
        keep[""] = values
        if wanted:
            staged[entry.name] = keep
        return values

    def _tta_rows(self, entry: ModelSpec, values: np.ndarray, parts) -> np.ndarray:
        """A file's rows of every TTA pass → the model's rows (a block of ``block_seconds`` is a file of its own)."""
        tta = entry.tta
        rows = [values] + [np.concatenate([p.passes[entry.name][i] for p in parts], axis=0)
                           for i in range(len(tta.passes) - 1)]
        segments = None if self.manifest.block_seconds is None else [len(p[entry.name]) for p in parts]
        return combine_passes(tta.mode, [(p.seconds, p.weight) for p in tta.passes], rows,
                              self.manifest.window_seconds, segments)

    def _charge(self, name: str, seconds: float) -> None:
        if self._charges is not None:
            self._charges[0][name] = self._charges[0].get(name, 0.0) + seconds
            self._charges[1][name] = self._charges[1].get(name, 0) + 1

    def finish(self, parts: list[Mapping[str, np.ndarray]], name: str | None = None) -> np.ndarray:
        """A file's per-block model rows → the ensembled rows ``(R, n_labels)`` float32. A spec with steps over the
        whole submission fuses this file as a submission of its own (``submit`` and ``predict`` fuse all files)."""
        n_labels = len(self.manifest.labels)
        if not parts:
            return np.zeros((0, n_labels), np.float32)
        rows = self.file_rows(parts, name)
        if self.held and not self._held_said:
            self._held_said = True
            log.warning("the ensemble has steps over the whole submission: a file scored alone is fused as a submission "
                        "of its own (birdinfer submit / predict fuse all files)")
        result = fuse(self.manifest.ensemble, [rows])[0] if self.held else rows.final
        for note in rows.notes:
            log.warning("%s", note)
        if result is None:
            raise ParameterError("no model of the ensemble ran")
        return np.asarray(result, dtype=np.float32)

    def _to_labels(self, entry: ModelSpec, rows: np.ndarray) -> np.ndarray:
        plan = self._label_index[entry.name]
        if plan is None:
            if rows.shape[1] != len(self.manifest.labels):
                raise ParameterError(f"model {entry.name!r} gives {rows.shape[1]} classes, the manifest has "
                                     f"{len(self.manifest.labels)} labels")
            return rows
        out = np.full((rows.shape[0], len(plan)), entry.label_map.fill, dtype=rows.dtype)
        have = plan >= 0
        out[:, have] = rows[:, plan[have]]
        return out
