"""Inputs and figures that prove an export: mel chunks from the runtime's front end, parity, INT8 deviation.

Every figure is computed on the input the runtime will actually feed: audio (the user's soundscapes, or
seeded synthetic audio when none is given) through :class:`birdinfer.runtime.mel_frontend.MelFrontEnd`, giving dB mel
chunks ``(n, 1, n_mels, 2F)`` per group.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from birdinfer.errors import ParameterError
from birdinfer.spec.manifest import MelGroup

__all__ = [
    "AUDIO_SUFFIXES",
    "MelInputs",
    "synthetic_audio",
    "prepare_inputs",
    "batches_of",
    "sigmoid",
    "deviation_figures",
]

AUDIO_SUFFIXES = (".ogg", ".wav", ".flac", ".mp3")
#: Calibration files used at most (each 60 s soundscape gives 6 chunks); held-out files are extra.
MAX_CALIBRATION_FILES = 16
MAX_HELD_OUT_FILES = 4
SYNTHETIC_SECONDS = 60.0


@dataclass
class MelInputs:
    """Mel chunks per group: a calibration set and a held-out set, with where they came from.

    ``calibration[group]`` and ``held_out[group]`` are float32 arrays ``(n, 1, n_mels, 2F)`` in dB.
    The parity check uses the first chunks of the calibration set; INT8 is calibrated on the calibration
    set and its deviation from f32 is measured on the held-out set.
    """

    calibration: dict[str, np.ndarray]
    held_out: dict[str, np.ndarray]
    calibration_source: str  # human-readable description
    held_out_source: str
    calibration_files: list[str] = field(default_factory=list)  # file names (real audio) or []
    held_out_files: list[str] = field(default_factory=list)
    synthetic: bool = False

    def parity_batch(self, group: str, chunks: int) -> np.ndarray:
        """The first ``chunks`` calibration chunks ``(chunks, 1, n_mels, 2F)`` (repeated when fewer)."""
        return batches_of(self.calibration[group], chunks)[0]

    def parity_description(self, chunks: int) -> str:
        return f"{self.calibration_source}; first {chunks} chunks"


def synthetic_audio(seconds: float = SYNTHETIC_SECONDS, *, seed: int = 0, sample_rate: int = 32000) -> np.ndarray:
    """Seeded bird-like test audio ``(round(seconds * sample_rate),)`` float32 in [-1, 1].

    Background noise (white, −40 dBFS-ish) plus a few dozen short exponential chirps between 1 and 10 kHz with
    smooth envelopes and random levels, so mel chunks differ from each other and cover a realistic dB range.
    """
    rng = np.random.default_rng(seed)
    n = int(round(seconds * sample_rate))
    y = 0.01 * rng.standard_normal(n)
    n_calls = max(1, int(seconds * 0.8))
    for _ in range(n_calls):
        duration = rng.uniform(0.1, 1.2)
        length = int(duration * sample_rate)
        start = int(rng.integers(0, max(1, n - length)))
        t = np.arange(length) / sample_rate
        f0, f1 = rng.uniform(1000, 10000, size=2)
        # exponential sweep f0 -> f1: phase = 2π f0 T/ln(k) (k^(t/T) − 1)
        k = f1 / f0
        phase = 2 * np.pi * f0 * duration / np.log(k) * (k ** (t / duration) - 1) if abs(k - 1) > 1e-6 else 2 * np.pi * f0 * t
        envelope = np.sin(np.pi * t / duration) ** 2
        y[start:start + length] += rng.uniform(0.02, 0.5) * envelope * np.sin(phase)
    return np.clip(y, -1.0, 1.0).astype(np.float32)


def _audio_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise ParameterError(f"calibration folder {folder} does not exist or is not a folder")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
    if not files:
        raise ParameterError(f"calibration folder {folder} holds no audio files ({', '.join(AUDIO_SUFFIXES)})")
    return files


def _mel_of(signals: Sequence[np.ndarray], groups: Sequence[MelGroup], *, sample_rate: int, window_seconds: float) -> dict[str, np.ndarray]:
    """Front-end chunks of every signal, concatenated per group: ``{group: (n, 1, n_mels, 2F)}``."""
    from birdinfer.runtime.mel_frontend import MelFrontEnd

    front_end = MelFrontEnd(list(groups), sample_rate=sample_rate, window_seconds=window_seconds)
    per_group: dict[str, list[np.ndarray]] = {g.name: [] for g in groups}
    for y in signals:
        mel = front_end(y)
        for g in groups:
            per_group[g.name].append(np.asarray(mel[g.name], dtype=np.float32))
    return {name: np.concatenate(parts, axis=0) for name, parts in per_group.items()}


def prepare_inputs(
    groups: Sequence[MelGroup],
    *,
    calibration: str | Path | None = None,
    sample_rate: int = 32000,
    window_seconds: float = 5.0,
    synthetic_clips: int = 1,
    seed: int = 0,
) -> MelInputs:
    """Mel chunks for verification (and INT8 calibration) for every group in ``groups``.

    With a ``calibration`` folder: the sorted audio files; when there are at least two, the last
    ``max(1, n // 5)`` (at most 4) are held out and the others (at most 16) calibrate. With one file it
    serves both, with a warning. Without a folder: ``synthetic_clips`` seeded 60 s synthetic clips
    (seeds ``seed, seed+1, ...``) calibrate and one more (seed ``seed + 1000``) is held out.
    """
    if calibration is None:
        cal_seeds = [seed + i for i in range(max(1, synthetic_clips))]
        held_seed = seed + 1000
        cal = _mel_of([synthetic_audio(seed=s, sample_rate=sample_rate) for s in cal_seeds], groups,
                      sample_rate=sample_rate, window_seconds=window_seconds)
        held = _mel_of([synthetic_audio(seed=held_seed, sample_rate=sample_rate)], groups,
                       sample_rate=sample_rate, window_seconds=window_seconds)
        return MelInputs(
            calibration=cal,
            held_out=held,
            calibration_source=f"synthetic audio: {len(cal_seeds)} x {SYNTHETIC_SECONDS:g} s chirps + noise, seeds {cal_seeds}",
            held_out_source=f"synthetic audio: {SYNTHETIC_SECONDS:g} s chirps + noise, seed {held_seed}",
            synthetic=True,
        )

    from birdinfer.io.audio import load_audio

    files = _audio_files(Path(calibration))
    if len(files) >= 2:
        n_held = min(MAX_HELD_OUT_FILES, max(1, len(files) // 5))
        cal_files, held_files = files[:-n_held][:MAX_CALIBRATION_FILES], files[-n_held:]
    else:
        warnings.warn(
            f"calibration folder {calibration} holds one audio file: the INT8 deviation is measured on the "
            "same audio it was calibrated on; give more soundscapes for an honest figure",
            stacklevel=2,
        )
        cal_files = held_files = files
    cal = _mel_of([load_audio(p, sample_rate=sample_rate) for p in cal_files], groups,
                  sample_rate=sample_rate, window_seconds=window_seconds)
    held = cal if held_files is cal_files else _mel_of(
        [load_audio(p, sample_rate=sample_rate) for p in held_files], groups,
        sample_rate=sample_rate, window_seconds=window_seconds)
    return MelInputs(
        calibration=cal,
        held_out=held,
        calibration_source=f"audio: {len(cal_files)} file(s) from {calibration} ({', '.join(p.name for p in cal_files[:3])}{', ...' if len(cal_files) > 3 else ''})",
        held_out_source=f"audio: {', '.join(p.name for p in held_files)}",
        calibration_files=[p.name for p in cal_files],
        held_out_files=[p.name for p in held_files],
    )


def batches_of(chunks: np.ndarray, size: int) -> list[np.ndarray]:
    """Split ``(n, ...)`` into batches of exactly ``size`` rows; the last is filled by wrapping to the start.

    A fixed-shape model needs full batches; wrapping repeats real chunks rather than inventing zeros.
    """
    if size <= 0:
        raise ParameterError(f"batch size must be positive, got {size}")
    n = len(chunks)
    if n == 0:
        raise ParameterError("no mel chunks to batch (empty audio?)")
    n_batches = -(-n // size)
    index = np.arange(n_batches * size) % n
    return [np.ascontiguousarray(chunks[index[i * size:(i + 1) * size]]) for i in range(n_batches)]


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function in float64 (no overflow warnings for large |x|)."""
    x = np.asarray(x, dtype=np.float64)
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks along the last axis, ties sharing their average rank (bf16 / INT8 outputs do tie)."""
    from scipy.stats import rankdata

    return rankdata(x, method="average", axis=-1).astype(np.float64)


def deviation_figures(reference_logits: np.ndarray, other_logits: np.ndarray) -> dict[str, float]:
    """How far ``other`` is from ``reference``; both frame-wise logits ``(chunks, n_classes, frames)``.

    - ``max_abs_prob_diff`` / ``mean_abs_prob_diff``: over every chunk, class and frame of
      ``|sigmoid(other) − sigmoid(reference)|``.
    - ``rank_agreement_spearman``: for each (chunk, frame), the Spearman rank correlation between the two
      models' class scores (ranks over the ``n_classes`` classes, tied scores sharing their average rank),
      averaged over all (chunk, frame) pairs; 1 means the class ordering is identical everywhere. A
      (chunk, frame) whose scores are all equal in either model counts as 0 (no ordering to agree on).
    - ``top1_agreement``: fraction of (chunk, frame) pairs whose highest-scoring class is the same.
    """
    a = np.asarray(reference_logits, dtype=np.float64)
    b = np.asarray(other_logits, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 3:
        raise ParameterError(f"logits must both be (chunks, n_classes, frames), got {a.shape} and {b.shape}")
    prob_diff = np.abs(sigmoid(b) - sigmoid(a))
    # (chunks, frames, classes): one class-score vector per (chunk, frame)
    ra = _ranks(np.moveaxis(a, 1, -1))
    rb = _ranks(np.moveaxis(b, 1, -1))
    ra -= ra.mean(axis=-1, keepdims=True)
    rb -= rb.mean(axis=-1, keepdims=True)
    denominator = np.sqrt((ra * ra).sum(-1) * (rb * rb).sum(-1))
    spearman = np.divide((ra * rb).sum(-1), denominator, out=np.zeros_like(denominator), where=denominator > 0)
    top1 = np.argmax(a, axis=1) == np.argmax(b, axis=1)
    return {
        "max_abs_prob_diff": float(prob_diff.max()),
        "mean_abs_prob_diff": float(prob_diff.mean()),
        "rank_agreement_spearman": float(spearman.mean()),
        "top1_agreement": float(top1.mean()),
    }
