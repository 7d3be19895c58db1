"""The model folder format, bottom up:

    files.py      manifest.json, checksums, safe file names, ModelVariant (a stored form of a model)
    groups.py     version 1 mel groups (ranges: those of the ops they run as) and fields shared with recipes
    manifest.py   the version 1 manifest (mel groups, models) and ``Manifest.load(folder)``
    v2.py         the version 2 types: a whole inference as data (ManifestV2, ModelSpec, GroupSpec, ...)
    parse.py      version 2 parsing, validated against the registered ops (birdinfer.ops)
    upgrade.py    a version 1 manifest → its version 2 spec, in memory
    info.py       what tools read from any folder: effective weights, features, frequency bands

This ``__init__`` registers the formats in one place: importing it imports ``parse`` (``READERS[2]``) and
``upgrade`` (``UPGRADES[1]``), so the one :func:`load` returns a version 2 spec for every folder while
``manifest.py`` imports no format above it.
"""

from . import parse as _parse, upgrade as _upgrade  # noqa: F401  (register the version 2 reader and the upgrade)
from .manifest import Manifest, MelGroup, ModelEntry
from .files import FORMAT, MANIFEST_NAME, ModelVariant
from .upgrade import spec_from_v1, upgrade
from .parse import parse_spec
from .v2 import ManifestV2

load = Manifest.load  # any folder → the version 2 spec the engine runs (upgrade=False: as written)

__all__ = ["FORMAT", "MANIFEST_NAME", "Manifest", "ManifestV2", "MelGroup", "ModelEntry", "ModelVariant", "load",
           "parse_spec", "spec_from_v1", "upgrade"]
