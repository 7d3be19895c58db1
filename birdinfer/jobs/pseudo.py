"""Pseudo-labels: an ensemble's probabilities for unlabelled soundscapes, per 5 s window, as soft labels.

``pseudo_label(audio_dir, models, out)`` runs one or more model folders over every recording of
``audio_dir`` with the runtime :class:`birdinfer.runtime.pipeline.Predictor` (each folder's own weighted ensemble
and post-processing, any folder format) and writes ``row_id`` (``<stem>_<end second>``, the rows of the
folder's ``rows.seconds``) + one probability column per label. Several
folders are combined by a weighted mean (:func:`combine_predictions`), as the reference combined its
labelling models. The CSV feeds ``birdinfer train --pseudo-labels``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..errors import OutputError, ParameterError

__all__ = ["pseudo_label", "combine_predictions"]

log = logging.getLogger(__name__)


def combine_predictions(tables: Sequence[pd.DataFrame], weights: Sequence[float] | None = None) -> pd.DataFrame:
    """Weighted mean of prediction tables (``row_id`` + species columns), rows matched by ``row_id``.

    The result has the first table's rows and the union of species columns (first-seen order); a species a
    table lacks counts as 0 there. Raises :class:`ParameterError` when row ids differ between tables.
    """
    if not tables:
        raise ParameterError("combine_predictions needs at least one table")
    weights = [1.0] * len(tables) if weights is None else [float(w) for w in weights]
    if len(weights) != len(tables) or min(weights) < 0 or sum(weights) <= 0:
        raise ParameterError(f"need one non-negative weight per table with a positive sum, got {weights}")
    rows = tables[0]["row_id"].astype(str)
    species: list[str] = []
    for t in tables:
        species += [c for c in t.columns if c != "row_id" and c not in species]
    total = np.zeros((len(rows), len(species)), dtype=np.float64)
    for k, (t, w) in enumerate(zip(tables, weights)):
        indexed = t.set_index(t["row_id"].astype(str)).drop(columns="row_id")
        if set(indexed.index) != set(rows):
            raise ParameterError(f"prediction table {k} covers other row_ids than table 0")
        total += w * indexed.reindex(index=rows, columns=species, fill_value=0.0).to_numpy(dtype=np.float64)
    out = pd.DataFrame((total / sum(weights)).astype(np.float32), columns=species)
    out.insert(0, "row_id", rows.to_numpy())
    return out


def pseudo_label(
    audio_dir: str | Path,
    models: str | Path | Sequence[str | Path],
    out: str | Path,
    *,
    precision: str = "f32",
    backend: str = "auto",
    weights: Sequence[float] | None = None,
) -> pd.DataFrame:
    """Soft labels for every recording in ``audio_dir`` from one or more model folders; writes ``out`` (CSV).

    Returns the table. A recording that fails to decode is logged and skipped.
    """
    from ..io.audio import list_audio_files
    from ..errors import AudioDecodeError
    from ..io.output import row_ids
    from ..runtime.pipeline import Predictor

    folders = [models] if isinstance(models, (str, Path)) else list(models)
    files = list_audio_files(audio_dir)
    if not files:
        raise ParameterError(f"{audio_dir} holds no audio files to pseudo-label")
    tables = []
    for folder in folders:
        predictor = Predictor(folder, precision=precision, backend=backend)
        rows, values = [], []
        try:
            for path in files:
                try:
                    probabilities = predictor.predict_file(path)
                except AudioDecodeError as e:
                    log.warning("skipping %s: %s", path, e)
                    continue
                rows += row_ids(Path(path).stem, len(probabilities), predictor.manifest.window_seconds)
                values.append(probabilities)
        finally:
            predictor.close()
        if not values:
            raise ParameterError(f"no recording of {audio_dir} could be decoded; nothing to pseudo-label")
        table = pd.DataFrame(np.concatenate(values), columns=list(predictor.labels))
        table.insert(0, "row_id", rows)
        tables.append(table)
    combined = combine_predictions(tables, weights)
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        combined.to_csv(tmp, index=False)
        tmp.replace(out)
    except OSError as e:
        raise OutputError(f"cannot write pseudo-labels to {out}: {e}") from e
    return combined
