"""Registries of named operations with typed parameters (front-end ops, model steps, ensemble steps).

An operation is a small pure function registered under a name together with a frozen parameter
dataclass (as timm registers its models). A manifest entry ``{"op": "db", "top_db": 80}`` is parsed by
:meth:`Registry.parse`: unknown names, unknown or missing parameters and values of the wrong type or out
of range raise :class:`birdinfer.errors.ModelFolderError` naming the manifest path and field.
Parameter dataclasses check their own ranges in ``__post_init__`` (raising ``ValueError``).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable, Literal, Mapping

from ..errors import ModelFolderError

__all__ = ["Registry", "Entry", "coerce"]


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
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ModelFolderError(f"{where}: unknown parameter {unknown[0]!r} (known: {', '.join(fields) or 'none'})")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, f in fields.items():
        if name in values:
            try:
                kwargs[name] = coerce(values[name], hints[name])
            except (TypeError, ValueError) as e:
                raise ModelFolderError(f"{where}: parameter {name!r}={values[name]!r}: {e}") from None
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ModelFolderError(f"{where}: missing parameter {name!r}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ModelFolderError(f"{where}: {e}") from None


def coerce(value: Any, hint: Any) -> Any:
    """A JSON value → the annotated type (int, float, str, bool, Literal, Optional, Union, tuple, dict)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return value
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
        raise ValueError("; ".join(errors) or "bad value")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise TypeError("must be a list")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(coerce(v, args[0]) for v in value)
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
        if isinstance(value, bool) or not isinstance(value, (int, float)) or float(value) != int(value):
            raise TypeError("must be a whole number")
        return int(value)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise TypeError("must be a finite number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise TypeError("must be a string")
        return value
    raise TypeError(f"unsupported parameter type {hint!r}")
