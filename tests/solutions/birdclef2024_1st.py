"""BirdCLEF 2024 1st place inference, transcribed from docs/solutions/2024_1st.md (librosa + torch).

``models`` are torch modules ``(R, 1, 128, 640)`` → clip logits ``(R, K)`` (plain timm classifiers).
Generalisation beyond their 4-minute files: R = N // 5 s rows (≥ 1), the tail dropped, a file shorter than
5 s zero-padded at the end.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

SR = 32000
CHUNK = 5 * SR
MEL = {"n_fft": 1024, "hop_length": 500, "n_mels": 128, "fmin": 40, "fmax": 15000}
FRAMES = 320
TOP_DB = 100.0
GAIN = 1024.0


def load(path) -> np.ndarray:
    import librosa

    y, sr = librosa.load(str(path), sr=None)
    if sr != SR:
        raise ValueError(f"{path}: {sr} Hz; the transcription assumes 32 kHz files as the competition's")
    return y.astype(np.float32)


def chunks_of(y: np.ndarray) -> np.ndarray:
    rows = max(1, len(y) // CHUNK)
    if len(y) < rows * CHUNK:
        y = np.pad(y, (0, rows * CHUNK - len(y)))
    return y[: rows * CHUNK].reshape(rows, CHUNK)


def features(y: np.ndarray) -> np.ndarray:
    import librosa

    chunks = chunks_of(y) * GAIN
    mel = librosa.feature.melspectrogram(y=chunks, sr=SR, power=2.0, **MEL).astype("float32")[:, :, :FRAMES]
    mel = mel[:, np.newaxis]
    before = np.concatenate([mel[:1], mel[:-1]], axis=0)
    after = np.concatenate([mel[1:], mel[-1:]], axis=0)
    windows = np.concatenate([before, mel, after], axis=-1)[..., FRAMES // 2: -FRAMES // 2]
    return librosa.power_to_db(windows, ref=1, top_db=TOP_DB).astype("float32")


def smooth(p: np.ndarray) -> np.ndarray:
    out = p.copy()
    for i in range(len(p)):
        out[i] = p[max(0, i - 2): i + 3].mean(axis=0)
    return out


def predict_file(y: np.ndarray, models) -> np.ndarray:
    import torch

    x = torch.from_numpy(features(y))
    per_model = []
    for model in models:
        with torch.no_grad():
            p = torch.sigmoid(model(x)).double().numpy()
        per_model.append(smooth(p))
    return np.mean(per_model, axis=0)


def predict(paths, models, labels) -> pd.DataFrame:
    frames = []
    for path in paths:
        stem = Path(path).stem
        probs = predict_file(load(path), models)
        frame = pd.DataFrame(probs, columns=list(labels))
        frame.insert(0, "row_id", [f"{stem}_{5 * (r + 1)}" for r in range(len(probs))])
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)
