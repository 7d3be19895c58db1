"""A synthetic dataset in the BirdCLEF 2025 folder format, for tests, benchmarks and the demo.

Each synthetic species has one recognisable call shape (up/down frequency sweep, harmonic stack, trill,
FM warble, click train, two-note whistle, chevron) at its own pitch and rhythm; every call varies a
little in pitch, length and loudness. Calls come in bouts (a species-specific number of calls at a
species-specific spacing). Background is pink + brown noise with a slowly modulated low "wind" rumble.

Written layout (everything deterministic in ``seed``)::

    taxonomy.csv            primary_label, inat_taxon_id, scientific_name, common_name, class_name
    train.csv               primary_label, secondary_labels ("['sp03']" or "[]"), type, filename
                            ("sp01/XC0001.ogg"), collection, rating, latitude, longitude,
                            scientific_name, common_name, author, license
    train_audio/<label>/XC####.ogg      focal recordings, 10-20 s, first call within the first 0.5 s
    train_soundscapes/soundscape_*.ogg  60 s, unlabelled (for pseudo-labelling)
    test_soundscapes/soundscape_*.ogg   60 s
    test_solution.csv       row_id (<stem>_<end second>) + one 0/1 column per species, 12 rows per file
    sample_submission.csv   same columns and row ids, all zeros
    train_soundscapes_solution.csv      the hidden truth of train_soundscapes (not part of BirdCLEF;
                                        lets a benchmark measure pseudo-label quality)
    synth.json              the species definitions and the generation parameters

A 5 s window ``[5k, 5k + 5)`` of a soundscape is positive for a species when one of its bouts (first
call start to last call end) overlaps the window by at least ``min(0.5 s, half the bout's length)``:
a short bout lying inside a window always counts, one that only grazes a window edge does not.

Runtime side: numpy and soundfile only. Audio is OGG Vorbis, mono, 32 kHz.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

from ..errors import ParameterError
from .synth_calls import SpeciesCall, _render_bout, make_species

__all__ = ["coloured_noise", "make_dataset", "SOUNDSCAPE_SECONDS", "synthetic_soundscape"]

SOUNDSCAPE_SECONDS = 60
WINDOW_SECONDS = 5
#: Minimum overlap of a bout with a 5 s window for the window to be positive (capped at half the bout).
MIN_OVERLAP_SECONDS = 0.5


# ---------------------------------------------------------------------------------------------- noise
def coloured_noise(n: int, exponent: float, rng: np.random.Generator, *, corner_hz: float | None = None,
                   sample_rate: int = 32000) -> np.ndarray:
    """Noise with power spectrum ∝ 1/f^exponent (0: white, 1: pink, 2: brown), unit RMS: float64 ``(n,)``.

    ``corner_hz``: below it the spectrum is flat (the training noise bank uses 100 Hz, else a brown
    noise's power sits almost all below 1 Hz, outside every mel band). ``None``: flat only at DC (the
    synthetic backgrounds).
    """
    size = 1 << max(1, int(n - 1).bit_length())  # a power of two: FFTs of arbitrary n can be very slow
    spectrum = rng.standard_normal(size // 2 + 1) + 1j * rng.standard_normal(size // 2 + 1)
    if corner_hz is None:
        freqs = np.arange(size // 2 + 1, dtype=np.float64)
        freqs[0] = 1.0
    else:
        freqs = np.maximum(np.fft.rfftfreq(size, 1.0 / sample_rate), corner_hz)
    noise = np.fft.irfft(spectrum / freqs ** (exponent / 2), size)[:n]
    return noise / (noise.std() + 1e-12)


#: Length of the shared noise bank focal recordings slice their background from (2^20 samples ≈ 33 s).
_BANK_SAMPLES = 1 << 20


def _noise_bank(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Pink, brown and wind noise of ``_BANK_SAMPLES`` each: generating noise per recording costs more
    than encoding it, so short recordings take random circular slices of one bank."""
    return {name: coloured_noise(_BANK_SAMPLES, exponent, rng) for name, exponent in (("pink", 1.0), ("brown", 2.0), ("wind", 2.0))}


def _noise(kind_exponent: tuple[str, float], n: int, rng: np.random.Generator, bank: dict | None) -> np.ndarray:
    kind, exponent = kind_exponent
    if bank is None or n > _BANK_SAMPLES:
        return coloured_noise(n, exponent, rng)
    return np.roll(bank[kind], -int(rng.integers(0, _BANK_SAMPLES)))[:n]


def _background(
    n: int, sample_rate: int, rng: np.random.Generator, level: float, bank: dict | None = None
) -> np.ndarray:
    """Pink + brown noise plus a low wind rumble whose loudness drifts slowly: ``(n,)``, RMS ≈ ``level``."""
    pink = _noise(("pink", 1.0), n, rng, bank)
    brown = _noise(("brown", 2.0), n, rng, bank)
    t = np.arange(n) / sample_rate
    gust = 0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(0.05, 0.3) * t + rng.uniform(0, 2 * np.pi))
    wind = _noise(("wind", 2.0), n, rng, bank) * gust  # brown noise is low-frequency heavy: a rumble
    mix = rng.uniform(0.5, 1.0) * pink + rng.uniform(0.3, 1.0) * brown + rng.uniform(0.3, 1.2) * wind
    return level * mix / (mix.std() + 1e-12)


def _add(dest: np.ndarray, start: int, wave: np.ndarray, gain: float) -> tuple[int, int]:
    """Add ``gain * wave`` into ``dest`` from sample ``start`` (clipped at the end); returns the span written."""
    end = min(len(dest), start + len(wave))
    if end > start:
        dest[start:end] += gain * wave[: end - start]
    return start, end


def _write_ogg(path: Path, y: np.ndarray, sample_rate: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    peak = np.abs(y).max()
    if peak > 0.95:  # keep the encoder away from clipping
        y = y * (0.95 / peak)
    sf.write(path, y.astype(np.float32), sample_rate, format="OGG", subtype="VORBIS")


# ------------------------------------------------------------------------------------------ recordings
def _focal_recording(
    main: SpeciesCall,
    secondary: SpeciesCall | None,
    seconds: float,
    sample_rate: int,
    rng: np.random.Generator,
    bank: dict | None = None,
) -> np.ndarray:
    """A focal recording: ``main`` calls from the first 0.5 s on, an optional quieter ``secondary``."""
    n = int(seconds * sample_rate)
    y = _background(n, sample_rate, rng, level=rng.uniform(0.005, 0.03), bank=bank)
    for caller, gain, start_s in ((main, rng.uniform(0.3, 0.6), rng.uniform(0.0, 0.5)),
                                  (secondary, rng.uniform(0.08, 0.2), rng.uniform(0.5, 4.0))):
        if caller is None:
            continue
        t = start_s
        while t < seconds:
            bout = _render_bout(caller, rng, sample_rate)
            _add(y, int(t * sample_rate), bout, gain * rng.uniform(0.8, 1.2))
            t += len(bout) / sample_rate + caller.bout_gap_seconds * rng.uniform(0.6, 1.6)
    return y


def _soundscape(
    present: list[int],
    species: list[SpeciesCall],
    sample_rate: int,
    rng: np.random.Generator,
    call_gain: tuple[float, float] = (0.08, 0.4),
    noise_level: tuple[float, float] = (0.01, 0.04),
) -> tuple[np.ndarray, np.ndarray]:
    """A 60 s soundscape with bouts of the ``present`` species at random times, each bout at a gain drawn
    uniformly from ``call_gain``, over a background of RMS drawn uniformly from ``noise_level``.

    Returns ``(audio (n,), labels (12, n_species) uint8)`` with the window rule of the module docstring.
    """
    n = SOUNDSCAPE_SECONDS * sample_rate
    n_windows = SOUNDSCAPE_SECONDS // WINDOW_SECONDS
    y = _background(n, sample_rate, rng, level=rng.uniform(*noise_level))
    labels = np.zeros((n_windows, len(species)), dtype=np.uint8)
    for index in present:
        for _ in range(int(rng.integers(2, 6))):
            bout = _render_bout(species[index], rng, sample_rate)
            start = int(rng.integers(0, n - len(bout) // 2))
            begin, end = _add(y, start, bout, rng.uniform(*call_gain))
            t0, t1 = begin / sample_rate, end / sample_rate
            need = min(MIN_OVERLAP_SECONDS, (t1 - t0) / 2)
            for w in range(n_windows):
                overlap = min(t1, (w + 1) * WINDOW_SECONDS) - max(t0, w * WINDOW_SECONDS)
                if overlap >= need:
                    labels[w, index] = 1
    return y, labels


def synthetic_soundscape(seed: int, *, sample_rate: int = 32000, species: int = 8) -> np.ndarray:
    """One seeded 60 s soundscape ``(n,)`` float32 in memory (calls of 2-5 species over the background), e.g.
    as calibration audio when the user gives none (:mod:`birdinfer.tools.precision`)."""
    rng = np.random.default_rng(seed)
    calls = make_species(species, rng)
    present = sorted(int(j) for j in rng.choice(species, size=int(rng.integers(2, min(5, species) + 1)), replace=False))
    y, _ = _soundscape(present, calls, sample_rate, rng)
    return np.clip(y, -1.0, 1.0).astype(np.float32)


def _window_rows(stem: str) -> list[str]:
    return [f"{stem}_{WINDOW_SECONDS * (k + 1)}" for k in range(SOUNDSCAPE_SECONDS // WINDOW_SECONDS)]


def make_dataset(
    out_dir: str | Path,
    *,
    species: int = 8,
    recordings_per_species: int = 12,
    soundscapes: int = 8,
    seed: int = 0,
    train_seconds: tuple[float, float] = (10, 20),
    sample_rate: int = 32000,
    secondary_fraction: float = 0.25,
    soundscape_call_gain: tuple[float, float] = (0.08, 0.4),
    soundscape_noise: tuple[float, float] = (0.01, 0.04),
) -> Path:
    """Write a synthetic BirdCLEF-format dataset into ``out_dir`` (created); returns ``out_dir``.

    ``soundscapes`` are split half test (labelled by ``test_solution.csv``), half train (unlabelled);
    ``secondary_fraction`` of the focal recordings also hold a quieter second species.
    ``soundscape_call_gain``: range of the peak gain of soundscape bouts (focal recordings' main species
    call at 0.3-0.6 over a quieter background; the default makes soundscapes harder than the focal
    recordings, as real ones are). ``soundscape_noise``: range of the soundscapes' background RMS (focal
    recordings: 0.005-0.03).
    """
    _check_dataset_args(species, recordings_per_species, soundscapes, train_seconds, soundscape_call_gain,
                        soundscape_noise)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    calls = make_species(species, rng)
    taxonomy = _write_taxonomy(out, calls)
    bank = _noise_bank(rng)
    _write_focal_recordings(out, calls, taxonomy, rng, bank, per_species=recordings_per_species,
                            seconds=train_seconds, sample_rate=sample_rate, secondary_fraction=secondary_fraction)
    n_test = _write_soundscapes(out, calls, rng, count=soundscapes, seed=seed, sample_rate=sample_rate,
                                gain=soundscape_call_gain, noise=soundscape_noise)
    meta = {
        "generator": "birdinfer.tools.synth.make_dataset",
        "seed": seed,
        "sample_rate": sample_rate,
        "recordings_per_species": recordings_per_species,
        "soundscapes": {"test": n_test, "train": soundscapes - n_test},
        "train_seconds": list(train_seconds),
        "soundscape_call_gain": list(soundscape_call_gain),
        "soundscape_noise": list(soundscape_noise),
        "window_rule": f"positive when a bout overlaps the 5 s window by >= min({MIN_OVERLAP_SECONDS} s, half the bout)",
        "species": [asdict(c) for c in calls],
    }
    (out / "synth.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return out


def _check_dataset_args(species, recordings_per_species, soundscapes, train_seconds, soundscape_call_gain,
                        soundscape_noise) -> None:
    if species < 2:
        raise ParameterError(f"species must be >= 2, got {species}")
    if recordings_per_species < 1:
        raise ParameterError(f"recordings_per_species must be >= 1, got {recordings_per_species}")
    if soundscapes < 2:
        raise ParameterError(f"soundscapes must be >= 2 (half test, half train), got {soundscapes}")
    low, high = train_seconds
    if not 0 < low <= high:
        raise ParameterError(f"train_seconds must be (low, high) with 0 < low <= high, got {train_seconds}")
    gain_low, gain_high = soundscape_call_gain
    if not 0 < gain_low <= gain_high:
        raise ParameterError(f"soundscape_call_gain must be (low, high) with 0 < low <= high, got {soundscape_call_gain}")
    noise_low, noise_high = soundscape_noise
    if not 0 <= noise_low <= noise_high:
        raise ParameterError(f"soundscape_noise must be (low, high) with 0 <= low <= high, got {soundscape_noise}")


def _write_taxonomy(out: Path, calls: list[SpeciesCall]) -> pd.DataFrame:
    taxonomy = pd.DataFrame({
        "primary_label": [c.label for c in calls],
        "inat_taxon_id": [900000 + i for i in range(len(calls))],
        "scientific_name": [f"Synthetica {c.call_type.replace('_', '')} {c.label}" for c in calls],
        "common_name": [f"Synthetic {c.call_type.replace('_', ' ')} bird {c.label[2:]}" for c in calls],
        "class_name": "Aves",
    })
    taxonomy.to_csv(out / "taxonomy.csv", index=False)
    return taxonomy


def _write_focal_recordings(out: Path, calls: list[SpeciesCall], taxonomy: pd.DataFrame, rng: np.random.Generator,
                            bank: dict, *, per_species: int, seconds: tuple[float, float], sample_rate: int,
                            secondary_fraction: float) -> None:
    """``train_audio/<label>/XC####.ogg`` and ``train.csv``; a fraction also hold a quieter second species."""
    rows = []
    number = 0
    for index, call in enumerate(calls):
        for _ in range(per_species):
            number += 1
            secondary = None
            if rng.random() < secondary_fraction:
                secondary = calls[int(rng.choice([j for j in range(len(calls)) if j != index]))]
            length = float(rng.uniform(*seconds))
            filename = f"{call.label}/XC{number:04d}.ogg"
            _write_ogg(out / "train_audio" / filename, _focal_recording(call, secondary, length, sample_rate, rng, bank), sample_rate)
            rows.append({
                "primary_label": call.label,
                "secondary_labels": str([secondary.label] if secondary else []),
                "type": "['song']",
                "filename": filename,
                "collection": "XC",
                "rating": float(rng.choice([3.0, 3.5, 4.0, 4.5, 5.0])),
                "latitude": round(float(rng.uniform(-10, 10)), 4),
                "longitude": round(float(rng.uniform(-80, -60)), 4),
                "scientific_name": taxonomy.scientific_name[index],
                "common_name": taxonomy.common_name[index],
                "author": "birdinfer.tools.synth",
                "license": "cc0",
            })
    pd.DataFrame(rows).to_csv(out / "train.csv", index=False)


def _write_soundscapes(out: Path, calls: list[SpeciesCall], rng: np.random.Generator, *, count: int, seed: int,
                       sample_rate: int, gain: tuple[float, float], noise: tuple[float, float]) -> int:
    """Half test soundscapes (labelled by ``test_solution.csv``), half train; returns the number of test ones."""
    labels = [c.label for c in calls]
    species = len(calls)
    n_test = (count + 1) // 2
    tables = {"test": [], "train": []}
    for k in range(count):
        split = "test" if k < n_test else "train"
        stem = f"soundscape_{seed * 100000 + 10000 + k:06d}"
        # Rotate through the species so each test species appears somewhere, plus a random few.
        n_present = int(rng.integers(2, min(5, species) + 1))
        present = {k % species} | {int(j) for j in rng.choice(species, size=n_present - 1, replace=False)}
        audio, window_labels = _soundscape(sorted(present), calls, sample_rate, rng, tuple(gain), tuple(noise))
        _write_ogg(out / f"{split}_soundscapes" / f"{stem}.ogg", audio, sample_rate)
        table = pd.DataFrame(window_labels.astype(int), columns=labels)
        table.insert(0, "row_id", _window_rows(stem))
        tables[split].append(table)
    solution = pd.concat(tables["test"], ignore_index=True)
    solution.to_csv(out / "test_solution.csv", index=False)
    zeros = solution.copy()
    zeros[labels] = 0.0
    zeros.to_csv(out / "sample_submission.csv", index=False)
    if tables["train"]:
        pd.concat(tables["train"], ignore_index=True).to_csv(out / "train_soundscapes_solution.csv", index=False)
    (out / "train_soundscapes").mkdir(exist_ok=True)
    return n_test
