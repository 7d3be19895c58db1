"""Accuracy of bf16 / INT8 against f32 per CPU class, on models trained on synthetic data (bar: ΔAUC ≤ 0.002).

1. ``birdinfer_train.run_demo``: a synthetic BirdCLEF-format dataset, two small EfficientNet-family SED
   models (tinynet_e, the demo mel group) trained with the soft AUC loss, exported f32 with parity checks.
2. The same checkpoints exported with ``precision="int8"`` once per INT8 configuration (``--int8-configs``:
   NNCF options; ``default`` is what ``birdinfer export --precision int8`` ships), calibrated on the dataset's
   *train* soundscapes, which are disjoint from the scored test soundscapes.
3. For each CPU class (``--cpu-class``: ``native``, ``avx512`` = Kaggle's Skylake-SP class, ``avx2``; a child
   process with ``ONEDNN_MAX_CPU_ISA`` set before OpenVINO loads, see :mod:`birdinfer.runtime.cpu`):
   ``make_submission`` on the test soundscapes at each precision (``int8``/``fast`` once per configuration),
   scored with ``birdinfer.tools.metric.score_files`` against ``test_solution.csv``.

Printed: per class, macro ROC-AUC per precision / configuration, its difference to f32 under the same class,
max / mean absolute probability difference, and what OpenVINO actually ran. INT8 without VNNI (``avx512``,
``avx2``) can saturate int16 sums of u8×s8 products; the cap reproduces that arithmetic. The AUC of a few
hundred synthetic windows has sampling noise of the order of the bar: the probability differences are
the sharper figure, and ``--soundscapes`` buys more windows (half of them are scored; 12 windows each).

    python benchmarks/precision_accuracy.py --out D --soundscapes 64 --cpu-class all \\
        [--int8-configs default nncf-default depthwise-float overflow-fix overflow-fix+depthwise-float] [--reuse-demo]
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np

#: INT8 configurations that can be measured (birdinfer_export.quantize.INT8_CONFIGS); ``default`` is the
#: shipped export (every variant of birdinfer_export.quantize.INT8_RECIPES).
CONFIGS = ("nncf-default", "depthwise-float", "overflow-fix", "overflow-fix+depthwise-float")
CLASSES = ("native", "avx512", "avx2")
BAR = 0.002


def score_class(data: str, folders: dict, precisions: list, out: str) -> dict:
    """Child side (runs under the class's cap): one submission per (precision, configuration), scored."""
    from birdinfer.runtime.cpu import effective_isa
    from birdinfer.tools.metric import score_files
    from birdinfer.jobs.submit import make_submission

    data, out = Path(data), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    isa = effective_isa()
    runs = []
    first = next(iter(folders.values()))
    for precision in precisions:
        targets = folders.items() if precision in ("int8", "fast") else [("-", first)]
        for config, folder in targets:
            path = out / f"submission_{precision}_{config}.csv"
            frame = make_submission(data / "test_soundscapes", folder, path, sample_submission=data / "sample_submission.csv",
                                    precision=precision, progress=False)
            runs.append({"precision": precision, "config": config, "ran": frame.attrs["birdinfer"]["precision"],
                         "auc": float(score_files(path, data / "test_solution.csv")), "csv": str(path), "rows": len(frame)})
    base = next(r for r in runs if r["precision"] == "f32")
    import pandas as pd

    f32 = pd.read_csv(base["csv"]).drop(columns="row_id").to_numpy(np.float64)
    for r in runs:
        p = pd.read_csv(r["csv"]).drop(columns="row_id").to_numpy(np.float64)
        r["delta_auc"] = r["auc"] - base["auc"]
        r["max_abs_prob_diff"] = float(np.max(np.abs(p - f32)))
        r["mean_abs_prob_diff"] = float(np.mean(np.abs(p - f32)))
    return {"isa": isa.to_dict(), "runs": runs}


def _export_configs(paths: dict, out: Path, configs: list, reuse: bool) -> dict:
    from birdinfer_export import export_models
    from birdinfer_export.quantize import recipe_of

    folders = {}
    for config in configs:
        folder = out / f"models_{config}"
        if not (reuse and (folder / "manifest.json").is_file()):
            options = {} if config == "default" else {"int8_variants": {"int8": recipe_of(config)}}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                export_models(paths["checkpoints"], folder, recipe=paths["recipe"], taxonomy=paths["data"] / "taxonomy.csv",
                              precision="int8", calibration=paths["data"] / "train_soundscapes", progress=False, **options)
        folders[config] = str(folder)
    return folders


def main(argv=None) -> int:
    from birdinfer.runtime.cpu import run_in_cpu_class
    from birdinfer_train import run_demo

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=None, help="default: the demo's")
    parser.add_argument("--soundscapes", type=int, default=16, help="half test (scored), half train (INT8 calibration)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--precisions", nargs="+", default=["f32", "auto", "int8", "fast"])
    parser.add_argument("--int8-configs", nargs="+", default=["default"], choices=["default", *CONFIGS])
    parser.add_argument("--cpu-class", nargs="+", default=["native"], choices=[*CLASSES, "all"],
                        help="CPU classes to score under (child process with ONEDNN_MAX_CPU_ISA set); all = native avx512 avx2")
    parser.add_argument("--reuse-demo", action="store_true", help="reuse OUT/demo (and exported folders) from an earlier run")
    parser.add_argument("--json", type=Path, default=None, help="default OUT/precision_accuracy.json")
    args = parser.parse_args(argv)
    classes = list(CLASSES) if "all" in args.cpu_class else list(dict.fromkeys(args.cpu_class))
    precisions = ["f32"] + [p for p in args.precisions if p != "f32"]

    start = time.perf_counter()
    options = {} if args.epochs is None else {"epochs": args.epochs}
    if args.reuse_demo and (args.out / "demo" / "demo.json").is_file():
        demo = json.loads((args.out / "demo" / "demo.json").read_text())
    else:
        demo = run_demo(args.out / "demo", seed=args.seed, soundscapes=args.soundscapes, progress=True, **options)
    paths = {k: Path(v) for k, v in demo["paths"].items()}
    print(f"demo ready in {time.perf_counter() - start:.0f} s; f32 AUC from the demo {demo['auc']:.4f}", flush=True)
    folders = _export_configs(paths, args.out, args.int8_configs, args.reuse_demo)
    print(f"INT8 exports ready ({', '.join(folders)}) at {time.perf_counter() - start:.0f} s", flush=True)

    results = {}
    for cpu_class in classes:
        results[cpu_class] = run_in_cpu_class(cpu_class, f"{Path(__file__).resolve()}:score_class", {
            "data": str(paths["data"]), "folders": folders, "precisions": precisions,
            "out": str(args.out / f"class_{cpu_class}")})
        print(f"{cpu_class}: scored at {time.perf_counter() - start:.0f} s", flush=True)

    any_run = next(iter(results.values()))["runs"][0]
    print(f"\n{any_run['rows']} windows of {paths['data'] / 'test_soundscapes'}; models trained {demo['settings']['epochs']} epochs; "
          f"ΔAUC = macro ROC-AUC − f32's under the same class; bar |ΔAUC| ≤ {BAR}")
    print("| CPU class | precision | INT8 config | OpenVINO ran | macro ROC-AUC | ΔAUC vs f32 | max |Δp| | mean |Δp| | bar |")
    print("|---|---|---|---|---|---|---|---|---|")
    for cpu_class, res in results.items():
        label = res["isa"]["class"] + ("" if cpu_class == "native" else f" (cap {res['isa']['cap']})")
        for r in res["runs"]:
            met = "—" if r["precision"] == "f32" else ("MET" if abs(r["delta_auc"]) <= BAR else "NOT MET")
            print(f"| {label} | {r['precision']} | {r['config']} | {r['ran']} | {r['auc']:.4f} | {r['delta_auc']:+.4f} | "
                  f"{r['max_abs_prob_diff']:.3f} | {r['mean_abs_prob_diff']:.4f} | {met} |")
    out_json = args.json or args.out / "precision_accuracy.json"
    out_json.write_text(json.dumps({"classes": results, "folders": folders, "demo": demo}, indent=2, default=str) + "\n")
    print(f"\ntotal {time.perf_counter() - start:.0f} s; figures in {out_json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
