"""What the tools read from a version 2 spec: each model's effective weight in the ensemble tree, the
frequency band the front ends see, and which features the models use.

Used by the time budget (:mod:`birdinfer.runtime.budget`), Raven tables (:mod:`birdinfer.jobs.predict`) and ``bench``
(:mod:`birdinfer.tools.bench`). Everything here reads a :class:`birdinfer.spec.v2.ManifestV2`; any loaded folder
becomes one through :func:`birdinfer.spec.upgrade.upgrade`, the upgrade ``Manifest.load`` makes.
"""

from __future__ import annotations

from typing import Iterable

from .upgrade import upgrade
from .manifest import Manifest
from .v2 import GroupSpec, MemberRef

__all__ = ["effective_weights", "feature_band", "frequency_band", "features_of"]


def effective_weights(manifest: Manifest, active: Iterable[str] | None = None) -> dict[str, float]:
    """Each model's share of the final mean: the product, along the path from the root of the ensemble tree
    to the model, of each level's weight divided by the sum of its siblings' weights (only the members in
    ``active`` count, as the engine combines only the members that ran). Sums to 1 over the models that
    ran (when every weight is positive)."""
    manifest = upgrade(manifest)
    names = None if active is None else set(active)
    out: dict[str, float] = {}
    _walk(manifest.ensemble, 1.0, names, out)
    return out


def _ran(member, names: set[str] | None) -> bool:
    if isinstance(member, MemberRef):
        return names is None or member.model in names
    return any(_ran(m, names) for m in member.members)


def _walk(group: GroupSpec, share: float, names: set[str] | None, out: dict[str, float]) -> None:
    members = [m for m in group.members if _ran(m, names)]
    total = sum(m.weight for m in members)
    for m in members:
        part = share * (m.weight / total if total > 0 else 1.0 / len(members))
        if isinstance(m, MemberRef):
            out[m.model] = part
        else:
            _walk(m, part, names, out)


def features_of(manifest: Manifest, models: Iterable[str] | None = None) -> list[str]:
    """The feature names the ``models`` (default all) take as input, in manifest order of the models."""
    manifest = upgrade(manifest)
    names = None if models is None else set(models)
    return list(dict.fromkeys(m.input for m in manifest.models if (names is None or m.name in names) and m.input))


def feature_band(manifest: Manifest, feature: str) -> tuple[float, float]:
    """``(low Hz, high Hz)`` of one feature: its ``mel`` op's ``fmin`` and ``fmax`` (``fmax`` null = Nyquist);
    with several mel ops the widest range; a feature without one covers 0 Hz to Nyquist."""
    manifest = upgrade(manifest)
    nyquist = manifest.sample_rate / 2.0
    bands = [(float(s.params.fmin), float(s.params.fmax) if s.params.fmax is not None else nyquist)
             for s in manifest.features[feature] if s.name == "mel"]
    if not bands:
        return 0.0, nyquist
    return min(b[0] for b in bands), max(b[1] for b in bands)


def frequency_band(manifest: Manifest, models: Iterable[str] | None = None) -> tuple[float, float]:
    """``(low Hz, high Hz)`` the ``models`` (default all) see: the union of their features' bands."""
    bands = [feature_band(manifest, f) for f in features_of(manifest, models)]
    return min(b[0] for b in bands), max(b[1] for b in bands)
