"""An exclusive lock on an output, held for a whole ``predict`` or ``submit`` run.

Two runs writing the same output would interleave their parts and journals (``predict`` resumes from
``<out>.parts/``) or race on the final rename. So each run holds ``<out>.lock`` for its whole life:

* The lock is ``fcntl.flock(LOCK_EX | LOCK_NB)`` on that file. The kernel drops it when the holder exits
  in any way (return, exception, SIGKILL, crash), so a lock left by a dead run is never in the way: the
  next run takes it over (and logs that the recorded holder is gone).
* The file records who holds it (``pid``, ``host``, ``started``, ``command``), so a second run fails at
  once with a :class:`~birdinfer.errors.OutputError` naming the output and the holder's PID.
* On release the file is removed. A run that locked a file another run has just removed (the inode at
  the path is no longer its own) lets go and tries again, so two runs can never both hold the path.

Only where ``fcntl`` exists (Linux, macOS); elsewhere runs are not guarded (logged once).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
from pathlib import Path

from ..errors import OutputError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

__all__ = ["OutputLock", "lock_path"]

log = logging.getLogger(__name__)


def lock_path(out: str | Path) -> Path:
    """``<out>.lock`` beside the output file (or the Raven output folder)."""
    out = Path(out)
    return out.with_name(out.name + ".lock")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    except OSError:
        return False
    return True


class OutputLock:
    """``with OutputLock(out):`` holds ``<out>.lock`` for the block (see the module docstring)."""

    def __init__(self, out: str | Path):
        self.out = Path(out)
        self.path = lock_path(out)
        self._fd: int | None = None

    def holder(self) -> dict:
        """What the lock file says about its holder (``{}`` when it cannot be read)."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def acquire(self) -> "OutputLock":
        if fcntl is None:  # pragma: no cover
            log.warning("no fcntl on this platform: %s is not protected against a second run", self.out)
            return self
        for _ in range(20):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise OutputError(f"cannot create the lock file {self.path}: {e.strerror or e}; choose a writable --out") from e
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                info = self.holder()
                raise OutputError(
                    f"{self.out} is being written by another birdinfer run (PID {info.get('pid', '?')} on "
                    f"{info.get('host', '?')}, started {info.get('started', '?')}; lock file {self.path}): wait for it "
                    "to finish or stop it, or choose another --out"
                ) from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # the previous holder removed the file between our open and our lock: try again
                os.close(fd)
                continue
            previous = self.holder()
            if previous.get("pid"):
                here = previous.get("host") == socket.gethostname()
                gone = "no longer running" if here and not _pid_alive(int(previous["pid"])) else "its lock was released"
                log.warning("taking over the lock %s left by PID %s on %s (%s)", self.path, previous["pid"],
                            previous.get("host", "?"), gone)
            info = {"pid": os.getpid(), "host": socket.gethostname(),
                    "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": " ".join(sys.argv)[:500]}
            os.ftruncate(fd, 0)
            os.write(fd, (json.dumps(info) + "\n").encode("utf-8"))
            os.fsync(fd)
            self._fd = fd
            return self
        raise OutputError(f"could not take the lock {self.path} (it kept being replaced); try again")

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # while still locked: no other run can hold this inode yet
        finally:
            os.close(self._fd)  # releases the flock
            self._fd = None

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
