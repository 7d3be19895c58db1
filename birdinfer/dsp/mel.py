"""Mel scales and filterbanks (librosa's construction: float64, then float32), and the banded split of a
filterbank that lets a mel projection touch only the FFT bins inside each filter's support."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["hz_to_mel_slaney", "mel_to_hz_slaney", "mel_filterbank", "MelBand", "MelBands", "mel_bands",
           "project_bands"]


def hz_to_mel_slaney(hz: np.ndarray) -> np.ndarray:
    """Slaney mel scale (linear below 1 kHz, logarithmic above), float64."""
    hz = np.asarray(hz, dtype=np.float64)
    f_sp = 200.0 / 3
    mels = hz / f_sp
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, np.log(6.4) / 27.0
    log_region = hz >= min_log_hz
    return np.where(log_region, min_log_mel + np.log(np.where(log_region, hz, 1.0) / min_log_hz) / logstep, mels)


def mel_to_hz_slaney(mels: np.ndarray) -> np.ndarray:
    """Inverse of :func:`hz_to_mel_slaney`, float64."""
    mels = np.asarray(mels, dtype=np.float64)
    f_sp = 200.0 / 3
    freqs = f_sp * mels
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, np.log(6.4) / 27.0
    log_region = mels >= min_log_mel
    freqs[log_region] = min_log_hz * np.exp(logstep * (mels[log_region] - min_log_mel))
    return freqs


def mel_filterbank(*, sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """Slaney-scale, Slaney-normalised triangular mel filterbank ``(n_mels, 1 + n_fft // 2)`` float32: the same
    numbers as ``librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)``."""
    fft_freqs = np.fft.rfftfreq(n=n_fft, d=1.0 / sample_rate)
    min_mel, max_mel = hz_to_mel_slaney(np.float64(fmin)), hz_to_mel_slaney(np.float64(fmax))
    mel_f = mel_to_hz_slaney(np.linspace(min_mel, max_mel, n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = np.subtract.outer(mel_f, fft_freqs)
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0, np.minimum(lower, upper)).astype(np.float32)
    enorm = 2.0 / (mel_f[2 : n_mels + 2] - mel_f[:n_mels])
    weights *= enorm[:, None]  # float32 *= float64, as librosa does it
    return weights


@dataclass(frozen=True)
class MelBand:
    """Consecutive filters ``[mel_lo, mel_hi)`` whose support is the FFT bins ``[bin_lo, bin_hi)``."""

    mel_lo: int
    mel_hi: int
    bin_lo: int
    bin_hi: int
    weights_t: np.ndarray  # (bin_hi - bin_lo, mel_hi - mel_lo) float32, C-contiguous


@dataclass(frozen=True)
class MelBands:
    """A filterbank ``(n_mels, n_bins)`` split into bands; ``[bin_lo, bin_hi)`` the bins any filter reads."""

    n_mels: int
    bands: tuple[MelBand, ...]
    bin_lo: int
    bin_hi: int


def mel_bands(filterbank: np.ndarray, *, column_cost: int = 1000) -> MelBands:
    """Partition the filters into bands of neighbouring filters minimising the product's work.

    Cost of a band = its filters × its bins (multiply-adds per column) + ``column_cost`` (the fixed cost of
    one more small product, in multiply-add equivalents). Exact dynamic programme, O(n_mels²) once."""
    n_mels, n_bins = filterbank.shape
    nonzero = filterbank != 0
    has = nonzero.any(axis=1)
    first = np.where(has, nonzero.argmax(axis=1), n_bins)
    last = np.where(has, n_bins - 1 - nonzero[:, ::-1].argmax(axis=1), -1)
    best = np.full(n_mels + 1, np.inf)
    best[0] = 0.0
    choice = np.zeros(n_mels + 1, dtype=np.int64)
    for hi in range(1, n_mels + 1):
        lo_bin, hi_bin = n_bins, -1
        for lo in range(hi - 1, -1, -1):  # band [lo, hi)
            lo_bin, hi_bin = min(lo_bin, first[lo]), max(hi_bin, last[lo])
            cost = best[lo] + (hi - lo) * max(0, hi_bin - lo_bin + 1) + column_cost
            if cost < best[hi]:
                best[hi], choice[hi] = cost, lo
    bands = []
    hi = n_mels
    while hi > 0:
        lo = int(choice[hi])
        b_lo, b_hi = int(first[lo:hi].min()), int(last[lo:hi].max()) + 1
        if b_hi <= b_lo:  # filters without support (tiny n_fft): one bin of zeros
            b_lo, b_hi = 0, 1
        bands.append(MelBand(lo, hi, b_lo, b_hi, np.ascontiguousarray(filterbank[lo:hi, b_lo:b_hi].T)))
        hi = lo
    bands.reverse()
    return MelBands(n_mels, tuple(bands), min(b.bin_lo for b in bands), max(b.bin_hi for b in bands))


def project_bands(spectra: np.ndarray, bands: MelBands, out: np.ndarray) -> np.ndarray:
    """Time-major spectra ``(T, bin_hi - bin_lo)`` (bins ``[bands.bin_lo, bands.bin_hi)``) → mel ``out``
    ``(T, n_mels)``: one small product per band."""
    for band in bands.bands:
        np.matmul(spectra[:, band.bin_lo - bands.bin_lo : band.bin_hi - bands.bin_lo], band.weights_t,
                  out=out[:, band.mel_lo : band.mel_hi])
    return out
