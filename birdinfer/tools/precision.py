"""Measured precision records: what bf16 (and INT8) really do to a model folder's outputs, recorded in the
manifest when the folder is written, so ``auto`` / ``fast`` never run a precision nobody measured.

Every figure goes through the real front end: calibration audio (the user's ``--calibration`` folder, else
seeded synthetic soundscapes, :func:`birdinfer.tools.synth.synthetic_soundscape`) → the folder's ``features``
(a version 1 folder as its version 2 spec) → the model → its model steps up to per-file rows. The bar is
on those rows, against the same model compiled with ``INFERENCE_PRECISION_HINT=f32`` under the same CPU
class: ``max |Δp|`` over every row and label.

``bf16`` record of a variant (:attr:`birdinfer.spec.files.ModelVariant.bf16`)::

    {"cpu_classes": ["avx512_vnni_bf16"], "max_abs_dp": 0.0012, "mean_abs_dp": 4e-05, "windows": 48,
     "bar": 0.005, "measured_on": "avx512_vnni_bf16", "reference": "...", "audio": "..."}

Every comparison also gives the top-1 agreement of the rows (same arg-max label as f32), over all rows, over
the *confident* rows, where f32's top score is at least :data:`CONFIDENT_SCORE` (BirdNET's minimum
confidence: the rows a user sees as detections), and over the *decided* ones among them, where f32's top
score leads its second by at least :data:`TIE_MARGIN`; figures that decide a bar are named by the folder
(``birdinfer_export.variants``). A folder may set options for its checks (``extra.precision_check.options``,
e.g. BirdNET's ``overlap`` for more windows per held-out second): :func:`check_spec`.

``cpu_classes`` lists the class it was measured on when within the bar (else empty). Only the measured
class is listed: bf16 kernels differ between classes (AVX512_BF16, AMX). Where bf16 is not native it
cannot be measured (OpenVINO would emulate it): the record says so (``not_measurable``) and lists none.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ..runtime.cpu import effective_isa
from ..errors import BirdinferError, ParameterError
from ..spec.manifest import Manifest
from ..spec.upgrade import upgrade
from ..spec.files import MANIFEST_NAME

__all__ = ["BF16_BAR", "CONFIDENT_SCORE", "TIE_MARGIN", "AUDIO_SUFFIXES", "AudioSet", "audio_set", "file_features", "audio_features",
           "check_spec", "ModelRunner",
           "rows_of", "compare_rows", "measure_bf16", "measure_variants", "update_variants", "record_bf16"]

#: bf16 bar: max |Δp| of a model's rows against f32 (the bar ``auto`` promises).
BF16_BAR = 5e-3
#: A row is *confident* when f32's top score reaches this (BirdNET-Analyzer's default ``min_conf``).
CONFIDENT_SCORE = 0.1
#: A confident row is *decided* when f32's top score leads its second by at least this: below it f32's top-1
#: is a tie that any rounding flips (BirdNET, measured: one held-out storm-petrel window, 0.1137 vs 0.1123 for
#: two antbirds, flips under bf16, max |Δscore| 0.014, as under INT8).
TIE_MARGIN = 0.01
AUDIO_SUFFIXES = (".ogg", ".wav", ".flac", ".mp3")
MAX_CALIBRATION_FILES = 16
MAX_HELD_OUT_FILES = 4
#: With labels (``--calibration-labels``) half the files are held out, at most this many: ΔAUC needs rows.
MAX_HELD_OUT_LABELLED = 32
SYNTHETIC_CALIBRATION = 4
SYNTHETIC_HELD_OUT = 2


@dataclass(frozen=True)
class AudioSet:
    """Where calibration / held-out audio comes from; JSON-able (:meth:`to_dict`) so a child process under
    another CPU class (:func:`birdinfer.runtime.cpu.run_in_cpu_class`) reads exactly the same audio."""

    folder: str | None  # None: synthetic soundscapes
    calibration: tuple[str, ...]  # file names in folder, or seeds (as strings) for synthetic audio
    held_out: tuple[str, ...]
    sample_rate: int
    labels: str | None = None  # the held-out files' labels (a solution CSV): INT8 is then judged by ΔAUC

    def to_dict(self) -> dict:
        return {"folder": self.folder, "calibration": list(self.calibration), "held_out": list(self.held_out),
                "sample_rate": self.sample_rate, "labels": self.labels}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "AudioSet":
        return cls(d["folder"], tuple(d["calibration"]), tuple(d["held_out"]), int(d["sample_rate"]), d.get("labels"))

    def describe(self, which: str = "held_out") -> str:
        names = getattr(self, which)
        if self.folder is None:
            return f"synthetic 60 s soundscapes (birdinfer.tools.synth), seeds {', '.join(names)}"
        labelled = f", labelled by {self.labels}" if self.labels and which == "held_out" else ""
        return (f"{len(names)} file(s) of {self.folder}: {', '.join(names[:4])}{', ...' if len(names) > 4 else ''}"
                f"{labelled}")

    def signals(self, which: str = "held_out") -> Iterable[np.ndarray]:
        from ..io.audio import load_audio
        from .synth import synthetic_soundscape

        for name in getattr(self, which):
            if self.folder is None:
                yield synthetic_soundscape(int(name), sample_rate=self.sample_rate)
            else:
                yield load_audio(Path(self.folder) / name, sample_rate=self.sample_rate)


def audio_set(calibration: str | Path | None, sample_rate: int, labels: str | Path | None = None) -> AudioSet:
    """The calibration folder's sorted audio files (the last ``max(1, n // 5)``, at most 4, held out; at most
    16 calibrate; one file serves both), or seeded synthetic soundscapes when ``calibration`` is None. With
    ``labels`` (a solution CSV for the folder's files) the last half, at most 32, are held out and INT8 is
    judged by ΔAUC on them (:mod:`birdinfer.tools.held_out_labels`)."""
    if labels is not None and calibration is None:
        raise ParameterError(f"--calibration-labels {labels}: give --calibration, the folder of the labelled soundscapes")
    if labels is not None and not Path(labels).is_file():
        raise ParameterError(f"--calibration-labels {labels}: no such file; give a CSV with row_id and one 0/1 column "
                             "per class")
    if calibration is None:
        return AudioSet(None, tuple(str(s) for s in range(SYNTHETIC_CALIBRATION)),
                        tuple(str(1000 + s) for s in range(SYNTHETIC_HELD_OUT)), sample_rate)
    folder = Path(calibration)
    if not folder.is_dir():
        raise ParameterError(f"--calibration {folder}: not a folder; give a folder of soundscapes "
                             f"({', '.join(AUDIO_SUFFIXES)})")
    files = sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
    if not files:
        raise ParameterError(f"--calibration {folder} holds no audio files ({', '.join(AUDIO_SUFFIXES)})")
    label_path = str(Path(labels).resolve()) if labels is not None else None
    if len(files) == 1:
        return AudioSet(str(folder.resolve()), tuple(files), tuple(files), sample_rate, label_path)
    n_held = (min(MAX_HELD_OUT_LABELLED, max(1, len(files) // 2)) if labels is not None
              else min(MAX_HELD_OUT_FILES, max(1, len(files) // 5)))
    return AudioSet(str(folder.resolve()), tuple(files[:-n_held][:MAX_CALIBRATION_FILES]), tuple(files[-n_held:]),
                    sample_rate, label_path)


def file_features(spec, y: np.ndarray) -> tuple[dict, int]:
    """One recording (as one block) through the spec's front end → ``({feature: Signal}, n_rows)``."""
    from ..runtime.engine import FrontEndGraph

    n_rows = spec.n_rows(len(y))
    return FrontEndGraph(spec)(y, n_rows), n_rows


def audio_features(spec, signals: Iterable[np.ndarray], *, where: str = "audio") -> list[tuple[dict, int]]:
    """:func:`file_features` of every signal long enough for one row (shorter recordings give no rows, as in
    ``predict``); :class:`ParameterError` naming ``where`` when none is."""
    out = [file_features(spec, y) for y in signals if spec.n_rows(len(y)) > 0]
    if not out:
        raise ParameterError(f"{where}: no recording is long enough for one row of this folder; give longer recordings")
    return out


def check_spec(folder: str | Path):
    """The folder's spec as its precision checks run it: with the options of ``extra.precision_check.options``
    (e.g. a denser window overlap) when the folder sets them."""
    from ..spec.options import with_options

    manifest = Manifest.load(folder)
    check = manifest.extra.get("precision_check") or {}
    options = check.get("options") if isinstance(check, Mapping) else None
    if check and (not isinstance(check, Mapping) or not isinstance(options or {}, Mapping)):
        raise ParameterError(f"{folder}: extra.precision_check must be an object with an object 'options'")
    return upgrade(with_options(manifest, options) if options else manifest)


class ModelRunner:
    """One variant of one model compiled with an explicit hint, as the runtime compiles it (one request)."""

    def __init__(self, spec, entry, variant: str, hint: str, core_loader=None):
        from ..runtime.models import _OpenVinoLoader

        loader = core_loader or _OpenVinoLoader(cache_dir=None, threads=None, streams=1)
        self.entry = entry
        self.runner, self.ran = loader.load(spec.path_of(entry.variants[variant].openvino), entry, variant, hint)


def rows_of(runner: ModelRunner, features: Sequence[tuple[dict, int]]) -> list[np.ndarray]:
    """The model's per-file rows (its model steps and row steps) on each file's features."""
    from ..runtime.engine import run_named
    from ..ops.file_steps import run_row_steps
    from ..ops.steps import block_rows

    entry, out = runner.entry, []
    for feats, n_rows in features:
        signal = feats[entry.input]
        arrays = run_named(SimpleNamespace(entry=entry, runner=runner.runner), signal.data)
        rows = run_row_steps(entry.row_steps, block_rows(entry.block_steps, arrays, signal.windows, n_rows))
        out.append(np.asarray(rows, dtype=np.float64))
    return out


def compare_rows(reference: Sequence[np.ndarray], other: Sequence[np.ndarray]) -> dict:
    """Max / mean |Δp| over every row and label, and the top-1 agreement over all rows, over the confident ones
    and over the decided ones (:data:`CONFIDENT_SCORE`, :data:`TIE_MARGIN`; ``None`` when there are none)."""
    diff = np.concatenate([np.abs(b - a).ravel() for a, b in zip(reference, other)])
    ref = np.concatenate([np.asarray(a).reshape(len(a), -1) for a in reference])
    new = np.concatenate([np.asarray(b).reshape(len(b), -1) for b in other])
    agree = ref.argmax(axis=1) == new.argmax(axis=1)
    confident = ref.max(axis=1) >= CONFIDENT_SCORE
    top2 = np.sort(ref, axis=1)[:, -2:] if ref.shape[1] > 1 else np.concatenate([np.zeros_like(ref), ref], axis=1)
    decided = confident & (top2[:, 1] - top2[:, 0] >= TIE_MARGIN)
    return {"max_abs_dp": float(diff.max()), "mean_abs_dp": float(diff.mean()), "windows": int(len(ref)),
            "top1_agreement": float(agree.mean()),
            "top1_agreement_confident": float(agree[confident].mean()) if confident.any() else None,
            "confident_windows": int(confident.sum()), "confident_score": CONFIDENT_SCORE,
            "top1_agreement_decided": float(agree[decided].mean()) if decided.any() else None,
            "decided_windows": int(decided.sum()), "tie_margin": TIE_MARGIN}


def measure_bf16(folder: str | Path, audio: AudioSet, *, variants: Sequence[str] | None = None,
                 bar: float = BF16_BAR, progress=None) -> dict[str, dict[str, dict]]:
    """``{model: {variant: bf16 record}}`` for every OpenVINO variant (or those named) of the folder, measured
    on ``audio``'s held-out files under this process's CPU class (see the module docstring)."""
    isa = effective_isa()
    spec = check_spec(folder)
    records: dict[str, dict[str, dict]] = {}
    if not isa.bf16_native:
        why = (f"bf16 is not native on {isa.cpu_class} (OpenVINO would emulate it): not measurable here; "
               "write the folder on a CPU with AVX512_BF16 or AMX to measure it")
        for entry in spec.models:
            records[entry.name] = {k: {"cpu_classes": [], "measured_on": isa.cpu_class, "not_measurable": why}
                                   for k, v in entry.variants.items() if v.openvino and (variants is None or k in variants)}
        return records
    features = audio_features(spec, audio.signals("held_out"), where=audio.describe("held_out"))
    for entry in spec.models:
        records[entry.name] = {}
        if getattr(entry, "source", None) is not None:  # reads another model's output (spec.dag): not measured
            why = f"reads model {entry.source.model!r}'s output: its bf16 error is not measured yet"
            records[entry.name] = {k: {"cpu_classes": [], "measured_on": isa.cpu_class, "not_measurable": why}
                                   for k, v in entry.variants.items() if v.openvino and (variants is None or k in variants)}
            continue
        for name, stored in entry.variants.items():
            if not stored.openvino or (variants is not None and name not in variants):
                continue
            try:
                f32 = ModelRunner(spec, entry, name, "f32")
                bf16 = ModelRunner(spec, entry, name, "bf16")
                figures = compare_rows(rows_of(f32, features), rows_of(bf16, features))
            except BirdinferError as e:  # e.g. a graph that does not compile under bf16: then bf16 never runs
                records[entry.name][name] = {"cpu_classes": [], "measured_on": isa.cpu_class,
                                             "not_measurable": f"bf16 failed: {str(e).splitlines()[0][:300]}"}
                continue
            if "bf16" not in bf16.ran:  # OpenVINO fell back to f32 (logged): nothing of bf16 was measured
                records[entry.name][name] = {"cpu_classes": [], "measured_on": isa.cpu_class,
                                             "not_measurable": f"compiled as {bf16.ran} under a bf16 hint"}
                continue
            ok = figures["max_abs_dp"] <= bar
            records[entry.name][name] = {
                "cpu_classes": [isa.cpu_class] if ok else [], **figures, "bar": bar, "measured_on": isa.cpu_class,
                "ran": bf16.ran, "reference": f"the same variant compiled with INFERENCE_PRECISION_HINT f32 ({f32.ran})",
                "audio": audio.describe("held_out")}
            if progress:
                progress(f"{entry.name} ({name}): {name}+bf16 vs {name}+f32 max|Δp| {figures['max_abs_dp']:.2e} over "
                         f"{figures['windows']} rows on {isa.cpu_class}: {'within' if ok else 'over'} the bar {bar:g}")
            del f32, bf16
    return records


def measure_variants(folder: str, variant: str, audio: dict, hint: str = "f32",
                     models: Sequence[str] | None = None, rounds: int = 3, frontend: Mapping | None = None) -> dict:
    """Child side of a per-class check (:func:`birdinfer.runtime.cpu.run_in_cpu_class`): ``variant`` of each model
    (all, or ``models``) compiled with ``hint`` against its f32 variant compiled with f32, both under this
    process's class, on the held-out audio. Returns ``{model: figures + class + what ran + speedup_vs_f32}``
    (JSON; the speed is the median of ``rounds`` interleaved runs of the model and its steps). ``frontend``: a
    front-end record (``{op: {parameter: value}}``, :mod:`birdinfer.spec.variant_frontend`) the variant's features
    are computed with; the f32 reference keeps the feature's own steps."""
    from ..spec.variant_frontend import spec_with_frontends

    spec = check_spec(folder)
    audio = AudioSet.from_dict(audio)
    signals = list(audio.signals("held_out"))
    features = audio_features(spec, signals, where=audio.describe("held_out"))
    own = features
    if frontend:
        changed = spec_with_frontends(spec, dict.fromkeys(spec.features, frontend))
        own = audio_features(changed, signals, where=audio.describe("held_out"))
    truth = None
    if audio.labels:
        from .held_out_labels import labelled_figures, read_held_out_labels

        stems_rows = [(Path(name).stem, spec.n_rows(len(y))) for name, y in zip(audio.held_out, signals)]
        truth = read_held_out_labels(audio.labels, [(s, n) for s, n in stems_rows if n > 0], spec.window_seconds,
                                     spec.labels)
    del signals
    out, rows = {}, {}
    for entry in spec.models:
        if (models is not None and entry.name not in models) or variant not in entry.variants:
            continue
        if getattr(entry, "source", None) is not None:  # reads another model's output: not measured yet
            continue
        reference = ModelRunner(spec, entry, "f32", "f32")
        other = ModelRunner(spec, entry, variant, hint)
        seconds: dict[str, list[float]] = {"f32": [], variant: []}
        for _ in range(rounds):  # interleaved, so both see the same machine load
            for name, runner, feats in (("f32", reference, features), (variant, other, own)):
                start = time.perf_counter()
                rows[name] = rows_of(runner, feats)
                seconds[name].append(time.perf_counter() - start)
        figures = compare_rows(rows["f32"], rows[variant])
        if truth is not None:
            figures.update(labelled_figures(truth, rows["f32"], rows[variant]))
        out[entry.name] = {**figures, "cpu_class": effective_isa().cpu_class, "ran": other.ran,
                           **({"frontend": dict(frontend)} if frontend else {}),
                           "reference_ran": reference.ran,
                           "speedup_vs_f32": float(np.median(seconds["f32"]) / np.median(seconds[variant]))}
    return out


def update_variants(folder: str | Path, updates: Mapping[str, Mapping[str, Mapping[str, Any]]],
                    files: Mapping[str, str] | None = None) -> Manifest:
    """Set fields of variants in the folder's ``manifest.json`` (``{model: {variant: {field: value}}}``; a
    variant not there yet is added), version 1 or 2 alike, and add ``files`` (name → sha256). Written
    atomically, then loaded (validated)."""
    path = Path(folder) / MANIFEST_NAME
    data = json.loads(path.read_text(encoding="utf-8"))
    for m in data["models"]:
        for variant, fields in updates.get(m["name"], {}).items():
            m["variants"].setdefault(variant, {}).update(dict(fields))
    if files:
        data["files"] = dict(sorted({**data.get("files", {}), **files}.items()))
    tmp = path.with_name(MANIFEST_NAME + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
    return Manifest.load(folder)


def record_bf16(folder: str | Path, audio: AudioSet, *, progress=None) -> Manifest:
    """Measure every variant's bf16 error here (:func:`measure_bf16`) and write the records into the folder."""
    records = measure_bf16(folder, audio, progress=progress)
    return update_variants(folder, {m: {v: {"bf16": r} for v, r in per.items()} for m, per in records.items()})
