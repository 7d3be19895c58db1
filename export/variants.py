"""Add INT8 variants to a model folder that already holds verified f32 variants (no torch needed).

``export_models(..., precision="int8")`` writes the f32 and INT8 variants in one go. When the f32 export
exists (it is the slow part: ONNX export, parity checks in float64), :func:`add_int8_variants` quantizes
its f32 IRs with NNCF into the named variants, verifies each against f32 on held-out chunks exactly as
the export does, and rewrites the manifest (atomically, after every file exists).

    python -m birdinfer_export.variants MODELS --calibration SOUNDSCAPES [--variants int8 int8-compat]
"""

from __future__ import annotations

import argparse
import gc
from dataclasses import replace
from pathlib import Path
from typing import Mapping, Sequence

from birdinfer.errors import ParameterError
from birdinfer.manifest import VARIANT_PRECISIONS, Manifest, sha256_file

from .convert import F32_CONFIG, _export_int8, _report
from .quantize import DEFAULT_INT8_VARIANTS, INT8_RECIPES, Int8Recipe
from .verify import prepare_inputs

__all__ = ["add_int8_variants", "record_cpu_classes"]


class _Spec:  # the two fields _export_int8 reads from a recipe model
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
            new[name] = _export_int8(_Spec(entry.name, entry.arch), folder, entry.variants["f32"].openvino, f32_compiled,
                                     inputs, entry.group, chunks, core=core, recipe=recipe, variant=name)
            for file_name in new[name].file_names():
                files[file_name] = sha256_file(folder / file_name)
        entries.append(replace(entry, variants=new))
        _report(entries[-1], write=print if progress else (lambda _: None))
        del f32_compiled
        gc.collect()
    updated = replace(manifest, models=tuple(entries), files=files,
                      extra={**dict(manifest.extra), "precision": "int8", "int8_variants_added": sorted(recipes)})
    updated.validate()
    updated.save(folder)
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
    parser.add_argument("--variants", nargs="+", default=list(DEFAULT_INT8_VARIANTS), choices=sorted(INT8_RECIPES))
    args = parser.parse_args(argv)
    add_int8_variants(args.models, calibration=args.calibration, variants=args.variants)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
