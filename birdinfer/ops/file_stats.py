"""Statistics of the file-scope front-end ops, gathered piece by piece over a recording.

A whole-file spec (``block_seconds: null``) has ops whose result depends on the whole array they see:
``db`` before ``windows`` or with ``scope: "file"`` (the maximum for ``top_db`` and ``ref: "max"``),
``normalize`` the same way (mean, standard deviation, minimum, maximum) and ``normalize_wave`` before
``windows`` (peak, mean / standard deviation, RMS of the whole waveform). :mod:`birdinfer.runtime.streaming`
feeds each piece of that array (exactly the values the whole-file run computes there) to an
:class:`Accumulator`; :meth:`Accumulator.result` is then handed to the op as ``Block.file_stats``.

Maxima and minima combine exactly. Means and standard deviations are merged in float64 with Chan's
pairwise rule (no sum-of-squares cancellation), then rounded to float32 as the ops round theirs; the
result equals the one-shot float64 statistic to ~1e-15 relative.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["needs_file_stats", "Accumulator"]


def needs_file_stats(name: str, params, windowed: bool) -> bool:
    """Does op ``name`` (at a position before / after ``windows``) take a statistic of the whole array?"""
    whole = not windowed or getattr(params, "scope", "auto") == "file"
    if name == "db":
        return whole and (params.ref == "max" or params.top_db is not None)
    if name == "normalize":
        return whole and params.method in ("zscore", "minmax", "zscore_minmax")
    if name == "normalize_wave":
        return not windowed
    return False


class _Moments:
    """Count, mean and sum of squared deviations (float64), merged piece by piece (Chan et al.)."""

    def __init__(self):
        self.n, self.mean, self.m2 = 0, 0.0, 0.0

    def add(self, x: np.ndarray) -> None:
        n = x.size
        mean = float(np.mean(x, dtype=np.float64))
        d = x.astype(np.float64).ravel()
        d -= mean
        m2 = float(np.dot(d, d))
        total = self.n + n
        delta = mean - self.mean
        self.mean += delta * n / total
        self.m2 += m2 + delta * delta * self.n * n / total
        self.n = total

    def std(self, ddof: int) -> float:
        return math.sqrt(self.m2 / (self.n - ddof)) if self.n > ddof else float("nan")


class Accumulator:
    """The statistic of one file-scope op over the pieces of its input array."""

    def __init__(self, name: str, params):
        self.name, self.params = name, params
        self.moments = _Moments()
        self.low, self.high, self.peak, self.log_max, self.squares = math.inf, -math.inf, 0.0, -math.inf, 0.0

    def add(self, x: np.ndarray) -> None:
        if x.size == 0:
            return
        p = self.params
        if self.name == "db":
            if p.ref == "max":
                self.high = max(self.high, float(np.max(x)))
            if p.top_db is not None:  # the op's own float32 arithmetic, so its maximum is the whole run's
                scaled = np.maximum(x, np.float32(p.amin))
                np.log10(scaled, out=scaled)
                scaled *= np.float32(p.multiplier)
                self.log_max = max(self.log_max, float(np.max(scaled)))
        elif self.name == "normalize":
            v = x.astype(np.float32, copy=False)
            if p.method != "minmax":
                self.moments.add(v)
            self.low, self.high = min(self.low, float(np.min(v))), max(self.high, float(np.max(v)))
        else:  # normalize_wave
            y = x.astype(np.float32, copy=False)
            if p.method == "peak":
                self.peak = max(self.peak, float(np.max(np.abs(y))))
            elif p.method == "zscore":
                self.moments.add(y)
            else:
                self.moments.n += y.size
                self.squares += float(np.sum(np.square(y, dtype=np.float64)))

    def result(self) -> dict:
        p = self.params
        if self.name == "db":
            return {"max": np.float32(self.high), "log_max": np.float32(self.log_max)}
        if self.name == "normalize":
            out = {"low": np.float32(self.low), "high": np.float32(self.high)}
            if p.method != "minmax":
                out.update(mean=np.float32(self.moments.mean), std=np.float32(self.moments.std(p.ddof)))
            return out
        if p.method == "peak":
            return {"peak": np.float32(self.peak)}
        if p.method == "zscore":
            return {"mean": self.moments.mean, "std": self.moments.std(0)}
        return {"rms": math.sqrt(self.squares / max(self.moments.n, 1))}
