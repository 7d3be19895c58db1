"""Build the 16-model random-weight ensemble of the 4th-place recipe as one model folder (f32 + INT8).

The input of ``compare_reference.py`` and ``birdinfer bench`` for issue 5: reference-format checkpoints of
all 16 recipe models (206 classes, realistic bn0 statistics, seed = recipe index as in ``export_all.py``),
exported with ``precision="int8"`` (the f32 IR and an NNCF INT8 IR per model) into ``OUT/models``, with
verification and INT8 calibration on synthetic 60 s soundscapes written to ``OUT/calibration``.

    python benchmarks/build_random_ensemble.py --out E [--precision f32] [--models STEM ...]
        [--keep-depthwise --models-out models_dw]

Takes ~20-40 min on 2 cores (export + parity checks + INT8 calibration of 16 models).
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

N_CLASSES = 206


def main(argv: list[str] | None = None) -> int:
    from birdinfer.tools.synth import make_dataset
    from birdinfer_export import DEPTHWISE_OPS, export_models, load_recipe, random_checkpoint

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--precision", default="int8", choices=["f32", "int8"])
    parser.add_argument("--keep-depthwise", action="store_true", help="INT8 with depthwise convolutions left in float")
    parser.add_argument("--models-out", default="models", help="model folder name under OUT (default models)")
    parser.add_argument("--models", nargs="+", default=None, metavar="STEM", help="only these recipe models")
    parser.add_argument("--soundscapes", type=int, default=8, help="synthetic 60 s soundscapes for verification / calibration")
    parser.add_argument("--add-int8", nargs="*", default=None, metavar="VARIANT[=CONFIG]",
                        help="only add INT8 variants to the existing OUT/MODELS_OUT f32 folder (no re-export): variant "
                             "names of the default set (no value: all of them), or variant=config with a config of "
                             "birdinfer_export.quantize.INT8_CONFIGS")
    args = parser.parse_args(argv)
    if args.add_int8 is not None:
        return _add_int8(args)

    recipe = load_recipe()
    specs = [recipe.model(name) for name in args.models] if args.models else list(recipe.models)
    checkpoints = args.out / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for seed, spec in enumerate(recipe.models):
        if spec in specs and not (checkpoints / spec.checkpoint).is_file():
            random_checkpoint(spec.arch, recipe.group(spec.group).n_mels, N_CLASSES, checkpoints / spec.checkpoint,
                              seed=seed, group=recipe.group(spec.group))
    print(f"checkpoints: {time.perf_counter() - start:.1f} s", flush=True)

    calibration = args.out / "calibration"
    if not (calibration / "train_soundscapes").is_dir():
        make_dataset(calibration, species=6, recordings_per_species=1, soundscapes=2 * args.soundscapes, seed=0)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no taxonomy: generic class labels, expected for random weights
        export_models(checkpoints, args.out / args.models_out, recipe=recipe, models=[s.name for s in specs],
                      precision=args.precision, calibration=calibration / "train_soundscapes", progress=True,
                      int8_float_ops=DEPTHWISE_OPS if args.keep_depthwise else ())
    print(f"export ({args.precision}) of {len(specs)} models: {time.perf_counter() - start:.1f} s -> {args.out / args.models_out}")
    return 0


def _add_int8(args) -> int:
    from birdinfer_export.quantize import DEFAULT_INT8_VARIANTS, INT8_RECIPES, recipe_of
    from birdinfer_export.variants import add_int8_variants

    recipes = {}
    for item in args.add_int8 or DEFAULT_INT8_VARIANTS:
        name, _, config = item.partition("=")
        recipes[name] = recipe_of(config) if config else INT8_RECIPES[name]
    start = time.perf_counter()
    add_int8_variants(args.out / args.models_out, calibration=args.out / "calibration" / "train_soundscapes", variants=recipes)
    print(f"added {sorted(recipes)} to {args.out / args.models_out}: {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
