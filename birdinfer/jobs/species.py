"""Species filters of BirdNET-Analyzer for ``predict`` and ``birdinfer species``: a species list file, or the
location meta model (:mod:`birdinfer.runtime.meta_model`) for a latitude, longitude and week.

Rules (BirdNET-Analyzer 2.x, ``species/utils.py`` and ``model.explore``): the list for a location holds the
labels whose meta-model score is ``>= sf_thresh`` (default 0.03), highest score first (ties in label order);
``week`` is 1–48 (4 per month) or -1 for the whole year, passed to the model as is. Everything is checked
before any audio is read: latitude in [-90, 90], longitude in [-180, 180], both or neither, ``week`` and
``sf_thresh`` only with a location, a list file *or* a location (BirdNET-Analyzer silently ignores the file
when given both; here it is an error). A list file holds one label per line as the folder's labels file
(``Scientific_Common`` for BirdNET), blank lines skipped; a line that is no label fails naming the file, the
line and the closest label. An empty list (a file without labels, a location where no species passes the
threshold) filters nothing, as in BirdNET-Analyzer: a warning says so.
"""

from __future__ import annotations

import difflib
import logging
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import ParameterError
from ..runtime.meta_model import location_scores

__all__ = ["SF_THRESH", "check_location", "location_species", "read_species_list", "species_mask"]

log = logging.getLogger(__name__)

#: BirdNET-Analyzer's ``LOCATION_FILTER_THRESHOLD`` (``--sf_thresh``).
SF_THRESH = 0.03


def _number(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ParameterError(f"--{name} must be a number, got {value!r}")
    return float(value)


def check_location(lat, lon, week=None, sf_thresh=None) -> tuple[float, float, int, float] | None:
    """``(lat, lon, week, sf_thresh)`` checked (week -1 and threshold 0.03 when not given), or None without a
    location; a :class:`ParameterError` naming the value otherwise."""
    if lat is None and lon is None:
        extra = [name for name, value in (("week", week), ("sf-thresh", sf_thresh)) if value is not None]
        if extra:
            raise ParameterError(f"--{' and --'.join(extra)} go with a location: give --lat and --lon too")
        return None
    if lat is None or lon is None:
        raise ParameterError("the location filter needs both --lat and --lon")
    lat, lon = _number(lat, "lat"), _number(lon, "lon")
    if not -90.0 <= lat <= 90.0:
        raise ParameterError(f"--lat {lat:g} is not a latitude: give degrees in [-90, 90]")
    if not -180.0 <= lon <= 180.0:
        raise ParameterError(f"--lon {lon:g} is not a longitude: give degrees in [-180, 180]")
    week = -1 if week is None else week
    if isinstance(week, bool) or not isinstance(week, (int, np.integer)) or not (week == -1 or 1 <= week <= 48):
        raise ParameterError(f"--week {week!r}: give a week of the year in 1-48 (4 per month), or -1 for the whole year")
    threshold = SF_THRESH if sf_thresh is None else _number(sf_thresh, "sf-thresh")
    if not 0.0 < threshold < 1.0:
        raise ParameterError(f"--sf-thresh {threshold:g} must be in (0, 1) (BirdNET-Analyzer: 0.0001-0.99, default 0.03)")
    return lat, lon, int(week), threshold


def location_species(manifest, lat, lon, week=None, sf_thresh=None) -> list[str]:
    """The labels the meta model keeps for this location and week, highest score first."""
    lat, lon, week, threshold = check_location(lat, lon, week, sf_thresh) or (None, None, None, None)
    if lat is None:
        raise ParameterError("a species list for a location needs --lat and --lon")
    scores = location_scores(manifest, lat, lon, week)
    order = np.argsort(-scores, kind="stable")
    return [manifest.labels[j] for j in order if scores[j] >= np.float32(threshold)]


def read_species_list(path: str | Path, labels: Sequence[str]) -> list[str]:
    """The labels a species list file names (a folder: its ``species_list.txt``, as BirdNET-Analyzer reads it)."""
    path = Path(path)
    if path.is_dir():
        path = path / "species_list.txt"
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ParameterError(f"cannot read the species list {path}: {getattr(e, 'strerror', None) or e}") from e
    known, found = set(labels), []
    for number, line in enumerate(lines, 1):
        name = line.strip()
        if not name:
            continue
        if name not in known:
            close = difflib.get_close_matches(name, labels, n=1, cutoff=0.0)
            hint = f"; the closest label is {close[0]!r}" if close else ""
            raise ParameterError(f"{path}, line {number}: {name!r} is not a label of the model folder{hint} "
                                 "(one label per line, as in its labels file, e.g. 'Turdus merula_Eurasian Blackbird')")
        found.append(name)
    return found


def species_mask(manifest, *, species_list=None, lat=None, lon=None, week=None, sf_thresh=None) -> np.ndarray | None:
    """The labels a run keeps (boolean over ``manifest.labels``), or None for no filter. Checks everything and
    runs the meta model when a location is given (fast: one row), before any audio is read."""
    location = check_location(lat, lon, week, sf_thresh)
    if species_list is not None and location is not None:
        raise ParameterError("give --species-list or a location (--lat/--lon/--week), not both")
    if species_list is None and location is None:
        return None
    names = read_species_list(species_list, manifest.labels) if species_list is not None else \
        location_species(manifest, *location)
    if not names:
        log.warning("the species list %s is empty: every species is kept (as BirdNET-Analyzer does)",
                    species_list if species_list is not None else f"for {lat}, {lon}, week {location[2]}")
        return None
    wanted = set(names)
    return np.array([label in wanted for label in manifest.labels], bool)
