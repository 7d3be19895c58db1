"""Which front end each feature runs, from the precision plan: a variant may record the front-end parameters it
was validated with (:attr:`birdinfer.spec.files.ModelVariant.frontend`, e.g. BirdNET's INT8 variant measured with
``birdnet_stft`` ``fft=float32``). A feature runs with a record only when every model reading it runs a variant
stating that same record (one computation feeds them all, and a model must never be fed a front end it was not
validated with); otherwise it runs its own steps and the plan says why in one phrase. The f32 variant never
records one, so ``--precision f32`` (and ``auto`` where it runs f32) is the exact front end.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from ..spec.variant_frontend import describe_frontend, spec_with_frontends

__all__ = ["FrontendPlan", "plan_frontend", "with_planned_frontend"]


@dataclass(frozen=True)
class FrontendPlan:
    """``features``: feature name → the record it runs with (features not named run their own steps);
    ``phrases``: what the plan summary says about it (empty when no variant planned records one)."""

    features: Mapping[str, Mapping[str, Mapping[str, Any]]] = field(default_factory=dict)
    phrases: tuple[str, ...] = ()

    def identity(self) -> dict:
        """JSON-able: what a resume journal compares (empty when every feature runs its own steps)."""
        return {name: {op: dict(p) for op, p in record.items()} for name, record in sorted(self.features.items())}


def _features_read(entry) -> list[str]:
    """The front-end features a model reads: its input and its shifted-window TTA passes' features."""
    if not getattr(entry, "input", ""):
        return []
    tta = getattr(entry, "tta", None)
    return list(dict.fromkeys([entry.input] + ([p.feature for p in tta.passes] if tta is not None else [])))


def plan_frontend(manifest, plans: Sequence) -> FrontendPlan:
    """The front end of every feature for ``plans`` (:func:`birdinfer.runtime.plan.plan_models`): module docstring."""
    if not getattr(manifest, "features", None):
        return FrontendPlan()
    readers: dict[str, list] = {}
    for p in plans:
        for name in _features_read(p.entry):
            readers.setdefault(name, []).append(p)
    chosen, phrases = {}, []
    for name, ps in readers.items():
        records = [(p, p.entry.variants[p.variant].frontend) for p in ps]
        stated = [(p, r) for p, r in records if r]
        if not stated:
            continue
        first = stated[0][1]
        if all(r == first for _, r in records):
            chosen[name] = first
            whose = ", ".join(dict.fromkeys(f"{p.variant}'s" for p, _ in stated))
            phrases.append(f"front end {name}: {describe_frontend(first)} ({whose} record)")
        else:
            differ = ", ".join(f"{p.entry.name} {p.variant} " + (describe_frontend(r) if r else "without a record")
                               for p, r in records)
            phrases.append(f"front end {name}: its own parameters, as the models reading it run variants stating "
                           f"different front ends ({differ})")
    return FrontendPlan(chosen, tuple(phrases))


def with_planned_frontend(manifest, plan: FrontendPlan):
    """``manifest`` with the features of ``plan`` running their records (the same manifest when it names none)."""
    return spec_with_frontends(manifest, plan.features)
