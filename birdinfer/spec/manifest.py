"""The self-describing model folder: ``manifest.json`` and the dataclasses it maps to.

A model folder holds exported networks (OpenVINO IR and/or ONNX) and one ``manifest.json`` that says
everything the runtime needs: the sample rate, the mel groups with their front-end parameters and
weights, every model's group, weight, input shape, files and checksums, the class labels in output
order, and how each model was exported and verified. The runtime never guesses any of these.

Layout of ``manifest.json`` (format_version 1)::

    {
      "format": "birdinfer-model-folder", "format_version": 1,
      "sample_rate": 32000, "window_seconds": 5.0, "chunk_seconds": 10.0,
      "labels": ["1139490", ...],                      # model output order
      "smoothing": 0.15,                               # temporal smoothing factor (0 disables)
      "groups": [{"name": "v1", "n_fft": 2048, "hop_length": 64, "n_mels": 256, "fmin": 60.0,
                  "fmax": 16000.0, "frames_per_window": 256, "weight": 2.5, "top_db": 80.0}, ...],
      "models": [{"name": "efficientnet_b2_v1_first10", "arch": "efficientnet_b2", "group": "v1",
                  "weight": 1.5, "input_shape": [6, 1, 256, 512], "frames_per_chunk": 16,
                  "input_name": "mel", "output_name": "logits",
                  "variants": {"f32": {"openvino": "efficientnet_b2_v1_first10.xml",
                                        "onnx": "efficientnet_b2_v1_first10.onnx",
                                        "verification": {...}},
                               "int8": {"openvino": "efficientnet_b2_v1_first10.int8.xml",
                                        "verification": {...}}},
                  "export": {"checkpoint": "...", "checkpoint_sha256": "...", "versions": {...}}}, ...],
      "files": {"efficientnet_b2_v1_first10.xml": "<sha256>", "efficientnet_b2_v1_first10.bin": "...", ...}
    }

Format version 2 (any front end, windows, outputs, post-processing and ensemble, stated as registered ops
and steps: ``docs/manifest_v2.md``) is parsed by :mod:`birdinfer.spec.v2`. :meth:`Manifest.load` returns a
:class:`birdinfer.spec.v2.ManifestV2` (a subclass) for every folder: a version 1 manifest is upgraded in memory
(:mod:`birdinfer.spec.upgrade`), so one engine runs them all; ``Manifest.load(folder, upgrade=False)`` reads it
as written.

An input chunk is ``chunk_seconds`` of audio: ``(chunks, 1, n_mels, 2 * frames_per_window)`` dB values.
A model emits frame-wise logits ``(chunks, n_labels, frames_per_chunk)``; a 5 s window is half a chunk.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from ..errors import ChecksumError, ModelFolderError
from ..ops.registry import shown
from .groups import (MelGroup, check_smoothing, check_unique_groups, check_weight, find_group,  # noqa: F401
                     read_ensemble_fields)
from .files import (FORMAT, MANIFEST_NAME, VARIANT_PRECISIONS, ModelVariant, check_folder_names, read_json_object,
                    safe_join, sha256_file)

__all__ = [
    "FORMAT_VERSION",
    "MelGroup",
    "ModelEntry",
    "Manifest",
    "check_unique_groups",
    "find_group",
    "read_ensemble_fields",
    "check_weight",
    "check_smoothing",
]

FORMAT_VERSION = 1
# The formats above this module register here when birdinfer.spec is imported (its __init__ imports them):
# READERS[2] parses a version 2 manifest (spec/parse.py), UPGRADES[1] turns a version 1 manifest into the
# version 2 spec the engine runs (spec/upgrade.py). This module reads files and version 1; it imports no later format.
READERS: dict[int, Callable[..., "Manifest"]] = {}
UPGRADES: dict[int, Callable[["Manifest"], "Manifest"]] = {}


@dataclass(frozen=True)
class ModelEntry:
    """One network of the ensemble."""

    name: str
    arch: str
    group: str
    weight: float
    input_shape: tuple[int, ...]  # (chunks, 1, n_mels, 2F); chunks may be -1 for a dynamic axis
    frames_per_chunk: int  # output frames per 10 s chunk (T')
    variants: Mapping[str, ModelVariant]
    input_name: str = "mel"
    output_name: str = "logits"
    export: Mapping[str, Any] = field(default_factory=dict)

    @property
    def batch_chunks(self) -> int | None:
        """Fixed chunk count of the model input, or None when the chunk axis is dynamic."""
        n = self.input_shape[0]
        return None if n is None or n <= 0 else int(n)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "arch": self.arch,
            "group": self.group,
            "weight": self.weight,
            "input_shape": list(self.input_shape),
            "frames_per_chunk": self.frames_per_chunk,
            "input_name": self.input_name,
            "output_name": self.output_name,
            "variants": {k: v.to_dict() for k, v in self.variants.items()},
            "export": dict(self.export),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "manifest") -> "ModelEntry":
        try:
            variants = {}
            for precision, v in dict(data["variants"]).items():
                if precision not in VARIANT_PRECISIONS:
                    raise ValueError(f"unknown variant precision {precision!r} (known: {VARIANT_PRECISIONS})")
                variants[precision] = ModelVariant.from_dict(v, name=precision)
            entry = cls(
                name=str(data["name"]),
                arch=str(data["arch"]),
                group=str(data["group"]),
                weight=float(data["weight"]),
                input_shape=tuple(int(x) for x in data["input_shape"]),
                frames_per_chunk=int(data["frames_per_chunk"]),
                variants=variants,
                input_name=str(data.get("input_name", "mel")),
                output_name=str(data.get("output_name", "logits")),
                export=dict(data.get("export", {})),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            name = data.get("name", "?") if isinstance(data, Mapping) else "?"
            detail = f"missing field {e.args[0]!r}" if isinstance(e, KeyError) else str(e)
            raise ModelFolderError(f"{where}: bad model entry {name!r}: {detail}") from e
        if not entry.variants:
            raise ModelFolderError(f"{where}: model {entry.name!r} has no variants (f32/int8 files)")
        for precision, v in entry.variants.items():
            if not v.openvino and not v.onnx:
                raise ModelFolderError(f"{where}: model {entry.name!r} variant {precision!r} names no file")
            if v.openvino and not v.openvino.endswith(".xml"):
                raise ModelFolderError(f"{where}: model {entry.name!r}: OpenVINO file must end in .xml, got {v.openvino!r}")
            if v.frontend is not None:
                raise ModelFolderError(f"{where}: model {entry.name!r} variant {precision!r}: 'frontend' is for version 2 "
                                       f"folders (a version 1 folder's mel groups take none); remove it")
        if len(entry.input_shape) != 4 or entry.input_shape[1] != 1:
            raise ModelFolderError(f"{where}: model {entry.name!r}: input_shape must be (chunks, 1, n_mels, 2F), got {entry.input_shape}")
        check_weight(entry.name, entry.weight, where=where)
        return entry


@dataclass(frozen=True)
class Manifest:
    """Everything the runtime knows about a model folder."""

    labels: tuple[str, ...]
    groups: tuple[MelGroup, ...]
    models: tuple[ModelEntry, ...]
    sample_rate: int = 32000
    window_seconds: float = 5.0
    chunk_seconds: float = 10.0
    smoothing: float = 0.15
    files: Mapping[str, str] = field(default_factory=dict)  # file name -> sha256
    folder: Path | None = None  # where it was read from (not serialised)
    extra: Mapping[str, Any] = field(default_factory=dict)  # free-form provenance (not interpreted)

    format_version = FORMAT_VERSION  # class attribute; birdinfer.spec.v2.ManifestV2 says 2
    audio_speed = 1.0  # class attribute: a version 2 spec may declare another (birdinfer.spec.v2.ManifestV2)

    # ----------------------------------------------------------------- derived
    @property
    def window_samples(self) -> int:
        return int(round(self.sample_rate * self.window_seconds))

    def group(self, name: str) -> MelGroup:
        return find_group(self.groups, name, where=self._where)

    def models_of(self, group: str) -> list[ModelEntry]:
        return [m for m in self.models if m.group == group]

    def used_groups(self) -> list[MelGroup]:
        """Groups that have at least one model, in manifest order."""
        used = {m.group for m in self.models}
        return [g for g in self.groups if g.name in used]

    def select(self, names: Iterable[str]) -> "Manifest":
        """A manifest restricted to the named models (order of the manifest kept)."""
        wanted = list(names)
        known = {m.name for m in self.models}
        unknown = [n for n in wanted if n not in known]
        if unknown:
            raise ModelFolderError(f"{self._where}: unknown model name(s) {unknown}; known: {sorted(known)}")
        for m in self.models:  # a model on another model's output (spec.dag) needs that model
            inputs = getattr(m, "inputs", None)  # a version 2 model (spec.dag_inputs); a version 1 entry: none
            for source in inputs if inputs is not None else ():
                if m.name in wanted and source.model and source.model not in wanted:
                    what = "rows" if source.rows is not None else f"output {source.output!r}"
                    raise ModelFolderError(f"{self._where}: model {m.name!r} reads model {source.model!r}'s {what}: "
                                           f"select {source.model!r} too")
        return _replace(self, models=tuple(m for m in self.models if m.name in set(wanted)))

    @property
    def _where(self) -> str:
        return str(self.folder / MANIFEST_NAME) if self.folder else "manifest"

    # ------------------------------------------------------------------- files
    def named_files(self) -> list[str]:
        """Every file name the manifest holds: each variant's files and the keys of ``files``."""
        names = {f for m in self.models for v in m.variants.values() for f in v.file_names()}
        return sorted(names | set(self.files))

    def path_of(self, file_name: str) -> Path:
        """Absolute path of a file named by the manifest; never outside the model folder."""
        if self.folder is None:
            raise ModelFolderError("manifest has no folder; load it with Manifest.load(folder)")
        return safe_join(self.folder, file_name, where=self._where)

    def verify_checksums(self, file_names: Iterable[str] | None = None) -> None:
        """Check the sha256 of the given files (default: every file of every model) against the manifest."""
        names = list(file_names) if file_names is not None else sorted(
            {f for m in self.models for v in m.variants.values() for f in v.file_names()}
        )
        for name in names:
            expected = self.files.get(name)
            if expected is None:
                raise ChecksumError(f"{self._where}: file {name!r} has no sha256 in the manifest's 'files'; re-export the model folder")
            path = self.path_of(name)
            if not path.is_file():
                raise ModelFolderError(f"{path}: file named by the manifest is missing; copy the whole model folder")
            actual = sha256_file(path)
            if actual != expected:
                raise ChecksumError(
                    f"{path}: sha256 {actual} differs from the manifest's {expected}; the file is corrupt or was "
                    "changed after export: copy it again or re-export"
                )

    # ---------------------------------------------------------------- (de)serialise
    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "sample_rate": self.sample_rate,
            "window_seconds": self.window_seconds,
            "chunk_seconds": self.chunk_seconds,
            "smoothing": self.smoothing,
            "labels": list(self.labels),
            "groups": [g.to_dict() for g in self.groups],
            "models": [m.to_dict() for m in self.models],
            "files": dict(sorted(self.files.items())),
            **({"extra": dict(self.extra)} if self.extra else {}),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, folder: Path | None = None) -> "Manifest":
        where = str(Path(folder) / MANIFEST_NAME) if folder else "manifest"
        if data.get("format") != FORMAT:
            raise ModelFolderError(f"{where}: not a birdinfer model folder manifest (format={data.get('format')!r})")
        if cls is Manifest and data.get("format_version") in READERS:  # a later format (birdinfer.spec.v2)
            return READERS[data["format_version"]](data, folder=folder)
        if data.get("format_version") != FORMAT_VERSION:
            raise ModelFolderError(
                f"{where}: format_version {data.get('format_version')!r} is not supported by this birdinfer "
                f"(supports {FORMAT_VERSION} and 2); upgrade birdinfer or re-export"
            )
        if not isinstance(data.get("labels", []), list):
            raise ModelFolderError(f"{where}: 'labels' must be a list of class names, got {shown(data['labels'])}")
        try:
            manifest = cls(
                labels=tuple(str(x) for x in data["labels"]),
                groups=tuple(MelGroup.from_dict(g, where=where) for g in data["groups"]),
                models=tuple(ModelEntry.from_dict(m, where=where) for m in data["models"]),
                chunk_seconds=float(data.get("chunk_seconds", 10.0)),
                **read_ensemble_fields(data),
                files={str(k): str(v) for k, v in dict(data.get("files", {})).items()},
                folder=Path(folder) if folder else None,
                extra=dict(data.get("extra", {})),
            )
        except KeyError as e:
            raise ModelFolderError(f"{where}: missing key {e.args[0]!r}") from e
        except (TypeError, ValueError) as e:
            raise ModelFolderError(f"{where}: {e}") from None
        manifest.validate()
        return manifest

    def validate(self) -> None:
        where = self._where
        if not self.labels:
            raise ModelFolderError(f"{where}: 'labels' is empty")
        if len(set(self.labels)) != len(self.labels):
            raise ModelFolderError(f"{where}: 'labels' has duplicates")
        check_unique_groups(self.groups, where=where)
        model_names = [m.name for m in self.models]
        if len(set(model_names)) != len(model_names):
            raise ModelFolderError(f"{where}: duplicate model names")
        if abs(self.chunk_seconds - 2 * self.window_seconds) > 1e-9:
            raise ModelFolderError(f"{where}: chunk_seconds must be twice window_seconds")
        check_smoothing(self.smoothing, where=where)
        for m in self.models:
            g = self.group(m.group)
            expected = (g.n_mels, g.frames_per_chunk)
            if tuple(m.input_shape[2:]) != expected:
                raise ModelFolderError(
                    f"{where}: model {m.name!r} input_shape {m.input_shape} does not fit group {g.name!r} "
                    f"(needs (chunks, 1, {expected[0]}, {expected[1]}))"
                )
            if m.frames_per_chunk <= 0 or m.frames_per_chunk % 2:
                raise ModelFolderError(f"{where}: model {m.name!r}: frames_per_chunk must be even and positive")

    @classmethod
    def load(cls, folder: str | Path, *, upgrade: bool = True) -> "Manifest":
        """The folder's manifest, as the engine runs it: a :class:`birdinfer.spec.v2.ManifestV2` for every folder (a
        version 1 folder's manifest is upgraded in memory, :func:`birdinfer.spec.upgrade.upgrade`). ``upgrade=False``:
        as written (a version 1 :class:`Manifest` for a version 1 folder), for the writers that rewrite it."""
        folder = Path(folder)
        if not folder.exists():
            raise ModelFolderError(f"model folder {folder} does not exist; pass the folder written by `birdinfer export`")
        if not folder.is_dir():
            raise ModelFolderError(f"{folder} is not a folder; pass the model folder written by `birdinfer export`")
        path = folder / MANIFEST_NAME
        if not path.is_file():
            raise ModelFolderError(f"{path} not found: {folder} is not a birdinfer model folder (run `birdinfer export`)")
        data = read_json_object(path, what="the manifest")
        manifest = Manifest.from_dict(data, folder=folder)
        if not manifest.models:
            raise ModelFolderError(f"{path}: the manifest lists no models")
        check_folder_names(folder, manifest.named_files(), where=str(path))  # for every backend, used or not
        if upgrade and manifest.format_version in UPGRADES:  # version 1 → its spec (birdinfer.spec.upgrade)
            manifest = UPGRADES[manifest.format_version](manifest)
        return manifest

    def save(self, folder: str | Path | None = None) -> Path:
        folder = Path(folder) if folder is not None else self.folder
        if folder is None:
            raise ModelFolderError("Manifest.save needs a folder")
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / MANIFEST_NAME
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        tmp.replace(path)
        return path


def _replace(obj, **changes):
    from dataclasses import replace

    return replace(obj, **changes)
