"""A model folder's precision plans per CPU class, side by side: what ``auto`` / ``fast`` run for each model
and how long each model takes on the same windows as f32 (rounds interleaved), plus max / mean |Δp| of the
model's rows against f32 under the same class.

    python benchmarks/precision_v2.py MODELS [--cpu-class native avx512 avx2] [--rounds 5] [--calibration DIR]

Each class runs in a child process with ``ONEDNN_MAX_CPU_ISA`` set before OpenVINO loads
(:func:`birdinfer.runtime.cpu.run_in_cpu_class`). Timing is single-request model time on the held-out audio's
windows (the front end excluded); on a shared machine compare ratios, not seconds.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def measure_class(folder: str, audio: dict, rounds: int) -> dict:
    """Child side: every model under f32, auto and fast as planned here; seconds (median of rounds) and |Δp|."""
    import numpy as np

    from birdinfer.runtime.cpu import effective_isa
    from birdinfer.spec.manifest import Manifest
    from birdinfer.runtime.models import plan_models
    from birdinfer.spec.upgrade import upgrade
    from birdinfer.tools.precision import AudioSet, ModelRunner, compare_rows, file_features, rows_of

    manifest = Manifest.load(folder)
    spec = upgrade(manifest)
    features = [file_features(spec, y) for y in AudioSet.from_dict(audio).signals("held_out")]
    plans = {mode: {p.entry.name: p for p in plan_models(manifest, precision=mode)[0]} for mode in ("f32", "auto", "fast")}
    out = {"isa": effective_isa().label(), "models": {}}
    for entry in spec.models:
        runners = {mode: ModelRunner(spec, entry, plans[mode][entry.name].variant, plans[mode][entry.name].hint)
                   for mode in plans}
        seconds = {mode: [] for mode in runners}
        rows = {}
        for _ in range(rounds):
            for mode, runner in runners.items():  # interleaved: the same load for every mode
                start = time.perf_counter()
                rows[mode] = rows_of(runner, features)
                seconds[mode].append(time.perf_counter() - start)
        out["models"][entry.name] = {
            mode: {"ran": runners[mode].ran, "seconds": float(np.median(seconds[mode])),
                   "speedup_vs_f32": float(np.median(seconds["f32"]) / np.median(seconds[mode])),
                   **compare_rows(rows["f32"], rows[mode])} for mode in runners}
    return out


def main(argv=None) -> int:
    from birdinfer.runtime.cpu import run_in_cpu_class
    from birdinfer.spec.manifest import Manifest
    from birdinfer.tools.precision import audio_set

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", type=Path)
    parser.add_argument("--cpu-class", nargs="+", default=["native", "avx512"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calibration", type=Path, default=None, help="audio folder (default: synthetic soundscapes)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    audio = audio_set(args.calibration, Manifest.load(args.models).sample_rate).to_dict()
    report = {}
    for cpu_class in args.cpu_class:
        report[cpu_class] = result = run_in_cpu_class(cpu_class, f"{Path(__file__).resolve()}:measure_class",
                                                      {"folder": str(args.models), "audio": audio, "rounds": args.rounds})
        print(f"\n{result['isa']}")
        for name, modes in result["models"].items():
            for mode, r in modes.items():
                print(f"  {name:24s} {mode:5s} ran {r['ran']:10s} {r['seconds']:.3f} s  ×{r['speedup_vs_f32']:.2f} vs f32  "
                      f"max|Δp| {r['max_abs_dp']:.2e}  mean|Δp| {r['mean_abs_dp']:.2e}  ({r['windows']} rows)")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
