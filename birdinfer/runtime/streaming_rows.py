"""Rows of a streamed whole-file run: model outputs of consecutive blocks → the whole file's rows.

A model's row step (``timeline_rows``, ``clip_rows``) turns the outputs of a run of windows into rows.
With overlapping windows (or ``timeline_rows`` shifts) a row near a block's end also depends on windows
of the next block, and the step's edge rules (fewer windows covering a position, the first / last row's
shift rule) hold only at the file's real edges. :class:`RowStream` therefore keeps, per model, the outputs
of the last few windows (the model outputs, never the model inputs) and runs the model's block steps on
the held windows plus the new ones, emitting only the rows whose every window has run and that are not at
an edge of that run (unless it is the file's edge). Concatenated, the emitted rows are the whole-file rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Mapping

import numpy as np

from ..ops.base import WindowLayout
from ..ops.steps import block_rows

__all__ = ["RowStream", "context_rows"]


def context_rows(entry, arrays: Mapping[str, np.ndarray], layout: WindowLayout) -> int:
    """Rows of margin between the rows emitted and the edges of the windows held: the window length and
    lead, the largest ``timeline_rows`` shift (in rows), a window step and two rows to spare."""
    shift_frames = max((abs(int(s["frames"])) for step in entry.block_steps if step.name == "timeline_rows"
                        for s in step.params.shifts), default=0)
    frames = [a.shape[2] for a in arrays.values() if a.ndim == 3]
    per_row = min(frames) / layout.length_rows if frames and shift_frames else 1.0
    reach = layout.length_rows + abs(layout.lead_rows) + shift_frames / per_row
    return int(math.ceil(reach)) + layout.step_rows + 2


@dataclass
class _Held:
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    start: int = 0  # first window held
    emitted: int = 0  # rows emitted so far


class RowStream:
    """One recording's rows, block by block, for every model (see the module docstring)."""

    def __init__(self, n_rows: int):
        self.n_rows = n_rows
        self._held: dict[str, _Held] = {}

    def rows(self, entry, arrays: Mapping[str, np.ndarray], layout: WindowLayout, w0: int, w1: int, last: bool) -> np.ndarray:
        """Model ``entry``'s outputs for windows ``[w0, w1)`` → its next rows (possibly none, and all the
        remaining ones when ``last``)."""
        held = self._held.setdefault(entry.name, _Held(start=w0))
        if held.arrays:
            end = held.start + len(next(iter(held.arrays.values())))
            if end != w0:
                raise RuntimeError(f"model {entry.name!r}: windows {w0}.. arrive after windows ..{end}")
            held.arrays = {k: np.concatenate([held.arrays[k], v]) for k, v in arrays.items()}
        else:
            held.arrays = {k: np.asarray(v) for k, v in arrays.items()}
        step, ctx = layout.step_rows, context_rows(entry, arrays, layout)
        first = held.emitted
        stop = self.n_rows if last else max(first, w1 * step - ctx)
        begin = max(held.start, (first - ctx) // step)  # first window of this run
        n = stop - begin * step + (0 if last else 1)  # one row more: the last emitted row is not the run's edge
        batch = {k: v[begin - held.start :] for k, v in held.arrays.items()}
        rows = block_rows(entry.block_steps, batch, replace(layout, count=w1 - begin), n)
        rows = rows[first - begin * step : stop - begin * step]
        keep = max(held.start, (stop - ctx) // step)
        held.arrays = {k: v[keep - held.start :] for k, v in held.arrays.items()}
        held.start, held.emitted = keep, stop
        if last:
            del self._held[entry.name]
        return rows
