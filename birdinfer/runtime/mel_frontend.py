"""Version 1 mel groups run on the one engine (:class:`MelFrontEnd`): for export checks and training."""

from __future__ import annotations

from typing import Iterable

import numpy as np

from ..errors import ParameterError
from ..spec.manifest import Manifest, MelGroup, ModelEntry
from ..spec.files import ModelVariant
from ..spec.upgrade import upgrade
from .engine import FrontEndGraph

__all__ = ["MelFrontEnd"]


class MelFrontEnd:
    """Version 1 mel groups on the one engine: ``MelFrontEnd(groups)(y)`` → ``{group name: (n_chunks, 1, n_mels,
    2F) float32 dB}`` (REFERENCE.md section 2), what a version 1 folder's models are fed. For export checks and
    training; the runtime runs folders through :class:`birdinfer.runtime.engine.SpecEngine`."""

    def __init__(self, groups: Iterable[MelGroup], *, sample_rate: int = 32000, window_seconds: float = 5.0):
        self.groups = tuple(groups)
        if not self.groups:
            raise ParameterError("MelFrontEnd needs at least one MelGroup")
        names = [g.name for g in self.groups]
        if len(set(names)) != len(names):
            raise ParameterError(f"MelFrontEnd: duplicate group names {names}")
        models = tuple(ModelEntry(f"_{g.name}", "", g.name, 1.0, (-1, 1, g.n_mels, g.frames_per_chunk), 2,
                                  {"f32": ModelVariant(openvino=f"_{g.name}.xml")}) for g in self.groups)
        v1 = Manifest(labels=("_",), groups=self.groups, models=models, sample_rate=sample_rate,
                      window_seconds=window_seconds, chunk_seconds=2 * window_seconds, smoothing=0.0)
        v1.validate()
        self.manifest = upgrade(v1)
        self._graph = FrontEndGraph(self.manifest)

    def n_windows(self, n_samples: int) -> int:
        """5 s rows of a signal of ``n_samples`` (the row rule of :meth:`birdinfer.spec.v2.ManifestV2.n_rows`)."""
        return self.manifest.n_rows(n_samples)

    def output_shape(self, group: MelGroup, n_samples: int) -> tuple[int, int, int, int]:
        """``(n_chunks, 1, n_mels, 2F)`` of ``group``'s output for ``n_samples``: a chunk per two rows (at least one
        for a non-empty signal)."""
        rows = self.n_windows(n_samples)
        return (max(1, -(-rows // 2)) if n_samples else 0, 1, group.n_mels, group.frames_per_chunk)

    def __call__(self, y: np.ndarray) -> dict[str, np.ndarray]:
        y = np.asarray(y)
        if y.ndim == 1 and y.size == 0:
            return {g.name: np.zeros((0, 1, g.n_mels, g.frames_per_chunk), np.float32) for g in self.groups}
        out = self._graph(y)
        return {g.name: out[g.name].data for g in self.groups}

