"""Training data from a BirdCLEF-format folder: labels, cached mel power, 10 s crops and augmentation.

Folder: ``taxonomy.csv`` (class order = ``primary_label`` in file order), ``train.csv`` (primary_label,
secondary_labels as a Python-list string, filename under ``train_audio/``), optional ``train_soundscapes/``
for pseudo-labelled samples.

Features follow REFERENCE.md section 5 with the runtime front end's rules (:mod:`birdinfer.dsp`):
per recording and group, the *power* mel spectrogram resized to ``F`` columns per 5 s is computed once and
cached (``(W, n_mels)`` float32, time-major, one ``.npy`` per recording); a training crop is ``2F``
columns (10 s), converted to dB on its own (``10 log10(max(1e-10, P))``, floored at the crop max − top_db),
exactly as the runtime converts each 10 s inference chunk. The first-10 s crop of a recording is
therefore the runtime's first chunk of the same audio. A crop shorter than 2F columns is padded with
zero power (the runtime pads a short last chunk the same way).

Labels: 1 for the primary label and for each secondary label, 0 elsewhere. Pseudo-labelled soundscape
samples are the runtime's 10 s chunks ``[10 j, 10 j + 10)`` of a ``train_soundscapes`` file; the soft label
of chunk j is the element-wise max of the probabilities of its two 5 s windows (rows ``<stem>_<10j+5>``
and ``<stem>_<10j+10>``): the clip-wise output is trained to say "present somewhere in the chunk".
"""

from __future__ import annotations

import ast
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import scipy.fft

from birdinfer.io.audio import load_audio
from birdinfer.io.output import atomic_write
from birdinfer.errors import ParameterError
from birdinfer.dsp import (
    hann_window,
    mel_filterbank,
    power_to_db_chunks,
    resize_plan,
    resized_width,
    stft_frames,
)
from birdinfer.spec.manifest import MelGroup
from birdinfer.tools.synth import coloured_noise

__all__ = [
    "Sample",
    "read_taxonomy",
    "read_train_table",
    "recording_samples",
    "pseudo_label_samples",
    "mel_power",
    "SpectrogramCache",
    "crop_db",
    "augment_db",
    "oversample_rare",
    "NoiseBank",
    "noise_samples",
]

SAMPLE_RATE = 32000
WINDOW_SECONDS = 5.0


@dataclass(frozen=True)
class Sample:
    """One training example: an audio source, where to crop it, its labels ``(n_classes,)`` and weight.

    ``sources`` holds one audio file, or two for an audio-mixup sample (their sum is the audio).
    ``start_column``: fixed crop start in resized columns, or ``None`` for the training crop rule.
    """

    key: str
    sources: tuple[Path, ...]
    labels: np.ndarray
    weight: float = 1.0
    start_column: int | None = None
    max_seconds: float | None = None  # audio read at most (from the start); None = whole file


# --------------------------------------------------------------------------------------------- tables
def read_taxonomy(data: str | Path) -> list[str]:
    """Class labels in model output order: ``taxonomy.csv``'s ``primary_label`` column, file order."""
    path = Path(data) / "taxonomy.csv"
    if not path.is_file():
        raise ParameterError(f"{path} not found: --data must be a BirdCLEF-format folder (taxonomy.csv, train.csv, train_audio/)")
    table = pd.read_csv(path, dtype={"primary_label": str})
    if "primary_label" not in table.columns:
        raise ParameterError(f"{path} has no 'primary_label' column")
    labels = list(table.primary_label)
    if len(set(labels)) != len(labels):
        raise ParameterError(f"{path}: duplicate primary_label values")
    return labels


def read_train_table(data: str | Path) -> pd.DataFrame:
    """``train.csv`` with ``secondary_labels`` parsed to lists of str."""
    path = Path(data) / "train.csv"
    if not path.is_file():
        raise ParameterError(f"{path} not found: --data must be a BirdCLEF-format folder")
    table = pd.read_csv(path, dtype={"primary_label": str})
    for column in ("primary_label", "filename"):
        if column not in table.columns:
            raise ParameterError(f"{path} has no {column!r} column")
    if "secondary_labels" not in table.columns:
        table["secondary_labels"] = "[]"

    def parse(text, row):
        if isinstance(text, float) and np.isnan(text):
            return []
        try:
            value = ast.literal_eval(str(text))
        except (ValueError, SyntaxError) as e:
            raise ParameterError(f"{path} row {row}: secondary_labels {text!r} is not a Python list string") from e
        if not isinstance(value, (list, tuple)):
            raise ParameterError(f"{path} row {row}: secondary_labels {text!r} is not a list")
        return [str(v) for v in value]

    table["secondary_labels"] = [parse(t, i + 2) for i, t in enumerate(table.secondary_labels)]
    return table


def recording_samples(
    data: str | Path, labels: Sequence[str], *, crop: str, max_seconds: float | None = None
) -> list[Sample]:
    """One :class:`Sample` per ``train.csv`` row. Unknown secondary labels are ignored (as the reference:
    only taxonomy species are outputs); an unknown primary label is an error."""
    data = Path(data)
    table = read_train_table(data)
    index = {label: i for i, label in enumerate(labels)}
    samples = []
    for row in table.itertuples():
        if row.primary_label not in index:
            raise ParameterError(f"{data / 'train.csv'}: primary_label {row.primary_label!r} is not in taxonomy.csv")
        y = np.zeros(len(labels), dtype=np.float32)
        y[index[row.primary_label]] = 1.0
        for extra in row.secondary_labels:
            if extra in index:
                y[index[extra]] = 1.0
        path = data / "train_audio" / row.filename
        start = 0 if crop == "first10" else None
        samples.append(Sample(key=str(row.filename), sources=(path,), labels=y, start_column=start,
                              max_seconds=10.0 if crop == "first10" else max_seconds))
    return samples


def pseudo_label_samples(
    csv: str | Path, audio_dir: str | Path, labels: Sequence[str], *, frames_per_window: int, weight: float = 1.0
) -> list[Sample]:
    """Soft-labelled 10 s chunks of unlabelled soundscapes from a pseudo-label CSV (module docstring).

    ``csv``: ``row_id`` (``<stem>_<end second>``) + one probability column per species (missing species
    count 0). ``audio_dir``: where ``<stem>.ogg`` lives.
    """
    csv, audio_dir = Path(csv), Path(audio_dir)
    if not csv.is_file():
        raise ParameterError(f"pseudo-label file {csv} not found")
    table = pd.read_csv(csv, dtype={"row_id": str})
    if "row_id" not in table.columns:
        raise ParameterError(f"pseudo-label file {csv} has no 'row_id' column")
    known = [label for label in labels if label in table.columns]
    if not known:
        raise ParameterError(f"pseudo-label file {csv} has none of the taxonomy's species columns")
    probabilities = np.zeros((len(table), len(labels)), dtype=np.float32)
    for j, label in enumerate(labels):
        if label in table.columns:
            probabilities[:, j] = table[label].to_numpy(dtype=np.float32)
    if not np.isfinite(probabilities).all() or probabilities.min() < 0 or probabilities.max() > 1:
        raise ParameterError(f"pseudo-label file {csv}: probabilities must be finite and in [0, 1]")
    split = table.row_id.str.rsplit("_", n=1)
    stems = split.str[0]
    try:
        ends = split.str[1].astype(int)
    except (TypeError, ValueError) as e:
        raise ParameterError(f"pseudo-label file {csv}: row_id must be <stem>_<end second>, e.g. soundscape_1_5") from e
    chunks: dict[tuple[str, int], np.ndarray] = {}
    for stem, end, p in zip(stems, ends, probabilities):
        chunk = (int(end) - 1) // 10  # window ending at 5 or 10 → chunk 0, 15 or 20 → chunk 1, ...
        key = (stem, chunk)
        chunks[key] = np.maximum(chunks[key], p) if key in chunks else p.copy()
    samples = []
    columns_per_chunk = 2 * frames_per_window
    for (stem, chunk), y in sorted(chunks.items()):
        path = _find_audio(audio_dir, stem, csv)
        samples.append(Sample(key=f"pseudo:{stem}:{chunk}", sources=(path,), labels=y, weight=weight,
                              start_column=chunk * columns_per_chunk))
    return samples


def _find_audio(folder: Path, stem: str, csv: Path) -> Path:
    for suffix in (".ogg", ".flac", ".wav", ".mp3"):
        path = folder / f"{stem}{suffix}"
        if path.is_file():
            return path
    raise ParameterError(f"pseudo-label file {csv} names {stem!r}, but {folder} holds no audio file {stem}.ogg")


def oversample_rare(samples: list[Sample], n_classes: int, *, minimum: int, rng: np.random.Generator) -> list[Sample]:
    """Repeat samples of classes (by primary = argmax label) with fewer than ``minimum`` samples until they
    have ``minimum`` (REFERENCE.md: rare classes oversampled to at least 100). Pseudo-labelled and
    noise-only samples are not counted."""
    if minimum <= 0:
        return list(samples)
    by_class: dict[int, list[Sample]] = {}
    for s in samples:
        if not s.key.startswith(("pseudo:", "noise:")):
            by_class.setdefault(int(np.argmax(s.labels)), []).append(s)
    out = list(samples)
    for members in by_class.values():
        deficit = minimum - len(members)
        if deficit > 0:
            out += [members[i] for i in rng.integers(0, len(members), deficit)]
    return out


# ------------------------------------------------------------------------------------------- features
def mel_power(y: np.ndarray, group: MelGroup, *, sample_rate: int = SAMPLE_RATE, window_seconds: float = WINDOW_SECONDS) -> np.ndarray:
    """Resized power mel spectrogram ``(W, n_mels)`` float32 (time-major) of ``y`` ``(N,)``.

    The runtime front end's rules before dB (:mod:`birdinfer.dsp`): centred zero-padded periodic-Hann
    STFT, cv2 INTER_LINEAR time resize to ``W = N * F // window_samples`` columns (only the frames it reads
    are transformed; power interpolated before the mel projection, which is linear), Slaney mel filterbank.
    """
    window_samples = int(round(sample_rate * window_seconds))
    n = len(y)
    width = resized_width(n, group.frames_per_window, window_samples)
    if width == 0:
        return np.zeros((0, group.n_mels), dtype=np.float32)
    i0, i1, frac = resize_plan(stft_frames(n, group.n_fft, group.hop_length), width)
    pad = group.n_fft // 2
    padded = np.zeros(n + 2 * pad, dtype=np.float32)
    padded[pad:pad + n] = y
    frames = np.lib.stride_tricks.sliding_window_view(padded, group.n_fft)
    needed = np.unique(np.concatenate([i0, i1]))
    spectrum = scipy.fft.rfft(frames[needed * group.hop_length] * hann_window(group.n_fft), axis=1)
    power = (spectrum.real ** 2 + spectrum.imag ** 2).astype(np.float32)
    p0, p1 = np.searchsorted(needed, i0), np.searchsorted(needed, i1)
    mixed = power[p0] * (1 - frac)[:, None] + power[p1] * frac[:, None]
    filterbank = mel_filterbank(sample_rate=sample_rate, n_fft=group.n_fft, n_mels=group.n_mels, fmin=group.fmin, fmax=group.fmax)
    return (mixed @ filterbank.T).astype(np.float32)


def _group_key(group: MelGroup, sample_rate: int) -> str:
    spec = json.dumps({**group.to_dict(), "weight": None, "sample_rate": sample_rate}, sort_keys=True)
    return f"{group.name}-{hashlib.sha256(spec.encode()).hexdigest()[:10]}"


class SpectrogramCache:
    """Power mel spectrograms per sample source, in memory and (optionally) as ``.npy`` files on disk.

    Disk layout: ``<cache_dir>/<group name>-<hash of the group parameters>/<sha of the source key>.npy``,
    so different groups (or changed parameters) never share entries.
    """

    def __init__(self, group: MelGroup, *, cache_dir: str | Path | None = None, sample_rate: int = SAMPLE_RATE):
        self.group = group
        self.sample_rate = sample_rate
        self.folder = Path(cache_dir) / _group_key(group, sample_rate) if cache_dir is not None else None
        self._memory: dict[str, np.ndarray] = {}

    def power(self, sample: Sample) -> np.ndarray:
        """``(W, n_mels)`` float32 power of ``sample``'s audio (sum of its sources for audio mixup)."""
        key = "+".join(str(p) for p in sample.sources) + f"|{sample.max_seconds}"
        if key in self._memory:
            return self._memory[key]
        path = None
        if self.folder is not None:
            path = self.folder / (hashlib.sha256(key.encode()).hexdigest()[:24] + ".npy")
            if path.is_file():
                self._memory[key] = np.load(path)
                return self._memory[key]
        signals = [load_audio(p, sample_rate=self.sample_rate) for p in sample.sources]
        if sample.max_seconds is not None:
            signals = [s[: int(sample.max_seconds * self.sample_rate)] for s in signals]
        length = max(len(s) for s in signals)
        y = np.zeros(length, dtype=np.float32)
        for s in signals:
            y[: len(s)] += s
        power = mel_power(y, self.group, sample_rate=self.sample_rate)
        if path is not None:  # through a temporary file of its own: members may train side by side
            atomic_write(path, lambda f: np.save(f, power), option="--data")
        self._memory[key] = power
        return power


def crop_db(power: np.ndarray, start: int, group: MelGroup, *, noise: np.ndarray | None = None) -> np.ndarray:
    """Columns ``[start, start + 2F)`` of ``power`` ``(W, n_mels)`` → dB crop ``(1, n_mels, 2F)`` float32
    (zero power past the end; dB per crop as the runtime's chunks). ``noise``: ``(2F, n_mels)`` power
    added before the dB conversion (:class:`NoiseBank`)."""
    columns = group.frames_per_chunk
    piece = np.zeros((columns, group.n_mels), dtype=np.float32)
    available = power[start:start + columns]
    piece[: len(available)] = available
    if noise is not None:
        piece += noise
    return power_to_db_chunks(piece, n_chunks=1, top_db=group.top_db)[0]


def augment_db(x: np.ndarray, rng: np.random.Generator, *, mask_probability: float = 0.5,
               gain_range: tuple[float, float] = (0.8, 1.2)) -> np.ndarray:
    """Spectrogram masks and gain on a dB crop ``(1, n_mels, T)`` (a new array).

    Gain ``g`` scales the amplitude: ``+20 log10(g)`` dB (−1.9 … +1.6 dB for 0.8–1.2). With probability
    ``mask_probability`` each: 1–3 time stripes and 1–3 frequency stripes of 5–20 bins, filled with the
    crop's minimum (its dB floor, i.e. "silence").
    """
    x = x + np.float32(20.0 * np.log10(rng.uniform(*gain_range)))
    floor = x.min()
    _, n_mels, n_time = x.shape
    for axis, size in ((2, n_time), (1, n_mels)):
        if rng.random() < mask_probability:
            for _ in range(int(rng.integers(1, 4))):
                width = int(rng.integers(5, 21))
                width = min(width, max(1, size // 4))
                start = int(rng.integers(0, max(1, size - width)))
                if axis == 2:
                    x[:, :, start:start + width] = floor
                else:
                    x[:, start:start + width, :] = floor
    return x


# ---------------------------------------------------------------------------------------------- noise
class NoiseBank:
    """Power mel spectrograms of generated background noise, for noise augmentation and noise-only negatives.

    A few clips of ``seconds`` of unit-RMS coloured noise (spectral exponents ``exponents``: 0 white, 1 pink,
    2 brown, and mixtures) are put through :func:`mel_power` once. :meth:`crop` returns a random
    ``columns``-long piece scaled to an RMS level drawn log-uniformly from ``level`` (power scales with
    level²), so adding it to a recording's power is adding independent noise to its audio (in
    expectation: the cross term of independent signals averages out). Bird recordings in the field differ
    from focal recordings mostly in their background; generic coloured noise is the augmentation
    audio toolkits use for it (e.g. audiomentations' ``AddColorNoise``).
    """

    def __init__(self, group: MelGroup, *, seed: int = 0, seconds: float = 30.0,
                 exponents: Sequence[float] = (0.0, 0.5, 1.0, 1.5, 2.0), level: tuple[float, float] = (0.003, 0.06),
                 sample_rate: int = SAMPLE_RATE):
        if not 0 < level[0] <= level[1]:
            raise ParameterError(f"noise level must be (low, high) with 0 < low <= high, got {level}")
        rng = np.random.default_rng(seed)
        n = int(seconds * sample_rate)
        self.group = group
        self.level = (float(level[0]), float(level[1]))
        clips = []
        for exponent in exponents:
            y = coloured_noise(n, exponent, rng, corner_hz=100.0, sample_rate=sample_rate).astype(np.float32)
            # a slow loudness drift, as wind or distant traffic
            t = np.arange(n, dtype=np.float32) / sample_rate
            y *= (1.0 + 0.4 * np.sin(2 * np.pi * rng.uniform(0.05, 0.3) * t + rng.uniform(0, 2 * np.pi))).astype(np.float32)
            y /= y.std() + 1e-12
            clips.append(mel_power(y, group, sample_rate=sample_rate))
        self.clips = clips

    def crop(self, columns: int, rng: np.random.Generator) -> np.ndarray:
        """``(columns, n_mels)`` float32 noise power at a random level, from a random clip and offset."""
        clip = self.clips[int(rng.integers(len(self.clips)))]
        start = int(rng.integers(0, max(1, len(clip) - columns + 1)))
        piece = np.zeros((columns, clip.shape[1]), dtype=np.float32)
        part = clip[start:start + columns]
        piece[: len(part)] = part
        level = np.exp(rng.uniform(np.log(self.level[0]), np.log(self.level[1])))
        return piece * np.float32(level ** 2)


def noise_samples(count: int, n_classes: int) -> list[Sample]:
    """``count`` noise-only negatives (no source, all labels 0): the training set draws their audio from a
    :class:`NoiseBank`. With a ranking loss they teach that background alone is no species."""
    zeros = np.zeros(n_classes, dtype=np.float32)
    return [Sample(key=f"noise:{k}", sources=(), labels=zeros) for k in range(count)]
