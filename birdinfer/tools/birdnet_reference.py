"""BirdNET V2.4 run as BirdNET-Analyzer runs it: LiteRT on BirdNET's windows, BirdNET's scores. The reference
of the import check (:func:`measure_parity`), the tests and ``benchmarks/bench_birdnet.py``. Needs LiteRT
(``ai-edge-litert``, the ``tflite`` extra); the runtime never imports this module.

Windows (BirdNET-Analyzer's ``split_signal``): starts every ``3 − overlap`` s; a window is kept while at least
``min_seconds`` (1.0 s) of audio starts at it, the first shorter one ends the list; a partial window is zero
padded to 3 s. Score: ``1 / (1 + exp(−clip(logit + (sensitivity − 1)·10, −20, 20)))``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import MissingDependencyError

__all__ = ["birdnet_windows", "flat_sigmoid", "LiteRT", "measure_parity", "check_signal"]


def birdnet_windows(y: np.ndarray, *, sample_rate: int = 48000, seconds: float = 3.0, overlap: float = 0.0,
                    min_seconds: float = 1.0) -> np.ndarray:
    """``y`` (mono, at ``sample_rate``) → ``(W, seconds·rate)`` float32 windows, BirdNET-Analyzer's rule."""
    step, length, least = int((seconds - overlap) * sample_rate), int(seconds * sample_rate), int(min_seconds * sample_rate)
    out = []
    for start in range(0, len(y), step):
        piece = y[start : start + length]
        if len(piece) < least:
            break
        window = np.zeros(length, np.float32)
        window[: len(piece)] = piece
        out.append(window)
    return np.stack(out) if out else np.zeros((0, length), np.float32)


def flat_sigmoid(logits: np.ndarray, sensitivity: float = 1.0) -> np.ndarray:
    """BirdNET-Analyzer's score of a logit."""
    return 1.0 / (1.0 + np.exp(-np.clip(logits + (sensitivity - 1.0) * 10.0, -20.0, 20.0)))


class LiteRT:
    """BirdNET's own runtime: the LiteRT interpreter (XNNPACK) on a ``.tflite`` file, ``batch`` windows a call."""

    def __init__(self, model: str | Path, *, threads: int = 2, batch: int = 1):
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as e:
            raise MissingDependencyError(f"the LiteRT reference needs ai-edge-litert: pip install 'birdinfer[tflite]' ({e})") from e
        self.batch, self.model, self.threads = int(batch), str(model), int(threads)
        self.interpreter = self._interpreter(Interpreter)
        self.input = self.interpreter.get_input_details()[0]["index"]
        self.output = self.interpreter.get_output_details()[0]["index"]
        self._plain = None  # without XNNPACK, for the embedding (below)

    def _interpreter(self, make, **kw):
        interpreter = make(model_path=self.model, num_threads=self.threads, **kw)
        detail = interpreter.get_input_details()[0]
        interpreter.resize_tensor_input(detail["index"], [self.batch, detail["shape"][1]])
        interpreter.allocate_tensors()
        return interpreter

    def logits(self, windows: np.ndarray) -> np.ndarray:
        """``(W, samples)`` → ``(W, classes)`` logits; the last call's batch is filled with zero windows."""
        return self._run(windows, self.output)

    def embeddings(self, windows: np.ndarray) -> np.ndarray:
        """``(W, samples)`` → ``(W, 1024)``: the tensor BirdNET-Analyzer's ``embeddings`` reads (output index − 1)."""
        if self._plain is None:  # XNNPACK does not keep inner tensors: BirdNET-Analyzer's resolver, as it loads it
            from ai_edge_litert.interpreter import Interpreter, OpResolverType

            self._plain = self._interpreter(Interpreter, experimental_op_resolver_type=
                                            OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        return self._run(windows, self.output - 1, self._plain)

    def _run(self, windows: np.ndarray, tensor: int, interpreter=None) -> np.ndarray:
        interpreter = interpreter or self.interpreter
        out = []
        for at in range(0, len(windows), self.batch):
            part = np.ascontiguousarray(windows[at : at + self.batch], dtype=np.float32)
            n = len(part)
            if n < self.batch:
                part = np.concatenate([part, np.zeros((self.batch - n,) + part.shape[1:], np.float32)])
            interpreter.set_tensor(self.input, part)
            interpreter.invoke()
            out.append(interpreter.get_tensor(tensor)[:n].copy())
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def check_signal(seconds: float = 10.5, seed: int = 20) -> np.ndarray:
    """A seeded 48 kHz test signal: a synthetic soundscape's calls and background, resampled from 32 kHz by
    repetition-free linear interpolation, ``seconds`` long (3 full windows and a 1.5 s partial one)."""
    from .synth import synthetic_soundscape

    y32 = synthetic_soundscape(seed)
    n = int(seconds * 48000)
    positions = np.arange(n) * (32000 / 48000)
    return np.interp(positions, np.arange(len(y32)), y32).astype(np.float32)


def measure_parity(folder: str | Path, model: str | Path, y: np.ndarray | None = None, *,
                   embedding: tuple[str, str] | None = None) -> dict:
    """Scores of the folder (f32, through the whole engine: windows, front end, IR, steps) against LiteRT on
    BirdNET's windows of ``y`` (default :func:`check_signal`), and its embedding against the tensor BirdNET-Analyzer
    reads (``embedding``: its ``(model, output)`` in the folder): ``{"windows", "max_abs_score", "max_abs_embedding",
    ...}``."""
    from ..runtime.pipeline import Predictor

    y = check_signal() if y is None else y
    predictor = Predictor(folder, precision="f32", keep_outputs=[embedding] if embedding else ())
    try:
        ours, kept = predictor.predict_array(y, outputs=True)
    finally:
        predictor.close()
    litert, windows = LiteRT(model, threads=1), birdnet_windows(y)
    ref = flat_sigmoid(litert.logits(windows))
    ours_embedding = kept.get(embedding, np.zeros((0, 0), np.float32))
    ref_embedding = litert.embeddings(windows) if embedding else ours_embedding
    if ours.shape != ref.shape or ours_embedding.shape != ref_embedding.shape:
        return {"windows": int(len(ref)), "max_abs_score": float("inf"), "max_abs_embedding": float("inf"),
                "note": f"shapes differ: {ours.shape}, {ours_embedding.shape} vs {ref.shape}, {ref_embedding.shape}"}
    return {"windows": int(len(ref)), "max_abs_score": float(np.abs(ours - ref).max()),
            "mean_abs_score": float(np.abs(ours - ref).mean()), "precision": "f32",
            "max_abs_embedding": float(np.abs(ours_embedding - ref_embedding).max(initial=0.0)),
            "audio": "seeded synthetic soundscape (birdinfer.tools.birdnet_reference.check_signal), 10.5 s at 48 kHz"}
