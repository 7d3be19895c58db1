"""Shifted-window test-time augmentation (a model's ``tta`` field, ``docs/manifest_v2.md``): the ``roll`` op
and how the rows of the shifted passes are combined with the unshifted rows.

A pass is the model run once more on windows that start ``seconds`` later than its own (negative: earlier).
Two ways to cut them (:mod:`birdinfer.spec.tta` builds the pass's feature):

* ``"shift"`` (the 2026 5th place: a second pass 2.5 s later): the windows are cut from the file at the
  shifted positions. Row ``j`` of the pass covers ``[j + d, j + 1 + d)`` rows (``d = seconds / row seconds``);
  it exists when that span lies inside the rows of the file (or block), and adds ``weight × overlap`` of
  itself to each row it overlaps. What a row misses (the shifted rows that would reach outside) goes to the
  unshifted row, so a row is always a weighted mean with weights summing to the passes' total:
  ``0.5·n[k] + 0.25·s[k−1] + 0.25·s[k]`` inside, ``0.75·n[0] + 0.25·s[0]`` and ``0.75·n[R−1] + 0.25·s[R−2]`` at
  the edges for passes ``0 s`` and ``+2.5 s`` of weight 0.5 on 5 s rows.
* ``"roll"`` (the 2026 2nd place's SED: the whole waveform rolled circularly by ±1.25 s): the ``roll`` op rolls
  the block's rows' samples circularly before the windows are cut, so every row has one window per pass;
  row ``k`` is ``Σ weight_p · rows_p[k] / Σ weight_p``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Annotated, Sequence

import numpy as np

from .base import OPS, Block, Signal, Static, _need
from .registry import Range

__all__ = ["RollParams", "combine_passes", "shift_coefficients"]


@dataclass(frozen=True)
class RollParams:
    seconds: Annotated[float, Range(-3600, 3600)]  # samples move this much later (np.roll / torch.roll)


def _infer_roll(s: Static, p: RollParams) -> Static:
    _need(s, kind="wave", windowed=False, op="roll")
    if s.pad_left_s or s.pad_right_s or s.pad_fit:
        raise ValueError("roll must come before any pad op (it rolls the samples of the block's rows)")
    return s


@OPS.register("roll", RollParams, infer=_infer_roll)
def roll(x: Signal, p: RollParams, block: Block) -> Signal:
    """The first ``n_rows × row`` samples of the block (zero-filled past its end) rolled circularly by
    ``seconds``; samples after them are kept as they are (no window reads them when windows tile the rows)."""
    y = x.data
    span = block.n_rows * block.row_samples
    head = np.zeros(span, dtype=np.float32)
    head[: min(span, y.size)] = y[:span]
    shift = int(round(p.seconds * block.sample_rate))
    return replace(x, data=np.concatenate([np.roll(head, shift), y[span:]]).astype(np.float32, copy=False))


def shift_coefficients(d: float) -> dict[int, float]:
    """``{q: overlap}``: a pass row ``j`` covering ``[j + d, j + 1 + d)`` overlaps row ``j + q`` by ``overlap``
    (a fraction of a row; the fractions sum to 1)."""
    out = {}
    for q in range(math.floor(d), math.ceil(d) + 1):
        c = min(q + 1.0, 1.0 + d) - max(float(q), d)
        if c > 1e-12:
            out[q] = c
    return out


def _shift_segment(passes: Sequence[tuple[float, float]], rows: Sequence[np.ndarray], row_seconds: float) -> np.ndarray:
    base = rows[0].astype(np.float64)
    n = len(base)
    total = sum(w for _, w in passes)
    out = passes[0][1] * base
    for (seconds, weight), x in zip(passes[1:], rows[1:]):
        d = seconds / row_seconds
        j = np.arange(n)
        exists = (j + d >= -1e-9) & (j + 1 + d <= n + 1e-9)
        mass = np.zeros(n)
        for q, c in shift_coefficients(d).items():
            src = j[exists & (j + q >= 0) & (j + q < n)]
            out[src + q] += weight * c * x[src].astype(np.float64)
            mass[src + q] += weight * c
        out += (weight - mass)[:, None] * base  # what the row misses goes to the unshifted row
    return out / total


def combine_passes(mode: str, passes: Sequence[tuple[float, float]], rows: Sequence[np.ndarray], row_seconds: float,
                   segments: Sequence[int] | None = None) -> np.ndarray:
    """One file's rows of every pass (``passes``: ``(seconds, weight)``, the unshifted pass first; ``rows``: each
    ``(R, C)``) → the model's rows ``(R, C)`` float32. ``segments``: row counts of the blocks processed as files
    of their own (a shifted row never reaches across them); None: the whole file."""
    total = sum(w for _, w in passes)
    if mode == "roll":
        acc = sum(w * x.astype(np.float64) for (_, w), x in zip(passes, rows))
        return (acc / total).astype(np.float32)
    n = len(rows[0])
    bounds = np.cumsum([0] + list(segments if segments is not None else [n]))
    parts = [_shift_segment(passes, [x[a:b] for x in rows], row_seconds) for a, b in zip(bounds[:-1], bounds[1:])]
    return np.concatenate(parts, axis=0).astype(np.float32) if parts else rows[0].astype(np.float32)
