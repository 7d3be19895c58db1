"""Post-model steps of manifest version 2: model outputs → rows, row steps, and combine steps.

Three registries, each of small pure functions with a frozen parameter dataclass (``docs/manifest_v2.md``):

* :data:`MODEL_STEPS` work on one block's named model outputs (a :class:`Outputs`): ``sigmoid``, ``softmax``,
  ``reduce_frames``, ``blend``, and the row steps ``timeline_rows`` / ``clip_rows`` (output → rows ``(n_rows, C)``).
* :data:`ROW_STEPS` work on one file's rows ``(R, C)``: ``smooth``, ``gaussian_smooth``, ``box_mean``,
  ``file_scale``, ``file_max_blend``, ``power``, ``clip_values``. :data:`COMBINE_STEPS` merge an ensemble
  group's members: ``weighted_mean``, ``mean`` (``rank_mean``: :mod:`birdinfer.ops.submission`). Model steps also have a name rule ``names(known,
  params) -> known`` used when a manifest is loaded (a step naming an output that does not exist fails then).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Annotated, Literal, Mapping

import numpy as np
import scipy.ndimage
from scipy.special import expit

from ..errors import ParameterError
from .base import WindowLayout
from .registry import VALUE, Range, Registry

#: A weight of a blend, a shift or a kernel tap.
Weight = Annotated[float, Range(-1e6, 1e6)]

__all__ = ["MODEL_STEPS", "ROW_STEPS", "COMBINE_STEPS", "Outputs", "ROW_PRODUCING", "block_rows"]

MODEL_STEPS = Registry("model step", "step")
ROW_STEPS = Registry("row step", "step")
COMBINE_STEPS = Registry("combine step", "step")
#: Model steps that produce the model's rows.
ROW_PRODUCING = ("timeline_rows", "clip_rows")


@dataclass(frozen=True)
class Outputs:
    """One block's model outputs by name (``(W, C)`` clip or ``(W, C, T')`` frame arrays), the window
    layout of the model's input, the block's row count, and the rows once a row step made them."""

    arrays: Mapping[str, np.ndarray]
    layout: WindowLayout
    n_rows: int
    rows: np.ndarray | None = None

    def get(self, name: str) -> np.ndarray:
        return self.arrays[name]

    def with_array(self, name: str, value: np.ndarray) -> "Outputs":
        return replace(self, arrays={**self.arrays, name: value})


def block_rows(steps, arrays: Mapping[str, np.ndarray], layout: WindowLayout, n_rows: int) -> np.ndarray:
    """A model's outputs on one block's windows through its block steps (up to its row step) → rows."""
    state = Outputs(arrays, layout, n_rows)
    for step in steps:
        state = step(state)
    return state.rows


def _need_names(known: dict, *names: str, kind: str | None = None) -> None:
    for n in names:
        if n not in known:
            raise ValueError(f"no model output named {n!r} (known: {', '.join(known)})")
        if kind is not None and known[n] != kind:
            raise ValueError(f"output {n!r} is a {known[n]} output; this step needs a {kind} output")


# ----------------------------------------------------------------------------------- elementwise
@dataclass(frozen=True)
class OutputParams:
    output: str = ""  # "" = the model's first output


def _names_same(known: dict, p) -> dict:
    _need_names(known, p.output)
    return known


@dataclass(frozen=True)
class SigmoidParams:
    output: str = ""
    offset: Annotated[float, VALUE] = 0.0  # added to the logits first (BirdNET's sensitivity s: (s − 1)·10)
    clip: tuple[Annotated[float, VALUE], Annotated[float, VALUE]] | None = None  # then clipped to [low, high] (BirdNET: [-20, 20])


@MODEL_STEPS.register("sigmoid", SigmoidParams, names=_names_same)
def sigmoid(o: Outputs, p: SigmoidParams) -> Outputs:
    x = o.get(p.output).astype(np.float32, copy=False) + np.float32(p.offset)
    return o.with_array(p.output, expit(x if p.clip is None else np.clip(x, np.float32(p.clip[0]), np.float32(p.clip[1]))))


@dataclass(frozen=True)
class SoftmaxParams:
    output: str = ""
    axis: Annotated[int, Range(-3, 2)] = 1


@MODEL_STEPS.register("softmax", SoftmaxParams, names=_names_same)
def softmax(o: Outputs, p: SoftmaxParams) -> Outputs:
    x = o.get(p.output).astype(np.float32)
    x = np.exp(x - x.max(axis=p.axis, keepdims=True))
    return o.with_array(p.output, x / x.sum(axis=p.axis, keepdims=True))


@dataclass(frozen=True)
class ReduceFramesParams:
    into: str
    output: str = ""
    how: Literal["max", "mean"] = "max"


def _names_reduce(known: dict, p: ReduceFramesParams) -> dict:
    _need_names(known, p.output, kind="frame")
    return {**known, p.into: "clip"}


@MODEL_STEPS.register("reduce_frames", ReduceFramesParams, names=_names_reduce)
def reduce_frames(o: Outputs, p: ReduceFramesParams) -> Outputs:
    x = o.get(p.output)
    return o.with_array(p.into, x.max(axis=2) if p.how == "max" else x.mean(axis=2, dtype=np.float32))


@dataclass(frozen=True)
class BlendParams:
    weights: dict[str, Weight]
    into: str

    def __post_init__(self):
        if not self.weights:
            raise ValueError("weights needs at least one output")


def _names_blend(known: dict, p: BlendParams) -> dict:
    _need_names(known, *p.weights)
    kinds = {known[n] for n in p.weights}
    if len(kinds) != 1:
        raise ValueError(f"blend mixes outputs of different kinds {sorted(kinds)}: reduce frame outputs first")
    return {**known, p.into: kinds.pop()}


@MODEL_STEPS.register("blend", BlendParams, names=_names_blend)
def blend(o: Outputs, p: BlendParams) -> Outputs:
    total = None
    for name, weight in p.weights.items():
        term = np.float32(weight) * o.get(name)
        total = term if total is None else total + term
    return o.with_array(p.into, total)


# ----------------------------------------------------------------------------------------- rows
@dataclass(frozen=True)
class TimelineParams:
    output: str = ""
    overlap: Literal["mean", "max"] = "mean"
    reduce: Literal["max", "mean"] = "max"
    shifts: tuple[dict[str, Weight], ...] = ()
    accumulate: Literal["float32", "float16"] = "float32"

    def __post_init__(self):
        for s in self.shifts:
            if set(s) != {"frames", "weight"} or float(s["frames"]) != int(s["frames"]):
                raise ValueError("each shift is {\"frames\": whole number, \"weight\": number}")


def _names_rows(known: dict, p) -> dict:
    _need_names(known, p.output, kind="frame" if isinstance(p, TimelineParams) else "clip")
    return {**known, "rows": "rows"}


def _whole(value: float, what: str) -> int:
    if abs(value - round(value)) > 1e-6:
        raise ParameterError(f"timeline_rows: {what} must be a whole number of output frames, got {value:g}")
    return int(round(value))


@MODEL_STEPS.register("timeline_rows", TimelineParams, names=_names_rows)
def timeline_rows(o: Outputs, p: TimelineParams) -> Outputs:
    """Frame outputs ``(W, C, T')`` of overlapping windows → rows ``(n_rows, C)`` (see docs/manifest_v2.md)."""
    x = o.get(p.output)
    n_windows, n_classes, frames = x.shape
    lay = o.layout
    fpr = _whole(frames / lay.length_rows, "frames per row (T' / window rows)")
    step, lead = _whole(lay.step_rows * fpr, "the window step"), _whole(lay.lead_rows * fpr, "the window lead")
    dtype = np.float16 if p.accumulate == "float16" else np.float32
    total = (n_windows - 1) * step + frames
    values = x.astype(dtype)
    if p.overlap == "mean":
        acc = np.zeros((total, n_classes), dtype=dtype)
        count = np.zeros((total, 1), dtype=dtype)
        for k in range(n_windows):
            acc[k * step : k * step + frames] += values[k].T
            count[k * step : k * step + frames] += dtype(1)
        timeline = acc / np.maximum(count, dtype(1))
    else:
        timeline = np.full((total, n_classes), -np.inf, dtype=dtype)
        for k in range(n_windows):
            np.maximum(timeline[k * step : k * step + frames], values[k].T, out=timeline[k * step : k * step + frames])
    n_rows = o.n_rows
    if lead < 0 or lead + n_rows * fpr > total:
        raise ParameterError(f"timeline_rows: {n_windows} windows of {frames} frames do not cover {n_rows} rows "
                             f"(lead {lead} frames, {fpr} frames per row)")

    def reduce(offset: int) -> np.ndarray:
        part = timeline[lead + offset : lead + offset + n_rows * fpr].reshape(n_rows, fpr, n_classes)
        return part.max(axis=1) if p.reduce == "max" else part.mean(axis=1, dtype=dtype)

    shifts = p.shifts or ({"frames": 0, "weight": 1.0},)
    rows = None
    for s in shifts:
        shift = int(s["frames"])
        lo = lead + shift
        if shift != 0 and (lo < 0 or lo + n_rows * fpr > total):  # partly outside: per-row edge rule below
            term = np.stack([reduce(0)[r] if _edge(r, shift, n_rows) else _row(timeline, lead + r * fpr + shift, fpr, p.reduce)
                             for r in range(n_rows)])
        else:
            term = reduce(shift)
            if shift < 0:
                term[0] = reduce(0)[0]
            elif shift > 0:
                term[-1] = reduce(0)[-1]
        term = term * dtype(s["weight"])
        rows = term if rows is None else rows + term
    return replace(o, rows=rows.astype(np.float32))


def _edge(r: int, shift: int, n_rows: int) -> bool:
    return (shift < 0 and r == 0) or (shift > 0 and r == n_rows - 1)


def _row(timeline: np.ndarray, start: int, fpr: int, how: str) -> np.ndarray:
    part = timeline[max(0, start) : start + fpr]
    return part.max(axis=0) if how == "max" else part.mean(axis=0)


@MODEL_STEPS.register("clip_rows", OutputParams, names=_names_rows)
def clip_rows(o: Outputs, p: OutputParams) -> Outputs:
    """Window ``k``'s clip output ``(W, C)`` goes to the rows it targets: ``[k·step_rows, (k+1)·step_rows)``."""
    x = o.get(p.output)
    rows = np.repeat(x, o.layout.step_rows, axis=0)[: o.n_rows]
    if len(rows) < o.n_rows:
        raise ParameterError(f"clip_rows: {len(x)} windows do not cover {o.n_rows} rows")
    return replace(o, rows=rows.astype(np.float32))


# ------------------------------------------------------------------------------------ row steps
@dataclass(frozen=True)
class SmoothParams:
    kernel: tuple[Weight, ...]
    mode: Literal["nearest", "reflect", "mirror", "constant", "wrap"] = "nearest"
    cval: Annotated[float, VALUE] = 0.0

    def __post_init__(self):
        if not 1 <= len(self.kernel) <= 10001:
            raise ValueError(f"kernel needs 1 to 10001 values, got {len(self.kernel)}" if self.kernel else
                             "kernel needs at least one value")


@ROW_STEPS.register("smooth", SmoothParams)
def smooth(p_rows: np.ndarray, p: SmoothParams) -> np.ndarray:
    return scipy.ndimage.convolve1d(p_rows.astype(np.float64), np.asarray(p.kernel, np.float64), axis=0, mode=p.mode, cval=p.cval)


@dataclass(frozen=True)
class GaussianParams:
    sigma: Annotated[float, Range(0, 1e4, low_open=True)]
    mode: Literal["nearest", "reflect", "mirror", "constant", "wrap"] = "nearest"
    truncate: Annotated[float, Range(0, 100, low_open=True)] = 4.0


@ROW_STEPS.register("gaussian_smooth", GaussianParams)
def gaussian_smooth(rows: np.ndarray, p: GaussianParams) -> np.ndarray:
    return scipy.ndimage.gaussian_filter1d(rows.astype(np.float64), p.sigma, axis=0, mode=p.mode, truncate=p.truncate)


@dataclass(frozen=True)
class BoxParams:
    size: Annotated[int, Range(1, 10001)] = 5
    edge: Literal["valid_mean", "nearest", "constant"] = "valid_mean"

    def __post_init__(self):
        if self.size % 2 == 0:
            raise ValueError(f"size must be odd, got {self.size}")


@ROW_STEPS.register("box_mean", BoxParams)
def box_mean(rows: np.ndarray, p: BoxParams) -> np.ndarray:
    x = rows.astype(np.float64)
    if p.edge != "valid_mean":
        return scipy.ndimage.convolve1d(x, np.full(p.size, 1.0 / p.size), axis=0, mode=p.edge)
    half = p.size // 2
    csum = np.concatenate([np.zeros((1,) + x.shape[1:]), np.cumsum(x, axis=0)])
    lo = np.clip(np.arange(len(x)) - half, 0, len(x))
    hi = np.clip(np.arange(len(x)) + half + 1, 0, len(x))
    return (csum[hi] - csum[lo]) / (hi - lo)[:, None]


@dataclass(frozen=True)
class FileScaleParams:
    top_k: Annotated[int, Range(1, 10**6)] = 1
    power: Annotated[float, Range(0, 100)] = 1.0


@ROW_STEPS.register("file_scale", FileScaleParams)
def file_scale(rows: np.ndarray, p: FileScaleParams) -> np.ndarray:
    """``p · (mean of the top_k rows per class)^power`` (top_k capped at the row count)."""
    x = rows.astype(np.float64)
    k = min(p.top_k, len(x))
    top = np.sort(x, axis=0)[len(x) - k :].mean(axis=0)
    return x * top[None, :] ** p.power


@dataclass(frozen=True)
class FileMaxParams:
    weight: Annotated[float, Range(0, 1)]


@ROW_STEPS.register("file_max_blend", FileMaxParams)
def file_max_blend(rows: np.ndarray, p: FileMaxParams) -> np.ndarray:
    x = rows.astype(np.float64)
    return (1 - p.weight) * x + p.weight * x.max(axis=0, keepdims=True)


@dataclass(frozen=True)
class PowerParams:
    exponent: Annotated[float, Range(0, 100, low_open=True)]


@ROW_STEPS.register("power", PowerParams)
def power(rows: np.ndarray, p: PowerParams) -> np.ndarray:
    return rows.astype(np.float64) ** p.exponent


@dataclass(frozen=True)
class ClipParams:
    min: Annotated[float, VALUE] = 0.0
    max: Annotated[float, VALUE] = 1.0

    def __post_init__(self):
        if self.min > self.max:
            raise ValueError(f"need min <= max, got min={self.min:g}, max={self.max:g}")


@ROW_STEPS.register("clip_values", ClipParams)
def clip_values(rows: np.ndarray, p: ClipParams) -> np.ndarray:
    return np.clip(rows.astype(np.float64), p.min, p.max)


# -------------------------------------------------------------------------------- combine steps
@dataclass(frozen=True)
class NoParams:
    pass


def _normalised(weights) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    if w.sum() <= 0:
        w = np.ones_like(w)
    return w / w.sum()


@COMBINE_STEPS.register("weighted_mean", NoParams)
def weighted_mean(members: list[np.ndarray], weights: list[float], p: NoParams) -> np.ndarray:
    """``Σ wᵢ pᵢ / Σ wᵢ`` (all-zero weights count as equal), in float64."""
    return np.tensordot(_normalised(weights), np.stack([m.astype(np.float64) for m in members]), axes=1)


@COMBINE_STEPS.register("weighted_sum", NoParams)
def weighted_sum(members: list[np.ndarray], weights: list[float], p: NoParams) -> np.ndarray:
    """``Σ wᵢ pᵢ`` without dividing by ``Σ wᵢ`` (a model left out by a time budget simply adds nothing)."""
    return np.tensordot(np.asarray(weights, dtype=np.float64), np.stack([m.astype(np.float64) for m in members]), axes=1)


@COMBINE_STEPS.register("mean", NoParams)
def mean(members: list[np.ndarray], weights: list[float], p: NoParams) -> np.ndarray:
    return np.mean(np.stack([m.astype(np.float64) for m in members]), axis=0)
