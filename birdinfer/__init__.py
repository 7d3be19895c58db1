"""birdinfer: fast, offline, torch-free CPU inference for BirdCLEF sound-event-detection ensembles.

Data flows one way, one module per stage::

    audio.py     decode, mono, resample to 32 kHz, NaN repair
    dsp/         plain-numpy kernels: STFT frames, cv2 time resize, mel filterbanks, the fused mel kernel
    frontend_ops.py, spectral_ops.py, window_ops.py   registered front-end ops (waveform → model inputs)
    models.py    OpenVINO / ONNX Runtime execution of the exported networks
    steps.py     registered model / row / combine steps (sigmoid, rows per 5 s, smoothing, weighted means)
    engine.py    the one engine: front-end graph → models → steps → ensemble tree
    output.py    submission / prediction tables, atomic writes
    pipeline.py  Predictor: the engine over recordings (blocks, background decoding)
    submit.py    make_submission: a folder → submission.csv (time budget in budget.py, output lock in lock.py)

The model folder's ``manifest.json`` describes everything; nothing is guessed. ``Manifest.load`` (manifest.py)
returns a version 2 spec (spec.py) for every folder: a version 1 folder is upgraded in memory (upgrade.py).
"""

__version__ = "0.1.0"

__all__ = ["__version__", "make_submission", "BirdinferError", "Manifest"]

from .errors import BirdinferError
from .manifest import Manifest


def __getattr__(name):  # lazy: `import birdinfer` stays cheap and never needs openvino
    if name == "make_submission":
        from .submit import make_submission

        return make_submission
    if name == "predict":
        from .predict import predict

        return predict
    raise AttributeError(f"module 'birdinfer' has no attribute {name!r}")
