"""What ``predict`` writes from its journal's parts: the per-window table (csv, parquet) or one table per
recording in a folder (Raven selection tables, BirdNET-Analyzer's CSV, Audacity labels and Kaleidoscope CSV,
:mod:`birdinfer.io.detections`), with ``--min-confidence``, ``--top-k`` and the species filter applied.

Filters apply when the output is assembled, never to the parts: a run resumed with other filters reuses every
finished recording. Each table is written atomically (:func:`birdinfer.io.output.atomic_write`).

A BirdNET folder (its front end is ``birdnet_stft``) writes Raven tables in BirdNET-Analyzer's columns and
names (``<stem>.BirdNET.selection.table.txt``) and its detection formats default to BirdNET-Analyzer's
``--min_conf`` 0.25; other folders keep birdinfer's Raven table (``<stem>.selections.txt``, the models' band,
threshold 0.5), and the detection formats work with their labels (a label without ``_`` is both names).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from ..errors import BirdinferError, ParameterError
from ..io.audio import audio_info
from ..io.detections import (COMBINED_NAMES, DETECTION_FORMATS, Selection, audacity_text, birdnet_csv_text,
                             birdnet_raven_text, combined_tables, kaleidoscope_text, mask_scores, merge_consecutive, select,
                             table_suffix, window_stamps)
from ..io.output import (atomic_write, check_writable, check_writable_folder, raven_table, sweep_temporaries,
                         temporaries_of, temporary_files, write_window_table)
from ..spec.info import frequency_band

__all__ = ["FOLDER_FORMATS", "BIRDNET_MIN_CONFIDENCE", "OutputPlan", "is_birdnet", "output_plan", "locale_names",
           "read_codes", "check_output", "sweep_outputs", "table_paths", "write_output", "row_seconds"]

log = logging.getLogger(__name__)

#: Formats written as one table per recording into the ``--out`` folder.
FOLDER_FORMATS = ("raven",) + DETECTION_FORMATS
#: BirdNET-Analyzer's default ``--min_conf`` (``MIN_CONFIDENCE`` in its config.py since 2.0; it was 0.1 before).
BIRDNET_MIN_CONFIDENCE = 0.25
RAVEN_THRESHOLD = 0.5


def is_birdnet(manifest) -> bool:
    """Whether the folder is BirdNET's (imported from its TFLite model: the ``birdnet_stft`` front end)."""
    features = (getattr(manifest, "raw", None) or {}).get("features") or {}
    return any(isinstance(step, Mapping) and step.get("op") == "birdnet_stft"
               for feature in features.values() if isinstance(feature, Mapping) for step in feature.get("steps") or [])


@dataclass(frozen=True)
class OutputPlan:
    """How the output is built from the parts: its format, which scores are kept (``selection``) and the run's
    settings the Kaleidoscope table reports (lat, lon, week, overlap, sensitivity)."""

    format: str
    birdnet: bool
    selection: Selection
    settings: Mapping[str, float] = field(default_factory=dict)
    combine: bool = False
    codes: Mapping[str, str] = field(default_factory=dict)  # label → species code (BirdNET's Raven tables)
    merge: int = 1  # BirdNET-Analyzer's --merge_consecutive: at most this many consecutive windows per detection
    names: tuple[str, ...] | None = None  # the labels as the tables name them (--locale), None: the labels

    @property
    def suffix(self) -> str:
        if self.format == "raven" and not self.birdnet:
            return ".selections.txt"
        return table_suffix(self.format)


def output_plan(manifest, format: str, *, threshold=None, min_confidence=None, top_k=None, allowed=None,
                settings: Mapping[str, float] | None = None, combine: bool = False, species_codes=None,
                merge_consecutive=None, locale: str | None = None) -> OutputPlan:
    """The checked :class:`OutputPlan`: ``threshold`` is ``--threshold`` (Raven tables; an alias of
    ``min_confidence`` for the detection formats), ``allowed`` the species filter's mask, ``combine`` also writes
    BirdNET-Analyzer's combined tables, ``species_codes`` a JSON file of species codes for them (:func:`read_codes`),
    ``merge_consecutive`` merges up to that many consecutive detections of a label (:func:`merge_consecutive`),
    ``locale`` names the species in the tables in that language (:func:`locale_names`)."""
    if threshold is not None and min_confidence is not None:
        raise ParameterError("--threshold and --min-confidence are the same cut for detection tables: give one")
    if threshold is not None and not (isinstance(threshold, (int, float)) and 0.0 <= float(threshold) <= 1.0):
        raise ParameterError(f"threshold must be a probability in [0, 1], got {threshold!r}")
    birdnet = is_birdnet(manifest)
    if format in FOLDER_FORMATS:
        cut = min_confidence if min_confidence is not None else threshold
        if cut is None and top_k is None:
            cut = BIRDNET_MIN_CONFIDENCE if birdnet or format != "raven" else RAVEN_THRESHOLD
    else:
        cut = min_confidence  # the per-window table keeps every score unless asked
    if top_k is not None and len(manifest.labels) and isinstance(top_k, int) and top_k > len(manifest.labels):
        raise ParameterError(f"--top-k {top_k} is more than the folder's {len(manifest.labels)} labels")
    if combine:
        _need_birdnet_tables("--combine", "writes", format, birdnet, formats=COMBINED_NAMES, what="combined tables")
    if species_codes is not None and not (format == "raven" and birdnet):
        raise ParameterError("--species-codes fills the Species Code column of BirdNET's Raven tables: it goes with "
                             "--format raven and a BirdNET folder")
    codes = read_codes(species_codes) if species_codes is not None else {}
    return OutputPlan(format, birdnet, Selection(cut, top_k, allowed), dict(settings or {}), bool(combine), codes,
                      _checked_merge(merge_consecutive, format, birdnet), locale_names(manifest, locale, format, birdnet))


def _need_birdnet_tables(option: str, does: str, format: str, birdnet: bool, *, formats=DETECTION_FORMATS,
                         what: str = "tables") -> None:
    """Refuse ``option`` (which ``does`` something to BirdNET-Analyzer's ``what``) for any output but ``formats``
    (without raven) and raven with a BirdNET folder."""
    listed = [f for f in formats if f != "raven"]
    if format not in listed and not (format == "raven" and birdnet):
        raise ParameterError(f"{option} {does} BirdNET-Analyzer's {what}: it goes with --format {', '.join(listed)}, "
                             f"or raven with a BirdNET folder; not --format {format}" + (" here" if format == "raven" else ""))


def _checked_merge(merge, format: str, birdnet: bool) -> int:
    if merge is None:
        return 1
    if isinstance(merge, bool) or not isinstance(merge, (int, np.integer)) or merge < 1:
        raise ParameterError(f"--merge-consecutive must be a whole number >= 1 (the most windows one detection may "
                             f"span; 1 merges nothing), got {merge!r}")
    _need_birdnet_tables("--merge-consecutive", "merges rows of", format, birdnet)
    return int(merge)


def locale_names(manifest, locale: str | None, format: str = "birdnet_csv", birdnet: bool = True) -> tuple[str, ...] | None:
    """The folder's labels translated to ``locale`` (BirdNET-Analyzer's ``--locale``: ``Scientific_Common`` lines
    from the files ``birdinfer import --translated-labels`` copied in, checksummed), or None for its own labels
    (no locale, or ``en`` as BirdNET-Analyzer reads it)."""
    if locale is None or locale == "en":
        return None
    _need_birdnet_tables("--locale", "names the species in", format, birdnet)
    table = (getattr(manifest, "extra", None) or {}).get("translated_labels") or {}
    if locale not in table:
        how = (f"choose one of en, {', '.join(sorted(table))}" if table else "import the model again with "
               "--translated-labels DIR (BirdNET-Analyzer's labels/V2.4 folder) to add its translations")
        raise ParameterError(f"--locale {locale!r}: {manifest.folder} has no translated labels for it; {how}")
    manifest.verify_checksums([table[locale]])
    path = manifest.path_of(table[locale])
    names = tuple(path.read_text(encoding="utf-8").splitlines())
    if len(names) != len(manifest.labels):
        raise ParameterError(f"{path}: {len(names)} lines for {len(manifest.labels)} labels; import the model again")
    return names


def read_codes(path) -> dict[str, str]:
    """A JSON object label → species code, such as BirdNET-Analyzer's ``eBird_taxonomy_codes_2024E.json``."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ParameterError(f"cannot read the species codes {path}: {getattr(e, 'strerror', None) or e}; give a JSON "
                             "object of label: code, such as BirdNET-Analyzer's eBird_taxonomy_codes_2024E.json") from e
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise ParameterError(f"{path}: the species codes must be one JSON object of label: code (text)")
    return data


def check_output(out: Path, format: str) -> None:
    """Fail fast when the output (a file, or a folder of tables) and its side files cannot be written."""
    if format in FOLDER_FORMATS:
        check_writable_folder(out, when_file=f"--format {format} writes one table per recording into a folder, but {out} "
                              "is a file; give a folder", what="the output folder", choose="choose a writable --out",
                              probe="probe.selections.txt")
    else:
        check_writable(out)
    check_writable(out.with_name(out.name + ".errors.csv"))


def sweep_outputs(out: Path, plan: OutputPlan) -> None:
    """Remove the temporary files a run killed while writing this output left (called holding its lock)."""
    found = temporaries_of(out.with_name(out.name + ".errors.csv"))
    if plan.format in FOLDER_FORMATS:
        found += temporary_files(out, r".+" + plan.suffix.replace(".", r"\."), recursive=True)
        found += [p for name in COMBINED_NAMES.get(plan.format, ()) for p in temporaries_of(out / name)]
    else:
        found += temporaries_of(out)
    sweep_temporaries(found, out)


def table_paths(out: Path, recordings: Sequence, suffix: str) -> dict[str, Path]:
    """``<out>/<path below its folder argument without suffix><suffix>``; clashes get ``-2``, ``-3``."""
    taken, paths = set(), {}
    for rec in recordings:
        stem = Path(rec.relative).with_suffix("").as_posix().lstrip("/")
        candidate, n = stem, 1
        while candidate.lower() in taken:
            n += 1
            candidate = f"{stem}-{n}"
        taken.add(candidate.lower())
        paths[rec.key] = out / f"{candidate}{suffix}"
    return paths


def _header(path: Path) -> tuple[float | None, float | None]:
    """The file's native sample rate and duration (its header), or Nones when it cannot be read any more."""
    try:
        info = audio_info(path)
    except BirdinferError:
        return None, None
    return float(info.sample_rate), float(info.duration_s)


def row_seconds(manifest) -> tuple[float, float]:
    """``(step, span)`` of the rows in seconds of the recording: the folder's rows × its audio speed (BirdNET's
    ``--audio-speed``: the rows are of the audio as read)."""
    span = getattr(manifest, "span_seconds", manifest.window_seconds)
    return manifest.window_seconds * manifest.audio_speed, span * manifest.audio_speed


def _detection_text(plan: OutputPlan, rec, probs: np.ndarray, labels: Sequence[str], manifest) -> str:
    span, speed = getattr(manifest, "span_seconds", manifest.window_seconds), manifest.audio_speed
    sample_rate, duration = _header(rec.path)
    names = list(plan.names) if plan.names is not None else labels
    found, stamps = select(probs, plan.selection), window_stamps(len(probs), manifest.window_seconds, span, duration, speed)
    stamps, found = merge_consecutive(stamps, found, plan.merge)
    if plan.format == "birdnet_csv":
        return birdnet_csv_text(rec.name, found, stamps, names)
    if plan.format == "audacity":
        return audacity_text(found, stamps, names)
    if plan.format == "kaleidoscope":
        s = plan.settings
        return kaleidoscope_text(rec.name, found, stamps, names, lat=s.get("lat", -1), lon=s.get("lon", -1),
                                 week=s.get("week", -1), overlap=s.get("overlap", 0.0), sensitivity=s.get("sensitivity", 1.0))
    return birdnet_raven_text(rec.name, found, stamps, labels, sample_rate=sample_rate, codes=plan.codes,
                              band=(plan.settings.get("fmin", 0.0), plan.settings.get("fmax", 15000.0)), names=names,
                              speed=speed)


def write_output(out: Path, plan: OutputPlan, recordings: Sequence, done: Sequence, load: Callable[[str], np.ndarray],
                 manifest) -> None:
    """Write the output of the finished recordings ``done`` (in input order; ``load(key)`` gives one's rows); table
    names are chosen over all ``recordings``, so a failed one never renames another's."""
    labels = list(manifest.labels)
    step, span = row_seconds(manifest)
    if plan.format not in FOLDER_FORMATS:
        allowed = plan.selection.allowed
        keep = np.arange(len(labels)) if allowed is None else np.flatnonzero(allowed)
        cut = Selection(plan.selection.min_confidence, plan.selection.top_k)

        def rows(probs: np.ndarray) -> np.ndarray:
            probs = probs[:, keep] if allowed is not None else probs
            return mask_scores(probs, cut) if cut.active else probs

        write_window_table(out, plan.format, ((rec.name, rows(load(rec.key))) for rec in done), [labels[j] for j in keep],
                           step, span)
        return
    paths = table_paths(out, recordings, plan.suffix)
    if plan.format == "raven" and not plan.birdnet:
        low, high = frequency_band(manifest)  # the band the models' front ends see (mel fmin–fmax)
    written = []
    for rec in done:
        probs = load(rec.key)
        if plan.format == "raven" and not plan.birdnet:
            if plan.selection.top_k is not None or plan.selection.allowed is not None:
                found = select(probs, plan.selection)
                probs = _only(probs, found)
            text = raven_table(probs, labels, threshold=plan.selection.min_confidence or 0.0,
                               window_seconds=step, low_hz=low, high_hz=high, span_seconds=span)
        else:
            text = _detection_text(plan, rec, probs, labels, manifest)
        atomic_write(paths[rec.key], lambda f, text=text: f.write(text.encode("utf-8", "surrogateescape")))
        written += [(rec.name, text, _header(rec.path)[1])] if plan.combine else []
    for name, text in (combined_tables(plan.format, written) if plan.combine else {}).items():
        atomic_write(out / name, lambda f, text=text: f.write(text.encode("utf-8", "surrogateescape")))


def _only(probs: np.ndarray, found) -> np.ndarray:
    """``probs`` with -1 wherever a score is not among ``found`` (so no threshold keeps it)."""
    out = np.full_like(probs, -1.0)
    for k, detections in enumerate(found):
        for j, _ in detections:
            out[k, j] = probs[k, j]
    return out
