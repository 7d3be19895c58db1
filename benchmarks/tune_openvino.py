"""How to run N OpenVINO models on 2 cores: measured side by side, rounds interleaved (the machine is noisy).

On ready inputs (the front end of one synthetic 60 s file, computed once), every model of the folder is
compiled once per configuration; then, round by round, each configuration runs "one file" (every model
once on its group's 6 chunks) and the best and median seconds per file are kept:

* ``latency_sync``      PERFORMANCE_HINT=LATENCY, one synchronous request per model (birdinfer's default)
* ``default_sync``      no hint (OpenVINO's own default)
* ``throughput_async``  PERFORMANCE_HINT=THROUGHPUT + AsyncInferQueue, two files in flight per model
* ``split_batch_2streams`` each model reshaped to 3 chunks per request, THROUGHPUT with 2 streams: a
  file's 6 chunks run as two requests at once (one per core)
* ``two_models_1thread`` INFERENCE_NUM_THREADS=1 per model, two Python threads running different models
  concurrently (OpenVINO releases the GIL)

Also: model load time of the folder without a cache, with CACHE_DIR cold and warm; and, through
:class:`birdinfer.runtime.pipeline.Predictor`, the pipeline with the background front-end thread (``iter_files``)
against decode → front end → models one after another (``predict_file``), rounds interleaved.

    python benchmarks/tune_openvino.py --models MODEL_DIR [--precision f32] [--rounds 3] [--files 3]
"""

from __future__ import annotations

import argparse
import gc
import queue
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from birdinfer.tools.bench import synthetic_soundscapes
from birdinfer.runtime.mel_frontend import MelFrontEnd
from birdinfer.spec.manifest import Manifest
from birdinfer.runtime.pipeline import Predictor


def _xml(manifest: Manifest, entry, precision: str) -> str:
    variant = "int8" if precision == "int8" and "int8" in entry.variants else "f32"
    return str(manifest.path_of(entry.variants[variant].openvino))


def _hint(precision: str) -> dict:
    return {"INFERENCE_PRECISION_HINT": precision} if precision in ("f32", "bf16") else {}


def compile_all(core, manifest, precision, config):
    return [(m, core.compile_model(core.read_model(_xml(manifest, m, precision)), "CPU", {**config, **_hint(precision)}))
            for m in manifest.models]


def run_sync(compiled, features):
    requests = [(m, c.create_infer_request()) for m, c in compiled]

    def one_file():
        for m, r in requests:
            r.infer({0: features[m.group]})
    return one_file, 1


def run_async(compiled, features, files_in_flight=2):
    import openvino as ov

    queues = [(m, ov.AsyncInferQueue(c, max(files_in_flight, c.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))) for m, c in compiled]

    def files():
        for m, q in queues:
            for _ in range(files_in_flight):
                q.start_async({0: features[m.group]})
        for _, q in queues:
            q.wait_all()
    return files, files_in_flight


def compile_split(core, manifest, precision, streams=2):
    """Each model reshaped to 6/streams chunks per request, THROUGHPUT with ``streams`` streams."""
    out = []
    for m in manifest.models:
        model = core.read_model(_xml(manifest, m, precision))
        shape = list(m.input_shape)
        shape[0] = shape[0] // streams
        model.reshape({model.input(0): shape})
        config = {"PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": streams, **_hint(precision)}
        out.append((m, core.compile_model(model, "CPU", config)))
    return out


def run_split(compiled, features, streams=2):
    jobs = []
    for m, c in compiled:
        x = features[m.group]
        step = x.shape[0] // streams
        jobs.append(([c.create_infer_request() for _ in range(streams)], [x[i * step:(i + 1) * step] for i in range(streams)]))

    def one_file():
        for requests, parts in jobs:
            for r, part in zip(requests, parts):
                r.start_async({0: part})
            for r in requests:
                r.wait()
    return one_file, 1


def run_two_threads(compiled, features):
    requests = [(m, c.create_infer_request()) for m, c in compiled]

    def one_file():
        work: queue.Queue = queue.Queue()
        for item in sorted(requests, key=lambda mr: -mr[0].weight):  # any order; keep it fixed
            work.put(item)

        def worker():
            while True:
                try:
                    m, r = work.get_nowait()
                except queue.Empty:
                    return
                r.infer({0: features[m.group]})
        threads = [threading.Thread(target=worker) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    return one_file, 1


def main(argv=None) -> int:
    import openvino as ov

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, required=True)
    parser.add_argument("--precision", default="f32", choices=["f32", "bf16", "int8", "auto"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--files", type=int, default=3, help="files for the background-thread comparison")
    parser.add_argument("--configs", nargs="*", default=None, help="only these configurations")
    parser.add_argument("--skip", nargs="*", default=[], help="sections to skip: configs load pipeline")
    args = parser.parse_args(argv)
    manifest = Manifest.load(args.models, upgrade=False)  # version 1: mel groups
    core = ov.Core()

    with tempfile.TemporaryDirectory(prefix="tune_ov_") as tmp:
        paths = synthetic_soundscapes(Path(tmp) / "audio", args.files + 1, seed=7)
        from birdinfer.io.audio import load_audio

        y = load_audio(paths[0])
        features = MelFrontEnd(manifest.used_groups())(y)
        print(f"{len(manifest.models)} models, precision {args.precision}, {args.rounds} rounds", flush=True)

        if "configs" not in args.skip:
            configs = {
                "split_batch_2streams": lambda: run_split(compile_split(core, manifest, args.precision), features),
                "latency_sync": lambda: run_sync(compile_all(core, manifest, args.precision, {"PERFORMANCE_HINT": "LATENCY"}), features),
                "default_sync": lambda: run_sync(compile_all(core, manifest, args.precision, {}), features),
                "throughput_async": lambda: run_async(compile_all(core, manifest, args.precision, {"PERFORMANCE_HINT": "THROUGHPUT"}), features),
                "two_models_1thread": lambda: run_two_threads(compile_all(
                    core, manifest, args.precision, {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": 1}), features),
            }
            runners = {}
            for name, make in configs.items():
                if args.configs and name not in args.configs:
                    continue
                start = time.perf_counter()
                runners[name] = make()
                runners[name][0]()  # warm-up
                print(f"  compiled + warmed {name} in {time.perf_counter() - start:.1f} s", flush=True)
            times = {name: [] for name in runners}
            for _ in range(args.rounds):
                for name, (fn, per_call) in runners.items():
                    start = time.perf_counter()
                    fn()
                    times[name].append((time.perf_counter() - start) / per_call)
            print("\n| configuration | best s / file | median s / file | all rounds |")
            print("|---|---|---|---|")
            for name, ts in times.items():
                print(f"| {name} | {min(ts):.3f} | {statistics.median(ts):.3f} | {' '.join(f'{t:.2f}' for t in ts)} |")
            del runners
            gc.collect()

        if "load" not in args.skip:
            print("\nmodel load (read + compile all models):")
            rows = []
            for label, cache in (("no cache", None), ("CACHE_DIR cold", "cold"), ("CACHE_DIR warm", "warm")):
                c = ov.Core()
                if cache:
                    c.set_property({"CACHE_DIR": str(Path(tmp) / "cache")})
                start = time.perf_counter()
                compiled = compile_all(c, manifest, args.precision, {"PERFORMANCE_HINT": "LATENCY"})
                rows.append((label, time.perf_counter() - start))
                del compiled, c
                gc.collect()
            for label, s in rows:
                print(f"  {label}: {s:.1f} s")

        if "pipeline" not in args.skip:
            # Predictor defaults (one 1-thread model per physical core, side by side) vs one model at a time on
            # every core; each with the background front-end thread (iter_files) or all in one thread.
            predictors = {"parallel models": Predictor(manifest, precision=args.precision),
                          "one model at a time": Predictor(manifest, precision=args.precision, parallel_models=1)}
            for predictor in predictors.values():
                list(predictor.iter_files(paths[:1]))
            timed = paths[1:]
            walls = {}
            for _ in range(args.rounds):
                for label, predictor in predictors.items():
                    start = time.perf_counter()
                    list(predictor.iter_files(timed))
                    walls.setdefault(f"{label}, background front end (iter_files)", []).append((time.perf_counter() - start) / len(timed))
                    start = time.perf_counter()
                    for p in timed:
                        predictor.predict_file(p)
                    walls.setdefault(f"{label}, one after another (predict_file)", []).append((time.perf_counter() - start) / len(timed))
            print(f"\n| pipeline ({len(timed)} files per round) | best s / file | median s / file | all rounds |")
            print("|---|---|---|---|")
            for name, ts in walls.items():
                print(f"| {name} | {min(ts):.3f} | {statistics.median(ts):.3f} | {' '.join(f'{t:.2f}' for t in ts)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
