"""Registries of named operations with typed parameters (front-end ops, model steps, ensemble steps).

An operation is a small pure function registered under a name together with a frozen parameter
dataclass (as timm registers its models). A manifest entry ``{"op": "db", "top_db": 80}`` is parsed by
:meth:`Registry.parse`: unknown names, unknown or missing parameters and values of the wrong type or out
of range raise :class:`birdinfer.errors.ModelFolderError` naming the manifest path and field.

Every number a parameter holds (alone, or inside a list or object) is declared with its allowed range, here
and nowhere else: ``n_fft: Annotated[int, Range(2, 65536)]``. :func:`coerce` refuses NaN, infinities and values
outside the range with a sentence giving the range (``tests/test_faults_folder.py`` checks that every numeric
parameter of every registered op and step declares one). What relates two parameters (``win_length <= n_fft``,
``fmin < fmax``) is checked by the dataclass's ``__post_init__`` (raising ``ValueError``), what relates a
parameter to the signal (``fmax`` against the Nyquist frequency) by the op's shape rule.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Callable, Literal, Mapping

from ..errors import ModelFolderError

__all__ = ["Registry", "Entry", "Range", "coerce", "build_params", "shown", "VALUE"]


@dataclass(frozen=True)
class Range:
    """The allowed values of a numeric parameter: ``low <= x <= high`` (``low_open``: ``low < x``)."""

    low: float
    high: float
    low_open: bool = False

    def __contains__(self, x: float) -> bool:
        return (self.low < x if self.low_open else self.low <= x) and x <= self.high

    def __str__(self) -> str:
        return f"{'(' if self.low_open else '['}{_number(self.low)}, {_number(self.high)}]"


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) <= 1e7 else f"{x:g}"


#: A value written into the data (a fill, an offset, a clip bound): any finite number of sane magnitude.
VALUE = Range(-1e9, 1e9)


@dataclass(frozen=True)
class Entry:
    """A registered operation: its name, parameter class, function and optional extras (e.g. shape rules)."""

    name: str
    params: type
    fn: Callable
    extras: Mapping[str, Callable] = dataclasses.field(default_factory=dict)


class Registry:
    """Name → :class:`Entry`. ``key`` is the field that names the operation in a manifest entry."""

    def __init__(self, kind: str, key: str):
        self.kind = kind
        self.key = key
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, params: type, **extras: Callable):
        """Decorator: ``@OPS.register("db", DbParams, infer=_infer_db)`` over ``def db(x, p, ctx)``."""

        def wrap(fn: Callable) -> Callable:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = Entry(name, params, fn, dict(extras))
            return fn

        return wrap

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def __getitem__(self, name: str) -> Entry:
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def check_param(self, name: str, param: str, value: Any) -> Any:
        """``value`` as parameter ``param`` of the registered ``name`` takes it (type and range; a
        :class:`ValueError` or :class:`TypeError` says what is allowed): for formats that state an op's
        parameters under other names (version 1 mel groups)."""
        return coerce(value, typing.get_type_hints(self[name].params, include_extras=True)[param])

    def parse(self, data: Any, *, where: str) -> tuple[Entry, Any]:
        """``{"<key>": name, **params}`` → (entry, params instance); errors name ``where``."""
        if not isinstance(data, Mapping):
            raise ModelFolderError(f"{where}: a {self.kind} must be a JSON object like {{\"{self.key}\": \"name\", ...}}, got {data!r}")
        name = data.get(self.key)
        if name not in self._entries:
            raise ModelFolderError(f"{where}: unknown {self.kind} {name!r} in field {self.key!r} (known: {', '.join(self.names())})")
        entry = self._entries[name]
        values = {k: v for k, v in data.items() if k != self.key}
        return entry, build_params(entry.params, values, where=f"{where} ({self.kind} {name!r})")


def build_params(cls: type, values: Mapping[str, Any], *, where: str):
    """Instantiate the parameter dataclass ``cls`` from JSON values, checking names and types."""
    try:
        kwargs = _fields_of(cls, values, word="parameter", named=lambda name: f"parameter {name!r}")
    except ValueError as e:
        raise ModelFolderError(f"{where}: {e}") from None
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ModelFolderError(f"{where}: {e}") from None


def _fields_of(cls: type, values: Mapping[str, Any], *, word: str, named: Callable[[str], str]) -> dict:
    """``values`` checked against the fields of the dataclass ``cls`` (unknown, missing, each value coerced to its
    annotation) → keyword arguments; a ``ValueError`` names the ``word`` ("parameter", "field") and the value."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"unknown {word} {unknown[0]!r} (known: {', '.join(fields) or 'none'})")
    hints = typing.get_type_hints(cls, include_extras=True)
    kwargs = {}
    for name, f in fields.items():
        if name in values:
            try:
                kwargs[name] = coerce(values[name], hints[name])
            except (TypeError, ValueError, OverflowError) as e:
                raise ValueError(f"{named(name)}={shown(values[name])}: {e}") from None
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ValueError(f"missing {word} {name!r}")
    return kwargs


def coerce(value: Any, hint: Any) -> Any:
    """A JSON value → the annotated type (int, float, str, bool, Literal, Optional, Union, tuple, dict, a frozen
    dataclass from a JSON object); a number annotated with a :class:`Range` (``Annotated[float, Range(0, 1000)]``)
    must be finite and inside it."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return value
    if origin is Annotated:
        allowed = next((a for a in hint.__metadata__ if isinstance(a, Range)), None)
        what = "a whole number" if args[0] is int else "a finite number"
        try:
            number = coerce(value, args[0])
        except (TypeError, ValueError) as e:
            raise ValueError(f"must be {what} in {allowed}" if allowed is not None else str(e)) from None
        if allowed is not None and number not in allowed:
            raise ValueError(f"must be {what} in {allowed}")
        return number
    if origin is Literal:
        if value not in args:
            raise ValueError(f"must be one of {', '.join(repr(a) for a in args)}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in args:
            if option is type(None):
                continue
            try:
                return coerce(value, option)
            except (TypeError, ValueError) as e:
                errors.append(str(e))
        optional = " (or null)" if type(None) in args else ""
        raise ValueError(("; ".join(errors) or "bad value") + optional)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _nested(hint, value)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise TypeError("must be a list")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_item(i, v, args[0]) for i, v in enumerate(value))
        if len(value) != len(args):
            raise ValueError(f"must be a list of {len(args)} values")
        return tuple(coerce(v, a) for v, a in zip(value, args))
    if origin in (dict, Mapping) or hint in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise TypeError("must be a JSON object")
        if args:
            return {coerce(k, args[0]): coerce(v, args[1]) for k, v in value.items()}
        return dict(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise TypeError("must be true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (
                isinstance(value, float) and not (math.isfinite(value) and value.is_integer())):
            raise TypeError("must be a whole number")
        return int(value)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(_as_float(value)):
            raise TypeError("must be a finite number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise TypeError("must be a string")
        return value
    raise TypeError(f"unsupported parameter type {hint!r}")


def _item(i: int, value: Any, hint: Any) -> Any:
    """Item ``i`` of a list; an error names its place (``[2]: ...``)."""
    try:
        return coerce(value, hint)
    except (TypeError, ValueError) as e:
        raise ValueError(f"[{i}]: {e}") from None


def _nested(cls: type, value: Any) -> Any:
    """A JSON object → the frozen dataclass ``cls`` (a parameter made of named parts, e.g. a gate of ``rank_mean``):
    unknown and missing fields and each field's value are checked as for a step's own parameters; an error names
    the field."""
    if not isinstance(value, Mapping):
        raise TypeError(f"must be a JSON object with fields {', '.join(f.name for f in dataclasses.fields(cls))}")
    return cls(**_fields_of(cls, value, word="field", named=str))


def shown(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters (a 400-digit number in a message helps nobody)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _as_float(value: int | float) -> float:
    try:
        return float(value)
    except OverflowError:  # a JSON integer beyond float range
        return math.inf
