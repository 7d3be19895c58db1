"""A Perch-v2-shaped graph on OpenVINO against ONNX Runtime (the 2026 teams' runtime), per CPU class.

The graph (random weights, built here with torch and exported to ONNX as the 2026 teams ran Perch v2's
``perch_v2_no_dft.onnx``): input float32 ``[N, 160000]`` (5 s at 32 kHz); an in-graph spectrogram without a DFT
op (frames and a windowed DFT as one strided convolution, power, a mel product, log); an EfficientNet-B3 body
(``timm``, one input channel: Perch v2's backbone family; its 1,536 pooled features are the ``embedding``); a
linear layer to ``label`` ``[N, 14795]`` logits. Frame 640 / hop 320 / 128 mel bins / 500 frames are this
stand-in's choice (Perch v2's exact front end constants are not needed to time it: the body dominates). Batch
norms get the statistics of the graph's own input (as ``export.solutions.calibrate_batch_norm``), so outputs
vary with the input as trained ones do.

Contenders, per class (a child process per class; OpenVINO's kernels capped with ``ONEDNN_MAX_CPU_ISA``), each
timed over the same files in interleaved rounds (order rotated per round), whole process per file: decode
(birdinfer's decoder, a real OGG written here) → 12 windows → the graph → both outputs:

* ``ort tN rR`` — ONNX Runtime 1.x CPU provider, graph optimisations on, ``intra_op_num_threads`` N (1, 2, 4),
  sequential execution (the settings the 2026 notebooks use), the file's 12 windows as runs of R windows (12:
  all at once, as the notebooks do; smaller runs were faster on 2 cores); the best of them is the reference;
* ``ov f32 one`` — OpenVINO, ``INFERENCE_PRECISION_HINT`` f32, latency hint, the 12 windows in one request;
* ``bi f32 rR`` — birdinfer's own loader (``runtime/models.py``, ``runtime/ov_requests.py``): the graph at a
  static batch of R windows, requests over two single-threaded streams (R = 2 is birdinfer's default);
* ``bi f32 r2 cut`` — as ``bi f32 r2`` with the head cut to the 300 columns a label map of the competition's 234
  classes reads (``runtime/prune_outputs.py``, as a folder whose ``label_map`` reads them loads it); its
  ``max|Δlabel|`` is over those columns;
* ``ov bf16 one`` / ``bi bf16 r2`` — the same with a bf16 hint (only where bf16 is native);

ONNX Runtime chooses its own kernels from CPUID (MLAS), so ``ONEDNN_MAX_CPU_ISA`` does not cap it: under a cap
the ORT column is this CPU's native ORT, which is as fast or faster than ORT on the capped class would be (the
ratio shown is then a lower bound for OpenVINO's advantage on that class).

Prints seconds per file (best and median over rounds), the ratio to the best ORT setting, and max |Δ| of both
outputs against ONNX Runtime f32.

    python benchmarks/perch_speed.py                       # native + AVX512_CORE + AVX2, 5 files, 3 rounds
    python benchmarks/perch_speed.py --classes native --files 3 --rounds 2 --arch efficientnet_b0
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SR = 32000
WINDOW = 160000
N_LABELS = 14795
#: The columns a BirdCLEF-2026-style label map reads (234 classes by scientific name plus the members of the genera
#: it falls back to): 300 here, spread over the head; the exact count depends on the taxonomy.
CUT_COLUMNS = np.sort(np.random.default_rng(0).choice(N_LABELS, 300, replace=False)).astype(np.int64)
CAPS = {"native": None, "avx512": "AVX512_CORE", "avx2": "AVX2", "avx512_vnni": "AVX512_CORE_VNNI"}


def build(out: Path, arch: str, seed: int = 0) -> Path:
    """The Perch-shaped network (``birdinfer_export.heads.PerchLikeNet``, random weights, batch norms calibrated on
    its own input) → ``out/perch_like.onnx`` (two outputs: label, embedding)."""
    from birdinfer_export.solutions import export_graph, random_network

    model = random_network({"head": "perch_like", "arch": arch}, N_LABELS, seed=seed)
    path = out / "perch_like.onnx"
    import torch

    export_graph(model, path, torch.zeros(2, WINDOW), input_name="inputs", output_name=["label", "embedding"])
    return path


def _audio(rng: np.random.Generator, windows: int) -> np.ndarray:
    """Chirps in noise, 5 s windows."""
    t = np.arange(WINDOW) / SR
    rows = []
    for _ in range(windows):
        f0 = rng.uniform(1500, 7000)
        y = 0.3 * np.sin(2 * np.pi * (f0 * t + rng.uniform(200, 900) * t ** 2)) * (np.sin(2 * np.pi * rng.uniform(1, 4) * t) > 0)
        rows.append(y + 0.02 * rng.standard_normal(WINDOW))
    return np.stack(rows).astype(np.float32)


def write_files(folder: Path, n: int) -> list[Path]:
    import soundfile as sf

    rng = np.random.default_rng(1)
    paths = []
    for i in range(n):
        p = folder / f"BC2026_Test_{i:04d}_S{i % 10:02d}_20250101_0{i % 10}0000.ogg"
        sf.write(p, _audio(rng, 12).reshape(-1), SR, format="OGG", subtype="VORBIS")
        paths.append(p)
    return paths


def _ort_parts(sess, rows: int):
    """ONNX Runtime on the file's windows as consecutive runs of ``rows`` windows."""
    def run(x):
        parts = [sess.run(["label", "embedding"], {"inputs": x[i : i + rows]}) for i in range(0, len(x), rows)]
        return [np.concatenate([p[k] for p in parts]) for k in (0, 1)]
    return run


def _contenders(onnx: Path, cls: str) -> dict:
    import onnxruntime as ort
    import openvino as ov
    from types import SimpleNamespace

    from birdinfer.runtime.models import _OpenVinoLoader
    from birdinfer.runtime.prune_outputs import OutputColumns, OutputCut

    runners = {}
    for threads, all_rows in ((1, (12,)), (2, (12, 4, 2, 1)), (4, (12, 2))):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(str(onnx), opts, providers=["CPUExecutionProvider"])
        for rows in all_rows:
            runners[f"ort t{threads} r{rows}"] = _ort_parts(sess, rows)
    core = ov.Core()
    model = core.read_model(str(onnx))
    hints = ["f32"] + (["bf16"] if cls == "native" and "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES") else [])
    # birdinfer's own loader (runtime/models.py + runtime/ov_requests.py), as a Perch folder entry would load
    entry = SimpleNamespace(name="perch", batch_chunks=None, named_outputs=(0, 1), input_name=None, sources=(), inputs=())
    for hint in hints:
        compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY"})
        request = compiled.create_infer_request()

        def run(x, r=request, c=compiled):
            r.infer({0: x})
            return [r.get_tensor(c.output(0)).data.copy(), r.get_tensor(c.output(1)).data.copy()]
        runners[f"ov {hint} one"] = run
        for rows in ((2, 1, 3) if hint == "f32" else (2,)):
            loader = _OpenVinoLoader(cache_dir=None, threads=None, streams=2, request_chunks=rows)
            runners[f"bi {hint} r{rows}"] = loader.load(onnx, entry, "f32", hint)[0]
        # a label map reading CUT_COLUMNS of the 14,795: only those computed (runtime/prune_outputs.py)
        loader = _OpenVinoLoader(cache_dir=None, threads=None, streams=2, request_chunks=2)
        need = OutputColumns("perch", "label", 0, N_LABELS, CUT_COLUMNS)
        runners[f"bi {hint} r2 cut"] = loader.load(onnx, entry, "f32", hint, rewrite=OutputCut(need))[0]
    return runners


def measure(onnx: Path, files: list[Path], rounds: int, cls: str) -> dict:
    """In this process (the caller set the cap): every contender, interleaved rounds, seconds per file."""
    from birdinfer.io.audio import load_audio

    runners = _contenders(onnx, cls)
    names = list(runners)
    outputs = {}
    for name in names:  # warm-up and outputs of the first file
        x = load_audio(files[0], sample_rate=SR)[: 12 * WINDOW].reshape(12, WINDOW)
        outputs[name] = runners[name](np.ascontiguousarray(x, dtype=np.float32))
    times = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            start = time.perf_counter()
            for f in files:
                x = load_audio(f, sample_rate=SR)[: 12 * WINDOW].reshape(12, WINDOW)
                runners[name](np.ascontiguousarray(x, dtype=np.float32))
            times[name].append((time.perf_counter() - start) / len(files))
    ref = outputs["ort t1 r12"]
    return {n: {"best": min(t), "median": statistics.median(t),
                "max_dlabel": float(np.abs(outputs[n][0] - (ref[0][:, CUT_COLUMNS] if n.endswith(" cut") else ref[0])).max()),
                "max_demb": float(np.abs(outputs[n][1] - ref[1]).max())} for n, t in times.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--classes", default="native,avx512,avx2", help="comma list of: " + ", ".join(CAPS))
    p.add_argument("--files", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--arch", default="efficientnet_b3")
    p.add_argument("--child", nargs=3, metavar=("ONNX", "FILES_JSON", "CLASS"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        onnx, files, cls = args.child
        print(json.dumps(measure(Path(onnx), [Path(f) for f in json.loads(files)], args.rounds, cls)))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        onnx = build(tmp, args.arch)
        files = write_files(tmp, args.files)
        print(f"graph {args.arch}: {onnx.stat().st_size / 1e6:.1f} MB ONNX, built in {time.perf_counter() - start:.1f} s; "
              f"{len(files)} files × 12 windows; rounds {args.rounds}; load {os.getloadavg()[0]:.2f}")
        for cls in args.classes.split(","):
            env = dict(os.environ)
            env.pop("ONEDNN_MAX_CPU_ISA", None)
            if CAPS[cls]:
                env["ONEDNN_MAX_CPU_ISA"] = CAPS[cls]
            before = os.getloadavg()[0]
            out = subprocess.run([sys.executable, __file__, "--rounds", str(args.rounds), "--child", str(onnx),
                                  json.dumps([str(f) for f in files]), cls], env=env, capture_output=True, text=True)
            if out.returncode:
                print(out.stderr[-3000:])
                return 1
            res = json.loads(out.stdout.strip().splitlines()[-1])
            best_ort = min(v["best"] for n, v in res.items() if n.startswith("ort"))
            print(f"\nclass {cls} (ONEDNN_MAX_CPU_ISA={CAPS[cls] or 'unset'}), load {before:.2f} → {os.getloadavg()[0]:.2f}")
            print(f"{'contender':12s} {'best s/file':>11s} {'median':>8s} {'× best ORT':>10s} {'max|Δlabel|':>11s} {'max|Δemb|':>10s}")
            for n, v in res.items():
                print(f"{n:12s} {v['best']:11.3f} {v['median']:8.3f} {best_ort / v['best']:10.2f} {v['max_dlabel']:11.2e} "
                      f"{v['max_demb']:10.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
