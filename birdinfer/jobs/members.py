"""Rows before fusion in ``submit`` and ``predict``: the members' rows written for offline tuning
(``submit --member-rows DIR``), the rows ``predict`` keeps per recording for a spec fused over the whole
submission, and what the runs report before any audio is read (label maps, file names a prior's pattern does
not match).

``--member-rows DIR`` writes one CSV per member of the ensemble tree (every model, every group below the root
whose rows exist per file; :func:`birdinfer.runtime.fusion.node_names`): ``row_id`` and the submission's
columns, the member's rows after its own steps and before the group above combines it, for the files where it
ran (a file that failed, or where the time budget had dropped the model, has no rows in it).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import ParameterError
from ..io.output import ColumnPlan, check_writable_folder, row_ids, submission_frame, write_csv_atomic
from ..runtime.fusion import FileRows, frontier, fuse, node_names
from ..spec.step_files import plans

__all__ = ["prepare_member_dir", "write_member_rows", "check_file_names", "plan_report", "notes_of", "HeldParts"]

log = logging.getLogger(__name__)


def prepare_member_dir(folder: str | Path) -> Path:
    """Create ``folder`` and check it can be written (before any audio work)."""
    return check_writable_folder(
        folder, when_file=f"--member-rows {folder} is a file; give a folder (one CSV per member is written into it)",
        what="the member rows folder", choose="choose a writable folder", probe="member.csv")


def _file_name(name: str, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "member"
    candidate, n = base, 1
    while candidate.lower() in taken:
        n += 1
        candidate = f"{base}-{n}"
    taken.add(candidate.lower())
    return f"{candidate}.csv"


def write_member_rows(folder: Path, manifest, results, columns: ColumnPlan) -> dict[str, str]:
    """One CSV per member (module docstring) → ``{member: file written}``."""
    taken: set[str] = set()
    written = {}
    for (kind, key), name in node_names(manifest.ensemble).items():
        ids, rows = [], []
        for r in results:
            held = r.members if r.ok else None
            value = None if held is None else (held.models if kind == "model" else held.groups).get(key)
            if value is not None:
                ids += row_ids(r.stem, len(value), manifest.window_seconds)
                rows.append(np.asarray(value, dtype=np.float32))
        if not rows:
            continue
        path = folder / _file_name(name, taken)
        write_csv_atomic(submission_frame(ids, np.concatenate(rows), columns), path)
        written[name] = str(path)
    return written


def check_file_names(manifest, names: Sequence[str]) -> list[dict]:
    """Every ``file_prior`` pattern against the run's file names, before any audio: a warning (and a report entry)
    for the names it does not match (their prior will be skipped)."""
    out = []
    for where, plan in plans(manifest):
        if not hasattr(plan, "fields"):
            continue
        unmatched = [n for n in names if plan.fields(n) is None]
        if unmatched:
            log.warning("%s (file_prior): the pattern %r does not match %d of %d file names (e.g. %s): their prior "
                        "is skipped", where, plan.params.pattern, len(unmatched), len(names), ", ".join(unmatched[:3]))
        out.append({"step": where, "pattern": plan.params.pattern, "unmatched": unmatched})
    return out


def plan_report(manifest) -> list[dict]:
    """What the folder's file-reading steps built when it was loaded (label maps: direct / by genus / missing)."""
    return [{"step": where, "summary": plan.summary, **(plan.counts() if hasattr(plan, "counts") else {})}
            for where, plan in plans(manifest)]


def notes_of(results) -> list[dict]:
    """The notes steps left per file (e.g. a prior skipped), logged once each."""
    out = []
    for r in results:
        for note in r.notes:
            log.warning("%s: %s", r.path, note)
            out.append({"file": str(r.path), "note": note})
    return out


class HeldParts:
    """``predict`` on a spec fused over the whole submission: each recording's part holds its rows before fusion
    (the members :func:`birdinfer.runtime.fusion.frontier` names, side by side, float32), and the output is built
    after every recording is done from all parts at once (rows only: ``recordings × rows × members × labels × 4``
    bytes, never audio)."""

    def __init__(self, manifest):
        self.manifest = manifest
        self.keys = frontier(manifest.ensemble)
        self.n_labels = len(manifest.labels)

    @property
    def width(self) -> int:
        return len(self.keys) * self.n_labels

    def stack(self, rows: FileRows) -> np.ndarray:
        try:
            values = [(rows.models if kind == "model" else rows.groups)[key] for kind, key in self.keys]
        except KeyError as e:
            raise ParameterError(f"{rows.name}: member {e.args[0]!r} has no rows; every member must run for predict") from None
        return np.concatenate([np.asarray(v, np.float32) for v in values], axis=1)

    def fused(self, names: Sequence[str], parts: Sequence[np.ndarray]) -> list[np.ndarray]:
        """The final rows of every recording (``names``: their file names, for steps that read them)."""
        files = []
        for name, part in zip(names, parts):
            rows = FileRows(name)
            for i, (kind, key) in enumerate(self.keys):
                (rows.models if kind == "model" else rows.groups)[key] = part[:, i * self.n_labels : (i + 1) * self.n_labels]
            files.append(rows)
        out = fuse(self.manifest.ensemble, files)
        for rows in files:
            for note in rows.notes:
                log.warning("%s: %s", rows.name, note)
        return [np.asarray(v, dtype=np.float32) for v in out]
