"""Front-end speed of the BirdCLEF 2025 4th place's three mel groups (REFERENCE.md section 2), side by side.

Runs, in one process and in interleaved rounds (the order rotates each round, so a busy neighbour on a
shared machine slows every contender alike):

* ``v1 FrontEnd`` — the version 1 engine's ``birdinfer.features.FrontEnd`` as it was on ``main`` (read with
  ``git show main:birdinfer/features.py`` into a temporary module when this checkout no longer has it);
* ``spec`` — the same groups as a version 2 spec on the one engine (:class:`birdinfer.runtime.mel_frontend.MelFrontEnd`:
  ``stft → resize_time → mel`` prefixes run together, frames shared per ``n_fft``, banded mel);
* ``spec, ops one by one`` — the same graph without the shared chain (each op on its own);
* ``librosa+cv2`` with ``--reference`` — the reference (slow).

With ``--specs``, also the ``mel`` feature of the shipped specs (``weights/birdclef2025_1st.spec.json``,
``weights/birdclef2024_1st.spec.json``) with the executor's chains and with every op on its own.

Prints best and median wall times, the spec / v1 ratio and the largest |Δ dB| between them and against the
reference.

    python benchmarks/bench_frontend.py                  # synthetic 60 s soundscape, 15 rounds
    python benchmarks/bench_frontend.py --audio a.ogg --rounds 30 --reference --specs

Needs librosa and opencv-python-headless for ``--reference``; birdinfer itself needs neither.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from birdinfer.io.audio import load_audio
from birdinfer.spec.manifest import MelGroup
from birdinfer.runtime.mel_frontend import MelFrontEnd

SR = 32000
WINDOW = 5 * SR
ROOT = Path(__file__).resolve().parents[1]
# The reference groups, from the default recipe (REFERENCE.md section 2).
RECIPE = ROOT / "weights" / "birdclef2025_4th.json"
GROUPS = tuple(MelGroup.from_dict(g) for g in json.loads(RECIPE.read_text())["groups"])


def v1_front_end_class(tmp: Path):
    """``FrontEnd`` of the version 1 engine: an importable ``birdinfer.features`` if there is one (an editable
    install of an older checkout resolves it there), else ``main``'s, read with git."""
    try:
        import birdinfer.features as v1_features  # type: ignore[import-not-found]

        return v1_features.FrontEnd, v1_features.__file__
    except ImportError:
        pass
    source = subprocess.run(["git", "-C", str(ROOT), "show", "main:birdinfer/features.py"], check=True,
                            capture_output=True, text=True).stdout
    path = tmp / "_v1_features.py"
    path.write_text(source, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("birdinfer._v1_features", path)  # relative imports: birdinfer
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module.FrontEnd, "git show main:birdinfer/features.py"


def reference_front_end(y: np.ndarray) -> dict[str, np.ndarray]:
    """REFERENCE.md section 2 with librosa + cv2: ``{group: (n_chunks, 1, n_mels, 2F)}`` (partial chunk
    padded with the chunk's floor, as the front ends do, so they can be compared element-wise)."""
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


def interleaved(contenders: dict, rounds: int) -> tuple[dict[str, list[float]], dict[str, dict]]:
    """Wall times per contender over ``rounds`` rounds (order rotated each round) and each one's last output."""
    names = list(contenders)
    outputs = {name: contenders[name]() for name in names}  # warm-up
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            t0 = time.perf_counter()
            outputs[name] = contenders[name]()
            times[name].append(time.perf_counter() - t0)
    return times, outputs


def without_chains(graph, y: np.ndarray) -> dict:
    """``graph(y)`` with every op on its own (no stft → [resize_time →] mel chain; stft + resize_time, a fused
    pair, still computes only the frames the resize reads)."""
    import birdinfer.runtime.engine as engine

    chains, shared = engine.CHAINS, graph._chains
    engine.CHAINS, graph._chains = (), []
    try:
        out = graph(y)
    finally:
        engine.CHAINS, graph._chains = chains, shared
    return {name: signal.data for name, signal in out.items()}


def shipped_specs(y: np.ndarray, rounds: int) -> None:
    """The shipped specs' ``mel`` feature: chains on (the executor as it runs) against every op on its own."""
    from birdinfer.runtime.engine import FrontEndGraph
    from birdinfer.spec.parse import parse_spec

    for name in ("birdclef2025_1st", "birdclef2024_1st"):
        manifest = parse_spec(json.loads((ROOT / "weights" / f"{name}.spec.json").read_text()), require_files=False)
        fused, one_by_one = FrontEndGraph(manifest, ["mel"]), FrontEndGraph(manifest, ["mel"])
        times, outputs = interleaved({"chains": lambda: fused(y), "ops one by one": lambda: without_chains(one_by_one, y)},
                                     rounds)
        diff = float(np.abs(outputs["chains"]["mel"].data - outputs["ops one by one"]["mel"]).max())
        print(f"{name} mel {[s.name for s in manifest.features['mel']]}: chains {min(times['chains']):.4f} / "
              f"{statistics.median(times['chains']):.4f}, ops one by one {min(times['ops one by one']):.4f} / "
              f"{statistics.median(times['ops one by one']):.4f}; max |diff| {diff:.2e}")


def max_db_diff(a: dict, b: dict) -> float:
    return max(float(np.abs(np.asarray(a[g.name]) - np.asarray(b[g.name])).max()) for g in GROUPS)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--audio", nargs="*", type=Path, default=None, help="audio files (default: a synthetic 60 s OGG)")
    parser.add_argument("--rounds", type=int, default=15, help="interleaved timed rounds (default 15)")
    parser.add_argument("--reference", action="store_true", help="also time librosa + cv2 (slow)")
    parser.add_argument("--specs", action="store_true", help="also time the shipped specs' mel features")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        FrontEnd, origin = v1_front_end_class(Path(tmp))
        v1 = FrontEnd(GROUPS)
        spec = MelFrontEnd(GROUPS)
        unfused = MelFrontEnd(GROUPS)
        paths = args.audio or [synthetic_soundscape(Path(tmp) / "synthetic_60s.ogg")]
        print(f"v1 FrontEnd from {origin}; groups {[g.name for g in GROUPS]}; {args.rounds} interleaved rounds after a "
              f"warm-up; wall seconds best / median")
        print(f"load average now: {' '.join(f'{x:.1f}' for x in os.getloadavg())} (a shared machine inflates wall times)")
        for path in paths:
            y = load_audio(path)
            contenders = {"v1 FrontEnd": lambda: v1(y), "spec": lambda: spec(y),
                          "spec, ops one by one": lambda: without_chains(unfused._graph, y)}
            if args.reference:
                contenders["librosa+cv2"] = lambda: reference_front_end(y)
            times, outputs = interleaved(contenders, args.rounds)
            print(f"{path.name} ({len(y) / SR:.1f} s):")
            for name, values in times.items():
                print(f"    {name:22s} {min(values):.4f} / {statistics.median(values):.4f}")
            ratio = [s / v for s, v in zip(times["spec"], times["v1 FrontEnd"])]
            print(f"    spec / v1: best {min(times['spec']) / min(times['v1 FrontEnd']):.3f}, median of per-round ratios "
                  f"{statistics.median(ratio):.3f}; max |Δ dB| spec vs v1 {max_db_diff(outputs['spec'], outputs['v1 FrontEnd']):.2e}, "
                  f"ops one by one vs spec {max_db_diff(outputs['spec, ops one by one'], outputs['spec']):.2e}")
            if args.reference:
                ref = outputs["librosa+cv2"]
                print(f"    max |Δ dB| vs librosa+cv2: spec {max_db_diff(outputs['spec'], ref):.2e}, "
                      f"v1 {max_db_diff(outputs['v1 FrontEnd'], ref):.2e}")
            if args.specs:
                shipped_specs(y, args.rounds)


if __name__ == "__main__":
    main()
