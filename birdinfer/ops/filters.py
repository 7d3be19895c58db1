"""Filters on the whole waveform: ``bandpass``, BirdNET-Analyzer's Butterworth filter (``--fmin`` / ``--fmax``).

BirdNET-Analyzer 2.4.0 (``audio.bandpass``) filters the decoded signal at 48 kHz before it cuts windows: a
Butterworth filter of order 5 (``scipy.signal.butter``, ``b, a`` form) run forward once with ``lfilter`` from a
zero state, in float64, the result rounded to float32. Which filter depends on the band against its full
band ``band`` (0–15 000 Hz): ``fmin`` above its low end and ``fmax`` at its high end: high-pass at ``fmin``;
``fmin`` at the low end and ``fmax`` below the high end: low-pass at ``fmax``; both inside: band-pass; the
full band: no filter (the signal untouched). This op does the same on the block it is given; it is causal and
stateful, so it belongs in a whole-file spec (``block_seconds: null``) before ``pad`` and ``windows``. Streamed
(:mod:`birdinfer.runtime.streaming`), the same filter runs over the decoded pieces in order with its state
carried from piece to piece (:class:`PieceFilter`): the same numbers as one ``lfilter`` over the whole file.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from typing import Annotated

import numpy as np

from .base import OPS, Block, Signal, Static, _need
from .registry import Range

__all__ = ["BandpassParams", "bandpass", "is_identity", "identity_of", "PieceFilter"]

Hertz = Annotated[float, Range(0, 10**6)]


@dataclass(frozen=True)
class BandpassParams:
    fmin: Hertz = 0.0
    fmax: Hertz = 15000.0
    order: Annotated[int, Range(1, 20)] = 5
    band: tuple[Hertz, Hertz] = (0.0, 15000.0)  # the full band: fmin at band[0] and fmax at band[1] filter nothing

    def __post_init__(self):
        if not self.band[0] < self.band[1]:
            raise ValueError(f"band must be [low, high] with low < high, got {list(self.band)}")
        if not self.band[0] <= self.fmin < self.fmax <= self.band[1]:
            raise ValueError(f"needs band[0] <= fmin < fmax <= band[1], got fmin {self.fmin:g}, fmax {self.fmax:g}, "
                             f"band {list(self.band)}")


def is_identity(p: BandpassParams) -> bool:
    """Whether the filter leaves the signal as it is (the full band)."""
    return p.fmin <= p.band[0] and p.fmax >= p.band[1]


def _infer(s: Static, p: BandpassParams) -> Static:
    _need(s, kind="wave", windowed=False, op="bandpass")
    edges = ([p.fmin] if p.fmin > p.band[0] else []) + ([p.fmax] if p.fmax < p.band[1] else [])
    for edge in edges:
        if edge >= s.sample_rate / 2:
            raise ValueError(f"the filter's edge {edge:g} Hz is not below the Nyquist frequency of {s.sample_rate} Hz")
    return s


@functools.lru_cache(maxsize=16)
def _coefficients(fmin: float, fmax: float, order: int, low: float, high: float, rate: int):
    from scipy.signal import butter

    nyquist = 0.5 * rate
    if fmin > low and fmax >= high:
        return butter(order, fmin / nyquist, btype="high")
    if fmax < high and fmin <= low:
        return butter(order, fmax / nyquist, btype="low")
    return butter(order, [fmin / nyquist, fmax / nyquist], btype="band")


@OPS.register("bandpass", BandpassParams, infer=_infer)
def bandpass(x: Signal, p: BandpassParams, block: Block) -> Signal:
    if is_identity(p):
        return x
    return replace(x, data=PieceFilter(p, block.sample_rate)(x.data))  # the whole block as one piece


def identity_of(p: BandpassParams) -> BandpassParams:
    """The same parameters over the full band: the op then returns its input."""
    return replace(p, fmin=p.band[0], fmax=p.band[1])


class PieceFilter:
    """The op's filter over consecutive pieces of one recording, from the first sample on: each call filters
    the next piece, the filter's state carried over (``lfilter`` with ``zi``), so the pieces put together
    equal the op on the whole recording."""

    def __init__(self, p: BandpassParams, sample_rate: int):
        from scipy.signal import lfilter

        self._lfilter = lfilter
        self.b, self.a = _coefficients(p.fmin, p.fmax, p.order, p.band[0], p.band[1], sample_rate)
        self.state = np.zeros(max(len(self.a), len(self.b)) - 1)

    def __call__(self, piece: np.ndarray) -> np.ndarray:
        y, self.state = self._lfilter(self.b, self.a, piece, zi=self.state)
        return y.astype(np.float32)
