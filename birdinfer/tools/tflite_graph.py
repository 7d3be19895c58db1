"""Read a TFLite model file's graph: operators, tensors and constant buffers (import tools only).

Uses the TFLite flatbuffer schema shipped with LiteRT (``ai_edge_litert.schema_py_generated``; the
``tflite`` extra), never its interpreter. A file that is not a TFLite flatbuffer, or is truncated, raises
:class:`birdinfer.errors.ModelFolderError` naming the file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import MissingDependencyError, ModelFolderError

__all__ = ["TfliteGraph", "TfliteOp", "read_tflite", "schema"]

#: TFLite tensor types birdinfer reads as constants.
_DTYPES = {0: np.float32, 1: np.float16, 2: np.int32, 3: np.uint8, 4: np.int64, 9: np.int8}


def schema():
    """LiteRT's generated TFLite schema module (a :class:`MissingDependencyError` when LiteRT is absent)."""
    try:
        from ai_edge_litert import schema_py_generated
    except ImportError as e:
        raise MissingDependencyError(f"reading a TFLite model needs LiteRT: pip install 'birdinfer[tflite]' "
                                     f"(or ai-edge-litert) ({e})") from e
    return schema_py_generated


@dataclass(frozen=True)
class TfliteOp:
    index: int
    type: str  # builtin operator name, e.g. "RFFT2D"
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]


@dataclass
class TfliteGraph:
    """The first subgraph of a TFLite model: operators in execution order, tensor names, shapes, constants."""

    path: Path
    ops: list[TfliteOp]
    names: list[str]
    shapes: list[tuple[int, ...]]  # shape signature (-1: dynamic)
    types: list[int]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    _buffers: list = field(repr=False, default_factory=list)
    _tensor_buffer: list[int] = field(repr=False, default_factory=list)
    _raw: bytes = field(repr=False, default=b"")

    def tensor(self, name: str) -> int:
        """Index of the tensor named ``name`` (ModelFolderError when absent)."""
        try:
            return self.names.index(name)
        except ValueError:
            raise ModelFolderError(f"{self.path}: no tensor named {name!r}") from None

    def producer(self, tensor: int) -> TfliteOp | None:
        return next((op for op in self.ops if tensor in op.outputs), None)

    def consumers(self, tensor: int) -> list[TfliteOp]:
        return [op for op in self.ops if tensor in op.inputs]

    def const(self, tensor: int) -> np.ndarray | None:
        """A constant tensor's value (None when the tensor is computed or of an unread type)."""
        buffer = self._buffers[self._tensor_buffer[tensor]] if self._tensor_buffer[tensor] > 0 else None
        dtype = _DTYPES.get(self.types[tensor])
        if buffer is None or dtype is None:
            return None
        if buffer.data is not None and len(buffer.data):
            raw = np.asarray(buffer.data, dtype=np.uint8).tobytes()
        elif buffer.offset > 1:  # stored after the flatbuffer (models over 2 GB)
            raw = self._raw[buffer.offset : buffer.offset + buffer.size]
        else:
            return None
        values = np.frombuffer(raw, dtype=dtype)
        shape = tuple(max(1, d) for d in self.shapes[tensor])
        return values.reshape(shape) if int(np.prod(shape)) == values.size else values

    def const_scalar(self, tensor: int, what: str) -> float:
        value = self.const(tensor)
        if value is None or value.size != 1:
            raise ModelFolderError(f"{self.path}: {what} ({self.names[tensor]!r}) is not a constant scalar")
        return float(value.reshape(()))


def _op_names(s) -> dict[int, str]:
    return {v: k for k, v in vars(s.BuiltinOperator).items() if not k.startswith("_") and isinstance(v, int)}


def read_tflite(path: str | Path) -> TfliteGraph:
    """The graph of a ``.tflite`` file (its first subgraph)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ModelFolderError(f"{path}: cannot read the model file ({e.strerror or e})") from e
    if len(raw) < 8 or raw[4:8] != b"TFL3":
        raise ModelFolderError(f"{path}: not a TFLite model (no 'TFL3' flatbuffer identifier); give the .tflite file")
    s = schema()
    try:
        model = s.ModelT.InitFromPackedBuf(raw, 0)
        sub = model.subgraphs[0]
        codes = [max(c.builtinCode, c.deprecatedBuiltinCode) for c in model.operatorCodes]
        names = _op_names(s)
        ops = [TfliteOp(i, names.get(codes[op.opcodeIndex], f"CUSTOM_{codes[op.opcodeIndex]}"),
                        tuple(int(t) for t in op.inputs), tuple(int(t) for t in op.outputs))
               for i, op in enumerate(sub.operators or [])]
        tensors = sub.tensors or []
        shapes = [tuple(int(d) for d in (t.shapeSignature if t.shapeSignature is not None else t.shape if t.shape is not None else ()))
                  for t in tensors]
        graph = TfliteGraph(path, ops, [t.name.decode("utf-8", "replace") for t in tensors], shapes,
                            [int(t.type) for t in tensors], tuple(int(i) for i in sub.inputs),
                            tuple(int(o) for o in sub.outputs), list(model.buffers or []), [int(t.buffer) for t in tensors], raw)
    except ModelFolderError:
        raise
    except Exception as e:  # noqa: BLE001 - the flatbuffer reader raises anything on a damaged file
        raise ModelFolderError(f"{path}: cannot read it as a TFLite model, the file is truncated or damaged "
                               f"({type(e).__name__}: {str(e)[:100]}); download it again") from e
    for b in graph._buffers:
        if b.offset > 1 and b.offset + b.size > len(raw):
            raise ModelFolderError(f"{path}: a weight buffer lies past the end of the file (truncated?)")
    return graph
