"""Only the logits a label map reads: a classifier head cut down to those columns before it is compiled.

A foundation model's head is wide (Perch v2: a fully connected layer 1536 → 14,795, 91 MB of float32 read on
every request), but a model whose steps start with ``label_map`` (:mod:`birdinfer.ops.label_map`) keeps only
the model classes its map gathers: direct matches and genus members, a few hundred at most. When a folder is
loaded, :func:`label_map_columns` finds, per model, the output such a map reads and the sorted set of columns
it gathers, provided nothing else reads that output raw: no step before the map, no model on the output
(``"input": {"model": …, "output": …}``; models on its *rows* read them after the map), no output kept for the
caller (``Predictor(keep_outputs=…)``, e.g. ``predict --embeddings``).

:func:`prune_output` then rewrites the ``openvino.Model`` (OpenVINO backend only) so that output gives those
columns only, ``[N, K]``: from the output back to a ``MatMul`` whose columns come from constants (the ONNX
frontend reads torch's ``Gemm`` as ``MatMul`` + ``Multiply`` / ``Add`` with constant bias, and a saved IR puts a
``Convert`` behind each compressed constant), every node passed through must compute column ``j`` from column
``j`` of its inputs alone (``Convert``, elementwise arithmetic and activations, ``FakeQuantize``, ``Transpose``
with a constant order) and feed nothing else; every constant that holds one value per column is replaced by its
sliced copy (numpy, same element type). Nothing else changes: the kept columns are the same products of the
same numbers. Anything else (another producer, a weight computed from the input, a dynamic class axis) keeps
the model whole and :func:`prune_output` says why in one line. :func:`remapped_entry` gives the model entry
whose ``label_map`` plan gathers from the new positions (``searchsorted`` into the kept columns).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterable, Sequence

import numpy as np

from ..errors import BackendError

__all__ = ["OutputColumns", "OutputCut", "label_map_columns", "prune_output", "remapped_entry", "describe"]

#: Ops whose output column ``j`` depends only on column ``j`` of each input that has the column axis (numpy
#: broadcasting: an input whose dimension there is 1, or that lacks the axis, is the same for every column).
ELEMENTWISE = frozenset({"Convert", "Add", "Subtract", "Multiply", "Divide", "Maximum", "Minimum", "Power",
                         "SquaredDifference", "Sigmoid", "Relu", "Tanh", "Clamp", "Exp", "Log", "Abs", "Negative",
                         "Sqrt", "Erf", "Gelu", "Swish", "HSwish", "HSigmoid", "SoftPlus", "Elu", "FakeQuantize"})

#: Constant element types sliced with numpy exactly (packed 4-bit weights etc. are left alone).
SLICEABLE = frozenset({"f32", "f16", "f64", "i8", "u8", "i16", "u16", "i32", "u32", "i64", "u64", "boolean"})


@dataclass(frozen=True, eq=False)  # holds an array: compared by identity
class OutputColumns:
    """The columns of a model's graph output that its ``label_map`` step (block step ``step``) reads."""

    model: str
    output: str  # the output's name in the manifest
    index: int  # its graph output index
    width: int  # the model's classes (the output's full width)
    columns: np.ndarray  # sorted distinct column indices, int64

    @property
    def count(self) -> int:
        return int(len(self.columns))


def describe(need: OutputColumns) -> str:
    """``"label: 14795 → 412 columns computed (label_map)"``: the load log's and ``birdinfer bench``'s line."""
    return f"{need.output}: {need.width} → {need.count} columns computed (label_map)"


def label_map_columns(models: Sequence, keep: Iterable[tuple[str, str]] = ()) -> tuple[dict[str, OutputColumns],
                                                                                          dict[str, str]]:
    """Per model (``ModelSpec`` of a loaded folder), the output its first block step ``label_map`` reads and the
    columns it gathers (module docstring); and, per model with a ``label_map`` whose output cannot be cut, why.
    ``keep``: ``(model, output)`` pairs the caller takes raw."""
    kept = {(str(m), str(o)) for m, o in keep}
    wanted: dict[str, OutputColumns] = {}
    reasons: dict[str, str] = {}
    for m in models:
        maps = [i for i, s in enumerate(getattr(m, "block_steps", ())) if s.name == "label_map"]
        if not maps:
            continue
        plan = m.block_steps[maps[0]].params
        if not hasattr(plan, "gather"):
            reasons[m.name] = "its label_map is not bound to its files (load the folder)"
            continue
        name = plan.output or m.outputs[0].name
        out = next((o for o in m.outputs if o.name == name), None)
        if out is None:
            reasons[m.name] = f"no output {name!r}"
            continue
        why = _other_reader(m, maps[0], name, models, kept)
        if why is None and len(np.unique(plan.gather)) >= plan.n_model:
            why = f"its label_map reads all {plan.n_model} columns"
        if why is not None:
            reasons[m.name] = f"{name}: all {plan.n_model} columns computed: {why}"
            continue
        wanted[m.name] = OutputColumns(m.name, name, out.index, int(plan.n_model),
                                       np.unique(np.asarray(plan.gather, np.int64)))
    return wanted, reasons


def _other_reader(m, at: int, name: str, models: Sequence, kept: set) -> str | None:
    """What else reads output ``name`` of model ``m`` before or besides its label map (None: nothing)."""
    if at > 0:
        return f"step {m.block_steps[0].name!r} runs before label_map"
    if (m.name, name) in kept:
        return f"{m.name}.{name} is kept for the caller"
    for other in models:
        for src in getattr(other, "inputs", ()):
            if src.model == m.name and src.rows is None and src.output == name:
                return f"model {other.name!r} reads {m.name}.{name}"
    return None


def remapped_entry(entry, need: OutputColumns):
    """``entry`` with its ``label_map`` plan gathering from the pruned output's positions (``K`` model classes)."""
    steps = list(entry.block_steps)
    i = next(i for i, s in enumerate(steps) if s.name == "label_map")
    plan = steps[i].params
    gather = np.searchsorted(need.columns, plan.gather).astype(np.int64)
    steps[i] = replace(steps[i], params=replace(plan, n_model=need.count, gather=gather))
    return replace(entry, block_steps=tuple(steps))


class OutputCut:
    """``cut(model)``: :func:`prune_output` of ``need`` on a read ``openvino.Model``; ``reason`` afterwards: None when
    the output was cut (the loader may read the graph again: each read is cut again)."""

    def __init__(self, need: OutputColumns):
        self.need = need
        self.reason: str | None = "the graph was not read"

    def __call__(self, model) -> None:
        self.reason = prune_output(model, self.need)


# ------------------------------------------------------------------------------------ the graph rewrite
class _Refused(Exception):
    """Why a graph output cannot be cut (one line for the load log)."""


def prune_output(model, need: OutputColumns) -> str | None:
    """Cut graph output ``need.index`` of ``model`` (an ``openvino.Model``, changed in place) to ``need.columns``
    (module docstring). Returns None when done, else why not (the model is left unchanged)."""
    try:
        result = model.get_results()[need.index] if need.index < len(model.get_results()) else None
        if result is None:
            raise _Refused(f"the graph has no output {need.index}")
        source = result.input(0).get_source_output()
        shape = source.get_partial_shape()
        if shape.rank.is_dynamic or shape.rank.get_length() < 2 or not shape[1].is_static \
                or shape[1].get_length() != need.width:
            raise _Refused(f"its graph shape {shape} has no static class axis of {need.width}")
        cuts, matmuls = [], []
        _walk(source, 1, need.width, cuts, matmuls, consumers=1)
        if not matmuls:
            raise _Refused(f"it is produced by {source.get_node().get_type_name()}, not a MatMul with constant weights")
    except _Refused as e:
        return str(e)
    try:
        _apply(model, cuts, need.columns)
        got = result.input(0).get_source_output().get_partial_shape()
        ok = got[1].is_static and got[1].get_length() == need.count  # so once every column-holding constant is cut
    except Exception as e:  # noqa: BLE001 - OpenVINO's shape inference raises its own RuntimeError subclasses
        got, ok = f"not valid ({e})", False
    if not ok:
        raise BackendError(f"model {need.model!r}: cutting output {need.output!r} to the {need.count} columns its "
                           f"label_map reads gave a graph output {got}; load it with prune_outputs=False and report this")
    return None


def _walk(port, axis: int, width: int, cuts: list, matmuls: list, consumers: int) -> None:
    """Collect ``(input, constant, axis)`` to slice so that ``port``'s ``axis`` (of ``width``) keeps the columns;
    ``_Refused`` when some node on the way mixes columns, reads the input, or feeds another node too."""
    node = port.get_node()
    kind = node.get_type_name()
    if kind == "Constant":
        raise _Refused("a constant output")  # reached only as an output itself; inputs are handled by _inputs
    if len(port.get_target_inputs()) != consumers:
        raise _Refused(f"{kind} {node.get_friendly_name()!r} also feeds another part of the graph")
    if kind in ELEMENTWISE:
        _inputs(node, range(node.get_input_size()), port.get_partial_shape().rank.get_length(), axis, width, cuts,
                matmuls)
    elif kind == "Transpose":
        order = node.input(1).get_source_output().get_node()
        if order.get_type_name() != "Constant":
            raise _Refused(f"Transpose {node.get_friendly_name()!r} has no constant order")
        _inputs(node, [0], None, int(order.get_data()[axis]), width, cuts, matmuls)
    elif kind == "MatMul":
        rank = port.get_partial_shape().rank.get_length()
        b = node.input(1).get_source_output()
        b_rank = b.get_partial_shape().rank.get_length()
        if axis != rank - 1 or b_rank < 2:
            raise _Refused(f"MatMul {node.get_friendly_name()!r} takes the classes from its input, not its weights")
        transposed = bool(node.get_attributes().get("transpose_b", False))
        _inputs(node, [1], None, b_rank - 2 if transposed else b_rank - 1, width, cuts, matmuls)
        matmuls.append(node)
    else:
        raise _Refused(f"{kind} {node.get_friendly_name()!r} is not column-wise (only MatMul with constant weights, "
                       "bias, scale, Convert and activations are cut)")


def _inputs(node, indices, rank: int | None, axis: int, width: int, cuts: list, matmuls: list) -> None:
    """Inputs ``indices`` of ``node`` whose column axis (``axis`` of the output of ``rank``, numpy-aligned; ``rank``
    None: ``axis`` is already the input's) has ``width``: constants are sliced, other producers walked."""
    for i in indices:
        src = node.input(i).get_source_output()
        shape = src.get_partial_shape()
        if shape.rank.is_dynamic:
            raise _Refused(f"{node.get_type_name()} {node.get_friendly_name()!r} has an input of dynamic rank")
        at = axis if rank is None else axis - (rank - shape.rank.get_length())
        if at < 0:
            continue
        dim = shape[at]
        if dim.is_static and dim.get_length() == 1 and width != 1:
            continue  # the same value for every column
        if not dim.is_static or dim.get_length() != width:
            raise _Refused(f"{node.get_type_name()} {node.get_friendly_name()!r}: input {i} is {shape}, not "
                           f"{width} columns on axis {at}")
        producer = src.get_node()
        if producer.get_type_name() == "Constant":
            if str(producer.get_element_type().get_type_name()) not in SLICEABLE:
                raise _Refused(f"constant {producer.get_friendly_name()!r} is {producer.get_element_type()}")
            cuts.append((node.input(i), producer, at))
        elif producer.get_type_name() == "Parameter":
            raise _Refused(f"{node.get_type_name()} {node.get_friendly_name()!r} takes its columns from the graph's "
                           "input, not from constant weights")
        else:
            _walk(src, at, width, cuts, matmuls, consumers=1)


def _apply(model, cuts: list, columns: np.ndarray) -> None:
    """Replace each collected constant input by its slice along its column axis, then re-infer the shapes."""
    from openvino import op

    for target, constant, axis in cuts:
        data = np.take(constant.get_data(), columns, axis=axis)
        sliced = op.Constant(np.ascontiguousarray(data))
        sliced.set_friendly_name(f"{constant.get_friendly_name()}/columns")
        target.replace_source_output(sliced.output(0))
    model.validate_nodes_and_infer_types()
