"""Each model / row / combine step of manifest version 2 alone, against a plain numpy / scipy oracle."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage
import scipy.stats
from scipy.special import expit

from birdinfer.ops import WindowLayout
from birdinfer.ops.registry import build_params
from birdinfer.ops.steps import COMBINE_STEPS, MODEL_STEPS, ROW_STEPS, Outputs


def window_probabilities(logits: np.ndarray, n_windows: int) -> np.ndarray:
    """Version 1's rule (REFERENCE.md section 4): chunks of two 5 s windows, max of the logits over each half,
    then sigmoid."""
    chunks, n_labels, frames = logits.shape
    window_max = logits.reshape(chunks, n_labels, 2, frames // 2).max(axis=3)
    return expit(window_max.transpose(0, 2, 1).reshape(2 * chunks, n_labels)[:n_windows]).astype(np.float32)


def v1_smooth(p: np.ndarray, f: float) -> np.ndarray:
    """Version 1's smoothing: inner rows ``f·p[k-1] + (1-2f)·p[k] + f·p[k+1]``, edge rows ``(1-f)·p + f·neighbour``."""
    p = p.astype(np.float64)
    out = (1 - 2 * f) * p
    out[1:] += f * p[:-1]
    out[:-1] += f * p[1:]
    out[0], out[-1] = (1 - f) * p[0] + f * p[1], (1 - f) * p[-1] + f * p[-2]
    return out.astype(np.float32)


def step(registry, name: str, *args, **params):
    entry = registry[name]
    return entry.fn(*args, build_params(entry.params, params, where="test"))


def first_place_timeline(probs: np.ndarray, step_frames: int, delta: int, dtype=np.float16) -> np.ndarray:
    """A plain transcription of the 2025 1st place's overlap-average + max per row + delta TTA
    (docs/solutions/2025_1st.md): windows one row apart, centred on their row."""
    n, classes, frames = probs.shape
    total = frames + step_frames * (n - 1)
    acc = np.zeros((total, n, classes), dtype=dtype)
    mask = np.zeros((total, 1), dtype=dtype)
    for s in range(n):
        acc[s * step_frames : s * step_frames + frames, s] += probs[s].T
        mask[s * step_frames : s * step_frames + frames] += 1
    timeline = acc.sum(1) / mask
    pad = (frames - step_frames) // 2
    extra = (frames - step_frames) % 2
    timeline = timeline[pad : total - pad - extra]
    rows = timeline.reshape(n, step_frames, classes).max(1)
    rows *= 0.5
    for s in range(n):
        left = timeline[s * step_frames : (s + 1) * step_frames] if s == 0 else timeline[s * step_frames - delta : (s + 1) * step_frames - delta]
        rows[s] += left.max(0) * 0.25
        right = timeline[s * step_frames : (s + 1) * step_frames] if s == n - 1 else timeline[s * step_frames + delta : (s + 1) * step_frames + delta]
        rows[s] += right.max(0) * 0.25
    return rows


@pytest.mark.parametrize("accumulate,dtype,tol", [("float16", np.float16, 0.0), ("float32", np.float32, 1e-6)])
@pytest.mark.parametrize("n_rows", [1, 2, 12])
def test_timeline_rows_equals_first_place_transcription(accumulate, dtype, tol, n_rows):
    rng = np.random.default_rng(n_rows)
    probs = expit(rng.standard_normal((n_rows, 7, 16)) * 3).astype(np.float32)
    layout = WindowLayout(n_rows, 4.0, 1, 1.5)  # 20 s windows, 5 s step, centred: 6 frames trimmed each side
    shifts = [{"frames": 0, "weight": 0.5}, {"frames": -2, "weight": 0.25}, {"frames": 2, "weight": 0.25}]
    got = step(MODEL_STEPS, "timeline_rows", Outputs({"p": probs}, layout, n_rows), output="p", shifts=shifts,
               accumulate=accumulate).rows
    expected = first_place_timeline(probs, 4, 2, dtype).astype(np.float32)
    assert got.shape == (n_rows, 7)
    np.testing.assert_allclose(got, expected, atol=tol, rtol=0)


def test_timeline_rows_is_version_1_framewise_max():
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((6, 5, 16)).astype(np.float32) * 4
    for n_rows in (12, 11):
        state = Outputs({"l": logits}, WindowLayout(6, 2.0, 2, 0.0), n_rows)
        got = step(MODEL_STEPS, "timeline_rows", step(MODEL_STEPS, "sigmoid", state, output="l"), output="l").rows
        np.testing.assert_array_equal(got, window_probabilities(logits, n_rows))


def test_clip_rows_reduce_blend_softmax():
    rng = np.random.default_rng(2)
    clip = rng.standard_normal((3, 4)).astype(np.float32)
    frame = rng.standard_normal((3, 4, 6)).astype(np.float32)
    state = Outputs({"clip": clip, "frame": frame}, WindowLayout(3, 2.0, 2, 0.0), 5)
    state = step(MODEL_STEPS, "sigmoid", state, output="clip")
    state = step(MODEL_STEPS, "sigmoid", state, output="frame")
    state = step(MODEL_STEPS, "reduce_frames", state, output="frame", into="frame_max", how="max")
    state = step(MODEL_STEPS, "blend", state, weights={"clip": 0.5, "frame_max": 0.5}, into="mix")
    expected = 0.5 * expit(clip) + 0.5 * expit(frame).max(axis=2)
    np.testing.assert_allclose(state.get("mix"), expected, atol=1e-6)
    rows = step(MODEL_STEPS, "clip_rows", state, output="mix").rows
    np.testing.assert_allclose(rows, np.repeat(expected, 2, axis=0)[:5], atol=1e-6)
    soft = step(MODEL_STEPS, "softmax", Outputs({"c": clip}, state.layout, 5), output="c").get("c")
    np.testing.assert_allclose(soft, np.exp(clip) / np.exp(clip).sum(axis=1, keepdims=True), rtol=1e-5)


def test_smooth_kernel_nearest_is_version_1_rule():
    p = np.random.default_rng(3).random((12, 6)).astype(np.float32)
    got = step(ROW_STEPS, "smooth", p, kernel=[0.15, 0.7, 0.15], mode="nearest")
    np.testing.assert_allclose(got, v1_smooth(p, 0.15), atol=1e-7)
    np.testing.assert_allclose(step(ROW_STEPS, "smooth", p[:1], kernel=[0.15, 0.7, 0.15]), p[:1], atol=1e-7)
    five = step(ROW_STEPS, "smooth", p, kernel=[0.1, 0.2, 0.4, 0.2, 0.1], mode="reflect")
    np.testing.assert_allclose(five, scipy.ndimage.convolve1d(p.astype(np.float64), [0.1, 0.2, 0.4, 0.2, 0.1], axis=0, mode="reflect"))


def test_gaussian_box_scale_blend_power_clip():
    p = np.random.default_rng(4).random((9, 3))
    np.testing.assert_allclose(step(ROW_STEPS, "gaussian_smooth", p, sigma=1.5),
                               scipy.ndimage.gaussian_filter1d(p, 1.5, axis=0, mode="nearest"))
    box = step(ROW_STEPS, "box_mean", p, size=5)
    for i in range(9):
        np.testing.assert_allclose(box[i], p[max(0, i - 2) : i + 3].mean(axis=0))
    scaled = step(ROW_STEPS, "file_scale", p, top_k=3, power=0.5)
    np.testing.assert_allclose(scaled, p * np.sort(p, axis=0)[-3:].mean(axis=0) ** 0.5)
    np.testing.assert_allclose(step(ROW_STEPS, "file_scale", p[:2], top_k=3), p[:2] * p[:2].mean(axis=0))
    np.testing.assert_allclose(step(ROW_STEPS, "file_max_blend", p, weight=0.3), 0.7 * p + 0.3 * p.max(axis=0))
    np.testing.assert_allclose(step(ROW_STEPS, "power", p, exponent=2.0), p**2)
    np.testing.assert_allclose(step(ROW_STEPS, "clip_values", p, min=0.2, max=0.8), np.clip(p, 0.2, 0.8))


def test_combine_steps():
    rng = np.random.default_rng(5)
    a, b = rng.random((6, 4)), rng.random((6, 4))
    np.testing.assert_allclose(step(COMBINE_STEPS, "weighted_mean", [a, b], [3.0, 1.0]), 0.75 * a + 0.25 * b)
    np.testing.assert_allclose(step(COMBINE_STEPS, "weighted_mean", [a, b], [0.0, 0.0]), 0.5 * (a + b))
    np.testing.assert_allclose(step(COMBINE_STEPS, "weighted_sum", [a, b], [0.4, 0.5]), 0.4 * a + 0.5 * b)
    np.testing.assert_allclose(step(COMBINE_STEPS, "mean", [a, b], [9.0, 1.0]), 0.5 * (a + b))
    ranks = step(COMBINE_STEPS, "rank_mean", [a, b], [1.0, 1.0])
    ra = (scipy.stats.rankdata(a, axis=0) - 1) / 5
    rb = (scipy.stats.rankdata(b, axis=0) - 1) / 5
    np.testing.assert_allclose(ranks, 0.5 * (ra + rb))
