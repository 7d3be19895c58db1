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
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Callable, Mapping, Sequence

import numpy as np

from ..errors import ParameterError
from ..ops.steps import block_rows
from ..spec.dag import topological

__all__ = ["BlockRows", "DagRunner", "with_context"]


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


def with_context(x: np.ndarray, context: Sequence[str]) -> np.ndarray:
    """``x`` ``(W, D)`` (one file's windows) with the per-file ``context`` columns appended (module docstring)."""
    x = np.asarray(x, dtype=np.float32)
    if not context:
        return x
    n = len(x)
    cols = [x]
    for c in context:
        if c in ("prev", "next"):
            idx = np.clip(np.arange(n) + (-1 if c == "prev" else 1), 0, n - 1)
            cols.append(x[idx])
            continue
        stat = {"mean": np.mean, "std": np.std, "max": np.max, "min": np.min}[c](x, axis=0, keepdims=True)
        cols.append(np.broadcast_to(stat.astype(np.float32), x.shape))
    return np.ascontiguousarray(np.concatenate(cols, axis=1))


class DagRunner:
    """The models of an engine that read other models' outputs (see the module docstring)."""

    def __init__(self, manifest, models: Sequence):
        by_name = {m.name: m for m in models}
        order = topological([m.entry for m in models])
        self.dependents = [by_name[n] for n in order if getattr(by_name[n].entry, "source", None) is not None]
        self.reads: dict[str, set[str]] = {}
        self.root: dict[str, str] = {}
        specs = {m.name: m.entry for m in models}
        for m in self.dependents:
            src = m.entry.source
            self.reads.setdefault(src.model, set()).add(src.output)
            root = src.model
            while getattr(specs[root], "source", None) is not None:
                root = specs[root].source.model
            self.root[m.name] = root
        self.whole_file = manifest.block_seconds is None

    def names(self) -> set[str]:
        return {m.name for m in self.dependents}

    def kept(self, name: str, arrays: Mapping[str, np.ndarray]) -> dict:
        """The outputs of feature model ``name`` that other models read (``{(name, output): array}``)."""
        return {(name, o): arrays[o] for o in self.reads.get(name, ())}

    def rows(self, parts: Sequence[Mapping], run: Callable, charge: Callable[[str, float], None]) -> dict[str, np.ndarray]:
        """``{model: rows (R, C)}`` of the dependents active for this file whose producers ran.
        ``run(model, x)`` → ``{output: array}``; ``charge(name, seconds)`` records a model's time."""
        if not self.dependents or not parts or not isinstance(parts[0], BlockRows):
            return {}
        active = set(parts[0].dependents)
        outs: dict[tuple[str, str], np.ndarray] = {}
        rows: dict[str, np.ndarray] = {}
        for model in self.dependents:
            entry = model.entry
            src, root = entry.source, self.root[model.name]
            if model.name not in active or root not in parts[0]:
                continue
            key = (src.model, src.output)
            if key not in outs:
                if key not in parts[0].kept:
                    continue  # its producer did not run for this file
                outs[key] = np.concatenate([p.kept[key] for p in parts], axis=0)
            x = with_context(outs[key], src.context)
            start = time.perf_counter()
            if src.sequence:
                result = {k: _unbatch(v, model.name, k) for k, v in run(model, x[None]).items()}
            else:
                result = run(model, x)
            charge(model.name, time.perf_counter() - start)
            for k, v in result.items():
                if len(v) != len(x):
                    raise ParameterError(f"model {model.name!r}: output {k!r} gives {len(v)} windows for {len(x)} "
                                         f"input windows of {src.model!r}.{src.output}")
                outs[(model.name, k)] = v
            rows[model.name] = self._to_rows(entry, result, parts, root)
        return rows

    def _to_rows(self, entry, outputs: Mapping[str, np.ndarray], parts: Sequence[BlockRows], root: str) -> np.ndarray:
        """Per-window outputs of the whole file → rows, on the windows of feature model ``root``."""
        any_key = next(k for k in parts[0].kept if k[0] == root)
        counts = [len(p.kept[any_key]) for p in parts]
        n_rows = [len(p[root]) for p in parts]
        if self.whole_file:  # the file's windows (a streamed file's blocks hold consecutive windows of it)
            layout = replace(parts[0].layouts[root], count=sum(counts))
            return block_rows(entry.block_steps, dict(outputs), layout, sum(n_rows))
        out, start = [], 0
        for p, count, n in zip(parts, counts, n_rows):
            block = {k: v[start : start + count] for k, v in outputs.items()}
            out.append(block_rows(entry.block_steps, block, p.layouts[root], n))
            start += count
        return np.concatenate(out, axis=0)


def _unbatch(v: np.ndarray, name: str, output: str) -> np.ndarray:
    if v.ndim < 2 or v.shape[0] != 1:
        raise ParameterError(f"model {name!r}: a sequence model's output {output!r} must be [1, windows, ...], got "
                             f"{list(v.shape)}")
    return v[0]
