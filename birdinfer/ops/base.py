"""The base types of every registered op and step: :class:`Signal` (an array and what later ops need to know),
:class:`Block` (the block being run), :class:`Static` (shapes checked when a manifest is loaded), the window layout,
and the :data:`OPS` registry the front-end op modules register into (:mod:`birdinfer.ops` imports them all).

A :class:`Signal` carries the array and what later ops need to know: waveform or spectrum, the padding
in samples, samples per spectrum frame, spectrum frames per output row, and, after ``windows``, the
window layout in rows (:class:`WindowLayout`). Arrays keep time last: waveform ``(N,)``, spectrum
``(F, T)``; after ``windows`` a batch ``(W, L)`` / ``(W, F, L)``; after ``channels`` ``(W, C, F, L)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Mapping

import numpy as np

from .registry import Registry

__all__ = ["OPS", "Signal", "WindowLayout", "Block", "Static", "Scope"]

OPS = Registry("front-end op", "op")


@dataclass(frozen=True)
class WindowLayout:
    """Windows in rows: window ``k`` targets rows ``[k·step_rows, (k+1)·step_rows)`` and starts ``lead_rows``
    before the first of them; it spans ``length_rows`` rows."""

    count: int
    length_rows: float
    step_rows: int
    lead_rows: float


@dataclass(frozen=True)
class Block:
    """The block being processed: its unpadded sample count and row count, and how a partial last row is
    treated (``rows.partial``: "drop", "pad_left", "pad_right"). ``file_stats``: set only by the streamed
    whole-file executor (:mod:`birdinfer.runtime.streaming`) for the file-scope op being called: the statistics of the
    whole array (gathered in a pass over the file) that the op then uses instead of its input's own.
    ``threads``: how many threads an op may use on this block (the executor's choice: the CPUs the front end has
    to itself; an op's result never depends on it)."""

    n_samples: int
    n_rows: int
    sample_rate: int
    row_samples: int
    partial: str = "drop"
    file_stats: Mapping[str, Any] | None = None
    threads: int = 1


@dataclass(frozen=True)
class Signal:
    data: np.ndarray
    kind: Literal["wave", "spec"] = "wave"
    windows: WindowLayout | None = None
    pad_left: int = 0  # samples of padding before the block's first sample (waveform)
    pad_right: int = 0
    hop: int | None = None  # samples per spectrum frame
    n_fft: int | None = None
    frames_per_row: float | None = None


@dataclass(frozen=True)
class Static:
    """What is known about a signal before any audio: used to validate a pipeline at load time."""

    sample_rate: int
    row_seconds: float
    kind: str = "wave"
    windowed: bool = False
    pad_left_s: float = 0.0
    pad_right_s: float = 0.0
    pad_fit: bool = False
    n_fft: int | None = None
    freq: int | None = None  # frequency bins (spectrum)
    length: int | None = None  # time length of one window (samples or frames), when fixed
    channels: int | None = None
    frames_per_row: float | None = None
    step_rows: int | None = None
    length_rows: float | None = None

    def shape(self) -> tuple[int, ...] | None:
        """Per-window shape (without the window axis), when known."""
        if not self.windowed or self.length is None:
            return None
        if self.kind == "wave":
            return (self.length,)
        if self.freq is None:
            return None
        return ((self.channels,) if self.channels else ()) + (self.freq, self.length)


def _need(static: Static, *, kind: str | None = None, windowed: bool | None = None, op: str) -> None:
    if kind is not None and static.kind != kind:
        raise ValueError(f"{op} needs a {'waveform' if kind == 'wave' else 'spectrum'} input, got a "
                         f"{'waveform' if static.kind == 'wave' else 'spectrum'} (put it {'before' if kind == 'wave' else 'after'} stft)")
    if windowed is not None and static.windowed != windowed:
        raise ValueError(f"{op} must come {'after' if windowed else 'before'} the windows op")


Scope = Literal["auto", "file", "window"]


def _axes_of_scope(x: np.ndarray, windowed: bool, scope: str = "auto") -> tuple[int, ...] | None:
    """Axes a statistic is taken over: each window (after ``windows``, ``scope`` "auto"/"window") or the whole
    array (before ``windows``, or ``scope`` "file": all windows of the block together)."""
    if scope == "window" and not windowed:
        raise ValueError("scope 'window' needs a windows op before")
    return tuple(range(1, x.ndim)) if windowed and scope != "file" else None


def _infer_scope(name: str, kind: str | None = None):
    def infer(s: Static, p) -> Static:
        if kind is not None:
            _need(s, kind=kind, op=name)
        if getattr(p, "scope", "auto") == "window" and not s.windowed:
            raise ValueError(f"{name} with scope 'window' must come after the windows op")
        return s
    return infer
