"""Each public solution's own front end (as it ran on CPU) against birdinfer's front end for its spec, on a 60 s file.

- 2025 1st: torchaudio-semantics mel of the whole padded file in torch (``tests/solutions/birdclef2025_1st.features``:
  torch.stft + HTK mel + AmplitudeToDB + z-score/min-max, sliced into 12 windows × 3 channels) vs the
  ``mel`` feature of ``weights/birdclef2025_1st.spec.json``. Compared after normalisation (≤ 1e-4).
- 2025 2nd: the in-graph front end run in torch (peak-normalised 5 s pieces → nnAudio-style conv STFT → HTK mel →
  per-piece dB → z-score/min-max, ``birdinfer_export.heads.WaveSEDNet.spectrogram``) vs birdinfer's front end
  computing the same spectrogram (a "mel outside the graph" spec, ``SECOND_MEL_STEPS``). Compared after
  normalisation (≤ 1e-4).
- 2024 1st: librosa per-chunk mel + 10 s context + ``power_to_db`` (``tests/solutions/birdclef2024_1st.features``)
  vs the ``mel`` feature of ``weights/birdclef2024_1st.spec.json``. Compared in dB (≤ 0.01 dB).

Each side is warmed up once, then timed ``--rounds`` times alternately; the best round counts. Timing figures
are only valid while the machine is otherwise idle: the script prints the load average before and after.

    PYTHONPATH=.:tests python benchmarks/bench_solutions.py [--rounds 5] [--threads N] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

SR = 32000
#: 2025 2nd place's in-graph front end written as birdinfer front-end ops (mel outside the graph).
SECOND_MEL_STEPS = [
    {"op": "windows", "length_seconds": 5.0, "step_seconds": 5.0},
    {"op": "normalize_wave", "method": "peak"},
    {"op": "stft", "n_fft": 2048, "hop_length": 512, "window": "hann", "center": True, "pad_mode": "reflect",
     "normalized": True, "power": 2.0},
    {"op": "mel", "n_mels": 128, "fmin": 20.0, "fmax": 16000.0, "scale": "htk", "norm": None},
    {"op": "db", "top_db": 80.0, "ref": 1.0, "amin": 1e-10},
    {"op": "normalize", "method": "zscore_minmax", "eps": 1e-6, "ddof": 1},
    {"op": "channels", "repeat": 1},
]


def _frontend(spec: dict, feature: str):
    from birdinfer.runtime.engine import FrontEndGraph
    from birdinfer.spec.parse import parse_spec

    manifest = parse_spec(spec, require_files=False, source="bench spec")
    graph = FrontEndGraph(manifest, [feature])
    return lambda y: np.asarray(graph(y)[feature].data)


def _spec(name: str) -> dict:
    return json.loads((ROOT / "weights" / f"{name}.spec.json").read_text())


def cases():
    """(name, reference callable, birdinfer callable, tolerance, unit)."""
    import torch

    from solutions import birdclef2024_1st, birdclef2025_1st, birdclef2025_2nd

    out = []
    out.append(("2025 1st", lambda y: birdclef2025_1st.features(y).numpy(), _frontend(_spec("birdclef2025_1st"), "mel"),
                1e-4, "after normalisation"))

    from birdinfer_export.heads import WaveSEDNet

    graph = WaveSEDNet("tinynet_e", 4).eval()  # only its front end (logmelspec_extractor) is timed

    def second_reference(y):
        with torch.no_grad():
            return graph.spectrogram(torch.from_numpy(birdclef2025_2nd.pieces(y))).numpy()

    spec2 = _spec("birdclef2025_2nd")
    spec2["features"] = {"mel": {"steps": SECOND_MEL_STEPS}}
    spec2["rows"] = {"seconds": 5.0}
    for m in spec2["models"]:
        m["input"], m["input_shape"] = "mel", [-1, 1, 128, 313]
    out.append(("2025 2nd", second_reference, _frontend(spec2, "mel"), 1e-4, "after normalisation"))
    out.append(("2024 1st", birdclef2024_1st.features, _frontend(_spec("birdclef2024_1st"), "mel"), 0.01, "dB"))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--threads", type=int, default=None, help="torch threads for the references (default: torch's)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    import torch

    from birdinfer_export.verify import synthetic_audio

    if args.threads:
        torch.set_num_threads(args.threads)
    y = synthetic_audio(args.seconds, seed=7)
    load_before = os.getloadavg()[0]
    results = []
    for name, reference, ours, tolerance, unit in cases():
        want, got = reference(y), ours(y)  # warm-up and the equality check
        if want.shape != got.shape:
            raise SystemExit(f"{name}: shapes differ: reference {want.shape}, birdinfer {got.shape}")
        diff = float(np.abs(want.astype(np.float64) - got.astype(np.float64)).max())
        times = {"reference": [], "birdinfer": []}
        for _ in range(args.rounds):
            for side, fn in (("reference", reference), ("birdinfer", ours)):
                start = time.perf_counter()
                fn(y)
                times[side].append(time.perf_counter() - start)
        ref_s, our_s = min(times["reference"]), min(times["birdinfer"])
        row = {"solution": name, "shape": list(got.shape), "max_abs_diff": diff, "unit": unit, "tolerance": tolerance,
               "same_output": diff <= tolerance, "reference_s": ref_s, "birdinfer_s": our_s, "speedup": ref_s / our_s,
               "target_5x": ref_s / our_s >= 5.0}
        results.append(row)
        print(f"{name}: {tuple(got.shape)}  max|Δ| {diff:.2e} ({unit}, tolerance {tolerance:g}) "
              f"{'OK' if row['same_output'] else 'DIFFERENT'};  reference {ref_s * 1e3:.1f} ms, birdinfer {our_s * 1e3:.1f} ms, "
              f"{row['speedup']:.1f}x {'(>= 5x)' if row['target_5x'] else '(below 5x)'}")
    print(f"{args.seconds:g} s file, best of {args.rounds} rounds, torch threads {torch.get_num_threads()}; "
          f"load average (1 min) before {load_before:.2f}, after {os.getloadavg()[0]:.2f} (figures count on an idle machine)")
    if args.json:
        args.json.write_text(json.dumps({"load_average_before": load_before, "rounds": args.rounds, "results": results}, indent=1))
    return 0 if all(r["same_output"] for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
