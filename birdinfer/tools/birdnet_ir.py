"""BirdNET V2.4's network as an OpenVINO IR (:func:`network_ir`): OpenVINO's partial conversion of the TFLite
file, cut where the spectrogram's channel scaling ends and fed from a Parameter ``mel_power``
``[-1, branches · n_mels, frames]`` (what the front-end op ``birdnet_mel`` computes: mel products, square, power)
through the rest of the spectrogram rebuilt from the file's constants (:func:`_tail`): the branches stacked as
channels, per-channel scaling. Every tail node is named ``spectrogram/...`` (:data:`TAIL_PREFIX`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import MissingDependencyError, ModelFolderError

__all__ = ["network_ir", "EMBEDDING_OUTPUT", "GRAPH_NAME", "TAIL_PREFIX"]

GRAPH_NAME = "birdnet_v24"
#: The graph's second output: the 1024-d input of the classifier, what BirdNET-Analyzer's ``embeddings`` reads.
EMBEDDING_OUTPUT = "embedding"
#: Name prefix of the spectrogram's tail in the IR (stacking as channels, per-channel scaling); the INT8
#: recipe of :mod:`birdinfer.tools.birdnet_import` leaves these nodes in float.
TAIL_PREFIX = "spectrogram/"


def _named(node, name: str):
    node.set_friendly_name(TAIL_PREFIX + name)
    return node


def _tail(ov, param, n_branches: int, n_mels: int, tail: dict):
    """The spectrogram's tail in OpenVINO ops: ``(B, branches · n_mels, T)`` → ``(B, branches, n_mels, T)``, scaled per
    channel; every node named ``spectrogram/...`` (INT8 leaves them in float: ``birdnet_import.INT8_RECIPE``)."""
    ops = ov.opset13
    shape = np.array([-1, n_branches, n_mels, param.get_partial_shape()[2].get_length()], np.int64)
    stacked = _named(ops.reshape(param, ops.constant(shape), False), "stack")
    scale = [1, n_branches, 1, 1]
    scaled = _named(ops.multiply(stacked, ops.constant(tail["scale"].reshape(scale))), "scale")
    return _named(ops.add(scaled, ops.constant(tail["offset"].reshape(scale))), "offset")


def network_ir(path: str | Path, found: dict):
    """OpenVINO's partial conversion of the TFLite file with the tensor ``found["cut_tensor"]`` fed from a
    Parameter ``[-1, branches · n_mels, frames]`` through the spectrogram's tail (:func:`_tail`): an ``openvino.Model``."""
    try:
        import openvino as ov
        from openvino.frontend import FrontEndManager
    except ImportError as e:
        raise MissingDependencyError(f"birdinfer import needs openvino: pip install openvino ({e})") from e
    params, cut = found["params"], found["cut_tensor"]
    frontend = FrontEndManager().load_by_framework("tflite")
    partial = frontend.convert_partially(frontend.load(str(path)))
    target = next((o for op in partial.get_ordered_ops() for o in op.outputs() if cut in o.get_names()), None)
    if target is None:
        raise ModelFolderError(f"{path}: OpenVINO's conversion has no tensor {cut!r} to cut at")
    n_branches, n_mels = len(found["mel"]["inputs"]), found["mel"]["n_mels"]  # what birdnet_mel gives
    param = ov.opset13.parameter([-1, n_branches * n_mels, params["frames"]], ov.Type.f32, name="mel_power")
    source = _tail(ov, param, n_branches, n_mels, found["tail"]).output(0)
    dims = target.get_partial_shape()
    if dims.rank.get_length() == 4 and dims[1].is_static and dims[1].get_length() != len(params["bins"]):
        source = _named(ov.opset13.transpose(source, ov.opset13.constant(np.array([0, 2, 3, 1], np.int64))),
                        "nhwc").output(0)
    for consumer in list(target.get_target_inputs()):
        consumer.replace_source_output(source)
    embedding = next((o for op in partial.get_ordered_ops() for o in op.outputs()
                      if found["embedding_tensor"] in o.get_names()), None)
    if embedding is None:
        raise ModelFolderError(f"{path}: OpenVINO's conversion has no tensor {found['embedding_tensor']!r} (the embedding)")
    result = ov.opset13.result(embedding)
    result.set_friendly_name(EMBEDDING_OUTPUT)
    model = ov.Model(list(partial.get_results()) + [result], [param], GRAPH_NAME)
    model.validate_nodes_and_infer_types()
    left = sorted({op.get_type_name() for op in model.get_ordered_ops() if "FrameworkNode" in op.get_type_name()
                   or op.get_type_name() in ("Rfft2d", "RFFT2D")})
    if left:
        raise ModelFolderError(f"{path}: unconverted operations remain after the cut: {left}")
    return model
