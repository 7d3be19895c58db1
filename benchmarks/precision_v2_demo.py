"""The demo's trained models as a version 2 folder with INT8 variants, scored per CPU class.

The demo's version 1 folder (``birdinfer demo`` / ``birdinfer_train.run_demo``) → its spec
(``spec_from_v1``) → ``birdinfer import --precision int8 --calibration data/train_soundscapes`` (INT8
variants checked per class, bf16 recorded) → per class (child process under the cap): ``make_submission``
on ``data/test_soundscapes`` for each mode of ``$MODES`` (default ``f32 auto fast``), macro ROC-AUC against
``test_solution.csv``, ΔAUC and max / mean |Δp| against f32 under the same class.

    MODES="f32 auto fast int8 bf16" python benchmarks/precision_v2_demo.py DEMO_DIR OUT_DIR native avx512 avx2

With ``LABELLED=1`` the import passes ``--calibration-labels data/train_soundscapes_solution.csv`` (INT8 judged by
ΔAUC on the held-out train soundscapes, :mod:`birdinfer.tools.held_out_labels`); the write-time figures per model
and class (ΔAUC, speed against f32, valid or not) are printed before the scores.
"""
import json
import os
import sys
import time
from pathlib import Path

def score_class(models: str, data: str, out: str) -> dict:
    import numpy as np, pandas as pd
    from birdinfer.runtime.cpu import effective_isa
    from birdinfer.tools.metric import score_files
    from birdinfer.jobs.submit import make_submission
    data, out = Path(data), Path(out); out.mkdir(parents=True, exist_ok=True)
    runs = {}
    for precision in os.environ.get("MODES", "f32 auto fast").split():
        path = out / f"sub_{effective_isa().cpu_class}_{precision}.csv"
        t = time.perf_counter()
        frame = make_submission(data / "test_soundscapes", models, path, sample_submission=data / "sample_submission.csv",
                                precision=precision, progress=False)
        runs[precision] = {"ran": frame.attrs["birdinfer"]["precision"], "auc": float(score_files(path, data / "test_solution.csv")),
                           "csv": str(path), "seconds": time.perf_counter() - t, "rows": len(frame)}
    f32 = pd.read_csv(runs["f32"]["csv"]).drop(columns="row_id").to_numpy(np.float64)
    for r in runs.values():
        p = pd.read_csv(r["csv"]).drop(columns="row_id").to_numpy(np.float64)
        r.update(delta_auc=r["auc"] - runs["f32"]["auc"], max_abs_dp=float(np.abs(p - f32).max()), mean_abs_dp=float(np.abs(p - f32).mean()))
    return {"isa": effective_isa().label(), "runs": runs}

if __name__ == "__main__":
    demo, out = Path(sys.argv[1]), Path(sys.argv[2])
    from birdinfer.runtime.cpu import run_in_cpu_class
    from birdinfer.tools.importer import import_folder
    from birdinfer.spec.upgrade import spec_from_v1
    from birdinfer.spec.manifest import Manifest
    models_v1 = demo / "models"
    spec = spec_from_v1(Manifest.load(models_v1)); spec.pop("files")
    (models_v1 / "spec_v2.json").write_text(json.dumps(spec, indent=1))
    v2 = out / "models_v2"
    if not (v2 / "manifest.json").exists():
        labels = demo / "data" / "train_soundscapes_solution.csv" if os.environ.get("LABELLED") == "1" else None
        import_folder(models_v1 / "spec_v2.json", v2, precision="int8", calibration=demo / "data" / "train_soundscapes",
                      progress=print, overwrite=True, calibration_labels=labels)
    for m in Manifest.load(v2).models:
        int8 = m.variants["int8"]
        for c, f in int8.verification["per_class"].items():
            auc = "" if f.get("delta_auc") is None else f" ΔAUC {f['delta_auc']:+.4f} (f32 {f['auc_f32']:.4f})"
            print(f"  write time {m.name} {c:18s} mean|Δp| {f['mean_abs_dp']:.4f}{auc} model ×{f['speedup_vs_f32']:.2f} "
                  f"vs f32 {'valid' if c in int8.cpu_classes else 'not valid'}")
    for cpu_class in sys.argv[3:]:
        r = run_in_cpu_class(cpu_class, f"{Path(__file__).resolve()}:score_class", {"models": str(v2), "data": str(demo / "data"), "out": str(out)})
        print(r["isa"])
        for k, v in r["runs"].items():
            print(f"  {k:5s} ran {v['ran']:22s} AUC {v['auc']:.4f} ΔAUC {v['delta_auc']:+.4f} max|Δp| {v['max_abs_dp']:.4f} mean|Δp| {v['mean_abs_dp']:.5f} ({v['rows']} rows, {v['seconds']:.1f} s)")
