"""Export and verify all 16 architectures of the 4th-place recipe from random-weight checkpoints.

Writes reference-format checkpoints (206 classes, realistic bn0 statistics) to a temporary folder, exports
each model into its own model folder (so one failure does not hide the others), and prints per model: the
export time (ONNX + IR + verification), the recorded parity figures (max abs logit difference of ONNX
Runtime and OpenVINO f32 vs torch) and the IR size. With ``--precision int8`` the INT8 deviation too.

    python benchmarks/export_all.py [--precision int8] [--models STEM ...] [--calibration AUDIO_DIR] [--workdir PARENT_DIR]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

from birdinfer_export import export_models, load_recipe, random_checkpoint
from birdinfer_export.convert import tool_versions

N_CLASSES = 206


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--precision", default="f32", choices=["f32", "int8"])
    parser.add_argument("--models", nargs="+", default=None, metavar="STEM", help="only these recipe models")
    parser.add_argument("--calibration", type=Path, default=None, help="soundscapes for verification / INT8 calibration")
    parser.add_argument("--workdir", type=Path, default=None, help="parent folder for the temporary work folder (default: system temp)")
    args = parser.parse_args(argv)

    recipe = load_recipe()
    specs = [recipe.model(name) for name in args.models] if args.models else list(recipe.models)
    print("versions:", {k: v for k, v in tool_versions().items() if v})
    with tempfile.TemporaryDirectory(prefix="export_all_", dir=args.workdir) as tmp:
        root = Path(tmp)
        checkpoints = root / "checkpoints"
        checkpoints.mkdir(parents=True, exist_ok=True)
        rows = []
        total_start = time.perf_counter()
        for seed, spec in enumerate(specs):
            start = time.perf_counter()
            group = recipe.group(spec.group)
            random_checkpoint(spec.arch, group.n_mels, N_CLASSES, checkpoints / spec.checkpoint, seed=seed, group=group)
            checkpoint_seconds = time.perf_counter() - start
            start = time.perf_counter()
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # no taxonomy: generic labels, expected here
                    manifest = export_models(checkpoints, root / "models" / spec.name, recipe=recipe, models=[spec.name],
                                             precision=args.precision, calibration=args.calibration, progress=False)
            except Exception as e:  # noqa: BLE001 - a benchmark reports every model's outcome
                rows.append((spec, checkpoint_seconds, time.perf_counter() - start, None, f"{type(e).__name__}: {e}"))
                print(f"{spec.name}: FAILED {type(e).__name__}: {e}", flush=True)
                continue
            entry = manifest.models[0]
            # measured now: the work folder is deleted when the loop ends
            ir_bytes = sum(manifest.path_of(n).stat().st_size for n in (entry.variants["f32"].openvino, entry.variants["f32"].openvino_bin))
            rows.append((spec, checkpoint_seconds, time.perf_counter() - start, (entry, ir_bytes), None))
            print(f"{spec.name}: done in {rows[-1][2]:.1f} s", flush=True)
        total = time.perf_counter() - total_start

    print()
    header = ("| # | model | arch | group | ckpt s | export s | ORT max abs Δlogit | OV f32 max abs Δlogit | logit std | IR MB |"
              + (" INT8 max abs Δp | INT8 mean abs Δp | Spearman | top-1 | INT8 compile |" if args.precision == "int8" else ""))
    print(header)
    print("|" + "---|" * (header.count(" | ") + 1))
    failures = 0
    for i, (spec, ck_s, ex_s, result, error) in enumerate(rows, 1):
        if result is None:
            failures += 1
            print(f"| {i} | {spec.name} | {spec.arch} | {spec.group} | {ck_s:.1f} | {ex_s:.1f} | FAILED: {error[:200]} |")
            continue
        entry, ir_bytes = result
        v = entry.variants["f32"].verification
        line = (f"| {i} | {spec.name} | {spec.arch} | {spec.group} | {ck_s:.1f} | {ex_s:.1f} | "
                f"{v['max_abs_logit_diff_onnxruntime']:.2e} | {v['max_abs_logit_diff_openvino']:.2e} | {v['logit_std']:.3f} | "
                f"{ir_bytes / 1e6:.1f} |")
        if args.precision == "int8":
            q = entry.variants["int8"].verification
            line += (f" {q['max_abs_prob_diff']:.4f} | {q['mean_abs_prob_diff']:.5f} | {q['rank_agreement_spearman']:.4f} | "
                     f"{q['top1_agreement']:.3f} | {q['compiled_precision']}{' (f32 retry)' if q['default_compile_error'] else ''} |")
        print(line)
    print(f"\n{len(rows) - failures}/{len(rows)} exported and verified (tolerance 1e-4 max abs logit) in {total:.0f} s total")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
