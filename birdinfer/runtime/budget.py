"""The time budget of a submission run: which models to drop so the run ends in time.

:class:`TimeBudget` only decides; :func:`birdinfer.jobs.submit.make_submission` asks it after each file and tells
the :class:`birdinfer.runtime.pipeline.Predictor` to stop running the models it names.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Iterable

from ..spec.dag import dependents
from ..spec.manifest import Manifest
from ..spec.info import effective_weights

__all__ = ["TimeBudget"]

log = logging.getLogger(__name__)


@dataclass
class TimeBudget:
    """Keeps a run inside ``budget_s`` seconds by dropping models for the remaining files.

    After each file the run projects ``elapsed + files_left × seconds_per_file``, where seconds per file is
    the measured mean of the models still active plus the measured per-file overhead (decode, front end
    not hidden, ensemble). While the projection exceeds the budget minus a reserve, the active model with
    the lowest *weight per cost* is dropped: its effective weight in the final mean divided by its measured
    seconds per file. The effective weight is the product, along the path from the root of the ensemble
    tree to the model, of each level's weight over the sum of its siblings' weights, among the members
    still running (:func:`birdinfer.spec.info.effective_weights`; a version 1 folder and its
    ``spec_from_v1`` spec give the same figures).
    The last model is never dropped; if even it cannot finish, the files left when the budget runs out get
    fallback rows (see :func:`make_submission`). Every drop is logged and recorded in ``events``.
    """

    budget_s: float
    reserve_s: float = 10.0
    min_files: int = 1  # files measured before the first decision
    events: list[dict] = field(default_factory=list)

    def effective_weights(self, manifest: Manifest, active: Iterable[str] | None = None) -> dict[str, float]:
        """Each model's share of the ensemble's mean (see the class docstring)."""
        return effective_weights(manifest, active)

    def plan(self, predictor: Any, *, elapsed: float, files_done: int, files_left: int, overhead_per_file: float) -> list[str]:
        """Names of models to drop now (in order); also records them in ``events``."""
        if files_done < self.min_files or files_left <= 0:
            return []
        per_model = {n: predictor.model_seconds[n] / max(1, files_done) for n in predictor.active}
        active = list(predictor.active)
        weights = self.effective_weights(predictor.manifest, active)
        drops = []

        def projected() -> float:
            return elapsed + files_left * (overhead_per_file + sum(per_model[n] for n in active))

        limit = self.budget_s - self.reserve_s
        def removal(name: str) -> list[str]:  # a model and the models on its outputs (dropped with it)
            return [name] + [d for d in dependents(predictor.manifest.models, name) if d in active]

        while projected() > limit and len(active) > 1:
            candidates = [n for n in active if len(removal(n)) < len(active)]
            if not candidates:
                break
            victim = min(candidates, key=lambda n: weights.get(n, 0.0) / max(per_model[n], 1e-9))
            before, gone = projected(), removal(victim)
            for n in gone:
                active.remove(n)
            weights = self.effective_weights(predictor.manifest, active)
            drops.append(victim)
            self.events.append({
                "model": victim, "after_files": files_done, "elapsed_s": round(elapsed, 3),
                "projected_before_s": round(before, 3), "projected_after_s": round(projected(), 3),
                "budget_s": self.budget_s, **({"with": gone[1:]} if len(gone) > 1 else {}),
            })
            log.warning("time budget: dropping %s%s after %d files (projected %.0f s > budget %.0f s - reserve %.0f s; now %.0f s)",
                        victim, f" (and {', '.join(gone[1:])}, which read its outputs)" if len(gone) > 1 else "",
                        files_done, before, self.budget_s, self.reserve_s, projected())
        return drops
