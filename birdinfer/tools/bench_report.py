"""``birdinfer bench``'s output: the text tables it prints and the PNG chart of ``--plot``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .bench_stages import KAGGLE_BUDGET_SECONDS, KAGGLE_FILE_SECONDS, KAGGLE_FILES
from ..errors import MissingDependencyError, ParameterError

__all__ = ["budget_verdict", "format_report", "plot_report", "require_pyplot"]


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
                     f"{r['threads_per_model'] or 'default'} thread(s) per model; load {r['load_seconds']} s)")
        if r.get("requests"):
            lines.append("requests: " + ", ".join(f"{k} ×{n}" for k, n in r["requests"].items()))
        lines.append(f"plan: {r['precision_plan']}")
        lines.append("kernels: " + ", ".join(f"{k} ×{n}" for k, n in r["kernel_families"].items()))
        lines += [f"outputs: {x['name']}: {x['columns']}" for x in r["models"] if x.get("columns")]  # label_map cuts
        lines.append("| stage | s / file |")
        lines.append("|---|---|")
        st = r["stages_seconds_per_file"]
        lines.append(f"| decode | {st['decode']:.3f} |")
        lines.append(f"| front end (all features, shared steps computed once) | {st['front_end']:.3f} |")
        for g, s in r["front_end_features_alone_seconds_per_file"].items():
            lines.append(f"|   feature {g} alone | {s:.3f} |")
        lines.append(f"| models (all, as the pipeline runs them) | {st['models']:.3f} |")
        lines.append(f"| post-processing (row steps, ensemble tree, output) | {st['ensemble_output']:.4f} |")
        lines.append(f"| **stages, one after another** | {r['staged_seconds_per_file']:.3f} |")
        lines.append(f"| **pipeline ({r.get('schedule', 'front end in a background thread')})** | "
                     f"{r['pipelined_seconds_per_file']:.3f} |")
        lines.append("")
        lines.append("| model | feature | weight in the ensemble | precision | s / file | GFLOP / file | GFLOP/s | of f32 peak |")
        lines.append("|---|---|---|---|---|---|---|---|")
        for x in r["models"]:
            lines.append(f"| {x['name']} | {x['feature']} | {x['weight']:.3f} | {x['precision']} | {x['seconds_per_file']:.3f} | "
                         f"{_fmt(x['gflop_per_file'], '.1f')} | {_fmt(x['gflops'], '.0f')} | {_fmt(x['f32_peak_fraction'], '.0%')} |")
        lines.append(f"| **total** | | | | {st['models']:.3f} | {_fmt(r['models_gflop_per_file'], '.1f')} | "
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
                     f"{'' if p['fits'] else ' (OVER)'} | {budget_verdict(p)} |")
    return "\n".join(lines)


def budget_verdict(projection: dict) -> str:
    """What the notebook's time budget does with this projection: which models it drops, or none."""
    names = projection.get("budget_would_drop") or []
    if names:
        return f"drops {len(names)}: " + ", ".join(names)
    return "drops models" if projection["drops_models"] else "no model dropped"


def _fmt(value, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def require_pyplot():
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
    plt = require_pyplot()
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
