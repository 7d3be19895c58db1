"""Models on other models' outputs, at run time (the spec side: :mod:`birdinfer.spec.dag`).

A model whose ``input`` names another model's output (a probe on Perch's ``embedding``, a sequence model on the
file's embeddings) runs once per file, after every block of the file, on its producer's outputs of all the
file's windows: each model still runs once per window. Per block, :meth:`SpecEngine.infer_block
<birdinfer.runtime.engine.SpecEngine.infer_block>` returns a :class:`BlockRows`: the model rows as before, plus
the graph outputs other models read (``kept``: ``(windows, width)`` per output, rows of numbers, never audio)
and each feature model's window layout. :class:`DagRunner` then, per file, in topological order:

1. joins a producer's kept output over the file's windows, ``X`` ``(W, D)``, and appends the ``context`` columns
   (per dimension over the file's windows: ``mean``, ``std`` with ``ddof=0``, ``max``, ``min``, or the
   ``prev`` / ``next`` window's vector, the edge window's own at the file's edges) → ``(W, D·(1 + k))``;
2. runs the model on it: a probe on the ``W`` windows as a batch, a sequence model on ``[1, W, ·]``
   (its outputs ``[1, W, ·]`` become per-window outputs);
3. turns the per-window outputs into rows with the model's block steps (``clip_rows`` etc.) on the windows of
   the feature model at the root of its chain: block by block for a spec with ``block_seconds``, over the
   whole file's windows for a whole-file spec (streamed or not, these are the file's windows).

Its outputs are kept too, so models may read models that read models.

A model with several inputs (``entry.sources``, :mod:`birdinfer.spec.dag_inputs`) gets one array per source:
a kept output as above, another model's rows after one of its steps (``rows_of`` from the engine, which runs
the models in topological order and keeps those rows), or an int64 id parsed from the file name
(:func:`file_name_id`; its fallback and a note in the file's notes when the name does not match). A sequence
model with ``tta`` runs once per window shift (and flipped) and averages (:func:`run_sequence`).
"""

from __future__ import annotations

import re
import time
from dataclasses import replace
from pathlib import PurePath
from typing import Callable, Mapping, Sequence

import numpy as np

from ..errors import ParameterError
from ..ops.steps import OutputParams, Outputs, block_rows, clip_rows
from ..spec.dag import topological
from ..spec.dag_inputs import model_inputs

__all__ = ["BlockRows", "DagRunner", "FileDag", "checked_keep", "output_rows", "with_context", "run_sequence",
           "file_name_id"]


class BlockRows(dict):
    """One block's rows ``{model: (n_rows, C)}`` and what the models on other models' outputs need of it:
    ``kept`` ``{(model, output): (windows, width)}``, ``layouts`` ``{feature model: WindowLayout}`` and the
    ``dependents`` that were active for it."""

    def __init__(self, rows: Mapping[str, np.ndarray], kept=None, layouts=None, dependents: Sequence[str] = ()):
        super().__init__(rows)
        self.kept = dict(kept or {})
        self.layouts = dict(layouts or {})
        self.dependents = tuple(dependents)
        self.passes: dict[str, list[np.ndarray]] = {}  # a model's rows of its shifted TTA passes (spec.tta)


def with_context(x: np.ndarray, context: Sequence[str], per_class: bool = False) -> np.ndarray:
    """``x`` ``(W, D)`` (one file's windows) with the per-file ``context`` columns appended (module docstring);
    ``per_class``: stacked on a last axis, ``(W, D, 1 + k)``."""
    x = np.asarray(x, dtype=np.float32)
    if not context:
        return np.ascontiguousarray(x[:, :, None]) if per_class else x
    n = len(x)
    cols = [x]
    for c in context:
        if c in ("prev", "next"):
            idx = np.clip(np.arange(n) + (-1 if c == "prev" else 1), 0, n - 1)
            cols.append(x[idx])
            continue
        stat = {"mean": np.mean, "std": np.std, "max": np.max, "min": np.min}[c](x, axis=0, keepdims=True)
        cols.append(np.broadcast_to(stat.astype(np.float32), x.shape))
    return np.ascontiguousarray(np.stack(cols, axis=2) if per_class else np.concatenate(cols, axis=1))


class DagRunner:
    """The models of an engine that read other models' outputs (see the module docstring)."""

    def __init__(self, manifest, models: Sequence):
        by_name = {m.name: m for m in models}
        self.order = topological([m.entry for m in models])
        self.dependents = [by_name[n] for n in self.order if model_inputs(by_name[n].entry)]
        self.reads: dict[str, set[str]] = {}
        self.rows_read: dict[str, set[str]] = {}  # producer → the steps after which a model reads its rows
        self.root: dict[str, str] = {}
        specs = {m.name: m.entry for m in models}
        for m in self.dependents:
            for src in model_inputs(m.entry):
                if src.model and src.rows is not None:
                    self.rows_read.setdefault(src.model, set()).add(src.rows)
                elif src.model:
                    self.reads.setdefault(src.model, set()).add(src.output)
            root = m.name
            while model_inputs(specs[root]):
                root = specs[root].source.model
            self.root[m.name] = root
        self.whole_file = manifest.block_seconds is None

    def names(self) -> set[str]:
        return {m.name for m in self.dependents}

    def kept(self, name: str, arrays: Mapping[str, np.ndarray]) -> dict:
        """The outputs of feature model ``name`` that other models read (``{(name, output): array}``)."""
        return {(name, o): arrays[o] for o in self.reads.get(name, ())}

    def start(self, parts: Sequence[Mapping], name: str | None = None, notes: list | None = None) -> "FileDag | None":
        """The per-file state for the dependents active in ``parts`` (None: no dependent runs for this file)."""
        if not self.dependents or not parts or not isinstance(parts[0], BlockRows):
            return None
        return FileDag(self, parts, name, notes if notes is not None else [])


class FileDag:
    """One file's runs of the models on other models' outputs: :meth:`rows` per model, in topological order
    (``rows_of(model, after)``: the rows of a model that already ran, after its step ``after``)."""

    def __init__(self, runner: DagRunner, parts: Sequence[BlockRows], name: str | None, notes: list):
        self.runner, self.parts, self.name, self.notes = runner, parts, name, notes
        self.active = set(parts[0].dependents)
        self.outs: dict[tuple[str, str], np.ndarray] = {}

    def _output(self, key: tuple[str, str]) -> np.ndarray | None:
        if key not in self.outs:
            if key not in self.parts[0].kept:
                return None  # its producer did not run for this file
            self.outs[key] = np.concatenate([p.kept[key] for p in self.parts], axis=0)
        return self.outs[key]

    def _inputs(self, model, rows_of: Callable) -> tuple[list[np.ndarray], int] | None:
        """The model's input arrays, one per source, and the file's window count (None: a producer did not run)."""
        arrays, n = [], None
        for src in model.entry.inputs:
            if src.ids is not None:
                arrays.append(None)
                continue
            x = rows_of(src.model, src.rows) if src.rows is not None else self._output((src.model, src.output))
            if x is None:
                return None
            x = with_context(x, src.context, per_class=src.per_class)
            if n is not None and len(x) != n:
                raise ParameterError(f"model {model.name!r}: its inputs have {n} and {len(x)} windows ({src.model!r}"
                                     f"{'s rows' if src.rows is not None else '.' + src.output}); a model's inputs "
                                     f"must have one row per window of the same file")
            n = len(x)
            arrays.append(x[None] if src.sequence else x)
        for i, src in enumerate(model.entry.inputs):
            if src.ids is not None:
                value = file_name_id(src.ids, self.name, self.notes, model.name)
                arrays[i] = np.full(1 if src.sequence else n, value, np.int64)
        return arrays, n

    def rows(self, model, run: Callable, charge: Callable[[str, float], None], rows_of: Callable) -> np.ndarray | None:
        """``model``'s rows ``(R, C)`` for this file (None: inactive, or a producer did not run).
        ``run(model, x)`` → ``{output: array}``; ``charge(name, seconds)`` records a model's time."""
        entry, root = model.entry, self.runner.root[model.name]
        if model.name not in self.active or root not in self.parts[0]:
            return None
        found = self._inputs(model, rows_of)
        if found is None:
            return None
        arrays, n = found
        single = not entry.sources
        start = time.perf_counter()
        if entry.inputs[0].sequence:
            result = run_sequence(lambda xs: run(model, xs[0] if single else xs), arrays, entry, model.name)
        else:
            result = run(model, arrays[0] if single else arrays)
        charge(model.name, time.perf_counter() - start)
        for k, v in result.items():
            if len(v) != n:
                raise ParameterError(f"model {model.name!r}: output {k!r} gives {len(v)} windows for {n} input windows")
            self.outs[(model.name, k)] = v
        return self._to_rows(entry, result, root)

    def _to_rows(self, entry, outputs: Mapping[str, np.ndarray], root: str) -> np.ndarray:
        """Per-window outputs of the whole file → rows, on the windows of feature model ``root``."""
        parts = self.parts
        counts = [p.layouts[root].count for p in parts]
        n_rows = [len(p[root]) for p in parts]
        if self.runner.whole_file:  # the file's windows (a streamed file's blocks hold consecutive windows of it)
            layout = replace(parts[0].layouts[root], count=sum(counts))
            return block_rows(entry.block_steps, dict(outputs), layout, sum(n_rows))
        out, start = [], 0
        for p, count, n in zip(parts, counts, n_rows):
            block = {k: v[start : start + count] for k, v in outputs.items()}
            out.append(block_rows(entry.block_steps, block, p.layouts[root], n))
            start += count
        return np.concatenate(out, axis=0)


def run_sequence(run: Callable, arrays: list[np.ndarray], entry, name: str) -> dict[str, np.ndarray]:
    """A sequence model on ``[1, W, ...]`` inputs → per-window outputs ``{output: (W, ...)}``. With ``entry.sequence_tta``:
    the mean over circular shifts of the window axis (every windowed input shifted by ``s``, the outputs shifted
    back by ``−s``) and, with ``flip``, the time-reversed inputs (outputs reversed back); ids are not shifted."""
    tta = entry.sequence_tta
    windowed = [a is not None and a.ndim >= 3 for a in arrays]

    def once(change) -> dict[str, np.ndarray]:
        xs = [np.ascontiguousarray(change(a, 1)) if w else a for a, w in zip(arrays, windowed)]
        return {k: _unbatch(v, name, k) for k, v in run(xs).items()}

    if tta is None:
        return once(lambda a, axis: a)
    total: dict[str, np.ndarray] = {}
    passes = [(lambda a, axis, s=s: np.roll(a, s, axis=axis), lambda v, s=s: np.roll(v, -s, axis=0)) for s in tta.shifts]
    if tta.flip:
        passes.append((lambda a, axis: np.flip(a, axis=axis), lambda v: np.flip(v, axis=0)))
    for forward, back in passes:
        for k, v in once(forward).items():
            total[k] = total.get(k, 0.0) + back(v).astype(np.float64)
    return {k: (v / len(passes)).astype(np.float32) for k, v in total.items()}


def file_name_id(ids, name: str | None, notes: list, model: str) -> int:
    """The id ``ids`` (:class:`birdinfer.spec.v2.FileNameIds`) gives the file ``name``; its fallback, and a note in
    ``notes`` (the run's report), when the name does not match or the value is not in the vocabulary."""
    match = re.search(ids.pattern, PurePath(name).stem) if name else None
    value = match.group(ids.field) if match is not None else None
    if value is None:
        notes.append(f"model {model}: file name {name!r} does not match the pattern {ids.pattern!r}: "
                     f"{ids.field} id {ids.fallback} (the fallback)")
        return ids.fallback
    if ids.vocabulary is None:
        if not value.strip().isdigit():
            notes.append(f"model {model}: {ids.field} {value!r} of file {name!r} is not a whole number: id "
                         f"{ids.fallback} (the fallback)")
            return ids.fallback
        out = int(value)
    elif value in ids.vocabulary:
        out = ids.vocabulary[value]
    else:
        notes.append(f"model {model}: {ids.field} {value!r} of file {name!r} is not in the vocabulary: id "
                     f"{ids.fallback} (the fallback)")
        return ids.fallback
    return out % ids.modulo if ids.modulo else out


def _unbatch(v: np.ndarray, name: str, output: str) -> np.ndarray:
    if v.ndim < 2 or v.shape[0] != 1:
        raise ParameterError(f"model {name!r}: a sequence model's output {output!r} must be [1, windows, ...], got "
                             f"{list(v.shape)}")
    return v[0]


def output_rows(parts: Sequence[BlockRows], key: tuple[str, str], whole_file: bool) -> np.ndarray:
    """One file's rows ``(R, width)`` of a kept per-window output ``key`` ``(model, output)`` (e.g. an embedding asked
    for by ``predict``), on the same rows as the model's: window ``k`` to rows ``[k·step_rows, (k+1)·step_rows)``
    (``clip_rows``), over the file's windows for a whole-file spec, block by block otherwise."""
    model, output = key
    n_rows = [len(p[model]) for p in parts]
    if whole_file:
        layout = replace(parts[0].layouts[model], count=sum(len(p.kept[key]) for p in parts))
        blocks = [(np.concatenate([p.kept[key] for p in parts], axis=0), layout, sum(n_rows))]
    else:
        blocks = [(p.kept[key], p.layouts[model], n) for p, n in zip(parts, n_rows)]
    return np.concatenate([clip_rows(Outputs({output: x}, layout, n), OutputParams(output)).rows
                           for x, layout, n in blocks], axis=0)


def checked_keep(models: Sequence, keep: Sequence[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """``keep`` ``[(model, output)]``, each a per-window output of a model that runs on a feature (ParameterError
    naming the model and output otherwise)."""
    entries = {m.name: m.entry for m in models}
    for model, output in keep:
        entry = entries.get(model)
        names = [o.name for o in entry.outputs] if entry is not None else []
        if entry is None or output not in names or getattr(entry, "source", None) is not None:
            raise ParameterError(f"no per-window output {model}.{output} to keep (models: {', '.join(entries)}; outputs of "
                                 f"{model}: {', '.join(names) or 'none'})")
    return tuple((str(m), str(o)) for m, o in keep)
