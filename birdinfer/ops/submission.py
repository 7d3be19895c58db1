"""Steps over the whole submission: their numbers depend on every file's rows, not one file's.

A step has submission scope when its parameter ``scope`` is ``"submission"``:

* ``rank_mean`` with ``scope: "submission"`` (a combine step, registered here): each member's rows of
  **all files** ranked per class (ties averaged), scaled to [0, 1] by ``(rank − 1)/(N − 1)`` (``N`` = that
  member's rows over the submission; 0.5 when ``N`` is 1; ``ranks: "percent"``: ``rank / N``, pandas'
  ``rank(pct=True)``), then per row the weighted mean of the members that ran for its file (weights
  renormalised per file; all-zero weights count as equal). The 2026 1st place's rank fusion of its fine-tuned
  models (0.8) with native Perch (0.2); the 2nd place's per-class percentile rank averaging. With
  ``taxon_weights`` a member's weight differs per taxon class of the column (the class of its label in a taxonomy
  CSV, as ``temperature`` reads it), renormalised per column (the 2nd place's per-taxon weights). With ``gates``
  (``scope: "submission"`` only) the blend is then moved toward one member's rank where thresholds on the members'
  values, ranks or smoothed context hold (the 2nd and 5th places' gates: :mod:`birdinfer.ops.gates`). With ``scope:
  "file"`` (the default) the ranks are within the file.
* ``column_normalize`` (a row step): per class over all rows of the submission, ``minmax``
  ``(x − min)/(max − min)`` (0.5 for a constant column) or ``rank`` (as above). With ``scope: "file"`` it works
  within each file instead.

The engine holds every file's member rows until all files are done, then runs these steps on the rows of all
files at once (:mod:`birdinfer.runtime.fusion`). The functions here are pure: lists of per-file arrays in,
lists out; a file where a member did not run (``None``) is left out of that member's ranks.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Annotated, Literal, Sequence

import numpy as np
import scipy.stats

from .gates import Gate, check_gate_members, gate_blend
from .registry import Range
from .steps import COMBINE_STEPS, ROW_STEPS
from .tables import TableSource, check_known, taxonomy_field, unbound

__all__ = ["is_submission", "rank_fuse", "across_files", "ColumnNormalizeParams", "column_normalize", "unit_ranks",
           "RankParams", "RankPlan", "rank_mean", "member_weights"]


def is_submission(step) -> bool:
    """Whether a parsed step works over the whole submission (its parameter ``scope`` is ``"submission"``)."""
    return getattr(step.params, "scope", "file") == "submission"


def unit_ranks(x: np.ndarray, how: str = "unit") -> np.ndarray:
    """Ranks per column (ties averaged) scaled to [0, 1] by ``(rank − 1)/(N − 1)`` (0.5 for a single row), or
    ``rank / N`` (``how="percent"``, pandas' ``rank(pct=True)``)."""
    if how == "percent":
        return scipy.stats.rankdata(x, axis=0, method="average") / max(len(x), 1)
    if len(x) < 2:
        return np.full(x.shape, 0.5)
    return (scipy.stats.rankdata(x, axis=0, method="average") - 1.0) / (len(x) - 1.0)


# ----------------------------------------------------------------------------------------- rank_mean
@dataclass(frozen=True)
class RankParams:
    scope: Literal["file", "submission"] = "file"  # "submission": over the rows of every file (rank_fuse)
    ranks: Literal["unit", "percent"] = "unit"  # (rank − 1)/(N − 1), or rank / N (pandas rank(pct=True))
    taxonomy: str | None = None  # CSV file of the folder giving each label its taxon class (with taxon_weights)
    taxon_weights: dict[str, dict[str, Annotated[float, Range(0, 1e6)]]] = field(default_factory=dict)  # member → class → w
    label_field: str = "primary_label"
    class_field: str = "class_name"
    gates: tuple[Gate, ...] = ()  # after the blend, in order (birdinfer.ops.gates); scope "submission" only

    def __post_init__(self):
        if self.gates and self.scope != "submission":
            raise ValueError("gates compare ranks over the whole submission: they need scope 'submission'")
        if len({g.name for g in self.gates}) != len(self.gates):
            raise ValueError(f"gates: two gates share a name ({', '.join(g.name for g in self.gates)})")
        if bool(self.taxonomy) != bool(self.taxon_weights):
            raise ValueError("taxon_weights and taxonomy go together (member → {taxon class: weight}, and the CSV "
                             "that gives each label its class)")
        for member, by_class in self.taxon_weights.items():
            if not by_class:
                raise ValueError(f"taxon_weights of {member!r} names no class")

    def check_members(self, names: Sequence[str]) -> None:
        """The members the gates name are the group's (``ValueError`` naming the gate and the member)."""
        check_gate_members(self.gates, names)


@dataclass(frozen=True, eq=False)  # holds arrays: compared by identity
class RankPlan:
    """``rank_mean`` with its taxonomy read: the class of each column, then (once its group is known,
    :meth:`for_members`) each member's weight per column (its ``taxon_weights`` where given, else its weight) and
    the members' names (the gates name them)."""

    params: RankParams
    classes: tuple[str, ...]
    weights: tuple[np.ndarray, ...] | None = None  # per member of the group, (C,)
    names: tuple[str, ...] = ()

    @property
    def scope(self) -> str:
        return self.params.scope

    @property
    def summary(self) -> str:
        parts = [f"{m}: {', '.join(f'{c} {w:g}' for c, w in by.items())}" for m, by in self.params.taxon_weights.items()]
        text = [f"rank_mean weights by {self.params.class_field} of {self.params.taxonomy}: {'; '.join(parts)}"] if parts else []
        text += [f"gate {g.describe()}" for g in self.params.gates]
        return "; ".join(text)

    def for_members(self, names: Sequence[str], weights: Sequence[float]) -> "RankPlan":
        check_known(self.params.taxon_weights, set(names), what="taxon_weights: member", name="the group's members")
        self.params.check_members(names)
        classes = np.asarray(self.classes, dtype=object)
        out = []
        for name, w in zip(names, weights):
            vector = np.full(len(classes), float(w))
            for taxon, value in self.params.taxon_weights.get(name, {}).items():
                vector[classes == taxon] = value
            out.append(vector)
        return replace(self, weights=tuple(out), names=tuple(names))


def _bind_rank(p: RankParams, source: TableSource) -> RankParams | RankPlan:
    if not p.taxonomy:
        return RankPlan(p, ("",) * len(source.columns)) if p.gates else p
    classes = taxonomy_field(source, p.taxonomy, p.label_field, p.class_field)
    for by_class in p.taxon_weights.values():
        check_known(by_class, set(classes.values()), what=f"taxon_weights: {p.class_field}", name=p.taxonomy)
    return RankPlan(p, tuple(classes.get(label, "") for label in source.columns))


def member_weights(combine, weights: Sequence[float]) -> list:
    """A group's member weights for its combine step: per member a number, or ``(C,)`` per column (``rank_mean``
    with ``taxon_weights``)."""
    per_column = getattr(combine.params, "weights", None)
    if getattr(combine.params, "params", None) is not None and per_column is None:
        raise unbound(combine.name, [combine.params.params.taxonomy])
    if isinstance(combine.params, RankParams) and (combine.params.taxonomy or combine.params.gates):
        raise unbound(combine.name, [combine.params.taxonomy or "the folder's labels"])
    return list(per_column) if per_column is not None else list(weights)


def _weighted(ranked: Sequence[np.ndarray], weights: Sequence) -> np.ndarray:
    """``Σ wₘ rₘ / Σ wₘ`` per column; weights are numbers or ``(C,)``; a column whose weights sum to 0 is the plain mean."""
    stack = np.stack([np.asarray(r, np.float64) for r in ranked])  # (M, R, C)
    w = np.stack([np.broadcast_to(np.asarray(x, np.float64), stack.shape[2:]) for x in weights])  # (M, C)
    total = w.sum(axis=0)
    w = np.where(total > 0, w, 1.0)
    return np.einsum("mc,mrc->rc", w / w.sum(axis=0), stack)


def _ranks_how(p) -> str:
    return getattr(getattr(p, "params", p), "ranks", "unit")


@COMBINE_STEPS.register("rank_mean", RankParams, files=lambda p: [p.taxonomy] if p.taxonomy else [], bind=_bind_rank)
def rank_mean(members: list[np.ndarray], weights: list, p: RankParams | RankPlan) -> np.ndarray:
    """Each member's rows ranked per class within the file (ties averaged, scaled as ``ranks`` says), then their
    weighted mean per column."""
    return _weighted([unit_ranks(np.asarray(m, np.float64), _ranks_how(p)) for m in members], weights)


def across_files(fn, values: Sequence[np.ndarray | None]) -> list[np.ndarray | None]:
    """``fn`` on the rows of every file at once (files without rows left out), split back per file."""
    present = [i for i, v in enumerate(values) if v is not None]
    out: list[np.ndarray | None] = [None] * len(values)
    if not present:
        return out
    whole = fn(np.concatenate([np.asarray(values[i], np.float64) for i in present]))
    bounds = np.cumsum([0] + [len(values[i]) for i in present])
    for i, lo, hi in zip(present, bounds[:-1], bounds[1:]):
        out[i] = whole[lo:hi]
    return out


def rank_fuse(members: Sequence[Sequence[np.ndarray | None]], weights: Sequence, p=None) -> list[np.ndarray | None]:
    """``members[m][f]``: member ``m``'s rows of file ``f`` (None: it did not run there) → per file the weighted
    mean of the members' submission-wide ranks (module docstring); ``weights``: numbers or ``(C,)`` per member."""
    how = _ranks_how(p)
    ranked = [across_files(lambda x: unit_ranks(x, how), files) for files in members]
    n_files = len(members[0]) if members else 0
    out: list[np.ndarray | None] = []
    for f in range(n_files):
        present = [(r[f], w) for r, w in zip(ranked, weights) if r[f] is not None]
        out.append(_weighted([r for r, _ in present], [w for _, w in present]) if present else None)
    gates = getattr(getattr(p, "params", p), "gates", ())
    if gates:
        names = p.names  # a RankPlan bound to its group (member_weights refuses an unbound one)
        out, _ = gate_blend(out, dict(zip(names, members)), dict(zip(names, ranked)), gates,
                            lambda files: across_files(lambda x: unit_ranks(x, how), files))
    return out


@dataclass(frozen=True)
class ColumnNormalizeParams:
    method: Literal["minmax", "rank"] = "minmax"
    scope: Literal["submission", "file"] = "submission"


@ROW_STEPS.register("column_normalize", ColumnNormalizeParams)
def column_normalize(rows: np.ndarray, p: ColumnNormalizeParams) -> np.ndarray:
    """Per column: ``(x − min)/(max − min)`` (0.5 where the column is constant) or unit ranks, over the rows given
    (the whole submission's rows when ``scope`` is ``"submission"``: the engine passes them all at once)."""
    x = rows.astype(np.float64)
    if not len(x):
        return x
    if p.method == "rank":
        return unit_ranks(x)
    lo, hi = x.min(axis=0, keepdims=True), x.max(axis=0, keepdims=True)
    span = hi - lo
    return np.where(span > 0, (x - lo) / np.where(span > 0, span, 1.0), 0.5)
