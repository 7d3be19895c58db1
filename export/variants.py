"""Add INT8 variants to a model folder that already holds verified f32 variants (no torch needed).

``export_models(..., precision="int8")`` writes the f32 and INT8 variants in one go. When the f32 export
exists (it is the slow part: ONNX export, parity checks in float64), :func:`add_int8_variants` quantizes
its f32 IRs with NNCF into the named variants, verifies each against f32 on held-out chunks exactly as
the export does, and rewrites the manifest (atomically, after every file exists).

    python -m birdinfer_export.variants MODELS --calibration SOUNDSCAPES [--variants int8 int8-compat]
    python -m birdinfer_export.variants MODELS --calibration SOUNDSCAPES --measure   # re-measure validity per class
"""

from __future__ import annotations

import argparse
import gc
from dataclasses import replace
from pathlib import Path
from typing import Mapping, Sequence

from birdinfer.errors import ParameterError
from birdinfer.spec.manifest import Manifest
from birdinfer.spec.files import VARIANT_PRECISIONS, sha256_file

from birdinfer.spec.variant_frontend import describe_frontend

from .frontend_check import checks_with_frontend, folder_frontend
from .int8_variant import ExportError, export_int8, report_export
from .quantize import DEFAULT_INT8_VARIANTS, F32_CONFIG, INT8_RECIPES, OVERFLOW_FIXES, PRESETS, Int8Recipe, quantize_ir
from .verify import prepare_inputs

__all__ = ["add_int8_variants", "record_cpu_classes", "add_int8_variants_spec", "measure_int8", "record_precision",
           "folder_int8_settings", "meets_bar", "INT8_MEAN_DP_BAR", "INT8_BAR_FIGURES", "INT8_CHECK_CLASSES"]

#: Label-free INT8 bar of a spec folder's per-class check: mean |Δp| of a model's rows against f32 under the
#: same class. Set from the demo's trained models (benchmarks/precision_accuracy.py): the shipped recipe's
#: mean |Δp| 0.0123 went with ΔAUC −0.0013 (within 0.002), seeds with mean |Δp| 0.015 went with ΔAUC
#: −0.0044. Two data points, not a proven proxy for ΔAUC: pass labels-based figures when you have them.
INT8_MEAN_DP_BAR = 0.0125
#: Figures an INT8 bar may name (:func:`meets_bar`): an upper bound for the |Δp| figures, a lower bound for the
#: top-1 agreements (:func:`birdinfer.tools.precision.compare_rows`). Every folder's bar is
#: ``{"mean_abs_dp": INT8_MEAN_DP_BAR}`` unless the folder names its own in ``extra.precision_check.int8_bar``
#: (a folder of many mostly-zero scores, BirdNET's 6,522, adds top-1 agreement on decided confident windows:
#: mean |Δp| alone lets through an INT8 graph whose top label differs on half the windows, measured).
INT8_BAR_FIGURES = {"mean_abs_dp": "max", "max_abs_dp": "max", "top1_agreement": "min", "top1_agreement_confident": "min",
                    "top1_agreement_decided": "min", "delta_auc": "min"}
#: Classes an INT8 variant is checked under (a child process each, where this CPU can emulate the class):
#: one with exact INT8 dot products (this CPU when it has VNNI/AMX) and the two without VNNI.
INT8_CHECK_CLASSES = ("native", "avx512", "avx2")
#: Classes whose INT8 arithmetic is the same as any other of them (exact dot products: VNNI / AMX).
_EXACT = ("amx", "avx512_vnni_bf16", "avx512_vnni", "avx2_vnni")
_INT8_CLASSES = ("amx", "avx512_vnni_bf16", "avx512_vnni", "avx512", "avx2_vnni", "avx2")


class _Spec:  # the two fields export_int8 reads from a recipe model
    def __init__(self, name: str, arch: str):
        self.name, self.arch = name, arch


def add_int8_variants(models: str | Path, *, calibration: str | Path | None,
                      variants: Mapping[str, Int8Recipe] | Sequence[str] | None = None,
                      progress: bool = True) -> Manifest:
    """Quantize every model of the folder ``models`` into ``variants`` (names of :data:`INT8_RECIPES`, or
    name → :class:`Int8Recipe`; default: the default export's set), replacing variants of the same name."""
    import openvino as ov

    folder = Path(models)
    manifest = Manifest.load(folder, upgrade=False)  # rewritten in its own format (version 1: mel groups)
    if variants is None:
        variants = list(DEFAULT_INT8_VARIANTS)
    recipes = dict(variants) if isinstance(variants, Mapping) else {name: INT8_RECIPES[name] for name in variants}
    bad = [k for k in recipes if k == "f32" or k not in VARIANT_PRECISIONS]
    if bad:
        raise ParameterError(f"variant names {bad} are not INT8 variant names {[v for v in VARIANT_PRECISIONS if v != 'f32']}")
    groups = manifest.used_groups()
    inputs = prepare_inputs(groups, calibration=calibration, sample_rate=manifest.sample_rate,
                            window_seconds=manifest.window_seconds, synthetic_clips=8)
    core = ov.Core()
    entries, files = [], dict(manifest.files)
    for entry in manifest.models:
        chunks = entry.batch_chunks or 6
        f32_compiled = core.compile_model(str(manifest.path_of(entry.variants["f32"].openvino)), "CPU", dict(F32_CONFIG))
        new = dict(entry.variants)
        for name, recipe in recipes.items():
            new[name] = export_int8(_Spec(entry.name, entry.arch), folder, entry.variants["f32"].openvino, f32_compiled,
                                     inputs, entry.group, chunks, core=core, recipe=recipe, variant=name)
            for file_name in new[name].file_names():
                files[file_name] = sha256_file(folder / file_name)
        entries.append(replace(entry, variants=new))
        report_export(entries[-1], write=print if progress else (lambda _: None))
        del f32_compiled
        gc.collect()
    updated = replace(manifest, models=tuple(entries), files=files,
                      extra={**dict(manifest.extra), "precision": "int8", "int8_variants_added": sorted(recipes)})
    updated.validate()
    updated.save(folder)
    record_precision(folder, calibration=calibration, measure_int8_variants=list(recipes),
                     progress=print if progress else None)
    return Manifest.load(folder, upgrade=False)


def record_cpu_classes(models: str | Path, classes: Mapping[str, Sequence[str] | None], evidence: str = "") -> Manifest:
    """Write the CPU classes each named variant is valid on into the folder's manifest (files unchanged): for
    variants quantized before their accuracy per class was measured."""
    folder = Path(models)
    manifest = Manifest.load(folder, upgrade=False)  # rewritten in its own format
    entries = []
    for entry in manifest.models:
        variants = dict(entry.variants)
        for name, valid in classes.items():
            if name in variants:
                verification = {**dict(variants[name].verification), **({"cpu_classes_evidence": evidence} if evidence else {})}
                variants[name] = replace(variants[name], cpu_classes=None if valid is None else tuple(valid),
                                         verification=verification)
        entries.append(replace(entry, variants=variants))
    updated = replace(manifest, models=tuple(entries))
    updated.validate()
    updated.save(folder)
    return Manifest.load(folder, upgrade=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", type=Path)
    parser.add_argument("--calibration", type=Path, default=None, help="soundscapes for calibration / held-out checks")
    parser.add_argument("--calibration-labels", type=Path, default=None,
                        help="with --measure: the calibration soundscapes' solution CSV (row_id + 0/1 per class); "
                        "INT8 is then judged by ΔAUC on the held-out files")
    parser.add_argument("--variants", nargs="+", default=list(DEFAULT_INT8_VARIANTS), choices=sorted(INT8_RECIPES))
    parser.add_argument("--measure", action="store_true",
                        help="quantize nothing: measure the folder's INT8 variants per CPU class and record where "
                        "each is valid (for folders written before INT8 was measured)")
    args = parser.parse_args(argv)
    if args.measure:
        from birdinfer.tools.precision import audio_set

        manifest = Manifest.load(args.models)
        names = sorted({k for m in manifest.models for k, v in m.variants.items() if k != "f32" and v.openvino})
        if not names:
            raise ParameterError(f"{args.models}: no INT8 variant to measure; add them with --variants")
        measure_int8(args.models, names, audio_set(args.calibration, manifest.sample_rate, args.calibration_labels))
        return 0
    add_int8_variants(args.models, calibration=args.calibration, variants=args.variants)
    return 0


# ------------------------------------------------------------------------------------ any spec folder
def add_int8_variants_spec(folder: str | Path, audio, *, variant: str = "int8", mean_dp_bar: float | None = None,
                           classes: Sequence[str] = INT8_CHECK_CLASSES, progress=print) -> Manifest:
    """Add an INT8 variant to every model of a model folder (version 2, or version 1 through its spec):
    NNCF with the default export's recipe (:data:`INT8_RECIPES`, overflow fix) and the fields the folder sets
    in ``extra.precision_check.int8_recipe`` (:func:`folder_int8_settings`), calibrated on the folder's own
    front-end features of ``audio``'s calibration files (:class:`birdinfer.tools.precision.AudioSet`), then
    checked against f32 on the held-out files under each of ``classes`` this CPU can emulate
    (:func:`measure_int8`)."""
    import numpy as np
    import openvino as ov

    from birdinfer.tools.precision import audio_features, check_spec, update_variants

    from .verify import batches_of

    folder = Path(folder)
    manifest = Manifest.load(folder)
    recipe = replace(INT8_RECIPES[variant], **folder_int8_settings(folder, manifest)[1])
    spec = check_spec(folder)  # with the folder's check options (e.g. denser windows), as the checks see it
    calibration = audio_features(spec, audio.signals("calibration"), where=audio.describe("calibration"))
    core = ov.Core()
    files, updates = {}, {}
    for entry in spec.models:
        windows = np.concatenate([feats[entry.input].data for feats, _ in calibration]).astype(np.float32)
        batches = batches_of(windows, entry.batch_chunks or min(8, len(windows)))
        xml = f"{entry.name}.{variant}.xml"
        try:
            quantized = quantize_ir(core, folder / entry.variants["f32"].openvino, folder / xml, batches,
                                    float_ops=recipe.float_ops, overflow_fix=recipe.overflow_fix,
                                    float_names=recipe.float_names, preset=recipe.preset)
        except Exception as e:  # noqa: BLE001 - NNCF raises many types; say which model
            raise ExportError(f"{folder}: model {entry.name!r}: INT8 quantization failed: {type(e).__name__}: {e}") from e
        if quantized == 0:
            raise ExportError(f"{folder}: model {entry.name!r}: NNCF produced no quantized operations")
        for name in (xml, xml[: -len(".xml")] + ".bin"):
            files[name] = sha256_file(folder / name)
        updates[entry.name] = {variant: {"openvino": xml, "verification": {
            "tool": f"nncf.quantize (overflow_fix={recipe.overflow_fix}, preset={recipe.preset})",
            "overflow_fix": recipe.overflow_fix, "preset": recipe.preset, "float_ops": list(recipe.float_ops),
            "float_names": list(recipe.float_names), "int8_config": recipe.config, "quantized_ops": quantized,
            "calibration": audio.describe("calibration"), "calibration_windows": int(len(windows)),
            "held_out": audio.describe("held_out")}}}
    update_variants(folder, updates, files)
    return measure_int8(folder, [variant], audio, mean_dp_bar=mean_dp_bar, classes=classes, progress=progress)


def measure_int8(folder: str | Path, variants: Sequence[str], audio, *, mean_dp_bar: float | None = None,
                 classes: Sequence[str] = INT8_CHECK_CLASSES, progress=print) -> Manifest:
    """The one INT8 validity rule, for every folder (an export's, an import's, an older folder re-measured):
    each named INT8 variant of every model checked against the model's f32 variant on ``audio``'s held-out
    files through the folder's own front end, under each of ``classes`` this CPU can emulate (a child process
    per class); ``cpu_classes`` lists the classes whose figures meet the bar (measured, or sharing a measured
    class's exact INT8 arithmetic), and nothing else. The bar: ``{"mean_abs_dp": INT8_MEAN_DP_BAR}``, or the
    folder's ``extra.precision_check.int8_bar`` (:data:`INT8_BAR_FIGURES`); ``mean_dp_bar`` replaces its mean
    |Δp| term. With labelled held-out audio (``audio.labels``) the label-free mean |Δp| term gives way to
    ΔAUC: ``delta_auc >= -DELTA_AUC_BAR`` (the folder's own terms stay). The figures per class and the bar are
    recorded beside it. A folder naming a faster front end (``extra.precision_check.int8_frontend``) has the
    variant measured with it first and recorded with ``frontend`` where that loses no class
    (:mod:`birdinfer_export.frontend_check`)."""
    from birdinfer.tools.held_out_labels import DELTA_AUC_BAR
    from birdinfer.tools.precision import update_variants

    folder = Path(folder)
    own = folder_int8_settings(folder)[0]
    bar = dict(own or ({} if audio.labels else {"mean_abs_dp": INT8_MEAN_DP_BAR}))
    if audio.labels:
        bar["delta_auc"] = -DELTA_AUC_BAR
    if mean_dp_bar is not None:
        bar["mean_abs_dp"] = float(mean_dp_bar)
    updates: dict[str, dict[str, dict]] = {}
    candidate = folder_frontend(folder, Manifest.load(folder))  # a faster front end to validate the variant with
    for variant in variants:
        checks, fronts = checks_with_frontend(lambda frontend: _check_classes(folder, variant, audio, classes, frontend),
                                              lambda per_class: _valid_classes(per_class, bar), candidate, progress,
                                              variant)
        entries = {m.name: m for m in Manifest.load(folder).models}
        for name, per_class in checks.items():
            valid = _valid_classes(per_class, bar)
            stored = entries[name].variants[variant]
            front = fronts.get(name, {})
            verification = {**dict(stored.verification), "per_class": per_class, "bar": bar,
                            **({"frontend_check": front["frontend_check"]} if front else {}),
                            "held_out": audio.describe("held_out"),
                            "cpu_classes_evidence": "measured per class at write time (the bar's figures of the "
                            "model's rows vs f32 under the same class" + (", ΔAUC on the labelled held-out files"
                                                                           if audio.labels else "") +
                            "; exact-INT8 classes share the measured exact class's arithmetic)"}
            updates.setdefault(name, {})[variant] = {"cpu_classes": valid, "verification": verification,
                                                      **({"frontend": front["frontend"]} if front else {})}
            if progress:
                progress(f"{name} ({variant}): {'; '.join(_figures(c, f) for c, f in per_class.items())}; valid on "
                         f"{', '.join(valid) or 'no class'} (bar {_bar_text(bar)})"
                         + (f"; front end: {_front_text(front)}" if front else ""))
    return update_variants(folder, updates)


def _figures(cpu_class: str, f: Mapping) -> str:
    def share(key: str, count: str) -> str:
        return "n/a" if f.get(key) is None else f"{f[key]:.4f} of {f.get(count)}"

    auc = "" if f.get("delta_auc") is None else (f" AUC {f['auc']:.4f} vs f32 {f['auc_f32']:.4f} (Δ {f['delta_auc']:+.4f}, "
                                                 f"{f['scored_classes']} classes)")
    return (f"{cpu_class} mean|Δp| {f['mean_abs_dp']:.2g} max {f['max_abs_dp']:.3f} top-1 {f.get('top1_agreement', 0):.4f} "
            f"(confident {share('top1_agreement_confident', 'confident_windows')}, decided "
            f"{share('top1_agreement_decided', 'decided_windows')}){auc} ×{f['speedup_vs_f32']:.2f} speed")


def _bar_text(bar: Mapping[str, float]) -> str:
    return ", ".join(f"{k} {'<=' if INT8_BAR_FIGURES[k] == 'max' else '>='} {v:g}" for k, v in bar.items())


def _front_text(front: Mapping) -> str:
    check = front["frontend_check"]
    return (f"{describe_frontend(check['candidate'])} recorded" if front["frontend"] else
            f"the feature's own ({describe_frontend(check['candidate'])} loses a class: not recorded)")


def _check_classes(folder: Path, variant: str, audio, classes: Sequence[str],
                   frontend: Mapping | None = None) -> dict[str, dict[str, dict]]:
    """``{model: {class: figures}}``: the INT8 check run in a child process per emulable class (``frontend``: the
    variant's features computed with that record, :func:`birdinfer.tools.precision.measure_variants`)."""
    from birdinfer.runtime.cpu import emulation_problem, run_in_cpu_class

    out: dict[str, dict[str, dict]] = {}
    here = _effective_class()
    if here is not None and here not in classes:  # this process runs under a cap: its class is checked too
        classes = (*classes, here)
    for cpu_class in classes:
        if emulation_problem(cpu_class) is not None:
            continue  # this CPU cannot emulate it: not measured, not listed
        result = run_in_cpu_class(cpu_class, "birdinfer.tools.precision:measure_variants",
                                  {"folder": str(folder), "variant": variant, "audio": audio.to_dict(), "hint": "f32",
                                   **({"frontend": dict(frontend)} if frontend else {})})
        for model, figures in result.items():
            out.setdefault(model, {})[figures["cpu_class"]] = figures
    return out


def _effective_class() -> str | None:
    """This process's CPU class when a cap masks the real CPU (``native`` in a child is the unmasked CPU)."""
    from birdinfer.runtime.cpu import effective_isa

    isa = effective_isa()
    return isa.cpu_class if isa.masked else None


def meets_bar(figures: Mapping, bar: Mapping[str, float]) -> bool:
    """Whether one class's figures meet every term of ``bar`` (:data:`INT8_BAR_FIGURES`); a figure that could
    not be measured (``None``, e.g. no confident window) does not."""
    for name, limit in bar.items():
        value = figures.get(name)
        if value is None or (value > limit if INT8_BAR_FIGURES[name] == "max" else value < limit):
            return False
    return True


def folder_int8_settings(folder: str | Path, manifest: Manifest | None = None) -> tuple[dict[str, float] | None, dict]:
    """The folder's own INT8 bar and recipe fields from ``extra.precision_check`` (``int8_bar``: figure → limit;
    ``int8_recipe``: ``overflow_fix``, ``float_ops``, ``float_names``, ``preset``), checked; ``(None, {})``
    when it sets none. :class:`ParameterError` naming the folder and the field for a bad value."""
    manifest = manifest or Manifest.load(folder)
    check = manifest.extra.get("precision_check") or {}
    bar, recipe = check.get("int8_bar"), dict(check.get("int8_recipe") or {})
    where = f"{folder}: extra.precision_check"
    if bar is not None:
        if not isinstance(bar, Mapping) or not bar or any(k not in INT8_BAR_FIGURES for k in bar) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in bar.values()):
            raise ParameterError(f"{where}.int8_bar {bar!r}: give figure → number for figures of {sorted(INT8_BAR_FIGURES)}")
        bar = {k: float(v) for k, v in bar.items()}
    unknown = sorted(set(recipe) - {"overflow_fix", "float_ops", "float_names", "preset"})
    if unknown or recipe.get("overflow_fix", "enable") not in OVERFLOW_FIXES or recipe.get("preset", "mixed") not in PRESETS:
        raise ParameterError(f"{where}.int8_recipe {recipe!r}: fields overflow_fix {OVERFLOW_FIXES}, preset {PRESETS}, "
                             "float_ops (op types), float_names (regular expressions of node names)")
    for key in ("float_ops", "float_names"):
        if key in recipe:
            if not isinstance(recipe[key], list) or not all(isinstance(v, str) for v in recipe[key]):
                raise ParameterError(f"{where}.int8_recipe.{key} {recipe[key]!r}: give a list of strings")
            recipe[key] = tuple(recipe[key])
    return bar, recipe


def _valid_classes(per_class: Mapping[str, Mapping], bar: Mapping[str, float]) -> list[str]:
    ok = {c for c, f in per_class.items() if meets_bar(f, bar)}
    exact_ok = any(c in _EXACT for c in ok)
    return [c for c in _INT8_CLASSES if c in ok or (c not in per_class and c in _EXACT and exact_ok)]


def record_precision(folder: str | Path, *, calibration: str | Path | None = None, int8: bool = False,
                     measure_int8_variants: Sequence[str] = (), measure_bf16: bool = True, progress=print,
                     calibration_labels: str | Path | None = None) -> Manifest:
    """At write time (``birdinfer import`` / ``export``): INT8 variants for a spec folder when ``int8`` (or,
    for INT8 variants already written, ``measure_int8_variants``: their classes measured by :func:`measure_int8`),
    then every variant's bf16 record (:func:`birdinfer.tools.precision.record_bf16`) on the same calibration audio.
    ``calibration_labels``: the calibration soundscapes' solution CSV (INT8 judged by ΔAUC, :func:`measure_int8`)."""
    from birdinfer.tools.precision import audio_set, record_bf16

    manifest = Manifest.load(folder)
    audio = audio_set(calibration, manifest.sample_rate, calibration_labels)
    if int8:
        add_int8_variants_spec(folder, audio, progress=progress)
    if measure_int8_variants:
        measure_int8(folder, list(measure_int8_variants), audio, progress=progress)
    return record_bf16(folder, audio, progress=progress) if measure_bf16 else Manifest.load(folder)


if __name__ == "__main__":
    raise SystemExit(main())
