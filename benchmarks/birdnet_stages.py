"""BirdNET V2.4 per stage, per 3 s window: decoding (with resampling to 48 kHz), the ``birdnet_stft`` front end
with its FFT in float64 and in float32, and the network of each variant of the folder (OpenVINO, f32 and bf16
hints, batch 1 / 4 / 16, 2 threads), each timed alone in one process over the same recordings.

The folder is one ``birdinfer import`` wrote (with ``--precision int8`` for the INT8 rows); the recordings are
benchmarks/bench_birdnet.py's (``--minutes`` of audio made from the opensoundscape sample, 32 kHz) unless
``--audio`` names others. Prints milliseconds per window; the sum is no wall time of ``predict`` (decoding and
the front end run in a thread beside the network there).

    python benchmarks/birdnet_stages.py --models birdnet/
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_birdnet  # noqa: E402  (its recordings)

from birdinfer.io.audio import list_audio_files, load_audio  # noqa: E402
from birdinfer.ops.base import Block, Signal  # noqa: E402
from birdinfer.ops.birdnet import birdnet_stft  # noqa: E402
from birdinfer.spec.manifest import Manifest  # noqa: E402
from birdinfer.spec.upgrade import upgrade  # noqa: E402

SR, ROW = 48000, 144000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, required=True, help="a BirdNET folder written by birdinfer import")
    parser.add_argument("--audio", type=Path, default=None, help="time these recordings instead")
    parser.add_argument("--minutes", type=float, default=6.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        paths = list_audio_files(args.audio, recursive=True) if args.audio else bench_birdnet.recordings(Path(tmp), args.minutes)
        t = time.perf_counter()
        waves = [load_audio(p, sample_rate=SR) for p in paths]
        decode = time.perf_counter() - t
    per_file = [np.pad(y, (0, -len(y) % ROW)).reshape(-1, ROW).astype(np.float32) for y in waves]
    n = sum(len(w) for w in per_file)
    print(f"{n} windows of 3 s from {len(paths)} recordings")
    print(f"decode + resample to 48 kHz: {decode / n * 1e3:.2f} ms/window")
    spec = upgrade(Manifest.load(args.models))
    (step,) = [s for s in spec.features["birdnet"] if s.name == "birdnet_stft"]
    def front_end(w, params):
        return birdnet_stft(Signal(w), params, Block(n_samples=w.size, n_rows=len(w), sample_rate=SR, row_samples=ROW)).data

    for fft in ("float64", "float32"):  # one call per recording, as predict computes a recording's block
        params = replace(step.params, fft=fft)
        t = time.perf_counter()
        for w in per_file:
            front_end(w, params)  # not kept: keeping every block would time the page faults of fresh memory too
        print(f"front end, FFT in {fft}: {(time.perf_counter() - t) / n * 1e3:.2f} ms/window")
    features = np.concatenate([front_end(w, step.params) for w in per_file])
    import openvino as ov

    core = ov.Core()
    (entry,) = spec.models
    for name, variant in entry.variants.items():
        for hint in ("f32", "bf16"):
            compiled = core.compile_model(str(spec.path_of(variant.openvino)), "CPU", {
                "INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": 2})
            request = compiled.create_infer_request()
            for batch in (1, 4, 16):
                chunks = [features[i : i + batch] for i in range(0, n - batch + 1, batch)]
                request.infer({0: chunks[0]})
                t = time.perf_counter()
                for x in chunks:
                    request.infer({0: x})
                print(f"network {name} ({hint} hint), batch {batch}: "
                      f"{(time.perf_counter() - t) / (len(chunks) * batch) * 1e3:.2f} ms/window")
    return 0


if __name__ == "__main__":
    sys.exit(main())
