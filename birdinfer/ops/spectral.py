"""Spectral front-end ops of manifest version 2: ``stft``, ``resize_time``, ``mel``, ``db``, ``log``.

Registered in :data:`birdinfer.ops.base.OPS` (see :mod:`birdinfer.ops.frontend` and ``docs/manifest_v2.md``). The
numbers follow librosa (Slaney mel, ``power_to_db``) and torchaudio (``MelSpectrogram`` with HTK mel,
``normalized=True``, ``AmplitudeToDB``) as documented there; the tests compare them one by one.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace
from typing import Annotated, Literal

import numpy as np
import scipy.fft

from ..dsp import SpectrumTarget, mel_bands, resize_plan, resized_mel_power
from ..dsp.mel import hz_to_mel_slaney as _hz_to_mel_slaney, mel_filterbank, mel_to_hz_slaney as _mel_to_hz_slaney
from .base import OPS, Block, Scope, Signal, Static, _axes_of_scope, _infer_scope, _need
from .registry import Range

__all__ = ["StftParams", "MelParams", "DbParams", "stft", "analysis_window", "mel_basis"]


# ---------------------------------------------------------------------------------------------- stft
@dataclass(frozen=True)
class StftParams:
    n_fft: Annotated[int, Range(2, 65536)]
    hop_length: Annotated[int, Range(1, 65536)]
    win_length: Annotated[int, Range(1, 65536)] | None = None
    window: Literal["hann", "hann_symmetric", "hamming", "ones"] = "hann"
    center: bool = True
    pad_mode: Literal["constant", "reflect"] = "constant"
    normalized: bool = False
    power: Annotated[float, Range(1.0, 2.0)] = 2.0

    def __post_init__(self):
        if self.win_length is not None and self.win_length > self.n_fft:
            raise ValueError(f"win_length={self.win_length} must be <= n_fft={self.n_fft}")
        if self.power not in (1.0, 2.0):
            raise ValueError("power must be 1.0 (magnitude) or 2.0 (power)")


def analysis_window(p: StftParams) -> np.ndarray:
    """The window ``(n_fft,)`` float32, zero-padded in the middle when ``win_length < n_fft`` (torch.stft)."""
    m = p.win_length or p.n_fft
    n = np.arange(m, dtype=np.float64)
    if p.window == "ones":
        w = np.ones(m)
    else:
        period = m if p.window in ("hann", "hamming") else max(m - 1, 1)
        a = 0.5 if p.window.startswith("hann") else 0.54
        w = a - (1 - a) * np.cos(2.0 * np.pi * n / period)
    full = np.zeros(p.n_fft)
    left = (p.n_fft - m) // 2
    full[left : left + m] = w
    return full.astype(np.float32)


def stft(y: np.ndarray, p: StftParams, *, block_frames: int = 64, only: np.ndarray | None = None) -> np.ndarray:
    """``y`` ``(..., N)`` → power (or magnitude) spectrum ``(..., 1 + n_fft//2, T)`` float32 (a transposed view
    of time-major storage); with ``only`` (sorted frame indices) just those frames, in that order."""
    y = _padded(y, p)
    frames = np.lib.stride_tricks.sliding_window_view(y, p.n_fft, axis=-1)[..., :: p.hop_length, :]
    if only is not None:
        frames = frames[..., only, :]  # gathers only the frames asked for
    window = analysis_window(p)
    scale = _scale(p, window)
    lead = frames.shape[:-2]
    n_frames, bins = frames.shape[-2], p.n_fft // 2 + 1
    out = np.empty(lead + (n_frames, bins), dtype=np.float32)
    for index in np.ndindex(*lead):  # one signal at a time (no copy of a batch's overlapping frames)
        for at in range(0, n_frames, block_frames):
            chunk = frames[index][at : at + block_frames] * window
            spectrum = scipy.fft.rfft(chunk, axis=-1, overwrite_x=True)
            target = out[index][at : at + block_frames]
            if p.power == 1.0:
                np.abs(spectrum, out=target)
            else:  # |X|^2 on the interleaved (re, im) float32 view: square in place, add the pairs
                parts = spectrum.view(np.float32)
                np.square(parts, out=parts)
                np.add(parts[:, 0::2], parts[:, 1::2], out=target)
            if scale is not None:
                target *= scale
    return np.swapaxes(out, -1, -2)


def _padded(y: np.ndarray, p: StftParams) -> np.ndarray:
    """The signal as the frames read it: centred (``n_fft // 2`` on each side, zeros or reflected), then
    zero-extended to one whole frame when shorter."""
    y = np.asarray(y, dtype=np.float32)
    if p.center:
        half = p.n_fft // 2
        if p.pad_mode == "reflect" and y.shape[-1] <= half:
            raise ValueError(f"reflect padding needs more than {half} samples, got {y.shape[-1]}")
        if p.pad_mode == "reflect":
            y = np.pad(y, [(0, 0)] * (y.ndim - 1) + [(half, half)], mode="reflect")
        else:  # zeros (faster than np.pad)
            padded = np.zeros(y.shape[:-1] + (y.shape[-1] + 2 * half,), dtype=np.float32)
            padded[..., half : half + y.shape[-1]] = y
            y = padded
    if y.shape[-1] < p.n_fft:
        y = np.pad(y, [(0, 0)] * (y.ndim - 1) + [(0, p.n_fft - y.shape[-1])])
    return y


def _scale(p: StftParams, window: np.ndarray) -> np.float32 | None:
    """``normalized``: the spectrum divided by the window's energy (its square root for magnitudes)."""
    if not p.normalized:
        return None
    scale = 1.0 / float(np.sum(window.astype(np.float64) ** 2))
    return np.float32(math.sqrt(scale) if p.power == 1.0 else scale)


def _infer_stft(s: Static, p: StftParams) -> Static:
    _need(s, kind="wave", op="stft")
    length = None
    if s.windowed and s.length is not None:
        length = 1 + (s.length + (2 * (p.n_fft // 2) if p.center else 0) - p.n_fft) // p.hop_length
    fpr = s.sample_rate * s.row_seconds / p.hop_length
    return replace(s, kind="spec", n_fft=p.n_fft, freq=p.n_fft // 2 + 1, length=length,
                   frames_per_row=fpr if float(fpr).is_integer() else None)


@OPS.register("stft", StftParams, infer=_infer_stft)
def stft_op(x: Signal, p: StftParams, block: Block) -> Signal:
    fpr = block.row_samples / p.hop_length
    return replace(x, data=stft(x.data, p), kind="spec", hop=p.hop_length, n_fft=p.n_fft,
                   frames_per_row=fpr if float(fpr).is_integer() else None)


def n_stft_frames(n_samples: int, p: StftParams) -> int:
    padded = n_samples + (2 * (p.n_fft // 2) if p.center else 0)
    return 1 + (max(padded, p.n_fft) - p.n_fft) // p.hop_length



# ------------------------------------------------------------------------------------------- resize
@dataclass(frozen=True)
class ResizeParams:
    frames_per_row: Annotated[int, Range(1, 100000)]


def _infer_resize(s: Static, p: ResizeParams) -> Static:
    _need(s, kind="spec", windowed=False, op="resize_time")
    return replace(s, frames_per_row=float(p.frames_per_row))


@OPS.register("resize_time", ResizeParams, infer=_infer_resize)
def resize_time(x: Signal, p: ResizeParams, block: Block) -> Signal:
    i0, i1, frac = resize_plan(x.data.shape[-1], _width(block, p))
    return replace(x, data=_interpolate(x.data, i0, i1, frac), frames_per_row=float(p.frames_per_row))


def _width(block: Block, p: ResizeParams) -> int:
    return max(1, block.n_samples * p.frames_per_row // block.row_samples)


def _interpolate(data: np.ndarray, i0: np.ndarray, i1: np.ndarray, frac: np.ndarray) -> np.ndarray:
    out = data[..., i0] * (np.float32(1.0) - frac)
    out += data[..., i1] * frac
    return out


def stft_then_resize(x: Signal, sp: StftParams, rp: ResizeParams, block: Block) -> Signal:
    """``stft`` then ``resize_time`` on a whole signal, computing only the STFT frames the resize reads (about
    two per output column): the same numbers as the two ops one after the other. Used by the executor
    (:data:`FUSED`)."""
    i0, i1, frac = resize_plan(n_stft_frames(x.data.shape[-1], sp), _width(block, rp))
    needed = np.unique(np.concatenate([i0, i1]))
    spectrum = stft(x.data, sp, only=needed)
    out = _interpolate(spectrum, np.searchsorted(needed, i0), np.searchsorted(needed, i1), frac)
    return replace(stft_op(Signal(x.data[:0]), sp, block), data=out, pad_left=x.pad_left, pad_right=x.pad_right,
                   frames_per_row=float(rp.frames_per_row))


#: Pairs of ops the executor runs as one function on a whole (unwindowed) signal: same numbers, less work.
FUSED = {("stft", "resize_time"): stft_then_resize}


# ---------------------------------------------------------------------------------------------- mel
@dataclass(frozen=True)
class MelParams:
    n_mels: Annotated[int, Range(1, 4096)]
    fmin: Annotated[float, Range(0, 1e6)] = 0.0
    fmax: Annotated[float, Range(0, 1e6, low_open=True)] | None = None
    scale: Literal["slaney", "htk"] = "slaney"
    norm: Literal["slaney"] | None = "slaney"

    def __post_init__(self):
        if self.fmax is not None and self.fmax <= self.fmin:
            raise ValueError(f"need fmin < fmax, got fmin={self.fmin:g}, fmax={self.fmax:g}")


def mel_basis(sample_rate: int, n_fft: int, p: MelParams) -> np.ndarray:
    """Triangular mel filterbank ``(n_mels, 1 + n_fft//2)`` float32 (librosa's construction, float64 then float32)."""
    fmax = p.fmax if p.fmax is not None else sample_rate / 2
    if p.scale == "slaney" and p.norm == "slaney":
        return mel_filterbank(sample_rate=sample_rate, n_fft=n_fft, n_mels=p.n_mels, fmin=p.fmin, fmax=fmax)
    if p.scale == "htk":
        to_mel = lambda f: 2595.0 * np.log10(1.0 + np.asarray(f, np.float64) / 700.0)  # noqa: E731
        to_hz = lambda m: 700.0 * (10.0 ** (np.asarray(m, np.float64) / 2595.0) - 1.0)  # noqa: E731
    else:
        to_mel, to_hz = _hz_to_mel_slaney, _mel_to_hz_slaney
    fft_freqs = np.fft.rfftfreq(n=n_fft, d=1.0 / sample_rate)
    mel_f = to_hz(np.linspace(to_mel(p.fmin), to_mel(fmax), p.n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = np.subtract.outer(mel_f, fft_freqs)
    weights = np.maximum(0, np.minimum(-ramps[:-2] / fdiff[:-1, None], ramps[2:] / fdiff[1:, None]))
    if p.norm == "slaney":
        weights *= (2.0 / (mel_f[2 : p.n_mels + 2] - mel_f[: p.n_mels]))[:, None]
    return weights.astype(np.float32)


def _infer_mel(s: Static, p: MelParams) -> Static:
    _need(s, kind="spec", op="mel")
    if s.n_fft is None:
        raise ValueError("mel needs an stft before it")
    if p.fmax is not None and p.fmax > s.sample_rate / 2 + 1e-6:
        raise ValueError(f"fmax={p.fmax:g} is above the Nyquist frequency {s.sample_rate / 2:g} Hz (sample_rate / 2)")
    if p.fmax is None and p.fmin >= s.sample_rate / 2:
        raise ValueError(f"fmin={p.fmin:g} must be below fmax, which defaults to the Nyquist frequency "
                         f"{s.sample_rate / 2:g} Hz")
    return replace(s, freq=p.n_mels)


@functools.lru_cache(maxsize=64)
def _cached_basis(sample_rate: int, n_fft: int, p: MelParams) -> np.ndarray:
    return mel_basis(sample_rate, n_fft, p)


@functools.lru_cache(maxsize=64)
def _cached_bands(sample_rate: int, n_fft: int, p: MelParams):
    return mel_bands(_cached_basis(sample_rate, n_fft, p))


@OPS.register("mel", MelParams, infer=_infer_mel)
def mel(x: Signal, p: MelParams, block: Block) -> Signal:
    basis = _cached_basis(block.sample_rate, x.n_fft, p)
    # One 2-D BLAS product on time-major rows (the STFT's storage order); a batched matmul on the
    # transposed view would fall back to a slow loop. (A banded product over slices measured slower.)
    rows = np.swapaxes(x.data, -1, -2)
    if not rows.flags.c_contiguous:
        rows = np.ascontiguousarray(rows)
    out = rows.reshape(-1, rows.shape[-1]) @ basis.T
    return replace(x, data=np.swapaxes(out.reshape(rows.shape[:-1] + (basis.shape[0],)), -1, -2))


# ------------------------------------------------------------------------------- stft → resize → mel
Chain = tuple[StftParams, "ResizeParams | None", MelParams]


def frame_sharing_key(sp: StftParams) -> tuple:
    """Chains whose STFTs agree on everything but the hop read the same frames (a frame is "the frame
    starting at sample k"): the executor runs them together in :func:`stft_resize_mel`."""
    return (sp.n_fft, sp.win_length, sp.window, sp.center, sp.pad_mode, sp.normalized, sp.power)


def stft_resize_mel(x: Signal, chains: list[Chain], block: Block) -> list[Signal]:
    """``stft → resize_time → mel`` (or ``stft → mel``: resize ``None``) for several chains of one
    :func:`frame_sharing_key` on a whole (unwindowed) waveform: the numbers of the ops one after the other (to
    float rounding), computing only the frames the resizes read, once for all chains, and only the FFT bins
    each filterbank reads (:func:`birdinfer.dsp.resized_mel_power`). Used by the executor for every such prefix."""
    sp0 = chains[0][0]
    if any(frame_sharing_key(sp) != frame_sharing_key(sp0) for sp, _, _ in chains):
        raise ValueError("stft_resize_mel: the chains' STFTs differ in more than the hop")
    padded = _padded(x.data, sp0)
    window = analysis_window(sp0)
    targets = [SpectrumTarget(sp.hop_length, None if rp is None else _width(block, rp),
                              _cached_bands(block.sample_rate, sp.n_fft, mp)) for sp, rp, mp in chains]
    results = resized_mel_power(padded, window, targets, magnitude=sp0.power == 1.0)
    scale = _scale(sp0, window)
    out = []
    for (sp, rp, _), mel_rows in zip(chains, results):
        if scale is not None:
            mel_rows *= scale
        if rp is None:
            fpr = block.row_samples / sp.hop_length
            fpr = fpr if float(fpr).is_integer() else None  # as stft_op says it
        else:
            fpr = float(rp.frames_per_row)
        out.append(replace(x, data=np.swapaxes(mel_rows, -1, -2), kind="spec", hop=sp.hop_length, n_fft=sp.n_fft,
                           frames_per_row=fpr))
    return out


# ----------------------------------------------------------------------------------------- db / log
@dataclass(frozen=True)
class DbParams:
    top_db: Annotated[float, Range(0, 1000)] | None = 80.0
    ref: Annotated[float, Range(0, 1e30, low_open=True)] | Literal["max"] = 1.0
    amin: Annotated[float, Range(0, 1e6, low_open=True)] = 1e-10
    multiplier: Annotated[float, Range(0, 1000, low_open=True)] = 10.0
    scope: Scope = "auto"


@OPS.register("db", DbParams, infer=_infer_scope("db", "spec"))
def db(x: Signal, p: DbParams, block: Block) -> Signal:
    axes = _axes_of_scope(x.data, x.windows is not None, p.scope)
    st = block.file_stats  # whole-array maxima (streamed execution): of the input, and of its scaled log
    out = np.maximum(x.data, np.float32(p.amin))
    np.log10(out, out=out)
    out *= np.float32(p.multiplier)
    peak = None if st is None or p.top_db is None else np.float32(st["log_max"])
    if p.ref == "max":
        top = np.float32(st["max"]) if st is not None else np.max(x.data, axis=axes, keepdims=True)
        shift = np.float32(p.multiplier) * np.log10(np.maximum(top, np.float32(p.amin)))
    else:
        shift = np.float32(p.multiplier * math.log10(max(p.amin, p.ref))) if p.ref != 1.0 else None
    if shift is not None:
        out -= shift
        peak = None if peak is None else peak - shift  # x - c is monotonic: max(out) = max(log) - c
    if p.top_db is not None:
        peak = np.max(out, axis=axes, keepdims=True) if peak is None else peak
        np.maximum(out, peak - np.float32(p.top_db), out=out)
    return replace(x, data=out)


@dataclass(frozen=True)
class LogParams:
    eps: Annotated[float, Range(0, 1e6, low_open=True)] = 1e-6
    base: Literal["e", "10"] = "e"
    multiplier: Annotated[float, Range(-1e6, 1e6)] = 1.0


@OPS.register("log", LogParams, infer=lambda s, p: s)
def log(x: Signal, p: LogParams, block: Block) -> Signal:
    out = x.data + np.float32(p.eps)
    (np.log if p.base == "e" else np.log10)(out, out=out)
    if p.multiplier != 1.0:
        out *= np.float32(p.multiplier)
    return replace(x, data=out)
