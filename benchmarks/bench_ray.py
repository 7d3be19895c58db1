"""Hours of audio per hour: single-machine ``predict`` vs ``predict --engine ray`` with 1 and 2 workers,
on the same synthetic recordings in the same run, and the per-file overhead Ray adds.

    python benchmarks/bench_ray.py --models MODEL_DIR [--files 8] [--seconds 60] [--precision f32] [--overhead]

Printed figures:
* single machine: model compile seconds, processing seconds per file (wall minus compile), hours of audio
  per hour of processing and of total wall time;
* Ray, N workers (N × C/N threads on the C CPUs of a local instance started once for the benchmark):
  actor start + compile seconds, processing seconds per file, hours of audio per hour;
* overhead per file = Ray with 1 worker (same threads as single machine, so the same compute) minus single
  machine, per file, processing phase only;
* ``--overhead``: the bare cost of one actor call (no-op, 1 file = 1 call) and of a Ray Data
  ``map_batches`` pipeline over the same number of no-op items (the numbers behind the actors-vs-Ray-Data
  choice in ``birdinfer/jobs/distributed.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf


def write_recordings(folder: Path, count: int, seconds: float, sr: int = 32000) -> list[Path]:
    """Seeded noise plus tone sweeps, written as OGG/Vorbis (10 s per write: libsndfile's encoder dislikes huge writes)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        rng = np.random.default_rng(1000 + i)
        n = int(seconds * sr)
        t = np.arange(n) / sr
        y = 0.02 * rng.standard_normal(n) + 0.1 * np.sin(2 * np.pi * (rng.uniform(1e3, 6e3) + 200 * np.sin(t)) * t)
        path = folder / f"rec_{i:03d}.ogg"
        with sf.SoundFile(path, "w", samplerate=sr, channels=1, format="OGG", subtype="VORBIS") as f:
            for start in range(0, n, 10 * sr):
                f.write(y[start : start + 10 * sr].astype(np.float32))
        paths.append(path)
    return paths


def bench_single(paths, models, precision, out: Path) -> dict:
    from birdinfer.runtime.pipeline import Predictor
    from birdinfer.jobs.predict import predict

    load = Predictor(models, precision=precision).load_seconds  # compile cost, measured apart (predict compiles again)
    t0 = time.perf_counter()
    predict(paths, models, out, precision=precision, progress=False)
    wall = time.perf_counter() - t0
    return {"load_seconds": load, "wall_seconds": wall, "processing_seconds": wall - load}


def bench_ray(paths, models, precision, out: Path, workers: int) -> dict:
    from birdinfer.jobs.distributed import predict_ray

    t0 = time.perf_counter()
    predict_ray(paths, models, out, precision=precision, progress=False, num_workers=workers, resume=False)
    wall = time.perf_counter() - t0
    run = json.loads((out / "_SUCCESS").read_text())["run"]
    return {"load_seconds": run["load_seconds"], "wall_seconds": wall, "processing_seconds": run["processing_seconds"],
            "threads": run["threads_per_worker"]}


def bench_overhead(calls: int) -> None:
    import ray

    @ray.remote(num_cpus=1)
    class Noop:
        def run(self, batch):
            return batch

    actor = Noop.remote()
    ray.get(actor.run.remote([]))
    t0 = time.perf_counter()
    for i in range(calls):
        ray.get(actor.run.remote([("key", f"/data/rec_{i}.ogg")]))
    per_call = (time.perf_counter() - t0) / calls
    ray.kill(actor)
    print(f"actor call round trip (no-op, sequential): {per_call * 1e3:.2f} ms per call over {calls} calls")

    import ray.data

    class NoopBatch:
        def __call__(self, batch):
            return batch

    ray.data.DataContext.get_current().enable_progress_bars = False
    t0 = time.perf_counter()
    ds = ray.data.from_items([{"path": f"/data/rec_{i}.ogg"} for i in range(calls)])
    rows = ds.map_batches(NoopBatch, batch_size=1, concurrency=1).take_all()
    wall = time.perf_counter() - t0
    assert len(rows) == calls
    print(f"Ray Data map_batches (no-op class, batch_size=1, 1 actor): {wall:.2f} s for {calls} items "
          f"({wall / calls * 1e3:.1f} ms per item, startup included)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, required=True)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--precision", default="f32")
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    parser.add_argument("--overhead", action="store_true", help="also time no-op actor calls and Ray Data")
    args = parser.parse_args()

    import ray

    cpus = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="bench_ray_") as tmp:
        tmp = Path(tmp)
        paths = write_recordings(tmp / "audio", args.files, args.seconds)
        audio_h = args.files * args.seconds / 3600
        print(f"{args.files} files × {args.seconds:.0f} s = {audio_h:.3f} h of audio; models {args.models}; "
              f"precision {args.precision}; {cpus} CPUs")

        single = bench_single(paths, args.models, args.precision, tmp / "single.parquet")
        print(f"single machine: compile {single['load_seconds']:.1f} s; processing "
              f"{single['processing_seconds'] / args.files:.3f} s/file → {audio_h * 3600 / single['processing_seconds']:.0f} h/h "
              f"(incl. compile: {audio_h * 3600 / single['wall_seconds']:.0f} h/h)")

        t0 = time.perf_counter()
        ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False,
                 object_store_memory=100 * 1024**2)
        print(f"ray.init (local instance, {cpus} CPUs): {time.perf_counter() - t0:.1f} s")
        results = {}
        try:
            for workers in [int(w) for w in args.workers.split(",")]:
                r = bench_ray(paths, args.models, args.precision, tmp / f"ray_{workers}", workers)
                results[workers] = r
                print(f"ray {workers} worker(s) × {r['threads']} thread(s): actors + compile {r['load_seconds']:.1f} s; "
                      f"processing {r['processing_seconds'] / args.files:.3f} s/file → "
                      f"{audio_h * 3600 / r['processing_seconds']:.0f} h/h (incl. startup: {audio_h * 3600 / r['wall_seconds']:.0f} h/h)")
            if 1 in results:
                extra = (results[1]["processing_seconds"] - single["processing_seconds"]) / args.files
                print(f"per-file overhead of Ray (1 worker × {results[1]['threads']} threads vs single machine, processing): "
                      f"{extra * 1e3:+.0f} ms/file ({100 * extra / (single['processing_seconds'] / args.files):+.1f} %)")
            if args.overhead:
                bench_overhead(200)
        finally:
            ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
