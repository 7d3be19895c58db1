"""Ensemble rules (REFERENCE.md section 4) against direct loop transcriptions."""

import numpy as np
import pytest

from birdinfer.ensemble import combine, smooth, window_probabilities
from birdinfer.errors import ParameterError
from birdinfer.manifest import Manifest, MelGroup, ModelEntry, ModelVariant


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def test_window_probabilities_matches_loop():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 5, 16)).astype(np.float32) * 3
    got = window_probabilities(logits, 12)
    seq = _sigmoid(logits).transpose(1, 0, 2).reshape(5, 6 * 16)  # concat chunks along time
    want = np.stack([seq[:, k * 8 : (k + 1) * 8].max(axis=1) for k in range(12)])
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    assert got.shape == (12, 5)
    np.testing.assert_allclose(window_probabilities(logits, 7), want[:7], rtol=1e-6)


def test_window_probabilities_rejects_bad_counts():
    with pytest.raises(ParameterError):
        window_probabilities(np.zeros((1, 2, 16), np.float32), 3)
    with pytest.raises(ParameterError):
        window_probabilities(np.zeros((1, 2, 15), np.float32), 1)


def test_smooth_matches_reference_formula():
    rng = np.random.default_rng(1)
    p = rng.random((12, 4)).astype(np.float32)
    got = smooth(p, 0.15)
    want = p.copy()
    want[0] = 0.85 * p[0] + 0.15 * p[1]
    want[-1] = 0.85 * p[-1] + 0.15 * p[-2]
    for k in range(1, 11):
        want[k] = 0.15 * p[k - 1] + 0.70 * p[k] + 0.15 * p[k + 1]
    np.testing.assert_allclose(got, want, rtol=1e-6)
    np.testing.assert_array_equal(smooth(p[:1], 0.15), p[:1])  # one window: nothing to mix with
    np.testing.assert_array_equal(smooth(p, 0.0), p)


def _manifest():
    groups = (
        MelGroup("v1", 2048, 64, 8, 60, 16000, 32, weight=2.5),
        MelGroup("v2", 1536, 64, 8, 50, 16000, 32, weight=1.0),
    )
    v = {"f32": ModelVariant(openvino="x.xml")}
    models = (
        ModelEntry("a", "arch", "v1", 1.5, (6, 1, 8, 64), 2, v),
        ModelEntry("b", "arch", "v1", 0.5, (6, 1, 8, 64), 2, v),
        ModelEntry("c", "arch", "v2", 2.0, (6, 1, 8, 64), 2, v),
    )
    return Manifest(labels=("s1", "s2"), groups=groups, models=models)


def test_combine_weighted_means_and_renormalises_when_models_missing():
    m = _manifest()
    a, b, c = (np.full((3, 2), v, np.float32) for v in (0.2, 0.6, 0.9))
    v1 = (1.5 * 0.2 + 0.5 * 0.6) / 2.0
    want = (2.5 * v1 + 1.0 * 0.9) / 3.5
    np.testing.assert_allclose(combine(m, {"a": a, "b": b, "c": c}), want, rtol=1e-6)
    # b dropped: v1 is a alone; c dropped: the final is v1 alone
    np.testing.assert_allclose(combine(m, {"a": a, "c": c}), (2.5 * 0.2 + 0.9) / 3.5, rtol=1e-6)
    np.testing.assert_allclose(combine(m, {"a": a, "b": b}), v1, rtol=1e-6)
