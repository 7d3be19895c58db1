"""What long runs show a person: a progress bar and one-line summaries (shared by submit, predict, ray)."""

from __future__ import annotations

import logging
import sys

__all__ = ["progress_bar", "say"]

log = logging.getLogger("birdinfer")


def progress_bar(enabled: bool, *, total: int, initial: int = 0, desc: str = "birdinfer"):
    """A tqdm bar on stderr over files, or None when disabled (or tqdm is missing)."""
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is a dependency; keep going without a bar if it is missing
        return None
    return tqdm(total=total, initial=initial, unit="file", desc=desc, file=sys.stderr)


def say(progress: bool, message: str) -> None:
    """Log ``message``; also print it when nobody configured logging (e.g. in a notebook)."""
    log.info(message)
    if progress and not logging.getLogger().hasHandlers():
        print(message, file=sys.stderr)
