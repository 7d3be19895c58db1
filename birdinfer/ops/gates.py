"""Gates on a rank blend, and the steps that follow it in the BirdCLEF 2026 ensembles (2nd and 5th place).

* **Gates** (``rank_mean``'s parameter ``gates``, :func:`gate_blend`): after the members' ranks are blended, each
  gate moves the cells where all its tests hold toward one member's rank: ``(1 − alpha)·blended + alpha·max(toward)``.
  A test compares a member's ``value`` (its rows as the group receives them, e.g. probabilities clipped to
  [1e-5, 1 − 1e-5]), its ``rank`` (the rank the blend uses) or its ``context`` (its values smoothed over the file's
  rows with a Student-t kernel ``(1 + (k/scale)²/df)^−(df+1)/2``, ``k = −radius … radius``, normalised, edges
  repeated, a file of one row left as it is, then ranked like the members) with a threshold (``above``: ``>``,
  ``below``: ``<``). Gates run in the order given and a cell moved by one gate is not moved by a later one (the
  scripts' masks accumulate: ``~fake_only & ~proto_cont``). A file where a member named by a gate did not run
  keeps its blend for that gate. A test may read several ``members`` instead of one, reduced per cell by
  ``reduce`` (``mean``, ``max``, ``min``): the 2nd place's gate 1 tests the CNNs' mean probability, its gate 3
  any CNN's rank (their max). A gate with ``"enabled": false`` is stated but moves nothing (the scripts' switched-off
  gates).
* ``column_group_max`` (a row step): each column of a group of labels takes the row's max over the group (the
  scripts' sonotype mirroring). With ``"missing": "skip"`` labels the folder lacks are left out of their group
  and a group with fewer than two present is skipped; the load report says which groups matched.
* ``rare_suppress`` (a row step, ``scope`` ``"submission"`` by default): in the columns whose taxon class (the
  taxonomy CSV's ``class_name``) is one of ``classes``, every value below the column's mean + ``margin`` is
  multiplied by ``factor`` (the scripts' rare-class suppression: Amphibia, Mammalia, Reptilia; 0.05; 0.9).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Annotated, Callable, Literal, Sequence

import numpy as np

from .registry import Range
from .steps import ROW_STEPS
from .tables import TableSource, check_known, taxonomy_field, unbound

__all__ = ["ContextKernel", "GateTest", "GateTarget", "Gate", "check_gate_members", "context_rows", "gate_blend",
           "GroupMaxParams", "GroupMaxPlan", "column_group_max", "RareParams", "RarePlan", "rare_suppress"]

log = logging.getLogger(__name__)

Quantity = Literal["value", "rank", "context"]


@dataclass(frozen=True)
class ContextKernel:
    """The Student-t kernel a gate's ``context`` smooths a member's values with over the rows of a file."""

    radius: Annotated[int, Range(1, 1000)] = 3
    scale: Annotated[float, Range(0, 1e6, low_open=True)] = 1.2
    df: Annotated[float, Range(0, 1e6, low_open=True)] = 2.0

    def taps(self) -> np.ndarray:
        k = np.arange(-self.radius, self.radius + 1, dtype=np.float64)
        w = (1.0 + (k / self.scale) ** 2 / self.df) ** (-(self.df + 1.0) / 2.0)
        return w / w.sum()


@dataclass(frozen=True)
class GateTest:
    member: str | None = None  # one member's quantity, or:
    of: Quantity = "rank"
    above: Annotated[float, Range(0, 1)] | None = None  # holds where the quantity is > above
    below: Annotated[float, Range(0, 1)] | None = None  # holds where the quantity is < below
    members: tuple[str, ...] = ()  # several members' quantity, reduced per cell by ``reduce``
    reduce: Literal["mean", "max", "min"] | None = None

    def __post_init__(self):
        if (self.member is None) == (not self.members):
            raise ValueError("a test names either one 'member' or a list of 'members' (with 'reduce')")
        if self.members and (len(set(self.members)) != len(self.members) or len(self.members) < 2):
            raise ValueError(f"a test's 'members' must be at least two different members, got {list(self.members)}")
        if self.members and self.reduce is None:
            raise ValueError(f"a test of members {list(self.members)} needs 'reduce' (mean, max or min)")
        if self.member is not None and self.reduce is not None:
            raise ValueError(f"'reduce' goes with a list of 'members', not with one member {self.member!r}")
        if (self.above is None) == (self.below is None):
            raise ValueError(f"a test of {self.label()!r} ({self.of}) needs exactly one of 'above' and 'below'")

    def names(self) -> list[str]:
        return list(self.members) if self.members else [self.member]

    def label(self) -> str:
        return f"{self.reduce}({', '.join(self.members)})" if self.members else str(self.member)


@dataclass(frozen=True)
class GateTarget:
    member: str
    of: Literal["rank", "context"] = "rank"


@dataclass(frozen=True)
class Gate:
    name: str
    when: tuple[GateTest, ...]  # all must hold
    toward: tuple[GateTarget, ...]  # the cell moves toward the max of these
    alpha: Annotated[float, Range(0, 1)]
    context: ContextKernel = field(default_factory=ContextKernel)
    enabled: bool = True  # false: stated, moves nothing (a switched-off gate)

    def __post_init__(self):
        if not self.when or not self.toward:
            raise ValueError(f"gate {self.name!r} needs at least one test in 'when' and one target in 'toward'")

    def members(self) -> list[str]:
        return [m for t in self.when for m in t.names()] + [t.member for t in self.toward]

    def describe(self) -> str:
        tests = " & ".join(f"{t.label()} {t.of} {'>' if t.above is not None else '<'} "
                           f"{t.above if t.above is not None else t.below:g}" for t in self.when)
        toward = ", ".join(f"{t.member} {t.of}" for t in self.toward)
        off = "" if self.enabled else " (off)"
        return f"{self.name}{off}: where {tests}: {1 - self.alpha:g}·blend + {self.alpha:g}·max({toward})"


def check_gate_members(gates: Sequence[Gate], names: Sequence[str]) -> None:
    """Every member a gate names is a member of the group (a ``ValueError`` naming the gate and the member)."""
    for i, gate in enumerate(gates):
        for member in gate.members():
            if member not in names:
                raise ValueError(f"gates[{i}] ({gate.name!r}): member {member!r} is not in the group (members: "
                                 f"{', '.join(names)})")


def context_rows(rows: np.ndarray, kernel: ContextKernel) -> np.ndarray:
    """One file's rows smoothed over time with the kernel's taps, edges repeated (a single row is returned as is)."""
    x = np.asarray(rows, np.float64)
    if len(x) < 2:
        return x
    r = kernel.radius
    padded = np.pad(x, ((r, r), (0, 0)), mode="edge")
    return sum(w * padded[i: i + len(x)] for i, w in enumerate(kernel.taps()))


def gate_blend(blended: list[np.ndarray | None], values: dict[str, list], ranked: dict[str, list], gates: Sequence[Gate],
               rank_all: Callable) -> tuple[list[np.ndarray | None], list[int]]:
    """The gates applied in order to the blended rows of every file (module docstring). ``values[m][f]`` /
    ``ranked[m][f]``: member ``m``'s rows and ranks of file ``f`` (None where it did not run); ``rank_all(list)``
    ranks per-file rows over the whole submission. Returns the rows and the cells each gate moved."""
    contexts: dict[tuple[str, ContextKernel], list] = {}

    def quantity(member: str, of: str, kernel: ContextKernel) -> list:
        if of == "value":
            return values[member]
        if of == "rank":
            return ranked[member]
        if (member, kernel) not in contexts:
            contexts[member, kernel] = rank_all([None if v is None else context_rows(v, kernel) for v in values[member]])
        return contexts[member, kernel]

    def reduced(test: GateTest, kernel: ContextKernel) -> list:
        if not test.members:
            return quantity(test.member, test.of, kernel)
        parts = [quantity(m, test.of, kernel) for m in test.members]
        how = {"mean": np.mean, "max": np.max, "min": np.min}[test.reduce]
        return [None if any(q[f] is None for q in parts) else how([q[f] for q in parts], axis=0)
                for f in range(len(blended))]

    out = [None if b is None else np.asarray(b, np.float64) for b in blended]
    taken = [None if b is None else np.zeros(b.shape, dtype=bool) for b in blended]
    counts = []
    for gate in gates:
        if not gate.enabled:
            counts.append(0)
            continue
        tests = [(reduced(t, gate.context), t) for t in gate.when]
        targets = [quantity(t.member, t.of, gate.context) for t in gate.toward]
        moved = 0
        for f, rows in enumerate(out):
            if rows is None or any(q[f] is None for q, _ in tests) or any(q[f] is None for q in targets):
                continue
            mask = ~taken[f]
            for q, t in tests:
                mask &= (q[f] > t.above) if t.above is not None else (q[f] < t.below)
            toward = np.max([q[f] for q in targets], axis=0)
            out[f] = np.where(mask, (1.0 - gate.alpha) * rows + gate.alpha * toward, rows)
            taken[f] |= mask
            moved += int(mask.sum())
        counts.append(moved)
        log.info("rank_mean gate %r moved %d of %d cells", gate.name, moved, sum(t.size for t in taken if t is not None))
    return out, counts


# ------------------------------------------------------------------------------------ column_group_max
@dataclass(frozen=True)
class GroupMaxParams:
    groups: tuple[tuple[str, ...], ...]  # labels; each column of a group takes the group's row max
    missing: Literal["error", "skip"] = "error"  # "skip": labels the folder lacks are left out (a group < 2: skipped)

    def __post_init__(self):
        if not self.groups:
            raise ValueError("groups names no group")
        seen: set[str] = set()
        for i, group in enumerate(self.groups):
            if len(set(group)) < 2:
                raise ValueError(f"groups[{i}] {list(group)} needs at least two different labels")
            if seen & set(group):
                raise ValueError(f"groups[{i}]: label {sorted(seen & set(group))[0]!r} is in two groups")
            seen |= set(group)


@dataclass(frozen=True, eq=False)  # holds arrays: compared by identity
class GroupMaxPlan:
    params: GroupMaxParams
    columns: tuple[np.ndarray, ...]  # per matched group, its columns (at least two)
    skipped: tuple[int, ...]  # the groups with fewer than two labels in the folder

    @property
    def summary(self) -> str:
        n = len(self.params.groups)
        text = f"column_group_max: {len(self.columns)} of {n} groups matched the folder's labels"
        if self.skipped:
            text += (f"; skipped (fewer than two of their labels in the folder): "
                     f"{', '.join('/'.join(self.params.groups[i]) for i in self.skipped)}")
        return text + ("" if self.columns else ": the step changes nothing")


def _bind_group_max(p: GroupMaxParams, source: TableSource) -> GroupMaxPlan:
    index = {label: i for i, label in enumerate(source.columns)}
    columns, skipped = [], []
    for i, group in enumerate(p.groups):
        absent = [label for label in group if label not in index]
        if absent and p.missing == "error":
            raise ValueError(f"groups[{i}]: label {absent[0]!r} is not one of the folder's labels (set \"missing\": "
                             "\"skip\" to leave such labels out)")
        present = [index[label] for label in group if label in index]
        if len(present) >= 2:
            columns.append(np.array(present))
        else:
            skipped.append(i)
    return GroupMaxPlan(p, tuple(columns), tuple(skipped))


@ROW_STEPS.register("column_group_max", GroupMaxParams, bind=_bind_group_max)
def column_group_max(rows: np.ndarray, p: GroupMaxPlan) -> np.ndarray:
    """Each column of a matched group set to the row's max over the group's columns."""
    if not isinstance(p, GroupMaxPlan):
        raise unbound("column_group_max", ["the folder's labels"])
    x = np.array(rows, dtype=np.float64)
    for cols in p.columns:
        x[:, cols] = x[:, cols].max(axis=1, keepdims=True)
    return x


# ---------------------------------------------------------------------------------------- rare_suppress
@dataclass(frozen=True)
class RareParams:
    taxonomy: str  # CSV of the folder giving each label its taxon class
    classes: tuple[str, ...]  # the taxon classes whose columns are suppressed
    margin: Annotated[float, Range(-1e3, 1e3)] = 0.05  # a value below the column mean + margin is suppressed
    factor: Annotated[float, Range(0, 1e3)] = 0.9  # ... multiplied by factor
    scope: Literal["submission", "file"] = "submission"  # the column mean over every file's rows, or the file's
    label_field: str = "primary_label"
    class_field: str = "class_name"

    def __post_init__(self):
        if not self.classes:
            raise ValueError("classes names no taxon class")


@dataclass(frozen=True, eq=False)
class RarePlan:
    params: RareParams
    mask: np.ndarray  # (C,) the columns of those classes

    @property
    def scope(self) -> str:
        return self.params.scope

    @property
    def summary(self) -> str:
        p = self.params
        return (f"rare_suppress: {int(self.mask.sum())} columns of {p.class_field} {', '.join(p.classes)} of {p.taxonomy}: "
                f"values below the column mean + {p.margin:g} times {p.factor:g}")


def _bind_rare(p: RareParams, source: TableSource) -> RarePlan:
    classes = taxonomy_field(source, p.taxonomy, p.label_field, p.class_field)
    check_known(dict.fromkeys(p.classes), set(classes.values()), what=f"classes: {p.class_field}", name=p.taxonomy)
    return RarePlan(p, np.array([classes.get(label, "") in p.classes for label in source.columns], dtype=bool))


@ROW_STEPS.register("rare_suppress", RareParams, files=lambda p: [p.taxonomy], bind=_bind_rare)
def rare_suppress(rows: np.ndarray, p: RarePlan) -> np.ndarray:
    """In the plan's columns: values below the column's mean (over the rows given: the whole submission's when
    ``scope`` is ``"submission"``) + margin, times factor."""
    if not isinstance(p, RarePlan):
        raise unbound("rare_suppress", [p.taxonomy])
    x = np.array(rows, dtype=np.float64)
    if not len(x) or not p.mask.any():
        return x
    cols = x[:, p.mask]
    threshold = cols.mean(axis=0, keepdims=True) + p.params.margin
    x[:, p.mask] = np.where(cols < threshold, cols * p.params.factor, cols)
    return x
