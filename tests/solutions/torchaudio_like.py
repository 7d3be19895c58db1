"""torchaudio's documented semantics written in plain torch (torchaudio has no wheel for this torch version).

Test-only oracle pieces used by the solution transcriptions; checked against librosa in
tests/test_solutions_frontends.py where librosa expresses the same thing. Written from torchaudio's documented
behaviour (``transforms.Spectrogram``/``MelSpectrogram``/``MelScale``/``AmplitudeToDB``,
``functional.melscale_fbanks``/``amplitude_to_DB``); no code shared with birdinfer or birdinfer_export.
"""

from __future__ import annotations

import math

import torch


def hz_to_mel_htk(f: float) -> float:
    return 2595.0 * math.log10(1.0 + f / 700.0)


def melscale_fbanks_htk(n_freqs: int, f_min: float, f_max: float, n_mels: int, sample_rate: int) -> torch.Tensor:
    """``functional.melscale_fbanks(..., norm=None, mel_scale="htk")``: ``(n_freqs, n_mels)`` float32 triangles."""
    all_freqs = torch.linspace(0, sample_rate // 2, n_freqs)
    m_pts = torch.linspace(hz_to_mel_htk(f_min), hz_to_mel_htk(f_max), n_mels + 2)
    f_pts = 700.0 * (10 ** (m_pts / 2595.0) - 1.0)
    f_diff = f_pts[1:] - f_pts[:-1]
    slopes = f_pts.unsqueeze(0) - all_freqs.unsqueeze(1)
    down = (-1.0 * slopes[:, :-2]) / f_diff[:-1]
    up = slopes[:, 2:] / f_diff[1:]
    return torch.max(torch.zeros(1), torch.min(down, up))


def power_spectrogram(x: torch.Tensor, *, n_fft: int, hop_length: int, normalized: bool, center: bool = True,
                      pad_mode: str = "reflect") -> torch.Tensor:
    """``transforms.Spectrogram(n_fft, win_length=n_fft, hop_length, window_fn=hann_window, power=2,
    normalized, center, pad_mode)`` on ``(..., time)`` → ``(..., n_fft//2+1, frames)``."""
    window = torch.hann_window(n_fft)
    shape = x.shape
    spec = torch.stft(x.reshape(-1, shape[-1]), n_fft=n_fft, hop_length=hop_length, win_length=n_fft, window=window,
                      center=center, pad_mode=pad_mode, normalized=False, onesided=True, return_complex=True)
    spec = spec.reshape(shape[:-1] + spec.shape[-2:])
    if normalized:  # "window" normalisation of the complex spectrum
        spec = spec / window.pow(2.0).sum().sqrt()
    return spec.abs().pow(2.0)


def mel_spectrogram(x: torch.Tensor, *, sample_rate: int, n_fft: int, hop_length: int, n_mels: int, f_min: float,
                    f_max: float | None, normalized: bool) -> torch.Tensor:
    """``transforms.MelSpectrogram`` with the defaults the solutions used (HTK scale, no filter norm)."""
    power = power_spectrogram(x, n_fft=n_fft, hop_length=hop_length, normalized=normalized)
    fb = melscale_fbanks_htk(n_fft // 2 + 1, f_min, float(sample_rate // 2) if f_max is None else f_max, n_mels, sample_rate)
    return torch.matmul(power.transpose(-1, -2), fb).transpose(-1, -2)


def amplitude_to_db(x: torch.Tensor, top_db: float | None, amin: float = 1e-10) -> torch.Tensor:
    """``functional.amplitude_to_DB(x, 10, amin, 0, top_db)``: the top_db floor is taken per item of the input
    reshaped to ``(-1, C, F, T)`` where C = ``shape[-3]`` for inputs of 3+ dims (so a 3-D batch shares ONE max)."""
    db = 10.0 * torch.log10(torch.clamp(x, min=amin))
    if top_db is None:
        return db
    shape = db.shape
    packed = shape[-3] if db.dim() > 2 else 1
    db4 = db.reshape(-1, packed, shape[-2], shape[-1])
    db4 = torch.max(db4, (db4.amax(dim=(-3, -2, -1)) - top_db).view(-1, 1, 1, 1))
    return db4.reshape(shape)


def zscore_minmax(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """The solutions' ``NormalizeMelSpec``: per item over dims (1, 2), unbiased std, then min-max."""
    mean = x.mean((1, 2), keepdim=True)
    std = x.std((1, 2), keepdim=True)
    z = (x - mean) / (std + eps)
    lo = torch.amin(z, dim=(1, 2), keepdim=True)
    hi = torch.amax(z, dim=(1, 2), keepdim=True)
    return (z - lo) / (hi - lo + eps)
