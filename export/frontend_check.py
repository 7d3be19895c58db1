"""An INT8 variant measured with a faster front end: a folder may name, in ``extra.precision_check.int8_frontend``,
front-end parameters its INT8 variant should be validated with (BirdNET: ``{"birdnet_stft": {"fft": "float32"}}``,
the RFFT in float32). :func:`birdinfer_export.variants.measure_int8` then checks the variant per CPU class with
its features computed that way, against the f32 reference on the feature's own (exact) front end, and records
the parameters on the variant (``frontend``, :attr:`birdinfer.spec.files.ModelVariant.frontend`) when that loses
no class the feature's own front end would be valid on; otherwise the variant is recorded as measured with the
feature's own front end, without ``frontend``. The verification says which and why (``frontend_check``).
"""

from __future__ import annotations

from typing import Callable, Mapping

from birdinfer.errors import ParameterError
from birdinfer.spec.variant_frontend import describe_frontend, with_frontend

__all__ = ["folder_frontend", "checks_with_frontend"]


def folder_frontend(folder, manifest) -> dict | None:
    """The folder's candidate front end for its INT8 variants (``extra.precision_check.int8_frontend``), checked
    against its features; ``None`` when it names none. :class:`ParameterError` naming the folder and the field."""
    check = manifest.extra.get("precision_check") or {}
    candidate = check.get("int8_frontend") if isinstance(check, Mapping) else None
    if candidate is None:
        return None
    where = f"{folder}: extra.precision_check.int8_frontend"
    if not isinstance(candidate, Mapping) or not candidate or not all(
            isinstance(p, Mapping) and p for p in candidate.values()):
        raise ParameterError(f"{where} {candidate!r}: give {{op: {{parameter: value}}}}, e.g. "
                             f"{{\"birdnet_stft\": {{\"fft\": \"float32\"}}}}")
    features = getattr(manifest, "features", {}) or {}
    ops = {s.name for steps in features.values() for s in steps}
    missing = sorted(set(candidate) - ops)
    if missing:
        raise ParameterError(f"{where}: op {missing[0]!r} is in no feature of the folder (ops: {', '.join(sorted(ops))})")
    for steps in features.values():
        try:
            with_frontend(steps, candidate)
        except (TypeError, ValueError) as e:
            raise ParameterError(f"{where}: {e}") from None
    return {op: dict(p) for op, p in candidate.items()}


def checks_with_frontend(check: Callable[[dict | None], dict], valid: Callable[[Mapping], list], candidate: dict | None,
                         progress=None, variant: str = "int8") -> tuple[dict, dict]:
    """``({model: {class: figures}}, {model: fields to record})`` for one INT8 variant: ``check(frontend)`` runs the
    per-class checks (``None``: the feature's own front end), ``valid(per_class)`` lists the classes meeting the
    bar. With a ``candidate`` front end it is measured first; the feature's own front end is measured too only
    when the candidate fails the bar on a measured class. Fields: ``frontend`` (the candidate, or None) and the
    ``frontend_check`` part of the verification."""
    if candidate is None:
        return check(None), {}
    fast = check(candidate)
    text = describe_frontend(candidate)
    if all(set(valid(per_class)) >= set(per_class) for per_class in fast.values()):
        return fast, {m: {"frontend": candidate, "frontend_check": {
            "candidate": candidate, "recorded": True,
            "why": f"valid with {text} on every measured class"}} for m in fast}
    own = check(None)
    out, fields = {}, {}
    for model, per_class in own.items():
        with_candidate, without = valid(fast.get(model, {})), valid(per_class)
        if with_candidate and set(with_candidate) >= set(without):
            out[model] = fast[model]
            fields[model] = {"frontend": candidate, "frontend_check": {
                "candidate": candidate, "recorded": True, "valid_without": without,
                "why": f"valid with {text} on {', '.join(with_candidate)}, every class the feature's own front end "
                       f"is valid on"}}
        else:
            out[model] = per_class
            fields[model] = {"frontend": None, "frontend_check": {
                "candidate": candidate, "recorded": False, "valid_with_candidate": with_candidate,
                "per_class_with_candidate": fast.get(model, {}),
                "why": f"with {text} valid on {', '.join(with_candidate) or 'no class'}, with the feature's own "
                       f"front end on {', '.join(without) or 'no class'}: measured and recorded without a front end"}}
        if progress:
            progress(f"{model} ({variant}): {fields[model]['frontend_check']['why']}")
    return out, fields
