"""Ensembling and post-processing (REFERENCE.md section 4), driven by the manifest.

Per file: each model's frame logits → sigmoid → max over the frames of each 5 s window; weighted mean
of the models of a group; weighted mean of the groups; temporal smoothing across the file's windows.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
from scipy.special import expit

from .errors import ParameterError
from .manifest import Manifest

__all__ = ["window_probabilities", "combine", "smooth"]


def window_probabilities(logits: np.ndarray, n_windows: int) -> np.ndarray:
    """Frame logits ``(chunks, n_labels, T')`` → window probabilities ``(n_windows, n_labels)``.

    The chunks are concatenated in time and split into windows of ``T'/2`` frames (a chunk is two
    windows); each window takes the maximum over its frames. sigmoid is monotonic, so the max is taken
    on logits and sigmoid applied to the ``n_windows × n_labels`` maxima only: same numbers, less work.
    """
    chunks, n_labels, frames = logits.shape
    if frames % 2:
        raise ParameterError(f"frames per chunk must be even (two 5 s windows per chunk), got {frames}")
    if not 0 <= n_windows <= 2 * chunks:
        raise ParameterError(f"n_windows={n_windows} does not fit {chunks} chunks of two windows")
    half = frames // 2
    window_max = logits.reshape(chunks, n_labels, 2, half).max(axis=3)  # (chunks, labels, 2)
    window_max = window_max.transpose(0, 2, 1).reshape(2 * chunks, n_labels)[:n_windows]
    return expit(window_max).astype(np.float32)


def combine(manifest: Manifest, per_model: Mapping[str, np.ndarray]) -> np.ndarray:
    """Weighted mean of models within each group, then weighted mean of groups.

    ``per_model`` maps model names to ``(n_windows, n_labels)`` probabilities. Models absent from it (e.g.
    dropped by a time budget) are left out and the remaining weights renormalised, within their group and
    across groups, so the result stays a weighted mean of what ran.
    """
    if not per_model:
        raise ParameterError("combine() needs at least one model's probabilities")
    group_preds, group_weights = [], []
    for group in manifest.groups:
        members = [m for m in manifest.models_of(group.name) if m.name in per_model]
        if not members:
            continue
        weights = np.array([m.weight for m in members], dtype=np.float64)
        if weights.sum() <= 0:
            weights = np.ones_like(weights)
        stacked = np.stack([per_model[m.name] for m in members]).astype(np.float64)
        group_preds.append(np.tensordot(weights / weights.sum(), stacked, axes=1))
        group_weights.append(group.weight)
    weights = np.array(group_weights, dtype=np.float64)
    if weights.sum() <= 0:
        weights = np.ones_like(weights)
    return np.tensordot(weights / weights.sum(), np.stack(group_preds), axes=1).astype(np.float32)


def smooth(probs: np.ndarray, factor: float) -> np.ndarray:
    """Temporal smoothing within one file: ``(n_windows, n_labels)`` → same shape.

    Inner rows: ``f·p[k-1] + (1-2f)·p[k] + f·p[k+1]``; first and last rows: ``(1-f)·p + f·neighbour``.
    A file with a single window is returned unchanged (it has no neighbour).
    """
    if factor == 0 or probs.shape[0] < 2:
        return probs.copy()
    p = probs.astype(np.float64)
    out = (1 - 2 * factor) * p
    out[1:] += factor * p[:-1]
    out[:-1] += factor * p[1:]
    out[0] = (1 - factor) * p[0] + factor * p[1]
    out[-1] = (1 - factor) * p[-1] + factor * p[-2]
    return out.astype(np.float32)
