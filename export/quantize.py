"""INT8 post-training quantization of an exported OpenVINO IR with NNCF, and compiling the result.

OpenVINO's CPU plugin picks bf16 as its default inference precision on CPUs with native bf16; some INT8
models (efficientnet_b3, FINDINGS.md) then fail to compile. :func:`compile_int8` retries with an f32 hint
and says so, so the manifest can tell the runtime which configuration works.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["QUANTIZED_OP_TYPES", "DEPTHWISE_OPS", "quantize_ir", "count_quantized_ops", "compile_int8"]

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


def quantize_ir(core, f32_xml: str | Path, int8_xml: str | Path, calibration_batches: Sequence[np.ndarray], *,
                float_ops: Sequence[str] = ()) -> int:
    """Quantize the f32 IR at ``f32_xml`` with ``nncf.quantize`` and save it (weights uncompressed) at ``int8_xml``.

    ``calibration_batches``: model inputs, each ``(chunks, 1, n_mels, 2F)`` float32 dB. All of them are used
    (``subset_size`` = their count). ``float_ops``: OpenVINO op types left unquantized (NNCF ignored
    scope by type; a type the model does not have is no error). Returns the number of quantized
    operations in the saved model.
    """
    import nncf
    import openvino as ov

    model = core.read_model(str(f32_xml))
    dataset = nncf.Dataset(list(calibration_batches))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        options = {"ignored_scope": nncf.IgnoredScope(types=list(float_ops), validate=False)} if float_ops else {}
        quantized = nncf.quantize(model, dataset, subset_size=len(calibration_batches), **options)
    ov.save_model(quantized, str(int8_xml), compress_to_fp16=False)
    return count_quantized_ops(quantized)


def compile_int8(core, int8_xml: str | Path):
    """Compile an INT8 IR for CPU: default precision first, then with ``INFERENCE_PRECISION_HINT=f32``.

    Returns ``(compiled_model, config, default_error)``: ``config`` is ``{}`` when the default worked,
    else the f32 hint; ``default_error`` is the first line of the default attempt's error, or None.
    The second failure, if any, propagates.
    """
    try:
        return core.compile_model(str(int8_xml), "CPU"), {}, None
    except RuntimeError as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        compiled = core.compile_model(str(int8_xml), "CPU", dict(F32_CONFIG))
        return compiled, dict(F32_CONFIG), first_line[:300]
