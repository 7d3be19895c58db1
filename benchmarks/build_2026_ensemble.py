"""A BirdCLEF-2026-style ensemble, random weights, as a model folder: the Perch-v2-shaped graph + 4 SED CNNs,
a probe on Perch's embedding, fused by rank over the submission — to time and project with ``birdinfer bench``.

Shape of the ensemble (the 2026 write-ups, issue "BirdCLEF 2026's winning recipe"): 234 classes; ``perch``
(``birdinfer_export.heads.PerchLikeNet``: 5 s waveform → in-graph spectrogram → EfficientNet-B3 → 14,795 logits,
mapped onto the 234 classes by scientific name with the genus fallback); four CNN classifiers on a 10 s-context
log-mel of every 5 s row (the 2024 1st place's front end, ``weights/birdclef2024_1st.spec.json``) with the 5th
place's blend weights 0.25 / 0.40 / 0.25 / 0.10; an MLP probe (4,608 → 256 → 234) on Perch's 1,536-wide embedding
with the file's mean and std of it as context (the 2nd place's probes read the embedding so); ``rank_mean`` over
the submission (CNNs 0.8, the mean of Perch and its probe 0.2), then
``[0.1, 0.8, 0.1]`` smoothing. Architectures are real timm ones (``--cnn-archs``); all weights random, batch norms
calibrated on synthetic audio (``birdinfer_export.solutions.random_network``). Labels, taxonomy and Perch's label
list are synthetic (150 classes named directly in Perch's list, 60 by genus only, 24 missing).

    python benchmarks/build_2026_ensemble.py --out /tmp/e2026
    birdinfer bench --models /tmp/e2026/models --files 5 --compare onnxruntime --cpu-class all
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

N_CLASSES = 234
N_PERCH = 14795
CNN_ARCHS = ("hgnetv2_b0", "tf_efficientnetv2_b0", "tf_efficientnetv2_b0", "efficientnet_b3")
CNN_WEIGHTS = (0.25, 0.40, 0.25, 0.10)


def names() -> tuple[list[str], list[str], list[str]]:
    """(folder labels, their scientific names, Perch's label list)."""
    labels = [f"sp{i:03d}" for i in range(N_CLASSES)]
    sci = [f"Genus{i // 3:03d} species{i:03d}" for i in range(N_CLASSES)]
    perch = []
    for i, s in enumerate(sci):
        if i < 150:
            perch.append(s)  # direct
        elif i < 210:
            perch.append(f"{s.split()[0]} other{i:03d}")  # the genus only
    perch += [f"Filler{k // 7:05d} sp{k:05d}" for k in range(N_PERCH - len(perch))]
    return labels, sci, perch


PROBE = {"name": "probe", "input": {"model": "perch", "output": "embedding", "context": ["mean", "std"]},
         "input_shape": [-1, 3 * 1536], "outputs": [{"name": "logits", "kind": "clip_logits"}],
         "steps": [{"step": "sigmoid"}, {"step": "clip_rows"}], "variants": {"f32": {"onnx": "probe.onnx"}}}


def write_probe(path: Path, seed: int = 7) -> None:
    """The probe's ONNX: Linear(4608, 256) → ReLU → Linear(256, 234), random weights."""
    import torch

    from birdinfer_export.solutions import export_graph

    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(3 * 1536, 256), torch.nn.ReLU(), torch.nn.Linear(256, N_CLASSES))
    export_graph(net.eval(), path, torch.zeros(2, 3 * 1536), input_name="x", output_name="logits")


def spec(cnn_archs) -> dict:
    with open(Path(__file__).resolve().parent.parent / "weights" / "birdclef2024_1st.spec.json") as f:
        mel = copy.deepcopy(json.load(f)["features"]["mel"])
    labels, _, _ = names()
    cnns = [{"name": f"cnn{i}_{arch}", "input": "mel", "weight": w, "input_name": "x", "input_shape": [-1, 1, 128, 640],
             "outputs": [{"name": "logits", "kind": "clip_logits"}],
             "steps": [{"step": "sigmoid", "output": "logits"}, {"step": "clip_rows", "output": "logits"}],
             "variants": {"f32": {"onnx": f"cnn{i}.onnx"}},
             "export": {"head": "classifier", "arch": arch, "in_chans": 1}}
            for i, (arch, w) in enumerate(zip(cnn_archs, CNN_WEIGHTS))]
    perch = {"name": "perch", "input": "wave", "weight": 1.0, "input_name": "inputs", "input_shape": [-1, 160000],
             "outputs": [{"name": "label", "kind": "clip_logits", "index": 0},
                         {"name": "embedding", "kind": "embedding", "index": 1, "shape": [-1, 1536]}],
             "steps": [{"step": "label_map", "labels": "perch_labels.csv", "taxonomy": "taxonomy.csv", "fill": -10.0,
                        "output": "label"},
                       {"step": "sigmoid", "output": "label"}, {"step": "clip_rows", "output": "label"}],
             "variants": {"f32": {"onnx": "perch.onnx"}},
             "export": {"head": "perch_like", "arch": "efficientnet_b3", "n_labels": N_PERCH, "outputs": ["label", "embedding"]}}
    return {"format": "birdinfer-model-folder", "format_version": 2, "sample_rate": 32000, "labels": labels,
            "rows": {"seconds": 5.0}, "block_seconds": None,
            "features": {"wave": {"steps": [{"op": "windows", "length_seconds": 5.0, "step_seconds": 5.0}]}, "mel": mel},
            "models": cnns + [perch, PROBE],
            "ensemble": {"members": [{"name": "cnns", "weight": 0.8, "members": [{"model": m["name"], "weight": m["weight"]}
                                                                                   for m in cnns],
                                      "steps": [{"step": "weighted_mean"}]},
                                     {"name": "perch_stack", "weight": 0.2, "steps": [{"step": "weighted_mean"}],
                                      "members": [{"model": "perch", "weight": 0.5}, {"model": "probe", "weight": 0.5}]}],
                         "steps": [{"step": "rank_mean", "scope": "submission"}, {"step": "smooth", "kernel": [0.1, 0.8, 0.1]}]},
            "extra": {"description": "BirdCLEF-2026-style ensemble, random weights (benchmarks/build_2026_ensemble.py)"}}


def build(out: Path, cnn_archs=CNN_ARCHS) -> Path:
    from birdinfer_export.solutions import build_solution
    from birdinfer.tools.importer import import_folder

    src = out / "src"
    src.mkdir(parents=True, exist_ok=True)
    labels, sci, perch = names()
    (src / "taxonomy.csv").write_text("primary_label,scientific_name,class_name\n"
                                      + "".join(f"{l},{s},Aves\n" for l, s in zip(labels, sci)))
    (src / "perch_labels.csv").write_text("scientific_name\n" + "\n".join(perch) + "\n")
    raw = src / "raw.json"
    raw.write_text(json.dumps(spec(cnn_archs), indent=1))
    data = spec(cnn_archs)
    probe = data["models"].pop()  # built here, not by build_solution (no export head)
    raw.write_text(json.dumps(data, indent=1))
    spec_path, _ = build_solution(raw, src)
    write_probe(src / "probe.onnx")
    built = json.loads(spec_path.read_text())
    built["models"].append(probe)
    spec_path.write_text(json.dumps(built, indent=1))
    models = out / "models"
    import_folder(spec_path, models, measure=False, overwrite=True)
    return models


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--cnn-archs", nargs=4, default=list(CNN_ARCHS))
    args = p.parse_args(argv)
    start = time.perf_counter()
    folder = build(args.out, args.cnn_archs)
    print(f"{folder}: built in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
