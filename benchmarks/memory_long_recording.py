"""Peak memory of ``birdinfer predict`` on a 60-minute recording vs a 60 s one, and vs the models alone.

Three child processes (so that each peak is its own), each reporting ``resource.getrusage`` ``ru_maxrss``:

1. ``load``: import birdinfer and load the model folder (Predictor) — the floor any run pays;
2. ``predict 60 s``: :func:`birdinfer.predict.predict` on a 60 s OGG;
3. ``predict 60 min``: the same on a 60-minute OGG (written in 10 s pieces: libsndfile's Vorbis encoder
   crashes on one huge write).

Recordings are decoded and processed in 60 s blocks, so (3) should stay within a few tens of MB of (2);
a whole-file decode of 60 min at 32 kHz alone would be 460 MB of float32 (plus its STFT temporaries).

Usage::

    python benchmarks/memory_long_recording.py [--models MODEL_DIR] [--minutes 60] [--work /tmp/birdinfer-mem]

Without ``--models`` a small real model folder (4 × tf_efficientnet_lite0 in the three reference mel
groups, random weights; needs torch + timm for the export) is built in the work folder first.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SR = 32000

_CHILD = r"""
import json, resource, sys, time
mode, models, audio, out = sys.argv[1:5]
start = time.perf_counter()
if mode == "load":
    from birdinfer.pipeline import Predictor
    Predictor(models, precision="f32")
else:
    from birdinfer.predict import predict
    predict([audio], models, out, precision="f32", resume=False, progress=False)
rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
print(json.dumps({"mode": mode, "peak_rss_mb": round(rss_mb, 1), "seconds": round(time.perf_counter() - start, 1)}))
"""


def build_small_model_folder(root: Path) -> Path:
    """4 × tf_efficientnet_lite0 (v1, v1, v2, v3), random weights, exported with birdinfer_export."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import N_CLASSES, SMALL_RECIPE, write_taxonomy  # the test suite's small ensemble
    from birdinfer_export import export_models
    from birdinfer_export.checkpoint import random_checkpoint

    out = root / "models"
    if (out / "manifest.json").is_file():
        return out
    checkpoints = root / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    groups = {g["name"]: g for g in SMALL_RECIPE["groups"]}
    for seed, model in enumerate(SMALL_RECIPE["models"]):
        random_checkpoint(model["arch"], groups[model["group"]]["n_mels"], N_CLASSES, checkpoints / model["checkpoint"], seed=seed)
    recipe = root / "recipe.json"
    recipe.write_text(json.dumps(SMALL_RECIPE))
    export_models(checkpoints, out, recipe=recipe, taxonomy=write_taxonomy(root / "taxonomy.csv"), progress=False)
    return out


def write_long_ogg(path: Path, seconds: float, seed: int = 0) -> Path:
    """Noise + random chirps, generated and written in 10 s pieces (bounded memory, no encoder crash)."""
    import soundfile as sf

    if path.is_file():
        return path
    rng = np.random.default_rng(seed)
    piece = 10 * SR
    t = np.arange(piece) / SR
    with sf.SoundFile(path, "w", samplerate=SR, channels=1, format="OGG", subtype="VORBIS") as f:
        remaining = int(round(seconds * SR))
        while remaining > 0:
            n = min(piece, remaining)
            y = 0.02 * rng.standard_normal(n)
            f0 = rng.uniform(1000, 8000)
            y += 0.2 * np.sin(2 * np.pi * f0 * t[:n]) * (t[:n] % 2.0 < 0.3)
            f.write(y.astype(np.float32))
            remaining -= n
    return path


def run_child(mode: str, models: Path, audio: Path, out: Path) -> dict:
    done = subprocess.run([sys.executable, "-c", _CHILD, mode, str(models), str(audio), str(out)],
                          check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=None)
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "birdinfer-mem")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    models = args.models or build_small_model_folder(args.work)
    t0 = time.perf_counter()
    short = write_long_ogg(args.work / "one_minute.ogg", 60.0, seed=1)
    long = write_long_ogg(args.work / f"long_{args.minutes:g}min.ogg", args.minutes * 60.0, seed=2)
    print(f"audio written in {time.perf_counter() - t0:.0f} s: {long} ({long.stat().st_size / 1e6:.1f} MB)")
    load = run_child("load", models, short, args.work / "unused.csv")
    one = run_child("predict", models, short, args.work / "one_minute.csv")
    big = run_child("predict", models, long, args.work / "long.csv")
    rows = sum(1 for _ in open(args.work / "long.csv")) - 1
    print(f"models: {models}")
    print(f"peak RSS, models loaded only:        {load['peak_rss_mb']:8.1f} MB ({load['seconds']} s)")
    print(f"peak RSS, predict 60 s recording:    {one['peak_rss_mb']:8.1f} MB ({one['seconds']} s)")
    print(f"peak RSS, predict {args.minutes:g} min recording: {big['peak_rss_mb']:8.1f} MB ({big['seconds']} s, {rows} rows)")
    print(f"long minus 60 s: {big['peak_rss_mb'] - one['peak_rss_mb']:+.1f} MB; long minus models only: "
          f"{big['peak_rss_mb'] - load['peak_rss_mb']:+.1f} MB; whole-file float32 decode alone would be "
          f"{args.minutes * 60 * SR * 4 / 2**20:.0f} MB")


if __name__ == "__main__":
    main()
