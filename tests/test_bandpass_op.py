"""The ``bandpass`` front-end op (BirdNET-Analyzer's Butterworth filter) on seeded tones: which filter each band
gives, the full band untouched, and the parameter checks a manifest gets before any audio."""

from __future__ import annotations

import numpy as np
import pytest

from birdinfer.ops import OPS, Block, Signal, Static
from birdinfer.ops.filters import BandpassParams, bandpass

RATE = 48000


def _tones(*hz: float) -> np.ndarray:
    t = np.arange(RATE * 2) / RATE
    noise = np.random.default_rng(0).normal(0, 1e-3, t.size)
    return (sum(np.sin(2 * np.pi * f * t) for f in hz) + noise).astype(np.float32)


def _level(y: np.ndarray, hz: float) -> float:
    """Amplitude of the tone at ``hz`` over the second half (the filter settled)."""
    half = y[y.size // 2 :]
    spectrum = np.abs(np.fft.rfft(half)) * 2 / half.size
    return float(spectrum[int(round(hz * half.size / RATE))])


def _run(y, **params) -> np.ndarray:
    block = Block(y.size, 1, RATE, y.size)
    return bandpass(Signal(y), BandpassParams(**params), block).data


@pytest.mark.parametrize("params, kept, cut", [
    ({"fmin": 2000.0}, [5000.0, 12000.0], [300.0]),                 # high-pass
    ({"fmax": 2000.0}, [300.0], [5000.0, 12000.0]),                 # low-pass
    ({"fmin": 2000.0, "fmax": 8000.0}, [5000.0], [300.0, 12000.0]),  # band-pass
])
def test_each_band_keeps_its_tones(params, kept, cut):
    y = _tones(300.0, 5000.0, 12000.0)
    out = _run(y, **params)
    assert out.dtype == np.float32 and out.shape == y.shape
    for hz in kept:
        assert _level(out, hz) > 0.9, (hz, _level(out, hz))
    for hz in cut:
        assert _level(out, hz) < 0.05, (hz, _level(out, hz))


def test_the_full_band_is_no_filter():
    y = _tones(300.0, 12000.0)
    assert _run(y) is y and _run(y, fmin=0.0, fmax=15000.0) is y
    assert not np.array_equal(_run(y, fmax=14999.0), y)


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError, match="fmin < fmax"):
        BandpassParams(fmin=5000.0, fmax=5000.0)
    with pytest.raises(ValueError, match="fmin < fmax"):
        BandpassParams(fmax=20000.0)
    entry = OPS["bandpass"]
    static = Static(sample_rate=16000, row_seconds=3.0)
    with pytest.raises(ValueError, match="9000 Hz is not below the Nyquist frequency of 16000 Hz"):
        entry.extras["infer"](static, BandpassParams(fmin=9000.0))
    assert entry.extras["infer"](static, BandpassParams()) == static
