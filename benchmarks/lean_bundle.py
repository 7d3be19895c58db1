"""Size of the Kaggle bundle with and without ONNX files, identical submissions, offline install and model load.

    python benchmarks/lean_bundle.py --models E/models --out /tmp/lean [--files 2] [--skip-venv]

1. Builds the Kaggle bundle (CPython 3.12, manylinux_2_28) twice from ``--models``: ``--with-onnx`` (what
   ``birdinfer bundle`` shipped before: the whole model folder) and the default (OpenVINO IR only), and
   prints both sizes (the whole dataset folder and its ``models/``).
2. Scores ``--files`` synthetic 60 s soundscapes with the source folder and with the lean bundle's
   ``models/`` (f32, and INT8 when the folder has INT8 variants) and checks the submissions are equal,
   value for value.
3. Unless ``--skip-venv``: builds a lean bundle for this machine's Python with the image packages, creates a
   bare venv, installs the image packages from it (untimed: Kaggle's image has them), then times
   ``pip install --no-index --find-links wheels birdinfer`` and, in that venv, loading every model
   (``Predictor(models, precision=...)``: checksums + compile) for f32 and int8.

Figures depend on the disk and the CPU; the script prints the CPU it ran on.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

WHEEL_TARGET = {"python_version": "3.12", "platform": "manylinux_2_28_x86_64"}
IMAGE_PACKAGES = ["numpy", "pandas", "scipy", "soundfile", "soxr", "tqdm"]
DEAD_INDEX = "http://127.0.0.1:9/simple"


def folder_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6


def offline_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") and k != "PYTHONPATH"}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_INDEX_URL=DEAD_INDEX, PIP_NO_INPUT="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    return env


def run(cmd, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kwargs)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, cmd))} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return proc


_LOAD = r"""
import json, sys, time
t0 = time.perf_counter()
from birdinfer.runtime.pipeline import Predictor
t1 = time.perf_counter()
p = Predictor(sys.argv[1], precision=sys.argv[2])
print(json.dumps({"import_s": t1 - t0, "load_s": p.load_seconds, "models": len(p.models), "precision": p.precision,
                  "file": __import__("birdinfer").__file__}))
"""


def main(argv: list[str] | None = None) -> int:
    from birdinfer.tools.bundle import build_bundle
    from birdinfer.spec.manifest import Manifest
    from birdinfer.runtime.models import cpu_capabilities
    from birdinfer.jobs.submit import make_submission

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="work folder (must not exist)")
    parser.add_argument("--files", type=int, default=2)
    parser.add_argument("--skip-venv", action="store_true")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True)
    figures: dict = {"cpu": cpu_capabilities().get("name"), "models": str(args.models)}

    # 1) sizes
    for name, with_onnx in (("with_onnx", True), ("lean", False)):
        t0 = time.perf_counter()
        bundle = build_bundle(args.models, args.out / name, with_onnx=with_onnx, progress=False, **WHEEL_TARGET)
        figures[name] = {"bundle_mb": round(folder_mb(bundle), 1), "models_mb": round(folder_mb(bundle / "models"), 1),
                         "wheels_mb": round(folder_mb(bundle / "wheels"), 1), "build_s": round(time.perf_counter() - t0, 1)}
        print(f"{name}: {figures[name]}", flush=True)
    figures["lean_over_with_onnx"] = round(figures["lean"]["bundle_mb"] / figures["with_onnx"]["bundle_mb"], 4)
    print(f"lean bundle = {figures['lean_over_with_onnx']:.1%} of the bundle with ONNX", flush=True)

    # 2) identical submissions
    from birdinfer.tools.synth import make_dataset

    audio = make_dataset(args.out / "audio", species=4, recordings_per_species=1, soundscapes=2 * args.files, seed=7)
    audio = audio / "test_soundscapes"
    precisions = ["f32"] + (["int8"] if any("int8" in m.variants for m in Manifest.load(args.models).models) else [])
    figures["identical_submissions"] = {}
    for precision in precisions:
        want = make_submission(audio, args.models, out=None, precision=precision, progress=False)
        got = make_submission(audio, args.out / "lean" / "models", out=None, precision=precision, progress=False)
        same = bool(want.equals(got))
        figures["identical_submissions"][precision] = {"equal": same, "rows": len(got)}
        print(f"{precision}: lean submission equals the full folder's: {same} ({len(got)} rows)", flush=True)
        if not same:
            raise SystemExit("submissions differ")

    # 3) offline install + model load in a bare venv
    if not args.skip_venv:
        host = f"{sys.version_info.major}.{sys.version_info.minor}"
        bundle = build_bundle(args.models, args.out / "host", python_version=host, include_image_packages=True, progress=False)
        venv = args.out / "venv"
        run([sys.executable, "-m", "venv", venv])
        python = venv / "bin" / "python"
        wheels = bundle / "wheels"
        run([python, "-m", "pip", "install", "--no-index", "--find-links", wheels, "--progress-bar", "off", *IMAGE_PACKAGES],
            env=offline_env())
        t0 = time.perf_counter()
        run([python, "-m", "pip", "install", "--no-index", "--find-links", wheels, "--progress-bar", "off", "birdinfer"],
            env=offline_env())
        figures["pip_install_no_index_s"] = round(time.perf_counter() - t0, 2)
        print(f"pip install --no-index birdinfer (image packages already there): {figures['pip_install_no_index_s']} s", flush=True)
        for precision in precisions:
            t0 = time.perf_counter()
            out = json.loads(run([python, "-c", _LOAD, bundle / "models", precision], env=offline_env(), cwd=args.out).stdout)
            out["process_s"] = round(time.perf_counter() - t0, 2)
            assert str(venv) in out.pop("file")
            figures[f"venv_load_{precision}"] = {k: round(v, 2) if isinstance(v, float) else v for k, v in out.items()}
            print(f"load {precision} from the bundle in the venv: {figures[f'venv_load_{precision}']}", flush=True)
    (args.out / "figures.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
