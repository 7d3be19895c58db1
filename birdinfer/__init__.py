"""birdinfer: fast, offline, torch-free CPU inference for BirdCLEF sound-event-detection ensembles.

The folders follow the data, and imports point one way (down this list; ``scripts/check_layout.py`` checks it)::

    errors.py   the one root exception type (BirdinferError) and its subclasses
    dsp/        plain-numpy kernels: STFT frames, mel filterbanks, the fused mel kernel (no birdinfer imports)
    io/         audio decoding (mono, 32 kHz, NaN repair), prediction / submission tables, atomic writes, lock
    ops/        registered ops and steps (waveform → model inputs, model / row / combine steps), registered
                in one place (ops/__init__.py)
    spec/       the model folder format: files and checksums, version 2 parsing, the version 1 upgrade,
                ``Manifest.load`` (a version 2 spec for every folder)
    runtime/    CPU classes, precision plan, model backends, front-end graph and engine, streaming,
                Predictor (pipeline.py), time budget
    jobs/       make_submission, predict (resume journal), Ray, pseudo-labels
    tools/      import, precision measured at write time, bench, bundle, wheels, synth, metric
    cli.py      the ``birdinfer`` command

The model folder's ``manifest.json`` describes everything; nothing is guessed. ``Manifest.load`` returns a
version 2 spec (spec/v2.py) for every folder: a version 1 folder is upgraded in memory (spec/upgrade.py).
"""

__version__ = "0.1.0"

__all__ = ["__version__", "make_submission", "predict", "Predictor", "BirdinferError", "Manifest"]

from .errors import BirdinferError
from .spec import Manifest


def __getattr__(name):  # lazy: `import birdinfer` stays cheap and never needs openvino
    if name == "make_submission":
        from .jobs.submit import make_submission

        return make_submission
    if name == "predict":
        from .jobs.predict import predict

        return predict
    if name == "Predictor":
        from .runtime.pipeline import Predictor

        return Predictor
    raise AttributeError(f"module 'birdinfer' has no attribute {name!r}")
