"""One exported model's INT8 variant (NNCF on the f32 IR, compiled, compared with f32 on held-out chunks), and what
the export and the variant tools share: :class:`ExportError`, running an IR over batches, the one-line report.

Split from :mod:`birdinfer_export.convert` so that :mod:`birdinfer_export.variants` (INT8 variants added to an
existing folder) needs nothing of the export itself: imports run one way, convert → variants → here.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from birdinfer.errors import BirdinferError
from birdinfer.spec.files import ModelVariant
from birdinfer.spec.manifest import ModelEntry

from .quantize import Int8Recipe, compile_int8, quantize_ir
from .recipe import RecipeModel
from .verify import MelInputs, batches_of, deviation_figures

__all__ = ["ExportError", "export_int8", "run_openvino", "precision_name", "report_export"]

logger = logging.getLogger(__name__)


class ExportError(BirdinferError):
    """An export step failed or an exported model does not reproduce the torch network."""


def run_openvino(compiled, batches: Iterable[np.ndarray]) -> np.ndarray:
    request = compiled.create_infer_request()
    outputs = [np.array(request.infer({0: b})[0], dtype=np.float32, copy=True) for b in batches]
    return np.concatenate(outputs, axis=0)




def export_int8(spec: RecipeModel, out: Path, f32_xml: str, f32_compiled, inputs: MelInputs, group: str, chunks: int, *, core,
                 recipe: Int8Recipe = Int8Recipe(), variant: str = "int8") -> ModelVariant:
    from birdinfer.runtime.cpu import effective_isa

    float_ops = tuple(recipe.float_ops)
    int8_xml = f"{spec.name}.{variant}.xml"
    calibration_batches = batches_of(inputs.calibration[group], chunks)
    try:
        quantized_ops = quantize_ir(core, out / f32_xml, out / int8_xml, calibration_batches, float_ops=float_ops,
                                    overflow_fix=recipe.overflow_fix)
    except Exception as e:  # noqa: BLE001 - NNCF raises many types; say which model
        raise ExportError(f"{spec.name} ({spec.arch}): INT8 quantization failed: {type(e).__name__}: {e}") from e
    if quantized_ops == 0:
        raise ExportError(f"{spec.name} ({spec.arch}): NNCF produced no quantized operations in {int8_xml}")
    try:
        compiled, config, default_error = compile_int8(core, out / int8_xml)
    except Exception as e:  # noqa: BLE001
        raise ExportError(f"{spec.name} ({spec.arch}): the INT8 model {int8_xml} does not compile: {e}") from e
    if default_error:
        logger.warning("%s: INT8 model fails to compile with the CPU's float hint (%s); it compiles with %s",
                       spec.name, default_error, config)
    held_out = inputs.held_out[group]
    held_batches = batches_of(held_out, chunks)
    n = len(held_out)
    f32_logits = run_openvino(f32_compiled, held_batches)[:n]
    int8_logits = run_openvino(compiled, held_batches)[:n]
    verification: dict[str, Any] = {
        "reference": "f32 OpenVINO IR (INFERENCE_PRECISION_HINT f32)",
        **deviation_figures(f32_logits, int8_logits),
        "held_out": inputs.held_out_source,
        "held_out_chunks": n,
        "held_out_files": list(inputs.held_out_files),
        "calibration": inputs.calibration_source,
        "calibration_batches": len(calibration_batches),
        "calibration_chunks": int(len(inputs.calibration[group])),
        "quantized_ops": quantized_ops,
        "compile_config": config,
        "compiled_precision": precision_name(compiled.get_property("INFERENCE_PRECISION_HINT")),
        "default_compile_error": default_error,
        "tool": "nncf.quantize" + (" (defaults)" if not float_ops and recipe.overflow_fix == "first_layer" else
                                   f" (overflow_fix={recipe.overflow_fix}{'; ignored_scope types' if float_ops else ''})"),
        "float_op_types": list(float_ops),
        "overflow_fix": recipe.overflow_fix,
        **({"int8_config": recipe.config} if recipe.config else {}),
        "verified_on_cpu_class": effective_isa().cpu_class,
        **({"recipe_evidence": recipe.evidence} if recipe.evidence else {}),
    }
    # Valid on no class until measured per class (variants.measure_int8, run by export_models / add_int8_variants).
    return ModelVariant(openvino=int8_xml, verification=verification, cpu_classes=())


def precision_name(element_type) -> str:
    """``openvino.Type`` → short name (``f32``, ``bf16``, ...)."""
    name = getattr(element_type, "get_type_name", None)
    return str(name()) if callable(name) else str(element_type)


def report_export(entry: ModelEntry, *, write) -> None:
    f32 = entry.variants["f32"].verification
    line = (f"{entry.name}: parity max|Δlogit| onnxruntime {f32['max_abs_logit_diff_onnxruntime']:.2e}, "
            f"openvino {f32['max_abs_logit_diff_openvino']:.2e} ({entry.export.get('seconds', 0):.1f} s)")
    for name in [k for k in entry.variants if k != "f32"]:
        v = entry.variants[name].verification
        line += (f"; {name} vs f32: max|Δp| {v['max_abs_prob_diff']:.4f}, mean|Δp| {v['mean_abs_prob_diff']:.5f}, "
                 f"Spearman {v['rank_agreement_spearman']:.4f}, top-1 {v['top1_agreement']:.3f}"
                 + (f" [compiled with {v['compile_config']}]" if v["default_compile_error"] else ""))
    write(line)
