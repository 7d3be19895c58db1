"""A model's shifted-window test-time augmentation (``"tta"``, ``docs/manifest_v2.md``, "Shifted-window TTA").

    "tta": {"mode": "shift", "passes": [{"seconds": 0.0, "weight": 0.5}, {"seconds": 2.5, "weight": 0.5}]}

Each pass runs the model's graph and its model steps up to its rows on windows that start ``seconds`` after
its own; the passes' rows are combined (:func:`birdinfer.ops.tta.combine_passes`) before the model's row steps.
:func:`parse_tta` checks the field when the manifest is loaded and derives one feature per shifted pass from the
model's own: the same ops, with the ``windows`` op's lead moved by the shift (``shift``), or with a ``roll`` op
just before it (``roll``). Identical prefixes are computed once, so a pass costs its windows' ops and the model.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated, Any, Mapping

from ..errors import ModelFolderError
from ..ops import OPS
from ..ops.registry import Range, coerce, shown
from .v2 import Step, TtaPass, TtaSpec

__all__ = ["parse_tta", "MODES", "pass_inputs"]

MODES = ("shift", "roll")
_SECONDS = Annotated[float, Range(-3600, 3600)]
_WEIGHT = Annotated[float, Range(0, 10**6)]


def _err(where: str, message: str) -> ModelFolderError:
    return ModelFolderError(f"{where}: {message}")


def _passes(items: Any, *, where: str, at: str, sample_rate: int) -> list[tuple[float, float]]:
    if not isinstance(items, list) or len(items) < 2:
        raise _err(where, f"{at}.passes must list at least two passes ({{\"seconds\": 0.0, \"weight\": ...}} and a "
                          f"shifted one), got {shown(items)}")
    out = []
    for i, item in enumerate(items):
        p_at = f"{at}.passes[{i}]"
        if not isinstance(item, Mapping) or set(item) != {"seconds", "weight"}:
            raise _err(where, f"{p_at} must be {{\"seconds\": ..., \"weight\": ...}}, got {shown(item)}")
        values = []
        for key, hint in (("seconds", _SECONDS), ("weight", _WEIGHT)):
            try:
                values.append(float(coerce(item[key], hint)))
            except (TypeError, ValueError) as e:
                raise _err(where, f"{p_at}.{key}={shown(item[key])}: {e}") from None
        samples = values[0] * sample_rate
        if abs(samples - round(samples)) > 1e-6:
            raise _err(where, f"{p_at}.seconds={values[0]:g} is not a whole number of samples at {sample_rate} Hz")
        out.append((values[0], values[1]))
    seconds = [s for s, _ in out]
    if seconds.count(0.0) != 1 or len(set(seconds)) != len(seconds):
        raise _err(where, f"{at}.passes: the seconds must differ and one pass must be the unshifted one (seconds 0), "
                          f"got {seconds}")
    if not sum(w for _, w in out) > 0:
        raise _err(where, f"{at}.passes: the weights sum to 0")
    return sorted(out, key=lambda p: p[0] != 0.0)  # the unshifted pass first


def _windows_at(steps: tuple[Step, ...], *, where: str, at: str, feature: str) -> int:
    found = [i for i, s in enumerate(steps) if s.name == "windows"]
    if not found or steps[found[0]].params.length_seconds is None:
        raise _err(where, f"{at}: shifted passes need waveform windows, but feature {feature!r} has "
                          f"{'spectrum windows (length_frames)' if found else 'no windows op'}; cut the windows from the "
                          f"waveform (windows with length_seconds before stft)")
    return found[0]


def parse_tta(data: Any, *, where: str, model: str, feature: str, features: Mapping[str, tuple[Step, ...]],
              sample_rate: int, row_seconds: float) -> tuple[TtaSpec, dict[str, tuple[Step, ...]]]:
    """The ``tta`` field of model ``model`` (whose input is ``feature``) → the spec and the features its shifted
    passes read (``{name: steps}``, named ``<feature>@<mode><seconds>``); errors name the manifest, the model and
    the value."""
    at = f"models[{model!r}].tta"
    if not feature:
        raise _err(where, f"{at}: a model on another model's output has no windows to shift")
    if not isinstance(data, Mapping) or set(data) - {"mode", "passes"} or "passes" not in data:
        raise _err(where, f"{at} must be {{\"mode\": \"shift\" or \"roll\", \"passes\": [...]}}, got {shown(data)}")
    mode = data.get("mode", "shift")
    if mode not in MODES:
        raise _err(where, f"{at}.mode={shown(mode)}: must be one of {', '.join(MODES)}")
    passes = _passes(data["passes"], where=where, at=at, sample_rate=sample_rate)
    steps = features[feature]
    i = _windows_at(steps, where=where, at=at, feature=feature)
    windows = steps[i].params
    lead = (windows.length_seconds - windows.step_seconds) / 2 if windows.lead_seconds == "centre" else windows.lead_seconds
    if mode == "roll":
        if abs(windows.length_seconds - windows.step_seconds) > 1e-9 or abs(lead) > 1e-9 or windows.step_seconds != row_seconds:
            raise _err(where, f"{at}: mode 'roll' needs windows that tile the rows (length_seconds = step_seconds = "
                              f"rows.seconds, lead 0); feature {feature!r} has length {windows.length_seconds:g} s, step "
                              f"{windows.step_seconds:g} s, lead {lead:g} s (use mode 'shift')")
        if any(s.name == "pad" for s in steps[:i]):
            raise _err(where, f"{at}: mode 'roll' rolls the samples of the rows, but feature {feature!r} pads them first")
    derived: dict[str, tuple[Step, ...]] = {}
    out = [TtaPass(0.0, passes[0][1], feature)]
    for seconds, weight in passes[1:]:
        name = f"{feature}@{mode}{seconds:+g}"
        if name in features:
            raise _err(where, f"{at}: the feature name {name!r} is taken (it names this pass's windows)")
        if mode == "shift":
            new = replace(steps[i], params=replace(windows, lead_seconds=lead - seconds), where=f"{at}.passes")
            derived[name] = steps[:i] + (new,) + steps[i + 1:]
        else:  # the samples move earlier by `seconds`, so that window k starts `seconds` later in the file
            entry, params = OPS.parse({"op": "roll", "seconds": -seconds}, where=f"{where}: {at}")
            derived[name] = steps[:i] + (Step(entry, params, f"{at}.passes"),) + steps[i:]
        out.append(TtaPass(seconds, weight, name))
    return TtaSpec(mode, tuple(out)), derived


def pass_inputs(models, active=None) -> tuple[str, ...]:
    """The features the active feature models read, their shifted passes' included (in model order)."""
    names = []
    for m in models:
        if (active is not None and m.name not in active) or getattr(m, "source", None) is not None:
            continue
        names.append(m.input)
        names += [p.feature for p in (m.tta.passes[1:] if getattr(m, "tta", None) else ())]
    return tuple(dict.fromkeys(names))
