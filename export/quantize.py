"""INT8 post-training quantization of an exported OpenVINO IR with NNCF, and compiling the result.

OpenVINO's CPU plugin picks bf16 as its default inference precision on CPUs with native bf16; some INT8
models (efficientnet_b3, FINDINGS.md) then fail to compile. :func:`compile_int8` retries with an f32 hint
and says so, so the manifest can tell the runtime which configuration works.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["QUANTIZED_OP_TYPES", "DEPTHWISE_OPS", "OVERFLOW_FIXES", "PRESETS", "Int8Recipe", "INT8_CONFIGS", "recipe_of", "INT8_RECIPES",
           "DEFAULT_INT8_VARIANTS",
           "quantize_ir", "count_quantized_ops", "compile_int8"]

#: Operations NNCF inserts to mark quantized tensors in an OpenVINO model.
QUANTIZED_OP_TYPES = ("FakeQuantize", "FakeConvert")
F32_CONFIG = {"INFERENCE_PRECISION_HINT": "f32"}


def count_quantized_ops(model) -> int:
    """Number of FakeQuantize / FakeConvert operations in an ``openvino.Model``."""
    return sum(op.get_type_name() in QUANTIZED_OP_TYPES for op in model.get_ops())


#: OpenVINO op types of depthwise convolutions. Left in float (``int8_float_ops=DEPTHWISE_OPS``) they cost
#: less INT8 error on the demo's tinynet_e models: macro ROC-AUC vs f32 -0.0018 instead of -0.0027 (384
#: windows) and -0.0005 instead of -0.0018 (288 windows, other models); mean |Δp| 0.0111 vs 0.0122.
DEPTHWISE_OPS = ("GroupConvolution",)


#: NNCF quantization presets: ``performance`` (symmetric activations, NNCF's default for CNNs) and ``mixed``
#: (asymmetric activations: a better grid for activations that are not centred on zero).
PRESETS = ("performance", "mixed")

#: NNCF ``OverflowFix`` values: ``first_layer`` (NNCF's default: 7-bit weights in the first layer only),
#: ``enable`` (7-bit weights in every convolution and matrix product except depthwise ones, which NNCF
#: leaves 8-bit: no int16 saturation of u8×s8 pairs on CPUs without VNNI),
#: ``disable`` (8-bit weights everywhere).
OVERFLOW_FIXES = ("first_layer", "enable", "disable")


@dataclass(frozen=True)
class Int8Recipe:
    """How one INT8 variant is made (NNCF options). Where it meets the accuracy bar is not a property of the
    recipe: it is measured on each folder's own models when the folder is written
    (:func:`birdinfer_export.variants.measure_int8`). ``evidence`` says why the recipe was chosen."""

    overflow_fix: str = "first_layer"
    float_ops: tuple[str, ...] = ()
    evidence: str = ""
    config: str = ""  # name in INT8_CONFIGS, for the record
    float_names: tuple[str, ...] = ()  # regular expressions of node names left in float (NNCF ignored scope)
    preset: str = "performance"

    def __post_init__(self):
        if self.overflow_fix not in OVERFLOW_FIXES:
            raise ValueError(f"overflow_fix={self.overflow_fix!r} is not one of {OVERFLOW_FIXES}")
        if self.preset not in PRESETS:
            raise ValueError(f"preset={self.preset!r} is not one of {PRESETS}")


#: Named INT8 configurations (NNCF overflow fix, op types kept in float) compared by
#: ``benchmarks/precision_accuracy.py --int8-configs``.
INT8_CONFIGS: dict[str, tuple[str, tuple[str, ...]]] = {
    "nncf-default": ("first_layer", ()),
    "depthwise-float": ("first_layer", DEPTHWISE_OPS),
    "overflow-fix": ("enable", ()),
    "overflow-fix+depthwise-float": ("enable", DEPTHWISE_OPS),
}


def recipe_of(config: str, evidence: str = "") -> Int8Recipe:
    """The :class:`Int8Recipe` of a named configuration of :data:`INT8_CONFIGS`."""
    overflow_fix, float_ops = INT8_CONFIGS[config]
    return Int8Recipe(overflow_fix=overflow_fix, float_ops=float_ops, evidence=evidence, config=config)


#: The INT8 variants a default ``export --precision int8`` writes (variant name → recipe), chosen by
#: ``benchmarks/precision_accuracy.py --soundscapes 64 --cpu-class all --int8-configs ...`` on the demo's two
#: trained tinynet_e models (384 test windows; ΔAUC = INT8 − f32 macro ROC-AUC under the same class; mean |Δp|):
#:
#: ==============================  ===================  ===================  ===================
#: configuration                   avx512_vnni (native) avx512 (Kaggle)      avx2
#: ==============================  ===================  ===================  ===================
#: nncf-default                    +0.0000 / 0.0118     −0.0007 / 0.0175     −0.0007 / 0.0177
#: depthwise-float                 −0.0011 / 0.0108     −0.0017 / 0.0172     −0.0017 / 0.0172
#: overflow-fix                    −0.0013 / 0.0123     −0.0013 / 0.0123     −0.0016 / 0.0124
#: overflow-fix+depthwise-float    −0.0022 / 0.0117     −0.0022 / 0.0117     −0.0022 / 0.0117
#: ==============================  ===================  ===================  ===================
#:
#: Without VNNI, NNCF's default 8-bit weights saturate (mean |Δp| 0.0118 → 0.0175: the same file computes
#: differently); with the overflow fix (7-bit weights) the INT8 arithmetic is the same on every class and
#: every class meets the bar (768 windows of the same data: −0.0012 / −0.0012 / −0.0013, mean |Δp| 0.0125),
#: with depthwise convolutions still INT8 (faster than keeping them in float). One
#: variant then serves every class. VNNI / AMX classes compute exact INT8 dot products like avx512_vnni
#: (measured); avx2_vnni likewise; the bf16 float layers of the bf16 classes were not measurable here.
INT8_RECIPES: dict[str, Int8Recipe] = {
    "int8": recipe_of(
        "overflow-fix",
        "chosen by precision_accuracy.py --cpu-class all, demo seed 0, 384 windows: ΔAUC -0.0013 (avx512_vnni), -0.0013 "
        "(avx512), -0.0016 (avx2); vnni/amx classes by equal INT8 arithmetic",
    ),
}
DEFAULT_INT8_VARIANTS = tuple(INT8_RECIPES)


def quantize_ir(core, f32_xml: str | Path, int8_xml: str | Path, calibration_batches: Sequence[np.ndarray], *,
                float_ops: Sequence[str] = (), overflow_fix: str = "first_layer", float_names: Sequence[str] = (),
                preset: str = "performance") -> int:
    """Quantize the f32 IR at ``f32_xml`` with ``nncf.quantize`` and save it (weights uncompressed) at ``int8_xml``.

    ``calibration_batches``: model inputs, each ``(chunks, 1, n_mels, 2F)`` float32 dB. All of them are used
    (``subset_size`` = their count). ``float_ops``: OpenVINO op types left unquantized (NNCF ignored
    scope by type; a type the model does not have is no error); ``float_names``: regular expressions of node
    names left unquantized. ``overflow_fix``: one of :data:`OVERFLOW_FIXES`; ``preset``: one of :data:`PRESETS`.
    Returns the number of quantized operations in the saved model.
    """
    import logging

    import nncf
    import openvino as ov

    logging.getLogger("nncf").setLevel(logging.WARNING)  # one INFO line per node of an ignored scope otherwise
    model = core.read_model(str(f32_xml))
    dataset = nncf.Dataset(list(calibration_batches))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        options = {"ignored_scope": nncf.IgnoredScope(types=list(float_ops), patterns=list(float_names), validate=False)}
        if not float_ops and not float_names:
            options = {}
        if preset != "performance":
            options["preset"] = nncf.QuantizationPreset.MIXED
        if overflow_fix != "first_layer":
            options["advanced_parameters"] = nncf.AdvancedQuantizationParameters(overflow_fix=nncf.OverflowFix(
                {"enable": "enable", "disable": "disable"}[overflow_fix]))
        quantized = nncf.quantize(model, dataset, subset_size=len(calibration_batches), **options)
    ov.save_model(quantized, str(int8_xml), compress_to_fp16=False)
    return count_quantized_ops(quantized)


def compile_int8(core, int8_xml: str | Path):
    """Compile an INT8 IR for CPU with the runtime's float hint for this CPU (bf16 where native and not
    masked, else f32: :attr:`birdinfer.runtime.cpu.CpuIsa.float_hint`), then, if that fails, with f32.

    Returns ``(compiled_model, config, first_error)``: ``config`` is the hint that worked; ``first_error``
    is the first line of the first attempt's error, or None. The second failure, if any, propagates.
    """
    from birdinfer.runtime.cpu import effective_isa

    first = {"INFERENCE_PRECISION_HINT": effective_isa().float_hint}
    try:
        return core.compile_model(str(int8_xml), "CPU", dict(first)), first, None
    except RuntimeError as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        compiled = core.compile_model(str(int8_xml), "CPU", dict(F32_CONFIG))
        return compiled, dict(F32_CONFIG), first_line[:300]
