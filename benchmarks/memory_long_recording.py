"""Peak memory of ``birdinfer predict`` on a 60-minute recording vs a 60 s one, and vs the models alone.

Child processes (so that each peak is its own), each reporting ``resource.getrusage`` ``ru_maxrss``:

1. ``load``: import birdinfer and load the model folder (Predictor) — the floor any run pays;
2. ``predict 60 s``: :func:`birdinfer.jobs.predict.predict` on a 60 s OGG;
3. ``predict 60 min``: the same on a 60-minute OGG (written in 10 s pieces: libsndfile's Vorbis encoder
   crashes on one huge write);
4. with ``--whole-minutes M``: the old whole-file execution (streaming switched off) on an M-minute OGG, to
   show what the streamed execution saves.

The default folder is a whole-file spec (``block_seconds: null``): the 2024 1st place's spec
(``weights/birdclef2024_1st.spec.json``: file-scope dB over all windows) with three of its classifiers
(2 × efficientnet_b0, 1 × regnety_008, all 182 labels) at random weights, built with
``birdinfer_export.solutions.build_solution`` (needs torch + timm) and ``birdinfer import``. Such a spec is
streamed (:mod:`birdinfer.runtime.streaming`): a statistics pass, then blocks with the whole-file result, so (3)
should stay within a few tens of MB of (2); a whole-file decode of 60 min at 32 kHz alone would be 460 MB
of float32, and its front end several GB. ``--spec birdclef2025_1st`` / ``birdclef2025_2nd`` build the
other shipped whole-file specs the same way (small tinynet_e networks); ``--models`` runs any folder.

Usage::

    python benchmarks/memory_long_recording.py [--spec birdclef2024_1st] [--models MODEL_DIR] [--minutes 60]
        [--whole-minutes 10] [--work /tmp/birdinfer-mem]
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
if mode == "whole":  # the old way: no streamed execution, the whole recording at once
    import birdinfer.runtime.streaming
    birdinfer.runtime.streaming.WholeFileStream.for_manifest = classmethod(lambda cls, manifest: None)
if mode == "load":
    from birdinfer.runtime.pipeline import Predictor
    Predictor(models, precision="f32")
else:
    from birdinfer.jobs.predict import predict
    predict([audio], models, out, precision="f32", resume=False, progress=False)
rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
print(json.dumps({"mode": mode, "peak_rss_mb": round(rss_mb, 1), "seconds": round(time.perf_counter() - start, 1)}))
"""


#: Models of each shipped spec kept for the benchmark, and the build overrides (see tests/test_solutions.py).
SPEC_BUILDS = {
    "birdclef2024_1st": {"models": ["80low_trainnolab_10sec_gr20sec_ep7oo7", "train80low_nolab_10sec_gr60sec_lr1e3_ep12",
                                    "regnety_10sec_gr60sec_fold0"]},
    "birdclef2025_1st": {"arch": "tinynet_e", "models": ["tf_efficientnet_b3_sl", "regnety_016_sl"]},
    "birdclef2025_2nd": {"arch": "tinynet_e", "folds": 2},
}


def build_spec_folder(root: Path, name: str) -> Path:
    """A shipped whole-file spec with random weights (torch + timm), imported into ``root/<name>/models``."""
    from birdinfer.tools.importer import import_folder
    from birdinfer_export.solutions import build_solution

    out = root / name / "models"
    if (out / "manifest.json").is_file():
        return out
    weights = Path(__file__).resolve().parents[1] / "weights"
    spec_path, _ = build_solution(weights / f"{name}.spec.json", root / name / "build", **SPEC_BUILDS[name])
    import_folder(spec_path, out)
    return out


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
    parser.add_argument("--models", type=Path, default=None, help="a model folder (default: --spec built here)")
    parser.add_argument("--spec", default="birdclef2024_1st", choices=sorted(SPEC_BUILDS) + ["v1"],
                        help="the whole-file spec to build (v1: the 4th place's small v1 folder)")
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--whole-minutes", type=float, default=0.0, help="also run the old whole-file way on a file this long")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "birdinfer-mem")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    if args.models is not None:
        models = args.models
    else:
        models = build_small_model_folder(args.work) if args.spec == "v1" else build_spec_folder(args.work, args.spec)
    t0 = time.perf_counter()
    short = write_long_ogg(args.work / "one_minute.ogg", 60.0, seed=1)
    long = write_long_ogg(args.work / f"long_{args.minutes:g}min.ogg", args.minutes * 60.0, seed=2)
    print(f"audio written in {time.perf_counter() - t0:.0f} s: {long} ({long.stat().st_size / 1e6:.1f} MB)")
    load = run_child("load", models, short, args.work / "unused.csv")
    one = run_child("predict", models, short, args.work / "one_minute.csv")
    one_whole = run_child("whole", models, short, args.work / "one_minute_whole.csv")
    big = run_child("predict", models, long, args.work / "long.csv")
    rows = sum(1 for _ in open(args.work / "long.csv")) - 1
    print(f"models: {models}")
    print(f"peak RSS, models loaded only:        {load['peak_rss_mb']:8.1f} MB ({load['seconds']} s)")
    print(f"peak RSS, predict 60 s recording:    {one['peak_rss_mb']:8.1f} MB ({one['seconds']} s)")
    print(f"peak RSS, predict 60 s, whole way:   {one_whole['peak_rss_mb']:8.1f} MB ({one_whole['seconds']} s)")
    print(f"peak RSS, predict {args.minutes:g} min recording: {big['peak_rss_mb']:8.1f} MB ({big['seconds']} s, {rows} rows)")
    if args.whole_minutes:
        mid = write_long_ogg(args.work / f"long_{args.whole_minutes:g}min.ogg", args.whole_minutes * 60.0, seed=3)
        streamed = run_child("predict", models, mid, args.work / "mid.csv")
        whole = run_child("whole", models, mid, args.work / "mid_whole.csv")
        a, b = (np.loadtxt(args.work / f, delimiter=",", skiprows=1, usecols=range(1, 4)) for f in ("mid.csv", "mid_whole.csv"))
        print(f"peak RSS, predict {args.whole_minutes:g} min, streamed:  {streamed['peak_rss_mb']:8.1f} MB ({streamed['seconds']} s)")
        print(f"peak RSS, predict {args.whole_minutes:g} min, whole way: {whole['peak_rss_mb']:8.1f} MB ({whole['seconds']} s); "
              f"max |streamed - whole| over the first 3 columns: {np.abs(a - b).max():.2e}")
    print(f"long minus 60 s: {big['peak_rss_mb'] - one['peak_rss_mb']:+.1f} MB; long minus models only: "
          f"{big['peak_rss_mb'] - load['peak_rss_mb']:+.1f} MB; whole-file float32 decode alone would be "
          f"{args.minutes * 60 * SR * 4 / 2**20:.0f} MB")


if __name__ == "__main__":
    main()
