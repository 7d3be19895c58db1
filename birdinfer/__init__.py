"""birdinfer: fast, offline, torch-free CPU inference for BirdCLEF sound-event-detection ensembles.

Data flows one way, one module per stage::

    audio.py     decode, mono, resample to 32 kHz, NaN repair
    features.py  numpy mel front end for every group at once (shared STFT, only the frames the resize reads)
    models.py    OpenVINO / ONNX Runtime execution of the exported networks
    ensemble.py  sigmoid, 5 s segment max, weighted group means, temporal smoothing
    output.py    submission / prediction tables, atomic writes
    pipeline.py  Predictor: the stages above over recordings (60 s blocks, background decoding)
    submit.py    make_submission: a folder → submission.csv (time budget in budget.py, output lock in lock.py)

The model folder's ``manifest.json`` (manifest.py) describes everything; nothing is guessed.
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
