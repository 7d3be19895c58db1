"""BirdCLEF 2025 1st place inference, transcribed from docs/solutions/2025_1st.md (plain torch + librosa + scipy).

Slow and literal on purpose: a per-file loop, the whole padded file through a torchaudio-semantics mel, the
notebook's timeline rule and delta TTA. ``members`` are ``(module, weight, label_map)`` where ``module`` maps
``(S, 3, 224, 512)`` to framewise logits ``(S, K, F)`` and ``label_map`` is ``None`` or a list giving, for each
of the module's K outputs, its column in ``labels`` (or -1 when absent).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from . import torchaudio_like as ta

SR = 32000
N_FFT = 4096
N_MELS = 224
WINDOW_FRAMES = 512
DURATION = 20
STEP_SEC = 5
HOP = DURATION * SR // (WINDOW_FRAMES - 1)  # 1252
STEP_FRAMES = int(WINDOW_FRAMES * STEP_SEC / DURATION)  # 128
WEIGHTS = (0.133, 0.166, 0.133, 0.133, 0.166, 0.133, 0.133)
SMOOTH = np.array([0.1, 0.2, 0.4, 0.2, 0.1])


def load(path) -> np.ndarray:
    import librosa

    y, _ = librosa.load(str(path), sr=SR, res_type="kaiser_best")
    return y.astype(np.float32)


def n_rows(n_samples: int) -> int:
    """Our generalisation of the notebook's fixed 12 rows: N // 5 s, at least 1."""
    return max(1, n_samples // (STEP_SEC * SR))


def features(y: np.ndarray, rows: int | None = None):
    """The notebook's ``prepare_mel_specs_from_full_wave`` (separate_norm=False) → ``(rows, 3, 224, 512)``."""
    import torch

    rows = n_rows(len(y)) if rows is None else rows
    total_bins = WINDOW_FRAMES + (rows - 1) * (WINDOW_FRAMES * STEP_SEC / DURATION)
    total_len = (total_bins - 1) * HOP
    pad = math.ceil((total_len - len(y)) / 2)
    if pad < 0:
        raise ValueError(f"file of {len(y)} samples is longer than {rows} windows allow")
    wave = np.pad(y, (pad, pad))
    x = torch.tensor(wave.reshape(1, -1))
    mel = ta.mel_spectrogram(x, sample_rate=SR, n_fft=N_FFT, hop_length=HOP, n_mels=N_MELS, f_min=0, f_max=16000,
                             normalized=True)
    db = ta.amplitude_to_db(mel, top_db=80)
    norm = ta.zscore_minmax(db)
    windows = torch.stack([norm[0, :, i * STEP_FRAMES: i * STEP_FRAMES + WINDOW_FRAMES] for i in range(rows)], 0)
    return windows.unsqueeze(1).expand(-1, 3, -1, -1).contiguous()


def head_rows(prob: np.ndarray, *, tta_delta: int = 2, float16_timeline: bool = False) -> np.ndarray:
    """``get_head_preds`` with ``overlap_average_max_delta`` on framewise probabilities ``(S, K, F)`` → ``(S, K)``."""
    segments, labels, frames = prob.shape
    step = int(frames * (STEP_SEC / DURATION))
    pad_frames = (frames - step) // 2
    extra = 1 if (frames - step) % 2 else 0
    length = frames + step * (segments - 1)
    dtype = np.float16 if float16_timeline else np.float64
    timeline = np.zeros((length, segments, labels), dtype=dtype)
    count = np.zeros((length, 1), dtype=dtype)
    for s in range(segments):
        timeline[s * step: s * step + frames, s] += prob[s].T
        count[s * step: s * step + frames] += 1
    t = timeline.sum(1) / count
    t = t[pad_frames: length - pad_frames - extra]
    base = t.reshape(segments, step, labels).max(1)
    out = 0.5 * base
    for s in range(segments):
        left = t[s * step: (s + 1) * step] if s == 0 else t[s * step - tta_delta: (s + 1) * step - tta_delta]
        right = t[s * step: (s + 1) * step] if s == segments - 1 else t[s * step + tta_delta: (s + 1) * step + tta_delta]
        out[s] = out[s] + 0.25 * left.max(0) + 0.25 * right.max(0)
    return np.asarray(out, dtype=np.float64)


def predict_file(y: np.ndarray, members, n_labels: int, *, float16_timeline: bool = False) -> np.ndarray:
    import torch
    from scipy.ndimage import convolve1d

    x = features(y)
    total = np.zeros((x.shape[0], n_labels))
    for module, weight, label_map in members:
        with torch.no_grad():
            prob = torch.sigmoid(module(x)).double().numpy()
        rows = head_rows(prob, float16_timeline=float16_timeline)
        if label_map is not None:
            full = np.zeros((rows.shape[0], n_labels))
            for src, dst in enumerate(label_map):
                if dst >= 0:
                    full[:, dst] = rows[:, src]
            rows = full
        total += weight * rows  # weighted sum, weights not renormalised
    return convolve1d(total, SMOOTH, axis=0, mode="nearest")


def predict(paths, members, labels, **kwargs) -> pd.DataFrame:
    frames = []
    for path in paths:
        stem = Path(path).stem
        probs = predict_file(load(path), members, len(labels), **kwargs)
        frame = pd.DataFrame(probs, columns=list(labels))
        frame.insert(0, "row_id", [f"{stem}_{5 * (r + 1)}" for r in range(len(probs))])
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)
