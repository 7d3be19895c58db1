"""The runtime of manifest version 2 folders: front-end graph → models → model steps → ensemble tree.

:class:`FrontEndGraph` runs the ``features`` pipelines of a block, sharing identical step prefixes (one
STFT / mel per distinct parameters; windows of a whole-block spectrum are strided views).
:class:`SpecEngine` is what :class:`birdinfer.pipeline.Predictor` delegates to for a version 2 folder:
``features`` (background thread), ``infer_block`` (models + model steps up to the rows, per block) and
``finish`` (per file: the model row steps, label maps, then the ensemble group tree).
Version 1 folders never come here: they keep :mod:`birdinfer.features` / :mod:`birdinfer.ensemble`.
"""

from __future__ import annotations

import time
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

from .errors import ParameterError
from .frontend_ops import Block, Signal
from .spectral_ops import FUSED
from .spec import GroupSpec, ManifestV2, MemberRef, ModelSpec
from .steps import Outputs

__all__ = ["FrontEndGraph", "SpecEngine", "WHOLE_FILE_SECONDS", "run_named"]

#: Block length used for ``block_seconds: null`` (the whole file is one block).
WHOLE_FILE_SECONDS = 1e7
#: Larger samples overflow a float32 power spectrum (|frame FFT|² reaches (n_fft · peak)²; from ~1e17).
MAX_ABS_SAMPLE = 1e12


class FrontEndGraph:
    """The ``features`` of a version 2 manifest, run on one block; identical prefixes computed once."""

    def __init__(self, manifest: ManifestV2, names: Iterable[str] | None = None):
        self.manifest = manifest
        self.names = tuple(names) if names is not None else tuple(manifest.features)
        self.row_samples = manifest.window_samples
        self._keys = {name: [f"{s.name}:{s.params!r}" for s in manifest.features[name]] for name in manifest.features}

    def __call__(self, y: np.ndarray, n_rows: int | None = None) -> dict[str, Signal]:
        """``y`` float32 ``(N,)`` → ``{feature name: Signal}`` (model input batches in ``.data``)."""
        y = np.asarray(y)
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.floating):
            raise ParameterError(f"the front end needs float mono samples of shape (n,), got {y.dtype} {y.shape}")
        y = np.ascontiguousarray(y, dtype=np.float32)
        if not np.isfinite(y).all():
            raise ParameterError("the signal has NaN or Inf samples; load it with birdinfer.audio.load_audio (repairs them)")
        peak = float(np.abs(y).max()) if y.size else 0.0
        if peak > MAX_ABS_SAMPLE:
            raise ParameterError(
                f"the signal has samples up to {peak:.3g} in magnitude; a float32 power spectrum would overflow "
                f"(limit {MAX_ABS_SAMPLE:g}); audio samples belong in [-1, 1]: is it a float file holding garbage?")
        if n_rows is None:
            n_rows = self.manifest.n_rows(len(y))
        if n_rows == 0:
            raise ParameterError("the front end needs at least one row of audio")
        block = Block(len(y), n_rows, self.manifest.sample_rate, self.row_samples, self.manifest.row_partial)
        cache: dict[tuple[str, ...], Signal] = {}
        out = {}
        for name in self.names:
            signal, key = Signal(y), ()
            steps, keys, i = self.manifest.features[name], self._keys[name], 0
            while i < len(steps):
                step, after = steps[i], steps[i + 1] if i + 1 < len(steps) else None
                fused = FUSED.get((step.name, after.name)) if after is not None and signal.data.ndim == 1 else None
                if fused is not None:  # e.g. stft + resize_time: only the frames the resize reads
                    key = key + (keys[i], keys[i + 1])
                    if key not in cache:
                        cache[key] = fused(signal, step.params, after.params, block)
                    i += 2
                else:
                    key = key + (keys[i],)
                    if key not in cache:
                        cache[key] = step.entry.fn(signal, step.params, block)
                    i += 1
                signal = cache[key]
            out[name] = signal
        return out


def run_named(model, x: np.ndarray) -> dict[str, np.ndarray]:
    """Run a loaded version 2 model on a batch of windows → ``{output name: array}``.

    A model exported with a fixed batch gets its windows split into batches of that size, the last padded
    with ``pad_value``; the padding rows are dropped from every output."""
    entry: ModelSpec = model.entry
    x = np.ascontiguousarray(x, dtype=np.float32)
    n, fixed = x.shape[0], entry.batch_chunks
    if fixed is None or n == fixed:
        outs = model.runner(x)
    else:
        pieces = []
        for start in range(0, n, fixed):
            part = x[start : start + fixed]
            if len(part) < fixed:
                part = np.concatenate([part, np.full((fixed - len(part),) + part.shape[1:], entry.pad_value, np.float32)])
            pieces.append(model.runner(np.ascontiguousarray(part)))
        outs = [np.concatenate([p[i] for p in pieces])[:n] for i in range(len(entry.outputs))]
    return {o.name: np.asarray(a, dtype=np.float32) for o, a in zip(entry.outputs, outs)}


class SpecEngine:
    """Per-block and per-file work of a version 2 folder for :class:`birdinfer.pipeline.Predictor`."""

    def __init__(self, manifest: ManifestV2, models: Sequence):
        self.manifest = manifest
        self.models = list(models)
        self._graphs: dict[tuple[str, ...], FrontEndGraph] = {}
        self._label_index = {m.name: self._scatter_plan(m.entry) for m in self.models}

    def _scatter_plan(self, entry: ModelSpec):
        if entry.label_map is None:
            return None
        index = {label: i for i, label in enumerate(entry.label_map.labels)}
        return np.array([index.get(label, -1) for label in self.manifest.labels], dtype=np.int64)

    # ------------------------------------------------------------------------------ per block
    def features(self, y: np.ndarray, active: Iterable[str]) -> dict[str, Signal]:
        active = set(active)
        names = tuple(dict.fromkeys(m.entry.input for m in self.models if m.name in active))
        if names not in self._graphs:
            self._graphs[names] = FrontEndGraph(self.manifest, names)
        return self._graphs[names](y)

    def infer_block(self, features: Mapping[str, Signal], n_rows: int, active: Iterable[str],
                    seconds: dict, calls: dict, clock: Callable[[], float] = time.perf_counter) -> dict[str, np.ndarray]:
        """Every active model on its feature's windows, then its block steps → ``{model: rows (n_rows, C)}``."""
        active = set(active)
        out = {}
        for model in self.models:
            if model.name not in active:
                continue
            signal = features[model.entry.input]
            start = clock()
            arrays = run_named(model, signal.data)
            seconds[model.name] += clock() - start
            calls[model.name] += 1
            state = Outputs(arrays, signal.windows, n_rows)
            for step in model.entry.block_steps:
                state = step(state)
            out[model.name] = state.rows
        return out

    # -------------------------------------------------------------------------------- per file
    def finish(self, parts: list[Mapping[str, np.ndarray]]) -> np.ndarray:
        """A file's per-block model rows → the ensembled rows ``(R, n_labels)`` float32."""
        n_labels = len(self.manifest.labels)
        if not parts:
            return np.zeros((0, n_labels), np.float32)
        names = [n for n in parts[0]]
        per_model = {}
        for model in self.models:
            if model.name not in names:
                continue
            rows = np.concatenate([p[model.name] for p in parts], axis=0)
            for step in model.entry.row_steps:
                rows = step(rows)
            per_model[model.name] = self._to_labels(model.entry, rows)
        result = self._group(self.manifest.ensemble, per_model)
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

    def _group(self, group: GroupSpec, per_model: Mapping[str, np.ndarray]) -> np.ndarray | None:
        """A group's prediction from the members that ran (None when none did)."""
        values, weights = [], []
        for member in group.members:
            if isinstance(member, MemberRef):
                if member.model in per_model:
                    values.append(per_model[member.model])
                    weights.append(member.weight)
            else:
                value = self._group(member, per_model)
                if value is not None:
                    values.append(value)
                    weights.append(member.weight)
        if not values:
            return None
        rows = group.combine(values, weights)
        for step in group.steps:
            rows = step(rows)
        return rows
