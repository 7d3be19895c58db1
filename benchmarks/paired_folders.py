"""Two or more BirdNET model folders (or one folder under several schedules) side by side in one process: the
same recordings through each :class:`birdinfer.runtime.pipeline.Predictor` in alternating rounds whose order
rotates, and each round's time divided by the same round's time of the first contender (steadier than the
best or the median alone on a shared host whose speed drifts by 20 % within minutes).

A contender is ``FOLDER`` with an optional ``#SCHEDULE`` of ``bench_birdnet.SCHEDULES``: ``thread`` (the default:
decode and front end in a background thread), ``inline1`` (inline between the model calls, one thread),
``inline`` (inline, the front end's ops on every physical core). Use it to A/B an import against an older one (e.g. a folder imported by an earlier
birdinfer against one imported now) or a schedule; prints seconds and CPU seconds (every thread of the process)
per hour of audio, best and median, and the paired ratios' median and range.

    python benchmarks/paired_folders.py OLD NEW --precision fast --minutes 24 --rounds 6
    python benchmarks/paired_folders.py DIR DIR#inline --minutes 3 --rounds 10

The recordings are those of ``benchmarks/bench_birdnet.py`` (a real sample from the opensoundscape wheel made
into ``--minutes`` one-minute files). Short runs (a few minutes of audio) favour the inline schedules: the
background thread's first block is not hidden behind the models.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import tempfile
from pathlib import Path

import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_birdnet import SCHEDULES, interleaved, recordings, run_birdinfer  # noqa: E402

from birdinfer.runtime.pipeline import Predictor  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("contenders", nargs="+", help="FOLDER or FOLDER#SCHEDULE (thread, inline1, inline)")
    parser.add_argument("--precision", default="f32")
    parser.add_argument("--minutes", type=float, default=24.0)
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    predictors = {}
    for name in args.contenders:
        folder, _, schedule = name.partition("#")
        if (schedule or "thread") not in SCHEDULES:
            parser.error(f"{name}: schedule {schedule!r} is not one of {sorted(SCHEDULES)}")
        predictors[name] = Predictor(folder, precision=args.precision, **SCHEDULES[schedule or "thread"])
    with tempfile.TemporaryDirectory() as tmp:
        paths = recordings(Path(tmp), args.minutes)
        hours = sum(sf.info(p).duration for p in paths) / 3600
        for predictor in predictors.values():
            run_birdinfer(predictor, paths[:2])  # warm
        seconds, cpu_seconds, _ = interleaved({name: functools.partial(run_birdinfer, predictor, paths)
                                               for name, predictor in predictors.items()}, args.rounds)
    names = list(predictors)
    wall = {name: [t / hours for t in values] for name, values in seconds.items()}
    cpu = {name: [t / hours for t in values] for name, values in cpu_seconds.items()}
    print(f"{len(paths)} recordings, {hours * 60:.1f} min; --precision {args.precision}; {args.rounds} rounds")
    first = names[0]
    for name in names:
        paired = sorted(a / b for a, b in zip(wall[name], wall[first]))
        paired_cpu = statistics.median(a / b for a, b in zip(cpu[name], cpu[first]))
        print(f"{name}: {min(wall[name]):.2f} s/h best, {statistics.median(wall[name]):.2f} median; CPU "
              f"{statistics.median(cpu[name]):.2f} s/h median; per round / {first}: {statistics.median(paired):.3f} "
              f"[{paired[0]:.3f}..{paired[-1]:.3f}], CPU {paired_cpu:.3f}")
    print(predictors[first].plan_summary)
    for predictor in predictors.values():
        predictor.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
