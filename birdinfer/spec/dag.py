"""Models on other models' outputs (``docs/manifest_v2.md``, "Models on other models' outputs").

A model's ``input`` is a feature name, or an object naming another model's graph output::

    "input": {"model": "perch", "output": "embedding"}                               // a probe, per window
    "input": {"model": "perch", "output": "embedding", "context": ["mean", "std"]}   // + the file's statistics
    "input": {"model": "perch", "output": "embedding", "sequence": true}             // [1, windows, width]

:func:`parse_source` reads the object; :func:`resolve` checks the models as a graph when the manifest is
loaded, before any audio is read (a producer or output that does not exist, an output without a declared
width, an input width that differs from it, a cycle), and :func:`topological` orders them. The runtime
(:mod:`birdinfer.runtime.dag`) runs such models once per file on the kept outputs of their producers.
A list ``input`` (several graph inputs: outputs, another model's rows after a step, file-name ids) and a
sequence model's ``tta`` are read and checked by :mod:`birdinfer.spec.dag_inputs`; :func:`parse_source` and
:data:`CONTEXT` live there too (re-exported here).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Iterable, Mapping, Sequence

from ..errors import ModelFolderError
from .dag_inputs import CONTEXT, check_tta, output_width, parse_source, producer_names, resolve_inputs
from .v2 import ModelSpec

__all__ = ["CONTEXT", "parse_source", "resolve", "topological", "dependents", "producers", "output_width"]

def _err(where: str, message: str) -> ModelFolderError:
    return ModelFolderError(f"{where}: {message}")


def resolve(models: Sequence[ModelSpec], *, where: str, n_labels: int = 0) -> list[ModelSpec]:
    """Check every model input that names another model, set its width, and refuse cycles (see the module
    docstring). ``n_labels``: the folder's label count (the width of a model's ``rows``). Returns the models in
    their manifest order."""
    topological(models, where=where)  # a cycle first: it is named whatever else is wrong
    by_name = {m.name: m for m in models}
    out = []
    for m in models:
        if m.sources:
            out.append(resolve_inputs(m, by_name, n_labels, where=where))
            continue
        check_tta(m, where=where)
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
    src = replace(src, width=output_width(src, producer, where, at))
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
        for producer in producer_names(m):
            if producer in by_name:
                visit(producer, path + [name])
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
            if m.name not in found and set(producer_names(m)) & found:
                found.add(m.name)
                grew = True
    return [m.name for m in models if m.name in found and m.name != name]


def producers(models: Iterable[ModelSpec], name: str) -> list[str]:
    """The models whose outputs ``name`` reads, directly or through others (nearest first)."""
    by_name = {m.name: m for m in models}
    out, todo = [], list(producer_names(by_name[name])) if name in by_name else []
    while todo:
        p = todo.pop(0)
        if p in out or p not in by_name:
            continue
        out.append(p)
        todo += producer_names(by_name[p])
    return out
