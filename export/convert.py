"""Checkpoints → verified ONNX / OpenVINO model folder (REFERENCE.md sections 3–4).

Per model of the recipe: load the checkpoint (safe loader), export ONNX (opset 17, TorchScript exporter),
check it, convert it to an OpenVINO IR saved uncompressed (f32), then run torch, ONNX Runtime and
OpenVINO (f32 hint) on the same real mel input from the runtime's front end. Above
:func:`parity_tolerance` (``max(1e-4 + 1e-5 * max |logit|, 4 * torch float32's own error)``) max abs
logit difference the export fails. With ``precision="int8"`` an NNCF
quantized IR is added beside the f32 one and its deviation from f32 is measured on held-out chunks.

The manifest is written last (atomically), after every file exists, so a failed export never leaves a
manifest naming missing or stale files.
"""

from __future__ import annotations

import copy
import csv
import gc
import importlib.metadata
import logging
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from birdinfer.errors import CheckpointError, ParameterError
from birdinfer.spec.manifest import Manifest, ModelEntry
from birdinfer.spec.files import MANIFEST_NAME, VARIANT_PRECISIONS, ModelVariant, sha256_file

from .checkpoint import checkpoint_class_count, load_checkpoint, read_state_dict
from .network import SEDNet
from .quantize import DEFAULT_INT8_VARIANTS, F32_CONFIG, INT8_RECIPES, Int8Recipe
from .recipe import Recipe, RecipeModel, load_recipe
from .verify import MelInputs, prepare_inputs
from .int8_variant import ExportError, export_int8, report_export, run_openvino

__all__ = [
    "PARITY_TOLERANCE",
    "PARITY_RELATIVE_TOLERANCE",
    "PARITY_F32_FACTOR",
    "FP16_WEIGHTS_RELATIVE_TOLERANCE",
    "parity_tolerance",
    "ONNX_OPSET",
    "ExportError",
    "export_models",
    "export_onnx",
    "onnx_to_openvino",
    "read_taxonomy_labels",
    "tool_versions",
]

logger = logging.getLogger(__name__)

#: Largest max-abs logit difference between torch and each exported form that counts as a faithful export:
#: ``PARITY_TOLERANCE + PARITY_RELATIVE_TOLERANCE * max |logit|`` (:func:`parity_tolerance`). The relative
#: part is float32 rounding accumulated through a deep network: on a 2-core Zen 4, torch float32 itself was
#: 1.39e-4 from float64 on a random efficientnet_b2 with logits up to 30.6 (a fixed 1e-4 failed that
#: correct export); 1e-5 of the logit scale is ~80 float32 ulps and moves a probability by < 3e-6 per unit
#: of logit scale. A model whose own float32 arithmetic is ill-conditioned may exceed that: a random
#: efficientnet_b3 (logits up to 189) had torch float32 0.0099 from float64 and OpenVINO 0.0115. So the
#: tolerance is never below :data:`PARITY_F32_FACTOR` times torch float32's own distance from float64 on
#: the same input: an export counts as faithful when it is as close as float32 arithmetic allows, while a
#: conversion bug (a wrong pad, a dropped op) moves logits by a sizeable part of their spread.
PARITY_TOLERANCE = 1e-4
PARITY_RELATIVE_TOLERANCE = 1e-5
PARITY_F32_FACTOR = 4.0
#: ``ir_weights="f16"`` (an explicit option, never the default): the IR stores its weights in float16 (half the
#: size; OpenVINO computes in f32 from them). Its torch difference is recorded, not held to the f32 contract;
#: this bound, a fraction of the largest logit, only catches a broken conversion. Measured on a random-weight
#: tf_efficientnet_lite0 (group v1, logits up to 0.849): 0.0289 max abs logit difference with f16 weights
#: against 1.02e-05 for the f32 IR (f32 tolerance 1.08e-04), i.e. 3.4 % of the largest logit.
FP16_WEIGHTS_RELATIVE_TOLERANCE = 0.1
ONNX_OPSET = 17
INPUT_NAME = "mel"
OUTPUT_NAME = "logits"
#: Synthetic calibration clips (60 s, 6 chunks each) when INT8 is asked without --calibration.
SYNTHETIC_CALIBRATION_CLIPS = 8
#: Encoder downsampling along time: frames per chunk = 2F / 32.
TIME_STRIDE = 32




# ----------------------------------------------------------------------------------------- helpers
def read_taxonomy_labels(taxonomy: str | Path) -> list[str]:
    """``primary_label`` column of ``taxonomy.csv`` in file order (the model's output order)."""
    path = Path(taxonomy)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or "primary_label" not in reader.fieldnames:
                raise ParameterError(f"{path}: no 'primary_label' column (columns: {reader.fieldnames}); pass BirdCLEF's taxonomy.csv")
            labels = [str(row["primary_label"]).strip() for row in reader]
    except FileNotFoundError as e:
        raise ParameterError(f"taxonomy file {path} not found") from e
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ParameterError(f"{path}: cannot read the taxonomy: {e}") from e
    if not labels or any(not label for label in labels):
        raise ParameterError(f"{path}: 'primary_label' is empty or has blank rows")
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise ParameterError(f"{path}: duplicate primary_label values {duplicates[:5]}")
    return labels


def tool_versions() -> dict[str, str | None]:
    """Installed versions of the packages an export depends on (None when not installed)."""
    names = ("torch", "timm", "onnx", "onnxruntime", "openvino", "nncf", "numpy", "birdinfer")
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def export_onnx(model: SEDNet, path: str | Path, *, input_shape: Sequence[int], dynamic_chunks: bool = False) -> Path:
    """Export ``model`` (eval mode) to ONNX opset 17 with input ``mel`` ``input_shape`` and output ``logits``.

    ``dynamic_chunks`` makes axis 0 of input and output symbolic ("chunks"); the other axes stay fixed.
    The file is checked with ``onnx.checker``.
    """
    import onnx

    path = Path(path)
    example = torch.zeros(tuple(input_shape), dtype=torch.float32)
    dynamic_axes = {INPUT_NAME: {0: "chunks"}, OUTPUT_NAME: {0: "chunks"}} if dynamic_chunks else None
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TorchScript-exporter deprecation and tracer notices
        torch.onnx.export(
            model.eval(),
            (example,),
            str(path),
            dynamo=False,
            opset_version=ONNX_OPSET,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes=dynamic_axes,
            do_constant_folding=True,
        )
    onnx.checker.check_model(str(path))
    return path


def onnx_to_openvino(onnx_path: str | Path, xml_path: str | Path, *, compress_to_fp16: bool = False) -> Path:
    """Convert an ONNX file to an OpenVINO IR (``.xml`` + ``.bin``) keeping f32 weights (float16 weights with
    ``compress_to_fp16``)."""
    import openvino as ov

    model = ov.convert_model(str(onnx_path))
    # save_model compresses weights to fp16 by default; the f32 variant stays f32 unless asked
    ov.save_model(model, str(xml_path), compress_to_fp16=compress_to_fp16)
    return Path(xml_path)


# ------------------------------------------------------------------------------------------ public
def export_models(
    checkpoints: str | Path,
    out: str | Path,
    *,
    recipe: str | Path | Recipe | None = None,
    taxonomy: str | Path | None = None,
    models: Sequence[str] | None = None,
    precision: str = "f32",
    calibration: str | Path | None = None,
    chunks: int = 6,
    dynamic_chunks: bool = False,
    int8_float_ops: Sequence[str] = (),
    keep_onnx: bool = True,
    ir_weights: str = "f32",
    int8_overflow_fix: str | None = None,
    int8_variants: Mapping[str, Int8Recipe] | None = None,
    progress: bool = True,
    measure_precision: bool = True,
    calibration_labels: str | Path | None = None,
) -> Manifest:
    """Export the recipe's models found in ``checkpoints`` into the model folder ``out``; return its manifest.

    - ``recipe``: recipe file or :class:`Recipe` (default: the 4th-place recipe, ``weights/birdclef2025_4th.json``);
      or a version 2 spec of another solution (``weights/birdclef20xx_*.spec.json``, heads ``gem_sed``,
      ``classifier``, ``wave_sed``): its checkpoints are read in that solution's own format, exported to ONNX
      and the folder is built by ``birdinfer import`` (:func:`birdinfer_export.solutions.export_solution`; f32 only).
    - ``taxonomy``: ``taxonomy.csv``; its ``primary_label`` column (file order) becomes the labels. Without
      it labels are ``class_000``, ... (with a warning), their count taken from the first checkpoint.
    - ``models``: checkpoint stems to export (each must exist); default: every recipe model whose
      checkpoint file is in ``checkpoints`` (none found is an error).
    - ``precision``: ``"f32"`` (default) or ``"int8"``, which keeps f32 and adds an NNCF-quantized variant.
    - ``calibration``: folder of soundscapes; the verification input and the INT8 calibration / held-out
      chunks come from it through the runtime's front end (default: seeded synthetic audio, with a warning
      for INT8).
    - ``calibration_labels``: with INT8, the ``calibration`` soundscapes' solution CSV (``row_id`` + one 0/1 column
      per class): INT8 is then valid on a CPU class where its held-out macro ROC-AUC is within 0.002 of f32's,
      instead of the label-free mean |Δp| bar (:mod:`birdinfer.tools.held_out_labels`).
    - ``chunks``: chunk axis of the exported input ``(chunks, 1, n_mels, 2F)`` (default 6 = one 60 s file);
      ``dynamic_chunks=True`` makes that axis dynamic (recorded as -1) and verifies with ``chunks`` chunks.
    - ``int8_float_ops``: OpenVINO operation types NNCF leaves unquantized in the INT8 variant, e.g.
      ``quantize.DEPTHWISE_OPS`` (``("GroupConvolution",)``: EfficientNet's depthwise convolutions; the
      figures are beside that constant). Recorded in the manifest (``float_op_types``).
    - ``keep_onnx``: keep each model's ONNX file (default). ``False`` (``--no-onnx``): the ONNX file is still
      written and verified against torch with ONNX Runtime (the figure stays in the manifest), then deleted
      and not named: the folder then runs on OpenVINO only, at about half the size.
    - ``ir_weights``: ``"f32"`` (default) or ``"f16"``: the f32 variant's IR stores float16 weights (half its size;
      computed in f32). Its difference from torch is recorded (``ir_weights``, ``max_abs_logit_diff_openvino``)
      and bounded by :data:`FP16_WEIGHTS_RELATIVE_TOLERANCE` x max|logit|, not by the f32 contract. f32 only.
    - ``int8_overflow_fix``: NNCF's ``OverflowFix`` for the INT8 variant (``quantize.OVERFLOW_FIXES``).
      Giving this or ``int8_float_ops`` writes one custom ``int8`` variant with those options and no
      recipe evidence; like every INT8 variant, where it is valid is measured per CPU class on ``calibration``'s
      held-out files when the folder is written (:func:`birdinfer_export.variants.measure_int8`).
    - ``int8_variants``: variant name → :class:`quantize.Int8Recipe`, the INT8 variants to write; default
      :data:`quantize.INT8_RECIPES` (the default set).

    Raises :class:`CheckpointError` for missing or bad checkpoints, :class:`ExportError` when an exported
    model differs from torch by more than :func:`parity_tolerance` (max abs logit) or a step fails.
    """
    import openvino as ov
    from tqdm.auto import tqdm

    if precision not in ("f32", "int8"):
        raise ParameterError(f"precision must be 'f32' or 'int8', got {precision!r}")
    int8_float_ops = tuple(str(t) for t in int8_float_ops)
    if int8_float_ops and precision != "int8":
        raise ParameterError(f"int8_float_ops={int8_float_ops} only applies with precision='int8' (got {precision!r})")
    if ir_weights not in ("f32", "f16"):
        raise ParameterError(f"ir_weights must be 'f32' or 'f16', got {ir_weights!r}")
    if ir_weights == "f16" and precision != "f32":
        raise ParameterError("ir_weights='f16' applies to f32 folders only (INT8 is quantized from the f32 IR); "
                             "export with precision='f32'")
    recipes = _int8_recipes(precision, int8_float_ops, int8_overflow_fix, int8_variants)
    if calibration_labels is not None and (precision != "int8" or calibration is None
                                           or not Path(calibration_labels).is_file()):
        raise ParameterError(f"calibration_labels={str(calibration_labels)!r}: give an existing solution CSV, with "
                             "precision='int8' and the labelled soundscapes' folder as calibration")
    if int(chunks) <= 0:
        raise ParameterError(f"chunks must be a positive integer, got {chunks!r}")
    chunks = int(chunks)
    checkpoints = Path(checkpoints)
    out = Path(out)
    if not checkpoints.is_dir():
        raise CheckpointError(f"checkpoint folder {checkpoints} does not exist or is not a folder")
    if recipe is not None and not isinstance(recipe, Recipe) and _is_spec_v2(recipe):
        # another solution's pipeline (weights/birdclef20xx_*.spec.json): its heads, its checkpoint formats
        from .solutions import export_solution
        from .variants import record_precision

        labels = read_taxonomy_labels(taxonomy) if taxonomy is not None else None
        export_solution(recipe, checkpoints, out, models=list(models) if models else None, labels=labels)
        return record_precision(out, calibration=calibration, int8=precision == "int8", measure_bf16=measure_precision,
                                progress=print if progress else None, calibration_labels=calibration_labels)
    recipe = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    selected = _select_models(recipe, checkpoints, models)

    if taxonomy is not None:
        labels = read_taxonomy_labels(taxonomy)
    else:
        first = checkpoints / selected[0].checkpoint
        n_classes = checkpoint_class_count(read_state_dict(first), path=first)
        labels = [f"class_{i:03d}" for i in range(n_classes)]
        warnings.warn(
            f"no taxonomy.csv given: labels are class_000..class_{n_classes - 1:03d} (count from {first.name}); "
            "pass --taxonomy so predictions carry species codes",
            stacklevel=2,
        )

    used_groups = [g for g in recipe.groups if any(m.group == g.name for m in selected)]
    if precision == "int8" and calibration is None:
        warnings.warn(
            "INT8 without --calibration: calibrating on synthetic audio; give real soundscapes for a model "
            "that keeps its accuracy",
            stacklevel=2,
        )
    inputs = prepare_inputs(
        used_groups,
        calibration=calibration,
        sample_rate=recipe.sample_rate,
        window_seconds=recipe.window_seconds,
        synthetic_clips=SYNTHETIC_CALIBRATION_CLIPS if precision == "int8" else 1,
    )

    out.mkdir(parents=True, exist_ok=True)
    # An old manifest would name files this run overwrites: remove it first, write the new one last.
    (out / MANIFEST_NAME).unlink(missing_ok=True)
    core = ov.Core()
    versions = tool_versions()
    entries: list[ModelEntry] = []
    files: dict[str, str] = {}
    bar = tqdm(selected, desc="export", unit="model", disable=not progress)
    for spec in bar:
        bar.set_postfix_str(spec.name)
        entry, entry_files = _export_one(
            spec, recipe, checkpoints, out, core=core, labels=labels, inputs=inputs, precision=precision,
            chunks=chunks, dynamic_chunks=dynamic_chunks, versions=versions, int8_recipes=recipes,
            keep_onnx=keep_onnx, ir_weights=ir_weights,
        )
        entries.append(entry)
        files.update(entry_files)
        report_export(entry, write=bar.write if progress else print)
        gc.collect()
    bar.close()

    manifest = Manifest(
        labels=tuple(labels),
        groups=tuple(used_groups),
        models=tuple(entries),
        sample_rate=recipe.sample_rate,
        window_seconds=recipe.window_seconds,
        chunk_seconds=2 * recipe.window_seconds,
        smoothing=recipe.smoothing,
        files=files,
        folder=out,
        extra={
            "recipe": recipe.name,
            "exported_by": "birdinfer_export.export_models",
            "date": _now(),
            "precision": precision,
            **({"ir_weights": ir_weights} if ir_weights != "f32" else {}),
            "verification_input": inputs.parity_description(chunks),
        },
    )
    manifest.validate()
    manifest.save(out)
    from .variants import record_precision  # bf16 vs f32 per variant on this CPU class, recorded

    record_precision(out, calibration=calibration, measure_int8_variants=list(recipes), measure_bf16=measure_precision,
                     progress=bar.write if progress else None, calibration_labels=calibration_labels)
    return Manifest.load(out, upgrade=False)  # as written (version 1); Manifest.load(out) is the spec it runs as


def _is_spec_v2(path: str | Path) -> bool:
    """True when ``path`` is a version 2 spec (``"format": "birdinfer-model-folder"``) rather than a recipe."""
    import json

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False  # load_recipe reports unreadable files
    return isinstance(data, dict) and data.get("format") == "birdinfer-model-folder"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _int8_recipes(precision: str, float_ops: tuple[str, ...], overflow_fix: str | None,
                  variants: Mapping[str, Int8Recipe] | None) -> dict[str, Int8Recipe]:
    if precision != "int8":
        if overflow_fix is not None or variants:
            raise ParameterError(f"int8_overflow_fix / int8_variants only apply with precision='int8' (got {precision!r})")
        return {}
    if float_ops or overflow_fix is not None:
        if variants:
            raise ParameterError("give int8_variants, or int8_float_ops / int8_overflow_fix, not both")
        try:
            return {"int8": Int8Recipe(overflow_fix=overflow_fix or "first_layer", float_ops=tuple(float_ops))}
        except ValueError as e:
            raise ParameterError(str(e)) from e
    chosen = dict(variants) if variants else {k: INT8_RECIPES[k] for k in DEFAULT_INT8_VARIANTS}
    unknown = [k for k in chosen if k == "f32" or k not in VARIANT_PRECISIONS]
    if unknown:
        raise ParameterError(f"INT8 variant names {unknown} are not among {[v for v in VARIANT_PRECISIONS if v != 'f32']}")
    return chosen


def _select_models(recipe: Recipe, checkpoints: Path, models: Sequence[str] | None) -> list[RecipeModel]:
    if models:
        selected = [recipe.model(name) for name in models]
        missing = [m.checkpoint for m in selected if not (checkpoints / m.checkpoint).is_file()]
        if missing:
            raise CheckpointError(f"requested checkpoint(s) not found in {checkpoints}: {missing}")
        return list(dict.fromkeys(selected))  # keep order, drop repeats
    selected = [m for m in recipe.models if (checkpoints / m.checkpoint).is_file()]
    if not selected:
        expected = [m.checkpoint for m in recipe.models]
        raise CheckpointError(
            f"no checkpoint of recipe {recipe.name!r} found in {checkpoints}; expected any of: {expected}"
        )
    return selected


def _export_one(
    spec: RecipeModel,
    recipe: Recipe,
    checkpoints: Path,
    out: Path,
    *,
    core,
    labels: Sequence[str],
    inputs: MelInputs,
    precision: str,
    chunks: int,
    dynamic_chunks: bool,
    versions: dict,
    int8_recipes: Mapping[str, Int8Recipe] | None = None,
    keep_onnx: bool = True,
    ir_weights: str = "f32",
) -> tuple[ModelEntry, dict[str, str]]:
    start = time.perf_counter()
    group = recipe.group(spec.group)
    checkpoint_path = checkpoints / spec.checkpoint
    model = load_checkpoint(checkpoint_path, arch=spec.arch, n_mels=group.n_mels, n_classes=len(labels))
    input_shape = (chunks, 1, group.n_mels, group.frames_per_chunk)
    frames_per_chunk = group.frames_per_chunk // TIME_STRIDE

    onnx_name, xml_name = f"{spec.name}.onnx", f"{spec.name}.xml"
    try:
        export_onnx(model, out / onnx_name, input_shape=input_shape, dynamic_chunks=dynamic_chunks)
    except Exception as e:  # noqa: BLE001 - the exporter and checker raise many types; say which model
        raise ExportError(f"{spec.name} ({spec.arch}): ONNX export of {checkpoint_path} failed: {type(e).__name__}: {e}") from e
    try:
        onnx_to_openvino(out / onnx_name, out / xml_name, compress_to_fp16=ir_weights == "f16")
    except Exception as e:  # noqa: BLE001
        raise ExportError(f"{spec.name} ({spec.arch}): OpenVINO conversion of {onnx_name} failed: {type(e).__name__}: {e}") from e

    batch = inputs.parity_batch(group.name, chunks)
    f32_verification, f32_compiled = _verify_f32(spec, model, out / onnx_name, out / xml_name, batch, core=core,
                                                 frames=frames_per_chunk, ir_weights=ir_weights)
    f32_verification["input"] = inputs.parity_description(chunks)
    del model

    if not keep_onnx:  # verified above; the OpenVINO runtime never reads it
        (out / onnx_name).unlink()
        f32_verification["onnx_file"] = "verified, then left out (keep_onnx=False)"
    variants = {"f32": ModelVariant(openvino=xml_name, onnx=onnx_name if keep_onnx else None, verification=f32_verification)}
    for name, int8_recipe in (int8_recipes or {}).items():
        variants[name] = export_int8(spec, out, xml_name, f32_compiled, inputs, group.name, chunks, core=core,
                                      recipe=int8_recipe, variant=name)

    files = {name: sha256_file(out / name) for v in variants.values() for name in v.file_names()}
    entry = ModelEntry(
        name=spec.name,
        arch=spec.arch,
        group=spec.group,
        weight=spec.weight,
        input_shape=(-1 if dynamic_chunks else chunks, 1, group.n_mels, group.frames_per_chunk),
        frames_per_chunk=frames_per_chunk,
        variants=variants,
        input_name=INPUT_NAME,
        output_name=OUTPUT_NAME,
        export={
            "checkpoint": spec.checkpoint,
            "checkpoint_sha256": sha256_file(checkpoint_path),
            "opset": ONNX_OPSET,
            "versions": versions,
            "date": _now(),
            "seconds": round(time.perf_counter() - start, 2),
        },
    )
    return entry, files


def parity_tolerance(logit_abs_max: float, torch_f32_error: float = 0.0) -> float:
    """Max abs logit difference allowed between torch (float64) and an export whose logits reach
    ``logit_abs_max``, when torch float32 itself is ``torch_f32_error`` from float64 on the same input."""
    return max(PARITY_TOLERANCE + PARITY_RELATIVE_TOLERANCE * float(logit_abs_max), PARITY_F32_FACTOR * float(torch_f32_error))


def _verify_f32(spec: RecipeModel, model: SEDNet, onnx_path: Path, xml_path: Path, batch: np.ndarray, *, core, frames: int,
                ir_weights: str = "f32"):
    """ONNX Runtime and OpenVINO (f32 hint) vs torch on ``batch``; raises :class:`ExportError` above tolerance.

    The torch reference runs in float64; the float32 torch figure is recorded beside for scale.
    """
    import onnxruntime as ort

    # The reference is the network in float64: a float32 torch run carries its own rounding (~5e-5 on
    # logits of ~13, measured), and comparing two float32 runs would count both roundings against the export.
    with torch.no_grad():
        torch_f32 = model(torch.from_numpy(batch)).numpy().astype(np.float64)
        reference = copy.deepcopy(model).double()(torch.from_numpy(batch).double()).numpy()
    expected_shape = (batch.shape[0], model.n_classes, frames)
    if reference.shape != expected_shape:
        raise ExportError(f"{spec.name} ({spec.arch}): torch output shape {reference.shape}, expected {expected_shape}")
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    onnx_out = session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0]
    compiled = core.compile_model(str(xml_path), "CPU", dict(F32_CONFIG))
    openvino_out = run_openvino(compiled, [batch])
    del session
    figures = {}
    for backend, values in (("onnxruntime", onnx_out), ("openvino", openvino_out)):
        if values.shape != reference.shape:
            raise ExportError(f"{spec.name} ({spec.arch}): {backend} output shape {values.shape} differs from torch {reference.shape}")
        figures[backend] = float(np.max(np.abs(values.astype(np.float64) - reference)))
    verification: dict[str, Any] = {
        "reference": "torch float64 (eval)",
        "max_abs_logit_diff_torch_f32": float(np.max(np.abs(torch_f32 - reference))),
        "max_abs_logit_diff_onnxruntime": figures["onnxruntime"],
        "max_abs_logit_diff_openvino": figures["openvino"],
        "tolerance": parity_tolerance(np.max(np.abs(reference)), np.max(np.abs(torch_f32 - reference))),
        "openvino_config": dict(F32_CONFIG),
        # scale of what was compared, so a tiny difference on tiny logits is not mistaken for parity
        "logit_abs_max": float(np.max(np.abs(reference))),
        "logit_std": float(np.std(reference)),
    }
    limits = {"onnxruntime": verification["tolerance"], "openvino": verification["tolerance"]}
    if ir_weights == "f16":  # recorded, bounded only against a broken conversion (FP16_WEIGHTS_RELATIVE_TOLERANCE)
        limits["openvino"] = FP16_WEIGHTS_RELATIVE_TOLERANCE * verification["logit_abs_max"]
        verification.update(ir_weights="f16", openvino_bound=limits["openvino"])
    bad = {k: v for k, v in figures.items() if not v <= limits[k]}
    if bad:
        raise ExportError(
            f"{spec.name} ({spec.arch}): exported model differs from torch (float64 reference): max abs logit difference "
            + ", ".join(f"{k} {v:.3g}" for k, v in figures.items())
            + f" (tolerance {verification['tolerance']:.3g} = max({PARITY_TOLERANCE:g} + {PARITY_RELATIVE_TOLERANCE:g} x max|logit|, {PARITY_F32_FACTOR:g} x torch float32's error); torch float32 itself {verification['max_abs_logit_diff_torch_f32']:.3g}; "
            f"logits up to {verification['logit_abs_max']:.3g}). "
            "Files are left in the output folder for inspection; no manifest was written."
        )
    return verification, compiled


