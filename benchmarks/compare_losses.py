"""Soft AUC vs BCE (and the hard AUC loss), with and without one pseudo-label round, on synthetic data.

    python benchmarks/compare_losses.py --out /tmp/compare_losses [--seeds 0 1 2] [--losses soft-auc bce]

For each loss and seed, one ``birdinfer_train.run_demo`` with ``pseudo_rounds=1`` and the demo's other
defaults (the same dataset, models, epochs and augmentation for every loss at a given seed): the round-0
models ("teachers", trained on the focal recordings only) are exported, scored on the test soundscapes
and label the unlabelled ``train_soundscapes``; the students are trained from scratch with those soft
labels added and scored on the same test soundscapes. Every score is the runtime's ``submission.csv``
against ``test_solution.csv`` (macro ROC-AUC, the competition metric). Prints a table per seed and the
mean, and writes ``results.json``. Takes ~6-8 min per loss and seed on 2 cores (two trainings).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    from birdinfer_train import run_demo

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("compare_losses"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--losses", nargs="+", default=["soft-auc", "bce"])
    parser.add_argument("--epochs", type=int, default=None, help="default: the demo's")
    args = parser.parse_args(argv)

    options = {} if args.epochs is None else {"epochs": args.epochs}
    results = []
    for seed in args.seeds:
        for loss in args.losses:
            result = run_demo(args.out / f"{loss}_s{seed}", seed=seed, loss=loss, pseudo_rounds=1, progress=False, **options)
            teacher, student = result["auc_by_round"]
            results.append({"loss": loss, "seed": seed, "auc": teacher, "auc_pseudo": student,
                            "seconds": result["seconds"], "settings": result["settings"]})
            print(json.dumps({k: results[-1][k] for k in ("loss", "seed", "auc", "auc_pseudo")}), flush=True)
            (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")

    settings = results[0]["settings"]
    print(f"\nmacro ROC-AUC on the test soundscapes; {settings['models'][0]['arch']} x {len(settings['models'])}, "
          f"{settings['epochs']} epochs, {settings['recordings_per_species']} recordings x {settings['species']} species, "
          f"seeds {args.seeds}")
    print("| loss | seed | focal recordings only | + 1 pseudo-label round | difference |")
    print("|---|---|---|---|---|")
    for r in results:
        print(f"| {r['loss']} | {r['seed']} | {r['auc']:.4f} | {r['auc_pseudo']:.4f} | {r['auc_pseudo'] - r['auc']:+.4f} |")
    for loss in args.losses:
        rows = [r for r in results if r["loss"] == loss]
        base, pseudo = np.mean([r["auc"] for r in rows]), np.mean([r["auc_pseudo"] for r in rows])
        print(f"| {loss} | mean | {base:.4f} | {pseudo:.4f} | {pseudo - base:+.4f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
