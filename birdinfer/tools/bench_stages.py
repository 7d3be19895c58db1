"""``birdinfer bench``, one mode: every stage of a model folder timed file by file, and the pipeline end to end.

Works on any folder (a version 1 folder runs as its version 2 spec, as ``Manifest.load`` upgrades it):
decode, each feature of the front end alone and the shared front end as the pipeline computes it, each
model as the pipeline runs it, post-processing (model row steps, label maps, the ensemble tree, output
rows), then :meth:`birdinfer.runtime.pipeline.Predictor.iter_files` end to end for the 700-file projection, and
whether the notebook's time budget would drop models (and which: :class:`birdinfer.runtime.budget.TimeBudget`
run on the measured figures). Also here: the machine's float32 matmul peak and a graph's GFLOP count.
"""

from __future__ import annotations

import gc
import os
import resource
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Sequence

import numpy as np

from ..io.audio import load_audio
from ..runtime.budget import TimeBudget
from ..runtime.cpu import effective_isa
from ..runtime.engine import FrontEndGraph
from ..errors import BirdinferError, ParameterError
from ..runtime.models import ISA_FLAGS, cpu_capabilities, cpu_flags
from ..io.output import plan_columns, row_ids, submission_frame
from ..runtime.pipeline import Predictor
from ..runtime.prune_outputs import prune_output
from ..spec.v2 import ManifestV2
from ..spec.info import effective_weights, features_of

__all__ = ["KAGGLE_FILES", "KAGGLE_FILE_SECONDS", "KAGGLE_BUDGET_SECONDS", "NOTEBOOK_BUDGET_SECONDS", "MODES",
           "bench_mode", "gflop_per_file", "gflop_per_window", "ir_gflop", "machine_info", "matmul_peak_gflops", "parse_mode"]

#: The Kaggle setting the projection is made for: ~700 soundscapes of 60 s in a 90-minute notebook.
KAGGLE_FILES = 700
KAGGLE_FILE_SECONDS = 60.0
KAGGLE_BUDGET_SECONDS = 90 * 60.0
#: What the Kaggle notebook gives make_submission (90 min less 5 for start-up and writing): its time budget
#: drops models when the projection exceeds this less the budget's reserve (10 s).
NOTEBOOK_BUDGET_SECONDS = 85 * 60.0
_BUDGET_RESERVE_SECONDS = 10.0

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
def ir_gflop(xml: str | Path, *, batch: int | None = None, cut=None) -> float | None:
    """GFLOP of one call of the OpenVINO IR ``xml``: 2 × multiply-adds of Convolution, GroupConvolution and
    MatMul operations, from static shapes. ``batch``: first set the input's first axis to this (for a graph
    with a dynamic batch axis). ``cut``: the :class:`~birdinfer.runtime.prune_outputs.OutputColumns` the loaded
    model computes (its head cut as when it was loaded). ``None`` when OpenVINO is missing or a shape stays
    dynamic."""
    try:
        import openvino as ov
    except ImportError:
        return None
    model = ov.Core().read_model(str(xml))
    if cut is not None and prune_output(model, cut) is not None:
        return None  # it was cut when loaded: a count of the whole graph would not be what ran
    if batch is not None:
        try:
            shape = model.input(0).get_partial_shape()
            shape[0] = int(batch)
            model.reshape({model.input(0): shape})
        except RuntimeError:
            return None
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


def gflop_per_file(manifest, entry, windows_per_file: float, *, cut=None) -> float | None:
    """GFLOP a model spends on one file of ``windows_per_file`` input windows (``None``: cannot be counted);
    ``cut``: the columns its head computes (:attr:`birdinfer.runtime.models.LoadedModel.cut`)."""
    per_window = gflop_per_window(manifest, entry, cut=cut)
    return None if per_window is None else per_window * windows_per_file


def gflop_per_window(manifest: ManifestV2, entry, *, cut=None) -> float | None:
    """GFLOP of one input window of a model (its f32 variant's IR, its head cut to ``cut`` when given; ``None``
    when it cannot be counted)."""
    variant = entry.variants.get("f32") or next(iter(entry.variants.values()))
    if not variant.openvino:
        return None
    fixed = entry.batch_chunks
    per_call = ir_gflop(manifest.path_of(variant.openvino), batch=None if fixed else 1, cut=cut)
    return None if per_call is None else per_call / (fixed or 1)


# ============================================================================================ modes
def parse_mode(mode: str) -> tuple[str, str]:
    """A mode name → ``(backend, precision)``: ``"onnxruntime"`` → ONNX Runtime f32; ``auto`` / ``fast`` → the
    default backend choice (``auto``: OpenVINO, or ONNX Runtime for models recorded faster there), as submit runs
    them; ``f32`` / ``bf16`` / ``int8`` → OpenVINO at that precision."""
    if mode == "onnxruntime":
        return "onnxruntime", "f32"
    if mode in ("auto", "fast"):
        return "auto", mode
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
class _Tally:
    """Per-file figures of one mode, recorded file by file (warm-up files are not recorded)."""

    def __init__(self, features: Sequence[str], models: Sequence[str]):
        self.stage: dict[str, list[float]] = {"decode": [], "front_end": [], "models": [], "ensemble_output": []}
        self.feature: dict[str, list[float]] = {f: [] for f in features}
        self.windows: dict[str, list[int]] = {f: [] for f in features}
        self.model: dict[str, list[float]] = {m: [] for m in models}


def _one_file(predictor: Predictor, alone: dict[str, FrontEndGraph], path: Path, columns, tally: _Tally | None) -> None:
    """Decode, front end (shared, then each feature alone), models, post-processing of one file, block by
    block as :meth:`Predictor.iter_files` cuts it; adds the times to ``tally`` (``None``: warm-up)."""
    manifest = predictor.manifest
    clock = time.perf_counter
    t = clock()
    y = load_audio(path, sample_rate=manifest.sample_rate)
    seconds = {"decode": clock() - t, "front_end": 0.0, "models": 0.0}
    feature_s = dict.fromkeys(alone, 0.0)
    windows = dict.fromkeys(alone, 0)
    model_s = dict.fromkeys(predictor.active, 0.0)
    parts = []
    for index, start in enumerate(range(0, y.size, predictor.block_samples)):
        block = y[start : start + predictor.block_samples]
        n = predictor.block_windows(block.size, index)
        if not n:
            continue
        t = clock()
        features = predictor.features(block)
        seconds["front_end"] += clock() - t
        for name, graph in alone.items():
            t = clock()
            graph(block, n)
            feature_s[name] += clock() - t
            windows[name] += int(getattr(features[name], "data", features[name]).shape[0])
        before = dict(predictor.model_seconds)
        t = clock()
        parts.append(predictor.infer_block(features, n))  # as the pipeline runs them
        seconds["models"] += clock() - t
        for name in model_s:
            model_s[name] += predictor.model_seconds[name] - before[name]
    before = dict(predictor.model_seconds)
    t = clock()
    probs = predictor.finish(parts, path.name)  # runs the models on other models' outputs too (runtime.dag)
    submission_frame(row_ids(path.stem, len(probs), manifest.window_seconds), probs, columns)
    on_outputs = {name: predictor.model_seconds[name] - before[name] for name in model_s}
    seconds["ensemble_output"] = clock() - t - sum(on_outputs.values())
    for name, value in on_outputs.items():
        model_s[name] += value
    if tally is not None:
        for key, value in seconds.items():
            tally.stage[key].append(value)
        for name in alone:
            tally.feature[name].append(feature_s[name])
            tally.windows[name].append(windows[name])
        for name, value in model_s.items():
            tally.model[name].append(value)


def _mean(values) -> float:
    return float(np.mean(values)) if len(values) else 0.0


def _model_rows(predictor: Predictor, tally: _Tally, peak: float | None) -> list[dict]:
    manifest = predictor.manifest
    weights = effective_weights(manifest)
    rows = []
    for m in predictor.models:
        seconds = _mean(tally.model[m.name])
        on_output = getattr(m.entry, "source", None) is not None  # reads another model's output: not counted
        g = None if on_output else gflop_per_file(manifest, m.entry, _mean(tally.windows[m.entry.input]), cut=m.cut)
        rows.append({
            "name": m.name, "arch": m.entry.arch, "weight": round(weights[m.name], 4),
            "feature": f"{m.entry.source.model}.{m.entry.source.output}" if on_output else m.entry.input,
            "variant": m.variant, "precision": m.precision, "load_seconds": round(m.load_seconds, 3),
            "kernels": m.kernels or {}, "columns": m.columns, "seconds_per_file": round(seconds, 4),
            "gflop_per_file": None if g is None else round(g, 2),
            "gflops": None if g is None or seconds <= 0 else round(g / seconds, 1),
            "f32_peak_fraction": None if g is None or not peak or seconds <= 0 else round(g / seconds / peak, 3),
        })
    return rows


def _budget_drops(predictor: Predictor, per_model: dict[str, float], pipelined: float, files: int) -> list[str]:
    """Models the notebook's time budget would drop on a run of ``files`` files at these speeds: the budget
    asked once, after the first file (what it asks after every file while the pace holds)."""
    overhead = max(0.0, pipelined - sum(per_model.values()))
    stand_in = SimpleNamespace(manifest=predictor.manifest, active=list(predictor.active), model_seconds=dict(per_model))
    budget = TimeBudget(NOTEBOOK_BUDGET_SECONDS, reserve_s=_BUDGET_RESERVE_SECONDS)
    return budget.plan(stand_in, elapsed=predictor.load_seconds + pipelined, files_done=1, files_left=files - 1,
                       overhead_per_file=overhead)


def _pipelined(predictor: Predictor, paths: Sequence[Path]) -> tuple[float, dict]:
    stats: dict = {}
    start = time.perf_counter()
    results = list(predictor.iter_files(paths, stats=stats))
    seconds = (time.perf_counter() - start) / len(paths)
    failed = [str(r.path) for r in results if not r.ok]
    if failed:
        raise BirdinferError(f"bench: files failed in the pipeline run: {failed}")
    return seconds, stats


def _projection(predictor: Predictor, models: list[dict], pipelined: float, audio_seconds: float) -> dict:
    scale = KAGGLE_FILE_SECONDS / audio_seconds
    projected = KAGGLE_FILES * pipelined * scale + predictor.load_seconds
    per_model = {m["name"]: m["seconds_per_file"] * scale for m in models}
    drops = _budget_drops(predictor, per_model, pipelined * scale, KAGGLE_FILES)
    return {
        "files": KAGGLE_FILES, "file_seconds": KAGGLE_FILE_SECONDS,
        "seconds": round(projected, 1), "minutes": round(projected / 60, 1),
        "budget_seconds": KAGGLE_BUDGET_SECONDS, "budget_fraction": round(projected / KAGGLE_BUDGET_SECONDS, 3),
        "fits": projected <= KAGGLE_BUDGET_SECONDS,
        "notebook_budget_seconds": NOTEBOOK_BUDGET_SECONDS,
        "drops_models": projected > NOTEBOOK_BUDGET_SECONDS - _BUDGET_RESERVE_SECONDS,
        "budget_would_drop": drops,
        "rule": "700 × pipelined seconds per 60 s file + model load time, on this machine; the notebook's "
                "time budget (85 min) drops models when this exceeds it less 10 s (budget_would_drop: which, "
                "by the time budget's rule on these figures)",
    }


def schedule_of(predictor: Predictor) -> str:
    """How the pipeline fed the models: the front end in a background thread, or inline on N threads."""
    threads = predictor.frontend_threads
    if predictor.frontend_thread:
        return "front end in a background thread"
    return f"front end inline, {threads} thread{'s' if threads > 1 else ''}"


def bench_mode(manifest: ManifestV2, mode: str, paths: Sequence[Path], *, peak: float | None, audio_seconds: float) -> dict:
    """Every figure of one mode (see the module docstring) for the files ``paths``."""
    backend, precision = parse_mode(mode)
    rss_before = _rss_mb()
    predictor = Predictor(manifest, precision=precision, backend=backend)
    try:
        used = features_of(manifest, predictor.active)
        alone = {name: FrontEndGraph(predictor.manifest, [name]) for name in used}  # the front end the plan runs
        columns = plan_columns(manifest.labels)
        tally = _Tally(used, predictor.active)
        for path in paths[:_WARMUP_FILES]:
            _one_file(predictor, alone, path, columns, None)
        for path in paths:
            _one_file(predictor, alone, path, columns, tally)
        pipelined, stats = _pipelined(predictor, paths)
        models = _model_rows(predictor, tally, peak)
        stages = {key: round(_mean(values), 4) for key, values in tally.stage.items()}
        models_total = _mean(tally.stage["models"])
        gflops = [m["gflop_per_file"] for m in models]
        total_gflop = sum(gflops) if all(g is not None for g in gflops) else None
        kernels: dict[str, int] = {}
        for m in predictor.models:
            for kind, n in (m.kernels or {}).items():
                kernels[kind] = kernels.get(kind, 0) + n
        first = predictor.models[0] if predictor.models else None
        return {
            "mode": mode, "backend": backend, "precision_requested": precision, "precision_ran": predictor.precision,
            "precision_plan": predictor.plan_summary,
            "kernel_families": dict(sorted(kernels.items(), key=lambda kv: -kv[1])),
            "parallel_models": predictor.parallel_models,
            "threads_per_model": first.threads if first else None,
            "streams_per_model": first.streams if first else None,
            "requests": _requests(predictor.models),
            "load_seconds": round(predictor.load_seconds, 2),
            "block_seconds": None if manifest.block_seconds is None else manifest.block_seconds,
            "stages_seconds_per_file": stages,
            "front_end_features_alone_seconds_per_file": {k: round(_mean(v), 4) for k, v in tally.feature.items()},
            "windows_per_file": {k: round(_mean(v), 2) for k, v in tally.windows.items()},
            "staged_seconds_per_file": round(sum(stages.values()), 4),
            "pipelined_seconds_per_file": round(pipelined, 4),
            "schedule": schedule_of(predictor),
            "pipeline_waited_for_front_end_seconds_per_file": round(stats.get("wait_seconds", 0.0) / len(paths), 4),
            "front_end_share_of_wall": round(stages["front_end"] / pipelined, 4) if pipelined > 0 else None,
            "real_time_factor": round(audio_seconds / pipelined, 1) if pipelined > 0 else None,
            "models": models,
            "models_gflop_per_file": None if total_gflop is None else round(total_gflop, 1),
            "models_gflops": None if total_gflop is None or models_total <= 0 else round(total_gflop / models_total, 1),
            "models_f32_peak_fraction": (None if total_gflop is None or not peak or models_total <= 0
                                         else round(total_gflop / models_total / peak, 3)),
            "projection": _projection(predictor, models, pipelined, audio_seconds),
            "memory_mb": {"rss_before_load": round(rss_before, 1), "rss_after": round(_rss_mb(), 1),
                          "peak_rss_process": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3, 1)},
        }
    finally:
        predictor.close()
        del predictor
        gc.collect()


def _requests(models) -> dict[str, int]:
    """How the models' calls ran (runtime.ov_requests), description → model count."""
    counts: dict[str, int] = {}
    for m in models:
        plan = getattr(m.runner, "request_plan", None)
        key = f"{m.backend}: {plan.describe() if plan is not None else 'one request per call'}"
        counts[key] = counts.get(key, 0) + 1
    return counts
