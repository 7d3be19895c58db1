"""Manifest format version 2: a whole inference stated as data (``docs/manifest_v2.md``).

:class:`ManifestV2` is a :class:`birdinfer.spec.manifest.Manifest` (same files, checksums, ``path_of``, row
seconds as ``window_seconds``) whose front ends, model outputs, post-processing and ensemble are lists of
registered ops and steps (the types here; the parser in :mod:`birdinfer.spec.parse`).
:meth:`ManifestV2.from_dict` parses and validates everything — op/step names,
parameters, the shape of each front end against each model's input, output class counts against the
labels (after the label map), window padding, file names — and raises :class:`ModelFolderError` naming
the manifest file and the field, before any audio is read. ``Manifest.load`` dispatches here on
``format_version: 2``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..ops import Static
from ..ops.registry import Entry
from .manifest import READERS, Manifest
from .files import ModelVariant

__all__ = ["FORMAT_VERSION_2", "ManifestV2", "ModelSpec", "ModelSource", "FileNameIds", "SequenceTTA", "OutputSpec", "LabelMap",
           "GroupSpec", "MemberRef", "Step", "TtaPass", "TtaSpec"]

FORMAT_VERSION_2 = 2


@dataclass(frozen=True)
class Step:
    """A parsed op or step: the registry entry, its parameters, and where it stands in the manifest."""

    entry: Entry
    params: Any
    where: str

    @property
    def name(self) -> str:
        return self.entry.name

    def __call__(self, *args):
        return self.entry.fn(*args, self.params)


@dataclass(frozen=True)
class OutputSpec:
    name: str
    kind: str
    index: int
    shape: tuple[int, ...] | None = None


@dataclass(frozen=True)
class LabelMap:
    labels: tuple[str, ...]
    fill: float = 0.0


@dataclass(frozen=True)
class ModelSource:
    """A model input that is another model's named graph output (``"input": {"model": ..., "output": ...}``):
    per window (a probe), with per-file ``context`` columns, or the whole file's sequence of windows."""

    model: str
    output: str
    context: tuple[str, ...] = ()  # per-file statistics over the windows appended to each window's vector
    sequence: bool = False  # the graph takes [1, windows, width] and gives [1, windows, ...]
    width: int = 0  # the producer output's width (its declared shape; the folder's label count for ``rows``)
    # Several inputs (``"input": [...]``, birdinfer.spec.dag): the graph input it feeds, what it reads
    name: str | None = None  # the graph input's name (None: matched by position)
    rows: str | None = None  # read the producer's rows after its steps: "" all of them, else after this step
    per_class: bool = False  # context columns as [windows, classes, 1 + k] instead of concatenated
    ids: "FileNameIds | None" = None  # an id parsed from the file name (``model`` is "")
    shape: tuple[int, ...] = ()  # the graph input's shape (batch or [1, -1, ...] for a sequence)

    @property
    def input_width(self) -> int:
        return self.width * (1 + len(self.context))


@dataclass(frozen=True)
class FileNameIds:
    """An int64 id per file parsed from its name: ``pattern``'s group ``field`` looked up in ``vocabulary``
    (``None``: the field read as an integer); ``fallback`` when the name does not match or the value is unknown."""

    pattern: str
    field: str
    vocabulary: Mapping[str, int] | None
    fallback: int
    modulo: int | None = None


@dataclass(frozen=True)
class SequenceTTA:
    """Test-time augmentation of a sequence model: circular shifts of the window axis and a time flip."""

    shifts: tuple[int, ...] = (0,)
    flip: bool = False


@dataclass(frozen=True)
class TtaPass:
    """One pass of a model's shifted-window TTA: its windows start ``seconds`` after the model's own; ``feature``
    is the front end that cuts them (the model's own input for the unshifted pass)."""

    seconds: float
    weight: float
    feature: str


@dataclass(frozen=True)
class TtaSpec:
    """A model's ``tta`` field (:mod:`birdinfer.spec.tta`): ``mode`` "shift" or "roll", the unshifted pass first."""

    mode: str
    passes: tuple[TtaPass, ...]


@dataclass(frozen=True)
class ModelSpec:
    """One network of a version 2 folder (duck-compatible with :class:`birdinfer.spec.manifest.ModelEntry` where
    the model loader needs it: ``name``, ``weight``, ``input_shape``, ``variants``, ``batch_chunks``)."""

    name: str
    input: str
    weight: float
    input_shape: tuple[int, ...]
    outputs: tuple[OutputSpec, ...]
    block_steps: tuple[Step, ...]  # model steps up to and including the row step (per block)
    row_steps: tuple[Step, ...]  # row steps after it (per file)
    variants: Mapping[str, ModelVariant]
    input_name: str | None = None
    label_map: LabelMap | None = None
    pad_value: float = 0.0
    export: Mapping[str, Any] = field(default_factory=dict)
    arch: str = ""
    n_classes: int = 0  # class axis of every output (the label map's size, else the manifest's label count)
    source: ModelSource | None = None  # set: ``input`` is "" and the model reads another model's output
    sources: tuple[ModelSource, ...] = ()  # ``input`` as a list: one source per graph input (``source``: the first
    # that reads a model)
    sequence_tta: SequenceTTA | None = None  # a sequence model's test-time augmentation (its JSON field 'tta')
    tta: TtaSpec | None = None  # shifted-window passes (their rows combined before the row steps)

    @property
    def inputs(self) -> tuple[ModelSource, ...]:
        """What the model reads from other models and the file name (empty for a model on a feature)."""
        return self.sources or ((self.source,) if self.source is not None else ())

    group = "ensemble"  # the single pseudo group of version 2 (time budget, Raven frequency range)

    @property
    def batch_chunks(self) -> int | None:
        n = self.input_shape[0] if self.input_shape else -1
        return None if n is None or n <= 0 else int(n)

    @property
    def named_outputs(self) -> tuple[int, ...]:
        """Graph output indices, in the order of :attr:`outputs` (the model loader returns them by name)."""
        return tuple(o.index for o in self.outputs)


@dataclass(frozen=True)
class MemberRef:
    model: str
    weight: float


@dataclass(frozen=True)
class GroupSpec:
    name: str
    weight: float
    members: tuple["GroupSpec | MemberRef", ...]
    combine: Step
    steps: tuple[Step, ...]

    def model_names(self) -> list[str]:
        out = []
        for m in self.members:
            out += [m.model] if isinstance(m, MemberRef) else m.model_names()
        return out


@dataclass(frozen=True)
class _PseudoGroup:
    """Stand-in for version 1's mel groups where callers ask for them (time budget, Raven tables)."""

    name: str = "ensemble"
    weight: float = 1.0
    fmin: float = 0.0
    fmax: float = 16000.0


@dataclass(frozen=True)
class ManifestV2(Manifest):
    features: Mapping[str, tuple[Step, ...]] = field(default_factory=dict)
    feature_shapes: Mapping[str, Static] = field(default_factory=dict)
    ensemble: GroupSpec | None = None
    block_seconds: float | None = None
    row_partial: str = "drop"  # rows.partial: a trailing partial row is dropped, or kept (its window padded)
    raw: Mapping[str, Any] = field(default_factory=dict)
    v1: Manifest | None = field(default=None, repr=False)  # upgraded from this version 1 manifest (birdinfer.spec.upgrade)
    op_files: tuple[str, ...] = ()  # folder files read by front-end ops (checksums verified with the graphs')
    row_min_seconds: float | None = None  # rows.min_seconds: a row is kept when this much audio starts at it
    row_span_seconds: float | None = None  # rows.span_seconds: the time a row's window covers (output tables)
    audio_speed: float = 1.0  # audio_speed: a file of rate r is read as if recorded at r · speed (times: × speed)

    @property
    def span_seconds(self) -> float:
        return self.row_span_seconds if self.row_span_seconds is not None else self.window_seconds

    def n_rows(self, n_samples: int, block_index: int = 0) -> int:
        """Rows of a block: ``N // row`` (at least 1 for a non-empty first block), or ``ceil(N / row)`` when
        ``rows.partial`` keeps a partial last row; with ``rows.min_seconds`` (whole files only) the rows
        ``k`` whose start ``k·row`` leaves at least that much audio: ``(N − min) // row + 1`` (0 below it)."""
        row = self.window_samples
        if self.row_min_seconds is not None:
            least = int(round(self.row_min_seconds * self.sample_rate))
            return (n_samples - least) // row + 1 if n_samples >= least else 0
        if self.row_partial != "drop":
            return -(-n_samples // row)
        rows = n_samples // row
        return 1 if rows == 0 and block_index == 0 and n_samples > 0 else rows

    format_version = FORMAT_VERSION_2

    def used_groups(self) -> list:
        if self.v1 is not None:  # an upgraded version 1 folder: its mel groups (time budget, Raven band)
            names = {m.name for m in self.models}
            return [g for g in self.v1.groups if any(m.name in names for m in self.v1.models_of(g.name))]
        return [_PseudoGroup(fmax=self.sample_rate / 2)]

    def models_of(self, group: str) -> list:
        if self.v1 is not None:
            names = {m.name for m in self.v1.models_of(group)}
            return [m for m in self.models if m.name in names]
        return list(self.models) if group == "ensemble" else []

    def to_dict(self) -> dict:
        out = {k: v for k, v in self.raw.items() if k != "files"}
        out["files"] = dict(sorted(self.files.items()))
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, folder: Path | None = None) -> "ManifestV2":
        return READERS[FORMAT_VERSION_2](data, folder=folder)  # birdinfer.spec.parse

    def validate(self) -> None:  # everything is checked by parse_spec
        return None
