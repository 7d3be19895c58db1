"""Row steps that read the model folder's tables or the recording's file name (``docs/manifest_v2.md``).

* ``temperature``: a temperature per taxon class (``class_name`` of the taxonomy → T), ``σ(logit(p) / T)``
  per column (or ``x / T`` on logits).
* ``file_prior``: a prior table indexed by fields parsed from the file name with a declared regular expression
  (BirdCLEF 2026: site and hour of ``BC2026_Test_0001_S05_20250227_010002.ogg``), added as
  ``+ weight · logit(prior)``. A file name the pattern does not match, or whose fields have no row in the
  table, keeps its rows and gets a note (the run's report and log list it).
* ``delta_smooth``: each row mixed with its neighbours' mean, by less where the row is confident (the 2026 2nd
  place's adaptive delta smoothing).
* ``class_thresholds``: a threshold ``t`` per label from a CSV of the folder, mapped piecewise linearly so that
  ``t`` lands on 0.5: ``0.5 + 0.5 (p − t) / (1 − t)`` above it, ``0.5 p / t`` below, clipped to [0, 1] (BirdCLEF
  2026 2nd place's per-class thresholds; a label without a row keeps ``default`` 0.5, the identity).

The other file-level steps of the 2026 solutions are existing row steps: top-k confidence scaling
(``file_scale`` ``top_k`` 2, ``power`` 0.4), rank-aware scaling (``file_scale`` ``top_k`` 1 = the file's max,
``power`` 0.4), ``[0.1, 0.8, 0.1]`` smoothing (``smooth``).

Steps that need the file name register the extra ``context=True`` and are called ``fn(rows, ctx, params)``
with a :class:`FileContext`; :func:`run_row_steps` runs a list of row steps either way.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Annotated, Literal

import numpy as np
from scipy.special import expit, logit

from .registry import VALUE, Range
from .steps import ROW_STEPS
from .tables import TableSource, check_known, read_table, taxonomy_field, unbound

__all__ = ["FileContext", "run_row_steps", "TemperatureParams", "PriorParams", "DeltaSmoothParams", "temperature",
           "file_prior", "delta_smooth", "ThresholdParams", "class_thresholds"]


@dataclass
class FileContext:
    """The recording a file's row steps run for: its file name (``None``: unknown, e.g. an array) and the notes
    steps leave for the run's report (e.g. a prior skipped)."""

    name: str | None = None
    notes: list[str] = field(default_factory=list)


def run_row_steps(steps, rows: np.ndarray, ctx: FileContext | None = None) -> np.ndarray:
    """``rows`` through row steps in order; a step registered with ``context=True`` also gets ``ctx``."""
    for step in steps:
        if step.entry.extras.get("context"):
            rows = step(rows, ctx if ctx is not None else FileContext())
        else:
            rows = step(rows)
    return rows


def _on_logits(rows: np.ndarray, how: str, eps: float, change) -> np.ndarray:
    """``change`` applied on the logit scale: to ``logit(clip(p, eps, 1 − eps))`` then σ for probabilities."""
    x = rows.astype(np.float64)
    if how == "logits":
        return change(x)
    return expit(change(logit(np.clip(x, eps, 1.0 - eps))))


def _check_eps(eps: float) -> None:
    if not 0.0 < eps < 0.5:
        raise ValueError(f"eps must be in (0, 0.5), got {eps}")


# ------------------------------------------------------------------------------------- temperature
@dataclass(frozen=True)
class TemperatureParams:
    taxonomy: str  # CSV file of the model folder (BirdCLEF's taxonomy.csv)
    temperatures: dict[str, Annotated[float, Range(0, 1e3, low_open=True)]]  # class name → temperature
    default: Annotated[float, Range(0, 1e3, low_open=True)] = 1.0  # labels of other classes (or absent from the taxonomy)
    label_field: str = "primary_label"
    class_field: str = "class_name"
    input: Literal["probabilities", "logits"] = "probabilities"
    eps: Annotated[float, Range(0, 0.5, low_open=True)] = 1e-6  # probabilities are clipped to [eps, 1 − eps] before the logit

    def __post_init__(self):
        if not self.temperatures:
            raise ValueError("temperatures needs at least one class")
        for name, t in {**self.temperatures, "default": self.default}.items():
            if not (math.isfinite(t) and t > 0):
                raise ValueError(f"temperature of {name!r} must be a finite number > 0, got {t}")
        _check_eps(self.eps)


@dataclass(frozen=True, eq=False)  # holds arrays: compared by identity
class TemperaturePlan:
    params: TemperatureParams
    per_column: np.ndarray  # (C,) temperature of each column

    @property
    def summary(self) -> str:
        parts = [f"{name} {t:g} ({int(np.sum(self.per_column == t))} labels)" for name, t in self.params.temperatures.items()]
        return f"temperature by {self.params.class_field} of {self.params.taxonomy}: {', '.join(parts)}"


def _bind_temperature(p: TemperatureParams, source: TableSource) -> TemperaturePlan:
    classes = taxonomy_field(source, p.taxonomy, p.label_field, p.class_field)
    check_known(p.temperatures, set(classes.values()), what=f"temperatures: {p.class_field}", name=p.taxonomy)
    per_column = np.array([p.temperatures.get(classes.get(label, ""), p.default) for label in source.columns])
    return TemperaturePlan(p, per_column)


@ROW_STEPS.register("temperature", TemperatureParams, files=lambda p: [p.taxonomy], bind=_bind_temperature)
def temperature(rows: np.ndarray, p: TemperaturePlan) -> np.ndarray:
    """Each column divided on the logit scale by its class's temperature: ``σ(logit(p) / T)`` (``x / T`` on logits)."""
    if not isinstance(p, TemperaturePlan):
        raise unbound("temperature", [p.taxonomy])
    return _on_logits(rows, p.params.input, p.params.eps, lambda z: z / p.per_column[None, :])


# -------------------------------------------------------------------------------------- file_prior
@dataclass(frozen=True)
class PriorParams:
    table: str  # CSV file of the model folder: key columns, then one prior column per label
    pattern: str  # regular expression with named groups, searched in the file name without its extension
    weight: Annotated[float, VALUE]  # rows + weight · logit(prior)
    keys: tuple[str, ...] = ()  # the named groups that index the table (default: every named group)
    example: str | None = None  # a file name the pattern must match (checked when the folder is loaded)
    input: Literal["probabilities", "logits"] = "probabilities"
    eps: Annotated[float, Range(0, 0.5, low_open=True)] = 1e-6  # probabilities and priors are clipped to [eps, 1 − eps] before the logit

    def __post_init__(self):
        try:
            compiled = re.compile(self.pattern)
        except re.error as e:
            raise ValueError(f"pattern {self.pattern!r} is not a regular expression: {e}") from None
        groups = tuple(compiled.groupindex)
        if not groups:
            raise ValueError(f"pattern {self.pattern!r} has no named group like (?P<site>S\\d+) to index the table")
        missing = [k for k in self.keys if k not in groups]
        if missing:
            raise ValueError(f"keys {missing} are not named groups of the pattern (groups: {', '.join(groups)})")
        _check_eps(self.eps)
        if self.example is not None and _fields(compiled, self.keys or groups, self.example) is None:
            raise ValueError(f"pattern {self.pattern!r} does not match the example file name {self.example!r}")


def _stem(name: str) -> str:
    return PurePath(name).stem


def _key(value: str) -> str:
    """A field value as compared: digits-only values as numbers (``"01"`` = ``"1"``), others as written."""
    value = value.strip()
    return str(int(value)) if value.isdigit() else value


def _fields(compiled: re.Pattern, keys, name: str) -> tuple[str, ...] | None:
    match = compiled.search(_stem(name))
    return None if match is None else tuple(_key(match.group(k) or "") for k in keys)


@dataclass(frozen=True, eq=False)  # holds arrays: compared by identity
class PriorPlan:
    params: PriorParams
    compiled: re.Pattern
    keys: tuple[str, ...]
    table: dict  # key values → (C,) logit(prior), 0 where the table has no column for the label
    n_labels: int

    @property
    def summary(self) -> str:
        return (f"file_prior {self.params.table}: {len(self.table)} rows by ({', '.join(self.keys)}), priors for "
                f"{self.n_labels} labels, weight {self.params.weight:g}")

    def fields(self, name: str) -> tuple[str, ...] | None:
        """The table key parsed from a file name (None: the pattern does not match)."""
        return _fields(self.compiled, self.keys, name)


def _bind_prior(p: PriorParams, source: TableSource) -> PriorPlan:
    compiled = re.compile(p.pattern)
    keys = p.keys or tuple(compiled.groupindex)
    table = read_table(source, p.table)
    key_index = [table.index(k) for k in keys]
    label_at = {label: j for j, label in enumerate(source.columns)}
    columns = [(i, label_at[h]) for i, h in enumerate(table.header) if h in label_at and h not in keys]
    if not columns:
        raise ValueError(f"{p.table}: no column is a label (columns: {', '.join(table.header[:8])}; labels e.g. "
                         f"{', '.join(source.columns[:3])}): the prior would change nothing")
    rows = {}
    for number, row in enumerate(table.rows, 2):
        key = tuple(_key(row[i]) for i in key_index)
        if key in rows:
            raise ValueError(f"{p.table} line {number}: a second row for {dict(zip(keys, key))}")
        values = np.zeros(len(source.columns))
        for i, j in columns:
            try:
                prior = float(row[i])
            except ValueError:
                raise ValueError(f"{p.table} line {number}, column {table.header[i]!r}: {row[i]!r} is not a number") from None
            if not 0.0 <= prior <= 1.0:
                raise ValueError(f"{p.table} line {number}, column {table.header[i]!r}: a prior must be in [0, 1], got {prior}")
            values[j] = logit(min(max(prior, p.eps), 1.0 - p.eps))
        rows[key] = values
    return PriorPlan(p, compiled, keys, rows, len(columns))


@ROW_STEPS.register("file_prior", PriorParams, files=lambda p: [p.table], bind=_bind_prior, context=True)
def file_prior(rows: np.ndarray, ctx: FileContext, p: PriorPlan) -> np.ndarray:
    """``rows + weight · logit(prior)`` on the logit scale, the prior row picked by the fields of the file name;
    rows unchanged (and a note in ``ctx``) when the name does not match or the table has no such row."""
    if not isinstance(p, PriorPlan):
        raise unbound("file_prior", [p.table])
    fields = p.fields(ctx.name) if ctx.name else None
    if fields is None:
        ctx.notes.append(f"file_prior: file name {ctx.name!r} does not match the pattern {p.params.pattern!r}: prior skipped")
        return rows
    prior = p.table.get(fields)
    if prior is None:
        ctx.notes.append(f"file_prior: {p.params.table} has no row for {dict(zip(p.keys, fields))} "
                         f"(file {ctx.name!r}): prior skipped")
        return rows
    return _on_logits(rows, p.params.input, p.params.eps, lambda z: z + p.params.weight * prior[None, :])


@dataclass(frozen=True)
class DeltaSmoothParams:
    alpha: Annotated[float, Range(0, 1)] = 0.2
    adaptive: bool = True


@ROW_STEPS.register("delta_smooth", DeltaSmoothParams)
def delta_smooth(rows: np.ndarray, p: DeltaSmoothParams) -> np.ndarray:
    """Each row mixed with its neighbours' mean: ``(1 − a)·p[t] + a·(p[t−1] + p[t+1]) / 2``, where the first and
    last rows use ``(p[t] + p[t±1]) / 2``; ``a = alpha · (1 − max over classes of p[t])`` with ``adaptive`` (the
    2026 2nd place's adaptive delta smoothing: confident rows move less), else ``alpha``. One row: unchanged."""
    x = rows.astype(np.float64)
    if len(x) < 2:
        return x
    before = np.concatenate([x[:1], x[:-1]])  # the row itself stands in for a missing neighbour
    after = np.concatenate([x[1:], x[-1:]])
    a = p.alpha * (1.0 - x.max(axis=1, keepdims=True)) if p.adaptive else np.full((len(x), 1), p.alpha)
    return (1.0 - a) * x + a * (before + after) / 2.0


# -------------------------------------------------------------------------------- class_thresholds
@dataclass(frozen=True)
class ThresholdParams:
    table: str  # CSV file of the model folder: a label column and a threshold column
    label_field: str = "primary_label"
    value_field: str = "threshold"
    default: Annotated[float, Range(0, 0.999999, low_open=True)] = 0.5  # labels without a row (0.5: unchanged)


@dataclass(frozen=True, eq=False)  # holds arrays: compared by identity
class ThresholdPlan:
    params: ThresholdParams
    per_column: np.ndarray  # (C,) threshold of each column

    @property
    def summary(self) -> str:
        listed = int(np.sum(self.per_column != self.params.default))
        return f"class_thresholds from {self.params.table}: {listed} labels, the others {self.params.default:g}"


def _bind_thresholds(p: ThresholdParams, source: TableSource) -> ThresholdPlan:
    texts = taxonomy_field(source, p.table, p.label_field, p.value_field)  # label → cell; a label twice is refused
    unknown = sorted(set(texts) - set(source.columns))
    if unknown:
        raise ValueError(f"{p.table}: {p.label_field} {unknown[0]!r} is not one of the rows' labels "
                         f"({len(unknown)} unknown); list only the folder's labels")
    found: dict[str, float] = {}
    for number, (label, text) in enumerate(texts.items(), 2):  # one row per label, in file order
        try:
            t = float(text)
        except ValueError:
            t = math.nan
        if not 0.0 < t < 1.0:
            raise ValueError(f"{p.table} line {number}: threshold of {label!r} must be a number in (0, 1), got {text!r}")
        found[label] = t
    return ThresholdPlan(p, np.array([found.get(c, p.default) for c in source.columns], np.float64))


@ROW_STEPS.register("class_thresholds", ThresholdParams, files=lambda p: [p.table], bind=_bind_thresholds)
def class_thresholds(rows: np.ndarray, p: ThresholdPlan) -> np.ndarray:
    """Per column: ``0.5 + 0.5 (x − t) / (1 − t)`` where ``x > t``, else ``0.5 x / t``; clipped to [0, 1]."""
    if not isinstance(p, ThresholdPlan):
        raise unbound("class_thresholds", [p.table])
    x = rows.astype(np.float64)
    t = p.per_column[None, :]
    return np.clip(np.where(x > t, 0.5 + 0.5 * (x - t) / (1.0 - t), 0.5 * x / t), 0.0, 1.0)
