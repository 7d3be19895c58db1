"""The ``birdinfer`` sub-commands that build, measure and prepare model folders (``export``, ``import``,
``bundle``, ``bench``, ``synth``, ``score``, ``train``, ``pseudo``, ``demo``) and the argument helpers every
sub-command shares; :mod:`birdinfer.cli` adds the run commands (``submit``, ``predict``, ``species``) and ``main``.

Each ``_cmd_*`` only parses arguments and calls the library function that does the work.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import ParameterError

__all__ = ["precision_arg", "backend_arg", "TOOL_COMMANDS"]


def precision_arg(p: argparse.ArgumentParser, default: str = "auto") -> None:
    p.add_argument(
        "--precision",
        default=default,
        choices=["auto", "f32", "bf16", "int8", "fast"],
        help="f32: force float32 (bit-for-bit with the reference up to float error); auto: bf16 where the CPU has "
        "it natively (and ONEDNN_MAX_CPU_ISA does not mask it), else f32; bf16: ask for bf16; int8: the model "
        "folder's INT8 variant valid for this CPU class; fast: the fastest variant meeting the accuracy bar on "
        "this CPU class (a valid INT8 variant, else auto). The log says which precision ran and why. "
        f"(default: {default})",
    )


def backend_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", default="auto", choices=["auto", "openvino", "onnxruntime"],
                   help="inference backend: auto (default) = OpenVINO, except models whose folder records ONNX Runtime "
                   "faster on this CPU class (birdinfer bench --record-backends)")


# --------------------------------------------------------------------------------------------- export
def _add_export(sub) -> None:
    p = sub.add_parser("export", help="checkpoints → verified ONNX/OpenVINO model folder (needs birdinfer[export])")
    p.add_argument("--checkpoints", type=Path, required=True, help="folder holding the .pth checkpoints")
    p.add_argument("--out", type=Path, required=True, help="model folder to write")
    p.add_argument("--recipe", type=Path, default=None, help="ensemble recipe JSON (default: weights/birdclef2025_4th.json)")
    p.add_argument("--taxonomy", type=Path, default=None, help="taxonomy.csv: class labels in output order")
    p.add_argument("--models", nargs="+", default=None, metavar="STEM", help="export only these checkpoint stems")
    p.add_argument("--precision", default="f32", choices=["f32", "int8"], help="int8 adds NNCF-quantized variants (default f32)")
    p.add_argument("--calibration", type=Path, default=None, help="soundscapes for INT8 calibration and verification input")
    p.add_argument("--calibration-labels", type=Path, default=None,
                   help="with --precision int8: the --calibration soundscapes' solution CSV; INT8 is then valid where "
                        "its held-out macro ROC-AUC is within 0.002 of f32's")
    p.add_argument("--no-precision-check", action="store_true",
                   help="do not measure bf16 against f32 (auto / fast then run f32 float layers for this folder)")
    p.add_argument("--chunks", type=int, default=6, help="fixed chunk axis of the exported input (default 6 = 60 s)")
    p.add_argument("--dynamic-chunks", action="store_true", help="export a dynamic chunk axis instead of a fixed one")
    p.add_argument("--no-onnx", action="store_true",
                   help="verify the ONNX files, then leave them out of the folder (OpenVINO only; about half the size)")
    p.add_argument("--ir-weights", default="f32", choices=["f32", "f16"],
                   help="f16: store the IR's weights in float16 (half the size, computed in f32; its difference from "
                   "torch is recorded in the manifest and is above the f32 contract). f32 folders only (default f32)")
    p.add_argument("--int8-keep-depthwise", action="store_true",
                   help="with --precision int8: leave depthwise convolutions in float (less INT8 error, a little slower)")
    p.add_argument("--int8-overflow-fix", default=None, choices=["first_layer", "enable", "disable"],
                   help="with --precision int8: NNCF's overflow fix for one custom int8 variant (enable = 7-bit weights "
                   "everywhere). Without this and --int8-keep-depthwise the measured default variant set is written")
    p.set_defaults(func=_cmd_export)


def _cmd_export(args) -> int:
    try:
        from birdinfer_export import DEPTHWISE_OPS, export_models
    except ImportError as e:
        from ..errors import MissingDependencyError

        raise MissingDependencyError(
            f"`birdinfer export` needs the export extra (torch, timm, onnx, nncf): pip install 'birdinfer[export]' ({e})"
        ) from e
    export_models(args.checkpoints, args.out, recipe=args.recipe, taxonomy=args.taxonomy, models=args.models,
                  precision=args.precision, calibration=args.calibration, chunks=args.chunks,
                  dynamic_chunks=args.dynamic_chunks,
                  int8_float_ops=DEPTHWISE_OPS if args.int8_keep_depthwise else (), keep_onnx=not args.no_onnx,
                  ir_weights=args.ir_weights, int8_overflow_fix=args.int8_overflow_fix,
                  measure_precision=not args.no_precision_check, calibration_labels=args.calibration_labels)
    return 0


# --------------------------------------------------------------------------------------------- import
def _add_import(sub) -> None:
    p = sub.add_parser("import", help="your ONNX/OpenVINO models + a spec (manifest v2, docs/manifest_v2.md), or "
                                      "BirdNET V2.4's .tflite → model folder")
    p.add_argument("spec", type=Path, help="spec JSON: a version 2 manifest without 'files'; graph files relative to it. "
                                           "Or BirdNET V2.4's MODEL.tflite (with --labels)")
    p.add_argument("--labels", type=Path, default=None, help="with a .tflite model: its labels file, one per line")
    p.add_argument("--meta-model", type=Path, default=None, help="with BirdNET's .tflite: its location meta model "
                   "(BirdNET_GLOBAL_6K_V2.4_MData_Model_V2_FP16.tflite), for predict --lat/--lon/--week")
    p.add_argument("--translated-labels", type=Path, default=None, metavar="DIR", help="with BirdNET's .tflite: the "
                   "folder of its translated labels (<labels stem>_<locale>.txt, BirdNET-Analyzer's labels/V2.4), "
                   "copied into the folder for predict --locale")
    p.add_argument("--out", type=Path, required=True, help="model folder to write (new or empty)")
    p.add_argument("--force", action="store_true", help="write into a non-empty folder")
    p.add_argument("--precision", default="f32", choices=["f32", "int8"],
                   help="int8 adds an NNCF INT8 variant per model, checked per CPU class (needs birdinfer[export]); "
                        "--precision fast then runs it where valid (default f32: the graphs as given)")
    p.add_argument("--calibration", type=Path, default=None,
                   help="soundscapes for INT8 calibration and the bf16 / INT8 checks against f32 (default: "
                        "seeded synthetic soundscapes; BirdNET's INT8 bar needs real recordings)")
    p.add_argument("--calibration-labels", type=Path, default=None,
                   help="with --precision int8: the --calibration soundscapes' solution CSV (row_id + one 0/1 column "
                        "per class); INT8 is then valid on a CPU class where its held-out macro ROC-AUC is within 0.002 "
                        "of f32's (else: the label-free mean |Δp| bar)")
    p.add_argument("--no-precision-check", action="store_true",
                   help="do not measure bf16 against f32 (auto / fast then run f32 float layers for this folder)")
    p.set_defaults(func=_cmd_import)


def _cmd_import(args) -> int:
    from .importer import import_folder

    say = None if args.quiet else (lambda line: print(line, file=sys.stderr))
    if args.meta_model is not None and args.spec.suffix.lower() != ".tflite":
        raise ParameterError("--meta-model goes with BirdNET's .tflite model: `birdinfer import MODEL.tflite --labels "
                             "LABELS.txt --meta-model MDATA.tflite --out DIR`")
    if args.translated_labels is not None and args.spec.suffix.lower() != ".tflite":
        raise ParameterError("--translated-labels goes with BirdNET's .tflite model: `birdinfer import MODEL.tflite "
                             "--labels LABELS.txt --translated-labels DIR --out DIR`")
    if args.spec.suffix.lower() == ".tflite" or args.labels is not None:
        if args.labels is None or args.spec.suffix.lower() != ".tflite":
            raise ParameterError("--labels goes with a .tflite model: birdinfer import MODEL.tflite --labels LABELS.txt --out DIR")
        from .birdnet_import import import_birdnet

        if args.calibration_labels is not None:
            raise ParameterError(f"--calibration-labels {args.calibration_labels}: BirdNET's INT8 bar is top-1 agreement "
                                 "and mean |Δscore| on real recordings; labels apply to a spec's import")

        manifest = import_birdnet(args.spec, args.labels, args.out, overwrite=args.force, precision=args.precision,
                                  calibration=args.calibration, measure=not args.no_precision_check, progress=say,
                                  meta_model=args.meta_model, translated_labels=args.translated_labels)
        if not args.quiet:
            print(f"birdinfer import: BirdNET V2.4, {len(manifest.labels)} labels → {args.out}", file=sys.stderr)
        return 0
    manifest = import_folder(args.spec, args.out, overwrite=args.force, precision=args.precision,
                             calibration=args.calibration, measure=not args.no_precision_check, progress=say,
                             calibration_labels=args.calibration_labels)
    if not args.quiet:
        print(f"birdinfer import: {len(manifest.models)} model(s), {len(manifest.labels)} labels → {args.out}", file=sys.stderr)
    return 0


# --------------------------------------------------------------------------------------------- bundle
def _add_bundle(sub) -> None:
    p = sub.add_parser("bundle", help="build the offline Kaggle dataset folder (wheels + models)")
    p.add_argument("--models", type=Path, required=True, help="model folder to ship")
    p.add_argument("--out", type=Path, required=True, help="bundle folder to write")
    p.add_argument("--python-version", default="3.12", help="target Python (Kaggle: 3.12)")
    p.add_argument("--platform", default="manylinux_2_28_x86_64", help="target wheel platform")
    p.add_argument("--with-onnxruntime", action="store_true", help="also bundle ONNX Runtime (implies --with-onnx)")
    p.add_argument("--with-onnx", action="store_true",
                   help="also ship the models' ONNX files (default: only the OpenVINO IR, which is all the default "
                   "backend loads; about half the size)")
    p.add_argument("--slug", default="birdinfer-bundle", help="Kaggle dataset slug")
    p.add_argument("--kaggle-username", default=None,
                   help="owner written into dataset-metadata.json (default: $KAGGLE_USERNAME, else a placeholder)")
    p.add_argument("--include-image-packages", action="store_true",
                   help="also bundle numpy, pandas, scipy, soundfile, soxr, tqdm (which the Kaggle image has): "
                   "for testing in a bare virtual environment")
    p.add_argument("--project-root", type=Path, default=None,
                   help="birdinfer source tree to build the wheel from (default: the one this birdinfer runs from)")
    p.set_defaults(func=_cmd_bundle)


def _cmd_bundle(args) -> int:
    from .bundle import build_bundle

    build_bundle(args.models, args.out, python_version=args.python_version, platform=args.platform,
                 with_onnxruntime=args.with_onnxruntime, with_onnx=args.with_onnx, slug=args.slug, progress=not args.quiet,
                 include_image_packages=args.include_image_packages, project_root=args.project_root,
                 kaggle_username=args.kaggle_username)
    return 0


# ---------------------------------------------------------------------------------------------- bench
def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="per-stage latency, throughput and projected Kaggle wall time")
    p.add_argument("--models", type=Path, required=True, help="model folder")
    p.add_argument("--audio", type=Path, default=None, help="folder of soundscapes (default: synthetic audio)")
    p.add_argument("--files", type=int, default=5, help="files to time (default 5)")
    p.add_argument("--json", dest="json_out", type=Path, default=None, help="write full figures as JSON")
    p.add_argument("--plot", type=Path, default=None, help="write a PNG chart of per-model and per-stage cost")
    p.add_argument("--compare", nargs="*", default=None, metavar="MODE",
                   help="also time these modes side by side (f32 bf16 int8 onnxruntime)")
    p.add_argument("--cpu-class", default=None, choices=["native", "avx512", "avx2", "all"],
                   help="run in a child process with oneDNN capped to this CPU class (avx512 = Kaggle's AVX-512 "
                   "without VNNI/BF16; all = the three, one table)")
    p.add_argument("--record-backends", action="store_true",
                   help="also time every model at f32 on OpenVINO and on ONNX Runtime and record both in the folder for "
                   "this CPU class; --backend auto then runs each model on the faster one")
    precision_arg(p)
    p.set_defaults(func=_cmd_bench)


def _cmd_bench(args) -> int:
    from .bench import run_bench

    if args.cpu_class is not None and args.plot is not None:
        raise ParameterError("--plot is not available with --cpu-class (run once per class without --cpu-class)")
    run_bench(args.models, audio=args.audio, files=args.files, json_out=args.json_out, plot=args.plot,
              compare=args.compare, precision=args.precision, cpu_class=args.cpu_class,
              record_backends=args.record_backends)
    return 0


# ---------------------------------------------------------------------------------------------- synth
def _add_synth(sub) -> None:
    p = sub.add_parser("synth", help="write a BirdCLEF-format synthetic dataset")
    p.add_argument("out_dir", type=Path)
    p.add_argument("--species", type=int, default=8)
    p.add_argument("--recordings-per-species", type=int, default=12)
    p.add_argument("--soundscapes", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_synth)


def _cmd_synth(args) -> int:
    from .synth import make_dataset

    make_dataset(args.out_dir, species=args.species, recordings_per_species=args.recordings_per_species,
                 soundscapes=args.soundscapes, seed=args.seed)
    return 0


# ---------------------------------------------------------------------------------------------- score
def _add_score(sub) -> None:
    p = sub.add_parser("score", help="macro ROC-AUC of a submission against a solution (competition metric)")
    p.add_argument("submission", type=Path)
    p.add_argument("solution", type=Path)
    p.set_defaults(func=_cmd_score)


def _cmd_score(args) -> int:
    from .metric import score_files

    print(f"{score_files(args.submission, args.solution):.6f}")
    return 0


# ---------------------------------------------------------------------------------------------- train
def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train one SED model (needs birdinfer[train])")
    p.add_argument("--data", type=Path, required=True, help="BirdCLEF-format folder (taxonomy.csv, train.csv, train_audio/)")
    p.add_argument("--arch", required=True, help="timm architecture, e.g. tf_efficientnet_lite0")
    p.add_argument("--group", default="v1", help="mel group name (v1, v2, v3; default v1)")
    p.add_argument("--out", type=Path, required=True, help="checkpoint file to write (.pth, reference format)")
    p.add_argument("--loss", default="soft-auc", choices=["soft-auc", "auc", "bce"])
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--crop", default="first10", choices=["first10", "random"])
    p.add_argument("--pseudo-labels", type=Path, default=None, help="soft labels CSV from `birdinfer pseudo-label`")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cuda / cpu (default: cuda when available)")
    p.add_argument("--frame-loss-weight", type=float, default=0.0,
                   help="extra loss on the max over time of the frame-wise logits (what the runtime scores; 0 = reference)")
    p.add_argument("--noise-negatives", type=float, default=0.0,
                   help="add this fraction of noise-only samples with all labels 0 (default 0 = reference)")
    p.add_argument("--noise-probability", type=float, default=0.0,
                   help="chance that a crop gets generated background noise added (default 0 = reference)")
    p.set_defaults(func=_cmd_train)


def _cmd_train(args) -> int:
    train = _import_train("train")
    train(data=args.data, arch=args.arch, group=args.group, out=args.out, loss=args.loss, epochs=args.epochs,
          batch_size=args.batch_size, lr=args.lr, crop=args.crop, pseudo_labels=args.pseudo_labels,
          seed=args.seed, device=args.device, frame_loss_weight=args.frame_loss_weight,
          noise_negatives=args.noise_negatives, noise_probability=args.noise_probability)
    return 0


def _add_pseudo(sub) -> None:
    p = sub.add_parser("pseudo-label", help="label unlabelled soundscapes with an ensemble (soft labels CSV)")
    p.add_argument("audio_dir", type=Path, help="unlabelled soundscapes (e.g. train_soundscapes)")
    p.add_argument("--models", type=Path, required=True, help="model folder of the labelling ensemble")
    p.add_argument("--out", type=Path, required=True, help="soft labels CSV to write")
    precision_arg(p, default="f32")
    p.set_defaults(func=_cmd_pseudo)


def _cmd_pseudo(args) -> int:
    from ..jobs.pseudo import pseudo_label

    pseudo_label(args.audio_dir, args.models, args.out, precision=args.precision)
    return 0


def _import_train(name: str):
    try:
        import birdinfer_train
    except ImportError as e:
        from ..errors import MissingDependencyError

        raise MissingDependencyError(f"training needs the train extra (torch, timm): pip install 'birdinfer[train]' ({e})") from e
    return getattr(birdinfer_train, name)


# ----------------------------------------------------------------------------------------------- demo
def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="synthesise data, train, export, submit and score: the whole path in minutes")
    p.add_argument("--out", type=Path, default=Path("birdinfer-demo"), help="working folder (default ./birdinfer-demo)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=None, help="training epochs per model (default: the demo's, 24)")
    p.add_argument("--pseudo-rounds", type=int, default=0,
                   help="semi-supervised rounds: label train_soundscapes with the models, retrain with those labels")
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args) -> int:
    run_demo = _import_train("run_demo")
    options = {} if args.epochs is None else {"epochs": args.epochs}
    run_demo(args.out, seed=args.seed, pseudo_rounds=args.pseudo_rounds, **options)
    return 0


#: The tool sub-commands, in the order ``birdinfer --help`` lists them.
TOOL_COMMANDS = (_add_export, _add_import, _add_bundle, _add_bench, _add_synth, _add_score, _add_train, _add_pseudo, _add_demo)
