"""``birdinfer bench --cpu-class``: the benchmark run as another CPU class would run it.

Each class runs :func:`birdinfer.tools.bench.run_bench` in a child process whose ``ONEDNN_MAX_CPU_ISA`` is set
before OpenVINO loads (:func:`birdinfer.runtime.cpu.run_in_cpu_class`): ``native`` (this CPU), ``avx512`` (AVX-512
without VNNI/BF16: Kaggle's Skylake-SP class), ``avx2``; ``all`` runs the three. The report names the
class, the precision that ran per model, the 700-file projection + load time, whether the notebook's
85-minute budget would drop models (and which), and the oneDNN kernels the compiled models use (the runtime graph's
``primitiveType``: ``jit_avx2_*`` under an AVX2 cap, ``*_I8`` for INT8, ...), so a reader can see the cap act.

Caveat: a cap reproduces a class's *instructions* (and so its INT8 arithmetic and accuracy exactly), not
its *speed*: the cores, clocks and caches stay this machine's. Compare modes within one class.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from ..runtime.cpu import run_in_cpu_class
from ..errors import ParameterError
from ..spec.manifest import Manifest

__all__ = ["BENCH_CLASSES", "run_bench_classes", "format_class_table", "kernel_summary"]

#: ``--cpu-class all``: this CPU, Kaggle's class (AVX-512 without VNNI/BF16) and AVX2.
BENCH_CLASSES = ("native", "avx512", "avx2")


def run_bench_classes(
    models: str | Path,
    cpu_class: str | Sequence[str],
    *,
    audio: str | Path | None = None,
    files: int = 5,
    json_out: str | Path | None = None,
    compare: Sequence[str] | None = None,
    precision: str = "auto",
    print_table: bool = True,
) -> dict:
    """:func:`birdinfer.tools.bench.run_bench` once per CPU class (``"all"`` = :data:`BENCH_CLASSES`), each in a
    child process under its cap. Returns ``{"cpu_classes": {class: report}}`` (and writes it to ``json_out``)."""
    if isinstance(models, Manifest):
        if models.folder is None:
            raise ParameterError("bench --cpu-class needs a model folder on disk (the child process loads it)")
        models = models.folder
    classes = list(BENCH_CLASSES) if cpu_class == "all" else [cpu_class] if isinstance(cpu_class, str) else list(cpu_class)
    reports = {}
    for name in classes:
        if print_table:
            print(f"\n######## CPU class {name} (child process) ########", flush=True)
        reports[name] = run_in_cpu_class(name, "birdinfer.tools.bench:run_bench", {
            "models": str(models), "audio": None if audio is None else str(audio), "files": int(files),
            "compare": list(compare or []), "precision": precision, "print_table": print_table})
    report = {"cpu_classes": reports}
    if print_table:
        print("\n" + format_class_table(reports))
    if json_out is not None:
        Path(json_out).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report


def kernel_summary(kernels: dict, top: int = 4) -> str:
    """``{"brgconv_avx512_1x1_I8": 528, ...}`` → ``"brgconv_avx512_1x1_I8 ×528, ..."`` (most used first)."""
    items = sorted(kernels.items(), key=lambda kv: -kv[1])
    text = ", ".join(f"{k} ×{n}" for k, n in items[:top])
    return text + (f", +{len(items) - top} more" if len(items) > top else "")


def _verdict(projection: dict) -> str:
    names = projection.get("budget_would_drop") or []
    if names:
        return f"drops {len(names)}: " + ", ".join(names)
    return "drops models" if projection["drops_models"] else "fits"


def format_class_table(reports: dict) -> str:
    """One table: per class × mode, what ran and how fast, relative to f32 under the same class."""
    lines = ["| CPU class | mode | ran | s / file | × own-class f32 | 700 files + load (min) | 85-min budget | kernels |",
             "|---|---|---|---|---|---|---|---|"]
    for name, report in reports.items():
        label = report["machine"]["cpu_class"]["label"]
        modes = [r for r in report["modes"] if "error" not in r]
        f32 = next((r["pipelined_seconds_per_file"] for r in modes if r["mode"] == "f32"), None)
        for r in report["modes"]:
            if "error" in r:
                lines.append(f"| {label} | {r['mode']} | FAILED: {r['error'][:120]} | | | | | |")
                continue
            p = r["projection"]
            ratio = "—" if not f32 else f"{f32 / r['pipelined_seconds_per_file']:.2f}×"
            lines.append(f"| {label} | {r['mode']} | {r['precision_ran']} | {r['pipelined_seconds_per_file']:.3f} | {ratio} | "
                         f"{p['minutes']:.1f} | {_verdict(p)} | "
                         f"{kernel_summary(r.get('kernel_families', {}))} |")
    lines.append("")
    lines.append("A cap reproduces a class's instructions (and INT8 arithmetic), not its cores or clocks: compare "
                 "modes within one class. The reference pipeline under the same cap: benchmarks/compare_reference.py --cpu-class.")
    return "\n".join(lines)
