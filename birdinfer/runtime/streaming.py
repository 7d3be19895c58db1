"""Whole-file specs (``block_seconds: null``) on recordings of any length, in bounded memory, with the
whole-file result.

A version 2 spec with ``block_seconds: null`` states its front end over the whole decoded file (a dB
maximum or a normalisation over the whole spectrogram, a peak over the whole waveform, padding fitted to
the file length). Run literally, a one-hour recording needs its whole waveform, spectrogram and window
batch in memory at once. This module computes the same numbers block by block:

* **Geometry** (:class:`birdinfer.runtime.stream_exec.FileFront`): the file length ``N`` is known before any
  block is output (counted by the first statistics pass, which starts from the header's length and is
  repeated if the decoder found another; or by a decode-only pass when there is no statistic), so every
  padding, STFT frame count and window count is the whole file's. A block owns a run of rows; each
  feature of it is the whole-file feature's windows for those rows, computed from exactly the samples the
  whole-file run uses: ranges are mapped back through the ops (a padded range to the file's samples,
  STFT frames to their samples with the frame grid of the file, windows to their frames / samples,
  ``neighbours`` to the windows around), so no frame or window is ever cut.
* **File statistics** (:mod:`birdinfer.ops.file_stats`): each file-scope op gets its statistic from a pass
  over the file before the output pass (the array at that op, piece by piece); an op that follows
  another file-scope op in its pipeline needs that one's statistic first, so a pipeline with k such ops
  in a row takes k passes. The statistic reaches the op as ``Block.file_stats``.
* **Rows** (:class:`RowStream`): a window's model output can feed rows of the next block (overlapping
  windows, ``timeline_rows`` shifts), so each model keeps the outputs of the last few windows and emits a
  row only when every window it depends on has run; the rows of all blocks, concatenated, are the
  whole-file rows. Every window goes through the models once.

Memory is then a function of the block length (:func:`block_bytes`), not of the file length: the decode
buffer, one block's front-end arrays, the models' working memory for one block's windows (as for a 60 s
file), a few windows of model outputs, and the rows. Blocks are 60 s, shorter when the estimate of their
front end is too large (:func:`choose_block_seconds`). A recording no longer than one block runs the
whole-file way in one go (the same numbers, no extra pass). A spec with an op or model step whose
semantics this module cannot reproduce keeps the whole-file execution, with a log line saying which.
"""

from __future__ import annotations

import logging
import math
from dataclasses import replace
from functools import reduce
from typing import Callable, Iterator, Mapping

import numpy as np

from ..io.audio import audio_info, iter_audio_blocks, speed_rate
from ..ops.base import Signal
from ..ops.filters import PieceFilter, identity_of, is_identity
from ..spec.tta import pass_inputs
from .stream_exec import FileFront, FilteredSamples, Samples, SamplesEnded, chain_of
from .streaming_rows import RowStream

__all__ = ["WholeFileStream", "plan_reason", "block_bytes", "choose_block_seconds", "StreamedFeatures"]

log = logging.getLogger(__name__)

#: Front-end ops the streamed executor reproduces exactly (before / after the ``windows`` op).
UNWINDOWED_OPS = frozenset({"pad", "stft", "resize_time", "gain", "log", "mel", "db", "normalize", "normalize_wave",
                            "windows"})
WINDOWED_OPS = frozenset({"stft", "mel", "db", "log", "normalize", "normalize_wave", "gain", "channels", "crop_time",
                          "neighbours", "birdnet_stft", "birdnet_mel"})
#: Model steps up to the rows that work on any run of consecutive windows.
BLOCK_STEPS = frozenset({"sigmoid", "softmax", "reduce_frames", "blend", "timeline_rows", "clip_rows", "label_map"})
#: Automatic block length: this long (the models then see the batch of a 60 s file), or shorter when the
#: block's front end would need more than this many bytes.
BLOCK_SECONDS = 60.0
BLOCK_BUDGET_BYTES = 256 * 2**20
#: Decoded samples are read in pieces of this length.
READ_SECONDS = 10.0


def leading_filter(manifest):
    """The ``bandpass`` parameters every feature starts with, when it is active (None otherwise): the streamed
    executor runs it over the decoded samples in order (:class:`birdinfer.ops.filters.PieceFilter`)."""
    firsts = [steps[0] if steps else None for steps in manifest.features.values()]
    if not firsts or any(f is None or f.name != "bandpass" or is_identity(f.params) for f in firsts):
        return None
    return firsts[0].params if all(f.params == firsts[0].params for f in firsts) else None


def plan_reason(manifest) -> str | None:
    """Why this spec's whole-file front end cannot be streamed exactly (None: it can)."""
    leading = leading_filter(manifest)
    for name, steps in manifest.features.items():
        windowed = False
        for i, step in enumerate(steps):
            known = WINDOWED_OPS if windowed else UNWINDOWED_OPS
            if step.name == "bandpass" and (is_identity(step.params) or (i == 0 and leading is not None)):
                continue  # the full band returns its input; a filter every feature starts with runs on the samples
            if step.name == "bandpass":
                return (f"features.{name}: an active 'bandpass' streams only as the first op of every feature, with "
                        f"the same parameters")
            if step.name not in known:
                where = "after" if windowed else "before"
                return f"features.{name}: op {step.name!r} {where} 'windows' has no streamed form yet"
            windowed = windowed or step.name == "windows"
        if not windowed:
            return f"features.{name} has no 'windows' op"
    for model in manifest.models:
        for step in model.block_steps:
            if step.name not in BLOCK_STEPS:
                return f"model {model.name!r}: step {step.name!r} has no streamed form yet"
    return None


def _unit_rows(manifest) -> int:
    """Rows per block must be a multiple of every feature's window step (in rows)."""
    steps = [chain_of(manifest, name).step_rows for name in manifest.features]
    return reduce(lambda a, b: a * b // math.gcd(a, b), steps, 1)


def block_bytes(manifest, seconds: float) -> int:
    """An upper estimate of the bytes the streamed front end holds for a block of ``seconds``: every
    intermediate array of every feature (the executor keeps them while the block is computed), the model's
    contiguous copy of its input batch and the decode buffer. A function of the block length only."""
    sr, row = manifest.sample_rate, manifest.window_samples
    total = 2 * (seconds + READ_SECONDS) * sr * 4
    for name, steps in manifest.features.items():
        count, height, length, channels = 1.0, 1, seconds * sr, 1  # arrays: count × channels × height × length
        for step in steps:
            p = step.params
            if step.name == "windows":
                count = seconds * sr / row / chain_of(manifest, name).step_rows
                length = p.length_frames if p.length_frames is not None else round(p.length_seconds * sr)
            elif step.name == "stft":
                length, height = length // p.hop_length + 1, p.n_fft // 2 + 1
            elif step.name == "resize_time":
                length = seconds * sr // row * p.frames_per_row
            elif step.name == "mel":
                height = p.n_mels
            elif step.name == "crop_time":
                length = p.length
            elif step.name == "birdnet_stft":
                height, length = sum(end - first for first, end in p.bins), p.frames
            elif step.name == "birdnet_mel":
                height = p.n_mels * len(p.inputs)
            elif step.name == "neighbours":
                length = p.crop_frames or length * (p.before + 1 + p.after)
            elif step.name == "channels":
                channels = len(p.channels)
            total += count * channels * height * length * 4
        total += count * channels * height * length * 4
    return int(total)


def choose_block_seconds(manifest) -> float:
    """60 s (rounded up to whole window steps), shorter only if its front end exceeds
    :data:`BLOCK_BUDGET_BYTES`. Not longer: the models' own working memory grows with the windows of one
    call, so a block gives them the batch of a 60 s soundscape, whatever the recording's length."""
    unit = _unit_rows(manifest) * manifest.window_seconds
    seconds = unit * max(1, math.ceil(BLOCK_SECONDS / unit))
    while seconds > unit and block_bytes(manifest, seconds) > BLOCK_BUDGET_BYTES:
        seconds -= unit
    return seconds


class StreamedFeatures(dict):
    """One streamed block's features (``{name: Signal}``) and how its model outputs become rows: the
    engine calls :meth:`rows_of` instead of running the row step on the block alone."""

    def __init__(self, signals: Mapping[str, Signal], rows: RowStream, spans: Mapping[str, tuple[int, int]], last: bool):
        super().__init__(signals)
        self._rows, self._spans, self._last = rows, spans, last

    def rows_of(self, entry, arrays: Mapping[str, np.ndarray], signal: Signal) -> np.ndarray:
        w0, w1 = self._spans[entry.input]
        return self._rows.rows(entry, arrays, signal.windows, w0, w1, self._last)


def declared_samples(path, sample_rate: int, speed: float = 1.0) -> int:
    """The recording's length at ``sample_rate`` as its header states it (the decoder may find more), read at
    ``speed`` (:func:`birdinfer.io.audio.speed_rate`)."""
    info = audio_info(path)
    rate = speed_rate(path, info.sample_rate, speed)
    if rate == sample_rate:
        return info.frames
    return int(math.ceil(info.frames * (float(sample_rate) / rate)))


class WholeFileStream:
    """Streamed execution of one whole-file spec (see the module docstring)."""

    def __init__(self, manifest, block_seconds: float | None = None, *, threads: int = 1):
        self.manifest = manifest
        self.threads = threads  # threads the front-end ops may use (Block.threads)
        unit = _unit_rows(manifest)
        seconds = block_seconds if block_seconds is not None else choose_block_seconds(manifest)
        self.block_rows = max(unit, int(round(seconds / manifest.window_seconds)) // unit * unit)
        self.block_seconds = self.block_rows * manifest.window_seconds
        self.chains = {name: chain_of(manifest, name) for name in manifest.features}
        self.prefilter = leading_filter(manifest)
        if self.prefilter is not None:  # run on the decoded samples (source); in the chains the op passes them on
            self.chains = {name: replace(c, steps=(replace(c.steps[0], params=identity_of(c.steps[0].params)),)
                                         + c.steps[1:]) for name, c in self.chains.items()}
        self.passes = max((d for c in self.chains.values() for _, d in c.stats), default=0)

    @classmethod
    def for_manifest(cls, manifest, *, threads: int = 1) -> "WholeFileStream | None":
        """The streamed executor for a version 2 spec with ``block_seconds: null`` (None otherwise, or when
        the spec cannot be streamed exactly: then a log line says why)."""
        if getattr(manifest, "format_version", 1) != 2 or manifest.block_seconds is not None:
            return None
        reason = plan_reason(manifest)
        if reason is not None:
            log.warning("whole-file spec: recordings are processed whole (memory grows with their length): %s", reason)
            return None
        stream = cls(manifest, threads=threads)
        log.info("%s", stream.describe())
        return stream

    def source(self, samples):
        """The samples the chains read: ``samples`` through the spec's leading filter, if it has one."""
        if self.prefilter is None:
            return samples
        return FilteredSamples(samples, PieceFilter(self.prefilter, self.manifest.sample_rate))

    def describe(self) -> str:
        ops = sorted({c.steps[i].name for c in self.chains.values() for i, _ in c.stats})
        stats = f"{self.passes} statistics pass(es) ({', '.join(ops)})" if self.passes else "no statistics pass"
        count = "" if self.passes else " and a decode-only counting pass"
        megabytes = block_bytes(self.manifest, self.block_seconds) / 2**20
        return (f"whole-file spec streamed exactly in {self.block_seconds:g} s blocks: {stats}{count} before the "
                f"blocks; front end about {megabytes:.0f} MB per block whatever the recording's length")

    def _first_pass(self, path) -> FileFront:
        """The first statistics pass on the length the header states; the pass then reads on to the end to
        count the samples, and is run again on the count when the header was wrong."""
        m = self.manifest
        guess = declared_samples(path, m.sample_rate, m.audio_speed)
        samples = self.source(Samples(path, m.sample_rate, READ_SECONDS, speed=m.audio_speed))
        front = FileFront(m, self.chains, guess, self.block_rows, self.threads)
        try:
            front.collect(1, samples)
        except SamplesEnded:
            pass
        n_samples = samples.count()
        if n_samples != guess:
            log.debug("%s: %d samples decoded, the header says %d: first pass again", path, n_samples, guess)
            front = FileFront(m, self.chains, n_samples, self.block_rows, self.threads)
            front.collect(1, self.source(Samples(path, m.sample_rate, READ_SECONDS, speed=m.audio_speed)))
        return front

    def blocks(self, path, active, whole: Callable[[np.ndarray], Mapping]) -> Iterator[tuple[int, Callable[[], Mapping]]]:
        """``(rows, compute features)`` per block of one recording. A recording no longer than one block is
        one block computed by ``whole`` (the whole-file front end)."""
        m = self.manifest
        sr, block_samples = m.sample_rate, self.block_rows * m.window_samples
        pieces = iter_audio_blocks(path, block_seconds=(block_samples + 1) / sr, sample_rate=sr, speed=m.audio_speed)
        first = next(pieces, None)
        if first is None:
            return
        if first.size <= block_samples:
            yield m.n_rows(first.size), (lambda: whole(first))
            return
        names = pass_inputs(m.models, set(active))  # shifted TTA passes included
        if self.passes:  # the first statistics pass counts the samples too
            del first
            pieces.close()
            front = self._first_pass(path)
        else:  # a counting pass
            front = FileFront(m, self.chains, first.size + sum(piece.size for piece in pieces), self.block_rows,
                              self.threads)
            del first
        for depth in range(2, self.passes + 1):
            front.collect(depth, self.source(Samples(path, sr, READ_SECONDS, speed=m.audio_speed)))
        samples, rows = self.source(Samples(path, sr, READ_SECONDS, speed=m.audio_speed)), RowStream(front.n_rows)
        for b in range(front.n_blocks):
            r0, r1 = b * self.block_rows, min(front.n_rows, (b + 1) * self.block_rows)

            def compute(b=b):
                signals, spans = front.features(b, names, samples)
                return StreamedFeatures(signals, rows, spans, b == front.n_blocks - 1)

            yield r1 - r0, compute

