"""Synthetic species for :mod:`birdinfer.tools.synth`: one recognisable call shape each (up/down frequency sweep,
harmonic stack, trill, FM warble, click train, two-note whistle, chevron) at its own pitch and rhythm; every call
varies a little in pitch, length and loudness, and calls come in bouts. numpy only."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

__all__ = ["CALL_RMS", "CALL_TYPES", "SpeciesCall", "make_species", "render_call"]


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
