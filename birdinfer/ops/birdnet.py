"""BirdNET V2.4's in-graph spectrogram as a front-end op: ``birdnet_spectrogram``.

BirdNET computes its input spectrogram inside the network (ops 0–94 of its TFLite graph): each 3 s window
is min-max scaled to [-1, 1], then two branches (frame 2048 / step 278 and frame 1024 / step 280, periodic
Hann) take an RFFT, keep **the real part only** (its CAST from complex to float), apply a mel matrix,
square, raise to a learned exponent and flip the mel axis; the two branches are stacked as channels and
scaled per channel. OpenVINO cannot convert that RFFT (``birdinfer.tools.tflite_birdnet`` runs the rest
of the graph), so this op computes it in numpy, with the model's own constants: the scalars are the op's
parameters, the arrays (windows, mel matrices) a ``.npz`` file of the model folder (``constants``,
checksummed like the graphs; written by ``birdinfer import`` from the user's model file).

Numbers: the RFFT runs in float64 (TFLite's RFFT2D kernel computes in double and rounds to complex64: a
float32 FFT gives spectrogram errors up to 1e-2 in quiet or zero-padded frames, after the small
exponent), everything else in float32 in TFLite's order. Only the FFT bins a mel matrix reads are kept.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field, replace

import numpy as np
import scipy.fft

from ..errors import ModelFolderError
from .base import OPS, Block, Signal, Static, _need

__all__ = ["BirdnetSpectrogramParams", "birdnet_spectrogram", "load_constants", "FILE_FIELD"]

#: Metadata of a parameter that names a file of the model folder (the manifest parser resolves it).
FILE_FIELD = {"file": True}
#: Frames per FFT call: keeps a float64 chunk in cache.
_CHUNK_FRAMES = 32


@dataclass(frozen=True)
class BirdnetSpectrogramParams:
    constants: str = field(metadata=FILE_FIELD)  # .npz: window_<b>, mel_<b> (n_mels, bins) per branch b
    frame_lengths: tuple[int, ...]
    frame_steps: tuple[int, ...]
    exponents: tuple[float, ...]
    channel_scale: tuple[float, ...]
    channel_offset: tuple[float, ...]
    frames: int
    n_mels: int
    minmax_eps: float = 1e-6
    minmax_centre: float = 0.5
    minmax_scale: float = 2.0
    flip_mels: bool = True

    def __post_init__(self):
        n = len(self.frame_lengths)
        lengths = {len(self.frame_steps), len(self.exponents), len(self.channel_scale), len(self.channel_offset)}
        if n < 1 or lengths != {n}:
            raise ValueError("frame_lengths, frame_steps, exponents, channel_scale and channel_offset need one value "
                             "per branch (the same count, at least one)")
        if min(self.frame_lengths) < 2 or min(self.frame_steps) < 1 or self.frames < 1 or self.n_mels < 1:
            raise ValueError("frame lengths must be >= 2, frame steps, frames and n_mels >= 1")


def _infer(s: Static, p: BirdnetSpectrogramParams) -> Static:
    _need(s, kind="wave", windowed=True, op="birdnet_spectrogram")
    if s.length is None:
        raise ValueError("birdnet_spectrogram needs windows of a fixed length")
    for n, hop in zip(p.frame_lengths, p.frame_steps):
        frames = 1 + (s.length - n) // hop if s.length >= n else 0
        if frames != p.frames:
            raise ValueError(f"windows of {s.length} samples give {frames} frames of {n} samples every {hop}, "
                             f"not frames={p.frames}")
    return replace(s, kind="spec", freq=p.n_mels, length=p.frames, channels=len(p.frame_lengths), n_fft=None)


@functools.lru_cache(maxsize=4)
def _read_constants(path: str, size: int, mtime_ns: int) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: np.ascontiguousarray(data[k], dtype=np.float32) for k in data.files}
    except (OSError, ValueError, EOFError) as e:
        raise ModelFolderError(f"{path}: cannot read the front-end constants ({e}); copy the model folder again "
                               f"or re-run birdinfer import") from e


def load_constants(p: BirdnetSpectrogramParams) -> list[tuple[np.ndarray, np.ndarray, int, int]]:
    """Per branch ``(window (n,), mel rows over the bins they read (n_mels, b1 - b0), b0, b1)`` from the
    folder's ``.npz`` (read once per file version)."""
    try:
        st = os.stat(p.constants)
    except OSError as e:
        raise ModelFolderError(f"{p.constants}: front-end constants file missing ({e.strerror}); copy the whole "
                               f"model folder") from e
    data = _read_constants(p.constants, st.st_size, st.st_mtime_ns)
    out = []
    for b, n in enumerate(p.frame_lengths):
        window, mel = data.get(f"window_{b}"), data.get(f"mel_{b}")
        if window is None or mel is None or window.shape != (n,) or mel.shape != (p.n_mels, n // 2 + 1):
            raise ModelFolderError(f"{p.constants}: needs window_{b} of shape ({n},) and mel_{b} of shape "
                                   f"({p.n_mels}, {n // 2 + 1}); re-run birdinfer import")
        used = np.flatnonzero(np.any(mel != 0, axis=0))
        b0, b1 = (int(used[0]), int(used[-1]) + 1) if used.size else (0, 1)
        out.append((window, np.ascontiguousarray(mel[:, b0:b1].T), b0, b1))
    return out


def _minmax(x: np.ndarray, p: BirdnetSpectrogramParams) -> np.ndarray:
    """Per-window scaling to [-1, 1] in float32, in the graph's order: (x − min) / (max + eps), − 0.5, × 2."""
    v = x - x.min(axis=-1, keepdims=True)
    v /= v.max(axis=-1, keepdims=True) + np.float32(p.minmax_eps)
    v -= np.float32(p.minmax_centre)
    v *= np.float32(p.minmax_scale)
    return v


def _branch(v: np.ndarray, n: int, hop: int, constants, exponent: float, frames: int) -> np.ndarray:
    """One window's branch: ``(frames, n_mels)`` float32 = (mel · Re rfft(frame · window))² ^ exponent."""
    window, mel_t, b0, b1 = constants
    view = np.lib.stride_tricks.sliding_window_view(v, n)[::hop][:frames]
    real = np.empty((frames, b1 - b0), np.float32)
    for at in range(0, frames, _CHUNK_FRAMES):
        chunk = (view[at : at + _CHUNK_FRAMES] * window).astype(np.float64)  # float32 product, as the graph
        real[at : at + _CHUNK_FRAMES] = scipy.fft.rfft(chunk, axis=-1, overwrite_x=True)[:, b0:b1].real
    m = real @ mel_t
    np.multiply(m, m, out=m)
    return np.power(m, np.float32(exponent), out=m)


@OPS.register("birdnet_spectrogram", BirdnetSpectrogramParams, infer=_infer)
def birdnet_spectrogram(x: Signal, p: BirdnetSpectrogramParams, block: Block) -> Signal:
    """Windows ``(W, L)`` → ``(W, branches, n_mels, frames)`` float32 (mel axis flipped when ``flip_mels``)."""
    constants = load_constants(p)
    data = np.asarray(x.data, dtype=np.float32)
    scaled = _minmax(np.array(data, dtype=np.float32), p)
    out = np.empty((len(data), len(p.frame_lengths), p.n_mels, p.frames), np.float32)
    for w in range(len(data)):
        for b, (n, hop) in enumerate(zip(p.frame_lengths, p.frame_steps)):
            spec = _branch(scaled[w], n, hop, constants[b], p.exponents[b], p.frames)
            out[w, b] = (spec[:, ::-1] if p.flip_mels else spec).T
    scale = np.asarray(p.channel_scale, np.float32)[:, None, None]
    offset = np.asarray(p.channel_offset, np.float32)[:, None, None]
    out *= scale
    out += offset
    return replace(x, data=out, kind="spec", hop=None, n_fft=None)
