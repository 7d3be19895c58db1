"""The ensemble tree of a version 2 spec, per file and over the whole submission.

A group is *held* when it, or a group below it, has a step of submission scope
(:func:`birdinfer.ops.submission.is_submission`: ``rank_mean`` / ``column_normalize`` with ``scope:
"submission"``). Per file (:func:`file_rows`) every model's rows and every group that is not held are computed
as before; a held group's members are kept. Once every file is done, :func:`fuse` computes the held groups
from the members' rows of all files: per-file steps file by file, submission steps on all files' rows at once,
and returns each file's final rows. A spec without held groups has its final rows after :func:`file_rows`
(``FileRows.final``), so ``submit`` and ``predict`` hold nothing for it.

Nodes are named for reports and ``submit --member-rows`` (:func:`node_names`): a model by its name, a group by
its name when that is unique in the tree (else by its place, ``ensemble.members[1]``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from ..ops.file_steps import FileContext, run_row_steps
from ..ops.submission import across_files, is_submission, member_weights, rank_fuse
from ..spec.v2 import GroupSpec, MemberRef

__all__ = ["FileRows", "is_held", "file_rows", "fuse", "node_names", "frontier", "ROOT"]

ROOT = "ensemble"
#: Combine steps with a submission form: ``fn(members[m][f], weights, params) -> per-file rows``.
_SUBMISSION_COMBINE = {"rank_mean": rank_fuse}


@dataclass
class FileRows:
    """One file's rows before fusion: ``models`` (name → rows after its row steps, in the folder's label
    columns) and ``groups`` (tree place → rows) of every group that is not held; ``notes`` left by its steps."""

    name: str | None
    models: dict[str, np.ndarray] = field(default_factory=dict)
    groups: dict[str, np.ndarray] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def final(self) -> np.ndarray | None:
        """The ensemble's rows (None while the tree is held until the submission is done)."""
        return self.groups.get(ROOT)

    def context(self) -> FileContext:
        return FileContext(self.name, self.notes)


def _child(path: str, i: int) -> str:
    return f"{path}.members[{i}]"


def is_held(group: GroupSpec) -> bool:
    """Whether ``group`` (or a group below it) has a submission-scope step."""
    return (is_submission(group.combine) or any(is_submission(s) for s in group.steps)
            or any(isinstance(m, GroupSpec) and is_held(m) for m in group.members))


def file_rows(group: GroupSpec, models: Mapping[str, np.ndarray], rows: FileRows, path: str = ROOT) -> np.ndarray | None:
    """Fill ``rows.groups`` with every group below ``group`` that is not held (``rows.models`` holds the models
    that ran); returns ``group``'s rows (None when it is held or none of its members ran)."""
    values, weights = [], []
    weight_of = member_weights(group.combine, [m.weight for m in group.members])  # numbers, or per column
    for i, member in enumerate(group.members):
        if isinstance(member, MemberRef):
            value = models.get(member.model)
        else:
            value = file_rows(member, models, rows, _child(path, i))
        if value is not None:
            values.append(value)
            weights.append(weight_of[i])
    if not values or is_held(group):
        return None
    result = run_row_steps(group.steps, group.combine(values, weights), rows.context())
    rows.groups[path] = result
    return result


def fuse(group: GroupSpec, files: Sequence[FileRows]) -> list[np.ndarray | None]:
    """Every file's final rows from the rows held per file (None for a file where no model ran)."""
    return _values(group, ROOT, files)


def _values(group: GroupSpec, path: str, files: Sequence[FileRows]) -> list[np.ndarray | None]:
    if not is_held(group):
        return [f.groups.get(path) for f in files]
    members = [[f.models.get(m.model) for f in files] if isinstance(m, MemberRef) else _values(m, _child(path, i), files)
               for i, m in enumerate(group.members)]
    weights = member_weights(group.combine, [m.weight for m in group.members])
    if is_submission(group.combine):
        out = _SUBMISSION_COMBINE[group.combine.name](members, weights, group.combine.params)
    else:
        out = []
        for f in range(len(files)):
            present = [(v[f], w) for v, w in zip(members, weights) if v[f] is not None]
            out.append(group.combine([v for v, _ in present], [w for _, w in present]) if present else None)
    for step in group.steps:
        if is_submission(step):
            out = across_files(step, out)
        else:
            out = [None if v is None else run_row_steps([step], v, f.context()) for v, f in zip(out, files)]
    return out


def node_names(group: GroupSpec) -> dict[tuple[str, str], str]:
    """``{("model", name) | ("group", place): display name}`` for every node below the root."""
    places: list[tuple[str, GroupSpec]] = []
    models: list[str] = []

    def walk(g: GroupSpec, path: str) -> None:
        for i, m in enumerate(g.members):
            if isinstance(m, MemberRef):
                models.append(m.model)
            else:
                places.append((_child(path, i), m))
                walk(m, _child(path, i))

    walk(group, ROOT)
    names = {("model", m): m for m in models}
    counts: dict[str, int] = {}
    for _, g in places:
        counts[g.name] = counts.get(g.name, 0) + 1
    for place, g in places:
        unique = counts[g.name] == 1 and g.name not in models and g.name != ROOT
        names[("group", place)] = g.name if unique else place
    return names


def frontier(group: GroupSpec) -> list[tuple[str, str]]:
    """The per-file rows :func:`fuse` reads (``("model", name)`` / ``("group", place)``), in tree order; just the
    root when nothing is held."""
    if not is_held(group):
        return [("group", ROOT)]
    out: list[tuple[str, str]] = []

    def walk(g: GroupSpec, path: str) -> None:
        for i, m in enumerate(g.members):
            if isinstance(m, MemberRef):
                out.append(("model", m.model))
            elif is_held(m):
                walk(m, _child(path, i))
            else:
                out.append(("group", _child(path, i)))

    walk(group, ROOT)
    return out
