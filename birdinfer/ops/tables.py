"""CSV tables shipped in a model folder and read by steps when the folder is loaded (label maps, taxonomy
classes, file-name priors).

A step that names files registers two extras (:class:`birdinfer.ops.registry.Registry`): ``files(params) ->
[file names]`` and ``bind(params, source) -> plan``. When a manifest is loaded, :mod:`birdinfer.spec.step_files`
checks each named file's sha256 against the manifest's ``files`` and calls ``bind`` with a :class:`TableSource`;
the plan it returns (a frozen dataclass holding the parameters and the arrays built from the files) replaces
the step's parameters, so the step function gets the plan. ``bind`` raises ``ValueError`` naming the file and the
field; the loader turns it into :class:`birdinfer.errors.ModelFolderError` with the manifest path.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

from ..errors import ParameterError

__all__ = ["TableSource", "Table", "read_table", "taxonomy_field", "scientific_key", "genus_of", "unbound", "check_known"]


@dataclass(frozen=True)
class TableSource:
    """What ``bind`` may read: ``read(name)`` returns a folder file's text; ``labels`` are the folder's labels
    (output columns); ``columns`` are the columns of the rows the step sees (a model's own classes before the
    ``label_map`` field scatters them, else ``labels``)."""

    read: Callable[[str], str]
    labels: tuple[str, ...]
    columns: tuple[str, ...]


@dataclass(frozen=True)
class Table:
    """A CSV file: its name, header and rows (lists of strings, each as long as the header)."""

    name: str
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]

    def column(self, field: str | None) -> list[str]:
        """The values of column ``field`` (``None``: the first column)."""
        index = 0 if field is None else self.index(field)
        return [row[index] for row in self.rows]

    def index(self, field: str) -> int:
        if field not in self.header:
            raise ValueError(f"{self.name} has no column {field!r} (columns: {', '.join(self.header[:12])}"
                             f"{' …' if len(self.header) > 12 else ''})")
        return self.header.index(field)


def read_table(source: TableSource, name: str, *, header: bool = True) -> Table:
    """The CSV file ``name`` of the folder: a header line (``header=False``: one unnamed column ``"0"``), then
    rows; blank lines are skipped; every row must have the header's length."""
    lines = [row for row in csv.reader(io.StringIO(source.read(name))) if any(cell.strip() for cell in row)]
    if header:
        if not lines:
            raise ValueError(f"{name} is empty (it needs a header line)")
        head, body = tuple(h.strip() for h in lines[0]), lines[1:]
    else:
        head, body = tuple(str(i) for i in range(max((len(r) for r in lines), default=1))), lines
    for number, row in enumerate(body, 2 if header else 1):
        if len(row) != len(head):
            raise ValueError(f"{name} line {number}: {len(row)} fields, the header has {len(head)}")
    if not body:
        raise ValueError(f"{name} has no rows")
    return Table(name, head, tuple(tuple(cell.strip() for cell in row) for row in body))


def taxonomy_field(source: TableSource, name: str, label_field: str, field: str) -> dict[str, str]:
    """``{label: value of field}`` from a CSV keyed by label, in file order (e.g. BirdCLEF's ``taxonomy.csv``:
    ``primary_label``, ``scientific_name``, ``class_name``, ...; or a table of per-label values); a label listed
    twice is an error."""
    table = read_table(source, name)
    labels, values = table.column(label_field), table.column(field)
    out: dict[str, str] = {}
    for label, value in zip(labels, values):
        if label in out:
            raise ValueError(f"{name}: label {label!r} appears twice in column {label_field!r}")
        out[label] = value
    return out


def scientific_key(name: str) -> str:
    """A scientific name as compared: case-folded, surrounding spaces dropped, inner runs of spaces as one."""
    return " ".join(name.split()).casefold()


def genus_of(key: str) -> str:
    """The genus of a compared scientific name: its first word."""
    return key.split(" ", 1)[0] if key else ""


def unbound(step: str, names: Sequence[str]) -> ParameterError:
    """The error of a step whose files were never read (a spec parsed without its folder)."""
    return ParameterError(f"step {step!r}: its files were not read; load the model folder (Manifest.load) or parse the "
                          f"spec with its folder, so that {', '.join(names)} can be read and checked")


def check_known(values: Mapping[str, object], known: set[str], *, what: str, name: str) -> None:
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{what} {unknown[0]!r} is not in {name} (known: {', '.join(sorted(known)[:12])}"
                         f"{' …' if len(known) > 12 else ''})")
