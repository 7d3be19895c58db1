"""STFT frames, the cv2 time resize and the fused mel kernel, in plain numpy.

:func:`resized_mel_power` computes, for several outputs that share one ``n_fft`` and window, what
``stft → resize_time → mel`` computes, at a fraction of the cost (figures: benchmarks/results/2026-12-06_frontend_one_engine.md):

* the time resize reads about two STFT frames per output column, so only those frames are transformed;
* a frame is "the frame starting at sample k": a hop-128 frame is the hop-64 frame at twice the index, so
  outputs of one ``n_fft`` share their frames;
* resize and mel projection are both linear: the spectra are interpolated first and projected afterwards,
  on the FFT bins the filterbank reads only, one small product per band of neighbouring filters;
* the work goes in blocks of frames so temporaries stay in the CPU cache and memory stays small.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import scipy.fft

from .mel import MelBands, project_bands

__all__ = ["stft_frames", "resized_width", "resize_plan", "hann_window", "power_spectra", "SpectrumTarget",
           "resized_mel_power", "power_to_db_chunks"]

_AMIN = 1e-10  # power floor before log10 (librosa.power_to_db's amin)


def stft_frames(n_samples: int, n_fft: int, hop_length: int) -> int:
    """Frames of a centred, zero-padded STFT (librosa ``center=True``): ``1 + N // hop`` for even ``n_fft``."""
    padded = n_samples + 2 * (n_fft // 2)
    return 1 + (padded - n_fft) // hop_length


def resized_width(n_samples: int, frames_per_window: int, window_samples: int) -> int:
    """Resized time columns ``W = max(1, N * F // window_samples)`` (0 for an empty signal)."""
    if n_samples == 0:
        return 0
    return max(1, (int(n_samples) * int(frames_per_window)) // int(window_samples))


def resize_plan(src_width: int, dst_width: int, start: int = 0, stop: int | None = None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """cv2 ``INTER_LINEAR`` along one axis: for each output column its two source columns and weights
    (output columns ``[start, stop)``, default all: a streamed block asks for its own columns only).

    Returns ``(i0, i1, frac)``: int64 ``(dst_width,)``, int64 ``(dst_width,)``, float32 ``(dst_width,)``;
    ``out[x] = a[i0[x]] * (1 - frac[x]) + a[i1[x]] * frac[x]``. As OpenCV (4.x) computes it for float
    images: the position ``(x + 0.5) * (src / dst) - 0.5`` in float64, ``i0 = floor``, the fraction then
    rounded to float32; positions left of 0 or at/after the last column are clamped there with weight 0.
    (Rounding the position itself to float32 would move a column by up to 2e-3 frames at 30k frames.)
    """
    if src_width <= 0 or dst_width <= 0:
        raise ValueError(f"resize widths must be positive, got src={src_width}, dst={dst_width}")
    scale = 1.0 / (float(dst_width) / float(src_width))  # cv2: scale_x = 1. / inv_scale_x
    stop = dst_width if stop is None else stop
    pos = (np.arange(start, stop, dtype=np.float64) + 0.5) * scale - 0.5
    i0 = np.floor(pos).astype(np.int64)
    frac = (pos - i0).astype(np.float32)
    left = i0 < 0
    i0[left], frac[left] = 0, 0.0
    right = i0 >= src_width - 1
    i0[right], frac[right] = src_width - 1, 0.0
    i1 = np.minimum(i0 + 1, src_width - 1)
    return i0, i1, frac


def hann_window(n_fft: int) -> np.ndarray:
    """Periodic ("fftbins") Hann window ``(n_fft,)`` float32: ``0.5 - 0.5 cos(2 pi n / n_fft)``."""
    n = np.arange(n_fft, dtype=np.float64)
    return (0.5 - 0.5 * np.cos(2.0 * np.pi * n / n_fft)).astype(np.float32)


def power_spectra(frames: np.ndarray, starts: np.ndarray, window: np.ndarray, bin_lo: int, bin_hi: int, *,
                  magnitude: bool = False, piece: int = 64, workers: int = 1) -> np.ndarray:
    """Power (or magnitude) spectra ``(len(starts), bin_hi - bin_lo)`` float32 of the windowed rows
    ``frames[starts]`` (``frames``: ``(n, n_fft)``, e.g. a sliding-window view), in cache-sized pieces."""
    power = np.empty((len(starts), bin_hi - bin_lo), dtype=np.float32)
    for at in range(0, len(starts), piece):
        chunk = frames[starts[at : at + piece]]  # gather: a copy, safe to overwrite
        chunk *= window
        spectrum = scipy.fft.rfft(chunk, axis=1, overwrite_x=True, workers=workers)
        # |X|^2 on the interleaved (re, im) float32 view: square in place, then add the pairs.
        parts = spectrum.view(np.float32)[:, 2 * bin_lo : 2 * bin_hi]
        np.square(parts, out=parts)
        target = power[at : at + piece]
        np.add(parts[:, 0::2], parts[:, 1::2], out=target)
        if magnitude:
            np.sqrt(target, out=target)
    return power


@dataclass(frozen=True)
class SpectrumTarget:
    """One output of :func:`resized_mel_power`: STFT hop, resized width (columns; ``None``: no resize, one column
    per STFT frame) and the banded filterbank."""

    hop: int
    width: int | None
    bands: MelBands


def resized_mel_power(padded: np.ndarray, window: np.ndarray, targets: Sequence[SpectrumTarget], *,
                      magnitude: bool = False, block_frames: int = 256, fft_frames: int = 64,
                      workers: int = 1) -> list[np.ndarray]:
    """``stft → resize_time → mel`` for every target, sharing frames: the padded signal ``(N,)`` float32 (frame
    ``t`` of a target covers ``padded[t * hop : t * hop + n_fft]``, ``n_fft = len(window)``) → per target the
    time-major mel spectra ``(width, n_mels)`` float32. Columns follow cv2's ``INTER_LINEAR`` over the
    ``1 + (N - n_fft) // hop`` frames (:func:`resize_plan`), or are those frames (``width=None``)."""
    n_fft = len(window)
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)  # the frame starting at sample k = row k
    reads = []
    for t in targets:
        n_frames = 1 + (len(padded) - n_fft) // t.hop
        if t.width is None:  # every frame, as it is
            frames_read = np.arange(n_frames, dtype=np.int64)
            reads.append((frames_read * t.hop, frames_read * t.hop, None))
        else:
            i0, i1, frac = resize_plan(n_frames, t.width)
            reads.append((i0 * t.hop, i1 * t.hop, frac))
    starts = np.unique(np.concatenate([s for r in reads for s in r[:2]]))  # every frame needed, once
    columns = []
    for s0, s1, frac in reads:
        weights = (None, None) if frac is None else ((np.float32(1.0) - frac)[:, None], frac[:, None])
        columns.append((np.searchsorted(starts, s0), np.searchsorted(starts, s1)) + weights)
    results = [np.empty((len(r[0]), t.bands.n_mels), dtype=np.float32) for t, r in zip(targets, reads)]
    bin_lo, bin_hi = min(t.bands.bin_lo for t in targets), max(t.bands.bin_hi for t in targets)
    for b_start in range(0, len(starts), block_frames):
        b_end = min(b_start + block_frames, len(starts))
        # Columns finished by this block: their later frame lies in it. Their earlier frame may lie a few
        # positions before the block; those few frames are transformed again (cheaper than carrying them).
        spans, first = [], b_start
        for p0, p1, _, _ in columns:
            c_lo, c_hi = int(np.searchsorted(p1, b_start)), int(np.searchsorted(p1, b_end))
            spans.append((c_lo, c_hi))
            if c_hi > c_lo:
                first = min(first, int(p0[c_lo]))
        power = power_spectra(frames, starts[first:b_end], window, bin_lo, bin_hi, magnitude=magnitude,
                              piece=fft_frames, workers=workers)
        for t, result, (p0, p1, w0, w1), (c_lo, c_hi) in zip(targets, results, columns, spans):
            if c_hi == c_lo:
                continue
            lo, hi = t.bands.bin_lo - bin_lo, t.bands.bin_hi - bin_lo
            mixed = power[p0[c_lo:c_hi] - first, lo:hi]  # time interpolation (cv2's rule), then the mel bands
            if w0 is not None:
                mixed *= w0[c_lo:c_hi]
                later = power[p1[c_lo:c_hi] - first, lo:hi]
                later *= w1[c_lo:c_hi]
                mixed += later
            project_bands(mixed, t.bands, result[c_lo:c_hi])
    return results


def power_to_db_chunks(mel_power: np.ndarray, *, n_chunks: int, top_db: float, out: np.ndarray | None = None) -> np.ndarray:
    """Time-major mel power ``(n_chunks * C, n_mels)`` → dB chunks ``(n_chunks, 1, n_mels, C)`` float32: per chunk
    ``10 * log10(max(1e-10, power))`` clipped below at the chunk's maximum minus ``top_db``
    (``librosa.power_to_db(chunk, ref=1.0, top_db=top_db)``)."""
    total, n_mels = mel_power.shape
    cols = total // n_chunks
    if out is None:
        out = np.empty((n_chunks, 1, n_mels, cols), dtype=np.float32)
    view = out[:, 0]
    np.maximum(mel_power.reshape(n_chunks, cols, n_mels).transpose(0, 2, 1), np.float32(_AMIN), out=view)
    np.log10(view, out=view)
    view *= np.float32(10.0)
    floor = view.max(axis=(1, 2)) - np.float32(top_db)
    np.maximum(view, floor[:, None, None], out=view)
    return out
