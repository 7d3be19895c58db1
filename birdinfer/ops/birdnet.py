"""BirdNET V2.4's in-graph spectrogram front end as two ops: ``birdnet_stft`` and ``birdnet_mel``.

BirdNET computes its input spectrogram inside the network (ops 0–94 of its TFLite graph): each 3 s window
is min-max scaled to [-1, 1], then two branches (frame 2048 / step 278 and frame 1024 / step 280, periodic
Hann) take an RFFT and keep **the real part only** (its CAST from complex to float), then apply a mel
matrix, square, raise to a learned exponent, flip the mel axis, and are stacked as channels and scaled per
channel. OpenVINO cannot convert that RFFT, so the work is split where it is cheapest:

* ``birdnet_stft``: the min-max scaling, the frames, the window and the RFFT's real part, over the FFT bins
  the mel matrices read (``bins``: one ``[first, end)`` range per branch, branches stacked on the frequency axis);
* ``birdnet_mel``: each branch's mel product (the flip folded into the matrix's rows), square and power,
  branches stacked on the mel axis. Each mel band reads at most 17 bins,
  so the product runs over each group of :data:`BANDS_PER_PRODUCT` bands' own bins: 2 % of the dense
  product's work. In the IR the dense products and OpenVINO's reference-code ``Log`` took 1.78 ms per window
  of the INT8 network on one Zen 3 thread; here the whole tail takes about 0.5 ms (numpy's BLAS runs on the
  calling thread while a Predictor runs: :class:`birdinfer.runtime.threads.BlasThreads`);
* the model folder's IR (:mod:`birdinfer.tools.birdnet_import`): the stacking into channels and the
  per-channel scaling, then the network. Folders imported before ``birdnet_mel`` keep the whole tail in
  their IR (fed by ``birdnet_stft``).

The windows are the model's own (``constants``: a ``.npz`` of the model folder holding ``window_<b>``,
checksummed like the graphs). Numbers: the RFFT runs in float64 (TFLite's RFFT2D kernel computes in double
and rounds to complex64; a float32 FFT gave score errors up to 4e-3 against LiteRT), the rest in float32 in
the graph's order. ``fft="float32"`` computes frames × window and the RFFT in float32 instead (faster, not
exact: it runs only where a model variant was validated with it, ``frontend`` of
:class:`birdinfer.spec.files.ModelVariant`; the f32 variant never records it).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field, replace
from typing import Annotated, Literal

import numpy as np
import scipy.fft

from ..errors import ModelFolderError
from .base import OPS, Block, Signal, Static, _need
from .registry import VALUE, Range

__all__ = ["BirdnetStftParams", "BirdnetMelParams", "birdnet_stft", "birdnet_mel", "load_windows", "FILE_FIELD",
           "FFT_DTYPES", "BANDS_PER_PRODUCT"]

#: Metadata of a parameter that names a file of the model folder (the manifest parser resolves it).
FILE_FIELD = {"file": True}
#: Frames per FFT call, by float type: measured per window of 20 (one Zen 3 thread, best of 4-5 rounds): float64
#: 6.49 ms with 32 frames, 6.11 with 64, 6.38 with 128; float32 4.28 with 64, 3.99 with 256, 3.97 with 512.
_CHUNK_FRAMES = {"float64": 64, "float32": 256}
#: Float type of the frames × window product and the RFFT (``fft`` parameter): float64 is TFLite's (exact).
FFT_DTYPES = {"float64": np.float64, "float32": np.float32}
#: Consecutive mel bands per matrix product of ``birdnet_mel`` (over the bins they read): 4 measured fastest of
#: 1, 2, 4, 8, 12, 16, 24, 32 on one Zen 3 thread (0.511 ms per window, tail included, against 0.933 dense).
BANDS_PER_PRODUCT = 4


@dataclass(frozen=True)
class BirdnetStftParams:
    constants: str = field(metadata=FILE_FIELD)  # .npz of the model folder: window_<b> (frame_lengths[b],)
    frame_lengths: tuple[Annotated[int, Range(2, 65536)], ...]
    frame_steps: tuple[Annotated[int, Range(1, 65536)], ...]
    bins: tuple[tuple[Annotated[int, Range(0, 32769)], Annotated[int, Range(0, 32769)]], ...]  # per branch: the FFT bins [first, end) kept (those its mel matrix reads)
    frames: Annotated[int, Range(1, 10**6)]
    minmax_eps: Annotated[float, Range(0, 1e3)] = 1e-6
    minmax_centre: Annotated[float, VALUE] = 0.5
    minmax_scale: Annotated[float, VALUE] = 2.0
    fft: Literal["float64", "float32"] = "float64"  # the RFFT's float type (module docstring)

    def __post_init__(self):
        n = len(self.frame_lengths)
        if n < 1 or len(self.frame_steps) != n or len(self.bins) != n:
            raise ValueError("frame_lengths, frame_steps and bins need one entry per branch (at least one)")
        if min(self.frame_lengths) < 2 or min(self.frame_steps) < 1 or self.frames < 1:
            raise ValueError("frame lengths must be >= 2, frame steps and frames >= 1")
        for (first, end), length in zip(self.bins, self.frame_lengths):
            if not 0 <= first < end <= length // 2 + 1:
                raise ValueError(f"bins [{first}, {end}) must lie within the {length // 2 + 1} bins of a {length}-sample frame")


def _infer(s: Static, p: BirdnetStftParams) -> Static:
    _need(s, kind="wave", windowed=True, op="birdnet_stft")
    if s.length is None:
        raise ValueError("birdnet_stft needs windows of a fixed length")
    for n, hop in zip(p.frame_lengths, p.frame_steps):
        frames = 1 + (s.length - n) // hop if s.length >= n else 0
        if frames != p.frames:
            raise ValueError(f"windows of {s.length} samples give {frames} frames of {n} samples every {hop}, "
                             f"not frames={p.frames}")
    return replace(s, kind="spec", freq=sum(end - first for first, end in p.bins), length=p.frames, n_fft=None)


@functools.lru_cache(maxsize=4)
def _read(path: str, size: int, mtime_ns: int) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: np.ascontiguousarray(data[k], dtype=np.float32) for k in data.files}
    except (OSError, ValueError, EOFError) as e:
        raise ModelFolderError(f"{path}: cannot read the front-end constants ({e}); copy the model folder again "
                               f"or re-run birdinfer import") from e


def _constants(path: str) -> tuple[str, int, int]:
    """``(path, size, mtime_ns)`` of the folder's constants file: the key its cached readings are kept under."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise ModelFolderError(f"{path}: front-end constants file missing ({e.strerror}); copy the whole "
                               f"model folder") from e
    return path, st.st_size, st.st_mtime_ns


def load_windows(p: BirdnetStftParams) -> list[np.ndarray]:
    """The analysis window of each branch, from the folder's ``.npz`` (read once per file version)."""
    data = _read(*_constants(p.constants))
    windows = [data.get(f"window_{b}") for b in range(len(p.frame_lengths))]
    for b, (window, n) in enumerate(zip(windows, p.frame_lengths)):
        if window is None or window.shape != (n,):
            raise ModelFolderError(f"{p.constants}: needs window_{b} of shape ({n},); re-run birdinfer import")
    return windows


def _minmax(x: np.ndarray, p: BirdnetStftParams) -> np.ndarray:
    """Per-window scaling to [-1, 1] in float32, in the graph's order: (x − min) / (max + eps), − 0.5, × 2."""
    v = x - x.min(axis=-1, keepdims=True)
    v /= v.max(axis=-1, keepdims=True) + np.float32(p.minmax_eps)
    v -= np.float32(p.minmax_centre)
    v *= np.float32(p.minmax_scale)
    return v


def _real_parts(v: np.ndarray, n: int, hop: int, window: np.ndarray, bins: tuple[int, int], frames: int,
                out: np.ndarray, threads: int = 1, fft: str = "float64") -> None:
    """One window's branch into ``out`` ``(end − first, frames)``: Re rfft(frame · window) over ``bins``. With
    ``threads`` > 1 the FFTs of all its frames are one call split over that many threads (same numbers: each
    frame's FFT is computed alone either way). ``fft``: the chunk's float type (float32: no float64 copy)."""
    first, end = bins
    view = np.lib.stride_tricks.sliding_window_view(v, n)[::hop][:frames]
    rows = _CHUNK_FRAMES[fft] if threads <= 1 else frames
    chunk = np.empty((min(rows, frames), n), FFT_DTYPES[fft])
    for at in range(0, frames, rows):
        k = min(rows, frames - at)
        np.multiply(view[at : at + k], window, out=chunk[:k], dtype=np.float32)  # the float32 product, as the graph
        spectrum = scipy.fft.rfft(chunk[:k], axis=-1, overwrite_x=True, workers=max(1, threads))
        out[:, at : at + k] = spectrum[:, first:end].real.T


@OPS.register("birdnet_stft", BirdnetStftParams, infer=_infer)
def birdnet_stft(x: Signal, p: BirdnetStftParams, block: Block) -> Signal:
    """Windows ``(W, L)`` → ``(W, F, frames)`` float32: each branch's kept bins, stacked on the frequency axis."""
    windows = load_windows(p)
    scaled = _minmax(np.asarray(x.data, dtype=np.float32), p)  # a new array: the input windows stay as they are
    out = np.empty((len(scaled), sum(end - first for first, end in p.bins), p.frames), np.float32)
    for w in range(len(scaled)):
        row = 0
        for n, hop, window, bins in zip(p.frame_lengths, p.frame_steps, windows, p.bins):
            _real_parts(scaled[w], n, hop, window, bins, p.frames, out[w, row : row + bins[1] - bins[0]], block.threads,
                        p.fft)
            row += bins[1] - bins[0]
    return replace(x, data=out, kind="spec", hop=None, n_fft=None)


@dataclass(frozen=True)
class BirdnetMelParams:
    constants: str = field(metadata=FILE_FIELD)  # .npz of the model folder: mel_<b> (n_mels, inputs[b]), rows flipped
    inputs: tuple[Annotated[int, Range(1, 32769)], ...]  # per branch: the rows of birdnet_stft's output its matrix reads
    n_mels: Annotated[int, Range(1, 4096)]
    exponents: tuple[Annotated[float, Range(0, 64, low_open=True)], ...]  # per branch: the power after the square

    def __post_init__(self):
        if len(self.inputs) < 1 or len(self.exponents) != len(self.inputs):
            raise ValueError("inputs and exponents need one entry per branch (at least one)")


def _infer_mel(s: Static, p: BirdnetMelParams) -> Static:
    _need(s, kind="spec", windowed=True, op="birdnet_mel")
    if s.freq != sum(p.inputs):
        raise ValueError(f"birdnet_mel reads {sum(p.inputs)} rows (inputs={list(p.inputs)}), its input has {s.freq}")
    return replace(s, freq=p.n_mels * len(p.inputs))


@functools.lru_cache(maxsize=4)
def _products(path: str, size: int, mtime_ns: int, inputs: tuple[int, ...], n_mels: int) -> list[list[tuple]]:
    """Per branch, its matrix cut into products of :data:`BANDS_PER_PRODUCT` bands over the bins they read:
    ``(first band, end band, first bin, end bin, weights)``."""
    data, out = _read(path, size, mtime_ns), []
    for b, rows in enumerate(inputs):
        mel = data.get(f"mel_{b}")
        if mel is None or mel.shape != (n_mels, rows):
            raise ModelFolderError(f"{path}: needs mel_{b} of shape ({n_mels}, {rows}); re-run birdinfer import")
        blocks = []
        for m0 in range(0, n_mels, BANDS_PER_PRODUCT):
            used = np.flatnonzero(mel[m0 : m0 + BANDS_PER_PRODUCT].any(axis=0))
            lo, hi = (int(used[0]), int(used[-1]) + 1) if used.size else (0, 1)
            blocks.append((m0, min(m0 + BANDS_PER_PRODUCT, n_mels), lo, hi,
                           np.ascontiguousarray(mel[m0 : m0 + BANDS_PER_PRODUCT, lo:hi])))
        out.append(blocks)
    return out


@OPS.register("birdnet_mel", BirdnetMelParams, infer=_infer_mel)
def birdnet_mel(x: Signal, p: BirdnetMelParams, block: Block) -> Signal:
    """``(W, sum(inputs), T)`` → ``(W, branches · n_mels, T)`` float32: per branch ``(mel @ x_b)² ** c`` (TFLite's
    POW as ``exp(c · log x)``, 0 at 0), branches stacked on the mel axis."""
    spec = np.asarray(x.data, dtype=np.float32)
    out = np.empty((len(spec), p.n_mels * len(p.inputs), spec.shape[2]), np.float32)
    row = 0
    for b, (blocks, exponent) in enumerate(zip(_products(*_constants(p.constants), p.inputs, p.n_mels), p.exponents)):
        part, y = spec[:, row : row + p.inputs[b]], out[:, b * p.n_mels : (b + 1) * p.n_mels]
        for m0, m1, lo, hi, weights in blocks:
            np.matmul(weights, part[:, lo:hi], out=y[:, m0:m1])
        np.multiply(y, y, out=y)
        with np.errstate(divide="ignore"):
            np.log(y, out=y)  # log 0 = -inf: exp(c · -inf) = 0 for c > 0, as POW at 0
        y *= np.float32(exponent)
        np.exp(y, out=y)
        row += p.inputs[b]
    return replace(x, data=out)
