"""BirdCLEF 2025 2nd place inference, transcribed from docs/solutions/2025_2nd.md (plain numpy + librosa + torch).

The mel is inside their graph, so ``graphs`` are torch modules ``(B, 160000) → probabilities (B, K)`` (the folds
already averaged inside); this file does what their dataset and notebook do around the graph: 5 s pieces,
``ceil`` rows, left padding of the last piece, per-piece peak normalisation, mean of the graphs, and the
file-level top-k scaling (k is our choice, see the facts).

``frontend_oracle`` is the graph's front end (nnAudio conv STFT when nnAudio imports, else torch.stft) +
torchaudio-semantics HTK mel, per-piece dB and z-score/min-max: used to check the exported graph's front end.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from . import torchaudio_like as ta

SR = 32000
PIECE = 5 * SR
MEL = {"sample_rate": SR, "n_mels": 128, "f_min": 20.0, "n_fft": 2048, "hop_length": 512}
TOP_K = 3


def load(path) -> np.ndarray:
    import librosa

    y, _ = librosa.load(str(path), sr=SR)
    return y.astype(np.float32)


def pieces(y: np.ndarray) -> np.ndarray:
    """``WaveAllFileDataset`` test pieces: ceil(N / 5 s), the short last one left-padded, then peak-normalised."""
    import librosa

    count = max(1, math.ceil(len(y) / PIECE))
    out = []
    for i in range(count):
        piece = y[i * PIECE: i * PIECE + PIECE]
        if len(piece) < PIECE:
            piece = np.pad(piece, (PIECE - len(piece), 0))
        out.append(librosa.util.normalize(piece))
    return np.stack(out).astype(np.float32)


def file_scale(p: np.ndarray, k: int = TOP_K) -> np.ndarray:
    """Every row times the mean of the file's top-k rows, per class."""
    k = min(k, len(p))
    top = np.sort(p, axis=0)[-k:].mean(axis=0, keepdims=True)
    return p * top


def predict_file(y: np.ndarray, graphs, *, top_k: int | None = TOP_K) -> np.ndarray:
    import torch

    x = torch.from_numpy(pieces(y))
    with torch.no_grad():
        probs = np.mean([g(x).double().numpy() for g in graphs], axis=0)
    return file_scale(probs, top_k) if top_k else probs


def predict(paths, graphs, labels, **kwargs) -> pd.DataFrame:
    frames = []
    for path in paths:
        stem = Path(path).stem
        probs = predict_file(load(path), graphs, **kwargs)
        frame = pd.DataFrame(probs, columns=list(labels))
        frame.insert(0, "row_id", [f"{stem}_{5 * (r + 1)}" for r in range(len(probs))])
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def stft_power(x, *, use_nnaudio: bool = True):
    """Window-normalised power STFT ``(B, 1025, frames)`` as their ``TraceableMelspec`` computed it."""
    import torch

    n_fft, hop = MEL["n_fft"], MEL["hop_length"]
    if use_nnaudio:
        from nnAudio.features.stft import STFT

        stft = STFT(n_fft=n_fft, win_length=None, freq_bins=None, hop_length=hop, window="hann", freq_scale="no",
                    center=True, pad_mode="reflect", iSTFT=False, sr=SR, trainable=False, output_format="Complex",
                    verbose=False)
        spec = stft(x) / torch.hann_window(n_fft).pow(2.0).sum().sqrt()
        return torch.sqrt(spec[..., 0].pow(2) + spec[..., 1].pow(2)).pow(2.0)
    return ta.power_spectrogram(x, n_fft=n_fft, hop_length=hop, normalized=True)


def frontend_oracle(x, *, use_nnaudio: bool = True):
    """``(B, 160000)`` peak-normalised pieces → the graph's backbone input ``(B, 1, 128, 313)``."""
    import torch

    power = stft_power(x, use_nnaudio=use_nnaudio)
    fb = ta.melscale_fbanks_htk(MEL["n_fft"] // 2 + 1, MEL["f_min"], SR // 2, MEL["n_mels"], SR)
    mel = torch.matmul(power.transpose(-1, -2), fb).transpose(-1, -2)
    db = ta.amplitude_to_db(mel.unsqueeze(1), top_db=80.0).squeeze(1)  # per piece (channel-agnostic)
    return ta.zscore_minmax(db).unsqueeze(1)
