"""The one exception hierarchy of birdinfer.

Every error the package raises on purpose is a :class:`BirdinferError`, so a caller can catch one type.
Messages name the file, the offending value and what to do about it.
"""

from __future__ import annotations

__all__ = [
    "BirdinferError",
    "ParameterError",
    "AudioDecodeError",
    "ModelFolderError",
    "ChecksumError",
    "BackendError",
    "MissingDependencyError",
    "OutputError",
    "CheckpointError",
]


class BirdinferError(Exception):
    """Root of every error birdinfer raises on purpose."""


class ParameterError(BirdinferError, ValueError):
    """A bad argument value (names the parameter and the value)."""


class AudioDecodeError(BirdinferError):
    """An audio file could not be decoded (names the file and the reason)."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot decode audio file {self.path}: {reason}")


class ModelFolderError(BirdinferError):
    """A model folder or its manifest is missing, malformed or inconsistent."""


class ChecksumError(ModelFolderError):
    """A model file's sha256 differs from the one recorded in the manifest."""


class BackendError(BirdinferError):
    """An inference backend (OpenVINO, ONNX Runtime) failed to load, compile or run a model."""


class MissingDependencyError(BirdinferError, ImportError):
    """An optional dependency is needed for what was asked; the message says what to install."""


class OutputError(BirdinferError):
    """An output file cannot be written."""


class CheckpointError(BirdinferError):
    """A training checkpoint cannot be used for export: not a torch file, refused by the safe loader, or
    not the network the recipe says (architecture, class count, mel count). Names the file."""
