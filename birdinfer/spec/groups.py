"""Version 1 mel groups (the front end of the BirdCLEF 2025 4th place's format) and the fields a version 1
manifest shares with export recipes (``birdinfer_export.recipe``): group and ensemble fields, weights, smoothing.

A mel group's numbers are the parameters of the front-end ops it runs as once upgraded
(:func:`birdinfer.spec.upgrade.group_feature`), so their ranges are those ops' ranges, declared once in the op
registry (:mod:`birdinfer.ops.registry`) and checked here when a group is read.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Mapping

from ..errors import ModelFolderError
from ..ops import OPS
from ..ops.registry import coerce, shown

__all__ = ["MelGroup", "check_unique_groups", "find_group", "read_ensemble_fields", "check_weight", "check_smoothing"]


@dataclass(frozen=True)
class MelGroup:
    """Front-end parameters shared by every model of one group (REFERENCE.md section 2)."""

    name: str
    n_fft: int
    hop_length: int
    n_mels: int
    fmin: float
    fmax: float
    frames_per_window: int  # resized time columns per 5 s window ("F")
    weight: float = 1.0  # group weight in the final ensemble
    top_db: float = 80.0

    @property
    def frames_per_chunk(self) -> int:
        """Input time columns per 10 s chunk (2F)."""
        return 2 * self.frames_per_window

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "manifest") -> "MelGroup":
        if isinstance(data, Mapping):
            _check_group_numbers(data, where=where)
        try:
            group = cls(
                name=str(data["name"]),
                n_fft=int(data["n_fft"]),
                hop_length=int(data["hop_length"]),
                n_mels=int(data["n_mels"]),
                fmin=float(data["fmin"]),
                fmax=float(data["fmax"]),
                frames_per_window=int(data["frames_per_window"]),
                weight=float(data.get("weight", 1.0)),
                top_db=float(data.get("top_db", 80.0)),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ModelFolderError(f"{where}: bad mel group {dict(data)!r}: {e!r}") from e
        group.validate(where=where)
        return group

    def validate(self, *, where: str = "manifest") -> None:
        _check_group_numbers(asdict(self), where=where)
        problems = []
        if self.n_fft <= 0 or self.hop_length <= 0 or self.n_mels <= 0 or self.frames_per_window <= 0:
            problems.append("n_fft, hop_length, n_mels and frames_per_window must be positive")
        if not 0 <= self.fmin < self.fmax:
            problems.append(f"need 0 <= fmin < fmax, got fmin={self.fmin}, fmax={self.fmax}")
        if not (self.weight >= 0 and math.isfinite(self.weight)):
            problems.append(f"weight must be a finite number >= 0, got {self.weight}")
        if problems:
            raise ModelFolderError(f"{where}: mel group {self.name!r}: " + "; ".join(problems))

    def to_dict(self) -> dict:
        return asdict(self)


#: A mel group's numbers are the parameters of the front-end ops it runs as (:func:`birdinfer.spec.upgrade.group_feature`):
#: their ranges are those ops' (declared once, in the op registry).
_GROUP_PARAMS = {"n_fft": ("stft", "n_fft"), "hop_length": ("stft", "hop_length"), "n_mels": ("mel", "n_mels"),
                 "fmin": ("mel", "fmin"), "fmax": ("mel", "fmax"), "frames_per_window": ("resize_time", "frames_per_row"),
                 "top_db": ("db", "top_db")}


def _check_group_numbers(data: Mapping[str, Any], *, where: str) -> None:
    for key, (op, param) in _GROUP_PARAMS.items():
        if key in data:
            try:
                OPS.check_param(op, param, data[key])
            except (TypeError, ValueError) as e:
                raise ModelFolderError(f"{where}: mel group {data.get('name', '?')!r}: {key}={shown(data[key])}: {e} "
                                       f"(it is the {param!r} of front-end op {op!r})") from None


# -------------------------------------------------- parsing shared with export recipes (birdinfer_export.recipe)
def check_unique_groups(groups: Iterable[MelGroup], *, where: str, error: type[Exception] = ModelFolderError) -> None:
    """Group names must be unique (``error`` names the file ``where``)."""
    names = [g.name for g in groups]
    if len(set(names)) != len(names):
        raise error(f"{where}: duplicate group names {names}")


def find_group(groups: Iterable[MelGroup], name: str, *, where: str, error: type[Exception] = ModelFolderError) -> MelGroup:
    groups = tuple(groups)
    for g in groups:
        if g.name == name:
            return g
    raise error(f"{where}: no mel group named {name!r} (groups: {[g.name for g in groups]})")


def read_ensemble_fields(data: Mapping[str, Any]) -> dict[str, Any]:
    """``sample_rate``, ``window_seconds`` and ``smoothing`` with their defaults (manifests and recipes); a
    :class:`ValueError` naming the field for a value that is not a finite number (a whole one for the rate)."""
    out = {}
    for key, kind, default in (("sample_rate", int, 32000), ("window_seconds", float, 5.0), ("smoothing", float, 0.15)):
        try:
            out[key] = coerce(data.get(key, default), kind)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{key}={shown(data.get(key))}: {e}") from None
    return out


def check_weight(model: str, weight: float, *, where: str, error: type[Exception] = ModelFolderError) -> None:
    if not (weight >= 0 and math.isfinite(weight)):
        raise error(f"{where}: model {model!r}: weight must be finite and >= 0, got {weight}")


def check_smoothing(smoothing: float, *, where: str, error: type[Exception] = ModelFolderError) -> None:
    if not 0 <= smoothing < 0.5:
        raise error(f"{where}: smoothing must be in [0, 0.5), got {smoothing}")
