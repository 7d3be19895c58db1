"""The precision plan: which stored variant of each model runs, and the OpenVINO precision hint of its float
layers, for a ``--precision`` mode on a CPU class (:mod:`birdinfer.runtime.cpu`), from what the folder records
(:attr:`birdinfer.spec.files.ModelVariant.cpu_classes` and ``bf16``). Nothing is loaded here; the modes are
described in :mod:`birdinfer.runtime.models` and docs/manifest_v2.md ("Precision").

The backend of each model is planned here too. ``openvino`` / ``onnxruntime`` put every model on that
backend; ``auto`` puts a model on ONNX Runtime only where its f32 variant records ONNX Runtime faster than
OpenVINO on this CPU class by more than 5 % (:data:`ORT_MARGIN`; :attr:`ModelVariant.backends`, written by
``birdinfer bench --record-backends``),
the plan runs it at f32 (INT8 and bf16 are OpenVINO's), the folder has its ONNX file and ``onnxruntime`` is
installed; every other model runs on OpenVINO. The summary names each model's backend and why.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Sequence

from .cpu import CpuIsa, effective_isa
from .frontend_plan import plan_frontend
from ..errors import ModelFolderError, ParameterError
from ..spec.manifest import Manifest, ModelEntry
from ..spec.files import ModelVariant

__all__ = ["PRECISIONS", "BACKENDS", "BACKEND_CHOICES", "INT8_VARIANTS", "ModelPlan", "variant_valid", "bf16_valid", "plan_models",
           "plan_variants"]

log = logging.getLogger("birdinfer.runtime.models")  # the plan is logged as the model loader's

PRECISIONS = ("auto", "f32", "bf16", "int8", "fast")
BACKENDS = ("openvino", "onnxruntime")
#: What ``backend=`` accepts: a backend for every model, or ``auto`` (per model, as recorded: module docstring).
BACKEND_CHOICES = BACKENDS + ("auto",)
#: ``auto`` moves a model to ONNX Runtime only when its recorded time is below this fraction of OpenVINO's:
#: differences of a few percent are within a benchmark's noise, and OpenVINO is the default for INT8 / bf16.
ORT_MARGIN = 0.95
#: INT8 variant names, in order of preference (same speed; ``int8`` is the default export).
INT8_VARIANTS = ("int8", "int8-compat")


@dataclass(frozen=True)
class ModelPlan:
    """What one model will run as: the stored variant and the OpenVINO precision hint for its float layers."""

    entry: ModelEntry
    variant: str  # key of entry.variants
    hint: str | None  # INFERENCE_PRECISION_HINT ("f32" / "bf16"); None for ONNX Runtime
    note: str = ""  # why, when it is not the obvious choice
    backend: str = "openvino"  # one of BACKENDS

    @property
    def label(self) -> str:
        """What runs, as :attr:`LoadedModel.precision` names it: ``f32``, ``bf16``, ``int8+f32``, ``int8+bf16``."""
        hint = self.hint or "f32"
        return hint if self.variant == "f32" else f"{self.variant}+{hint}"


def variant_valid(variant: ModelVariant, isa: CpuIsa) -> bool:
    """Does ``variant`` meet the accuracy bar on ``isa``'s class, as measured when its folder was written? A
    variant without ``cpu_classes`` (a folder written before INT8 was measured per class) is valid nowhere:
    ``fast`` runs f32 for it (``--precision int8`` still runs it, as asked)."""
    return variant.cpu_classes is not None and isa.cpu_class in variant.cpu_classes


def bf16_valid(variant: ModelVariant, isa: CpuIsa) -> bool:
    """May ``auto`` / ``fast`` run ``variant``'s float layers in bf16 on ``isa``? Only where bf16 is native and
    the variant records a measured error within the bar for this class (:attr:`ModelVariant.bf16`)."""
    return isa.bf16_native and isa.cpu_class in variant.bf16_classes


def _speedup(variant: ModelVariant, isa: CpuIsa) -> float:
    """Speed against f32 recorded for this class when the folder was written (1.0: not measured)."""
    figures = variant.verification.get("per_class", {}).get(isa.cpu_class, {})
    return float(figures.get("speedup_vs_f32", 1.0))


def _trusted_hint(entry: ModelEntry, variant: str, isa: CpuIsa, notes: list[str]) -> str:
    """``auto`` / ``fast``: bf16 for the float layers only where recorded within the bar for this class."""
    stored = entry.variants[variant]
    if bf16_valid(stored, isa):
        return "bf16"
    if isa.bf16_native:  # bf16 would be faster here: say why it does not run
        record = stored.bf16
        if record is None:
            notes.append(f"no bf16 measurement recorded (folder written before precision records): f32 where it "
                         f"would be bf16; re-import / re-export on a {isa.cpu_class} CPU to measure it")
        elif record.get("not_measurable"):
            notes.append(f"bf16 not measured for {isa.cpu_class} ({record['not_measurable']}): f32")
        elif record.get("max_abs_dp") is not None and record.get("measured_on") == isa.cpu_class:
            notes.append(f"bf16 measured over the bar on {isa.cpu_class}: f32 for those models")
        else:
            notes.append(f"bf16 measured on {record.get('measured_on')} only, not on {isa.cpu_class}: f32")
    return "f32"


def plan_models(manifest: Manifest, *, precision: str = "auto", backend: str = "auto",
                isa: CpuIsa | None = None, warn: bool = True) -> tuple[list[ModelPlan], str]:
    """Decide every model's variant and precision hint for ``precision`` on ``isa`` (default: this process's
    effective ISA) without loading anything. Returns the plans and one sentence saying what runs, per model,
    and why (never the CPU's float hint where f32 runs), and which front end a feature runs where a planned
    variant records one (:mod:`birdinfer.runtime.frontend_plan`). ``warn=False``: no warning logged (a caller
    planning the same run again, e.g. a resume journal's fingerprint)."""
    if precision not in PRECISIONS:
        raise ParameterError(f"precision={precision!r} is not one of {PRECISIONS}")
    if backend not in BACKEND_CHOICES:
        raise ParameterError(f"backend={backend!r} is not one of {BACKEND_CHOICES}")
    isa = isa or effective_isa()
    ov = backend != "onnxruntime"  # auto plans as OpenVINO, then moves models measured faster on ONNX Runtime
    plans, notes = [], []
    for entry in manifest.models:
        if "f32" not in entry.variants:
            raise ModelFolderError(f"{manifest._where}: model {entry.name!r} has no f32 variant; re-export it")
        int8 = [k for k in INT8_VARIANTS if k in entry.variants]
        valid = [k for k in int8 if variant_valid(entry.variants[k], isa)]
        slower = [k for k in valid if _speedup(entry.variants[k], isa) < 1.0] if precision == "fast" else []
        valid = [k for k in valid if k not in slower]  # fast means faster: not one measured slower than f32 here
        if not ov:
            int8_asked = precision == "int8" and (valid or int8)  # INT8 is OpenVINO only: plan_variants says so
            plans.append(ModelPlan(entry, (valid or int8)[0] if int8_asked else "f32", None,
                                   "no INT8 variant valid on ONNX Runtime" if precision == "fast" and int8 else ""))
        elif precision == "f32":
            plans.append(ModelPlan(entry, "f32", "f32"))
        elif precision == "bf16":  # emulated bf16 is slower than f32 and no more exact: never run it
            plans.append(ModelPlan(entry, "f32", isa.float_hint, "" if isa.bf16_native else
                                   f"bf16 is not native on {isa.cpu_class}: f32 instead (faster, exact)"))
        elif precision == "auto" or (precision == "fast" and not valid):
            note = "" if precision == "auto" else "no INT8 variant" if not int8 else (
                f"{slower[0]} is valid on {isa.cpu_class} but was measured slower than f32 there "
                f"(×{_speedup(entry.variants[slower[0]], isa):.2f})" if slower else
                f"no INT8 variant valid on {isa.cpu_class} ({_validity(entry, int8)})")
            plans.append(ModelPlan(entry, "f32", _trusted_hint(entry, "f32", isa, notes), note))
        elif precision == "fast":
            plans.append(ModelPlan(entry, valid[0], _trusted_hint(entry, valid[0], isa, notes),
                                   f"{valid[0]} is valid on {isa.cpu_class}"))
        elif valid:  # int8, explicit: float layers as the class allows (bf16 where native)
            plans.append(ModelPlan(entry, valid[0], isa.float_hint))
        elif int8:
            note = f"{int8[0]} is not validated on {isa.cpu_class} ({_validity(entry, int8)}): accuracy may drop"
            if warn:
                log.warning("model %s: %s", entry.name, note)
            plans.append(ModelPlan(entry, int8[0], isa.float_hint, note))
        else:
            if warn:
                log.warning("model %s has no INT8 variant: running its f32 variant", entry.name)
            plans.append(ModelPlan(entry, "f32", isa.float_hint, "no INT8 variant"))
    if not ov:
        plans = [replace(p, backend="onnxruntime") for p in plans]
    elif backend == "auto":
        plans = [_auto_backend(p, isa, notes) for p in plans]
    counts: dict[str, int] = {}
    for p in plans:
        counts[p.label] = counts.get(p.label, 0) + 1
    ran = ", ".join(f"{k} ×{n}" for k, n in counts.items())
    per_model = ", ".join(f"{p.entry.name} {p.label}" + (" on ONNX Runtime" if ov and p.backend == "onnxruntime" else "")
                          for p in plans)
    notes = list(dict.fromkeys(notes + [p.note for p in plans if p.note] + list(plan_frontend(manifest, plans).phrases)))
    summary = (f"precision {precision} on CPU class {isa.label()}: runs {ran}"
               + ("" if ov else " (ONNX Runtime float32)") + f" [{per_model}]"
               + (f"; {'; '.join(notes)}" if notes else ""))
    if precision == "bf16" and ov and not isa.bf16_native and warn:
        log.warning("bf16 is not native on %s (OpenVINO would emulate it, slower than f32): running f32", isa.cpu_class)
    return plans, summary


def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def _auto_backend(plan: ModelPlan, isa: CpuIsa, notes: list[str]) -> ModelPlan:
    """``backend=auto``: ONNX Runtime for this model where its f32 variant records it faster on this class and
    the plan runs f32 (module docstring); else the OpenVINO plan as it is. Notes say why where it matters."""
    stored = plan.entry.variants["f32"]
    record = (stored.backends or {}).get(isa.cpu_class)
    if record is None or plan.variant != "f32" or plan.hint != "f32":
        return plan
    ov_s, ort_s = float(record["openvino"]), float(record["onnxruntime"])
    if ort_s >= ORT_MARGIN * ov_s:
        return replace(plan, note=_join(plan.note, f"ONNX Runtime not measured ≥ {1 - ORT_MARGIN:.0%} faster than "
                                                    f"OpenVINO on {isa.cpu_class} ({ort_s:.3g} vs {ov_s:.3g} s/file): "
                                                    f"OpenVINO"))
    if not stored.onnx:
        notes.append(f"{plan.entry.name}: ONNX Runtime was measured faster on {isa.cpu_class} but the folder has no "
                     f"ONNX file (bundled without --with-onnx): OpenVINO")
        return plan
    if not onnxruntime_available():
        notes.append(f"{plan.entry.name}: ONNX Runtime was measured faster on {isa.cpu_class} but onnxruntime is not "
                     f"installed: OpenVINO")
        return plan
    return replace(plan, hint=None, backend="onnxruntime",
                   note=_join(plan.note, f"ONNX Runtime measured faster on {isa.cpu_class} ({ort_s:.3g} vs {ov_s:.3g} "
                                         f"s/file on OpenVINO)"))


def _join(a: str, b: str) -> str:
    return f"{a}; {b}" if a else b


def _validity(entry: ModelEntry, names: Sequence[str]) -> str:
    parts = []
    for k in names:
        classes = entry.variants[k].cpu_classes
        where = ", ".join(classes or ()) or "no class"
        if classes is None:
            where += " (not measured: python -m birdinfer_export.variants FOLDER --measure)"
        parts.append(f"{k} valid on {where}")
    return "; ".join(parts)


def plan_variants(manifest: Manifest, *, precision: str = "auto", backend: str = "auto",
                  isa: CpuIsa | None = None, plans: Sequence[ModelPlan] | None = None) -> list[tuple[ModelPlan, str]]:
    """(plan, file to load) per model, for ``precision`` on ``backend``, as :func:`plan_models` decides; no
    file is read.

    Raises :class:`ModelFolderError` naming the folder and the model when a needed file is not in the
    manifest (e.g. ONNX Runtime asked of a folder bundled without ONNX), so callers can check this before
    any audio work.
    """
    if plans is None:  # a check before the run (which plans again and says what it runs): no warning here
        plans = plan_models(manifest, precision=precision, backend=backend, isa=isa, warn=False)[0]
    where = manifest.folder if manifest.folder is not None else "model folder"
    out = []
    for p in plans:
        stored = p.entry.variants[p.variant]
        backend = p.backend
        if backend == "openvino" and not stored.openvino:
            raise ModelFolderError(f"{where}: model {p.entry.name!r} ({p.variant}) has no OpenVINO IR; use --backend onnxruntime")
        if backend == "onnxruntime" and not stored.onnx:
            if p.variant != "f32":
                raise ModelFolderError(f"{where}: model {p.entry.name!r}: INT8 variants are OpenVINO only; use --backend "
                                       "openvino, or --precision f32 with ONNX Runtime")
            raise ModelFolderError(
                f"{where}: model {p.entry.name!r} ({p.variant}) has no ONNX file, which --backend onnxruntime needs (a "
                "`birdinfer bundle` keeps only the OpenVINO IR unless --with-onnx, an export made with --no-onnx has "
                "none): use --backend openvino, or rebuild the bundle with --with-onnx from the full model folder"
            )
        out.append((p, stored.openvino if backend == "openvino" else stored.onnx))
    return out
