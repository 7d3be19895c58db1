"""Ensemble recipes: which checkpoints make an ensemble, their architectures, groups and weights.

A recipe is a JSON file (layout in ``weights/README.md``). The default one, ``birdclef2025_4th.json``,
describes the 16-model BirdCLEF 2025 4th-place ensemble of REFERENCE.md sections 2–4. Its groups are
:class:`birdinfer.spec.manifest.MelGroup` objects, the same type the exported manifest stores.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from birdinfer.errors import ParameterError
from birdinfer.spec.manifest import (MelGroup, check_smoothing, check_unique_groups, check_weight, find_group,
                                read_ensemble_fields)

__all__ = ["RECIPE_FORMAT", "RecipeModel", "Recipe", "load_recipe", "default_recipe_path"]

RECIPE_FORMAT = "birdinfer-recipe"
RECIPE_FORMAT_VERSION = 1
DEFAULT_RECIPE_NAME = "birdclef2025_4th.json"


@dataclass(frozen=True)
class RecipeModel:
    """One ensemble member: its checkpoint file name, timm architecture, mel group and weight."""

    checkpoint: str
    arch: str
    group: str
    weight: float

    @property
    def name(self) -> str:
        """Model name in the exported folder: the checkpoint's stem."""
        return Path(self.checkpoint).stem


@dataclass(frozen=True)
class Recipe:
    """A whole ensemble: mel groups, models, and the post-processing parameters."""

    name: str
    groups: tuple[MelGroup, ...]
    models: tuple[RecipeModel, ...]
    sample_rate: int = 32000
    window_seconds: float = 5.0
    smoothing: float = 0.15
    n_classes: int | None = None  # expected class count, when the recipe states it
    path: Path | None = None  # where it was read from (not serialised)

    def group(self, name: str) -> MelGroup:
        return find_group(self.groups, name, where=self._where, error=ParameterError)

    def model(self, name: str) -> RecipeModel:
        """The model whose checkpoint stem (or file name) is ``name``."""
        for m in self.models:
            if name in (m.name, m.checkpoint):
                return m
        raise ParameterError(f"{self._where}: no model {name!r} in the recipe; known: {[m.name for m in self.models]}")

    @property
    def _where(self) -> str:
        return str(self.path) if self.path else f"recipe {self.name!r}"

    def to_dict(self) -> dict:
        out: dict[str, Any] = {
            "format": RECIPE_FORMAT,
            "format_version": RECIPE_FORMAT_VERSION,
            "name": self.name,
            "sample_rate": self.sample_rate,
            "window_seconds": self.window_seconds,
            "smoothing": self.smoothing,
            "groups": [g.to_dict() for g in self.groups],
            "models": [{"checkpoint": m.checkpoint, "arch": m.arch, "group": m.group, "weight": m.weight} for m in self.models],
        }
        if self.n_classes is not None:
            out["n_classes"] = self.n_classes
        return out

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, path: Path | None = None) -> "Recipe":
        where = str(path) if path else "recipe"
        if data.get("format", RECIPE_FORMAT) != RECIPE_FORMAT:
            raise ParameterError(f"{where}: not a birdinfer recipe (format={data.get('format')!r})")
        if data.get("format_version", RECIPE_FORMAT_VERSION) != RECIPE_FORMAT_VERSION:
            raise ParameterError(f"{where}: recipe format_version {data.get('format_version')!r} is not supported (supports 1)")
        try:
            groups = tuple(MelGroup.from_dict(g, where=where) for g in data["groups"])
            models = tuple(
                RecipeModel(checkpoint=str(m["checkpoint"]), arch=str(m["arch"]), group=str(m["group"]), weight=float(m["weight"]))
                for m in data["models"]
            )
            recipe = cls(
                name=str(data.get("name", path.stem if path else "recipe")),
                groups=groups,
                models=models,
                n_classes=None if data.get("n_classes") is None else int(data["n_classes"]),
                path=path,
                **read_ensemble_fields(data),
            )
        except KeyError as e:
            raise ParameterError(f"{where}: missing key {e.args[0]!r}") from e
        except (TypeError, ValueError) as e:
            raise ParameterError(f"{where}: bad value: {e}") from e
        recipe.validate()
        return recipe

    def validate(self) -> None:
        where = self._where
        if not self.models:
            raise ParameterError(f"{where}: the recipe lists no models")
        check_unique_groups(self.groups, where=where, error=ParameterError)
        group_names = [g.name for g in self.groups]
        names = [m.name for m in self.models]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ParameterError(f"{where}: checkpoint stems must be unique, repeated: {duplicates}")
        for m in self.models:
            if m.group not in group_names:
                raise ParameterError(f"{where}: model {m.name!r} names group {m.group!r}, not one of {group_names}")
            check_weight(m.name, m.weight, where=where, error=ParameterError)
            if Path(m.checkpoint).name != m.checkpoint:
                raise ParameterError(f"{where}: model checkpoint {m.checkpoint!r} must be a plain file name")
        check_smoothing(self.smoothing, where=where, error=ParameterError)


def default_recipe_path() -> Path:
    """The 4th-place recipe: the repository's ``weights/birdclef2025_4th.json``, else the package's copy."""
    candidates = [
        Path(__file__).resolve().parent.parent / "weights" / DEFAULT_RECIPE_NAME,
        Path(__file__).resolve().parent / "data" / DEFAULT_RECIPE_NAME,
    ]
    for path in candidates:
        if path.is_file():
            return path
    raise ParameterError(f"default recipe {DEFAULT_RECIPE_NAME} not found (looked in {[str(p) for p in candidates]}); pass --recipe FILE")


def load_recipe(path: str | Path | None = None) -> Recipe:
    """Read a recipe JSON file (default: :func:`default_recipe_path`)."""
    path = Path(path) if path is not None else default_recipe_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ParameterError(f"recipe file {path} not found") from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ParameterError(f"{path}: cannot read the recipe: {e}") from e
    if not isinstance(data, dict):
        raise ParameterError(f"{path}: a recipe must be a JSON object")
    return Recipe.from_dict(data, path=path)
