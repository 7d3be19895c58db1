"""Model execution: the exported networks of a model folder, compiled once and reused for every file.

Two backends:

* OpenVINO (default): reads the IR (``.xml`` + ``.bin``), compiles it for the CPU once.
* ONNX Runtime: reads the ``.onnx`` file (f32 variants only).

Precision is explicit (:data:`PRECISIONS`) and decided from the *effective ISA* (:mod:`birdinfer.runtime.cpu`:
the CPU's flags capped by ``ONEDNN_MAX_CPU_ISA``), never from OpenVINO's own default guess (which looks
at the real CPU only: under a cap that masks bf16 it still picks bf16 and runs a slow emulated path).
Every OpenVINO compile passes ``INFERENCE_PRECISION_HINT``:

``f32``   float32 everywhere: matches the reference up to float error.
``auto``  the f32 variant; its float layers run bf16 only where the variant records a measured error
          within the bar (max |Δp| <= 5e-3 against f32, on calibration audio, measured when the folder was
          written: :attr:`ModelVariant.bf16`) for this CPU class and bf16 is native; else f32. A folder
          without the record runs f32 (said once in the log).
``bf16``  bf16 where it is native; elsewhere f32 with a warning (emulated bf16 is slower than f32).
``int8``  an INT8 variant of the folder: the first of :data:`INT8_VARIANTS` valid for this CPU class
          (:attr:`ModelVariant.cpu_classes`), else the first present (with a warning), its float layers
          bf16 where native; a model without one runs its f32 variant (logged). An INT8 IR that does not
          compile under a bf16 hint is compiled again with f32 (logged).
``fast``  an INT8 variant only where it records being valid on this class, its float layers bf16 only
          where recorded within the bar (as ``auto``); else ``auto``. The log says which and why.

Every loaded model reports the precision that actually ran (read back from the compiled model).

Threads (OpenVINO): by default a file's 6 chunks run as one request per physical core at once, each on
one thread: the model is reshaped to ``chunks / streams`` chunks per request and compiled with
``PERFORMANCE_HINT=THROUGHPUT`` and ``NUM_STREAMS=streams`` (:func:`physical_cores`). Measured for the 16
models on 2 cores, f32, rounds interleaved (benchmarks/tune_openvino.py): 5.44 s per file against 6.37 s
for one 2-thread request per model (``PERFORMANCE_HINT=LATENCY``), 5.65 s for two different 1-thread
models side by side and 5.65 s for THROUGHPUT with two files in flight (which needs two files' inputs in
memory). Models whose chunk count does not divide fall back to one LATENCY request. A model whose batch axis
is free (no fixed chunk count; rows are independent windows) runs as small static requests of
``request_chunks`` rows over the same streams (:mod:`birdinfer.runtime.ov_requests`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Protocol, Sequence

import numpy as np

from .cpu import INT8_FLAGS, ISA_FLAGS, CpuIsa, cpu_flags, physical_cores
from ..errors import BackendError, MissingDependencyError
from ..spec.manifest import Manifest, ModelEntry
from .graphs import GraphPorts, check_graph, onnxruntime_ports, openvino_ports
from .ov_requests import REQUEST_CHUNKS, RequestPlan, make_runner, request_plan, reshape_batch, rows_independent
from .prune_outputs import OutputColumns, OutputCut, describe, label_map_columns, remapped_entry
from .plan import (BACKEND_CHOICES, BACKENDS, INT8_VARIANTS, PRECISIONS, ModelPlan, bf16_valid, plan_models, plan_variants,
                   variant_valid)

__all__ = [
    "PRECISIONS",
    "BACKENDS",
    "BACKEND_CHOICES",
    "INT8_VARIANTS",
    "INT8_FLAGS",
    "ISA_FLAGS",
    "LoadedModel",
    "ModelPlan",
    "plan_models",
    "variant_valid",
    "bf16_valid",
    "load_models",
    "plan_variants",
    "cpu_capabilities",
    "cpu_flags",
    "physical_cores",
    "describe_precisions",
]

log = logging.getLogger(__name__)

#: Layer types whose OpenVINO kernels (``primitiveType``) are reported: they are nearly all of the work.
KERNEL_LAYERS = ("Convolution", "GroupConvolution", "FullyConnected", "MatMul", "Deconvolution")


class _Runner(Protocol):
    def __call__(self, x: np.ndarray) -> np.ndarray: ...


@dataclass
class LoadedModel:
    """One compiled network plus what the ensemble needs to know about it."""

    entry: ModelEntry
    variant: str  # "f32" or "int8": which stored variant was loaded
    precision: str  # what actually runs, e.g. "f32", "bf16", "int8+bf16", "int8+f32"
    backend: str
    runner: _Runner
    load_seconds: float
    threads: int | None = None  # threads this model was compiled for (None: the backend's default)
    streams: int = 1  # requests run at once per call (OpenVINO split-batch streams)
    kernels: dict[str, int] | None = None  # OpenVINO kernel (primitiveType) → count, over KERNEL_LAYERS
    columns: str = ""  # a label map's output cut to the columns it reads, or why not (runtime.prune_outputs)
    cut: OutputColumns | None = None  # the columns its graph output was cut to (None: computed whole)

    @property
    def name(self) -> str:
        return self.entry.name

    def run(self, chunks: np.ndarray) -> np.ndarray:
        """dB mel chunks ``(n, 1, n_mels, 2F)`` float32 → frame logits ``(n, n_labels, frames_per_chunk)``.

        A model exported with a fixed chunk count gets its input padded (with silence-level dB) or split
        to that count; the padding rows are dropped from the output.
        """
        n = chunks.shape[0]
        fixed = self.entry.batch_chunks
        if fixed is None or n == fixed:
            return self.runner(np.ascontiguousarray(chunks, dtype=np.float32))
        outputs = []
        for start in range(0, n, fixed):
            part = chunks[start : start + fixed]
            if part.shape[0] < fixed:
                pad = np.full((fixed - part.shape[0],) + part.shape[1:], -100.0, dtype=np.float32)
                part = np.concatenate([part, pad], axis=0)
            outputs.append(self.runner(np.ascontiguousarray(part, dtype=np.float32)))
        return np.concatenate(outputs, axis=0)[:n]


def cpu_capabilities() -> dict:
    """What OpenVINO reports about this CPU: name and optimisation capabilities (FP32, BF16, INT8, ...)."""
    try:
        import openvino as ov
    except ImportError:
        return {}
    core = ov.Core()
    caps = {"name": core.get_property("CPU", "FULL_DEVICE_NAME")}
    try:
        caps["capabilities"] = list(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    except Exception:  # older OpenVINO: property missing; not worth failing over
        caps["capabilities"] = []
    return caps



def load_models(
    manifest: Manifest,
    *,
    precision: str = "auto",
    backend: str = "auto",
    cache_dir: str | Path | None = None,
    verify_checksums: bool = True,
    threads: int | None = None,
    streams: int | None = None,
    request_chunks: int | None = REQUEST_CHUNKS,
    isa: CpuIsa | None = None,
    plans: Sequence[ModelPlan] | None = None,
    prune_outputs: bool = True,
    keep_outputs: Sequence[tuple[str, str]] = (),
) -> list[LoadedModel]:
    """Compile every model of ``manifest`` once, as :func:`plan_models` decides (logged). Checksums of the
    files used are verified first; each graph, once read, is checked against the manifest before it is
    compiled (:func:`birdinfer.runtime.graphs.check_graph`: input shape, outputs, class count).

    ``threads``: threads per model (``INFERENCE_NUM_THREADS`` / ONNX Runtime intra-op threads); ``None``
    lets the backend use every core for each call. ``streams`` (OpenVINO): split each call's chunks over
    this many single-threaded requests run at once (default: :func:`physical_cores` when ``threads`` is not
    given, else 1); see the module docstring. ``request_chunks``: rows per request for a model whose batch axis
    is free (:mod:`birdinfer.runtime.ov_requests`; ``None``: one request per call; ONNX Runtime runs such
    calls as consecutive runs of that many rows). ``plans``: from :func:`plan_models` (planned here when None).
    ``prune_outputs`` (OpenVINO): a model whose steps start with ``label_map`` computes only the columns its map
    reads (:mod:`birdinfer.runtime.prune_outputs`; the loaded entry's map gathers from them), unless another model
    or ``keep_outputs`` (``(model, output)`` the caller takes raw) reads that output; logged per model either way.
    """
    if plans is None:
        plans, summary = plan_models(manifest, precision=precision, backend=backend, isa=isa)
        log.info("%s", summary)
    planned = plan_variants(manifest, precision=precision, backend=backend, plans=plans)
    plans, files = [p for p, _ in planned], [name for _, name in planned]
    if verify_checksums:
        names = []
        for p, name in zip(plans, files):
            names += [name] + ([p.entry.variants[p.variant].openvino_bin] if p.backend == "openvino" else [])
        manifest.verify_checksums(names + list(getattr(manifest, "op_files", ())))  # and files front-end ops read
    loaders: dict[str, _OpenVinoLoader | _OnnxRuntimeLoader] = {}
    wanted, reasons = label_map_columns(getattr(manifest, "models", ()), keep_outputs)
    loaded = []
    for p, name in zip(plans, files):
        if p.backend not in loaders:  # each backend's package is imported only when a model runs on it
            if p.backend == "openvino":
                ov_streams = (physical_cores() if threads is None else 1) if streams is None else streams
                loaders[p.backend] = _OpenVinoLoader(cache_dir=cache_dir, threads=threads, streams=int(ov_streams),
                                                     request_chunks=request_chunks)
            else:
                loaders[p.backend] = _OnnxRuntimeLoader(precision=precision, threads=threads,
                                                        request_chunks=request_chunks)
        start = time.perf_counter()
        path = manifest.path_of(name)
        need = wanted.get(p.entry.name)
        cut = OutputCut(need) if need is not None and prune_outputs and p.backend == "openvino" else None
        extra = {"rewrite": cut} if cut is not None else {}
        runner, ran = loaders[p.backend].load(path, p.entry, p.variant, p.hint,
                                              check=partial(check_graph, manifest, p.entry, path), **extra)
        entry, columns = _columns(p, need, cut, reasons.get(p.entry.name), prune_outputs)
        used_streams = getattr(runner, "streams", 1)
        loaded.append(LoadedModel(entry, p.variant, ran, p.backend, runner, time.perf_counter() - start,
                                  1 if used_streams > 1 else threads, used_streams, getattr(runner, "kernels", None),
                                  columns, need if cut is not None and cut.reason is None else None))
        log.debug("loaded %s (%s, %s, %s) in %.2f s", p.entry.name, p.variant, ran, p.backend, loaded[-1].load_seconds)
    return loaded


def _columns(p: ModelPlan, need, cut: OutputCut | None, reason: str | None, prune: bool) -> tuple[ModelEntry, str]:
    """The entry the loaded model runs (its label map remapped when its output was cut) and the load log's line."""
    if cut is not None and cut.reason is None:
        text = describe(need)
        log.info("%s: %s", p.entry.name, text)
        return remapped_entry(p.entry, need), text
    if need is not None:
        why = ("output pruning is off" if not prune else cut.reason if cut is not None
               else f"the {p.backend} backend computes every column")
        reason = f"{need.output}: all {need.width} columns computed: {why}"
    if reason:
        log.info("%s: %s", p.entry.name, reason)
    return p.entry, reason or ""


def kernel_families(compiled) -> dict[str, int]:
    """``primitiveType`` → count over the :data:`KERNEL_LAYERS` of a compiled OpenVINO model's runtime graph
    (e.g. ``brgconv_avx512_1x1_I8``): which oneDNN kernels really run, so an ISA cap can be seen to act."""
    counts: dict[str, int] = {}
    try:
        ops = compiled.get_runtime_model().get_ops()
    except Exception:  # noqa: BLE001 - diagnostics only; an OpenVINO without it must still run
        return counts
    for op in ops:
        rt = op.get_rt_info()
        if "layerType" not in rt or "primitiveType" not in rt:
            continue
        if str(rt["layerType"].value) in KERNEL_LAYERS:
            kind = str(rt["primitiveType"].value)
            counts[kind] = counts.get(kind, 0) + 1
    return counts


class _OpenVinoLoader:
    def __init__(self, *, cache_dir, threads: int | None, streams: int = 1, request_chunks: int | None = REQUEST_CHUNKS):
        try:
            import openvino as ov
        except ImportError as e:
            raise MissingDependencyError(
                "the OpenVINO backend needs the openvino package: pip install openvino "
                "(on Kaggle: from the bundle's wheels folder), or use --backend onnxruntime"
            ) from e
        self.ov = ov
        self.core = ov.Core()
        if cache_dir is not None:
            Path(cache_dir).mkdir(parents=True, exist_ok=True)
            self.core.set_property({"CACHE_DIR": str(cache_dir)})
        self.threads = threads
        self.streams = max(1, int(streams))
        self.request_chunks = request_chunks

    def _config(self, hint: str | None, streams: int = 1) -> dict:
        if streams > 1:  # one single-threaded stream per request of the split call
            config = {"PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": streams, "INFERENCE_NUM_THREADS": streams}
        else:
            config = {"PERFORMANCE_HINT": "LATENCY"}
        if hint is not None:
            config["INFERENCE_PRECISION_HINT"] = hint
        if self.threads and streams == 1:
            config["INFERENCE_NUM_THREADS"] = int(self.threads)
        return config

    def load(self, xml: Path, entry: ModelEntry, variant: str, hint: str,
             check: Callable[[GraphPorts], None] | None = None, rewrite: Callable[[object], None] | None = None):
        """Read, check (``check``: called with the graph's ports before compiling) and compile one IR;
        ``rewrite``: called with the read ``openvino.Model`` after the check (e.g. :class:`OutputCut`)."""
        try:
            model = self.core.read_model(str(xml))
        except Exception as e:  # OpenVINO raises its own RuntimeError subclasses
            raise BackendError(f"{xml}: OpenVINO cannot read this IR ({e}); re-export the model folder") from e
        if check is not None:
            check(openvino_ports(model))
        if rewrite is not None:
            rewrite(model)
        plan = request_plan(entry, self.streams, self.request_chunks)
        if plan.mode != "one":
            try:
                reshape_batch(model, plan.rows)
            except Exception as e:  # a graph that cannot be reshaped keeps one request per call
                log.debug("%s: cannot reshape to %d chunks (%s); one request per call", entry.name, plan.rows, e)
                model = self.core.read_model(str(xml))
                if rewrite is not None:
                    rewrite(model)
                plan = RequestPlan("one", 1)
        try:
            compiled = self.core.compile_model(model, "CPU", self._config(hint, plan.streams))
        except Exception as e:
            if hint == "f32":
                raise BackendError(f"{xml}: OpenVINO cannot compile this model in f32: {e}") from e
            # Seen with INT8 efficientnet_b3 under the bf16 default on AMX CPUs: f32 compiles.
            log.warning("%s: compile failed under precision %r (%s); retrying with f32", entry.name, hint,
                        str(e).splitlines()[0] if str(e) else type(e).__name__)
            try:
                compiled = self.core.compile_model(model, "CPU", self._config("f32", plan.streams))
            except Exception as e2:
                raise BackendError(f"{xml}: OpenVINO cannot compile this model: {e2}") from e2
        ran = _short_type(str(compiled.get_property("INFERENCE_PRECISION_HINT")))
        precision = f"{variant}+{ran}" if variant != "f32" else ran
        return make_runner(compiled, entry, plan, kernel_families(compiled)), precision


def _short_type(text: str) -> str:
    low = text.lower()
    for key, short in (("bfloat16", "bf16"), ("bf16", "bf16"), ("float16", "f16"), ("f16", "f16"), ("float32", "f32"), ("f32", "f32")):
        if key in low:
            return short
    return text


class _OnnxRuntimeLoader:
    def __init__(self, *, precision: str, threads: int | None, request_chunks: int | None = REQUEST_CHUNKS):
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise MissingDependencyError(
                "the ONNX Runtime backend needs the onnxruntime package: pip install 'birdinfer[onnx]' "
                "(on Kaggle: build the bundle with --with-onnxruntime), or use --backend openvino"
            ) from e
        if precision not in ("auto", "f32"):
            log.warning("ONNX Runtime runs float32 only: precision=%r ignored", precision)
        self.ort = ort
        self.threads = threads
        self.request_chunks = request_chunks

    def load(self, path: Path, entry: ModelEntry, variant: str, hint: str | None = None,
             check: Callable[[GraphPorts], None] | None = None):
        """Open one ONNX file in a session and check it (``check``: called with the graph's ports)."""
        options = self.ort.SessionOptions()
        if self.threads:
            options.intra_op_num_threads = int(self.threads)
        try:
            session = self.ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise BackendError(f"{path}: ONNX Runtime cannot load this model: {e}") from e
        if check is not None:
            check(onnxruntime_ports(session))
        input_name = session.get_inputs()[0].name
        named = getattr(entry, "named_outputs", None)  # manifest version 2: several outputs, by index
        free = entry.batch_chunks is None and rows_independent(entry)
        rows = self.request_chunks if free and self.request_chunks else None  # see ov_requests' docstring
        if named is not None:
            input_name = getattr(entry, "input_name", None) or input_name
            sources = getattr(entry, "sources", ())
            names = [s.name or session.get_inputs()[i].name for i, s in enumerate(sources)]

            def run_named(x) -> list[np.ndarray]:
                if sources:
                    outs = session.run(None, dict(zip(names, x)))
                    return [np.asarray(outs[i], dtype=np.float32) for i in named]
                return _in_parts(lambda part: session.run(None, {input_name: part}), x, rows, named)

            run_named.request_plan = RequestPlan("small" if rows and not sources else "one", 1, rows)
            return run_named, "f32"

        def run(x: np.ndarray) -> np.ndarray:
            return _in_parts(lambda part: session.run(None, {input_name: part}), x, rows, (0,))[0]

        run.request_plan = RequestPlan("small" if rows else "one", 1, rows)
        return run, "f32"


def _in_parts(run_one, x: np.ndarray, rows: int | None, indices) -> list[np.ndarray]:
    """ONNX Runtime: ``x`` run as consecutive parts of ``rows`` rows (``None``: at once); outputs ``indices``."""
    if rows is None or x.shape[0] <= rows:
        outs = run_one(x)
        return [np.asarray(outs[i], dtype=np.float32) for i in indices]
    parts = [run_one(x[i : i + rows]) for i in range(0, x.shape[0], rows)]
    return [np.concatenate([np.asarray(p[i], dtype=np.float32) for p in parts]) for i in indices]


def describe_precisions(models: Sequence[LoadedModel]) -> str:
    """``"f32 ×16"`` or ``"int8+bf16 ×14, f32 ×2"``: what actually ran, for logs and summaries."""
    counts: dict[str, int] = {}
    for m in models:
        counts[m.precision] = counts.get(m.precision, 0) + 1
    return ", ".join(f"{p} ×{n}" for p, n in counts.items())
