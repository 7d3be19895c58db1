"""Exportable torch front ends for graphs that take a waveform (2025 2nd place, docs/solutions/2025_2nd.md).

The STFT is a pair of strided 1-D convolutions with windowed cosine/sine kernels, as nnAudio's
``features.stft.STFT`` computes it (buffers ``wsin``/``wcos`` of shape ``(n_fft//2+1, 1, n_fft)``, reflect
padding of ``n_fft // 2``), so the graph exports to ONNX/OpenVINO without an FFT op and loads their
checkpoints' buffers. The mel is torchaudio's HTK ``MelScale`` without filter normalisation (buffer
``mel_scale.fb``), the dB is torchaudio's ``amplitude_to_DB`` with the max per sample, the normalisation their
``NormalizeMelSpec`` (unbiased std, z-score then min-max).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

__all__ = ["melscale_fbanks_htk", "ConvSTFT", "MelScale", "TraceableMel", "ChannelAgnosticDB", "NormalizeMelSpec"]


def melscale_fbanks_htk(n_freqs: int, f_min: float, f_max: float, n_mels: int, sample_rate: int) -> torch.Tensor:
    """HTK-scale triangular filters without normalisation, ``(n_freqs, n_mels)`` float32 (torchaudio's rule:
    FFT bin frequencies ``linspace(0, sample_rate // 2, n_freqs)``, ``n_mels + 2`` points evenly spaced in mel)."""
    freqs = torch.linspace(0, sample_rate // 2, n_freqs)
    to_mel = lambda f: 2595.0 * math.log10(1.0 + f / 700.0)  # noqa: E731
    mels = torch.linspace(to_mel(f_min), to_mel(f_max), n_mels + 2)
    points = 700.0 * (10 ** (mels / 2595.0) - 1.0)
    widths = points[1:] - points[:-1]
    slopes = points.unsqueeze(0) - freqs.unsqueeze(1)
    down = -slopes[:, :-2] / widths[:-1]
    up = slopes[:, 2:] / widths[1:]
    return torch.clamp(torch.min(down, up), min=0.0)


class ConvSTFT(nn.Module):
    """Complex STFT as two convolutions: ``(B, samples)`` → ``(B, n_fft//2+1, frames, 2)`` = (real, −imag·(−1)).

    Matches nnAudio's ``STFT(window="hann", freq_scale="no", center=True, pad_mode="reflect",
    output_format="Complex")``: kernels ``sin/cos(2π k n / n_fft)`` (float64, cast to float32) times a periodic
    Hann window; the last axis holds (real, imag) with nnAudio's sign convention.
    """

    def __init__(self, n_fft: int = 2048, hop_length: int = 512):
        super().__init__()
        self.n_fft, self.hop_length = n_fft, hop_length
        bins = n_fft // 2 + 1
        n = np.arange(n_fft, dtype=np.float64)
        k = np.arange(bins, dtype=np.float64)[:, None]
        window = 0.5 - 0.5 * np.cos(2.0 * np.pi * n / n_fft)  # periodic Hann (scipy get_window fftbins=True)
        sin = torch.tensor(np.sin(2 * np.pi * k * n / n_fft), dtype=torch.float32)[:, None, :]
        cos = torch.tensor(np.cos(2 * np.pi * k * n / n_fft), dtype=torch.float32)[:, None, :]
        win = torch.tensor(window, dtype=torch.float32)
        self.register_buffer("wsin", sin * win)
        self.register_buffer("wcos", cos * win)
        self.pad = nn.ReflectionPad1d(n_fft // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pad(x[:, None, :])
        imag = nn.functional.conv1d(x, self.wsin, stride=self.hop_length)
        real = nn.functional.conv1d(x, self.wcos, stride=self.hop_length)
        return torch.stack((real, -imag), -1)


class MelScale(nn.Module):
    """torchaudio ``MelScale(..., norm=None, mel_scale="htk")``: ``(B, n_freqs, T)`` → ``(B, n_mels, T)``."""

    def __init__(self, n_mels: int, sample_rate: int, f_min: float, f_max: float | None, n_stft: int):
        super().__init__()
        f_max = float(sample_rate // 2) if f_max is None else float(f_max)
        self.register_buffer("fb", melscale_fbanks_htk(n_stft, f_min, f_max, n_mels, sample_rate))

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        return torch.matmul(spec.transpose(-1, -2), self.fb).transpose(-1, -2)


class TraceableMel(nn.Module):
    """Their ``TraceableMelspec``: conv STFT → ÷ sqrt(Σ window²) if ``normalized`` → |·|^power → HTK mel."""

    def __init__(self, *, sample_rate: int, n_fft: int, hop_length: int, n_mels: int, f_min: float,
                 f_max: float | None = None, normalized: bool = True, power: float = 2.0):
        super().__init__()
        self.spectrogram = ConvSTFT(n_fft=n_fft, hop_length=hop_length)
        self.normalized, self.power = normalized, power
        self.register_buffer("window", torch.hann_window(n_fft))
        self.mel_scale = MelScale(n_mels, sample_rate, f_min, f_max, n_fft // 2 + 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spec = self.spectrogram(x)
        if self.normalized:
            spec = spec / self.window.pow(2.0).sum().sqrt()
        spec = torch.sqrt(spec[..., 0].pow(2) + spec[..., 1].pow(2))
        if self.power != 1.0:
            spec = spec.pow(self.power)
        return self.mel_scale(spec)


class ChannelAgnosticDB(nn.Module):
    """``10·log10(max(x, amin))`` with the top_db floor taken per sample of a ``(B, F, T)`` input."""

    def __init__(self, top_db: float | None = 80.0, amin: float = 1e-10):
        super().__init__()
        self.top_db, self.amin = top_db, amin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        db = 10.0 * torch.log10(torch.clamp(x, min=self.amin))
        if self.top_db is None:
            return db
        return torch.max(db, db.amax(dim=(-2, -1), keepdim=True) - self.top_db)


class NormalizeMelSpec(nn.Module):
    """Per sample over (freq, time): z-score with the unbiased std (+eps), then min-max (+eps)."""

    def __init__(self, eps: float = 1e-6):
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean((1, 2), keepdim=True)
        std = x.std((1, 2), keepdim=True)
        z = (x - mean) / (std + self.eps)
        lo = torch.amin(z, dim=(1, 2), keepdim=True)
        hi = torch.amax(z, dim=(1, 2), keepdim=True)
        return (z - lo) / (hi - lo + self.eps)
