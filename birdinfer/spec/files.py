"""The files of a model folder: ``manifest.json``'s name, reading it, checksums, file names that stay inside the
folder, and :class:`ModelVariant` (one stored form of a model: its files and how it was verified).

A file name in a manifest is a plain relative name (no absolute path, no ``..``): a variant with any other name
is refused when it is parsed (:meth:`ModelVariant.from_dict`), whatever the backend that would read it, and
:func:`check_folder_names` resolves every name a manifest holds against its folder (symbolic links included)
when the folder is loaded."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from ..errors import ModelFolderError

__all__ = ["MANIFEST_NAME", "FORMAT", "VARIANT_PRECISIONS", "ModelVariant", "read_json_object", "sha256_file",
           "safe_join", "check_folder_names"]

MANIFEST_NAME = "manifest.json"
FORMAT = "birdinfer-model-folder"
#: Stored variants of a model: float32, and INT8 forms (``int8``: the default export; ``int8-compat``: a
#: second INT8 form for CPU classes where ``int8`` does not meet the accuracy bar, e.g. 7-bit weights).
VARIANT_PRECISIONS = ("f32", "int8", "int8-compat")


@dataclass(frozen=True)
class ModelVariant:
    """One stored form of a model (f32 or int8): its files and how it was verified.

    ``cpu_classes``: the CPU classes (:data:`birdinfer.runtime.cpu.CPU_CLASSES`) this variant is valid on, i.e.
    meets the accuracy bar; ``None`` (a folder written before the field existed) means what it always
    meant: an INT8 variant counts as valid where the CPU has exact INT8 dot products (VNNI / AMX).

    ``bf16``: what running this variant's float layers in bf16 was measured to do, when the folder was
    written (:mod:`birdinfer.tools.precision`): ``{"cpu_classes": [classes where max |Δp| <= bar], "max_abs_dp",
    "mean_abs_dp", "windows", "bar", "measured_on", "audio"}``, or ``{"cpu_classes": [], "measured_on",
    "not_measurable": why}`` where bf16 was not native. ``None``: never measured (older folders), so
    ``auto`` / ``fast`` run this variant's float layers in f32.

    ``backends``: this variant's model seconds per file on each backend at f32, per CPU class where both
    were measured (``birdinfer bench --record-backends``): ``{class: {"openvino": s, "onnxruntime": s,
    "files": n, ...}}``. ``--backend auto`` runs a model on ONNX Runtime only where this records it faster on
    the class (:func:`birdinfer.runtime.plan.plan_models`); ``None``: never measured (OpenVINO).

    ``frontend``: front-end parameters this variant was validated with, ``{op name: {parameter: value}}`` (e.g.
    ``{"birdnet_stft": {"fft": "float32"}}``), applied to the ops of the feature the model reads when the plan
    runs this variant and every model reading that feature states the same (:mod:`birdinfer.runtime.frontend_plan`);
    checked against the feature when the folder loads (:mod:`birdinfer.spec.variant_frontend`). ``None``: the
    feature's own parameters. The f32 variant (the exact reference) never has one.
    """

    openvino: str | None = None  # .xml file name; the .bin sits beside it with the same stem
    onnx: str | None = None
    verification: Mapping[str, Any] = field(default_factory=dict)
    cpu_classes: tuple[str, ...] | None = None
    bf16: Mapping[str, Any] | None = None
    backends: Mapping[str, Mapping[str, Any]] | None = None
    frontend: Mapping[str, Mapping[str, Any]] | None = None

    @property
    def bf16_classes(self) -> tuple[str, ...]:
        """Classes where this variant's bf16 float layers were measured within the bar (empty: none / not measured)."""
        return tuple((self.bf16 or {}).get("cpu_classes", ()))

    @property
    def openvino_bin(self) -> str | None:
        return None if self.openvino is None else self.openvino[: -len(".xml")] + ".bin"

    def file_names(self) -> list[str]:
        names = []
        if self.openvino:
            names += [self.openvino, self.openvino_bin]
        if self.onnx:
            names.append(self.onnx)
        return names

    def to_dict(self) -> dict:
        out: dict[str, Any] = {}
        if self.openvino:
            out["openvino"] = self.openvino
        if self.onnx:
            out["onnx"] = self.onnx
        out["verification"] = dict(self.verification)
        if self.cpu_classes is not None:
            out["cpu_classes"] = list(self.cpu_classes)
        if self.bf16 is not None:
            out["bf16"] = dict(self.bf16)
        if self.backends is not None:
            out["backends"] = {k: dict(v) for k, v in self.backends.items()}
        if self.frontend is not None:
            out["frontend"] = {op: dict(params) for op, params in self.frontend.items()}
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, name: str = "variant") -> "ModelVariant":
        """One variant of a manifest (version 1 or 2); :class:`ValueError` naming ``name`` for a bad field."""
        for key in ("openvino", "onnx"):
            problem = _name_problem(data.get(key)) if data.get(key) is not None else None
            if problem:
                raise ValueError(f"file name {data[key]!r} {problem} ({key} file of variant {name!r})")
        classes = data.get("cpu_classes")
        if classes is not None and (isinstance(classes, str) or not all(isinstance(c, str) for c in classes)):
            raise ValueError(f"variant {name!r}: cpu_classes must be a list of class names, got {classes!r}")
        bf16 = data.get("bf16")
        if bf16 is not None:
            bf16_classes = bf16.get("cpu_classes") if isinstance(bf16, Mapping) else None
            if (not isinstance(bf16, Mapping) or isinstance(bf16_classes, str) or not isinstance(bf16_classes, list)
                    or not all(isinstance(c, str) for c in bf16_classes)):
                raise ValueError(f"variant {name!r}: bf16 must be an object with a list 'cpu_classes' (classes where "
                                 f"bf16 was measured within the bar), got {bf16!r}; re-import or re-export to measure it")
        backends = data.get("backends")
        if backends is not None and not (isinstance(backends, Mapping) and all(
                isinstance(v, Mapping) and all(isinstance(v.get(b), (int, float)) and not isinstance(v.get(b), bool)
                                               and v.get(b) > 0 for b in ("openvino", "onnxruntime"))
                for v in backends.values())):
            raise ValueError(f"variant {name!r}: backends must map CPU classes to {{'openvino': seconds, 'onnxruntime': "
                             f"seconds}} (positive numbers), got {backends!r}; re-measure with birdinfer bench "
                             f"--record-backends")
        frontend = data.get("frontend")
        if frontend is not None and not (isinstance(frontend, Mapping) and frontend and all(
                isinstance(op, str) and isinstance(p, Mapping) and p and all(isinstance(k, str) for k in p)
                for op, p in frontend.items())):
            raise ValueError(f"variant {name!r}: frontend must map op names to {{parameter: value}} (e.g. "
                             f"{{\"birdnet_stft\": {{\"fft\": \"float32\"}}}}), got {frontend!r}; remove it or re-import")
        return cls(openvino=data.get("openvino"), onnx=data.get("onnx"), verification=dict(data.get("verification", {})),
                   cpu_classes=None if classes is None else tuple(classes), bf16=None if bf16 is None else dict(bf16),
                   backends=None if backends is None else {k: dict(v) for k, v in backends.items()},
                   frontend=None if frontend is None else {op: dict(p) for op, p in frontend.items()})


def read_json_object(path: str | Path, *, what: str) -> dict:
    """A JSON file that must hold one object (a manifest, a spec); errors name the file and ``what`` it is."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFolderError(f"{path}: cannot read {what}: {e}") from e
    if not isinstance(data, dict):
        raise ModelFolderError(f"{path}: {what} must be a JSON object")
    return data


def sha256_file(path: str | Path, *, block: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def _name_problem(name: Any) -> str | None:
    """Why ``name`` is not a plain relative file name, or None."""
    if not isinstance(name, str) or not name or "\x00" in name:
        return "is not a file name"
    candidate = Path(name)
    if candidate.is_absolute() or ".." in candidate.parts:
        return "must be a plain name inside the model folder"
    return None


def safe_join(folder: str | Path, name: str, *, where: str = "manifest") -> Path:
    """``folder / name``, refusing names that are absolute or escape ``folder`` (``..``, symlinks)."""
    problem = _name_problem(name)
    if problem:
        raise ModelFolderError(f"{where}: file name {name!r} {problem}")
    root = Path(folder).resolve()
    path = (root / name).resolve()
    if path != root and root not in path.parents:
        raise ModelFolderError(f"{where}: file name {name!r} resolves outside the model folder {root}")
    return path


def check_folder_names(folder: str | Path, names: Iterable[str], *, where: str) -> None:
    """Every file name a manifest holds (its variants' files and its ``files``) stays inside ``folder`` once
    resolved, whether or not the file exists and whichever backend would read it (:func:`safe_join`)."""
    for name in names:
        safe_join(folder, name, where=where)
