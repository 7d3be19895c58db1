"""A plain transcription of REFERENCE.md (sections 2 and 4) with librosa, OpenCV and torch: the oracle the
runtime is compared against. Test-only: slow and straightforward on purpose, no code shared with birdinfer.
"""

from __future__ import annotations

import numpy as np

SR = 32000
WINDOW = 5 * SR


def load(path) -> np.ndarray:
    import librosa

    y, _ = librosa.load(str(path), sr=SR)
    y = y.astype(np.float32)
    bad = np.isnan(y)
    if bad.any():
        y[bad] = np.nanmean(y) if (~bad).any() else 0.0
    return y


def mel_chunks(y: np.ndarray, *, n_fft, hop_length, n_mels, fmin, fmax, frames_per_window, top_db=80.0) -> np.ndarray:
    """REFERENCE.md section 2 → ``(chunks, 1, n_mels, 2F)``; a partial last chunk is zero-power padded
    (the runtime's documented rule for lengths other than whole chunks)."""
    import cv2
    import librosa

    mel = librosa.feature.melspectrogram(
        y=y, sr=SR, n_fft=n_fft, hop_length=hop_length, n_mels=n_mels, fmin=fmin, fmax=fmax, power=2.0,
        center=True, pad_mode="constant",
    )
    width = max(1, (len(y) * frames_per_window) // WINDOW)
    mel = cv2.resize(mel, (width, n_mels), interpolation=cv2.INTER_LINEAR)
    step = 2 * frames_per_window
    chunks = []
    for i in range(0, width, step):
        chunk = mel[:, i : i + step]
        db = librosa.power_to_db(chunk, ref=1.0, top_db=top_db)
        if chunk.shape[1] < step:  # zero power padding: 10·log10(1e-10) = -100 dB, clipped like the rest
            floor = max(-100.0, float(db.max()) - top_db)
            db = np.concatenate([db, np.full((n_mels, step - chunk.shape[1]), floor, np.float32)], axis=1)
        chunks.append(db)
    return np.stack(chunks)[:, None].astype(np.float32)


def n_windows(n_samples: int) -> int:
    return max(1, n_samples // WINDOW) if n_samples else 0


def predict(y: np.ndarray, members, groups: dict, smoothing: float = 0.15) -> np.ndarray:
    """members: list of (torch module, group name, weight); groups: name → (mel kwargs, group weight).

    A plain per-file loop as the 4th-place notebook did it: sigmoid, concatenate chunks, 5 s max, weighted
    means, smoothing. Files up to 60 s (the runtime cuts longer ones into 60 s blocks)."""
    import torch

    rows = n_windows(len(y))
    group_preds, group_weights = [], []
    for name, (mel_kwargs, group_weight) in groups.items():
        mine = [(m, w) for m, g, w in members if g == name]
        if not mine:
            continue
        x = torch.from_numpy(mel_chunks(y, **mel_kwargs))
        acc, total = 0.0, 0.0
        for module, weight in mine:
            with torch.no_grad():
                probs = torch.sigmoid(module(x)).numpy()  # (chunks, C, T')
            chunks, classes, frames = probs.shape
            seq = probs.transpose(1, 0, 2).reshape(classes, chunks * frames)
            half = frames // 2
            seg = np.stack([seq[:, k * half : (k + 1) * half].max(axis=1) for k in range(rows)])
            acc = acc + weight * seg
            total += weight
        group_preds.append(acc / total)
        group_weights.append(group_weight)
    final = sum(w * p for w, p in zip(group_weights, group_preds)) / sum(group_weights)
    out = final.copy()
    f = smoothing
    if len(final) > 1:
        out[0] = (1 - f) * final[0] + f * final[1]
        out[-1] = (1 - f) * final[-1] + f * final[-2]
        for k in range(1, len(final) - 1):
            out[k] = f * final[k - 1] + (1 - 2 * f) * final[k] + f * final[k + 1]
    return out
