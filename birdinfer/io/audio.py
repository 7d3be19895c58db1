"""Decoding: audio file → float32 mono samples at the model sample rate (REFERENCE.md section 2).

The reference read every file with ``librosa.load(path, sr=32000)``; this module gives the same samples
without librosa:

* decoding by libsndfile (``soundfile``, the backend ``librosa.load`` itself uses): OGG Vorbis/Opus, WAV,
  FLAC, MP3 and the other formats libsndfile reads, as float32;
* mono = mean over the channels (as ``librosa.to_mono``);
* resampling, when the file rate differs, with soxr quality ``HQ`` (``librosa.load``'s default
  ``res_type="soxr_hq"``), and the length fixed to ``ceil(n * new_rate / old_rate)`` as librosa does;
* non-finite sample repair: the reference replaced NaN samples by the mean of the non-NaN samples.
  Here ±Inf is treated like NaN (an infinite sample would otherwise turn whole spectrogram frames into
  Inf/NaN), i.e. every non-finite sample becomes the mean of the finite samples, and a file without any
  finite sample becomes zeros. The repair runs on the mono signal *before* resampling, so that one bad
  sample does not smear over the resampling filter's length; for 32 kHz files (every competition file)
  the order makes no difference.

Every failure is an :class:`~birdinfer.errors.AudioDecodeError` naming the file and a reason a user can
act on (missing file, not an audio file, no samples, truncated or corrupt data).

What the file system hands over is checked before anything is opened (:mod:`birdinfer.io.paths`: only
regular files are read; FIFOs, sockets, devices, link loops and dangling links are refused with what they
are; names that are not valid UTF-8 are used as bytes). A header is checked before any of its
numbers is used: a sample rate under :data:`MIN_SAMPLE_RATE` or more frames than a file of its size can
hold (:data:`MAX_FRAMES_PER_BYTE`) is a corrupt header, so nothing is ever sized from a lying header.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import soundfile as sf

from ..errors import AudioDecodeError, ParameterError
from .paths import AUDIO_EXTENSIONS, checked_file, list_audio_files, native_name

__all__ = [
    "AUDIO_EXTENSIONS",
    "MAX_FRAMES_PER_BYTE",
    "MIN_SAMPLE_RATE",
    "AudioInfo",
    "audio_info",
    "load_audio",
    "iter_audio_blocks",
    "list_audio_files",
    "repair_non_finite",
    "speed_rate",
]

#: soxr quality used for resampling (= librosa.load's default res_type "soxr_hq").
_SOXR_QUALITY = "HQ"

#: The lowest native sample rate accepted (Hz). A header claiming less (say 1 Hz) is corrupt: no bird sound
#: survives under a 500 Hz Nyquist limit, and resampling it to the model rate would multiply every decoded
#: sample by the rate ratio (32 000 for 1 Hz: libsoxr crashes the process).
MIN_SAMPLE_RATE = 1000

#: The most frames per byte of file a header may declare. The densest real encodings stay far below: FLAC
#: silence in 65 535-frame blocks is about 5 500 frames per byte (libsndfile's FLAC writer 326, Vorbis 445,
#: Opus 209, MP3 8, 16-bit PCM 0.5); a header declaring more is corrupt and is refused before anything is
#: sized from it (a FLAC STREAMINFO can claim 2^36 - 1 frames).
MAX_FRAMES_PER_BYTE = 1 << 14

# Frames read per libsndfile call when streaming (about 2 s at 32 kHz): small enough to bound memory,
# large enough that the per-call overhead does not matter.
_READ_FRAMES = 1 << 16


@dataclass(frozen=True)
class AudioInfo:
    """What the file header says: native ``sample_rate`` (Hz), ``channels``, ``frames`` per channel and
    ``duration_s`` (= frames / sample_rate)."""

    sample_rate: int
    channels: int
    frames: int
    duration_s: float
    format: str = ""
    subtype: str = ""


# ----------------------------------------------------------------------------------------- helpers
def _check_rate(sample_rate) -> int:
    if not isinstance(sample_rate, (int, np.integer)) or isinstance(sample_rate, bool) or sample_rate <= 0:
        raise ParameterError(f"sample_rate must be a positive integer (Hz), got {sample_rate!r}")
    return int(sample_rate)


def _explain(error: Exception) -> str:
    """A user-facing reason for a libsndfile failure (the library's own words kept at the end)."""
    text = str(error)
    low = text.lower()
    if "format not recognised" in low or "format not recognized" in low:
        return f"not an audio file libsndfile can read (OGG, WAV, FLAC, MP3, ...) ({text})"
    if "malformed" in low or "lost sync" in low or "corrupt" in low or "unexpected end" in low:
        return f"the file is truncated or corrupt ({text})"
    if "permission" in low:
        return f"permission denied ({text})"
    return f"the file is unreadable, truncated or corrupt ({text})"


def _open(path: Path) -> sf.SoundFile:
    try:
        sound_file = sf.SoundFile(native_name(path))
    except (sf.SoundFileError, RuntimeError, OSError, ValueError, TypeError) as e:
        if isinstance(e, PermissionError) or not os.access(path, os.R_OK):
            raise AudioDecodeError(path, f"permission denied ({e})") from e
        raise AudioDecodeError(path, _explain(e)) from e
    try:
        _check_header(path, sound_file)
    except AudioDecodeError:
        sound_file.close()
        raise
    return sound_file


def _check_header(path: Path, sound_file: sf.SoundFile) -> None:
    """Refuse a header whose numbers no real recording of this file's size has (before any is used)."""
    rate, frames = int(sound_file.samplerate), int(sound_file.frames)
    if rate < MIN_SAMPLE_RATE:
        raise AudioDecodeError(path, f"the header declares a sample rate of {rate} Hz (below {MIN_SAMPLE_RATE} Hz): "
                                     "a corrupt header; convert or download the file again")
    try:
        size = os.stat(path).st_size
    except OSError as e:
        raise AudioDecodeError(path, f"the file went away while it was opened ({e.strerror or e})") from e
    if frames > size * MAX_FRAMES_PER_BYTE:
        raise AudioDecodeError(path, f"the header declares {frames} frames ({frames / rate:.0f} s), more than a file of "
                                     f"{size} bytes can hold: a corrupt header; download or copy the file again")


def _ogg_end_of_stream_missing(path: Path) -> bool:
    """True when an Ogg file's last page lacks the end-of-stream flag, i.e. the file was cut short.

    libsndfile decodes a truncated Ogg stream silently up to the cut (Ogg headers carry no length), so
    this is the only way to tell a truncated file from a short one. Looks at the last 64 KiB only.
    """
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - (1 << 16)))
            tail = f.read()
    except OSError:
        return False
    at = len(tail)
    while (at := tail.rfind(b"OggS", 0, at)) >= 0:
        if at + 5 < len(tail) and tail[at + 4] != 0:
            continue  # not a page header (Ogg version byte is 0): "OggS" inside packet data
        length = _ogg_page_length(tail, at)
        if length < 0 or at + length > len(tail):
            return True  # the last page is cut off
        return not tail[at + 5] & 0x04  # complete last page: is it flagged end-of-stream?
    return True  # no page header near the end at all


def _ogg_page_length(buf: bytes, at: int) -> int:
    """Byte length of the Ogg page starting at ``buf[at]`` (header + body), or -1 if the header is cut."""
    if at + 27 > len(buf):
        return -1
    n_segments = buf[at + 26]
    if at + 27 + n_segments > len(buf):
        return -1
    return 27 + n_segments + sum(buf[at + 27 : at + 27 + n_segments])


def _is_ogg(sound_file: sf.SoundFile) -> bool:
    return sound_file.format == "OGG"


def _to_mono(data: np.ndarray) -> np.ndarray:
    """``(frames,)`` or ``(frames, channels)`` → ``(frames,)`` float32; the mean over channels is taken
    on the ``(channels, frames)`` view exactly as ``librosa.to_mono`` does, so the rounding is the same."""
    if data.ndim == 1:
        return data
    if data.shape[1] == 1:
        return np.ascontiguousarray(data[:, 0])
    return np.mean(data.T, axis=0)


def repair_non_finite(y: np.ndarray, *, fill: float | None = None) -> np.ndarray:
    """Replace NaN and ±Inf samples (in place) by the mean of the finite samples, or by ``fill``.

    ``y``: float array ``(n,)``. A signal without any finite sample becomes zeros. Returns ``y``.
    """
    bad = ~np.isfinite(y)
    if not bad.any():
        return y
    if fill is None:
        if bad.all():
            fill = 0.0
        else:
            # np.nanmean, as the reference computed "the mean of the non-NaN samples" (same rounding:
            # float32 pairwise sum over the signal with the bad samples counted as 0).
            y[bad] = np.nan
            fill = np.nanmean(y)
            if not np.isfinite(fill):  # the float32 sum overflowed (garbage float file): the exact mean is finite
                fill = np.nanmean(y, dtype=np.float64)
    y[bad] = fill
    return y


def _fixed_length(n_in: int, in_rate: int, out_rate: int) -> int:
    """Resampled length ``ceil(n_in * out_rate / in_rate)`` (librosa.resample's ``fix=True`` length)."""
    return int(math.ceil(n_in * (float(out_rate) / in_rate)))


# ---------------------------------------------------------------------------------------- public API
def audio_info(path) -> AudioInfo:
    """Header facts of an audio file without decoding it (raises :class:`AudioDecodeError`)."""
    p = checked_file(path)
    with _open(p) as f:
        return AudioInfo(
            sample_rate=int(f.samplerate),
            channels=int(f.channels),
            frames=int(f.frames),
            duration_s=float(f.frames) / f.samplerate if f.samplerate else 0.0,
            format=str(f.format),
            subtype=str(f.subtype),
        )


def load_audio(path, *, sample_rate: int = 32000) -> np.ndarray:
    """Decode a whole file: float32 mono samples ``(n,)`` at ``sample_rate`` Hz.

    Equal to ``librosa.load(path, sr=sample_rate)`` (soundfile decoding, channel mean, soxr HQ resampling,
    librosa's output length) followed by the non-finite repair described in the module docstring.
    Raises :class:`AudioDecodeError` (missing, not audio, no samples, truncated or corrupt file).
    """
    sample_rate = _check_rate(sample_rate)
    p = checked_file(path)
    with _open(p) as f:
        native_rate, declared = int(f.samplerate), int(f.frames)
        _check_ogg_complete(p, f)
        try:
            data = f.read(frames=-1, dtype="float32", always_2d=False)
        except (sf.SoundFileError, RuntimeError, MemoryError) as e:
            raise AudioDecodeError(p, _explain(e)) from e
    _check_decoded(p, len(data), declared)
    y = repair_non_finite(_to_mono(data))
    del data
    if native_rate != sample_rate:
        y = _resample(y, native_rate, sample_rate)
    return np.ascontiguousarray(y, dtype=np.float32)


def _check_decoded(p: Path, n_decoded: int, n_declared: int) -> None:
    if n_decoded == 0:
        raise AudioDecodeError(p, "the file contains no audio samples")
    if n_decoded < n_declared:
        raise AudioDecodeError(
            p, f"the file is truncated or corrupt: its header declares {n_declared} frames, only {n_decoded} decoded"
        )


def _check_ogg_complete(p: Path, sound_file: sf.SoundFile) -> None:
    if _is_ogg(sound_file) and _ogg_end_of_stream_missing(p):
        raise AudioDecodeError(
            p, "the Ogg stream is truncated (its last page has no end-of-stream mark): the file was cut short; "
            "copy or download it again"
        )


def _resample(y: np.ndarray, in_rate: int, out_rate: int) -> np.ndarray:
    import soxr

    out = soxr.resample(y, in_rate, out_rate, quality=_SOXR_QUALITY)
    return _fix_length(out, _fixed_length(len(y), in_rate, out_rate))


def _fix_length(y: np.ndarray, size: int) -> np.ndarray:
    if len(y) > size:
        return y[:size]
    if len(y) < size:
        return np.concatenate([y, np.zeros(size - len(y), dtype=y.dtype)])
    return y


def iter_audio_blocks(path, *, block_seconds: float = 60.0, sample_rate: int = 32000,
                      speed: float = 1.0) -> Iterator[np.ndarray]:
    """Decode a file piece by piece: consecutive float32 mono blocks ``(block_samples,)`` at ``sample_rate``.

    ``speed`` (BirdNET-Analyzer's ``--audio_speed``): the file's samples are taken as recorded at
    ``int(native rate · speed)`` Hz (:func:`speed_rate`) and resampled from that rate, so the audio plays ``speed``
    times faster (0.1: a 384 kHz bat recording becomes 38.4 kHz audio ten times longer).

    ``block_samples = round(block_seconds * sample_rate)``; the last block may be shorter. Memory stays
    bounded by a few blocks whatever the file length. For a file already at ``sample_rate`` without
    non-finite samples the concatenated blocks equal :func:`load_audio` exactly (tested for OGG Vorbis;
    libsndfile's MP3 decoder can differ by one float32 ulp between piecewise and whole-file reads); other rates are resampled
    with a streaming soxr HQ resampler (equal to the one-shot resampling up to float rounding at most), the
    total length fixed as in :func:`load_audio`. Non-finite samples are replaced by the mean of the finite
    samples *of their block* (the whole-file mean is not known while streaming).
    Raises :class:`AudioDecodeError` like :func:`load_audio` (possibly after some blocks were yielded,
    for data that turns out to be corrupt or truncated further in).
    """
    sample_rate = _check_rate(sample_rate)
    if not (isinstance(block_seconds, (int, float)) and math.isfinite(block_seconds) and block_seconds > 0):
        raise ParameterError(f"block_seconds must be a positive number of seconds, got {block_seconds!r}")
    block = int(round(block_seconds * sample_rate))
    if block < 1:
        raise ParameterError(f"block_seconds={block_seconds} gives less than one sample at {sample_rate} Hz")
    p = checked_file(path)
    with _open(p) as f:
        native_rate, declared = speed_rate(p, int(f.samplerate), speed), int(f.frames)
        if declared == 0:
            raise AudioDecodeError(p, "the file contains no audio samples")
        _check_ogg_complete(p, f)  # before any block is yielded
        if native_rate == sample_rate:
            yield from _blocks_same_rate(p, f, block, declared)
        else:
            yield from _blocks_resampled(p, f, block, native_rate, sample_rate, declared)


def speed_rate(path, native_rate: int, speed: float = 1.0) -> int:
    """The rate a file of ``native_rate`` Hz is read at with ``speed``: ``int(native_rate · speed)``, as
    BirdNET-Analyzer's ``open_audio_file`` takes it (``native_rate`` itself at speed 1). Raises
    :class:`AudioDecodeError` naming the file when that leaves less than :data:`MIN_SAMPLE_RATE` Hz."""
    if speed == 1.0:
        return native_rate
    rate = int(native_rate * speed)
    if rate < MIN_SAMPLE_RATE:
        raise AudioDecodeError(path, f"at audio speed {speed:g} its {native_rate} Hz are read as {rate} Hz, under "
                                     f"{MIN_SAMPLE_RATE} Hz; give a higher --audio-speed for this recording")
    return rate


def _read_pieces(p: Path, f: sf.SoundFile, piece: int) -> Iterator[np.ndarray]:
    """Mono float32 pieces of up to ``piece`` frames (the last may be shorter)."""
    while True:
        try:
            data = f.read(frames=piece, dtype="float32", always_2d=False)
        except (sf.SoundFileError, RuntimeError, MemoryError) as e:
            raise AudioDecodeError(p, _explain(e)) from e
        if len(data) == 0:
            return
        yield _to_mono(data)
        if len(data) < piece:
            return


def _blocks_same_rate(p, f, block, declared) -> Iterator[np.ndarray]:
    total = 0
    for y in _read_pieces(p, f, block):
        total += len(y)
        yield repair_non_finite(np.ascontiguousarray(y, dtype=np.float32))
    _check_decoded(p, total, declared)


def _blocks_resampled(p, f, block, in_rate, out_rate, declared) -> Iterator[np.ndarray]:
    import soxr

    stream = soxr.ResampleStream(in_rate, out_rate, 1, dtype="float32", quality=_SOXR_QUALITY)
    # Hold back a small margin so the final length fix (trim to ceil(n * ratio)) never touches a block
    # that was already yielded.
    margin = 64
    pending: list[np.ndarray] = []
    n_pending = 0
    n_in = 0
    n_out = 0
    for piece in _read_pieces(p, f, _READ_FRAMES):
        n_in += len(piece)
        # Non-finite samples must go before the resampler (it would smear them); the fill is the mean
        # of this decoded piece, the streaming stand-in for the whole-file mean.
        out = stream.resample_chunk(repair_non_finite(np.ascontiguousarray(piece)), last=False)
        if len(out):
            pending.append(out)
            n_pending += len(out)
        while n_pending >= block + margin:
            buf = np.concatenate(pending)
            yield buf[:block]
            n_out += block
            pending, n_pending = [buf[block:]], len(buf) - block
    _check_decoded(p, n_in, declared)
    pending.append(stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True))
    tail = np.concatenate(pending) if pending else np.zeros(0, dtype=np.float32)
    tail = _fix_length(tail, max(0, _fixed_length(n_in, in_rate, out_rate) - n_out))
    for start in range(0, len(tail), block):
        yield np.ascontiguousarray(tail[start : start + block], dtype=np.float32)
