"""Files named by steps (a ``label_map``'s label list and taxonomy, a ``temperature``'s taxonomy, a
``file_prior``'s table): checked and read when a version 2 manifest is parsed, before any audio is read.

Each file is a plain name inside the folder (no ``..``, nothing resolving outside it). A folder's manifest must
list its sha256 in ``files`` like every model file, and the file must match it; the step's ``bind`` extra
(:mod:`birdinfer.ops.tables`) then builds its plan from the text (e.g. the label map, with how many labels are
direct, by genus and missing, logged). ``birdinfer import`` binds the spec against the spec's folder first (a
map that maps nothing is refused before any graph is read), then copies the files into the output folder and
records their checksums (:func:`step_file_names`). Also checked here: submission-scope steps
(:mod:`birdinfer.ops.submission`) only in the ensemble, and no model with both a ``label_map`` step and the
``label_map`` field.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Iterator, Mapping

from ..errors import ChecksumError, ModelFolderError
from ..ops.submission import is_submission
from ..ops.tables import TableSource
from .files import safe_join, sha256_file
from .v2 import GroupSpec, MemberRef, ModelSpec, Step

__all__ = ["bind_step_files", "step_file_names", "iter_steps", "plans"]

log = logging.getLogger(__name__)


def iter_steps(models, ensemble: GroupSpec | None) -> Iterator[Step]:
    """Every model, row and ensemble step of a parsed spec."""
    for m in models:
        yield from m.block_steps
        yield from m.row_steps
    if ensemble is not None:
        yield from _group_steps(ensemble)


def _group_steps(group: GroupSpec) -> Iterator[Step]:
    yield group.combine
    yield from group.steps
    for member in group.members:
        if isinstance(member, GroupSpec):
            yield from _group_steps(member)


def step_file_names(models, ensemble: GroupSpec | None) -> list[str]:
    """The folder files the steps name, in order of appearance, each once."""
    names: dict[str, None] = {}
    for step in iter_steps(models, ensemble):
        files = step.entry.extras.get("files")
        if files is not None:
            names.update(dict.fromkeys(files(getattr(step.params, "params", step.params))))
    return list(names)


def plans(manifest) -> list[tuple[str, object]]:
    """``(where, plan)`` of every bound step of a loaded manifest (plans carry a ``summary``)."""
    return [(s.where, s.params) for s in iter_steps(manifest.models, manifest.ensemble) if hasattr(s.params, "summary")]


class _Reader:
    """``read(name)``: a folder file's text, its sha256 checked against ``files`` when ``verify``."""

    def __init__(self, folder: Path, files: Mapping[str, str], verify: bool, where: str):
        self.folder, self.files, self.verify, self.where = folder, files, verify, where
        self.at = ""

    def read(self, name: str) -> str:
        path = safe_join(self.folder, name, where=f"{self.where}: {self.at}")
        if self.verify:
            expected = self.files.get(name)
            if expected is None:
                raise ModelFolderError(f"{self.where}: {self.at}: file {name!r} has no sha256 in 'files'; re-import the folder")
        if not path.is_file():
            raise ModelFolderError(f"{path}: file named by {self.at} is missing; copy the whole model folder")
        if self.verify and sha256_file(path) != expected:
            raise ChecksumError(f"{path}: sha256 {sha256_file(path)} differs from the manifest's {expected}; the file was "
                                "changed after import: copy it again or re-import")
        try:
            return path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as e:
            raise ModelFolderError(f"{path}: cannot read the file named by {self.at}: {e}") from e


def _bind(step: Step, reader: _Reader | None, labels, columns, where: str) -> Step:
    bind = step.entry.extras.get("bind")
    if bind is None or reader is None:
        return step
    reader.at = f"{step.where} (step {step.name!r})"
    try:
        plan = bind(step.params, TableSource(reader.read, tuple(labels), tuple(columns)))
    except ValueError as e:
        raise ModelFolderError(f"{where}: {step.where} (step {step.name!r}): {e}") from None
    if plan is step.params:  # nothing to read (e.g. rank_mean without taxon_weights)
        return step
    log.info("%s: %s: %s", where, step.where, plan.summary)
    return replace(step, params=plan)


def _model(m: ModelSpec, reader, labels, where: str) -> ModelSpec:
    at = f"models[{m.name!r}]"
    maps = [s for s in m.block_steps if s.name == "label_map"]
    if maps and m.label_map is not None:
        raise ModelFolderError(f"{where}: {at}: a 'label_map' step and the 'label_map' field both map the classes; keep one")
    if len(maps) > 1:
        raise ModelFolderError(f"{where}: {at}.steps: more than one 'label_map' step")
    for s in m.row_steps:
        if is_submission(s):
            raise ModelFolderError(f"{where}: {s.where} (step {s.name!r}): scope 'submission' works on the ensemble's "
                                   "members; put the model in an ensemble group with this step")
    columns = m.label_map.labels if m.label_map is not None else labels
    block = tuple(_bind(s, reader, labels, labels, where) for s in m.block_steps)
    rows = tuple(_bind(s, reader, labels, columns, where) for s in m.row_steps)
    n_classes = m.n_classes
    if maps:
        plan = next(s.params for s in block if s.name == "label_map")
        n_classes = getattr(plan, "n_model", 0)  # 0: unknown until the files are read
        for i, o in enumerate(m.outputs):
            if n_classes and o.shape is not None and o.kind != "embedding" and o.shape[1] != n_classes:
                raise ModelFolderError(f"{where}: {at}.outputs[{i}].shape {list(o.shape)}: the label_map's "
                                       f"{plan.params.labels} lists {n_classes} classes")
    return replace(m, block_steps=block, row_steps=rows, n_classes=n_classes)


def _group(group: GroupSpec, reader, labels, where: str) -> GroupSpec:
    members = tuple(_group(m, reader, labels, where) if isinstance(m, GroupSpec) else m for m in group.members)
    steps = tuple(_bind(s, reader, labels, labels, where) for s in group.steps)
    combine = _bind(group.combine, reader, labels, labels, where)
    names = [m.model if isinstance(m, MemberRef) else m.name for m in members]
    try:
        if hasattr(combine.params, "for_members"):  # weights per column of each member, names (rank_mean's)
            combine = replace(combine, params=combine.params.for_members(names, [m.weight for m in members]))
        elif hasattr(combine.params, "check_members"):  # not bound (no folder): its gates still name members
            combine.params.check_members(names)
    except ValueError as e:
        raise ModelFolderError(f"{where}: {combine.where} (step {combine.name!r}): {e}") from None
    return replace(group, members=members, steps=steps, combine=combine)


def bind_step_files(models, ensemble: GroupSpec, *, labels, where: str, folder: Path | None, files: Mapping[str, str],
                    verify: bool) -> tuple[tuple[ModelSpec, ...], GroupSpec]:
    """The models and ensemble with every file-reading step bound to its files in ``folder`` (``None``: left
    unbound; running such a step then says to load the folder). ``verify``: check each file's sha256."""
    reader = _Reader(Path(folder), files, verify, where) if folder is not None else None
    return tuple(_model(m, reader, labels, where) for m in models), _group(ensemble, reader, labels, where)
