"""The resume journal of ``predict`` and ``predict --engine ray``: what produced the results, and which
recordings are done.

A run folder holds a *fingerprint* file (JSON: the folder's labels, model files and checksums, the spec's
sha256, precision, backend and :data:`ENGINE_VERSION`) and a *done list* (one JSON line per finished
recording, appended and fsync'ed after its result is in place). A run started again with the same
settings skips the recordings in the done list; a run with other settings, or after an upgrade that may
change the outputs of the same folder, is refused (``resume=False`` starts over), so one output never
mixes rows of two engines.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable

from ..errors import OutputError
from ..spec.manifest import Manifest
from ..io.output import atomic_write
from ..spec.upgrade import upgrade

__all__ = ["ENGINE_VERSION", "Journal", "run_fingerprint"]

#: Bumped whenever the outputs of the same model folder may change (engine, ops, steps, the row rule,
#: the v1 → v2 upgrade): results written before the change are not resumed after it.
ENGINE_VERSION = 2
_PARTS_VERSION = 1


def run_fingerprint(manifest: Manifest, precision: str, backend: str) -> dict:
    """What decides the rows of a run: compared before resuming one."""
    spec = upgrade(manifest).to_dict()
    spec.pop("files", None)
    spec.pop("extra", None)
    return {
        "parts_version": _PARTS_VERSION,
        "engine_version": ENGINE_VERSION,
        "labels": list(manifest.labels),
        "model_files": dict(sorted(manifest.files.items())),
        "models": [m.name for m in manifest.models],
        "spec_sha256": hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode("utf-8")).hexdigest(),
        "precision": precision,
        "backend": backend,
        "window_seconds": manifest.window_seconds,
    }


class Journal:
    """``folder/run_name`` (the fingerprint) and ``folder/done_name`` (the done list) of one run folder."""

    def __init__(self, folder: Path, fingerprint: dict, *, run_name: str, done_name: str):
        self.folder = Path(folder)
        self.fingerprint = fingerprint
        self.run_file = self.folder / run_name
        self.done_file = self.folder / done_name

    def claim(self) -> None:
        """Refuse results of other settings; record this run's fingerprint when there is none yet."""
        if self.run_file.is_file():
            try:
                previous = json.loads(self.run_file.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                previous = None  # killed while writing it: nothing can have been finished yet
            if previous is not None and previous != self.fingerprint:
                differ = sorted(k for k in set(previous) | set(self.fingerprint) if previous.get(k) != self.fingerprint.get(k))
                raise OutputError(
                    f"{self.folder} holds results made with other models, precision or backend (or an older birdinfer "
                    f"engine) than this run (differing: {', '.join(differ)}); run again with the same settings to "
                    "resume, or pass --no-resume (resume=False) to start over"
                )
        self.folder.mkdir(parents=True, exist_ok=True)
        if not self.run_file.is_file():
            atomic_write(self.run_file, lambda f: f.write(json.dumps(self.fingerprint, sort_keys=True).encode("utf-8")))

    def read_done(self, valid: Callable[[dict], bool]) -> dict[str, dict]:
        """``{key: entry}`` of the done list's entries whose result ``valid(entry)`` finds in place. A line cut
        short by a kill is skipped (its recording is done again) and ended, so the next entry starts clean."""
        done: dict[str, dict] = {}
        if not self.done_file.is_file():
            return done
        text = self.done_file.read_text(encoding="utf-8", errors="replace")
        if text and not text.endswith("\n"):
            with open(self.done_file, "a", encoding="utf-8") as f:
                f.write("\n")
        for line in text.splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(entry, dict) and isinstance(entry.get("key"), str) and valid(entry):
                done[entry["key"]] = entry
        return done

    def append(self, entry: dict) -> None:
        """Add one finished recording (after its result is in place), durably."""
        with open(self.done_file, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")
            f.flush()
            os.fsync(f.fileno())
