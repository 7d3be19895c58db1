"""Batch front-end ops of manifest version 2: ``channels``, ``neighbours``, ``crop_time``, ``gain``.

Registered in :data:`birdinfer.ops.base.OPS` (see :mod:`birdinfer.ops.frontend` and ``docs/manifest_v2.md``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Annotated, Literal

import numpy as np

from .base import OPS, Block, Signal, Static, _need
from .registry import VALUE, Range

__all__ = ["ChannelsParams", "NeighboursParams", "CropParams", "GainParams"]


# ------------------------------------------------------------------------------------------ channels
@dataclass(frozen=True)
class ChannelsParams:
    layout: tuple[Literal["x", "ramp"], ...] = ("x",)
    repeat: Annotated[int, Range(1, 64)] | None = None
    ramp: tuple[Annotated[float, VALUE], Annotated[float, VALUE]] = (0.0, 1.0)

    def __post_init__(self):
        if self.repeat is not None and self.layout != ("x",):
            raise ValueError("repeat cannot be combined with layout")
        if not 1 <= len(self.layout) <= 64:
            raise ValueError(f"layout needs 1 to 64 channels, got {len(self.layout)}")

    @property
    def channels(self) -> tuple[str, ...]:
        return ("x",) * self.repeat if self.repeat else self.layout


def _infer_channels(s: Static, p: ChannelsParams) -> Static:
    _need(s, kind="spec", windowed=True, op="channels")
    if s.channels:
        raise ValueError("channels is applied twice")
    return replace(s, channels=len(p.channels))


@OPS.register("channels", ChannelsParams, infer=_infer_channels)
def channels(x: Signal, p: ChannelsParams, block: Block) -> Signal:
    v = x.data  # (W, F, L)
    if all(c == "x" for c in p.channels):  # repeated channels: a broadcast view (the model runner copies once)
        return replace(x, data=np.broadcast_to(v[:, None], (v.shape[0], len(p.channels)) + v.shape[1:]))
    parts = []
    for c in p.channels:
        if c == "x":
            parts.append(v)
        else:
            ramp = np.linspace(p.ramp[0], p.ramp[1], v.shape[-2], dtype=np.float32)[:, None]
            parts.append(np.broadcast_to(ramp, v.shape))
    return replace(x, data=np.stack(parts, axis=1))


# ---------------------------------------------------------------------------------------- neighbours
@dataclass(frozen=True)
class NeighboursParams:
    before: Annotated[int, Range(0, 64)] = 1
    after: Annotated[int, Range(0, 64)] = 1
    crop_frames: Annotated[int, Range(1, 10**6)] | None = None
    edge: Literal["zeros", "repeat"] = "zeros"


def _infer_neighbours(s: Static, p: NeighboursParams) -> Static:
    _need(s, kind="spec", windowed=True, op="neighbours")
    if s.channels:
        raise ValueError("neighbours must come before channels")
    if s.length is None:
        return s
    total = s.length * (p.before + 1 + p.after)
    crop = p.crop_frames if p.crop_frames is not None else total
    if crop > total:
        raise ValueError(f"crop_frames={crop} is longer than the {total} concatenated frames")
    return replace(s, length=crop, length_rows=(s.length_rows or 0) * crop / s.length)


@OPS.register("neighbours", NeighboursParams, infer=_infer_neighbours)
def neighbours(x: Signal, p: NeighboursParams, block: Block) -> Signal:
    v = x.data  # (W, F, L)
    n, length = v.shape[0], v.shape[-1]
    total = length * (p.before + 1 + p.after)
    crop = p.crop_frames if p.crop_frames is not None else total
    start = (total - crop) // 2
    out = np.empty(v.shape[:-1] + (crop,), dtype=np.float32)
    for j, shift in enumerate(range(-p.before, p.after + 1)):  # piece j holds window k + shift
        lo, hi = max(j * length, start), min((j + 1) * length, start + crop)
        if hi <= lo:
            continue
        target = out[..., lo - start : hi - start]
        part = v[..., lo - j * length : hi - j * length]  # only the columns kept, copied once into place
        first, last = max(0, -shift), min(n, n - shift)  # windows k whose neighbour k + shift exists
        if last > first:
            target[first:last] = part[first + shift : last + shift]
        for k in list(range(0, min(first, n))) + list(range(max(last, first), n)):  # file edges
            target[k] = part[min(max(k + shift, 0), n - 1)] if p.edge == "repeat" else np.float32(0.0)
    w = x.windows
    layout = replace(w, length_rows=w.length_rows * crop / length,
                     lead_rows=w.lead_rows + (p.before * length - start) / length * w.length_rows)
    return replace(x, data=out, windows=layout)


# ------------------------------------------------------------------------------------- gain / crop
@dataclass(frozen=True)
class GainParams:
    factor: Annotated[float, VALUE]


@OPS.register("gain", GainParams, infer=lambda s, p: s)
def gain(x: Signal, p: GainParams, block: Block) -> Signal:
    return replace(x, data=x.data * np.float32(p.factor))


@dataclass(frozen=True)
class CropParams:
    length: Annotated[int, Range(1, 10**6)]
    start: Annotated[int, Range(0, 10**6)] = 0


def _infer_crop(s: Static, p: CropParams) -> Static:
    _need(s, windowed=True, op="crop_time")
    if s.length is not None and p.start + p.length > s.length:
        raise ValueError(f"crop [{p.start}, {p.start + p.length}) is outside the {s.length} frames of a window")
    return replace(s, length=p.length, length_rows=(s.length_rows or 0) * p.length / s.length if s.length else s.length_rows)


@OPS.register("crop_time", CropParams, infer=_infer_crop)
def crop_time(x: Signal, p: CropParams, block: Block) -> Signal:
    """Keep time columns ``[start, start + length)`` of every window (the window layout in rows is kept)."""
    if p.start + p.length > x.data.shape[-1]:
        raise ValueError(f"crop_time: [{p.start}, {p.start + p.length}) is outside the {x.data.shape[-1]} frames of a window")
    return replace(x, data=x.data[..., p.start : p.start + p.length])
