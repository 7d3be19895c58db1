"""``predict --embeddings OUT_DIR``: each window's embedding (BirdNET's 1024-d layer before the classifier, or any
folder's one ``embedding`` output), one text file per recording, from the same run as the detections.

The model runs once: the embedding rows are stored beside the scores in each recording's journal part (float32
``(rows, labels + width)``), so a killed run resumes with nothing lost, and the files are written when the output
is assembled, each atomically. A file per recording, ``<OUT_DIR>/<path below its folder argument, without
suffix>.birdnet.embeddings.txt`` (the folder tree of the inputs kept, as for the tables), one line per window of the
detection outputs (same ``--overlap``)::

    start<TAB>end<TAB>v1,v2,...,v1024

the format BirdNET-Analyzer's ``embeddings`` command wrote per recording before 2.0 and what tools reading BirdNET
embeddings parse. Times as in its tables (rounded to 0.01 s, the last window ending at the end of the file), each
value the shortest text that reads back as the same float32 (``str`` of a float32). BirdNET-Analyzer 2.4.0 stores
the same vectors of the same windows in a perch-hoplite database instead (its ``--file_output`` exports them as one
CSV); this format keeps one file per recording, as predict's other outputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..errors import BirdinferError, ModelFolderError, ParameterError
from ..io.audio import audio_info
from ..io.detections import window_stamps
from ..io.output import atomic_write, check_writable_folder, sweep_temporaries, temporary_files
from ..runtime.fusion import is_held
from ..spec.upgrade import upgrade
from .outputs import is_birdnet, table_paths

__all__ = ["EMBEDDINGS_SUFFIX", "EmbeddingPlan", "embedding_plan", "embeddings_text", "write_embeddings"]

EMBEDDINGS_SUFFIX = ".birdnet.embeddings.txt"


@dataclass(frozen=True)
class EmbeddingPlan:
    """Where the embeddings go and which graph output they are: ``key`` ``(model, output)``, ``width`` values a
    window; ``n_labels``: the score columns before them in a journal part."""

    folder: Path
    key: tuple[str, str]
    width: int
    n_labels: int

    def joined(self, probs: np.ndarray, outputs: dict) -> np.ndarray:
        """A recording's part: its scores and its embedding rows side by side."""
        emb = outputs.get(self.key, np.zeros((0, self.width), np.float32))
        if len(emb) != len(probs) or emb.shape[1:] != (self.width,):
            raise ParameterError(f"{self.key[0]}.{self.key[1]} gave {emb.shape} embeddings for {len(probs)} rows")
        return np.concatenate([np.asarray(probs, np.float32), np.asarray(emb, np.float32)], axis=1)

    def scores(self, part: np.ndarray) -> np.ndarray:
        return part[:, : self.n_labels]

    def fingerprint(self) -> dict:
        return {"embeddings": [*self.key, self.width]}


def embedding_plan(manifest, folder: str | Path | None) -> EmbeddingPlan | None:
    """The checked plan of ``--embeddings folder`` (None when not asked): the folder's one per-window ``embedding``
    output, its width, and the output folder (created, writable). Fails before any audio work."""
    if folder is None:
        return None
    spec = upgrade(manifest)
    found = [(m.name, o.name, o.shape) for m in spec.models if getattr(m, "source", None) is None
             for o in m.outputs if o.kind == "embedding"]
    where = getattr(manifest, "folder", None) or "the model folder"
    if not found and is_birdnet(manifest):
        raise ModelFolderError(f"{where}: this BirdNET folder was imported before birdinfer kept BirdNET's embedding "
                               "(its graph has one output); import it again (birdinfer import MODEL.tflite --labels "
                               "LABELS.txt --out DIR) to write --embeddings")
    if not found:
        raise ParameterError(f"{where}: no model of this folder gives an embedding output (a graph output of kind "
                             "'embedding'), so there is nothing for --embeddings to write")
    if len(found) > 1:
        raise ParameterError(f"{where}: several embedding outputs ({', '.join(f'{m}.{o}' for m, o, _ in found)}); "
                             "--embeddings writes one")
    model, output, shape = found[0]
    if not shape or len(shape) != 2 or shape[1] <= 0:
        raise ModelFolderError(f"{where}: the embedding output {model}.{output} does not declare its width "
                               f"(shape {list(shape or [])}); import the folder again")
    if is_held(spec.ensemble):
        raise ParameterError(f"{where}: its ensemble fuses over all recordings; --embeddings is not available with it")
    out = check_writable_folder(folder, when_file=f"--embeddings writes one file per recording into a folder, but "
                                f"{folder} is a file; give a folder", what="the embeddings folder",
                                choose="choose a writable --embeddings folder", probe="probe" + EMBEDDINGS_SUFFIX)
    return EmbeddingPlan(out, (model, output), int(shape[1]), len(manifest.labels))


def sweep(plan: EmbeddingPlan | None, out: Path) -> None:
    """Remove the temporary files a run killed while writing the embeddings left (called holding the lock)."""
    if plan is not None:
        sweep_temporaries(temporary_files(plan.folder, r".+" + EMBEDDINGS_SUFFIX.replace(".", r"\."), recursive=True), out)


def embeddings_text(rows: np.ndarray, stamps: Sequence[tuple[str, str]]) -> str:
    """``start<TAB>end<TAB>v1,v2,...`` per window (module docstring)."""
    return "".join(f"{start}\t{end}\t{','.join(map(str, row))}\n"
                   for (start, end), row in zip(stamps, np.asarray(rows, np.float32)))


def write_embeddings(plan: EmbeddingPlan, recordings: Sequence, done: Sequence, load: Callable[[str], np.ndarray],
                     manifest) -> None:
    """One file per finished recording (``done``, in input order; ``load(key)`` gives its part); names are chosen
    over all ``recordings``, as for the tables."""
    paths = table_paths(plan.folder, recordings, EMBEDDINGS_SUFFIX)
    span = getattr(manifest, "span_seconds", manifest.window_seconds)
    for rec in done:
        rows = load(rec.key)[:, plan.n_labels :]
        try:
            duration = float(audio_info(rec.path).duration_s)
        except BirdinferError:
            duration = None
        text = embeddings_text(rows, window_stamps(len(rows), manifest.window_seconds, span, duration, manifest.audio_speed))
        paths[rec.key].parent.mkdir(parents=True, exist_ok=True)
        atomic_write(paths[rec.key], lambda f, text=text: f.write(text.encode("utf-8")))
