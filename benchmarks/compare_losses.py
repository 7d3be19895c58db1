"""Soft AUC vs BCE, with and without one pseudo-label round, on synthetic data (same seeds).

    python benchmarks/compare_losses.py --out /tmp/compare_losses [--epochs 6] [--seeds 0 1] [--arch tinynet_e]

For each loss and seed: train on ``train_audio`` (first 10 s crops), score macro ROC-AUC on the test
soundscapes; then label ``train_soundscapes`` with that model (torch, 5 s windows, the runtime's window
rule — see birdinfer_train.evaluate), train again from scratch with those soft labels added, and score
again. Prints a table (mean over seeds) and writes ``results.json``. A small mel group keeps it CPU-sized.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from birdinfer.manifest import MelGroup
from birdinfer.synth import make_dataset
from birdinfer_train import train
from birdinfer_train.data import read_taxonomy
from birdinfer_train.evaluate import predict_soundscapes, score_checkpoint

TINY = MelGroup("tiny", n_fft=1024, hop_length=256, n_mels=64, fmin=60.0, fmax=16000.0, frames_per_window=64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("compare_losses"))
    parser.add_argument("--arch", default="tinynet_e")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--losses", nargs="+", default=["soft-auc", "bce"])
    parser.add_argument("--species", type=int, default=6)
    parser.add_argument("--recordings-per-species", type=int, default=8)
    parser.add_argument("--soundscapes", type=int, default=8)
    parser.add_argument("--min-class-samples", type=int, default=24)
    parser.add_argument("--lr", type=float, default=3e-3)
    args = parser.parse_args()

    data = args.out / "data"
    if not (data / "taxonomy.csv").is_file():
        make_dataset(data, species=args.species, recordings_per_species=args.recordings_per_species,
                     soundscapes=args.soundscapes, seed=1234, train_seconds=(10, 14))
    labels = read_taxonomy(data)
    common = dict(data=data, arch=args.arch, group=TINY, epochs=args.epochs, batch_size=16, lr=args.lr,
                  min_class_samples=args.min_class_samples, drop_rate=0.0, drop_path_rate=0.0, head_dropout=0.0,
                  mixup=False, progress=False, cache_dir=args.out / "cache")
    results = []
    for loss in args.losses:
        for seed in args.seeds:
            started = time.perf_counter()
            base = train(out=args.out / f"{loss}_s{seed}.pth", loss=loss, seed=seed, **common)
            base_auc = score_checkpoint(base, data, arch=args.arch, group=TINY)
            pseudo = predict_soundscapes(base, sorted((data / "train_soundscapes").glob("*.ogg")), arch=args.arch,
                                         group=TINY, labels=labels)
            pseudo_csv = args.out / f"{loss}_s{seed}.pseudo.csv"
            pseudo.to_csv(pseudo_csv, index=False)
            ssl = train(out=args.out / f"{loss}_s{seed}_ssl.pth", loss=loss, seed=seed, pseudo_labels=pseudo_csv, **common)
            ssl_auc = score_checkpoint(ssl, data, arch=args.arch, group=TINY)
            results.append({"loss": loss, "seed": seed, "auc": base_auc, "auc_pseudo": ssl_auc,
                            "seconds": round(time.perf_counter() - started, 1)})
            print(json.dumps(results[-1]), flush=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"\n{args.arch}, group tiny (64 mels, 64 columns / 5 s), {args.epochs} epochs, seeds {args.seeds}")
    print(f"{'loss':<10} {'test AUC':>9} {'+1 pseudo round':>16}")
    for loss in args.losses:
        rows = [r for r in results if r["loss"] == loss]
        print(f"{loss:<10} {np.mean([r['auc'] for r in rows]):>9.4f} {np.mean([r['auc_pseudo'] for r in rows]):>16.4f}")


if __name__ == "__main__":
    main()
