"""Parsing and validating a version 2 manifest (``docs/manifest_v2.md``) into a :class:`birdinfer.spec.v2.ManifestV2`:
op/step names and parameters against the registries (:mod:`birdinfer.ops`), each front end's shape against each
model's input, output class counts against the labels, window padding, file names. Errors name the manifest file
and the field, before any audio is read. Registered as ``READERS[2]`` (``Manifest.load`` dispatches here).
"""

from __future__ import annotations

import dataclasses
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, Mapping

from ..errors import ModelFolderError
from ..ops import COMBINE_STEPS, MODEL_STEPS, OPS, ROW_PRODUCING, ROW_STEPS, Static
from ..ops.registry import VALUE, Range, coerce, shown
from .options import parse_options
from .variant_frontend import check_variant_frontends
from .manifest import FORMAT, MANIFEST_NAME, READERS, VARIANT_PRECISIONS, Manifest, ModelVariant, safe_join
from .step_files import bind_step_files
from .dag import parse_source, resolve
from .dag_inputs import parse_inputs, parse_sequence_tta
from .tta import parse_tta
from .v2 import FORMAT_VERSION_2, GroupSpec, LabelMap, ManifestV2, MemberRef, ModelSpec, OutputSpec, Step

__all__ = ["parse_spec", "OUTPUT_KINDS"]

OUTPUT_KINDS = {"frame_logits": "frame", "frame_probabilities": "frame", "clip_logits": "clip", "probabilities": "clip",
                "embedding": "vector"}  # embedding (W, D): any width, no classes; read by other models (spec.dag)
_TOP_KEYS = {"format", "format_version", "sample_rate", "labels", "rows", "block_seconds", "features", "models",
             "ensemble", "files", "extra", "options", "audio_speed"}
_MODEL_KEYS = {"name", "input", "weight", "input_name", "input_shape", "pad_value", "outputs", "label_map", "steps",
               "variants", "export", "arch", "tta"}
# The ranges of the manifest's own numbers (the ops' and steps' parameters declare theirs: birdinfer.ops.registry).
_SAMPLE_RATE = Annotated[int, Range(1, 10**6)]
_ROW_SECONDS = Annotated[float, Range(0, 3600, low_open=True)]
_BLOCK_SECONDS = Annotated[float, Range(0, 10**6, low_open=True)]
_AUDIO_SPEED = Annotated[float, Range(0, 1000, low_open=True)]  # the file's rate taken as rate · speed
_DIM = Annotated[int, Range(-1, 10**7)]  # a tensor dimension; -1 (or 0): any size
_INDEX = Annotated[int, Range(0, 1000)]
_VALUE = Annotated[float, VALUE]
_WEIGHT = Annotated[float, Range(0, 10**6)]


# ------------------------------------------------------------------------------------------ parsing
def _err(where: str, message: str) -> ModelFolderError:
    return ModelFolderError(f"{where}: {message}")


def _number(value: Any, hint: Any, *, where: str, at: str):
    """``value`` as ``hint`` (a ranged int or float, :func:`birdinfer.ops.registry.coerce`), or an error naming ``at``."""
    try:
        return coerce(value, hint)
    except (TypeError, ValueError) as e:
        raise _err(where, f"{at}={shown(value)}: {e}") from None


def _steps(items: Any, registry, *, where: str, field_name: str) -> list[Step]:
    if not isinstance(items, list):
        raise _err(where, f"{field_name} must be a list of {registry.kind}s")
    out = []
    for i, item in enumerate(items):
        at = f"{field_name}[{i}]"
        entry, params = registry.parse(item, where=f"{where}: {at}")
        out.append(Step(entry, params, at))
    return out


def _bind_files(steps: list[Step], *, where: str, folder, found: list[str]) -> list[Step]:
    """Op parameters that name a file of the model folder (field metadata ``{"file": True}``): checked to stay
    inside the folder, listed in ``found`` (their checksums are verified with the graphs') and, with a folder,
    replaced by their absolute path (the op reads the file)."""
    out = []
    for step in steps:
        changes = {}
        for f in dataclasses.fields(step.params):
            if f.metadata.get("file"):
                name = getattr(step.params, f.name)
                path = safe_join(folder if folder is not None else ".", name, where=f"{where}: {step.where}.{f.name}")
                found.append(name)
                if folder is not None:
                    changes[f.name] = str(path)
        out.append(replace(step, params=replace(step.params, **changes)) if changes else step)
    return out


def _feature(name: str, data: Any, *, where: str, sample_rate: int, row_seconds: float, folder=None,
             files: list[str] | None = None) -> tuple[tuple[Step, ...], Static]:
    if not isinstance(data, Mapping) or set(data) - {"steps"}:
        raise _err(where, f"features.{name} must be an object with one key, 'steps'")
    steps = _steps(data.get("steps"), OPS, where=where, field_name=f"features.{name}.steps")
    steps = _bind_files(steps, where=where, folder=folder, found=files if files is not None else [])
    static = Static(sample_rate=sample_rate, row_seconds=row_seconds)
    for step in steps:
        try:
            static = step.entry.extras["infer"](static, step.params)
        except ValueError as e:
            raise _err(where, f"{step.where} (op {step.name!r}): {e}") from None
    return tuple(steps), static


def _model(data: Any, *, where: str, manifest_labels: tuple[str, ...], statics: Mapping[str, Static], folder) -> ModelSpec:
    if not isinstance(data, Mapping):
        raise _err(where, "each entry of 'models' must be an object")
    name = str(data.get("name", ""))
    at = f"models[{name!r}]"
    unknown = sorted(set(data) - _MODEL_KEYS)
    if unknown:
        raise _err(where, f"{at}: unknown field {unknown[0]!r} (known: {', '.join(sorted(_MODEL_KEYS))})")
    for key in ("name", "input", "input_shape", "outputs", "steps", "variants"):
        if key not in data:
            raise _err(where, f"{at}: missing field {key!r}")
    feature, source, sources = data["input"], None, ()
    # "tta" of a model on another model's outputs: a sequence model's TTA (birdinfer.spec.dag_inputs); of a model
    # on a front-end feature: shifted-window passes, parsed once the features are known (_with_tta)
    tta = data.get("tta")
    window_tta = isinstance(tta, Mapping) and ("mode" in tta or "passes" in tta)
    sequence_tta = (parse_sequence_tta(tta, where=where, at=f"{at}.tta")
                    if tta is not None and not window_tta and isinstance(feature, (list, Mapping)) else None)
    if isinstance(feature, list):  # several inputs (birdinfer.spec.dag_inputs; checked by resolve)
        sources = parse_inputs(feature, data["input_shape"], where=where, at=at)
        feature, source = "", next(s for s in sources if s.model)
        data = {**data, "input_shape": list(sources[0].shape)}
    elif isinstance(feature, Mapping):  # another model's output (birdinfer.spec.dag; checked by resolve)
        feature, source = "", parse_source(feature, where=where, at=f"{at}.input")
    elif not isinstance(feature, str) or feature not in statics:
        raise _err(where, f"{at}.input: no feature named {feature!r} (features: {', '.join(statics)}; or "
                          f"{{\"model\": ..., \"output\": ...}} for another model's output)")
    if not isinstance(data["input_shape"], list) or not data["input_shape"]:
        raise _err(where, f"{at}.input_shape must be a list of dimensions, got {shown(data['input_shape'])}")
    shape = tuple(_number(x, _DIM, where=where, at=f"{at}.input_shape[{i}]") for i, x in enumerate(data["input_shape"]))
    weight = _weight(data.get("weight", 1.0), where, at)
    pad_value = _number(data.get("pad_value", 0.0), _VALUE, where=where, at=f"{at}.pad_value")
    if source is None:
        _check_feature_input(statics[feature], feature, shape, where=where, at=at)
    outputs = []
    for i, o in enumerate(data["outputs"] if isinstance(data["outputs"], list) else []):
        if not isinstance(o, Mapping) or o.get("kind") not in OUTPUT_KINDS or not isinstance(o.get("name"), str):
            raise _err(where, f"{at}.outputs[{i}]: needs 'name' and 'kind' (one of {', '.join(OUTPUT_KINDS)}), got {o!r}")
        o_at = f"{at}.outputs[{i}]"
        if o.get("shape") is not None and not isinstance(o["shape"], list):
            raise _err(where, f"{o_at}.shape must be a list of dimensions, got {shown(o['shape'])}")
        o_shape = (tuple(_number(x, _DIM, where=where, at=f"{o_at}.shape[{j}]") for j, x in enumerate(o["shape"]))
                   if o.get("shape") is not None else None)
        outputs.append(OutputSpec(o["name"], o["kind"], _number(o.get("index", i), _INDEX, where=where, at=f"{o_at}.index"),
                                  o_shape))
    if len({o.name for o in outputs}) != len(outputs):
        raise _err(where, f"{at}.outputs: names must be unique")
    if not outputs:
        raise _err(where, f"{at}.outputs: list at least one graph output")
    label_map = None
    if data.get("label_map") is not None:
        lm = data["label_map"]
        if not isinstance(lm, Mapping) or not isinstance(lm.get("labels"), list) or set(lm) - {"labels", "fill"}:
            raise _err(where, f"{at}.label_map must be {{\"labels\": [...], \"fill\": 0.0}}")
        label_map = LabelMap(tuple(str(x) for x in lm["labels"]),
                             _number(lm.get("fill", 0.0), _VALUE, where=where, at=f"{at}.label_map.fill"))
        if len(set(label_map.labels)) != len(label_map.labels):
            raise _err(where, f"{at}.label_map.labels has duplicates")
        if not set(label_map.labels) & set(manifest_labels):
            raise _err(where, f"{at}.label_map.labels shares no label with 'labels'")
    n_classes = len(label_map.labels) if label_map else len(manifest_labels)
    if isinstance(data["steps"], list) and any(isinstance(s, Mapping) and s.get("step") == "label_map" for s in data["steps"]):
        n_classes = 0  # the label_map step's file gives it (birdinfer.spec.step_files)
    for i, o in enumerate(outputs):
        rank = 3 if OUTPUT_KINDS[o.kind] == "frame" else 2
        classes = n_classes if OUTPUT_KINDS[o.kind] != "vector" else 0  # an embedding has any width
        if o.shape is not None and (len(o.shape) != rank or (classes and o.shape[1] != classes)):
            raise _err(where, f"{at}.outputs[{i}].shape {list(o.shape)}: a {o.kind} output must be "
                              f"{'(W, C, T)' if rank == 3 else '(W, C)'} with C = {n_classes} classes "
                              f"({'the label map' if label_map else 'the labels'})")
    block_steps, row_steps = _model_steps(data["steps"], outputs, where=where, at=at)
    variants = _variants(data["variants"], where=where, at=at, folder=folder)
    return ModelSpec(name=name, input=feature, weight=weight, input_shape=shape, outputs=tuple(outputs),
                     block_steps=tuple(block_steps), row_steps=tuple(row_steps), variants=variants,
                     input_name=data.get("input_name"), label_map=label_map, pad_value=pad_value,
                     export=dict(data.get("export", {})), arch=str(data.get("arch", "")), n_classes=n_classes,
                     source=source, sources=sources, sequence_tta=sequence_tta)


def _with_tta(models: list[ModelSpec], raw: list, features: dict, statics: dict, *, where: str, sample_rate: int,
              row_seconds: float) -> list[ModelSpec]:
    """Models with a ``tta`` field (:mod:`birdinfer.spec.tta`); the features of their shifted passes are added to
    ``features`` / ``statics`` (windows of the same shape as the model's own feature)."""
    out = []
    for model, data in zip(models, raw):
        if data.get("tta") is None or model.sequence_tta is not None:
            out.append(model)
            continue
        tta, derived = parse_tta(data["tta"], where=where, model=model.name, feature=model.input, features=features,
                                 sample_rate=sample_rate, row_seconds=row_seconds)
        for name, steps in derived.items():
            features[name], statics[name] = steps, statics[model.input]
        out.append(replace(model, tta=tta))
    return out


def _check_feature_input(static: Static, feature: str, shape: tuple[int, ...], *, where: str, at: str) -> None:
    expected = static.shape()
    if not static.windowed:
        raise _err(where, f"features.{feature}: a model input needs a windows op")
    if expected is not None and (len(shape) != len(expected) + 1 or any(s > 0 and s != e for s, e in zip(shape[1:], expected))):
        raise _err(where, f"{at}.input_shape {list(shape)} does not fit feature {feature!r}, which gives windows of shape "
                          f"{list(expected)} (needs [-1, {', '.join(map(str, expected))}])")


def _model_steps(items: Any, outputs: list[OutputSpec], *, where: str, at: str) -> tuple[list[Step], list[Step]]:
    if not isinstance(items, list):
        raise _err(where, f"{at}.steps must be a list")
    known = {o.name: OUTPUT_KINDS[o.kind] for o in outputs}
    block, rows, have_rows = [], [], False
    for i, item in enumerate(items):
        field_name = f"{at}.steps[{i}]"
        registry = ROW_STEPS if have_rows else MODEL_STEPS
        if have_rows and isinstance(item, Mapping) and item.get("step") in MODEL_STEPS:
            raise _err(where, f"{field_name}: model step {item.get('step')!r} after the row step "
                              f"({'/'.join(ROW_PRODUCING)}); only row steps may follow it")
        if not have_rows and isinstance(item, Mapping) and item.get("step") in ROW_STEPS:
            raise _err(where, f"{field_name}: row step {item.get('step')!r} before a row step ({'/'.join(ROW_PRODUCING)})")
        (step,) = _steps([item], registry, where=where, field_name=field_name.rsplit("[", 1)[0])
        step = replace(step, where=field_name)
        if have_rows:
            rows.append(step)
            continue
        if getattr(step.params, "output", None) == "":
            step = replace(step, params=replace(step.params, output=outputs[0].name))
        try:
            known = step.entry.extras["names"](known, step.params)
        except ValueError as e:
            raise _err(where, f"{field_name} (step {step.name!r}): {e}") from None
        block.append(step)
        have_rows = step.name in ROW_PRODUCING
    if not have_rows:
        raise _err(where, f"{at}.steps: no row step; add {{\"step\": \"timeline_rows\"}} (frame outputs) or "
                          f"{{\"step\": \"clip_rows\"}} (clip outputs)")
    return block, rows


def _variants(data: Any, *, where: str, at: str, folder) -> dict[str, ModelVariant]:
    if not isinstance(data, Mapping) or not data:
        raise _err(where, f"{at}.variants must name at least one variant (f32)")
    out = {}
    for precision, v in data.items():
        if precision not in VARIANT_PRECISIONS or not isinstance(v, Mapping):
            raise _err(where, f"{at}.variants.{precision}: unknown precision (known: {', '.join(VARIANT_PRECISIONS)})")
        try:
            variant = ModelVariant.from_dict(v, name=precision)
        except ValueError as e:
            raise _err(where, f"{at}.variants.{precision}: {e}") from None
        if not variant.openvino and not variant.onnx:
            raise _err(where, f"{at}.variants.{precision} names no file")
        if variant.openvino and not variant.openvino.endswith(".xml"):
            raise _err(where, f"{at}.variants.{precision}.openvino must end in .xml, got {variant.openvino!r}")
        for name in variant.file_names():
            safe_join(folder if folder is not None else ".", name, where=f"{where}: {at}.variants.{precision}")
        out[precision] = variant
    return out


def _weight(value: Any, where: str, at: str) -> float:
    return _number(value, _WEIGHT, where=where, at=f"{at}.weight")


def _group(data: Any, models: Mapping[str, ModelSpec], *, where: str, at: str, name: str = "ensemble",
           weight: float = 1.0) -> GroupSpec:
    if not isinstance(data, Mapping) or set(data) - {"members", "steps", "name", "weight"}:
        raise _err(where, f"{at} must be an object with 'members' (optional) and 'steps'")
    items = data.get("members")
    if items is None:
        members: list = [MemberRef(m.name, m.weight) for m in models.values()]
    elif not isinstance(items, list) or not items:
        raise _err(where, f"{at}.members must be a non-empty list")
    else:
        members = []
        for i, item in enumerate(items):
            m_at = f"{at}.members[{i}]"
            if not isinstance(item, Mapping):
                raise _err(where, f"{m_at} must be an object")
            if "model" in item:
                if set(item) - {"model", "weight"} or item["model"] not in models:
                    raise _err(where, f"{m_at}: needs 'model' naming a model (known: {', '.join(models)}) and optional 'weight'")
                members.append(MemberRef(item["model"], _weight(item.get("weight", models[item["model"]].weight), where, m_at)))
            else:
                members.append(_group(item, models, where=where, at=m_at, name=str(item.get("name", f"group{i}")),
                                      weight=_weight(item.get("weight", 1.0), where, m_at)))
    raw_steps = data.get("steps", [{"step": "weighted_mean"}])
    if not isinstance(raw_steps, list) or not raw_steps:
        raise _err(where, f"{at}.steps must start with a combine step ({', '.join(COMBINE_STEPS.names())})")
    entry, params = COMBINE_STEPS.parse(raw_steps[0], where=f"{where}: {at}.steps[0]")
    combine = Step(entry, params, f"{at}.steps[0]")
    rest = []
    for i, item in enumerate(raw_steps[1:], 1):
        entry, params = ROW_STEPS.parse(item, where=f"{where}: {at}.steps[{i}]")
        rest.append(Step(entry, params, f"{at}.steps[{i}]"))
    return GroupSpec(name, weight, tuple(members), combine, tuple(rest))


def _rows(rows: Any, sample_rate: Any, where: str) -> tuple[str, float, float | None, float | None]:
    """``rows`` → (partial, seconds, min_seconds or None, span_seconds or None)."""
    if not isinstance(rows, Mapping) or "seconds" not in rows or set(rows) - {"seconds", "partial", "min_seconds", "span_seconds"}:
        raise _err(where, "'rows' must be {\"seconds\": 5.0, \"partial\": \"drop\"} (optional: min_seconds, span_seconds)")
    partial = rows.get("partial", "drop")
    if partial not in ("drop", "pad_left", "pad_right"):
        raise _err(where, f"rows.partial must be 'drop', 'pad_left' or 'pad_right', got {partial!r}")
    row_seconds = _number(rows["seconds"], _ROW_SECONDS, where=where, at="rows.seconds")
    row_min = _number(rows["min_seconds"], _ROW_SECONDS, where=where, at="rows.min_seconds") \
        if rows.get("min_seconds") is not None else None
    row_span = _number(rows["span_seconds"], _ROW_SECONDS, where=where, at="rows.span_seconds") \
        if rows.get("span_seconds") is not None else None
    samples = row_seconds * sample_rate if isinstance(sample_rate, int) and not isinstance(sample_rate, bool) else 0.0
    if not samples or sample_rate <= 0 or row_seconds <= 0 or abs(samples - round(samples)) > 1e-6:
        raise _err(where, f"rows.seconds × sample_rate must be a whole number of samples, got {row_seconds} × {sample_rate}")
    if row_min is not None and (partial == "pad_left" or not 0 < row_min <= max(row_seconds, row_span or 0.0)):
        raise _err(where, f"rows.min_seconds must be in (0, span] and goes with partial 'drop' or 'pad_right', got "
                          f"{row_min} with partial {partial!r}")
    if row_span is not None and row_span <= 0:
        raise _err(where, f"rows.span_seconds must be positive, got {row_span}")
    return partial, row_seconds, row_min, row_span


def parse_spec(data: Mapping[str, Any], *, folder: Path | None = None, require_files: bool = True,
               source: str | None = None, files_dir: Path | None = None) -> ManifestV2:
    """Parse and validate a version 2 manifest (``require_files=False``: a spec for ``birdinfer import``;
    ``source``: the name errors give the spec, default the folder's manifest.json; ``files_dir``: where the files
    steps name are read, default ``folder``; with neither, such steps stay unbound)."""
    where = source or (str(Path(folder) / MANIFEST_NAME) if folder else "manifest")
    if data.get("format") != FORMAT or data.get("format_version") != FORMAT_VERSION_2:
        raise _err(where, f"not a format_version 2 birdinfer manifest (format={data.get('format')!r}, "
                          f"format_version={data.get('format_version')!r})")
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise _err(where, f"unknown field {unknown[0]!r} (known: {', '.join(sorted(_TOP_KEYS))})")
    for key in ("labels", "features", "models", "ensemble"):
        if key not in data:
            raise _err(where, f"missing field {key!r}")
    if not isinstance(data["labels"], list):
        raise _err(where, f"'labels' must be a list of class names, got {shown(data['labels'])}")
    labels = tuple(str(x) for x in data["labels"])
    if not labels or len(set(labels)) != len(labels):
        raise _err(where, "'labels' must be a non-empty list without duplicates")
    sample_rate = _number(data.get("sample_rate", 32000), _SAMPLE_RATE, where=where, at="sample_rate")
    audio_speed = _number(data.get("audio_speed", 1.0), _AUDIO_SPEED, where=where, at="audio_speed")
    rows = data.get("rows", {"seconds": 5.0})
    partial, row_seconds, row_min, row_span = _rows(rows, sample_rate, where)
    block = data.get("block_seconds")
    if row_min is not None and block is not None:
        raise _err(where, "rows.min_seconds counts the rows of the whole file: it needs block_seconds null")
    if block is not None:
        block = _number(block, _BLOCK_SECONDS, where=where, at="block_seconds")
    if block is not None and abs(block / row_seconds - round(block / row_seconds)) > 1e-9:
        raise _err(where, f"block_seconds must be null or a positive multiple of rows.seconds ({row_seconds}), got {block!r}")
    if not isinstance(data["features"], Mapping) or not data["features"]:
        raise _err(where, "'features' must map names to front-end pipelines")
    features, statics, op_files = {}, {}, []
    for name, spec in data["features"].items():
        features[name], statics[name] = _feature(name, spec, where=where, sample_rate=sample_rate, row_seconds=row_seconds,
                                                 folder=folder, files=op_files)
    if not isinstance(data["models"], list) or not data["models"]:
        raise _err(where, "'models' must be a non-empty list")
    models = [_model(m, where=where, manifest_labels=labels, statics=statics, folder=folder) for m in data["models"]]
    models = _with_tta(models, data["models"], features, statics, where=where, sample_rate=sample_rate,
                       row_seconds=row_seconds)
    names = [m.name for m in models]
    if len(set(names)) != len(names) or not all(names):
        raise _err(where, f"model names must be unique and non-empty, got {names}")
    models = resolve(models, where=where, n_labels=len(labels))  # models on other models' outputs: names, widths, no cycle
    check_variant_frontends(models, features, statics, where=where)  # variants' front-end records
    by_name = {m.name: m for m in models}
    ensemble = _group(data["ensemble"], by_name, where=where, at="ensemble")
    used = ensemble.model_names()
    if sorted(used) != sorted(names):
        missing = sorted(set(names) - set(used)) or sorted({n for n in used if used.count(n) > 1})
        raise _err(where, f"ensemble: every model must be a member exactly once (check {missing})")
    files = data.get("files", {})
    if not isinstance(files, Mapping):
        raise _err(where, "'files' must map file names to sha256")
    for name in files:
        safe_join(folder if folder is not None else ".", name, where=f"{where}: files")
    if require_files and folder is not None:
        for f in op_files:
            if f not in files:
                raise _err(where, f"features: file {f!r} named by a front-end op has no sha256 in 'files'")
        for m in models:
            for precision, v in m.variants.items():
                for f in v.file_names():
                    if f not in files:
                        raise _err(where, f"models[{m.name!r}].variants.{precision}: file {f!r} has no sha256 in 'files'")
    models, ensemble = bind_step_files(models, ensemble, labels=labels, where=where, folder=files_dir or folder,
                                       files=files, verify=require_files and folder is not None and files_dir is None)
    parse_options(data, where=where)
    return ManifestV2(labels=labels, groups=(), models=tuple(models), sample_rate=sample_rate, window_seconds=row_seconds,
                      chunk_seconds=2 * row_seconds, smoothing=0.0, files=dict(files), folder=Path(folder) if folder else None,
                      extra=dict(data.get("extra", {})), features=features, feature_shapes=statics, ensemble=ensemble,
                      block_seconds=float(block) if block is not None else None, row_partial=partial, raw=dict(data),
                      op_files=tuple(dict.fromkeys(op_files)), row_min_seconds=row_min, row_span_seconds=row_span,
                      audio_speed=float(audio_speed))


READERS[FORMAT_VERSION_2] = parse_spec  # Manifest.from_dict / Manifest.load read version 2 through this
