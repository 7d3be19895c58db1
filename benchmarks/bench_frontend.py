"""Front-end speed: birdinfer.features.FrontEnd against the reference (librosa mel + cv2 resize + per-chunk dB).

For each file (a synthetic 60 s OGG written by libsndfile, or the files given with --audio), both front
ends run for the three groups of REFERENCE.md in the same process, after a warm-up, ``--repeats`` times;
the best and median wall times, their ratio and the largest |dB difference| are printed.

    python benchmarks/bench_frontend.py                  # synthetic 60 s soundscape
    python benchmarks/bench_frontend.py --audio a.ogg b.ogg --repeats 7

Needs librosa and opencv-python-headless (the reference); birdinfer itself needs neither.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from birdinfer.audio import load_audio
from birdinfer.features import FrontEnd
from birdinfer.manifest import MelGroup

SR = 32000
WINDOW = 5 * SR
# The reference groups, from the default recipe (REFERENCE.md section 2).
RECIPE = Path(__file__).resolve().parents[1] / "weights" / "birdclef2025_4th.json"
GROUPS = tuple(MelGroup.from_dict(g) for g in json.loads(RECIPE.read_text())["groups"])


def reference_front_end(y: np.ndarray) -> dict[str, np.ndarray]:
    """REFERENCE.md section 2 with librosa + cv2: ``{group: (n_chunks, 1, n_mels, 2F)}`` (partial chunk
    padded with the chunk's floor, as FrontEnd does, so the two can be compared element-wise)."""
    import cv2
    import librosa

    out = {}
    for g in GROUPS:
        mel = librosa.feature.melspectrogram(y=y, sr=SR, n_fft=g.n_fft, hop_length=g.hop_length, n_mels=g.n_mels,
                                             fmin=g.fmin, fmax=g.fmax, power=2.0)
        width = max(1, len(y) * g.frames_per_window // WINDOW)
        resized = cv2.resize(mel, (width, g.n_mels), interpolation=cv2.INTER_LINEAR)
        step = g.frames_per_chunk
        chunks = []
        for i in range(0, width, step):
            db = librosa.power_to_db(resized[:, i : i + step], ref=1.0, top_db=80.0)
            if db.shape[1] < step:
                pad = max(np.float32(-100.0), db.max() - np.float32(80.0))
                db = np.concatenate([db, np.full((g.n_mels, step - db.shape[1]), pad, np.float32)], axis=1)
            chunks.append(db)
        out[g.name] = np.stack(chunks)[:, None]
    return out


def synthetic_soundscape(path: Path, seconds: float = 60.0, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    t = np.arange(n) / SR
    y = 0.005 * rng.standard_normal(n)
    for k in range(int(seconds // 2)):
        f0, f1 = rng.uniform(1000, 9000, size=2)
        start = 2.0 * k + rng.uniform(0, 1.2)
        m = (t >= start) & (t < start + 0.6)
        tau = t[m] - start
        y[m] += 0.3 * np.sin(2 * np.pi * (f0 * tau + 0.5 * (f1 - f0) / 0.6 * tau**2)) * np.hanning(m.sum())
    y += 0.05 * np.sin(2 * np.pi * 440 * t)
    sf.write(path, np.clip(y, -1, 1).astype(np.float32), SR)
    return path


def timed(fn, repeats: int) -> tuple[float, float, float, object]:
    """Best and median wall time, best CPU time (all threads of this process) and the last result."""
    fn()  # warm-up (librosa's first call compiles and imports lazily)
    times, cpu_times, result = [], [], None
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        result = fn()
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
    return min(times), statistics.median(times), min(cpu_times), result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--audio", nargs="*", type=Path, default=None, help="audio files (default: a synthetic 60 s OGG)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per front end (default 5)")
    parser.add_argument("--block-frames", type=int, default=None, help="FrontEnd block_frames (default: its default)")
    parser.add_argument("--fft-workers", type=int, default=1, help="FrontEnd fft_workers (default 1)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        paths = args.audio or [synthetic_soundscape(Path(tmp) / "synthetic_60s.ogg")]
        kwargs = {"fft_workers": args.fft_workers}
        if args.block_frames:
            kwargs["block_frames"] = args.block_frames
        front_end = FrontEnd(GROUPS, **kwargs)
        print(f"{front_end!r} {kwargs}; {args.repeats} repeats after a warm-up; wall times in seconds (best / median)")
        print(f"load average now: {' '.join(f'{x:.1f}' for x in os.getloadavg())} (a shared machine inflates wall times)")
        ratios = []
        for path in paths:
            y = load_audio(path)
            ref_best, ref_median, ref_cpu, ref = timed(lambda: reference_front_end(y), args.repeats)
            our_best, our_median, our_cpu, ours = timed(lambda: front_end(y), args.repeats)
            diff = max(float(np.abs(ours[g.name] - ref[g.name]).max()) for g in GROUPS)
            ratio = ref_best / our_best
            ratios.append(ratio)
            print(f"{path.name} ({len(y) / SR:.1f} s): librosa+cv2 {ref_best:.3f} / {ref_median:.3f}   "
                  f"FrontEnd {our_best:.4f} / {our_median:.4f}   speed-up {ratio:.1f}x (median "
                  f"{ref_median / our_median:.1f}x)   max |dB diff| {diff:.2e}")
            print(f"    CPU time (best): librosa+cv2 {ref_cpu:.3f}   FrontEnd {our_cpu:.4f}   ratio {ref_cpu / our_cpu:.1f}x")
        if len(ratios) > 1:
            print(f"speed-up over {len(ratios)} files: median {statistics.median(ratios):.1f}x")


if __name__ == "__main__":
    main()
