"""Detection tables in BirdNET-Analyzer's formats, written by ``predict`` from a recording's scores.

A *detection* is a (window, label, score) kept by BirdNET-Analyzer's rule (:func:`select`): per window, the
labels allowed by the species filter whose score is ``>= min_confidence``, sorted by score (highest first,
ties in label order); with ``top_k`` the ``k`` best allowed labels whatever their score (BirdNET-Analyzer's
``--top_n``, which ignores ``--min_conf``). Windows are in time order.

The texts follow BirdNET-Analyzer 2.4.0 (``birdnet_analyzer/analyze/utils.py``) byte for byte for the same
detections (``tests/test_birdnet_outputs.py`` runs BirdNET-Analyzer itself on the same audio and compares the
files): times are its ``round(start, 2)`` / ``round(end, 2)`` written as Python floats (``0.0``, ``4.5``; the
end is start + 3 s or the end of the file, whichever comes first), scores with 4 decimals, and a label
``Scientific_Common`` is split at its first ``_`` (a label without ``_`` is both names). Per recording:

``birdnet_csv`` (``<stem>.BirdNET.results.csv``)
    ``Start (s),End (s),Scientific name,Common name,Confidence,File``; the file as given.
``audacity`` (``<stem>.BirdNET.results.txt``)
    Audacity labels, no header: ``start<TAB>end<TAB>Scientific, Common<TAB>score``.
``kaleidoscope`` (``<stem>.BirdNET.results.kaleidoscope.csv``)
    ``INDIR,FOLDER,IN FILE,OFFSET,DURATION,scientific_name,common_name,confidence,lat,lon,week,overlap,
    sensitivity``: the file's grandparent and parent folder and name, the run's location (``-1`` when none)
    and settings.
``raven`` for a BirdNET folder (``<stem>.BirdNET.selection.table.txt``)
    ``Selection, View, Channel, Begin Time (s), End Time (s), Low Freq (Hz), High Freq (Hz), Common Name,
    Species Code, Confidence, Begin Path, File Offset (s)``; the band is BirdNET-Analyzer's: 0 Hz to
    min(15 kHz, the file's Nyquist frequency) in whole hertz, narrowed to ``--fmin``–``--fmax``; the species code comes from a code table given
    with ``--species-codes`` (BirdNET-Analyzer's ``eBird_taxonomy_codes_2024E.json``: birdinfer ships none), else
    it is the label (BirdNET-Analyzer's fallback for a label without a code). A recording without detections gets
    BirdNET-Analyzer's single ``nocall`` row (0–3 s, confidence 1.0), which keeps the table loadable.

With ``combine`` (its ``--combine_results``) the CSV, Kaleidoscope and Raven tables are also written as one
table for all recordings (:func:`combined_tables`; its names, :data:`COMBINED_NAMES`, in the output folder).

Values BirdNET-Analyzer writes unquoted are written the same way; a value holding a comma, a quote or a line
break (a file name) is quoted as CSV requires, where BirdNET-Analyzer would break the row.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from ..errors import ParameterError

__all__ = ["DETECTION_FORMATS", "BIRDNET_BAND_HZ", "Selection", "select", "window_stamps", "split_label",
           "birdnet_csv_text", "audacity_text", "kaleidoscope_text", "birdnet_raven_text", "table_suffix",
           "mask_scores", "merge_consecutive", "BIRDNET_RAVEN_COLUMNS", "COMBINED_NAMES", "combined_tables"]

#: Formats of BirdNET-Analyzer written one file per recording (``raven`` too, for a BirdNET folder).
DETECTION_FORMATS = ("birdnet_csv", "audacity", "kaleidoscope")
#: BirdNET-Analyzer's band (its ``SIG_FMIN``/``SIG_FMAX`` and default bandpass): what its Raven tables report.
BIRDNET_BAND_HZ = (0, 15000)
BIRDNET_RAVEN_COLUMNS = ("Selection", "View", "Channel", "Begin Time (s)", "End Time (s)", "Low Freq (Hz)",
                         "High Freq (Hz)", "Common Name", "Species Code", "Confidence", "Begin Path", "File Offset (s)")
_SUFFIXES = {"birdnet_csv": ".BirdNET.results.csv", "audacity": ".BirdNET.results.txt",
             "kaleidoscope": ".BirdNET.results.kaleidoscope.csv", "raven": ".BirdNET.selection.table.txt"}
_CSV_HEADER = ("Start (s)", "End (s)", "Scientific name", "Common name", "Confidence", "File")
_KALEIDOSCOPE_HEADER = ("INDIR", "FOLDER", "IN FILE", "OFFSET", "DURATION", "scientific_name", "common_name", "confidence",
                        "lat", "lon", "week", "overlap", "sensitivity")


def table_suffix(format: str) -> str:
    """The name BirdNET-Analyzer gives a recording's table: ``<stem>`` + this."""
    return _SUFFIXES[format]


@dataclass(frozen=True)
class Selection:
    """Which scores become detections: ``min_confidence`` (a probability), or ``top_k`` (the k best per window,
    whatever their score); ``allowed``: a boolean mask over the labels (the species filter), or None (all)."""

    min_confidence: float | None = None
    top_k: int | None = None
    allowed: np.ndarray | None = None

    def __post_init__(self):
        if self.top_k is not None and self.min_confidence is not None:
            raise ParameterError("--top-k keeps the k best labels per window whatever their score (BirdNET-Analyzer's "
                                 "--top_n ignores --min_conf): give --top-k or --min-confidence, not both")
        if self.top_k is not None and (isinstance(self.top_k, bool) or not isinstance(self.top_k, (int, np.integer))
                                       or self.top_k < 1):
            raise ParameterError(f"--top-k must be a whole number >= 1, got {self.top_k!r}")
        if self.min_confidence is not None and not (
                isinstance(self.min_confidence, (int, float)) and 0.0 <= float(self.min_confidence) <= 1.0):
            raise ParameterError(f"--min-confidence must be a probability in [0, 1], got {self.min_confidence!r}")

    @property
    def active(self) -> bool:
        return self.min_confidence is not None or self.top_k is not None or self.allowed is not None


def select(probs: np.ndarray, selection: Selection) -> list[list[tuple[int, float]]]:
    """Per window of ``probs`` ``(n_windows, n_labels)``: the detections ``[(label index, score), ...]``,
    highest score first (ties in label order). Without a threshold or ``top_k`` every allowed label is kept."""
    allowed = np.ones(probs.shape[1], bool) if selection.allowed is None else selection.allowed
    out = []
    for row in probs:
        keep = allowed if selection.top_k is not None or selection.min_confidence is None else (
            allowed & (row >= np.float32(selection.min_confidence)))
        index = np.flatnonzero(keep)
        index = index[np.argsort(-row[index], kind="stable")]
        if selection.top_k is not None:
            index = index[: selection.top_k]
        out.append([(int(j), float(row[j])) for j in index])
    return out


def mask_scores(probs: np.ndarray, selection: Selection) -> np.ndarray:
    """``probs`` with every score that is not a detection (:func:`select`) set to 0.0: the per-window table
    under ``--min-confidence`` / ``--top-k``."""
    out = np.zeros_like(probs)
    for k, found in enumerate(select(probs, selection)):
        for j, _ in found:
            out[k, j] = probs[k, j]
    return out


def merge_consecutive(stamps, detections, most: int) -> tuple[list[tuple[str, str]], list[list[tuple[int, float]]]]:
    """BirdNET-Analyzer's ``--merge_consecutive`` (``merge_consecutive_detections`` in 2.4.0): per label, runs of
    detections whose windows touch or overlap (end >= next start) become one detection of up to ``most`` windows,
    from the first start to the last end, scored by the mean of its 3 best scores (in float32, as it computes
    them). ``most <= 1`` leaves the detections as they are. Returns new ``(stamps, detections)``: the windows
    ordered by start (stable), each window's labels in the order the labels were first detected, as it
    regroups them."""
    if most <= 1:
        return list(stamps), list(detections)
    runs: dict[int, list[tuple[str, str, float]]] = {}
    for (start, end), found in zip(stamps, detections):
        for j, score in found:
            runs.setdefault(j, []).append((start, end, score))
    table: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for j, found in runs.items():
        for start, end, score in _merged_run(sorted(found, key=lambda r: float(r[0])), most):
            table.setdefault((start, end), []).append((j, score))
    keys = sorted(table, key=lambda key: float(key[0]))
    return keys, [table[key] for key in keys]


def _merged_run(found: list[tuple[str, str, float]], most: int) -> list[tuple[str, str, float]]:
    """One label's detections in start order, consecutive ones merged (BirdNET-Analyzer's loop, step by step)."""
    i = 0
    while i < len(found) - 1:
        start, end, _ = found[i]
        next_start, next_end, _ = found[i + 1]
        if float(end) >= float(next_start):
            scores = [found[i][2], found.pop(i + 1)[2]]
            while i < len(found) - 1 and float(next_end) >= float(found[i + 1][0]) and len(scores) < most:
                _, next_end, score = found.pop(i + 1)
                scores.append(score)
            best = sorted(scores, reverse=True)[:3]
            total = np.float32(0.0)
            for score in best:
                total = np.float32(total + np.float32(score))
            found[i] = (start, next_end, float(np.float32(total / np.float32(len(best)))))
        i += 1
    return found


def window_stamps(n_windows: int, step_seconds: float, span_seconds: float,
                  duration_s: float | None = None, speed: float = 1.0) -> list[tuple[str, str]]:
    """BirdNET-Analyzer's window times as it writes them: window k starts at ``k · step_seconds · speed`` and ends
    ``span_seconds · speed`` later or at the end of the file (``duration_s``), both rounded to 0.01 s and written as
    Python floats (``0.0``, ``10.13``). ``speed``: its ``--audio_speed`` (the steps are of the audio as read, the
    times of the recording)."""
    stamps = []
    for k in range(n_windows):
        start = k * step_seconds * speed
        end = start + span_seconds * speed
        end = end if duration_s is None else min(end, duration_s)
        stamps.append((str(round(start, 2)), str(round(end, 2))))
    return stamps


def split_label(label: str) -> tuple[str, str]:
    """``Scientific_Common`` → ``(Scientific, Common)``; a label without ``_`` is both."""
    return label.split("_", 1)[0], label.split("_", 1)[-1]


def _csv_lines(rows) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


def birdnet_csv_text(name: str, detections, stamps, labels: Sequence[str]) -> str:
    rows = [_CSV_HEADER]
    for (start, end), found in zip(stamps, detections):
        rows += [(start, end, *split_label(labels[j]), f"{score:.4f}", name) for j, score in found]
    return _csv_lines(rows)


def audacity_text(detections, stamps, labels: Sequence[str]) -> str:
    lines = []
    for (start, end), found in zip(stamps, detections):
        lines += [f"{start}\t{end}\t{labels[j].replace('_', ', ')}\t{score:.4f}\n" for j, score in found]
    return "".join(lines)


def kaleidoscope_text(name: str, detections, stamps, labels: Sequence[str], *, lat: float, lon: float, week: int,
                      overlap: float, sensitivity: float) -> str:
    folder, file_name = os.path.split(name)
    parent, folder_name = os.path.split(folder)
    rows = [_KALEIDOSCOPE_HEADER]
    for (start, end), found in zip(stamps, detections):
        rows += [(parent.rstrip("/"), folder_name, file_name, start, str(float(end) - float(start)), *split_label(labels[j]),
                  f"{score:.4f}", f"{lat:.4f}", f"{lon:.4f}", str(week), str(float(overlap)), str(float(sensitivity)))
                 for j, score in found]
    return _csv_lines(rows)


def birdnet_raven_band(sample_rate: float | None, fmin: float = 0.0, fmax: float = 15000.0,
                       speed: float = 1.0) -> tuple[str, str]:
    """Low and high frequency as BirdNET-Analyzer writes them for a file of ``sample_rate`` Hz and its bandpass
    ``fmin``–``fmax``: ``fmin`` (at least 0) and the Nyquist frequency capped at 15 kHz and at ``fmax``, as
    whole hertz; with ``--audio_speed`` ``speed`` the caps and ``fmin`` are divided by it (frequencies of the
    recording)."""
    low, high = BIRDNET_BAND_HZ
    high = int(high / speed)
    high = min(sample_rate / 2, high) if sample_rate else high
    return str(max(low, int(fmin / speed))), str(int(min(high, int(fmax / speed))))


def birdnet_raven_text(name: str, detections, stamps, labels: Sequence[str], *, sample_rate: float | None,
                       codes: Mapping[str, str] | None = None, band: tuple[float, float] = BIRDNET_BAND_HZ,
                       names: Sequence[str] | None = None, speed: float = 1.0) -> str:
    """``codes``: label → species code (BirdNET-Analyzer's eBird code table); a label without one is its own code;
    ``band``: the run's bandpass ``(fmin, fmax)`` in Hz; ``names``: the labels translated (the Common Name column);
    ``speed``: the run's audio speed (:func:`birdnet_raven_band`)."""
    names = labels if names is None else names
    low, high = birdnet_raven_band(sample_rate, *band, speed=speed)
    codes = codes or {}
    lines, selection = ["\t".join(BIRDNET_RAVEN_COLUMNS) + "\n"], 0
    for (start, end), found in zip(stamps, detections):
        for j, score in found:
            selection += 1
            lines.append(f"{selection}\tSpectrogram 1\t1\t{start}\t{end}\t{low}\t{high}\t{split_label(names[j])[1]}\t"
                         f"{codes.get(labels[j], labels[j])}\t{score:.4f}\t{name}\t{start}\n")
    if selection == 0:
        lines.append(f"1\tSpectrogram 1\t1\t0\t3\t{low}\t{high}\tnocall\tnocall\t1.0\t{name}\t0\n")
    return "".join(lines)


#: The combined tables BirdNET-Analyzer writes with ``--combine_results`` (Audacity labels have none).
COMBINED_NAMES = {"birdnet_csv": ("BirdNET_CombinedTable.csv",), "kaleidoscope": ("BirdNET_Kaleidoscope.csv",),
                  "raven": ("BirdNET_SelectionTable.txt", "BirdNET_SelectionTable.list.txt")}


def combined_tables(format: str, tables: Sequence[tuple[str, str, float | None]]) -> dict[str, str]:
    """BirdNET-Analyzer's combined tables from the per-recording ones ``(file name, table text, duration s)``
    in input order: the CSV and Kaleidoscope tables concatenated under one header; the Raven tables as one
    long recording (times shifted by the durations of the recordings before, selections numbered again,
    ``nocall`` rows left out) with the list of the recordings beside it."""
    if format == "birdnet_csv":
        text = ""
        for _, table, _ in tables:
            lines = table.splitlines(keepends=True)
            text += "".join(lines[1:] if text else lines)
        return {COMBINED_NAMES[format][0]: text}
    if format == "kaleidoscope":
        return {COMBINED_NAMES[format][0]: _csv_lines([_KALEIDOSCOPE_HEADER]) + "".join(
            "".join(table.splitlines(keepends=True)[1:]) for _, table, _ in tables)}
    lines, names, selection, offset = ["\t".join(BIRDNET_RAVEN_COLUMNS) + "\n"], [], 1, 0
    for name, table, duration in tables:
        names.append(name + "\n")
        for line in table.splitlines(keepends=True)[1:]:
            cells = line.split("\t")
            if not line.strip() or (cells[7] == "nocall" and cells[8] == "nocall"):
                continue
            cells[0], cells[3], cells[4] = str(selection), str(float(cells[3]) + offset), str(float(cells[4]) + offset)
            selection += 1
            lines.append("\t".join(cells))
        offset += duration or 0.0
    return dict(zip(COMBINED_NAMES["raven"], ("".join(lines), "".join(names))))
