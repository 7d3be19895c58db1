"""``birdinfer bench``: where the time goes, and whether 700 soundscapes fit in Kaggle's 90 minutes.

For any model folder (version 1 folders run as their version 2 spec) and a few 60 s recordings (synthetic OGG files when no folder is given) it measures,
per *mode* (a backend + precision, e.g. OpenVINO f32, OpenVINO INT8, ONNX Runtime):

* every stage separately, file by file: decode, the front end (shared, as the pipeline runs it, and each
  feature alone), the models (as the pipeline runs them: side by side when it runs several at once, each
  model then charged its share of the wall time, in proportion to its own run time), post-processing
  (model row steps, the ensemble tree, output rows); each model's effective weight in the ensemble tree;
* the real pipeline (:meth:`birdinfer.runtime.pipeline.Predictor.iter_files`, its front end in a background thread
  or inline, as the machine's default schedule: :mod:`birdinfer.runtime.block_feed`) end to end: seconds per file, × real time, and the projected wall time of 700 × 60 s files plus the model
  load time against the 90-minute Kaggle budget, and the models the notebook's time budget would drop;
* this machine's float32 matrix-multiply peak (numpy ``float32`` 4096² product) and the fraction of it each
  model reaches. A model's cost in GFLOP per file is computed from its OpenVINO IR: 2 × the
  multiply-adds of every ``Convolution``, ``GroupConvolution`` and ``MatMul`` from their static shapes
  (other operations are not counted; they are a few percent for these networks), per input window, times
  the windows its feature gives per file.

The CPU's name and ISA features (AVX2, AVX-512, VNNI, BF16, AMX) and the precision OpenVINO actually ran
(read back from every compiled model) are recorded. A table is printed; ``json_out`` gets every figure;
``plot`` writes a PNG (matplotlib) of the per-model and per-stage cost with the Kaggle budget marked.

Modules: :mod:`birdinfer.tools.bench_stages` (one mode), :mod:`birdinfer.tools.bench_report` (table and plot),
:mod:`birdinfer.tools.bench_cpu` (``--cpu-class``: the same in child processes under another CPU class's cap).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from ..io.audio import load_audio
from .bench_cpu import BENCH_CLASSES, run_bench_classes
from .bench_report import format_report, plot_report, require_pyplot
from .bench_stages import (KAGGLE_BUDGET_SECONDS, KAGGLE_FILE_SECONDS, KAGGLE_FILES, MODES, NOTEBOOK_BUDGET_SECONDS,
                           bench_mode, gflop_per_file, ir_gflop, machine_info, matmul_peak_gflops, parse_mode)
from ..errors import BirdinferError, ParameterError
from ..runtime.cpu import effective_isa
from ..runtime.plan import ORT_MARGIN
from .precision import update_variants
from ..spec.manifest import Manifest
from ..spec.upgrade import upgrade
from ..jobs.submit import resolve_inputs

__all__ = [
    "KAGGLE_FILES",
    "KAGGLE_FILE_SECONDS",
    "KAGGLE_BUDGET_SECONDS",
    "NOTEBOOK_BUDGET_SECONDS",
    "BENCH_CLASSES",
    "MODES",
    "run_bench",
    "format_report",
    "plot_report",
    "machine_info",
    "matmul_peak_gflops",
    "ir_gflop",
    "gflop_per_file",
    "synthetic_soundscapes",
    "parse_mode",
]

#: Former name of :func:`gflop_per_file` (``benchmarks/compare_reference.py``).
_gflop_per_file = gflop_per_file


# ============================================================================================ audio
def synthetic_soundscapes(folder: str | Path, files: int, *, seconds: float = 60.0, sample_rate: int = 32000, seed: int = 0) -> list[Path]:
    """Write ``files`` seeded OGG soundscapes (coloured noise + chirps + tones) of ``seconds`` into ``folder``."""
    import soundfile as sf

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    n = int(round(seconds * sample_rate))
    for index in range(files):
        rng = np.random.default_rng(seed + index)
        white = rng.standard_normal(n).astype(np.float32)
        noise = np.cumsum(white) * 1e-3  # brown-ish background
        noise -= np.convolve(noise, np.ones(4096, np.float32) / 4096, mode="same")
        y = 0.02 * white + noise
        t = np.arange(int(0.5 * sample_rate), dtype=np.float32) / sample_rate
        for _ in range(int(seconds)):
            start = int(rng.integers(0, n - t.size))
            f0, f1 = rng.uniform(1000, 9000, size=2)
            phase = 2 * np.pi * (f0 * t + 0.5 * (f1 - f0) / t[-1] * t**2)
            y[start : start + t.size] += rng.uniform(0.05, 0.3) * np.sin(phase) * np.hanning(t.size)
        y = np.clip(y, -1, 1).astype(np.float32)
        path = folder / f"soundscape_bench_{index:03d}.ogg"
        # libsndfile's Vorbis encoder is safer with moderate writes
        with sf.SoundFile(path, "w", samplerate=sample_rate, channels=1, format="OGG", subtype="VORBIS") as f:
            for s in range(0, n, 10 * sample_rate):
                f.write(y[s : s + 10 * sample_rate])
        paths.append(path)
    return paths


# ============================================================================================ public
def _bench_audio(audio, files: int, tmp: str, sample_rate: int) -> tuple[list[Path], str, float]:
    """The recordings to time: the first ``files`` of ``audio``, else synthetic 60 s OGG files written to
    ``tmp``. → (paths, a description, their mean length in seconds)."""
    if audio is None:
        paths = synthetic_soundscapes(tmp, files, sample_rate=sample_rate)
        source = f"synthetic: {files} × 60 s OGG (seeded noise + chirps)"
    else:
        paths = resolve_inputs(audio)[:files]
        if not paths:
            raise ParameterError(f"no audio files in {audio}")
        source = str(audio)
    durations = [load_audio(p, sample_rate=sample_rate).size / sample_rate for p in paths]
    return paths, source, float(np.mean(durations))


def _backend_modes(models, compare: Sequence[str] | None, cpu_class: str | None) -> list[str]:
    """``record_backends``: refuse what cannot be recorded fairly; → ``compare`` with modes f32 and onnxruntime."""
    isa = effective_isa()
    if cpu_class not in (None, "native") or isa.cap is not None:
        raise ParameterError(
            f"--record-backends measures this CPU's own class ({isa.native_class}) only: ONNX Runtime chooses its "
            f"kernels from the CPU and ignores ONEDNN_MAX_CPU_ISA, so a capped class cannot be compared fairly; run "
            f"it without --cpu-class and without ONEDNN_MAX_CPU_ISA (on a machine of the class you will run on)")
    if isinstance(models, Manifest):
        raise ParameterError("record_backends needs the model folder's path (it writes into the folder)")
    return list(dict.fromkeys(list(compare or []) + ["f32", "onnxruntime"]))


def _recorded_line(folder, records: dict) -> str:
    return (f"recorded in {Path(folder) / 'manifest.json'} for {effective_isa().cpu_class}: " + ", ".join(
        f"{name} {'onnxruntime' if r['onnxruntime'] < ORT_MARGIN * r['openvino'] else 'openvino'} "
        f"({r['openvino']:.3g} s OpenVINO, {r['onnxruntime']:.3g} s ONNX Runtime per file)" for name, r in records.items()))


def record_backend_speeds(folder: str | Path, report: dict, cpu_class: str) -> dict[str, dict]:
    """Write each model's seconds per file at f32 on OpenVINO (mode ``f32``) and ONNX Runtime (mode
    ``onnxruntime``) from ``report`` (:func:`run_bench`) into the folder's f32 variants, for ``cpu_class``
    (other classes' records are kept). Models missing from either mode (an error, a model without ONNX file)
    are not recorded. → the records written, by model."""
    by_mode = {r["mode"]: r for r in report["modes"]}
    for mode in ("f32", "onnxruntime"):
        if "error" in by_mode.get(mode, {"error": "not run"}):
            raise ParameterError(f"{folder}: cannot record backend speeds: mode {mode} failed "
                                 f"({by_mode.get(mode, {}).get('error', 'not run')})")
    seconds = {mode: {m["name"]: m["seconds_per_file"] for m in by_mode[mode]["models"]} for mode in ("f32", "onnxruntime")}
    manifest = Manifest.load(folder, upgrade=False)
    records, updates = {}, {}
    for entry in manifest.models:
        ov_s, ort_s = seconds["f32"].get(entry.name), seconds["onnxruntime"].get(entry.name)
        if not ov_s or not ort_s:
            continue
        record = {"openvino": round(float(ov_s), 5), "onnxruntime": round(float(ort_s), 5),
                  "files": len(report["audio"]["files"]), "audio": report["audio"]["source"],
                  "measured": time.strftime("%Y-%m-%d")}
        records[entry.name] = record
        previous = dict(entry.variants["f32"].backends or {})
        updates[entry.name] = {"f32": {"backends": {**previous, cpu_class: record}}}
    update_variants(folder, updates)
    return records


def _report(manifest, machine: dict, paths, source: str, audio_seconds: float, precision: str, results: list) -> dict:
    return {
        "models_folder": str(manifest.folder) if manifest.folder else None,
        "n_models": len(manifest.models),
        "machine": machine,
        "audio": {"source": source, "files": [p.name for p in paths], "mean_seconds": round(audio_seconds, 2)},
        "gflop_source": ("OpenVINO IR of each model's f32 variant: 2 × multiply-adds of Convolution, "
                         "GroupConvolution and MatMul from static shapes, per input window × the windows per file"),
        "kaggle": {"files": KAGGLE_FILES, "file_seconds": KAGGLE_FILE_SECONDS, "budget_seconds": KAGGLE_BUDGET_SECONDS},
        "primary": precision,
        "modes": results,
    }


def run_bench(
    models: str | Path | Manifest,
    *,
    audio: str | Path | None = None,
    files: int = 5,
    json_out: str | Path | None = None,
    plot: str | Path | None = None,
    compare: Sequence[str] | None = None,
    precision: str = "auto",
    print_table: bool = True,
    cpu_class: str | None = None,
    record_backends: bool = False,
) -> dict:
    """Benchmark a model folder; return (and optionally write as JSON / plot) every figure.

    ``cpu_class`` (``native``, ``avx512``, ``avx2`` or ``all``): run in child processes under that class's
    oneDNN cap instead (:func:`birdinfer.tools.bench_cpu.run_bench_classes`; no plot).

    Parameters
    ----------
    models : model folder (or loaded :class:`Manifest`).
    audio : folder of recordings (the first ``files`` sorted by name are used); default synthetic 60 s OGG files.
    files : recordings timed per mode (one extra warm-up pass over the first file is not counted).
    json_out : write the figures here as JSON.
    plot : write a PNG chart here (needs matplotlib).
    compare : more modes to time in the same run, side by side (any of :data:`MODES`).
    precision : the main mode (OpenVINO precision, or ``"onnxruntime"``).
    record_backends : also time ``f32`` and ``onnxruntime``; write both into the folder (:func:`record_backend_speeds`).

    Returns
    -------
    dict with ``machine`` (CPU, ISA, matmul peak), ``audio``, ``gflop_source``, ``modes`` (one dict per mode:
    stage seconds per file, per-model seconds / GFLOP / peak fraction, precision that ran, pipelined
    seconds per file, × real time, 700-file projection) and ``primary`` (the main mode's name).
    """
    if int(files) < 1:
        raise ParameterError(f"files must be >= 1, got {files!r}")
    if record_backends:
        compare = _backend_modes(models, compare, cpu_class)
    if cpu_class is not None:
        return run_bench_classes(models, cpu_class, audio=audio, files=files, json_out=json_out, compare=compare,
                                 precision=precision, print_table=print_table)
    files = int(files)
    modes = list(dict.fromkeys([precision] + list(compare or [])))
    for mode in modes:
        parse_mode(mode)  # fail early on a typo
    manifest = upgrade(models if isinstance(models, Manifest) else Manifest.load(models))
    if plot is not None:
        require_pyplot()  # fail before the long part

    machine = machine_info(peak=True)
    peak = machine.get("matmul_f32_gflops")

    with tempfile.TemporaryDirectory(prefix="birdinfer_bench_") as tmp:
        paths, source, audio_seconds = _bench_audio(audio, files, tmp, manifest.sample_rate)
        results = []
        for mode in modes:
            try:
                results.append(bench_mode(manifest, mode, paths, peak=peak, audio_seconds=audio_seconds))
            except BirdinferError as e:
                if mode == precision:
                    raise
                results.append({"mode": mode, "error": f"{type(e).__name__}: {e}"})

    report = _report(manifest, machine, paths, source, audio_seconds, precision, results)
    if record_backends:
        report["backends_recorded"] = record_backend_speeds(models, report, effective_isa().cpu_class)
    if print_table:
        print(format_report(report))
        if record_backends:
            print(_recorded_line(models, report["backends_recorded"]))
    if json_out is not None:
        Path(json_out).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if plot is not None:
        plot_report(report, plot)
    return report
