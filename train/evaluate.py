"""Quick evaluation of a trained checkpoint in torch (no export): soundscape windows and held-out crops.

Used by tests and benchmarks to measure a model before it is exported. Window probabilities follow the
runtime's ensemble rule for one model (REFERENCE.md section 4): sigmoid of the frame-wise logits, the
chunks concatenated, max over each 5 s segment, then temporal smoothing (factor ``smoothing``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from scipy.special import expit

from birdinfer.io.audio import load_audio
from birdinfer.spec.manifest import MelGroup
from birdinfer.tools.metric import score_files
from birdinfer.ops.steps import SmoothParams, smooth
from birdinfer.runtime.mel_frontend import MelFrontEnd
from birdinfer_export.checkpoint import load_checkpoint
from birdinfer_export.network import SEDNet

__all__ = ["window_probabilities", "predict_soundscapes", "score_checkpoint"]


@torch.no_grad()
def window_probabilities(model: SEDNet, chunks: np.ndarray, n_windows: int, *, smoothing: float = 0.15) -> np.ndarray:
    """dB chunks ``(n_chunks, 1, n_mels, 2F)`` → per-5 s-window probabilities ``(n_windows, n_classes)``."""
    logits = model(torch.from_numpy(chunks)).numpy()  # (n_chunks, C, T')
    n_chunks, n_classes, frames = logits.shape  # a chunk is two 5 s windows: max over each half, then sigmoid
    window_max = logits.reshape(n_chunks, n_classes, 2, frames // 2).max(axis=3)
    probs = expit(window_max.transpose(0, 2, 1).reshape(2 * n_chunks, n_classes)[:n_windows])
    kernel = (smoothing, 1.0 - 2.0 * smoothing, smoothing)  # the runtime's smooth step (nearest edges)
    return smooth(probs, SmoothParams(kernel=kernel, mode="nearest")).astype(np.float32)


def predict_soundscapes(
    checkpoint: str | Path, audio_files: Sequence[str | Path], *, arch: str, group: MelGroup, labels: Sequence[str],
    smoothing: float = 0.15,
) -> pd.DataFrame:
    """Submission-format table (``row_id`` + one column per label) for ``audio_files`` from one checkpoint."""
    model = load_checkpoint(checkpoint, arch=arch, n_mels=group.n_mels, n_classes=len(labels))
    front_end = MelFrontEnd([group])
    rows, values = [], []
    for path in audio_files:
        y = load_audio(path)
        n = front_end.n_windows(len(y))
        values.append(window_probabilities(model, front_end(y)[group.name], n, smoothing=smoothing))
        rows += [f"{Path(path).stem}_{5 * (k + 1)}" for k in range(n)]
    table = pd.DataFrame(np.concatenate(values), columns=list(labels))
    table.insert(0, "row_id", rows)
    return table


def score_checkpoint(checkpoint: str | Path, data: str | Path, *, arch: str, group: MelGroup, out: str | Path | None = None) -> float:
    """Macro ROC-AUC of ``checkpoint`` on ``data/test_soundscapes`` against ``data/test_solution.csv``."""
    data = Path(data)
    labels = list(pd.read_csv(data / "taxonomy.csv", dtype={"primary_label": str}).primary_label)
    files = sorted((data / "test_soundscapes").glob("*.ogg"))
    table = predict_soundscapes(checkpoint, files, arch=arch, group=group, labels=labels)
    out = Path(out) if out is not None else Path(checkpoint).with_suffix(".test_predictions.csv")
    table.to_csv(out, index=False)
    return score_files(out, data / "test_solution.csv")
