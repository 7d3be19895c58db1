"""Kill-and-resume: ``birdinfer predict`` killed at random points, then run again, must give the bytes of an
uninterrupted run.

Writes ``--files`` synthetic recordings (OGG, 3-20 s, seeded; plus one broken file, listed in the errors
file), runs ``birdinfer predict`` once uninterrupted (the reference: its wall time ``T`` sets the kill window),
then ``--kills`` trials. Each trial starts on a fresh output, sends ``--signal`` (default SIGKILL) to the run at
a uniformly random moment in ``[0, T)`` (so it may come while models load, recordings are computed, parts
are written or the output is assembled), runs the same command again to completion, and compares the output
and ``<out>.errors.csv`` byte for byte with the reference; it also checks that no temporary file, lock or
parts folder is left. A run that ends before its signal (the machine was faster than for the reference) is not
counted: that trial is drawn again, and ``T`` becomes that run's wall time. Prints one line per trial (when the signal came, how many recordings were
done then, what the run left) and the tally.

Usage::

    python benchmarks/kill_resume.py --models MODEL_DIR [--files 150] [--kills 20] [--signal KILL|TERM|INT]
        [--work /tmp/birdinfer-kill] [--seed 0]

Any model folder works; a small one keeps it quick (the tests' 4 × tf_efficientnet_lite0 folder, or one model
of ``benchmarks/build_random_ensemble.py --precision f32 --models STEM``).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SR = 32000
REPO = Path(__file__).resolve().parents[1]


def write_inputs(folder: Path, n: int, seed: int) -> Path:
    """``n`` seeded recordings of 3-20 s (noise and chirps) and one broken file."""
    import soundfile as sf

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        seconds = float(rng.uniform(3.0, 20.0))
        t = np.arange(int(seconds * SR)) / SR
        f0, f1 = rng.uniform(800, 9000, size=2)
        y = 0.02 * rng.standard_normal(len(t)) + 0.3 * np.sin(2 * np.pi * (f0 * t + 0.5 * (f1 - f0) / seconds * t**2))
        sf.write(folder / f"rec_{i:04d}.ogg", np.clip(y, -1, 1).astype(np.float32), SR, format="OGG", subtype="VORBIS")
    (folder / "rec_broken.ogg").write_bytes(b"OggS" + bytes(range(256)))
    return folder


def command(audio: Path, models: Path, out: Path, precision: str) -> list[str]:
    return [sys.executable, "-m", "birdinfer.cli", "-q", "predict", str(audio), "--models", str(models), "--out",
            str(out), "--precision", precision]


def env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


def leftovers(out: Path) -> list[str]:
    """What a finished run must not leave: temporary files beside the output, its lock, its parts folder."""
    found = [p.name for p in out.parent.glob(f".{out.name}.*.tmp")] + [p.name for p in out.parent.glob(f".{out.name}.errors.csv.*.tmp")]
    found += [p.name for p in (out.with_name(out.name + ".lock"), out.with_name(out.name + ".parts")) if p.exists()]
    return found


def trial(i: int, cmd: list[str], out: Path, reference: tuple[bytes, bytes], at: float, sig: int) -> bool | float:
    """One signal ``at`` seconds after the start and one re-run: True when the re-run's output is the
    reference's; the run's wall time when it ended before the signal came (nothing tested: draw again)."""
    errors = out.with_name(out.name + ".errors.csv")
    done_list = out.with_name(out.name + ".parts") / "done.txt"
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        proc.wait(timeout=at)
        took = time.perf_counter() - start
        print(f"         signal at {at:6.1f} s: the run had finished in {took:.1f} s (exit {proc.returncode}); not "
              "counted, drawn again", flush=True)
        return took
    except subprocess.TimeoutExpired:
        proc.send_signal(sig)
        proc.wait()
    done = done_list.read_text(errors="replace").count("\n") if done_list.is_file() else 0
    left = leftovers(out)
    again = subprocess.run(cmd, env=env(), capture_output=True, text=True)
    same = (again.returncode == 0 and out.is_file() and out.read_bytes() == reference[0]
            and (errors.read_bytes() if errors.is_file() else b"") == reference[1] and not leftovers(out))
    print(f"trial {i + 1:2d}: signal at {at:6.1f} s (exit {proc.returncode}; {done} recordings done, left: "
          f"{', '.join(left) or 'nothing'}) → re-run exit {again.returncode}, "
          f"{'byte-identical' if same else 'DIFFERENT'}", flush=True)
    if not same:
        print(again.stderr[-2000:], file=sys.stderr)
    return same


def fresh(out: Path) -> None:
    """Remove everything a run on ``out`` may have left, for the next trial."""
    for stale in [out, out.with_name(out.name + ".errors.csv"), out.with_name(out.name + ".lock"),
                  *out.parent.glob(f".{out.name}*.tmp")]:
        stale.unlink(missing_ok=True)
    shutil.rmtree(out.with_name(out.name + ".parts"), ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, required=True, help="model folder (birdinfer export)")
    parser.add_argument("--files", type=int, default=150, help="recordings (default 150)")
    parser.add_argument("--kills", type=int, default=20, help="trials, one signal each (default 20)")
    parser.add_argument("--signal", default="KILL", choices=["KILL", "TERM", "INT"], help="default KILL")
    parser.add_argument("--precision", default="f32")
    parser.add_argument("--work", type=Path, default=Path("/tmp/birdinfer-kill"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    shutil.rmtree(args.work, ignore_errors=True)
    audio = write_inputs(args.work / "audio", args.files, args.seed)
    ref_out = args.work / "reference.csv"
    start = time.perf_counter()
    subprocess.run(command(audio, args.models, ref_out, args.precision), env=env(), check=True, stderr=subprocess.DEVNULL)
    window = time.perf_counter() - start
    ref_errors = ref_out.with_name(ref_out.name + ".errors.csv")
    reference = (ref_out.read_bytes(), ref_errors.read_bytes() if ref_errors.is_file() else b"")
    print(f"reference: {args.files + 1} files in {window:.1f} s (signals come uniformly in [0, {window:.1f}) s)", flush=True)

    rng = random.Random(args.seed)
    sig = getattr(signal, f"SIG{args.signal}")
    out = args.work / "k.csv"
    identical = i = 0
    while i < args.kills:
        fresh(out)
        result = trial(i, command(audio, args.models, out, args.precision), out, reference, rng.uniform(0.0, window), sig)
        if type(result) is bool:
            identical += result
            i += 1
        else:  # a whole run is quicker now (warm caches): signals come within its time from here on
            window = min(window, result)
    print(f"kill-and-resume: {identical}/{args.kills} byte-identical (SIG{args.signal}, {args.files + 1} files)")
    return 0 if identical == args.kills else 1


if __name__ == "__main__":
    sys.exit(main())
