"""Run-time options a version 2 model folder declares (``"options"`` in its manifest), e.g. BirdNET's
``overlap`` and ``sensitivity``.

An option is data: a default, a range, and the manifest fields it sets, each as ``value · scale + offset``::

    "options": {"overlap": {"default": 0.0, "min": 0.0, "max": 2.9, "help": "...",
                            "sets": [{"field": "rows.seconds", "scale": -1.0, "offset": 3.0}, ...]}}

``"below": "other"`` makes the option's value (given or default) stay below another option's (BirdNET's
``fmin`` below ``fmax``).

Field paths are dotted, with ``[i]`` for list items: ``features.birdnet.steps[1].step_seconds``. The manifest
as written holds the defaults; :func:`with_options` writes the given values into a copy and parses it again,
so every load-time check (rows, windows, padding) applies to the result, and a resumed run's fingerprint
(:func:`birdinfer.jobs.journal.run_fingerprint`) changes with the values.
"""

from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass
from typing import Any, Mapping

from ..errors import ModelFolderError, ParameterError

__all__ = ["Option", "OptionTarget", "parse_options", "with_options", "option_values"]

_PART = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)((?:\[\d+\])*)$")


@dataclass(frozen=True)
class OptionTarget:
    field: str
    scale: float = 1.0
    offset: float = 0.0


@dataclass(frozen=True)
class Option:
    name: str
    default: float
    minimum: float
    maximum: float
    targets: tuple[OptionTarget, ...]
    help: str = ""
    below: str | None = None  # another option whose value this one's must stay below


def _walk(data: Any, path: str) -> tuple[Any, Any]:
    """The container holding ``path``'s last key and that key (raises KeyError/IndexError/TypeError/ValueError)."""
    keys: list = []
    for part in path.split("."):
        match = _PART.match(part)
        if match is None:
            raise ValueError(f"bad field path part {part!r}")
        keys.append(match.group(1))
        keys += [int(i) for i in re.findall(r"\[(\d+)\]", match.group(2))]
    node = data
    for key in keys[:-1]:
        node = node[key]
    if not isinstance(node, (dict, list)) or (isinstance(node, dict) and keys[-1] not in node):
        raise KeyError(keys[-1])
    if isinstance(node, list) and not isinstance(keys[-1], int):
        raise TypeError("a list needs an [index]")
    return node, keys[-1]


def _number(value: Any, what: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ModelFolderError(f"{where}: {what} must be a finite number, got {value!r}")
    return float(value)


def parse_options(data: Mapping[str, Any], *, where: str) -> dict[str, Option]:
    """The ``options`` of a manifest dict, checked: numbers, ``min <= default <= max``, each target field
    present in the manifest and numeric."""
    raw = data.get("options") or {}
    if not isinstance(raw, Mapping):
        raise ModelFolderError(f"{where}: 'options' must map option names to {{default, min, max, sets}}")
    out = {}
    for name, spec in raw.items():
        at = f"options.{name}"
        if not isinstance(spec, Mapping) or set(spec) - {"default", "min", "max", "sets", "help", "below"} or "sets" not in spec:
            raise ModelFolderError(f"{where}: {at} must be {{\"default\", \"min\", \"max\", \"sets\": [...], \"help\", \"below\"}}")
        if "below" in spec and spec["below"] not in raw:
            raise ModelFolderError(f"{where}: {at}.below must name another option, got {spec['below']!r}")
        low, high = _number(spec.get("min"), f"{at}.min", where), _number(spec.get("max"), f"{at}.max", where)
        default = _number(spec.get("default"), f"{at}.default", where)
        if not low <= default <= high:
            raise ModelFolderError(f"{where}: {at}: needs min <= default <= max, got {low}, {default}, {high}")
        targets = []
        for i, t in enumerate(spec["sets"] if isinstance(spec["sets"], list) else [None]):
            if not isinstance(t, Mapping) or not isinstance(t.get("field"), str) or set(t) - {"field", "scale", "offset"}:
                raise ModelFolderError(f"{where}: {at}.sets[{i}] must be {{\"field\": \"a.b[0].c\", \"scale\", \"offset\"}}")
            target = OptionTarget(t["field"], _number(t.get("scale", 1.0), f"{at}.sets[{i}].scale", where),
                                  _number(t.get("offset", 0.0), f"{at}.sets[{i}].offset", where))
            try:
                node, key = _walk(data, target.field)
                _number(node[key], f"field {target.field!r}", where)
            except (KeyError, IndexError, TypeError, ValueError) as e:
                raise ModelFolderError(f"{where}: {at}.sets[{i}]: no numeric field {target.field!r} in the manifest ({e})") from None
            targets.append(target)
        out[name] = Option(name, default, low, high, tuple(targets), str(spec.get("help", "")), spec.get("below"))
    return out


def with_options(manifest, values: Mapping[str, float | None] | None):
    """``manifest`` with the given option values written into its fields (``None`` values are ignored).

    Raises :class:`ParameterError` naming the folder when it does not declare an option or a value is out of
    its range."""
    values = {k: v for k, v in (values or {}).items() if v is not None}
    if not values:
        return manifest
    where = str(manifest.folder) if manifest.folder is not None else "the model folder"
    raw = getattr(manifest, "raw", None) or {}
    declared = parse_options(raw, where=where) if raw else {}
    data = copy.deepcopy(manifest.to_dict())
    for name, value in values.items():
        option = declared.get(name)
        if option is None:
            raise ParameterError(f"{where} declares no option {name!r} (its options: {', '.join(declared) or 'none'}); "
                                 f"leave out --{name.replace('_', '-')} for this model folder (or import it again with "
                                 "this version, if a newer birdinfer adds the option)")
        if not option.minimum <= float(value) <= option.maximum:
            raise ParameterError(f"--{name.replace('_', '-')} {value!r} is outside [{option.minimum:g}, "
                                 f"{option.maximum:g}] for {where}")
        for t in option.targets:
            node, key = _walk(data, t.field)
            node[key] = round(float(value) * t.scale + t.offset, 12)
    _check_order(declared, values)
    return type(manifest).from_dict(data, folder=manifest.folder)


def _check_order(declared: Mapping[str, Option], values: Mapping[str, float]) -> None:
    for name, option in declared.items():
        if option.below is None or not ({name, option.below} & set(values)):
            continue
        low, high = float(values.get(name, option.default)), float(values.get(option.below, declared[option.below].default))
        if not low < high:
            raise ParameterError(f"--{name.replace('_', '-')} {low:g} must be below --{option.below.replace('_', '-')} "
                                 f"{high:g}: give a lower --{name.replace('_', '-')} or a higher "
                                 f"--{option.below.replace('_', '-')}")


def option_values(manifest) -> dict[str, float]:
    """The declared options' defaults, by name (empty for a folder without options)."""
    raw = getattr(manifest, "raw", None) or {}
    where = str(manifest.folder) if manifest.folder is not None else "manifest"
    return {name: o.default for name, o in parse_options(raw, where=where).items()} if raw else {}
