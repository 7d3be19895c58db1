"""Front-end ops on the waveform and on windows: ``pad``, ``normalize_wave``, ``windows``, ``normalize``.

Each op is a pure function ``op(signal, params, block) -> signal`` registered in :data:`birdinfer.ops.base.OPS`
with a frozen parameter dataclass and a shape rule ``infer(static, params) -> static`` used when a manifest is
loaded (so a bad pipeline fails before any audio is read). The parameters, defaults and shapes are documented
in ``docs/manifest_v2.md``; this module states the arithmetic. Spectral ops: :mod:`birdinfer.ops.spectral`;
window ops: :mod:`birdinfer.ops.window`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Annotated, Literal

import numpy as np

from .base import OPS, Block, Scope, Signal, Static, WindowLayout, _axes_of_scope, _infer_scope, _need
from .registry import VALUE, Range

#: Seconds of padding (one hour at most); frames of a window (a million at most).
Seconds = Annotated[float, Range(0, 3600)]
Frames = Annotated[int, Range(1, 10**6)]
#: An epsilon added to a divisor: 0 allowed (exact min-max scaling, as some solutions do it).
Eps = Annotated[float, Range(0, 1e3)]

__all__ = ["fit_padding", "pad", "normalize_wave", "windows", "normalize"]


# ----------------------------------------------------------------------------------------------- pad
@dataclass(frozen=True)
class PadParams:
    left_seconds: Seconds = 0.0
    right_seconds: Seconds = 0.0
    mode: Literal["constant", "reflect", "edge"] = "constant"
    value: Annotated[float, VALUE] = 0.0
    fit: dict[str, Frames] | None = None  # {"hop_length", "length_frames", "step_frames", "step_rows" (1)}

    def __post_init__(self):
        if self.fit is not None:
            need = {"hop_length", "length_frames", "step_frames"}
            keys = set(self.fit)
            if not need <= keys or not keys <= need | {"step_rows"}:
                raise ValueError(f"fit needs exactly hop_length, length_frames, step_frames (and optional step_rows), got {sorted(keys)}")
            if self.left_seconds or self.right_seconds:
                raise ValueError("give either fit or left_seconds/right_seconds")


def fit_padding(n_samples: int, n_rows: int, fit: dict[str, int]) -> int:
    """Samples added on each side so a centred STFT has exactly the frames of the windows of ``n_rows``."""
    n_windows = -(-n_rows // fit.get("step_rows", 1))
    total = (fit["length_frames"] + (n_windows - 1) * fit["step_frames"] - 1) * fit["hop_length"]
    return max(0, -(-(total - n_samples) // 2))


def _infer_pad(s: Static, p: PadParams) -> Static:
    _need(s, kind="wave", windowed=False, op="pad")
    if p.fit is not None:
        return replace(s, pad_fit=True)
    return replace(s, pad_left_s=s.pad_left_s + p.left_seconds, pad_right_s=s.pad_right_s + p.right_seconds)


@OPS.register("pad", PadParams, infer=_infer_pad)
def pad(x: Signal, p: PadParams, block: Block) -> Signal:
    y = x.data
    if p.fit is not None:
        left = right = fit_padding(len(y), block.n_rows, p.fit)
    else:
        left, right = round(p.left_seconds * block.sample_rate), round(p.right_seconds * block.sample_rate)
    if p.mode == "constant":
        out = np.full(len(y) + left + right, p.value, dtype=np.float32)
        out[left : left + len(y)] = y
    else:
        out = np.pad(y, (left, right), mode="reflect" if p.mode == "reflect" else "edge").astype(np.float32, copy=False)
    return replace(x, data=out, pad_left=x.pad_left + left, pad_right=x.pad_right + right)


# ------------------------------------------------------------------------------------ normalize_wave
@dataclass(frozen=True)
class WaveNormParams:
    method: Literal["peak", "zscore", "rms"] = "peak"
    eps: Eps = 1e-8


def _infer_wave_norm(s: Static, p: WaveNormParams) -> Static:
    _need(s, kind="wave", op="normalize_wave")
    return s


@OPS.register("normalize_wave", WaveNormParams, infer=_infer_wave_norm)
def normalize_wave(x: Signal, p: WaveNormParams, block: Block) -> Signal:
    y = x.data.astype(np.float32, copy=False)
    axis, st = -1, block.file_stats  # st: the whole waveform's statistics (streamed execution)
    if p.method == "peak":  # librosa.util.normalize: a silent signal stays as it is
        if st is not None:
            peak = np.float32(st["peak"])
        else:
            peak = np.abs(y).max(axis=axis, keepdims=True) if y.size else np.ones(y.shape[:-1] + (1,), np.float32)
        peak = np.where(peak < np.finfo(np.float32).tiny, np.float32(1.0), peak)
        out = y / peak
    elif p.method == "zscore":
        mean = st["mean"] if st is not None else y.mean(axis=axis, keepdims=True, dtype=np.float64)
        std = st["std"] if st is not None else y.std(axis=axis, keepdims=True, dtype=np.float64)
        out = (y - np.asarray(mean, np.float32)) / np.asarray(std + p.eps, np.float32)
    else:
        rms = st["rms"] if st is not None else np.sqrt(np.mean(np.square(y, dtype=np.float64), axis=axis, keepdims=True))
        out = y / np.asarray(rms + p.eps, np.float32)
    return replace(x, data=out.astype(np.float32, copy=False))


# ------------------------------------------------------------------------------------------- windows
@dataclass(frozen=True)
class WindowsParams:
    length_seconds: Annotated[float, Range(0, 3600, low_open=True)] | None = None
    step_seconds: Annotated[float, Range(0, 3600, low_open=True)] | None = None
    lead_seconds: Annotated[float, Range(-3600, 3600)] | Literal["centre"] = 0.0
    length_frames: Frames | None = None
    step_frames: Frames | None = None
    lead_frames: Annotated[float, Range(-10**6, 10**6)] | Literal["centre"] = 0.0
    frames_per_row: Annotated[float, Range(0, 100000, low_open=True)] | None = None
    fill: Annotated[float, VALUE] = 0.0

    def __post_init__(self):
        seconds = self.length_seconds is not None or self.step_seconds is not None
        frames = self.length_frames is not None or self.step_frames is not None
        if seconds == frames:
            raise ValueError("give length_seconds and step_seconds (waveform) or length_frames and step_frames (spectrum)")
        if seconds and (self.length_seconds is None or self.step_seconds is None):
            raise ValueError("give both length_seconds and step_seconds")
        if frames and (self.length_frames is None or self.step_frames is None):
            raise ValueError("give both length_frames and step_frames")


def _step_rows(step: float, row: float, what: str) -> int:
    rows = step / row
    if abs(rows - round(rows)) > 1e-9 or round(rows) < 1:
        raise ValueError(f"the window step ({what}) must be a whole number of rows (row = {row:g}), got {rows:g} rows")
    return int(round(rows))


def _infer_windows(s: Static, p: WindowsParams) -> Static:
    _need(s, windowed=False, op="windows")
    if p.length_seconds is not None:
        _need(s, kind="wave", op="windows with length_seconds")
        step_rows = _step_rows(p.step_seconds, s.row_seconds, f"{p.step_seconds} s")
        lead = (p.length_seconds - p.step_seconds) / 2 if p.lead_seconds == "centre" else p.lead_seconds
        if lead > s.pad_left_s + 1e-9 and not s.pad_fit:
            raise ValueError(f"window longer than the padding allows: windows start {lead:g} s before their row but the "
                             f"waveform is padded by only {s.pad_left_s:g} s on the left (add a pad op)")
        need_right = p.length_seconds - lead - p.step_seconds
        if need_right > s.pad_right_s + 1e-9 and not s.pad_fit:
            raise ValueError(f"window longer than the padding allows: the last window reaches {need_right:g} s past the "
                             f"file's last row but the waveform is padded by only {s.pad_right_s:g} s on the right")
        length = round(p.length_seconds * s.sample_rate)
        return replace(s, windowed=True, length=length, step_rows=step_rows, length_rows=p.length_seconds / s.row_seconds)
    _need(s, kind="spec", op="windows with length_frames")
    fpr = p.frames_per_row if p.frames_per_row is not None else s.frames_per_row
    if fpr is None:
        raise ValueError("frames_per_row is needed (spectrum frames per output row; resize_time sets it)")
    step_rows = _step_rows(p.step_frames, fpr, f"{p.step_frames} frames")
    return replace(s, windowed=True, length=p.length_frames, frames_per_row=fpr, step_rows=step_rows,
                   length_rows=p.length_frames / fpr)


def _time_view(x: np.ndarray, starts_at: int, length: int, step: int, count: int) -> np.ndarray:
    """Windows ``[starts_at + k·step, + length)`` of the last axis as a strided view ``(count, ..., length)``."""
    view = np.lib.stride_tricks.sliding_window_view(x[..., starts_at:], length, axis=-1)[..., ::step, :][..., :count, :]
    return np.moveaxis(view, -2, 0)


def _cut(x: np.ndarray, start: int, length: int, step: int, count: int, fill: float) -> np.ndarray:
    """Windows of the last axis, starting at ``start`` (may be < 0), filling outside the array with ``fill``."""
    end = start + (count - 1) * step + length
    n = x.shape[-1]
    if start >= 0 and end <= n:
        return _time_view(x, start, length, step, count)
    before, after = max(0, -start), max(0, end - n)
    padded = np.full(x.shape[:-1] + (n + before + after,), fill, dtype=np.float32)
    padded[..., before : before + n] = x
    return _time_view(padded, start + before, length, step, count)


@OPS.register("windows", WindowsParams, infer=_infer_windows)
def windows(x: Signal, p: WindowsParams, block: Block) -> Signal:
    if p.length_seconds is not None:
        sr = block.sample_rate
        step_rows = round(p.step_seconds / (block.row_samples / sr))
        length, step = round(p.length_seconds * sr), round(p.step_seconds * sr)
        lead = (length - step) / 2 if p.lead_seconds == "centre" else p.lead_seconds * sr
        count = max(1, -(-block.n_rows // step_rows))
        data = _cut(x.data, x.pad_left - int(round(lead)), length, step, count, p.fill)
        tail = block.n_samples % block.row_samples
        if block.partial == "pad_left" and tail and block.n_samples > block.row_samples * (block.n_rows - 1):
            # the partial last row's samples are right-aligned in the last window (zeros first)
            data = np.array(data)
            shift = block.row_samples - tail
            last = data[-1].copy()
            data[-1] = p.fill
            data[-1, shift:] = last[: length - shift]
        layout = WindowLayout(count, length / block.row_samples, step_rows, lead / block.row_samples)
    else:
        fpr = p.frames_per_row if p.frames_per_row is not None else x.frames_per_row
        step_rows = round(p.step_frames / fpr)
        lead = (p.length_frames - p.step_frames) / 2 if p.lead_frames == "centre" else float(p.lead_frames)
        count = max(1, -(-block.n_rows // step_rows))
        data = _cut(x.data, 0, p.length_frames, p.step_frames, count, p.fill)
        layout = WindowLayout(count, p.length_frames / fpr, step_rows, lead / fpr)
        x = replace(x, frames_per_row=fpr)
    return replace(x, data=data, windows=layout)


# ----------------------------------------------------------------------------------------- normalize
@dataclass(frozen=True)
class NormParams:
    method: Literal["none", "zscore", "minmax", "zscore_minmax", "affine", "clamp"]
    eps: Eps = 1e-6
    ddof: Annotated[int, Range(0, 1)] = 1
    scale: Annotated[float, VALUE] = 1.0
    offset: Annotated[float, VALUE] = 0.0
    clip: tuple[Annotated[float, VALUE], Annotated[float, VALUE]] | None = None
    scope: Scope = "auto"

    def __post_init__(self):
        if self.clip is not None and self.clip[0] > self.clip[1]:
            raise ValueError("clip must be [low, high] with low <= high")


@OPS.register("normalize", NormParams, infer=_infer_scope("normalize"))
def normalize(x: Signal, p: NormParams, block: Block) -> Signal:
    axes = _axes_of_scope(x.data, x.windows is not None, p.scope)
    v = x.data.astype(np.float32)
    st = block.file_stats  # the whole array's statistics (streamed execution): mean, std, low, high of the input
    if st is not None:
        low, high = np.float32(st.get("low", 0.0)), np.float32(st.get("high", 0.0))
    if p.method in ("zscore", "zscore_minmax"):
        if st is not None:
            mean, std = np.float32(st["mean"]), np.float32(st["std"])
        else:
            mean = v.mean(axis=axes, keepdims=True, dtype=np.float64).astype(np.float32)
            std = v.std(axis=axes, keepdims=True, dtype=np.float64, ddof=p.ddof).astype(np.float32)
        v = (v - mean) / (std + np.float32(p.eps))
        if st is not None:  # (v - mean)/s is monotonic in float32: the extremes map to the extremes
            low, high = (low - mean) / (std + np.float32(p.eps)), (high - mean) / (std + np.float32(p.eps))
    if p.method in ("minmax", "zscore_minmax"):
        if st is None:
            low, high = v.min(axis=axes, keepdims=True), v.max(axis=axes, keepdims=True)
        v = (v - low) / (high - low + np.float32(p.eps))
    if p.method in ("affine", "clamp"):
        v = v * np.float32(p.scale) + np.float32(p.offset)
        clip = p.clip if p.clip is not None else ((0.0, 1.0) if p.method == "clamp" else None)
        if clip is not None:
            v = np.clip(v, np.float32(clip[0]), np.float32(clip[1]))
    return replace(x, data=v.astype(np.float32, copy=False))
