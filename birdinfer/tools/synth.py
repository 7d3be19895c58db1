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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import soundfile as sf

from ..errors import ParameterError

__all__ = ["CALL_TYPES", "SpeciesCall", "make_species", "render_call", "coloured_noise", "make_dataset", "SOUNDSCAPE_SECONDS",
           "synthetic_soundscape"]

SOUNDSCAPE_SECONDS = 60
WINDOW_SECONDS = 5
#: Minimum overlap of a bout with a 5 s window for the window to be positive (capped at half the bout).
MIN_OVERLAP_SECONDS = 0.5


@dataclass(frozen=True)
class SpeciesCall:
    """How one synthetic species sounds."""

    label: str  # primary_label, e.g. "sp01"
    call_type: str  # one of CALL_TYPES
    pitch_hz: float  # characteristic frequency of the call
    call_seconds: float  # typical length of one call
    calls_per_bout: int
    call_gap_seconds: float  # silence between calls of a bout
    bout_gap_seconds: float  # typical silence between bouts in a focal recording


# ------------------------------------------------------------------------------------------- call shapes
def _envelope(n: int, attack: float = 0.1) -> np.ndarray:
    """Raised-cosine attack and release over ``attack`` of the length each: shape ``(n,)``."""
    ramp = max(1, int(n * attack))
    env = np.ones(n)
    rise = 0.5 - 0.5 * np.cos(np.linspace(0, np.pi, ramp))
    env[:ramp] = rise
    env[n - ramp:] = rise[::-1]
    return env


def _tone(freq_hz: np.ndarray, sample_rate: int) -> np.ndarray:
    """Sinusoid following an instantaneous frequency track ``(n,)``."""
    return np.sin(2 * np.pi * np.cumsum(freq_hz) / sample_rate)


def _upsweep(t, f, rng, sr):
    return _tone(np.geomspace(f * 0.6, f * 1.5, len(t)), sr)


def _downsweep(t, f, rng, sr):
    return _tone(np.geomspace(f * 1.5, f * 0.6, len(t)), sr)


def _harmonic_stack(t, f, rng, sr):
    track = f * (1 + 0.01 * np.sin(2 * np.pi * 5 * t))  # slight vibrato
    return sum((0.7 ** k) * _tone(track * (k + 1), sr) for k in range(4) if f * (k + 1) < sr / 2 - 500)


def _trill(t, f, rng, sr):
    rate = 30.0 * rng.uniform(0.9, 1.1)  # pulses per second
    return _tone(np.full(len(t), f), sr) * (0.5 - 0.5 * np.cos(2 * np.pi * rate * t)) ** 2


def _warble(t, f, rng, sr):
    return _tone(f * (1 + 0.18 * np.sin(2 * np.pi * 9.0 * t + rng.uniform(0, np.pi))), sr)


def _click_train(t, f, rng, sr):
    out = np.zeros(len(t))
    click = int(0.004 * sr)
    shape = np.hanning(click) * np.sin(2 * np.pi * f * np.arange(click) / sr)
    for start in range(0, len(t) - click, int(0.035 * sr)):
        out[start:start + click] += shape
    return out


def _two_note(t, f, rng, sr):
    track = np.where(t < t[-1] / 2, f, f * 0.75)
    return _tone(track, sr)


def _chevron(t, f, rng, sr):
    rise = 1 - np.abs(2 * t / max(t[-1], 1e-9) - 1)  # 0 → 1 → 0
    return _tone(f * (0.7 + 0.6 * rise), sr)


#: Call shape name → synthesiser ``(t (n,) seconds, pitch Hz, rng, sample_rate) -> (n,)``.
CALL_TYPES: dict[str, Callable] = {
    "upsweep": _upsweep,
    "downsweep": _downsweep,
    "harmonic_stack": _harmonic_stack,
    "trill": _trill,
    "warble": _warble,
    "click_train": _click_train,
    "two_note": _two_note,
    "chevron": _chevron,
}
_TYPICAL_CALL_SECONDS = {"upsweep": 0.35, "downsweep": 0.3, "harmonic_stack": 0.45, "trill": 0.8, "warble": 0.6,
                         "click_train": 0.5, "two_note": 0.35, "chevron": 0.25}


def make_species(n_species: int, rng: np.random.Generator) -> list[SpeciesCall]:
    """``n_species`` distinct species: call shapes in turn, pitches spread over 1.2-9 kHz (log scale).

    Species sharing a call shape (beyond the 8 shapes) get pitches far apart.
    """
    types = list(CALL_TYPES)
    pitches = np.geomspace(1200.0, 9000.0, n_species)
    # Interleave so that neighbours in pitch have different shapes and same shapes are far apart in pitch.
    pitch_order = rng.permutation(n_species)
    species = []
    for i in range(n_species):
        call_type = types[i % len(types)]
        species.append(
            SpeciesCall(
                label=f"sp{i + 1:02d}",
                call_type=call_type,
                pitch_hz=float(pitches[pitch_order[i]]),
                call_seconds=float(_TYPICAL_CALL_SECONDS[call_type] * rng.uniform(0.85, 1.15)),
                calls_per_bout=int(rng.integers(1, 5)),
                call_gap_seconds=float(rng.uniform(0.08, 0.4)),
                bout_gap_seconds=float(rng.uniform(0.8, 3.0)),
            )
        )
    return species


#: RMS of every rendered call: calls are equally loud at the same gain, whatever their shape.
CALL_RMS = 0.5


def render_call(species: SpeciesCall, rng: np.random.Generator, sample_rate: int) -> np.ndarray:
    """One call of ``species`` with per-call variation (pitch ±6 %, length ±15 %): float64 ``(n,)``, RMS
    :data:`CALL_RMS`.

    Normalised by RMS, not by peak: a peak-normalised click train (4 ms clicks every 35 ms) carried 1/5 the
    RMS of a tonal call (13.5 dB less; a trill 5.6 dB less), so at the same soundscape gain it sank under
    the background and the species was not recognisable. Peaks may exceed 1 (a click train's is ~3.6);
    the OGG writer scales a whole file down when its peak passes 0.95.
    """
    seconds = species.call_seconds * rng.uniform(0.85, 1.15)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    pitch = species.pitch_hz * rng.uniform(0.94, 1.06)
    wave = CALL_TYPES[species.call_type](t, pitch, rng, sample_rate) * _envelope(len(t))
    return wave * (CALL_RMS / (np.sqrt(np.mean(wave ** 2)) + 1e-12))


def _render_bout(species: SpeciesCall, rng: np.random.Generator, sample_rate: int) -> np.ndarray:
    """A bout: ``calls_per_bout`` calls (±1) separated by the species' gap (±25 %)."""
    n_calls = max(1, species.calls_per_bout + int(rng.integers(-1, 2)))
    pieces = []
    for k in range(n_calls):
        if k:
            pieces.append(np.zeros(int(species.call_gap_seconds * rng.uniform(0.75, 1.25) * sample_rate)))
        pieces.append(render_call(species, rng, sample_rate))
    return np.concatenate(pieces)


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
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    calls = make_species(species, rng)
    labels = [c.label for c in calls]

    taxonomy = pd.DataFrame({
        "primary_label": labels,
        "inat_taxon_id": [900000 + i for i in range(species)],
        "scientific_name": [f"Synthetica {c.call_type.replace('_', '')} {c.label}" for c in calls],
        "common_name": [f"Synthetic {c.call_type.replace('_', ' ')} bird {c.label[2:]}" for c in calls],
        "class_name": "Aves",
    })
    taxonomy.to_csv(out / "taxonomy.csv", index=False)

    bank = _noise_bank(rng)
    rows = []
    number = 0
    for index, call in enumerate(calls):
        for _ in range(recordings_per_species):
            number += 1
            secondary = None
            if rng.random() < secondary_fraction:
                secondary = calls[int(rng.choice([j for j in range(species) if j != index]))]
            seconds = float(rng.uniform(low, high))
            filename = f"{call.label}/XC{number:04d}.ogg"
            _write_ogg(out / "train_audio" / filename, _focal_recording(call, secondary, seconds, sample_rate, rng, bank), sample_rate)
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

    n_test = (soundscapes + 1) // 2
    tables = {"test": [], "train": []}
    for k in range(soundscapes):
        split = "test" if k < n_test else "train"
        stem = f"soundscape_{seed * 100000 + 10000 + k:06d}"
        # Rotate through the species so each test species appears somewhere, plus a random few.
        n_present = int(rng.integers(2, min(5, species) + 1))
        present = {k % species} | {int(j) for j in rng.choice(species, size=n_present - 1, replace=False)}
        audio, window_labels = _soundscape(sorted(present), calls, sample_rate, rng, (gain_low, gain_high), (noise_low, noise_high))
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

    meta = {
        "generator": "birdinfer.tools.synth.make_dataset",
        "seed": seed,
        "sample_rate": sample_rate,
        "recordings_per_species": recordings_per_species,
        "soundscapes": {"test": n_test, "train": soundscapes - n_test},
        "train_seconds": [low, high],
        "soundscape_call_gain": [gain_low, gain_high],
        "soundscape_noise": [noise_low, noise_high],
        "window_rule": f"positive when a bout overlaps the 5 s window by >= min({MIN_OVERLAP_SECONDS} s, half the bout)",
        "species": [asdict(c) for c in calls],
    }
    (out / "synth.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return out
