"""Models on other models' outputs (``docs/manifest_v2.md``, "Models on other models' outputs").

A model's ``input`` is a feature name, or an object naming another model's graph output::

    "input": {"model": "perch", "output": "embedding"}                               // a probe, per window
    "input": {"model": "perch", "output": "embedding", "context": ["mean", "std"]}   // + the file's statistics
    "input": {"model": "perch", "output": "embedding", "sequence": true}             // [1, windows, width]

:func:`parse_source` reads the object; :func:`resolve` checks the models as a graph when the manifest is
loaded, before any audio is read (a producer or output that does not exist, an output without a declared
width, an input width that differs from it, a cycle), and :func:`topological` orders them. The runtime
(:mod:`birdinfer.runtime.dag`) runs such models once per file on the kept outputs of their producers.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Iterable, Mapping, Sequence

from ..errors import ModelFolderError
from .v2 import ModelSource, ModelSpec

__all__ = ["CONTEXT", "parse_source", "resolve", "topological", "dependents", "producers"]

#: Per-file context columns over the file's windows (each as wide as the producer's output): the mean, the
#: standard deviation (population, ``ddof=0``), the maximum and minimum, and the previous / next window's vector
#: (the edge window's own at the file's edges).
CONTEXT = ("mean", "std", "max", "min", "prev", "next")
_KEYS = ("model", "output", "context", "sequence")


def _err(where: str, message: str) -> ModelFolderError:
    return ModelFolderError(f"{where}: {message}")


def parse_source(value: Any, *, where: str, at: str) -> ModelSource:
    """The ``input`` object of a model (``at``: e.g. ``models['probe'].input``) → :class:`ModelSource` (its width
    is set by :func:`resolve`)."""
    if not isinstance(value, Mapping) or set(value) - set(_KEYS) or not {"model", "output"} <= set(value):
        raise _err(where, f"{at} must be a feature name or {{\"model\": ..., \"output\": ..., \"context\": [...], "
                          f"\"sequence\": false}}, got {value!r}")
    if not isinstance(value["model"], str) or not isinstance(value["output"], str):
        raise _err(where, f"{at}: 'model' and 'output' must be names, got {value['model']!r} and {value['output']!r}")
    context = value.get("context", [])
    if not isinstance(context, list) or any(c not in CONTEXT for c in context) or len(set(context)) != len(context):
        raise _err(where, f"{at}.context must be a list of distinct entries among {', '.join(CONTEXT)}, got {context!r}")
    sequence = value.get("sequence", False)
    if not isinstance(sequence, bool):
        raise _err(where, f"{at}.sequence must be true or false, got {sequence!r}")
    return ModelSource(value["model"], value["output"], tuple(context), sequence)


def resolve(models: Sequence[ModelSpec], *, where: str) -> list[ModelSpec]:
    """Check every model input that names another model, set its width, and refuse cycles (see the module
    docstring). Returns the models in their manifest order."""
    topological(models, where=where)  # a cycle first: it is named whatever else is wrong
    by_name = {m.name: m for m in models}
    out = []
    for m in models:
        if m.source is None:
            out.append(m)
            continue
        out.append(_resolved(m, by_name, where))
    return out


def _resolved(m: ModelSpec, by_name: Mapping[str, ModelSpec], where: str) -> ModelSpec:
    src, at = m.source, f"models[{m.name!r}].input"
    producer = by_name.get(src.model)
    if producer is None:
        raise _err(where, f"{at}: no model named {src.model!r} (models: {', '.join(by_name)})")
    outputs = {o.name: o for o in producer.outputs}
    if src.output not in outputs:
        raise _err(where, f"{at}: model {src.model!r} has no output {src.output!r} (its outputs: {', '.join(outputs)})")
    o = outputs[src.output]
    if o.kind.startswith("frame"):
        raise _err(where, f"{at}: output {src.output!r} of model {src.model!r} is a {o.kind} output (windows, classes, "
                          f"frames); a model input reads a vector per window (kind embedding, clip_logits or probabilities)")
    if o.shape is None or len(o.shape) != 2 or o.shape[1] <= 0:
        raise _err(where, f"{at}: output {src.output!r} of model {src.model!r} must declare its width: \"shape\": "
                          f"[-1, width] (got {list(o.shape) if o.shape is not None else None})")
    src = replace(src, width=int(o.shape[1]))
    rank = 3 if src.sequence else 2
    shape = list(m.input_shape)
    form = "[1, -1, width]" if src.sequence else "[-1, width]"
    if len(shape) != rank or (src.sequence and shape[0] not in (1, -1, 0)):
        raise _err(where, f"models[{m.name!r}].input_shape {shape}: a model on {src.model}.{src.output} "
                          f"{'as a file sequence ' if src.sequence else ''}takes {form}")
    if shape[-1] > 0 and shape[-1] != src.input_width:
        parts = f"{src.width} ({src.model}.{src.output})" + "".join(f" + {src.width} ({c})" for c in src.context)
        raise _err(where, f"models[{m.name!r}].input_shape {shape}: its input is {parts} = {src.input_width} wide, "
                          f"not {shape[-1]}")
    shape[-1] = src.input_width
    if src.sequence:
        shape[0] = 1
    return replace(m, source=src, input_shape=tuple(shape))


def topological(models: Sequence[ModelSpec], *, where: str = "manifest") -> list[str]:
    """Model names with every producer before the models that read it (manifest order otherwise); a cycle is
    an error naming it."""
    by_name = {m.name: m for m in models}
    order: list[str] = []
    state: dict[str, int] = {}  # 1: on the path being visited, 2: done

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            cycle = path[path.index(name):] + [name]
            raise _err(where, f"models: the inputs form a cycle: {' -> '.join(cycle)} (each reads the next one's "
                              f"output); a model may only read models that do not read it")
        state[name] = 1
        m = by_name[name]
        source = getattr(m, "source", None)
        if source is not None and source.model in by_name:
            visit(source.model, path + [name])
        state[name] = 2
        order.append(name)

    for m in models:
        visit(m.name, [])
    return order


def dependents(models: Iterable[ModelSpec], name: str) -> list[str]:
    """The models that read ``name``'s outputs, directly or through others (manifest order)."""
    models = list(models)
    found: set[str] = {name}
    grew = True
    while grew:
        grew = False
        for m in models:
            source = getattr(m, "source", None)
            if source is not None and source.model in found and m.name not in found:
                found.add(m.name)
                grew = True
    return [m.name for m in models if m.name in found and m.name != name]


def producers(models: Iterable[ModelSpec], name: str) -> list[str]:
    """The models whose outputs ``name`` reads, directly or through others (nearest first)."""
    by_name = {m.name: m for m in models}
    out, m = [], by_name.get(name)
    while m is not None and getattr(m, "source", None) is not None and m.source.model not in out:
        out.append(m.source.model)
        m = by_name.get(m.source.model)
    return out
