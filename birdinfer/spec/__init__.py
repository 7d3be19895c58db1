"""The model folder format, bottom up:

    manifest.py   files and checksums, the version 1 manifest (mel groups), ``Manifest.load(folder)``
    v2.py         version 2 parsing: a whole inference as data, validated against the registered ops
    upgrade.py    a version 1 manifest → its version 2 spec, in memory
    info.py       what tools read from any folder: effective weights, features, frequency bands

This ``__init__`` registers the formats in one place: importing it imports ``v2`` (``READERS[2]``) and
``upgrade`` (``UPGRADES[1]``), so the one :func:`load` returns a version 2 spec for every folder while
``manifest.py`` imports no format above it.
"""

from . import upgrade as _upgrade, v2 as _v2  # noqa: F401  (register the version 2 reader and the upgrade)
from .manifest import FORMAT, MANIFEST_NAME, Manifest, MelGroup, ModelEntry, ModelVariant
from .upgrade import spec_from_v1, upgrade
from .v2 import ManifestV2, parse_spec

load = Manifest.load  # any folder → the version 2 spec the engine runs (upgrade=False: as written)

__all__ = ["FORMAT", "MANIFEST_NAME", "Manifest", "ManifestV2", "MelGroup", "ModelEntry", "ModelVariant", "load",
           "parse_spec", "spec_from_v1", "upgrade"]
