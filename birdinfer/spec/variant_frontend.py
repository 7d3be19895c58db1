"""A model variant's front-end record (``"frontend": {op: {parameter: value}}`` of a variant, e.g. BirdNET's INT8
variant validated with ``{"birdnet_stft": {"fft": "float32"}}``): checked against the feature the model reads
when the folder loads (:func:`check_variant_frontends`), and applied to that feature's steps
(:func:`with_frontend`) when the plan runs the variant (:mod:`birdinfer.runtime.frontend_plan`).

A record may only change parameters: each op it names must be one of the feature's steps, each parameter a
field of the op's parameters (not a file the folder holds), each value valid for it (the parameters are
rebuilt, so their own checks run), and the feature must keep its shape. The f32 variant is the exact
reference and may not carry one.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

from ..errors import ModelFolderError
from ..ops import OPS, Static
from ..ops.registry import shown

__all__ = ["check_variant_frontends", "with_frontend", "spec_with_frontends", "describe_frontend"]


def with_frontend(steps: Sequence, record: Mapping[str, Mapping[str, Any]]) -> tuple:
    """``steps`` (a feature's :class:`birdinfer.spec.v2.Step` list) with every step of an op named in ``record``
    rebuilt with its parameters; :class:`ValueError` / :class:`TypeError` saying which parameter is bad."""
    out = []
    for step in steps:
        changes = record.get(step.name)
        if changes:
            fields = {f.name: f for f in dataclasses.fields(step.params)}
            values = {}
            for param, value in changes.items():
                if param not in fields:
                    raise ValueError(f"op {step.name!r} has no parameter {param!r} (parameters: {', '.join(fields)})")
                if fields[param].metadata.get("file"):
                    raise ValueError(f"parameter {param!r} names a file of the folder; a variant cannot change it")
                try:
                    values[param] = OPS.check_param(step.name, param, value)
                except (TypeError, ValueError) as e:
                    raise ValueError(f"{param}={shown(value)}: {e}") from None
            step = dataclasses.replace(step, params=dataclasses.replace(step.params, **values))  # __post_init__ checks
        out.append(step)
    return tuple(out)


def spec_with_frontends(spec, records: Mapping[str, Mapping[str, Mapping[str, Any]]]):
    """``spec`` (a version 2 manifest) with each feature named in ``records`` running its record
    (:func:`with_frontend`); ``spec`` itself when ``records`` names none."""
    if not records:
        return spec
    return dataclasses.replace(spec, features={name: with_frontend(steps, records[name]) if name in records else steps
                                               for name, steps in spec.features.items()})


def describe_frontend(record: Mapping[str, Mapping[str, Any]]) -> str:
    """``birdnet_stft fft=float32``: a record in one phrase (plan summaries, logs)."""
    return ", ".join(f"{op} " + " ".join(f"{k}={v}" for k, v in params.items()) for op, params in record.items())


def check_variant_frontends(models: Sequence, features: Mapping[str, Sequence], statics: Mapping[str, Static], *,
                            where: str) -> None:
    """Every variant's ``frontend`` against the feature its model reads (module docstring); a
    :class:`ModelFolderError` naming the manifest ``where``, the model, the variant, the value and what to do."""
    for m in models:
        for variant, stored in m.variants.items():
            record = stored.frontend
            if record is None:
                continue
            at = f"{where}: models[{m.name!r}].variants.{variant}.frontend"
            if variant == "f32":
                raise ModelFolderError(f"{at} {dict(record)!r}: the f32 variant is the exact reference and runs the "
                                       f"feature's own parameters; remove 'frontend' from it")
            if not m.input or m.input not in features:
                raise ModelFolderError(f"{at}: model {m.name!r} reads no front-end feature (it reads other models' "
                                       f"outputs); remove 'frontend'")
            steps = features[m.input]
            names = [s.name for s in steps]
            for op in record:
                if op not in names:
                    raise ModelFolderError(f"{at}: op {op!r} is not a step of feature {m.input!r} the model reads "
                                           f"(its ops: {', '.join(names)}); name one of them or remove it")
            for op, params in record.items():
                try:
                    with_frontend(steps, {op: params})
                except (TypeError, ValueError) as e:
                    raise ModelFolderError(f"{at}.{op}: {e}; fix the value or remove the record (re-import the "
                                           f"folder to measure it again)") from None
            changed = with_frontend(steps, record)
            static = Static(sample_rate=statics[m.input].sample_rate, row_seconds=statics[m.input].row_seconds)
            try:
                for step in changed:
                    static = step.entry.extras["infer"](static, step.params)
            except ValueError as e:
                raise ModelFolderError(f"{at} {dict(record)!r}: {e}; remove the record") from None
            if static != statics[m.input]:
                raise ModelFolderError(f"{at} {dict(record)!r} changes the shape of feature {m.input!r} the model "
                                       f"reads; a record may only change how it is computed: remove it")
