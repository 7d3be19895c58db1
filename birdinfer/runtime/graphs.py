"""A model folder's graphs against its manifest, once the backend has read them and before any audio.

The manifest states what each network takes and gives (its front end's windows, its outputs, the labels);
the graph file states what it really takes and gives. :func:`check_graph` compares the two wherever the
graph's dimensions are static (a dynamic dimension accepts anything) and raises :class:`ModelFolderError`
with one sentence naming the folder, the model and its file, and both numbers:

* the graph's input (named ``input_name``, else its first) against the windows of the model's feature:
  rank, then each dimension after the batch (mel bands, frames or samples per window, channels), and the
  batch against ``input_shape[0]`` (a graph that takes exactly ``b`` windows needs ``input_shape[0] = b``);
* a model on another model's output (``entry.source``): its input against the producer's width (with its context
  columns), ``[1, windows, width]`` for a sequence model, whose outputs are ``[1, windows, ...]``;
* each named output: it exists, its rank fits its kind (``(W, C)`` clip, ``(W, C, T)`` frame, ``(W, D)`` embedding of
  any width), its class axis
  holds as many classes as the manifest has labels (those of the model's label map, when it has one), its
  other dimensions match any ``shape`` the manifest gives, and a frame output read by ``timeline_rows`` has a
  whole number of frames per row.

The backends (:mod:`birdinfer.runtime.models`) describe what they read as :class:`GraphPorts`
(:func:`openvino_ports`, :func:`onnxruntime_ports`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelFolderError
from ..spec.files import MANIFEST_NAME
from ..spec.parse import OUTPUT_KINDS

__all__ = ["Port", "GraphPorts", "check_graph", "openvino_ports", "onnxruntime_ports"]

Shape = tuple  # of int | None (None: a dynamic dimension); the whole shape None when even the rank is dynamic


@dataclass(frozen=True)
class Port:
    """One input or output of a graph: its names and its shape as the file states it."""

    names: tuple[str, ...]
    shape: Shape | None


@dataclass(frozen=True)
class GraphPorts:
    inputs: tuple[Port, ...]
    outputs: tuple[Port, ...]


def openvino_ports(model) -> GraphPorts:
    """The inputs and outputs of an ``openvino.Model`` (as read, before any reshape)."""

    def port(p) -> Port:
        shape = p.get_partial_shape()
        dims = None if shape.rank.is_dynamic else tuple(d.get_length() if d.is_static else None for d in shape)
        return Port(tuple(sorted(p.get_names())), dims)

    return GraphPorts(tuple(port(p) for p in model.inputs), tuple(port(p) for p in model.outputs))


def onnxruntime_ports(session) -> GraphPorts:
    """The inputs and outputs of an ``onnxruntime.InferenceSession`` (symbolic dimensions are dynamic)."""

    def port(arg) -> Port:
        shape = arg.shape
        dims = None if shape is None else tuple(d if isinstance(d, int) and d > 0 else None for d in shape)
        return Port((arg.name,), dims)

    return GraphPorts(tuple(port(a) for a in session.get_inputs()), tuple(port(a) for a in session.get_outputs()))


def _dims(shape) -> str:
    return "[" + ", ".join("?" if d is None or d <= 0 else str(d) for d in shape) + "]"


def check_graph(manifest, entry, path: Path, ports: GraphPorts) -> None:
    """Refuse a graph that does not fit the manifest's model ``entry`` (a version 2 model; see the module
    docstring). ``path``: the graph's file (for the message)."""
    if not hasattr(entry, "outputs"):  # a version 1 entry as written: the engine runs the upgraded one
        return
    path = Path(path)
    where = f"{path.parent}: model {entry.name!r} ({path.name})"
    fix = f"the manifest ({MANIFEST_NAME}) does not describe this graph: fix the manifest or re-export the model"
    _check_input(manifest, entry, ports, where, fix)
    for o in entry.outputs:
        _check_output(manifest, entry, o, ports, where, fix)


def _check_input(manifest, entry, ports: GraphPorts, where: str, fix: str) -> None:
    if not ports.inputs:
        raise ModelFolderError(f"{where}: the graph has no input; {fix}")
    if getattr(entry, "sources", ()):
        _check_sources(entry, ports, where, fix)
        return
    wanted = getattr(entry, "input_name", None)
    if wanted:
        found = [p for p in ports.inputs if wanted in p.names]
        if not found:
            known = ", ".join("/".join(p.names) or "?" for p in ports.inputs)
            raise ModelFolderError(f"{where}: the graph has no input named {wanted!r} (its inputs: {known}); {fix}")
        port = found[0]
    else:
        port = ports.inputs[0]
    if port.shape is None:
        return
    static = manifest.feature_shapes.get(entry.input)
    window = static.shape() if static is not None else None
    claimed = tuple(entry.input_shape)
    expected = (claimed[0],) + tuple(window) if window is not None else claimed
    source = getattr(entry, "source", None)
    what = f"feature {entry.input!r} gives windows of {_dims(expected[1:])}" if window is not None else \
        f"the manifest's input_shape is {_dims(claimed)}" + (
            f" (model {source.model!r}'s output {source.output!r}, {source.width} wide, with context "
            f"{list(source.context)})" if source is not None else "")
    if len(port.shape) != len(expected):
        raise ModelFolderError(f"{where}: the graph's input {'/'.join(port.names)!r} has rank {len(port.shape)} "
                               f"{_dims(port.shape)}, but {what} (rank {len(expected)} with the batch); {fix}")
    for axis, (have, want) in enumerate(zip(port.shape, expected)):
        if axis == 0 or have is None or want is None or want <= 0 or have == want:
            continue
        raise ModelFolderError(f"{where}: the graph's input {'/'.join(port.names)!r} is {_dims(port.shape)}, but {what}: "
                               f"dimension {axis} is {have} in the graph and {want} from the manifest; {fix}")
    batch = port.shape[0]
    if batch is not None and claimed[0] != batch:
        raise ModelFolderError(f"{where}: the graph takes batches of exactly {batch} windows but the manifest's "
                               f"input_shape[0] is {claimed[0]} ({'any' if claimed[0] <= 0 else 'another count'}); "
                               f"set it to {batch} or re-export the model with a dynamic batch")


def _check_sources(entry, ports: GraphPorts, where: str, fix: str) -> None:
    """A model with several inputs (``spec.dag_inputs``): one graph input per source, by name or position, each of
    the source's rank and static dimensions."""
    if len(ports.inputs) != len(entry.sources):
        raise ModelFolderError(f"{where}: the graph has {len(ports.inputs)} inputs, the manifest lists "
                               f"{len(entry.sources)} sources in 'input'; {fix}")
    for i, s in enumerate(entry.sources):
        found = [p for p in ports.inputs if s.name in p.names] if s.name else [ports.inputs[i]]
        if not found:
            known = ", ".join("/".join(p.names) or "?" for p in ports.inputs)
            raise ModelFolderError(f"{where}: the graph has no input named {s.name!r} (its inputs: {known}); {fix}")
        port, what = found[0], f"input[{i}] ({s.model + '.' + (s.output or 'rows') if s.model else 'file-name id'})"
        if port.shape is None:
            continue
        if len(port.shape) != len(s.shape) or any(h is not None and w > 0 and h != w for h, w in zip(port.shape, s.shape)):
            raise ModelFolderError(f"{where}: the graph's input {'/'.join(port.names)!r} is {_dims(port.shape)}, but "
                                   f"the manifest's {what} is {_dims(s.shape)}; {fix}")


def _check_output(manifest, entry, o, ports: GraphPorts, where: str, fix: str) -> None:
    if o.index >= len(ports.outputs):
        raise ModelFolderError(f"{where}: output {o.name!r} is graph output {o.index}, but the graph has "
                               f"{len(ports.outputs)} output(s); {fix}")
    shape = ports.outputs[o.index].shape
    if shape is None:
        return
    source = getattr(entry, "source", None)
    if source is not None and source.sequence:  # [1, windows, ...]: the file's windows as one sequence
        if len(shape) < 2 or shape[0] not in (None, 1):
            raise ModelFolderError(f"{where}: output {o.name!r} is {_dims(shape)} in the graph; a model on the file's "
                                   f"sequence gives [1, windows, ...]; {fix}")
        shape = shape[1:]
    rank = 3 if OUTPUT_KINDS[o.kind] == "frame" else 2
    if len(shape) != rank:
        raise ModelFolderError(f"{where}: output {o.name!r} is {_dims(shape)} in the graph; a {o.kind} output must be "
                               f"{'(windows, classes, frames)' if rank == 3 else '(windows, classes)'}; {fix}")
    classes = shape[1] if OUTPUT_KINDS[o.kind] != "vector" else None  # an embedding has any width
    if classes is not None and classes != entry.n_classes:
        source = (f"its label map lists {entry.n_classes} labels" if entry.label_map is not None
                  else f"the manifest lists {entry.n_classes} labels")
        raise ModelFolderError(f"{where}: output {o.name!r} gives {classes} classes (graph shape {_dims(shape)}), but "
                               f"{source}; the labels must be the model's classes in output order: fix 'labels' "
                               f"in {MANIFEST_NAME} or use the model folder these graphs were exported with")
    for axis, want in enumerate(o.shape or ()):
        have = shape[axis] if axis < len(shape) else None
        if axis != 0 and want > 0 and have is not None and have != want:
            raise ModelFolderError(f"{where}: output {o.name!r} is {_dims(shape)} in the graph but {_dims(o.shape)} in "
                                   f"the manifest (dimension {axis}: {have} against {want}); {fix}")
    if rank == 3 and shape[2] is not None:
        _check_frames_per_row(manifest, entry, o, shape[2], where, fix)


def _check_frames_per_row(manifest, entry, o, frames: int, where: str, fix: str) -> None:
    """A frame output read by ``timeline_rows`` must hold a whole number of frames per row."""
    static = manifest.feature_shapes.get(entry.input)
    rows = getattr(static, "length_rows", None)
    if not rows or not any(s.name == "timeline_rows" and s.params.output == o.name for s in entry.block_steps):
        return
    per_row = frames / rows
    if abs(per_row - round(per_row)) > 1e-6 or round(per_row) < 1:
        raise ModelFolderError(f"{where}: output {o.name!r} has {frames} frames per window, which spans {rows:g} rows "
                               f"of {manifest.window_seconds:g} s: {per_row:g} frames per row, not a whole number, so "
                               f"timeline_rows cannot place them; {fix}")
