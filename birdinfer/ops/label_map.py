"""The ``label_map`` model step: a model's own classes mapped onto the folder's labels by scientific name.

A foundation model (Perch v2: 14,795 classes named by scientific name in its ``labels.csv``) does not output
the competition's classes. ``label_map`` reads two CSV files of the model folder when the folder is loaded:

* ``labels``: the model's classes in output order, one per line after a header (``label_column``: the column
  holding the scientific names; default the first);
* ``taxonomy``: the folder's labels with their scientific names (BirdCLEF's ``taxonomy.csv``: ``label_field``
  ``primary_label``, ``name_field`` ``scientific_name``).

Each folder label then takes, on every window, the **maximum over the model classes of the same scientific
name** (usually one: *direct*); failing that, with ``genus: true``, the maximum over the model classes of its
**genus** (the first word of the name: *by genus*); failing that, ``fill`` (*missing*, also a label absent from
the taxonomy). Names are compared case-folded with runs of spaces as one. The map, and how many labels are
direct, by genus and missing, is built and logged when the folder is loaded; a map that maps nothing is refused
then, naming both files. The output's class axis becomes the folder's labels (any input width, e.g. 14,795).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import numpy as np

from ..errors import ParameterError
from .registry import VALUE
from .steps import MODEL_STEPS, Outputs
from .tables import TableSource, genus_of, read_table, scientific_key, taxonomy_field, unbound

__all__ = ["LabelMapParams", "LabelMapPlan", "label_map", "build_label_map"]


@dataclass(frozen=True)
class LabelMapParams:
    labels: str  # CSV file of the model folder: the model's classes, in output order
    taxonomy: str  # CSV file of the model folder: the folder's labels and their scientific names
    output: str = ""  # "" = the model's first output
    label_column: str | None = None  # column of `labels` with the scientific names (None: the first)
    label_field: str = "primary_label"  # column of `taxonomy` with the folder's labels
    name_field: str = "scientific_name"  # column of `taxonomy` with the scientific names
    genus: bool = True  # a label without a same-name class takes the max over its genus
    fill: Annotated[float, VALUE] = 0.0  # the value of labels mapped to nothing (logit scale before a sigmoid: e.g. -10)

    def __post_init__(self):
        if not self.labels or not self.taxonomy:
            raise ValueError("labels and taxonomy must name CSV files of the model folder")


@dataclass(frozen=True, eq=False)  # holds arrays: compared by identity
class LabelMapPlan:
    """A bound ``label_map``: output class ``targets[i]`` = max over model classes ``gather[starts[i]:starts[i+1]]``;
    the other classes get ``params.fill``."""

    params: LabelMapParams
    n_model: int
    n_labels: int
    gather: np.ndarray
    starts: np.ndarray
    targets: np.ndarray
    direct: tuple[str, ...]
    by_genus: tuple[str, ...]
    missing: tuple[str, ...]

    @property
    def output(self) -> str:
        return self.params.output

    @property
    def summary(self) -> str:
        head = (f"label_map {self.params.labels} ({self.n_model} classes) → {self.n_labels} labels via "
                f"{self.params.taxonomy}: {len(self.direct)} direct, {len(self.by_genus)} by genus, "
                f"{len(self.missing)} missing (fill {self.params.fill:g})")
        if self.missing:
            head += f": {', '.join(self.missing[:10])}{' …' if len(self.missing) > 10 else ''}"
        return head

    def counts(self) -> dict:
        return {"labels": self.params.labels, "model_classes": self.n_model, "direct": len(self.direct),
                "by_genus": len(self.by_genus), "missing": list(self.missing)}


def build_label_map(p: LabelMapParams, source: TableSource) -> LabelMapPlan:
    """Read the two files and build the map onto ``source.labels`` (``ValueError`` naming the files)."""
    names = read_table(source, p.labels).column(p.label_column)
    scientific = taxonomy_field(source, p.taxonomy, p.label_field, p.name_field)
    same_name: dict[str, list[int]] = {}
    same_genus: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        key = scientific_key(name)
        if key:
            same_name.setdefault(key, []).append(i)
            same_genus.setdefault(genus_of(key), []).append(i)
    gather, starts, targets = [], [], []
    direct, by_genus, missing = [], [], []
    for j, label in enumerate(source.labels):
        key = scientific_key(scientific.get(label, ""))
        found = same_name.get(key) if key else None
        if found is None and p.genus and key:
            found = same_genus.get(genus_of(key))
            (by_genus if found else missing).append(label)
        else:
            (direct if found else missing).append(label)
        if found:
            starts.append(len(gather))
            gather += found
            targets.append(j)
    if not targets:
        examples = [scientific.get(label, f"{label} (not in {p.taxonomy})") for label in source.labels[:3]]
        genus = " nor shares a genus with one" if p.genus else ""
        raise ValueError(f"{p.labels} and {p.taxonomy} map nothing: no {p.name_field} of the folder's "
                         f"{len(source.labels)} labels (e.g. {', '.join(examples)}) is a class of {p.labels} "
                         f"({len(names)} classes, e.g. {', '.join(names[:3])}){genus}; check label_column, "
                         "label_field, name_field and the files")
    return LabelMapPlan(p, len(names), len(source.labels), np.asarray(gather, np.int64), np.asarray(starts, np.int64),
                        np.asarray(targets, np.int64), tuple(direct), tuple(by_genus), tuple(missing))


def _names(known: dict, p: LabelMapParams) -> dict:
    if p.output not in known:
        raise ValueError(f"no model output named {p.output!r} (known: {', '.join(known)})")
    return known


@MODEL_STEPS.register("label_map", LabelMapParams, names=_names, files=lambda p: [p.labels, p.taxonomy],
                      bind=build_label_map)
def label_map(o: Outputs, p: LabelMapPlan) -> Outputs:
    """The output ``(W, M)`` / ``(W, M, T')`` of the model's ``M`` classes → ``(W, C)`` / ``(W, C, T')`` of the
    folder's ``C`` labels (module docstring)."""
    if not isinstance(p, LabelMapPlan):
        raise unbound("label_map", [p.labels, p.taxonomy])
    x = o.get(p.output)
    if x.shape[1] != p.n_model:
        raise ParameterError(f"label_map: output {p.output!r} has {x.shape[1]} classes, {p.params.labels} lists {p.n_model}")
    out = np.full((x.shape[0], p.n_labels) + x.shape[2:], p.params.fill, dtype=np.float32)
    if len(p.targets) and x.shape[0]:
        picked = np.take(x, p.gather, axis=1)
        out[:, p.targets] = np.maximum.reduceat(picked, p.starts, axis=1)
    return o.with_array(p.output, out)
