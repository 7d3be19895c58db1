"""The streamed front end of a whole-file spec: any time range of any pipeline position, exactly as the
whole-file run computes it (used by :mod:`birdinfer.runtime.streaming`, which documents the method).

Positions: position ``i`` of a feature is its signal after its first ``i`` ops; positions up to the
``windows`` op are addressed by columns (samples, or STFT frames), later ones by windows. A range is
computed from the ranges it needs one position back: a padded range maps to the file's samples (the pad
mode's own rule at the edges), STFT frames to the samples of their frames on the file's frame grid (the
centre padding's rule at the edges), resized columns to the frames they interpolate, windows to the
columns they cut, ``neighbours`` to the windows around; the other ops act column by column (or window by
window) and are called as they are, with the whole file's statistic in ``Block.file_stats`` when they are
file-scope.
"""

from __future__ import annotations

import math

from dataclasses import dataclass, replace

import numpy as np

from ..dsp import resize_plan
from ..errors import AudioDecodeError
from ..io.audio import iter_audio_blocks
from ..ops.file_stats import Accumulator, needs_file_stats
from ..ops.base import Block, Signal
from ..ops.frontend import fit_padding
from ..ops.spectral import _interpolate, _width as _resized_width, n_stft_frames, stft_op

__all__ = ["Chain", "chain_of", "Samples", "SamplesEnded", "FileFront", "resize_columns"]


def resize_columns(src: int, dst: int, a: int, b: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Columns ``[a, b)`` of :func:`birdinfer.dsp.resize_plan` ``(src, dst)``, without the plan of the whole file."""
    return resize_plan(src, dst, a, b)


@dataclass(frozen=True)
class Chain:
    """One feature pipeline: its ops, their cache keys, where ``windows`` stands, its window step in rows and
    its file-scope ops ``(op index, pass)``: an op's pass is one more than the last file-scope op before it."""

    name: str
    steps: tuple
    keys: tuple[str, ...]
    windows_at: int
    step_rows: int
    stats: tuple[tuple[int, int], ...]


def chain_of(manifest, name: str) -> Chain:
    steps = tuple(manifest.features[name])
    windows_at = next(i for i, s in enumerate(steps) if s.name == "windows")
    stats, depth = [], 0
    for i, step in enumerate(steps):
        if needs_file_stats(step.name, step.params, i > windows_at):
            depth += 1
            stats.append((i, depth))
    return Chain(name, steps, tuple(f"{s.name}:{s.params!r}" for s in steps), windows_at,
                 int(manifest.feature_shapes[name].step_rows), tuple(stats))


class SamplesEnded(AudioDecodeError):
    """The recording ended before a requested sample (its length was taken from its header and was wrong)."""


class _Held:
    """Pieces of a recording read forward, held from the lowest sample asked since the last :meth:`release`."""

    def __init__(self):
        self._held: list[tuple[int, np.ndarray]] = []
        self._end, self._low = 0, None

    def _fill_to(self, b: int) -> None:  # add pieces until sample ``b`` is held
        raise NotImplementedError

    def get(self, a: int, b: int) -> np.ndarray:
        if b <= a:
            return np.zeros(0, np.float32)
        if self._end < b:
            self._fill_to(b)
        if a < self._held[0][0]:
            raise RuntimeError(f"samples [{a}, {b}) were already released (held from {self._held[0][0]})")
        parts = [p[max(0, a - s) : b - s] for s, p in self._held if s < b and s + p.size > a]
        self._low = a if self._low is None else min(self._low, a)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def release(self) -> None:
        if self._low is not None:
            self._held = [(s, p) for s, p in self._held if s + p.size > self._low]
        self._low = None


class Samples(_Held):
    """Decoded samples of one recording, read forward in pieces; ``get(a, b)`` for ranges that never go back
    before what :meth:`release` let go (the start of the previous block's requests)."""

    def __init__(self, path, sample_rate: int, read_seconds: float, *, speed: float = 1.0):
        super().__init__()
        self.path = path
        self._pieces = iter_audio_blocks(path, block_seconds=read_seconds, sample_rate=sample_rate, speed=speed)

    def _fill_to(self, b: int) -> None:
        while self._end < b:
            piece = next(self._pieces, None)
            if piece is None:
                raise SamplesEnded(self.path, f"the file changed while it was read (ends at sample {self._end}, needed {b})")
            self._held.append((self._end, piece))
            self._end += piece.size

    def count(self) -> int:
        """Read to the end: the recording's length in samples."""
        for piece in self._pieces:
            self._end += piece.size
        self._held = []
        return self._end


class FilteredSamples(_Held):
    """Samples of another reader (:class:`Samples` or any object with ``get`` / ``release`` / ``count``) through a
    filter run over them in order from the first sample (``piece_filter``: e.g. :class:`birdinfer.ops.filters.
    PieceFilter`): the filtered samples are kept as the inner reader keeps the raw ones, so ranges may overlap
    as they do there."""

    def __init__(self, inner, piece_filter):
        super().__init__()
        self.inner, self.filter = inner, piece_filter

    def _fill_to(self, b: int) -> None:
        piece = self.inner.get(self._end, b)
        self.inner.release()  # read forward only: the raw samples before ``b`` are not needed again
        self._held.append((self._end, self.filter(piece)))
        self._end = b

    def count(self) -> int:
        return self.inner.count()


@dataclass
class _Geometry:
    lengths: list[int]  # columns at positions 0 .. windows_at
    pads: dict[int, tuple[int, int]]  # op index → (left, right) samples
    pad_left: list[int]  # padding before the file's first sample, per position
    per_column: list[float]  # samples per column, per position
    windows: int  # windows of the whole file


class FileFront:
    """One recording's streamed front end: its geometry, the statistics of its file-scope ops, and the
    features of each output block."""

    def __init__(self, manifest, chains: dict, n_samples: int, block_rows: int, threads: int = 1):
        self.m, self.chains, self.block_rows = manifest, chains, block_rows
        self.n_samples, self.n_rows = n_samples, manifest.n_rows(n_samples)
        self.n_blocks = -(-self.n_rows // block_rows)
        self.block = Block(n_samples, self.n_rows, manifest.sample_rate, manifest.window_samples, manifest.row_partial,
                           threads=threads)
        self.geo = {name: self._geometry(chain) for name, chain in chains.items()}
        self.stats: dict[tuple, dict] = {}
        self.cache: dict = {}
        self.samples: Samples | None = None

    def _geometry(self, chain: Chain) -> _Geometry:
        n, left_total, spc = self.n_samples, 0, 1
        g = _Geometry([n], {}, [0], [1], max(1, -(-self.n_rows // chain.step_rows)))
        for i, step in enumerate(chain.steps[: chain.windows_at]):
            p = step.params
            if step.name == "pad":
                if p.fit is not None:
                    left = right = fit_padding(n, self.n_rows, p.fit)
                else:
                    left, right = round(p.left_seconds * self.block.sample_rate), round(p.right_seconds * self.block.sample_rate)
                g.pads[i] = (left, right)
                n, left_total = n + left + right, left_total + left
            elif step.name == "stft":
                n, spc = n_stft_frames(n, p), spc * p.hop_length
            elif step.name == "resize_time":
                n, spc = _resized_width(self.block, p), self.block.row_samples / p.frames_per_row
            g.lengths.append(n)
            g.pad_left.append(left_total)
            g.per_column.append(spc)
        return g

    # ------------------------------------------------------------------------------ passes
    def collect(self, depth: int, samples: Samples) -> None:
        """One pass over the file: the statistics of the file-scope ops of pass ``depth``."""
        targets = {}
        for chain in self.chains.values():
            for i, d in chain.stats:
                if d == depth:
                    targets.setdefault(chain.keys[: i + 1], (chain, i))
        acc = {key: Accumulator(chain.steps[i].name, chain.steps[i].params) for key, (chain, i) in targets.items()}
        self.samples, b = samples, 0
        while True:
            busy = False
            for key, (chain, i) in targets.items():
                span = self._stat_span(chain, i, b)
                if span is not None:
                    busy = True
                    x = self.fetch(chain, i, *span) if i <= chain.windows_at else self.fetch_windows(chain, i, *span)
                    acc[key].add(x.data)
            self.cache = {}
            samples.release()
            if not busy:
                break
            b += 1
        for key, a in acc.items():
            self.stats[key] = a.result()

    def _stat_span(self, chain: Chain, i: int, b: int) -> tuple[int, int] | None:
        g = self.geo[chain.name]
        if i <= chain.windows_at:
            size, total = math.ceil(self.block_rows * self.block.row_samples / g.per_column[i]), g.lengths[i]
        else:
            size, total = self.block_rows // chain.step_rows, g.windows
        return (b * size, min(total, (b + 1) * size)) if b * size < total else None

    def features(self, b: int, names, samples: Samples) -> tuple[dict[str, Signal], dict[str, tuple[int, int]]]:
        """Block ``b``'s features (the whole-file features' windows for its rows) and their window spans."""
        self.samples = samples
        r0, r1 = b * self.block_rows, min(self.n_rows, (b + 1) * self.block_rows)
        out, spans = {}, {}
        for name in names:
            chain, g = self.chains[name], self.geo[name]
            w0 = r0 // chain.step_rows
            w1 = g.windows if b == self.n_blocks - 1 else r1 // chain.step_rows
            out[name], spans[name] = self.fetch_windows(chain, len(chain.steps), w0, w1), (w0, w1)
        self.cache = {}
        samples.release()  # the next block starts no earlier than this one
        return out, spans

    # ------------------------------------------------------------------------- positions
    def _block(self, chain: Chain, op: int) -> Block:
        if any(i == op for i, _ in chain.stats):
            return replace(self.block, file_stats=self.stats[chain.keys[: op + 1]])
        return self.block

    def fetch(self, chain: Chain, i: int, a: int, b: int) -> Signal:
        """Columns ``[a, b)`` of position ``i`` (at or before the ``windows`` op)."""
        key = (chain.keys[:i], "columns", a, b)
        if key in self.cache:
            return self.cache[key]
        if b <= a and i > 0:  # metadata only
            c = min(max(a, 0), self.geo[chain.name].lengths[i] - 1)
            sig = self.fetch(chain, i, c, c + 1)
            sig = replace(sig, data=sig.data[..., :0])
        elif i == 0:
            sig = Signal(self.samples.get(a, b))
        else:
            step = chain.steps[i - 1]
            if step.name == "pad":
                left, right = self.geo[chain.name].pads[i - 1]
                inner, data = self._extended(chain, i - 1, a - left, b - left, step.params.mode, step.params.value)
                sig = replace(inner, data=data, pad_left=inner.pad_left + left, pad_right=inner.pad_right + right)
            elif step.name == "stft":
                p = step.params
                half = p.n_fft // 2 if p.center else 0
                mode = p.pad_mode if p.center else "constant"
                inner, data = self._extended(chain, i - 1, a * p.hop_length - half, (b - 1) * p.hop_length + p.n_fft - half, mode, 0.0)
                sig = stft_op(replace(inner, data=data), replace(p, center=False), self.block)
            elif step.name == "resize_time":
                i0, i1, frac = resize_columns(self.geo[chain.name].lengths[i - 1], self.geo[chain.name].lengths[i], a, b)
                lo = int(i0.min())
                inner = self.fetch(chain, i - 1, lo, int(i1.max()) + 1)
                sig = replace(inner, data=_interpolate(inner.data, i0 - lo, i1 - lo, frac), frames_per_row=float(step.params.frames_per_row))
            else:
                sig = step.entry.fn(self.fetch(chain, i - 1, a, b), step.params, self._block(chain, i - 1))
        self.cache[key] = sig
        return sig

    def _extended(self, chain: Chain, i: int, lo: int, hi: int, mode: str, value: float) -> tuple[Signal, np.ndarray]:
        """Columns ``[lo, hi)`` of position ``i``, where columns outside the signal follow ``mode`` ("constant":
        ``value``; "reflect" and "edge" as numpy.pad)."""
        n = self.geo[chain.name].lengths[i]
        if 0 <= lo and hi <= n:
            inner = self.fetch(chain, i, lo, hi)
            return inner, inner.data
        if mode == "constant":
            clo, chi = min(max(lo, 0), n), min(max(hi, 0), n)
            inner = self.fetch(chain, i, clo, max(clo, chi))
            out = np.full(inner.data.shape[:-1] + (hi - lo,), value, dtype=np.float32)
            out[..., clo - lo : clo - lo + inner.data.shape[-1]] = inner.data
            return inner, out
        index = np.arange(lo, hi)
        if mode == "reflect":
            index = np.abs(index)
            index = np.where(index >= n, 2 * (n - 1) - index, index)
        else:
            index = np.clip(index, 0, n - 1)
        clo, chi = int(index.min()), int(index.max()) + 1
        inner = self.fetch(chain, i, clo, chi)
        return inner, np.ascontiguousarray(inner.data[..., index - clo], dtype=np.float32)

    def _rows_block(self, chain: Chain, a: int, b: int) -> Block:
        """The block the ``windows`` op sees for windows ``[a, b)``: their rows, and for the last windows the
        file's remaining samples (so a partial last row is treated as in the whole file)."""
        rows, row = a * chain.step_rows, self.block.row_samples
        if b == self.geo[chain.name].windows:
            return replace(self.block, n_samples=self.n_samples - rows * row, n_rows=self.n_rows - rows)
        n = (b - a) * chain.step_rows
        return replace(self.block, n_samples=n * row, n_rows=n)

    def _windows(self, chain: Chain, a: int, b: int) -> Signal:
        i, step = chain.windows_at, chain.steps[chain.windows_at]
        p, n = step.params, self.geo[chain.name].lengths[chain.windows_at]
        if p.length_seconds is not None:
            sr = self.block.sample_rate
            length, hop = round(p.length_seconds * sr), round(p.step_seconds * sr)
            lead = int(round((length - hop) / 2 if p.lead_seconds == "centre" else p.lead_seconds * sr))
            start = self.geo[chain.name].pad_left[i] - lead + a * hop
        else:
            length, hop, lead, start = p.length_frames, p.step_frames, 0, a * p.step_frames
        end = start + (b - a - 1) * hop + length
        lo, hi = min(max(start, 0), n), min(max(end, 0), n)
        inner = self.fetch(chain, i, lo, max(lo, hi))
        x = replace(inner, pad_left=start - lo + lead) if p.length_seconds is not None else inner
        out = step.entry.fn(x, p, self._rows_block(chain, a, b))
        return replace(out, pad_left=inner.pad_left)

    def fetch_windows(self, chain: Chain, i: int, a: int, b: int) -> Signal:
        """Windows ``[a, b)`` of position ``i`` (after the ``windows`` op)."""
        key = (chain.keys[:i], "windows", a, b)
        if key in self.cache:
            return self.cache[key]
        if i == chain.windows_at + 1:
            sig = self._windows(chain, a, b)
        else:
            step = chain.steps[i - 1]
            if step.name == "neighbours":
                p, total = step.params, self.geo[chain.name].windows
                lo, hi = max(0, a - p.before), min(total, b + p.after)
                out = step.entry.fn(self.fetch_windows(chain, i - 1, lo, hi), p, self.block)
                sig = replace(out, data=out.data[a - lo : b - lo], windows=replace(out.windows, count=b - a))
            else:
                sig = step.entry.fn(self.fetch_windows(chain, i - 1, a, b), step.params, self._block(chain, i - 1))
        self.cache[key] = sig
        return sig



