"""Models with several inputs and sequence-model TTA (``docs/manifest_v2.md``, "Models with several inputs").

A model's ``input`` may be a list, one source per graph input (matched by the graph's input names when every
source has a ``name``, else by position)::

    "input": [
      {"name": "emb", "model": "perch", "output": "embedding", "sequence": true},      // a graph output
      {"name": "scores", "model": "perch", "rows": "clip_rows", "sequence": true},      // rows after a step
      {"name": "site", "file_name": {"pattern": "_(?P<site>S\\d+)_", "field": "site",
                                     "vocabulary": {"S05": 1, "S07": 2}, "fallback": 0}}]

``rows``: the producer's rows in the folder's labels after its steps (``true``: all of them; a step name: up to
and including the first step of that name), one row per window. ``context`` works on either (``per_class``:
``[windows, classes, 1 + k]`` instead of the concatenated ``[windows, classes · (1 + k)]``). ``file_name``: an
int64 id per file (``[windows]`` for a batch model, ``[1]`` for a sequence model). ``input_shape`` is then a
list of shapes, one per source. :func:`parse_inputs` reads the list, :func:`resolve_inputs` checks it against
the other models when the folder is loaded; :func:`parse_sequence_tta` reads a sequence model's ``tta``.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any, Mapping, Sequence

from ..errors import ModelFolderError
from .v2 import FileNameIds, ModelSource, ModelSpec, SequenceTTA

__all__ = ["CONTEXT", "parse_source", "output_width", "parse_inputs", "parse_sequence_tta", "resolve_inputs", "source_shape",
           "producer_names", "check_tta", "model_inputs"]

_KEYS = {"name", "model", "output", "rows", "context", "sequence", "per_class", "file_name"}
_ID_KEYS = {"pattern", "field", "vocabulary", "fallback", "modulo"}
_ID_MAX = 2**31 - 1
_MAX_SHIFT = 10_000


def _err(where: str, message: str) -> ModelFolderError:
    return ModelFolderError(f"{where}: {message}")


def _int(value: Any, low: int, high: int, where: str, at: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _err(where, f"{at} must be a whole number in [{low}, {high}], got {value!r}")
    return int(value)


#: Per-file context columns over the file's windows (each as wide as the producer's output): the mean, the
#: standard deviation (population, ``ddof=0``), the maximum and minimum, and the previous / next window's vector
#: (the edge window's own at the file's edges).
CONTEXT = ("mean", "std", "max", "min", "prev", "next")
_SOURCE_KEYS = ("model", "output", "context", "sequence")


def parse_source(value: Any, *, where: str, at: str) -> ModelSource:
    """The ``input`` object of a model (``at``: e.g. ``models['probe'].input``) → :class:`ModelSource` (its width
    is set by :func:`resolve`)."""
    if not isinstance(value, Mapping) or set(value) - set(_SOURCE_KEYS) or not {"model", "output"} <= set(value):
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


def output_width(src: ModelSource, producer: ModelSpec, where: str, at: str) -> int:
    """The declared width of the producer's graph output ``src.output`` (a vector per window)."""
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
    return int(o.shape[1])


def parse_ids(value: Any, *, where: str, at: str) -> FileNameIds:
    """``{"pattern", "field", "vocabulary", "fallback", "modulo"}`` → :class:`FileNameIds` (pattern syntax, its
    named group, the vocabulary's ids checked)."""
    if not isinstance(value, Mapping) or set(value) - _ID_KEYS or not {"pattern", "field", "fallback"} <= set(value):
        raise _err(where, f"{at} must be {{\"pattern\": regex, \"field\": group, \"vocabulary\": {{value: id}} (or "
                          f"absent: the field read as a whole number), \"fallback\": id, \"modulo\": n}}, got {value!r}")
    pattern, name = value["pattern"], value["field"]
    if not isinstance(pattern, str):
        raise _err(where, f"{at}.pattern must be a regular expression, got {pattern!r}")
    try:
        compiled = re.compile(pattern)
    except re.error as e:
        raise _err(where, f"{at}.pattern {pattern!r} is not a regular expression: {e}") from None
    if name not in compiled.groupindex:
        groups = ", ".join(compiled.groupindex) or "none; name one like (?P<site>S\\d+)"
        raise _err(where, f"{at}.field {name!r} is not a named group of the pattern {pattern!r} (groups: {groups})")
    vocabulary = value.get("vocabulary")
    if vocabulary is not None:
        if not isinstance(vocabulary, Mapping) or not vocabulary:
            raise _err(where, f"{at}.vocabulary must be a non-empty object {{value: id}}, got {vocabulary!r}")
        vocabulary = {str(k): _int(v, 0, _ID_MAX, where, f"{at}.vocabulary[{k!r}]") for k, v in vocabulary.items()}
    modulo = value.get("modulo")
    modulo = None if modulo is None else _int(modulo, 1, _ID_MAX, where, f"{at}.modulo")
    fallback = _int(value["fallback"], 0, _ID_MAX, where, f"{at}.fallback")
    return FileNameIds(pattern, name, vocabulary, fallback, modulo)


def _parse_one(value: Any, *, where: str, at: str) -> ModelSource:
    if not isinstance(value, Mapping) or set(value) - _KEYS:
        raise _err(where, f"{at} must be an object with keys among {', '.join(sorted(_KEYS))}, got {value!r}")
    name = value.get("name")
    if name is not None and not isinstance(name, str):
        raise _err(where, f"{at}.name must be the graph input's name, got {name!r}")
    sequence = value.get("sequence", False)
    if not isinstance(sequence, bool):
        raise _err(where, f"{at}.sequence must be true or false, got {sequence!r}")
    if "file_name" in value:
        if set(value) - {"name", "file_name", "sequence"}:
            raise _err(where, f"{at}: a file_name input takes only 'name' and 'sequence' besides 'file_name'")
        return ModelSource("", "", sequence=sequence, name=name, ids=parse_ids(value["file_name"], where=where,
                                                                               at=f"{at}.file_name"))
    rows = value.get("rows")
    per_class = value.get("per_class", False)
    if not isinstance(per_class, bool):
        raise _err(where, f"{at}.per_class must be true or false, got {per_class!r}")
    if rows is not None:
        if "output" in value or not (rows is True or (isinstance(rows, str) and rows)):
            raise _err(where, f"{at}.rows must be true (after all the model's steps) or a step name, without "
                              f"'output', got {rows!r}")
        core = {k: value[k] for k in ("model", "context", "sequence") if k in value}
        src = parse_source({**core, "output": ""}, where=where, at=at)
        return replace(src, name=name, rows="" if rows is True else rows, per_class=per_class)
    core = {k: value[k] for k in ("model", "output", "context", "sequence") if k in value}
    return replace(parse_source(core, where=where, at=at), name=name, per_class=per_class)


def parse_inputs(value: list, shapes: Any, *, where: str, at: str) -> tuple[ModelSource, ...]:
    """A list ``input`` and its list of ``input_shape`` → sources with their declared shapes."""
    if not value:
        raise _err(where, f"{at}.input: an empty list; list one source per graph input")
    sources = [_parse_one(v, where=where, at=f"{at}.input[{i}]") for i, v in enumerate(value)]
    if not any(s.model for s in sources):
        raise _err(where, f"{at}.input: no source reads a model; a model needs at least one model input")
    named = [s.name is not None for s in sources]
    if any(named) and not all(named):
        raise _err(where, f"{at}.input: name every source's graph input or none (then they are matched by position)")
    names = [s.name for s in sources if s.name is not None]
    if len(set(names)) != len(names):
        raise _err(where, f"{at}.input: graph input names must be distinct, got {names}")
    if len({s.sequence for s in sources if s.model}) > 1:
        raise _err(where, f"{at}.input: either every model source is a file sequence (\"sequence\": true) or none")
    sequence = next(s.sequence for s in sources if s.model)
    sources = [replace(s, sequence=sequence) for s in sources]
    if not isinstance(shapes, list) or len(shapes) != len(sources) or not all(isinstance(x, list) for x in shapes):
        raise _err(where, f"{at}.input_shape: a model with {len(sources)} inputs takes a list of {len(sources)} "
                          f"shapes, one per input, got {shapes!r}")
    out = []
    for i, (s, shape) in enumerate(zip(sources, shapes)):
        dims = tuple(_int(d, -1, 10**7, where, f"{at}.input_shape[{i}][{j}]") for j, d in enumerate(shape))
        out.append(replace(s, shape=dims))
    return tuple(out)


def parse_sequence_tta(value: Any, *, where: str, at: str) -> SequenceTTA:
    """``{"shifts": [0, 1, -1, 2, -2], "flip": true}`` → :class:`SequenceTTA`."""
    if not isinstance(value, Mapping) or set(value) - {"shifts", "flip"}:
        raise _err(where, f"{at} must be {{\"shifts\": [0, 1, -1], \"flip\": true}}, got {value!r}")
    shifts = value.get("shifts", [0])
    if not isinstance(shifts, list) or not shifts:
        raise _err(where, f"{at}.shifts must be a non-empty list of window shifts, got {shifts!r}")
    shifts = tuple(_int(s, -_MAX_SHIFT, _MAX_SHIFT, where, f"{at}.shifts[{i}]") for i, s in enumerate(shifts))
    if len(set(shifts)) != len(shifts):
        raise _err(where, f"{at}.shifts must be distinct, got {list(shifts)}")
    flip = value.get("flip", False)
    if not isinstance(flip, bool):
        raise _err(where, f"{at}.flip must be true or false, got {flip!r}")
    return SequenceTTA(shifts, flip)


def source_shape(s: ModelSource) -> tuple[int, ...]:
    """The graph input's shape for a resolved source (``-1``: the windows)."""
    lead = (1, -1) if s.sequence else (-1,)
    if s.ids is not None:
        return (1,) if s.sequence else (-1,)
    if s.per_class:
        return lead + (s.width, 1 + len(s.context))
    return lead + (s.input_width,)


def _rows_width(s: ModelSource, producer: ModelSpec, n_labels: int, where: str, at: str) -> int:
    steps = [st.name for st in producer.block_steps + producer.row_steps]
    if s.rows and s.rows not in steps:
        raise _err(where, f"{at}.rows: model {s.model!r} has no step {s.rows!r} (its steps: {', '.join(steps)})")
    if s.rows and s.rows in [st.name for st in producer.block_steps[:-1]]:
        raise _err(where, f"{at}.rows: step {s.rows!r} of model {s.model!r} comes before its rows exist (its row "
                          f"step is {producer.block_steps[-1].name!r}); name that step or a later one")
    return n_labels


def resolve_inputs(m: ModelSpec, by_name: Mapping[str, ModelSpec], n_labels: int, *, where: str) -> ModelSpec:
    """Check a list-input model's sources against the other models, set their widths and shapes."""
    out = []
    for i, s in enumerate(m.sources):
        at = f"models[{m.name!r}].input[{i}]"
        if s.model:
            producer = by_name.get(s.model)
            if producer is None:
                raise _err(where, f"{at}: no model named {s.model!r} (models: {', '.join(by_name)})")
            width = (_rows_width(s, producer, n_labels, where, at) if s.rows is not None
                     else output_width(s, producer, where, at))
            s = replace(s, width=width)
        derived, declared = source_shape(s), s.shape
        if len(declared) != len(derived) or any(d > 0 and e > 0 and d != e for d, e in zip(declared, derived)):
            what = "file-name id" if s.ids is not None else f"{s.model}.{s.output or 'rows'}"
            raise _err(where, f"models[{m.name!r}].input_shape[{i}] {list(declared)}: input {i} ({what}"
                              f"{', context ' + str(list(s.context)) if s.context else ''}"
                              f"{', per class' if s.per_class else ''}) is {list(derived)}")
        out.append(replace(s, shape=derived))
    first = next(s for s in out if s.model)
    resolved = replace(m, sources=tuple(out), source=first, input_shape=out[0].shape)
    check_tta(resolved, where=where)
    return resolved


def check_tta(m: ModelSpec, *, where: str) -> None:
    """``tta`` only on a sequence model (its first model source says so: every model source is a sequence or none)."""
    if m.sequence_tta is not None and (m.source is None or not m.source.sequence):
        raise _err(where, f"models[{m.name!r}].tta: test-time augmentation shifts a file sequence; the model's "
                          f"input is not \"sequence\": true")


def model_inputs(m) -> tuple[ModelSource, ...]:
    """What model ``m`` reads from other models and the file name (a version 1 entry: nothing)."""
    inputs = getattr(m, "inputs", None)
    if inputs is not None:
        return inputs
    source = getattr(m, "source", None)
    return (source,) if source is not None else ()


def producer_names(m: ModelSpec) -> Sequence[str]:
    """The models ``m`` reads (in input order, once each)."""
    return list(dict.fromkeys(s.model for s in model_inputs(m) if s.model))
