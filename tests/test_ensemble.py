"""Ensemble rules (REFERENCE.md section 4) of a version 1 folder upgraded to a spec and run by the one engine
(birdinfer.runtime.engine.SpecEngine), against direct loop transcriptions: sigmoid and max per 5 s window, weighted
means of models within a group and of groups (renormalised over the models that ran), smoothing over a file."""

from types import SimpleNamespace

import numpy as np
import pytest

from birdinfer.runtime.engine import SpecEngine
from birdinfer.errors import ParameterError
from birdinfer.spec.manifest import Manifest, MelGroup, ModelEntry
from birdinfer.spec.files import ModelVariant
from birdinfer.spec.upgrade import upgrade

SR = 32000


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _manifest(smoothing: float = 0.15, labels=("s1", "s2")):
    groups = (
        MelGroup("v1", 2048, 64, 8, 60, 16000, 32, weight=2.5),
        MelGroup("v2", 1536, 64, 8, 50, 16000, 32, weight=1.0),
    )
    v = {"f32": ModelVariant(openvino="x.xml")}
    models = (
        ModelEntry("a", "arch", "v1", 1.5, (6, 1, 8, 64), 16, v),
        ModelEntry("b", "arch", "v1", 0.5, (6, 1, 8, 64), 16, v),
        ModelEntry("c", "arch", "v2", 2.0, (6, 1, 8, 64), 16, v),
    )
    return upgrade(Manifest(labels=tuple(labels), groups=groups, models=models, smoothing=smoothing))


def _engine(manifest, logits: dict[str, np.ndarray]) -> SpecEngine:
    """The engine with stand-in networks that return the given frame logits ``(windows, labels, frames)``."""
    models = [SimpleNamespace(name=m.name, entry=m, runner=lambda x, out=logits.get(m.name): [out[: len(x)]])
              for m in manifest.models]
    return SpecEngine(manifest, models)


def _block(engine, seconds: float, n_rows: int):
    calls, spent = {m.name: 0 for m in engine.models}, {m.name: 0.0 for m in engine.models}
    y = (0.05 * np.random.default_rng(0).standard_normal(int(seconds * SR))).astype(np.float32)
    return engine.infer_block(engine.features(y, [m.name for m in engine.models]), n_rows,
                              [m.name for m in engine.models], spent, calls)


@pytest.mark.parametrize("seconds,n_rows", [(60.0, 12), (35.0, 7)])
def test_window_probabilities_match_loop(seconds, n_rows):
    manifest = _manifest(labels=[f"s{i}" for i in range(5)])
    rng = np.random.default_rng(0)
    logits = {m.name: (rng.normal(size=(6, 5, 16)) * 3).astype(np.float32) for m in manifest.models}
    rows = _block(_engine(manifest, logits), seconds, n_rows)
    n_chunks = -(-n_rows // 2)
    for name, got in rows.items():
        seq = _sigmoid(logits[name][:n_chunks]).transpose(1, 0, 2).reshape(5, n_chunks * 16)  # chunks along time
        want = np.stack([seq[:, k * 8 : (k + 1) * 8].max(axis=1) for k in range(n_rows)])
        assert got.shape == (n_rows, 5)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_rows_the_windows_do_not_cover_are_refused():
    manifest = _manifest()
    logits = {m.name: np.zeros((6, 2, 16), np.float32) for m in manifest.models}
    with pytest.raises(ParameterError, match="do not cover"):
        _block(_engine(manifest, logits), 60.0, 13)


def test_smooth_matches_reference_formula():
    rng = np.random.default_rng(1)
    p = rng.random((12, 2)).astype(np.float32)
    engine = _engine(_manifest(0.15), {})
    got = engine.finish([{"a": p[:5]}, {"a": p[5:]}])  # over the file's rows, across blocks
    want = p.copy()
    want[0] = 0.85 * p[0] + 0.15 * p[1]
    want[-1] = 0.85 * p[-1] + 0.15 * p[-2]
    for k in range(1, 11):
        want[k] = 0.15 * p[k - 1] + 0.70 * p[k] + 0.15 * p[k + 1]
    np.testing.assert_allclose(got, want, rtol=1e-6)
    np.testing.assert_allclose(engine.finish([{"a": p[:1]}]), p[:1], rtol=1e-7)  # one row: nothing to mix with
    np.testing.assert_allclose(_engine(_manifest(0.0), {}).finish([{"a": p}]), p, rtol=1e-7)


def test_combine_weighted_means_and_renormalises_when_models_missing():
    engine = _engine(_manifest(0.0), {})
    a, b, c = (np.full((3, 2), v, np.float32) for v in (0.2, 0.6, 0.9))
    v1 = (1.5 * 0.2 + 0.5 * 0.6) / 2.0
    want = (2.5 * v1 + 1.0 * 0.9) / 3.5
    np.testing.assert_allclose(engine.finish([{"a": a, "b": b, "c": c}]), want, rtol=1e-6)
    # b dropped: v1 is a alone; c dropped: the final is v1 alone
    np.testing.assert_allclose(engine.finish([{"a": a, "c": c}]), (2.5 * 0.2 + 0.9) / 3.5, rtol=1e-6)
    np.testing.assert_allclose(engine.finish([{"a": a, "b": b}]), v1, rtol=1e-6)
