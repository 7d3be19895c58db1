"""Accuracy of bf16 / INT8 against f32 on models trained on synthetic data (issue 5; target |ΔAUC| ≤ 0.002).

1. ``birdinfer_train.run_demo``: a synthetic BirdCLEF-format dataset, two small EfficientNet-family SED
   models (tinynet_e, the demo mel group) trained with the soft AUC loss, exported f32 with parity checks.
2. The same checkpoints exported again with ``precision="int8"`` (NNCF, calibrated on the dataset's
   *train* soundscapes, which are disjoint from the scored test soundscapes).
3. ``make_submission`` on the test soundscapes at f32, auto (OpenVINO's default: bf16 where native), bf16
   and int8; each scored with ``birdinfer.metric.score_files`` against ``test_solution.csv``.

Printed: macro ROC-AUC per precision, its difference to f32, max / mean absolute probability difference,
and the precision OpenVINO actually ran. Note: a handful of synthetic test soundscapes gives an AUC whose
own sampling noise is larger than 0.002; the probability differences are the sharper figure.

    python benchmarks/precision_accuracy.py --out /tmp/precision_accuracy [--epochs N] [--soundscapes 16]
        [--int8-keep-depthwise] [--reuse-demo]
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from birdinfer.metric import score_files
from birdinfer.pipeline import make_submission


def main(argv=None) -> int:
    from birdinfer_export import DEPTHWISE_OPS, export_models
    from birdinfer_train import run_demo

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=None, help="default: the demo's")
    parser.add_argument("--soundscapes", type=int, default=16, help="half test (scored), half train (INT8 calibration)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--precisions", nargs="+", default=["f32", "auto", "bf16", "int8"])
    parser.add_argument("--int8-keep-depthwise", action="store_true", help="INT8 with depthwise convolutions left in float")
    parser.add_argument("--reuse-demo", action="store_true", help="reuse OUT/demo from an earlier run instead of training again")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    options = {} if args.epochs is None else {"epochs": args.epochs}
    if args.reuse_demo and (args.out / "demo" / "demo.json").is_file():
        demo = json.loads((args.out / "demo" / "demo.json").read_text())
    else:
        demo = run_demo(args.out / "demo", seed=args.seed, soundscapes=args.soundscapes, progress=True, **options)
    paths = {k: Path(v) for k, v in demo["paths"].items()}
    data = paths["data"]
    print(f"demo done in {time.perf_counter() - start:.0f} s; f32 AUC from the demo {demo['auc']:.4f}", flush=True)

    models = args.out / ("models_int8_dw" if args.int8_keep_depthwise else "models_int8")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        manifest = export_models(paths["checkpoints"], models, recipe=paths["recipe"], taxonomy=data / "taxonomy.csv",
                                 precision="int8", calibration=data / "train_soundscapes", progress=True,
                                 int8_float_ops=DEPTHWISE_OPS if args.int8_keep_depthwise else ())
    for m in manifest.models:
        q = m.variants["int8"].verification
        print(f"{m.name}: INT8 held-out max|Δp| {q['max_abs_prob_diff']:.4f}, mean {q['mean_abs_prob_diff']:.5f}", flush=True)

    rows, frames = [], {}
    for precision in args.precisions:
        out = args.out / f"submission_{precision}.csv"
        frame = make_submission(data / "test_soundscapes", models, out, sample_submission=data / "sample_submission.csv",
                                precision=precision, progress=False)
        frames[precision] = frame
        rows.append({"precision": precision, "ran": frame.attrs["birdinfer"]["precision"], "auc": score_files(out, data / "test_solution.csv")})
    base = frames["f32"].drop(columns="row_id").to_numpy(np.float64) if "f32" in frames else None
    f32_auc = next((r["auc"] for r in rows if r["precision"] == "f32"), None)
    print(f"\n{len(frames[args.precisions[0]])} rows of {data / 'test_soundscapes'}; models trained {demo['settings']['epochs']} epochs")
    print("| precision | OpenVINO ran | macro ROC-AUC | ΔAUC vs f32 | max |Δp| vs f32 | mean |Δp| vs f32 | target |ΔAUC| ≤ 0.002 |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        p = frames[r["precision"]].drop(columns="row_id").to_numpy(np.float64)
        r["delta_auc"] = None if f32_auc is None else r["auc"] - f32_auc
        r["max_abs_prob_diff"] = None if base is None else float(np.max(np.abs(p - base)))
        r["mean_abs_prob_diff"] = None if base is None else float(np.mean(np.abs(p - base)))
        met = "—" if r["precision"] == "f32" or r["delta_auc"] is None else ("MET" if abs(r["delta_auc"]) <= 0.002 else "NOT MET")
        print(f"| {r['precision']} | {r['ran']} | {r['auc']:.4f} | {r['delta_auc']:+.4f} | {r['max_abs_prob_diff']:.2e} | "
              f"{r['mean_abs_prob_diff']:.2e} | {met} |")
    (args.out / ("precision_accuracy_dw.json" if args.int8_keep_depthwise else "precision_accuracy.json")).write_text(json.dumps({"rows": rows, "demo": demo}, indent=2, default=str) + "\n")
    print(f"\ntotal {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
