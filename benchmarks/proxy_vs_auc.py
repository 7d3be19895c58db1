"""Do label-free figures track ΔAUC? INT8 against f32 on trained models, several seeds, configurations, classes.

Input: output folders of ``benchmarks/precision_accuracy.py`` (one per training seed, each with several INT8
configurations scored per CPU class). For every (seed, CPU class, INT8 configuration) it collects:

* ``ΔAUC``: macro ROC-AUC of ``--precision int8`` minus f32's under the same class, on the labelled test
  soundscapes (what the bar is about: ΔAUC ≥ −0.002);
* label-free figures a user can compute without labels:
  - ``write mean|Δp|``: the write-time check (the folder's ``verification.per_class`` of each INT8 variant: mean
    |Δp| of the model's rows against f32 on held-out *train* soundscapes, mean over models) — what
    ``cpu_classes`` is decided on;
  - ``test mean|Δp|``: the same figure on the test rows of the ensemble;
  - ``soft ΔAUC``: ΔAUC with f32's own probabilities as soft labels (pairs (i, j) weighted q_i (1 − q_j)),
    macro over classes — an estimate of ΔAUC in AUC units that needs no labels;
  - ``soft flips``: the q-weighted fraction of window pairs whose order INT8 reverses (an upper-bound-like
    figure: ΔAUC of a class cannot exceed the fraction of its positive/negative pairs that flip).

Printed: the table, Spearman correlations of each label-free figure with ΔAUC, and how often a bar on each
figure agrees with the ΔAUC bar.

    python benchmarks/proxy_vs_auc.py D5 D7 D11 [--json OUT]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

BAR = 0.002


def _probs(csv: str) -> np.ndarray:
    import pandas as pd

    return pd.read_csv(csv).drop(columns="row_id").to_numpy(np.float64)


def soft_auc(scores: np.ndarray, soft: np.ndarray) -> float:
    """ROC-AUC of ``scores`` against soft labels: pairs (i, j) weighted ``soft_i (1 - soft_j)``, ties half."""
    w_pos, w_neg = soft, 1.0 - soft
    diff = scores[:, None] - scores[None, :]
    order = (diff > 0) + 0.5 * (diff == 0)
    weights = w_pos[:, None] * w_neg[None, :]
    np.fill_diagonal(weights, 0.0)
    return float((weights * order).sum() / weights.sum())


def soft_flips(a: np.ndarray, b: np.ndarray, soft: np.ndarray) -> float:
    """Weighted fraction of pairs whose order differs between ``a`` and ``b`` (weights as :func:`soft_auc`)."""
    flipped = np.sign(a[:, None] - a[None, :]) != np.sign(b[:, None] - b[None, :])
    weights = soft[:, None] * (1.0 - soft[None, :])
    np.fill_diagonal(weights, 0.0)
    return float((weights * flipped).sum() / weights.sum())


def label_free(f32: np.ndarray, other: np.ndarray) -> dict:
    cols = range(f32.shape[1])
    return {
        "test_mean_dp": float(np.abs(other - f32).mean()),
        "soft_dauc": float(np.mean([soft_auc(other[:, c], f32[:, c]) - soft_auc(f32[:, c], f32[:, c]) for c in cols])),
        "soft_flips": float(np.mean([soft_flips(f32[:, c], other[:, c], f32[:, c]) for c in cols])),
    }


def write_time_dp(folder: str, cpu_class: str) -> float | None:
    data = json.loads((Path(folder) / "manifest.json").read_text())
    figures = [m["variants"]["int8"].get("verification", {}).get("per_class", {}).get(cpu_class, {}).get("mean_abs_dp")
               for m in data["models"] if "int8" in m["variants"]]
    figures = [f for f in figures if f is not None]
    return float(np.mean(figures)) if figures else None


def collect(out_dir: Path) -> list[dict]:
    result = json.loads((out_dir / "precision_accuracy.json").read_text())
    seed = result["demo"].get("settings", {}).get("seed", out_dir.name)
    rows = []
    for _, res in result["classes"].items():
        cpu_class = res["isa"]["class"]
        base = next(r for r in res["runs"] if r["precision"] == "f32")
        f32 = _probs(base["csv"])
        for r in res["runs"]:
            if r["precision"] != "int8":
                continue
            rows.append({"seed": seed, "class": cpu_class, "config": r["config"], "dauc": r["delta_auc"],
                         "write_mean_dp": write_time_dp(result["folders"][r["config"]], cpu_class),
                         "windows": r["rows"], **label_free(f32, _probs(r["csv"]))})
    return rows


def spearman(x, y) -> float:
    from scipy.stats import spearmanr

    ok = [(a, b) for a, b in zip(x, y) if a is not None and b is not None]
    return float(spearmanr([a for a, _ in ok], [b for _, b in ok]).statistic) if len(ok) > 2 else float("nan")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("outs", nargs="+", type=Path)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    rows = [row for out in args.outs for row in collect(out)]
    print("| seed | CPU class | INT8 config | windows | ΔAUC | write mean|Δp| | test mean|Δp| | soft ΔAUC | soft flips |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        w = "—" if r["write_mean_dp"] is None else f"{r['write_mean_dp']:.4f}"
        print(f"| {r['seed']} | {r['class']} | {r['config']} | {r['windows']} | {r['dauc']:+.4f} | {w} | "
              f"{r['test_mean_dp']:.4f} | {r['soft_dauc']:+.4f} | {r['soft_flips']:.4f} |")
    dauc = [r["dauc"] for r in rows]
    loss = [-d for d in dauc]
    print(f"\n{len(rows)} (seed, class, configuration) cases; ΔAUC from {min(dauc):+.4f} to {max(dauc):+.4f}")
    print("Spearman with the AUC loss (−ΔAUC; positive = the figure grows as AUC drops):")
    for key in ("write_mean_dp", "test_mean_dp", "soft_flips"):
        print(f"- {key}: {spearman([r[key] for r in rows], loss):+.3f} (with |ΔAUC|: "
              f"{spearman([r[key] for r in rows], [abs(d) for d in dauc]):+.3f})")
    print(f"- soft_dauc (against ΔAUC itself): {spearman([r['soft_dauc'] for r in rows], dauc):+.3f}")
    within = [d >= -BAR for d in dauc]
    print(f"ΔAUC ≥ −{BAR}: {sum(within)} of {len(rows)} cases")
    for key, bar in (("write_mean_dp", 0.0125), ("test_mean_dp", 0.0125)):
        decided = [None if r[key] is None else r[key] <= bar for r in rows]
        agree = sum(d == w for d, w in zip(decided, within) if d is not None)
        false_ok = sum(1 for d, w in zip(decided, within) if d and not w)
        print(f"bar {key} ≤ {bar}: agrees with the ΔAUC bar in {agree} of {sum(d is not None for d in decided)} cases; "
              f"passes {false_ok} case(s) the ΔAUC bar fails")
    decided = [r["soft_dauc"] >= -BAR for r in rows]
    agree = sum(d == w for d, w in zip(decided, within))
    false_ok = sum(1 for d, w in zip(decided, within) if d and not w)
    print(f"bar soft ΔAUC ≥ −{BAR}: agrees in {agree} of {len(rows)} cases; passes {false_ok} case(s) the ΔAUC bar fails")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
