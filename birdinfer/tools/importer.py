"""``birdinfer import``: a user's ONNX / OpenVINO IR + a version 2 spec → a model folder (a version 1 folder's
inference written as a spec: :func:`birdinfer.spec.upgrade.spec_from_v1`).

:func:`import_folder` validates the spec first (every op/step and parameter, before touching any graph),
then reads each graph with OpenVINO and checks it against the spec — input rank and fixed dimensions,
output count, each output's rank for its kind and its class axis against the label count (after the
label map) — converts ONNX to IR (``compress_to_fp16=False``), copies the files, records their sha256
and writes ``manifest.json`` last (a folder without it is not a model folder, so a failed import never
leaves something that looks usable). File names in the spec may not leave the spec's folder, and the
files written may not leave the output folder.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any, Mapping

from ..errors import MissingDependencyError, ModelFolderError, ParameterError
from ..spec.manifest import Manifest
from ..spec.files import FORMAT, MANIFEST_NAME, read_json_object, safe_join, sha256_file
from ..spec.parse import OUTPUT_KINDS, parse_spec
from ..spec.step_files import step_file_names

__all__ = ["import_folder", "record_precisions"]


def _read_spec(spec: str | Path | Mapping[str, Any]) -> tuple[dict, Path, str]:
    if isinstance(spec, Mapping):
        return copy.deepcopy(dict(spec)), Path("."), "spec"
    path = Path(spec)
    data = read_json_object(path, what="the spec")
    return data, path.resolve().parent, str(path)


def _check_port(model, name: str | None, index: int, spec_shape: list[int], *, where: str) -> None:
    """One graph input against the shape the spec gives it (``-1``: any size, only on the batch axes)."""
    try:
        port = model.input(name) if name else model.input(index)
    except Exception:
        raise ModelFolderError(f"{where}: the graph has no input {name if name else index!r} "
                               f"(inputs: {[p.get_any_name() for p in model.inputs]})") from None
    shape = port.get_partial_shape()
    if shape.rank.is_dynamic or shape.rank.get_length() != len(spec_shape):
        raise ModelFolderError(f"{where}.input_shape {spec_shape}: the graph's input has shape {shape}")
    for axis, (dim, want) in enumerate(zip(shape, spec_shape)):
        if dim.is_static and want > 0 and dim.get_length() != want:
            raise ModelFolderError(f"{where}.input_shape {spec_shape}: axis {axis} is {dim.get_length()} in the graph ({shape})")
        if dim.is_static and want <= 0 and axis > 0:
            raise ModelFolderError(f"{where}.input_shape {spec_shape}: axis {axis} is fixed to {dim.get_length()} in the graph")


def _check_graph(model, entry: Mapping[str, Any], n_classes: int, *, where: str, sequence: bool = False,
                 input_shape=None, sources=()) -> list[list[int]]:
    """Compare an OpenVINO model's ports with the spec entry; returns each output's shape (-1 = dynamic). A
    ``sequence`` model (on another model's outputs, ``spec.dag``) gives ``[1, windows, ...]``: its shapes are
    returned without the leading 1. ``input_shape``: the parsed one (a model on another model's output has its
    width filled in)."""
    if sources:  # several inputs (spec.dag_inputs): one port per source, by name or position
        if len(model.inputs) != len(sources):
            raise ModelFolderError(f"{where}.input: {len(sources)} sources, but the graph has {len(model.inputs)} "
                                   f"inputs ({[p.get_any_name() for p in model.inputs]})")
        for i, s in enumerate(sources):
            _check_port(model, s.name, i, list(s.shape), where=f"{where}.input[{i}]")
    else:
        spec_shape = [int(x) for x in (input_shape if input_shape is not None else entry["input_shape"])]
        _check_port(model, entry.get("input_name"), 0, spec_shape, where=where)
    found = []
    for i, out in enumerate(entry["outputs"]):
        index = int(out.get("index", i))
        if index >= len(model.outputs):
            raise ModelFolderError(f"{where}.outputs[{i}]: the graph has {len(model.outputs)} output(s), no index {index}")
        o_shape = model.output(index).get_partial_shape()
        rank = (3 if OUTPUT_KINDS.get(out.get("kind")) == "frame" else 2) + int(sequence)
        if o_shape.rank.is_dynamic or o_shape.rank.get_length() != rank:
            raise ModelFolderError(f"{where}.outputs[{i}] ({out.get('kind')}): needs rank {rank}, the graph's output {index} has shape {o_shape}")
        dims = [d.get_length() if d.is_static else -1 for d in o_shape][int(sequence):]
        if OUTPUT_KINDS.get(out.get("kind")) == "vector":  # an embedding: any width
            pass
        elif dims[1] != -1 and dims[1] != n_classes:
            raise ModelFolderError(f"{where}.outputs[{i}]: the graph gives {dims[1]} classes, the spec needs {n_classes} "
                                   f"({'label_map.labels' if entry.get('label_map') else 'labels, after any label_map step'})")
        found.append(dims)
    return found


def import_folder(spec: str | Path | Mapping[str, Any], out: str | Path, *, overwrite: bool = False,
                  precision: str = "f32", calibration: str | Path | None = None, measure: bool = True,
                  progress=None, calibration_labels: str | Path | None = None) -> Manifest:
    """Build a version 2 model folder at ``out`` from ``spec`` (a path or a dict) and its graph files.

    Then, on ``calibration`` audio (a folder of soundscapes; else seeded synthetic soundscapes) through the
    spec's own front end: ``precision="int8"`` adds an INT8 variant per model (NNCF, checked per CPU class:
    ``birdinfer_export.variants.add_int8_variants_spec``, needs birdinfer[export]), and ``measure`` records
    every variant's bf16 error against f32 on this CPU class (:mod:`birdinfer.tools.precision`), which ``auto`` /
    ``fast`` need before they run bf16. ``calibration_labels`` (with ``precision="int8"``): the calibration
    soundscapes' solution CSV; INT8 is then valid on a class where its held-out macro ROC-AUC is within 0.002
    of f32's (:mod:`birdinfer.tools.held_out_labels`) instead of the label-free mean |Δp| bar.

    Returns the loaded manifest of the new folder. Raises :class:`ModelFolderError` naming the spec and
    field for a bad spec or a graph that does not match it (nothing is written before the checks pass,
    except the output folder's graph files; ``manifest.json`` is written last)."""
    if precision not in ("f32", "int8"):
        raise ParameterError(f"import precision={precision!r}: use 'f32' (the graphs as given) or 'int8' (adds INT8 variants)")
    add_int8 = precision == "int8"
    _check_calibration_labels(calibration_labels, int8=add_int8, calibration=calibration)
    data, source_dir, where = _read_spec(spec)
    data.setdefault("format", FORMAT)
    data.setdefault("format_version", 2)
    if data.get("files"):
        raise ModelFolderError(f"{where}: a spec has no 'files' (checksums are recorded by the import)")
    data.pop("files", None)
    parsed = parse_spec(data, require_files=False, source=where, files_dir=source_dir)  # every op, step, parameter and table first
    on_outputs = [m.name for m in parsed.models if m.source is not None]
    if add_int8 and on_outputs:
        raise ParameterError(f"{where}: INT8 variants are calibrated on a model's front-end features; models "
                             f"{', '.join(on_outputs)} read other models' outputs and have none yet: import with "
                             f"--precision f32")
    try:
        import openvino as ov
    except ImportError as e:
        raise MissingDependencyError("`birdinfer import` needs the openvino package: pip install openvino") from e
    out = _prepare_out(Path(out), overwrite)
    core = ov.Core()
    files: dict[str, str] = {}
    claimed: dict[str, Path] = {}  # output file name -> what it was made from (two sources may not share a name)

    def claim(name: str, source: Path, where_: str) -> Path:
        if claimed.setdefault(name, source) != source:
            raise ModelFolderError(f"{where_}: {source} would be written as {name!r}, already taken by {claimed[name]}; rename one")
        return safe_join(out, name, where=str(out))
    for name in step_file_names(parsed.models, parsed.ensemble):  # label lists, taxonomies, prior tables
        _copy(safe_join(source_dir, name, where=where), claim(name, safe_join(source_dir, name, where=where), where))
        files[name] = sha256_file(out / name)
    for m_index, entry in enumerate(data["models"]):
        at = f"{where}: models[{entry['name']!r}]"
        n_classes = parsed.models[m_index].n_classes  # after the label map (field or step)
        for variant_name, variant in entry["variants"].items():
            written, model = _copy_variant(ov, core, variant, source_dir, claim, f"{at}.variants.{variant_name}")
            spec = parsed.models[m_index]
            shapes = _check_graph(model, entry, n_classes, where=at, input_shape=spec.input_shape,
                                  sequence=spec.source is not None and spec.source.sequence, sources=spec.sources)
            for o, dims in zip(entry["outputs"], shapes):
                o["shape"] = dims
            variant.clear()
            variant.update(written)
            for name in [written.get("openvino"), written.get("onnx")]:
                if name:
                    files[name] = sha256_file(out / name)
            if written.get("openvino"):
                bin_name = written["openvino"][: -len(".xml")] + ".bin"
                files[bin_name] = sha256_file(out / bin_name)
        data["models"][m_index] = entry
    for name in parsed.op_files:  # files front-end ops read (e.g. birdnet_spectrogram's constants)
        src = safe_join(source_dir, name, where=f"{where}: features")
        _copy(src, claim(name, src, f"{where}: features"))
        files[name] = sha256_file(out / name)
    data["files"] = dict(sorted(files.items()))
    parse_spec(data, folder=out)  # the final manifest, as it will be loaded
    tmp = out / (MANIFEST_NAME + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    tmp.replace(out / MANIFEST_NAME)
    return record_precisions(out, int8=add_int8, calibration=calibration, measure=measure, progress=progress,
                             calibration_labels=calibration_labels)


def _prepare_out(out: Path, overwrite: bool) -> Path:
    """The output folder, empty (or ``overwrite``), without a manifest until the import writes one last."""
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ModelFolderError(f"{out} exists and is not empty; choose a new folder or pass overwrite=True (--force)")
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST_NAME).unlink(missing_ok=True)
    return out


def _copy_variant(ov, core, variant: Mapping[str, Any], source_dir: Path, claim, v_at: str) -> tuple[dict, Any]:
    """One variant's graph files copied into the folder (an ONNX-only variant also converted to IR):
    ``({"openvino": name, "onnx": name}, the graph as OpenVINO read it)``."""
    written, model = {}, None
    if variant.get("openvino"):
        xml = safe_join(source_dir, variant["openvino"], where=f"{v_at}.openvino")
        model = _read(core, xml, v_at)
        written["openvino"] = xml.name
        _copy(xml, claim(xml.name, xml, f"{v_at}.openvino"))
        _copy(xml.with_suffix(".bin"), claim(xml.with_suffix(".bin").name, xml.with_suffix(".bin"), f"{v_at}.openvino"))
    if variant.get("onnx"):
        onnx = safe_join(source_dir, variant["onnx"], where=f"{v_at}.onnx")
        model = _read(core, onnx, v_at)
        written["onnx"] = onnx.name
        _copy(onnx, claim(onnx.name, onnx, f"{v_at}.onnx"))
        if "openvino" not in written:  # convert: the OpenVINO backend reads IR
            xml_name = f"{onnx.stem}.xml"
            claim(f"{onnx.stem}.bin", onnx, f"{v_at}.onnx")
            ov.save_model(model, str(claim(xml_name, onnx, f"{v_at}.onnx")), compress_to_fp16=False)
            written["openvino"] = xml_name
    if not written:
        raise ModelFolderError(f"{v_at}: names no onnx or openvino file")
    return written, model


def _check_calibration_labels(labels, *, int8: bool, calibration) -> None:
    """``--calibration-labels`` goes with INT8 and a calibration folder, and must exist (before anything is written)."""
    if labels is None:
        return
    if not int8 or calibration is None:
        raise ParameterError(f"--calibration-labels {labels}: goes with --precision int8 and --calibration (the "
                             "labelled soundscapes' folder)")
    if not Path(labels).is_file():
        raise ParameterError(f"--calibration-labels {labels}: no such file; give a CSV with row_id and one 0/1 column "
                             "per class")


def record_precisions(out: Path, *, int8: bool, calibration, measure: bool, progress,
                      calibration_labels=None) -> Manifest:
    """The written folder's INT8 variants (when asked) and bf16 records (:mod:`birdinfer.tools.precision`)."""
    if int8:
        try:
            from birdinfer_export.variants import record_precision
        except ImportError as e:
            raise MissingDependencyError(f"`birdinfer import --precision int8` needs NNCF (the export extra): pip install "
                                         f"'birdinfer[export]' ({e})") from e
        return record_precision(out, calibration=calibration, int8=True, measure_bf16=measure, progress=progress,
                                calibration_labels=calibration_labels)
    if measure:
        from .precision import audio_set, record_bf16

        return record_bf16(out, audio_set(calibration, Manifest.load(out).sample_rate), progress=progress)
    return Manifest.load(out)


def _read(core, path: Path, where: str):
    if not path.is_file():
        raise ModelFolderError(f"{where}: file {path} not found")
    try:
        return core.read_model(str(path))
    except Exception as e:  # OpenVINO raises its own RuntimeError subclasses
        raise ModelFolderError(f"{where}: OpenVINO cannot read {path}: {e}") from e


def _copy(src: Path, dst: Path) -> None:
    if not src.is_file():
        raise ModelFolderError(f"{src}: file named by the spec is missing")
    if src.resolve() != dst.resolve():
        shutil.copyfile(src, dst)
