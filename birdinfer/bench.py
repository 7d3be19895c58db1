"""``birdinfer bench``: where the time goes, and whether 700 soundscapes fit in Kaggle's 90 minutes.

For a model folder and a few 60 s recordings (synthetic OGG files when no folder is given) it measures,
per *mode* (a backend + precision, e.g. OpenVINO f32, OpenVINO INT8, ONNX Runtime):

* every stage separately, file by file: decode, the front end (shared, as the pipeline runs it, and each
  mel group alone), the models (as the pipeline runs them: side by side when it runs several at once, each
  model then charged its share of the wall time, in proportion to its own run time), ensemble + output;
* the real pipeline (:meth:`birdinfer.pipeline.Predictor.iter_files`, front end in its background thread)
  end to end: seconds per file, × real time, and the projected wall time of 700 × 60 s files plus the model
  load time against the 90-minute Kaggle budget;
* this machine's float32 matrix-multiply peak (numpy ``float32`` 4096² product) and the fraction of it each
  model reaches. A model's cost in GFLOP per 60 s file is computed from its OpenVINO IR: 2 × the
  multiply-adds of every ``Convolution``, ``GroupConvolution`` and ``MatMul`` from their static shapes
  (other operations are not counted; they are a few percent for these networks).

The CPU's name and ISA features (AVX2, AVX-512, VNNI, BF16, AMX) and the precision OpenVINO actually ran
(read back from every compiled model) are recorded. A table is printed; ``json_out`` gets every figure;
``plot`` writes a PNG (matplotlib) of the per-model and per-stage cost with the Kaggle budget marked.
"""

from __future__ import annotations

import gc
import json
import os
import resource
import tempfile
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from .audio import load_audio
from .ensemble import combine, smooth
from .errors import BirdinferError, MissingDependencyError, ParameterError
from .features import FrontEnd
from .manifest import Manifest, ModelEntry
from .cpu import effective_isa
from .models import ISA_FLAGS, cpu_capabilities, cpu_flags, plan_models
from .output import plan_columns, row_ids, submission_frame
from .pipeline import Predictor, resolve_inputs

__all__ = [
    "KAGGLE_FILES",
    "KAGGLE_FILE_SECONDS",
    "KAGGLE_BUDGET_SECONDS",
    "NOTEBOOK_BUDGET_SECONDS",
    "BENCH_CLASSES",
    "MODES",
    "run_bench",
    "matmul_peak_gflops",
    "ir_gflop",
    "synthetic_soundscapes",
    "parse_mode",
]

#: The Kaggle setting the projection is made for: ~700 soundscapes of 60 s in a 90-minute notebook.
KAGGLE_FILES = 700
KAGGLE_FILE_SECONDS = 60.0
KAGGLE_BUDGET_SECONDS = 90 * 60.0
#: What the Kaggle notebook gives make_submission (90 min less 5 for start-up and writing): its time budget
#: drops models when the projection exceeds this less the budget's reserve (10 s).
NOTEBOOK_BUDGET_SECONDS = 85 * 60.0
_BUDGET_RESERVE_SECONDS = 10.0
#: ``--cpu-class all``: this CPU, Kaggle's class (AVX-512 without VNNI/BF16) and AVX2.
BENCH_CLASSES = ("native", "avx512", "avx2")

#: Mode names accepted by ``compare`` (and ``precision``): OpenVINO precisions, or ONNX Runtime (float32).
MODES = ("auto", "f32", "bf16", "int8", "fast", "onnxruntime")

_WARMUP_FILES = 1


# ============================================================================================ machine
def matmul_peak_gflops(n: int = 4096, repeats: int = 3) -> float:
    """Best-of-``repeats`` GFLOP/s of a numpy float32 ``(n, n) @ (n, n)`` product (2·n³ FLOP), after a warm-up.

    numpy's BLAS uses every core, as the models do, so this is the f32 ceiling the models are measured against.
    """
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    out = np.empty((n, n), dtype=np.float32)
    np.matmul(a, b, out=out)  # warm-up: thread pool start, page faults
    best = float("inf")
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        np.matmul(a, b, out=out)
        best = min(best, time.perf_counter() - start)
    return 2.0 * n**3 / best / 1e9


def _cpu_model_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown"


def machine_info(*, peak: bool = True) -> dict:
    """CPU name, core count, ISA flags of interest, OpenVINO's view of the CPU, and the f32 matmul peak."""
    flags = cpu_flags()
    info = {
        "cpu": _cpu_model_name(),
        "cpu_class": effective_isa().to_dict(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "isa": {flag: flag in flags for flag in ISA_FLAGS},
    }
    caps = cpu_capabilities()
    if caps:
        info["openvino_device"] = caps.get("name")
        info["openvino_capabilities"] = caps.get("capabilities", [])
    if peak:
        info["matmul_f32_gflops"] = round(matmul_peak_gflops(), 1)
        info["matmul_f32_shape"] = "numpy float32 (4096, 4096) @ (4096, 4096), best of 3"
    return info


# ============================================================================================ model cost
def ir_gflop(xml: str | Path) -> float | None:
    """GFLOP of one call of the OpenVINO IR ``xml``: 2 × multiply-adds of Convolution, GroupConvolution and
    MatMul operations, from static shapes. ``None`` when OpenVINO is missing or a shape is dynamic."""
    try:
        import openvino as ov
    except ImportError:
        return None
    model = ov.Core().read_model(str(xml))
    macs = 0
    try:
        for op in model.get_ordered_ops():
            kind = op.get_type_name()
            if kind not in ("Convolution", "GroupConvolution", "MatMul"):
                continue
            out_shape = [int(d) for d in op.get_output_shape(0)]
            if kind == "MatMul":
                a = [int(d) for d in op.get_input_shape(0)]
                transpose_a = bool(op.get_attributes().get("transpose_a", False))
                k = a[-2] if transpose_a else a[-1]
                macs += int(np.prod(out_shape)) * k
            else:
                w = [int(d) for d in op.get_input_shape(1)]
                # Convolution weights (C_out, C_in, kh, kw); GroupConvolution (G, C_out/G, C_in/G, kh, kw)
                per_output = int(np.prod(w[1:])) if kind == "Convolution" else int(np.prod(w[2:]))
                macs += int(np.prod(out_shape)) * per_output
    except RuntimeError:  # dynamic shape somewhere: no static count
        return None
    return 2.0 * macs / 1e9


def _gflop_per_file(manifest: Manifest, entry: ModelEntry, chunks_per_file: int) -> float | None:
    variant = entry.variants.get("f32") or next(iter(entry.variants.values()))
    if not variant.openvino:
        return None
    per_call = ir_gflop(manifest.path_of(variant.openvino))
    if per_call is None or entry.batch_chunks is None:
        return None
    return per_call * chunks_per_file / entry.batch_chunks


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


# ============================================================================================ modes
def parse_mode(mode: str) -> tuple[str, str]:
    """A mode name → ``(backend, precision)``: ``"onnxruntime"`` → ONNX Runtime f32, else OpenVINO at that precision."""
    if mode == "onnxruntime":
        return "onnxruntime", "f32"
    if mode in MODES:
        return "openvino", mode
    raise ParameterError(f"unknown bench mode {mode!r}; choose from {MODES}")


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6
    except (OSError, ValueError):
        return float("nan")


# ============================================================================================ one mode
def _bench_mode(
    manifest: Manifest, mode: str, paths: Sequence[Path], *, gflop: dict[str, float | None], peak: float | None,
    audio_seconds: float,
) -> dict:
    backend, precision = parse_mode(mode)
    rss_before = _rss_mb()
    plan_summary = plan_models(manifest, precision=precision, backend=backend)[1]
    predictor = Predictor(manifest, precision=precision, backend=backend)
    load_seconds = predictor.load_seconds
    groups = manifest.used_groups()
    shared = FrontEnd(groups, sample_rate=manifest.sample_rate, window_seconds=manifest.window_seconds)
    alone = {g.name: FrontEnd([g], sample_rate=manifest.sample_rate, window_seconds=manifest.window_seconds) for g in groups}
    columns = plan_columns(manifest.labels)

    stage = {"decode": [], "front_end": [], "ensemble_output": []}
    group_seconds: dict[str, list[float]] = {g.name: [] for g in groups}
    model_seconds: dict[str, list[float]] = {m.name: [] for m in predictor.models}
    models_wall: list[float] = []

    def one_file(path: Path, record: bool) -> None:
        t0 = time.perf_counter()
        y = load_audio(path, sample_rate=manifest.sample_rate)
        t1 = time.perf_counter()
        features = shared(y)
        t2 = time.perf_counter()
        for name, front_end in alone.items():
            s = time.perf_counter()
            front_end(y)
            if record:
                group_seconds[name].append(time.perf_counter() - s)
        n = predictor.block_windows(y.size, 0)
        before = dict(predictor.model_seconds)
        t_models = time.perf_counter()
        per_model = predictor.infer_block(features, n)  # as the pipeline runs them (side by side if parallel)
        t3 = time.perf_counter()
        if record:
            models_wall.append(t3 - t_models)
            for name in per_model:
                model_seconds[name].append(predictor.model_seconds[name] - before[name])
        probs = smooth(combine(manifest, per_model), manifest.smoothing)
        submission_frame(row_ids(path.stem, len(probs), manifest.window_seconds), probs, columns)
        t4 = time.perf_counter()
        if record:
            stage["decode"].append(t1 - t0)
            stage["front_end"].append(t2 - t1)
            stage["ensemble_output"].append(t4 - t3)

    for path in paths[:_WARMUP_FILES]:
        one_file(path, record=False)
    for path in paths:
        one_file(path, record=True)

    # The real pipeline: background decode + front end, models in this thread.
    stats: dict = {}
    start = time.perf_counter()
    results = list(predictor.iter_files(paths, stats=stats))
    pipelined = (time.perf_counter() - start) / len(paths)
    failed = [str(r.path) for r in results if not r.ok]
    if failed:
        raise BirdinferError(f"bench: files failed in the pipeline run: {failed}")

    mean = lambda xs: float(np.mean(xs)) if xs else 0.0  # noqa: E731
    models = []
    for m in predictor.models:
        seconds = mean(model_seconds[m.name])
        g = gflop.get(m.name)
        models.append({
            "name": m.name, "arch": m.entry.arch, "group": m.entry.group, "weight": m.entry.weight,
            "variant": m.variant, "precision": m.precision, "load_seconds": round(m.load_seconds, 3),
            "kernels": m.kernels or {},
            "seconds_per_file": round(seconds, 4),
            "gflop_per_file": None if g is None else round(g, 2),
            "gflops": None if g is None or seconds <= 0 else round(g / seconds, 1),
            "f32_peak_fraction": None if g is None or not peak or seconds <= 0 else round(g / seconds / peak, 3),
        })
    models_total = mean(models_wall)
    total_gflop = sum(m["gflop_per_file"] or 0.0 for m in models) if all(m["gflop_per_file"] is not None for m in models) else None
    stages = {
        "decode": round(mean(stage["decode"]), 4),
        "front_end": round(mean(stage["front_end"]), 4),
        "models": round(models_total, 4),
        "ensemble_output": round(mean(stage["ensemble_output"]), 4),
    }
    staged = sum(stages.values())
    projected = KAGGLE_FILES * pipelined * (KAGGLE_FILE_SECONDS / audio_seconds) + load_seconds
    kernels: dict[str, int] = {}
    for m in predictor.models:
        for kind, n in (m.kernels or {}).items():
            kernels[kind] = kernels.get(kind, 0) + n
    result = {
        "mode": mode,
        "backend": backend,
        "precision_requested": precision,
        "precision_ran": predictor.precision,
        "precision_plan": plan_summary,
        "kernel_families": dict(sorted(kernels.items(), key=lambda kv: -kv[1])),
        "parallel_models": predictor.parallel_models,
        "threads_per_model": predictor.models[0].threads if predictor.models else None,
        "streams_per_model": predictor.models[0].streams if predictor.models else None,
        "load_seconds": round(load_seconds, 2),
        "stages_seconds_per_file": stages,
        "front_end_groups_alone_seconds_per_file": {k: round(mean(v), 4) for k, v in group_seconds.items()},
        "staged_seconds_per_file": round(staged, 4),
        "pipelined_seconds_per_file": round(pipelined, 4),
        "pipeline_waited_for_front_end_seconds_per_file": round(stats.get("wait_seconds", 0.0) / len(paths), 4),
        "front_end_share_of_wall": round(stages["front_end"] / pipelined, 4) if pipelined > 0 else None,
        "real_time_factor": round(audio_seconds / pipelined, 1) if pipelined > 0 else None,
        "models": models,
        "models_gflop_per_file": None if total_gflop is None else round(total_gflop, 1),
        "models_gflops": None if total_gflop is None or models_total <= 0 else round(total_gflop / models_total, 1),
        "models_f32_peak_fraction": (None if total_gflop is None or not peak or models_total <= 0
                                     else round(total_gflop / models_total / peak, 3)),
        "projection": {
            "files": KAGGLE_FILES, "file_seconds": KAGGLE_FILE_SECONDS,
            "seconds": round(projected, 1), "minutes": round(projected / 60, 1),
            "budget_seconds": KAGGLE_BUDGET_SECONDS, "budget_fraction": round(projected / KAGGLE_BUDGET_SECONDS, 3),
            "fits": projected <= KAGGLE_BUDGET_SECONDS,
            "notebook_budget_seconds": NOTEBOOK_BUDGET_SECONDS,
            "drops_models": projected > NOTEBOOK_BUDGET_SECONDS - _BUDGET_RESERVE_SECONDS,
            "rule": "700 × pipelined seconds per 60 s file + model load time, on this machine; the notebook's "
                    "time budget (85 min) drops models when this exceeds it less 10 s",
        },
        "memory_mb": {"rss_before_load": round(rss_before, 1), "rss_after": round(_rss_mb(), 1),
                      "peak_rss_process": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3, 1)},
    }
    predictor.close()
    del predictor
    gc.collect()
    return result


# ============================================================================================ public
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
) -> dict:
    """Benchmark a model folder; return (and optionally write as JSON / plot) every figure.

    ``cpu_class`` (``native``, ``avx512``, ``avx2`` or ``all``): run in child processes under that class's
    oneDNN cap instead (:func:`birdinfer.bench_cpu.run_bench_classes`; no plot).

    Parameters
    ----------
    models : model folder (or loaded :class:`Manifest`).
    audio : folder of recordings (the first ``files`` sorted by name are used); default synthetic 60 s OGG files.
    files : recordings timed per mode (one extra warm-up pass over the first file is not counted).
    json_out : write the figures here as JSON.
    plot : write a PNG chart here (needs matplotlib).
    compare : more modes to time in the same run, side by side (any of :data:`MODES`).
    precision : the main mode (OpenVINO precision, or ``"onnxruntime"``).

    Returns
    -------
    dict with ``machine`` (CPU, ISA, matmul peak), ``audio``, ``gflop_source``, ``modes`` (one dict per mode:
    stage seconds per file, per-model seconds / GFLOP / peak fraction, precision that ran, pipelined
    seconds per file, × real time, 700-file projection) and ``primary`` (the main mode's name).
    """
    if int(files) < 1:
        raise ParameterError(f"files must be >= 1, got {files!r}")
    if cpu_class is not None:
        from .bench_cpu import run_bench_classes

        return run_bench_classes(models, cpu_class, audio=audio, files=files, json_out=json_out, compare=compare,
                                 precision=precision, print_table=print_table)
    files = int(files)
    modes = list(dict.fromkeys([precision] + list(compare or [])))
    for mode in modes:
        parse_mode(mode)  # fail early on a typo
    manifest = models if isinstance(models, Manifest) else Manifest.load(models)
    if manifest.format_version != 1:
        raise ParameterError(f"{manifest._where}: `birdinfer bench` times the stages of version 1 folders; for a "
                             "version 2 folder use `birdinfer submit --report run.json` (model, decode and front-end seconds)")
    if plot is not None:
        _import_pyplot()  # fail before the long part

    machine = machine_info(peak=True)
    peak = machine.get("matmul_f32_gflops")
    chunks_per_file = int(round(KAGGLE_FILE_SECONDS / manifest.chunk_seconds))
    gflop = {m.name: _gflop_per_file(manifest, m, chunks_per_file) for m in manifest.models}

    with tempfile.TemporaryDirectory(prefix="birdinfer_bench_") as tmp:
        if audio is None:
            paths = synthetic_soundscapes(tmp, files, sample_rate=manifest.sample_rate)
            source = f"synthetic: {files} × 60 s OGG (seeded noise + chirps)"
        else:
            paths = resolve_inputs(audio)[:files]
            if not paths:
                raise ParameterError(f"no audio files in {audio}")
            source = str(audio)
        durations = [load_audio(p, sample_rate=manifest.sample_rate).size / manifest.sample_rate for p in paths]
        audio_seconds = float(np.mean(durations))
        results = []
        for mode in modes:
            try:
                results.append(_bench_mode(manifest, mode, paths, gflop=gflop, peak=peak, audio_seconds=audio_seconds))
            except BirdinferError as e:
                if mode == precision:
                    raise
                results.append({"mode": mode, "error": f"{type(e).__name__}: {e}"})

    report = {
        "models_folder": str(manifest.folder) if manifest.folder else None,
        "n_models": len(manifest.models),
        "machine": machine,
        "audio": {"source": source, "files": [p.name for p in paths], "mean_seconds": round(audio_seconds, 2)},
        "gflop_source": ("OpenVINO IR of each model's f32 variant: 2 × multiply-adds of Convolution, "
                         "GroupConvolution and MatMul from static shapes, scaled to one 60 s file"),
        "kaggle": {"files": KAGGLE_FILES, "file_seconds": KAGGLE_FILE_SECONDS, "budget_seconds": KAGGLE_BUDGET_SECONDS},
        "primary": precision,
        "modes": results,
    }
    if print_table:
        print(format_report(report))
    if json_out is not None:
        Path(json_out).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if plot is not None:
        plot_report(report, plot)
    return report


# ============================================================================================ output
def format_report(report: dict) -> str:
    """The figures as text tables (what ``birdinfer bench`` prints)."""
    m = report["machine"]
    isa = ", ".join(k for k, v in m["isa"].items() if v) or "none of interest"
    lines = [
        f"CPU: {m['cpu']} ({m['usable_cpus']} usable logical CPUs); ISA: {isa}",
        f"CPU class: {m['cpu_class']['label']}",
        f"f32 matmul peak: {m.get('matmul_f32_gflops')} GFLOP/s ({m.get('matmul_f32_shape')})",
        f"models: {report['models_folder']} ({report['n_models']}); audio: {report['audio']['source']}, "
        f"{len(report['audio']['files'])} files of {report['audio']['mean_seconds']} s",
        "",
    ]
    ok = [r for r in report["modes"] if "error" not in r]
    for r in ok:
        lines.append(f"== mode {r['mode']} ({r['backend']}; ran {r['precision_ran']}; {r['parallel_models']} model(s) at once, "
                     f"{r['streams_per_model']} request(s) per call of {r['threads_per_model'] or 'default'} thread(s); load {r['load_seconds']} s)")
        lines.append(f"plan: {r['precision_plan']}")
        lines.append("kernels: " + ", ".join(f"{k} ×{n}" for k, n in r["kernel_families"].items()))
        lines.append("| stage | s / file |")
        lines.append("|---|---|")
        st = r["stages_seconds_per_file"]
        lines.append(f"| decode | {st['decode']:.3f} |")
        lines.append(f"| front end (all groups, shared STFT) | {st['front_end']:.3f} |")
        for g, s in r["front_end_groups_alone_seconds_per_file"].items():
            lines.append(f"|   mel group {g} alone | {s:.3f} |")
        lines.append(f"| models (all, as the pipeline runs them) | {st['models']:.3f} |")
        lines.append(f"| ensemble + output | {st['ensemble_output']:.4f} |")
        lines.append(f"| **stages, one after another** | {r['staged_seconds_per_file']:.3f} |")
        lines.append(f"| **pipeline (front end in background)** | {r['pipelined_seconds_per_file']:.3f} |")
        lines.append("")
        lines.append("| model | group | precision | s / file | GFLOP / file | GFLOP/s | of f32 peak |")
        lines.append("|---|---|---|---|---|---|---|")
        for x in r["models"]:
            lines.append(f"| {x['name']} | {x['group']} | {x['precision']} | {x['seconds_per_file']:.3f} | "
                         f"{_fmt(x['gflop_per_file'], '.1f')} | {_fmt(x['gflops'], '.0f')} | {_fmt(x['f32_peak_fraction'], '.0%')} |")
        lines.append(f"| **total** | | | {st['models']:.3f} | {_fmt(r['models_gflop_per_file'], '.1f')} | "
                     f"{_fmt(r['models_gflops'], '.0f')} | {_fmt(r['models_f32_peak_fraction'], '.0%')} |")
        lines.append("")
    lines.append("| mode | ran | load s | front end s/file | models s/file | pipeline s/file | × real time | "
                 "front end share | models of f32 peak | 700 files (min) | of 90-min budget | notebook's 85-min budget |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in report["modes"]:
        if "error" in r:
            lines.append(f"| {r['mode']} | FAILED: {r['error'][:150]} |")
            continue
        p = r["projection"]
        st = r["stages_seconds_per_file"]
        lines.append(f"| {r['mode']} | {r['precision_ran']} | {r['load_seconds']:.1f} | {st['front_end']:.3f} | {st['models']:.3f} | "
                     f"{r['pipelined_seconds_per_file']:.3f} | {r['real_time_factor']} | {_fmt(r['front_end_share_of_wall'], '.1%')} | "
                     f"{_fmt(r['models_f32_peak_fraction'], '.0%')} | {p['minutes']:.1f} | {p['budget_fraction']:.0%}"
                     f"{'' if p['fits'] else ' (OVER)'} | {'drops models' if p['drops_models'] else 'no model dropped'} |")
    return "\n".join(lines)


def _fmt(value, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def _import_pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise MissingDependencyError("bench --plot needs matplotlib: pip install matplotlib (or drop --plot)") from e
    return plt


def plot_report(report: dict, path: str | Path) -> Path:
    """PNG: left, seconds per file of each model (one bar per mode); right, projected minutes for 700 files
    per mode split into stages, with the 90-minute Kaggle budget as a line."""
    plt = _import_pyplot()
    ok = [r for r in report["modes"] if "error" not in r]
    if not ok:
        raise ParameterError("nothing to plot: every mode failed")
    names = [m["name"] for m in ok[0]["models"]]
    fig, (left, right) = plt.subplots(1, 2, figsize=(14, max(4.5, 0.32 * len(names) + 1.5)),
                                      gridspec_kw={"width_ratios": [3, 2]})
    height = 0.8 / len(ok)
    y = np.arange(len(names))
    for k, r in enumerate(ok):
        seconds = {m["name"]: m["seconds_per_file"] for m in r["models"]}
        left.barh(y + k * height, [seconds.get(n, 0.0) for n in names], height=height, label=f"{r['mode']} ({r['precision_ran']})")
    left.set_yticks(y + 0.4 - height / 2)
    left.set_yticklabels(names, fontsize=8)
    left.invert_yaxis()
    left.set_xlabel("seconds per 60 s file")
    left.set_title("per model")
    left.legend(fontsize=8)

    scale = KAGGLE_FILES / 60.0 * (KAGGLE_FILE_SECONDS / max(report["audio"]["mean_seconds"], 1e-9))
    bottoms = np.zeros(len(ok))
    x = np.arange(len(ok))
    for key, label in (("decode", "decode"), ("front_end", "front end"), ("models", "models"), ("ensemble_output", "ensemble + output")):
        values = np.array([r["stages_seconds_per_file"][key] * scale for r in ok])
        right.bar(x, values, bottom=bottoms, label=f"{label} (stages alone)")
        bottoms += values
    loads = np.array([r["load_seconds"] / 60.0 for r in ok])
    right.bar(x, loads, bottom=bottoms, label="model load")
    right.scatter(x, [r["projection"]["minutes"] for r in ok], color="black", marker="D", zorder=3, label="pipeline, measured")
    right.axhline(KAGGLE_BUDGET_SECONDS / 60.0, color="red", linestyle="--", label="Kaggle budget (90 min)")
    right.set_xticks(x)
    right.set_xticklabels([r["mode"] for r in ok])
    right.set_ylabel(f"minutes for {KAGGLE_FILES} × 60 s files")
    right.set_title("projected wall time")
    right.legend(fontsize=8)
    fig.suptitle(f"{report['machine']['cpu']} — f32 matmul peak {report['machine'].get('matmul_f32_gflops')} GFLOP/s", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
