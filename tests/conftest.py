"""Shared fixtures: synthetic soundscapes written as real OGG files, and one small real model folder
(tf_efficientnet_lite0 in each of the three reference mel groups, random weights in the reference
checkpoint format, exported and verified by birdinfer_export) built once per test session."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from birdinfer.spec.manifest import MelGroup

REPO = Path(__file__).resolve().parents[1]


def cli_env(**extra: str) -> dict:
    """The environment for a ``python -m birdinfer.cli`` child process: this checkout first on PYTHONPATH."""
    import os

    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]), **extra}


def wait_for_lock(lock: Path, proc, timeout: float = 300) -> dict:
    """The lock file's holder record once the running process ``proc`` has written it (fails if ``proc`` ends
    first or never names itself within ``timeout`` seconds)."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the first run ended before it held the lock: {proc.stderr.read()[-3000:]}"
        try:
            info = json.loads(lock.read_text())
            if info.get("pid") == proc.pid:
                return info
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"{lock} never named PID {proc.pid}")


def stop_process(proc) -> None:
    """Kill ``proc`` if it still runs, reap it and close its stderr pipe (the ``finally`` of a started run)."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    proc.stderr.close()


def unprivileged_prefix() -> list[str]:
    """Command prefix under which file permissions apply. Not root: nothing. Root: ``setpriv`` dropping the
    capabilities that bypass permission checks (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH), so uid 0 reads and
    writes only what the mode bits allow its owner. (A throw-away user from ``useradd`` cannot be used here:
    this interpreter lives under /root, mode 0700, which another user cannot enter.) Skips the test where
    neither works."""
    import os
    import shutil
    import subprocess
    import sys

    if not (hasattr(os, "geteuid") and os.geteuid() == 0):
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: cannot run as a process that file permissions apply to")
    prefix = [setpriv, "--inh-caps=-dac_override,-dac_read_search", "--bounding-set=-dac_override,-dac_read_search", "--"]
    probe = subprocess.run(prefix + [sys.executable, "-c", "print(1)"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"setpriv cannot drop capabilities here: {probe.stderr.strip()[-300:]}")
    return prefix

SR = 32000
N_CLASSES = 12
#: The three mel groups of REFERENCE.md section 2, read from the default recipe (one place states them).
REFERENCE_RECIPE = Path(__file__).resolve().parents[1] / "weights" / "birdclef2025_4th.json"
REFERENCE_GROUPS = tuple(MelGroup.from_dict(g) for g in json.loads(REFERENCE_RECIPE.read_text())["groups"])
LABELS = [f"sp{i:02d}" for i in range(N_CLASSES)]

# The reference groups (REFERENCE.md section 2), each with one light real timm architecture.
SMALL_RECIPE = {
    "format": "birdinfer-recipe",
    "format_version": 1,
    "name": "small-three-groups",
    "sample_rate": SR,
    "window_seconds": 5.0,
    "smoothing": 0.15,
    "groups": [
        {"name": "v1", "n_fft": 2048, "hop_length": 64, "n_mels": 256, "fmin": 60, "fmax": 16000, "frames_per_window": 256, "weight": 2.5},
        {"name": "v2", "n_fft": 1536, "hop_length": 64, "n_mels": 192, "fmin": 50, "fmax": 16000, "frames_per_window": 384, "weight": 1.0},
        {"name": "v3", "n_fft": 2048, "hop_length": 128, "n_mels": 224, "fmin": 40, "fmax": 16000, "frames_per_window": 288, "weight": 1.0},
    ],
    "models": [
        {"checkpoint": "lite0_v1.pth", "arch": "tf_efficientnet_lite0", "group": "v1", "weight": 1.5},
        {"checkpoint": "lite0_v1b.pth", "arch": "tf_efficientnet_lite0", "group": "v1", "weight": 0.5},
        {"checkpoint": "lite0_v2.pth", "arch": "tf_efficientnet_lite0", "group": "v2", "weight": 1.0},
        {"checkpoint": "lite0_v3.pth", "arch": "tf_efficientnet_lite0", "group": "v3", "weight": 2.0},
    ],
}


def recipe_manifest(recipe: dict, labels=None):
    """A recipe's groups, models and weights as a version 1 manifest (file names only: nothing here loads a
    network), e.g. the 4th place's from REFERENCE_RECIPE."""
    from birdinfer.spec.manifest import Manifest
    from birdinfer.spec.files import FORMAT

    groups = {g["name"]: g for g in recipe["groups"]}
    models = []
    for m in recipe["models"]:
        g = groups[m["group"]]
        name = m["checkpoint"].rsplit(".", 1)[0]
        models.append({"name": name, "arch": m["arch"], "group": m["group"], "weight": m["weight"],
                       "input_shape": [6, 1, g["n_mels"], 2 * g["frames_per_window"]], "frames_per_chunk": 16,
                       "variants": {"f32": {"openvino": f"{name}.xml"}}})
    labels = labels or [f"sp{i}" for i in range(recipe.get("n_classes", N_CLASSES))]
    return Manifest.from_dict({"format": FORMAT, "format_version": 1, "labels": list(labels), "groups": recipe["groups"],
                               "models": models, "window_seconds": recipe["window_seconds"],
                               "smoothing": recipe["smoothing"], "files": {}})


def recipe_spec(recipe: dict, labels=None):
    """The same as a parsed version 2 manifest (its ``spec_from_v1`` spec)."""
    from birdinfer.spec.upgrade import spec_from_v1
    from birdinfer.spec.parse import parse_spec

    return parse_spec(spec_from_v1(recipe_manifest(recipe, labels)))


def synth_signal(seconds: float, seed: int, sr: int = SR) -> np.ndarray:
    """Chirps, tones and noise: a seeded, spectrally busy test signal in [-1, 1]."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * sr))
    t = np.arange(n) / sr
    y = 0.02 * rng.standard_normal(n)
    for _ in range(max(1, int(seconds))):
        start = rng.uniform(0, max(seconds - 0.5, 0.01))
        length = rng.uniform(0.1, 0.6)
        f0, f1 = rng.uniform(800, 9000, size=2)
        mask = (t >= start) & (t < start + length)
        tt = t[mask] - start
        phase = 2 * np.pi * (f0 * tt + 0.5 * (f1 - f0) / length * tt**2)
        y[mask] += rng.uniform(0.05, 0.4) * np.sin(phase) * np.hanning(mask.sum())
    return np.clip(y, -1, 1).astype(np.float32)


def write_ogg(path: Path, seconds: float, seed: int, sr: int = SR) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    y = synth_signal(seconds, seed, sr)
    # libsndfile's Vorbis encoder can crash on one very large write (seen at 130 s): write in 10 s pieces
    with sf.SoundFile(path, "w", samplerate=sr, channels=1, format="OGG", subtype="VORBIS") as f:
        for start in range(0, len(y), 10 * sr):
            f.write(y[start : start + 10 * sr])
    return path


def can_emulate(cpu_class: str) -> bool:
    """Whether this machine can run ``cpu_class`` under a oneDNN cap (a cap hides features: an AVX2 CPU cannot
    emulate AVX-512)."""
    from birdinfer.runtime.cpu import emulation_problem

    return emulation_problem(cpu_class) is None


#: CPU classes whose oneDNN kernels give the same sums whatever the thread split (Ray workers run one thread, local
#: predict two streams); on the others (AVX2 and below: a capped run or a real CPU) 1.2e-7 was measured between them.
THREAD_EXACT_CLASSES = ("amx", "avx512_vnni_bf16", "avx512_vnni", "avx512")


def assert_same_rows(result, reference) -> None:
    """Two output tables hold the same rows: byte for byte on :data:`THREAD_EXACT_CLASSES`; elsewhere the same
    schema, files and times and every score within 1e-6."""
    if result.equals(reference):
        return
    from birdinfer.runtime.cpu import effective_isa

    cpu_class = effective_isa().cpu_class
    assert cpu_class not in THREAD_EXACT_CLASSES, f"tables differ on {cpu_class}, where they must be identical"
    assert result.schema.equals(reference.schema) and result.num_rows == reference.num_rows
    for column in ("file", "start_s", "end_s"):
        assert result[column].equals(reference[column])
    labels = [c for c in result.column_names if c not in ("file", "start_s", "end_s")]
    np.testing.assert_allclose(np.column_stack([result[c] for c in labels]),
                               np.column_stack([reference[c] for c in labels]), rtol=0, atol=1e-6)


def write_taxonomy(path: Path, labels=LABELS) -> Path:
    rows = ["primary_label,common_name,class_name"] + [f"{x},Bird {x},Aves" for x in labels]
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="session")
def small_model_folder(tmp_path_factory) -> Path:
    """A verified 4-model, 3-group model folder (exported once per session)."""
    pytest.importorskip("torch")
    from birdinfer_export import export_models
    from birdinfer_export.checkpoint import random_checkpoint

    root = tmp_path_factory.mktemp("small_models")
    checkpoints = root / "checkpoints"
    checkpoints.mkdir()
    groups = {g["name"]: g for g in SMALL_RECIPE["groups"]}
    for seed, model in enumerate(SMALL_RECIPE["models"]):
        random_checkpoint(model["arch"], groups[model["group"]]["n_mels"], N_CLASSES, checkpoints / model["checkpoint"], seed=seed)
    recipe = root / "recipe.json"
    recipe.write_text(json.dumps(SMALL_RECIPE))
    out = root / "models"
    export_models(checkpoints, out, recipe=recipe, taxonomy=write_taxonomy(root / "taxonomy.csv"), progress=False)
    return out


@pytest.fixture(scope="session")
def small_checkpoints(small_model_folder) -> Path:
    return small_model_folder.parent / "checkpoints"


@pytest.fixture(scope="session")
def small_v2_folder(small_model_folder, tmp_path_factory) -> Path:
    """A format_version 2 folder of the small models that is not a plain v1 upgrade: the whole file is one
    block, group v3's mel band is 150–14000 Hz, and the ensemble is a three-level tree of other weights."""
    import shutil

    from birdinfer.spec.upgrade import spec_from_v1
    from birdinfer.spec.manifest import Manifest

    v1 = Manifest.load(small_model_folder)
    spec = spec_from_v1(v1)
    spec["block_seconds"] = None
    mel = next(s for s in spec["features"]["v3"]["steps"] if s["op"] == "mel")
    mel.update(fmin=150.0, fmax=14000.0)
    names = [m["name"] for m in spec["models"]]
    spec["ensemble"] = {"steps": [{"step": "weighted_mean"}, {"step": "smooth", "kernel": [0.2, 0.6, 0.2], "mode": "nearest"}],
                        "members": [
                            {"model": names[0], "weight": 1.0},
                            {"name": "rest", "weight": 2.0, "steps": [{"step": "weighted_mean"}], "members": [
                                {"model": names[1], "weight": 3.0},
                                {"name": "deep", "weight": 1.0, "steps": [{"step": "weighted_mean"}], "members": [
                                    {"model": names[2], "weight": 1.0}, {"model": names[3], "weight": 1.0}]}]}]}
    out = tmp_path_factory.mktemp("small_v2")
    for name in v1.files:
        shutil.copyfile(small_model_folder / name, out / name)
    (out / "manifest.json").write_text(json.dumps(spec, indent=2))
    return out


@pytest.fixture(scope="session")
def ray_head():
    """A local Ray head on loopback with 2 worker CPUs, one for the whole session (this process is its driver;
    starting Ray again in the same process after a shutdown can crash it on exit). → GCS address."""
    ray = pytest.importorskip("ray", reason="ray is not installed: pip install 'birdinfer[ray]' to run the Ray tests")
    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=80 * 1024**2,
             _node_ip_address="127.0.0.1", log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
