"""An exclusive lock on an output, held for a whole ``predict`` (local or ``--engine ray``) or ``submit`` run.

Two runs writing the same output would interleave their parts and journals (``predict`` resumes from
``<out>.parts/``) or race on the final rename. So each run holds ``<out>.lock`` for its whole life:

* The lock is ``fcntl.flock(LOCK_EX | LOCK_NB)`` on that file. The kernel drops it when the holder exits
  in any way (return, exception, SIGKILL, crash), so a lock left by a dead run is never in the way: the
  next run takes it over (and logs that the recorded holder is gone).
* The file records who holds it (``pid``, ``host``, ``started``, ``command``), so a second run fails at
  once with a :class:`~birdinfer.errors.OutputError` naming the output and the holder's PID.
* Whatever else the file holds (empty, not JSON, not UTF-8, a list, a PID that is not a number or out of
  range) is a stale lock: once the ``flock`` is ours, it is taken over with a log line saying why. Only a
  lock file that is not a regular file (a folder, a FIFO) stops the run, with a sentence naming it.
* On release the file is removed. A run that locked a file another run has just removed (the inode at
  the path is no longer its own) lets go and tries again, so two runs can never both hold the path.

Only where ``fcntl`` exists (Linux, macOS); elsewhere runs are not guarded (logged once).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import stat
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
    """``<out>.lock`` beside the output file (or the Raven or Ray output folder)."""
    out = Path(os.path.abspath(out)) if not Path(out).name else Path(out)
    if not out.name:
        raise OutputError(f"{out} cannot be an output (it has no name to put a lock beside); choose another --out")
    return out.with_name(out.name + ".lock")


#: Largest PID any supported system hands out (Linux caps pid_max at 2**22; pid_t is 32 bits).
_MAX_PID = 2**31 - 1
#: A lock record is a few hundred bytes; reading stops here whatever the file holds.
_MAX_RECORD = 1 << 16


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


def _parse_holder(raw: bytes) -> tuple[dict, str | None]:
    """``(holder record, None)``, or ``({}, why the bytes are not one)``. Never raises: a lock file is written by
    processes that may be killed at any moment, and by anyone who can write the folder."""
    if not raw.strip():
        return {}, "it is empty"
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return {}, "it is not JSON text"
    if not isinstance(data, dict):
        return {}, f"it holds a JSON {type(data).__name__}, not a lock record"
    pid = data.get("pid")
    if type(pid) is not int or not 0 < pid <= _MAX_PID:
        return {}, f"it names no valid PID (pid: {str(pid)[:40]!r})"
    text = {k: str(data[k])[:200] for k in ("host", "started", "command") if isinstance(data.get(k), str)}
    return {"pid": pid, **text}, None


class OutputLock:
    """``with OutputLock(out):`` holds ``<out>.lock`` for the block (see the module docstring)."""

    def __init__(self, out: str | Path):
        self.out = Path(out)
        self.path = lock_path(out)
        self._fd: int | None = None

    def holder(self) -> dict:
        """What the lock file says about its holder (``{}`` when it does not hold a valid record)."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
        except OSError:
            return {}
        try:
            return _parse_holder(os.pread(fd, _MAX_RECORD, 0))[0]
        except OSError:
            return {}
        finally:
            os.close(fd)

    def _open(self) -> tuple[int, bool]:
        """``(descriptor of the lock file, whether this call created it)``."""
        not_a_file = OutputError(f"the lock file {self.path} is not a regular file; remove it (birdinfer keeps "
                                 "nothing there) or choose another --out")
        try:
            try:
                return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644), True
            except FileExistsError:
                fd = os.open(self.path, os.O_RDWR | os.O_NONBLOCK)
        except IsADirectoryError:
            raise not_a_file from None
        except OSError as e:
            raise OutputError(f"cannot create the lock file {self.path}: {e.strerror or e}; choose a writable --out") from e
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise not_a_file
        return fd, False

    def acquire(self) -> "OutputLock":
        if fcntl is None:  # pragma: no cover
            log.warning("no fcntl on this platform: %s is not protected against a second run", self.out)
            return self
        for _ in range(20):
            fd, created = self._open()
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
            if not created:
                self._log_takeover(fd)
            info = {"pid": os.getpid(), "host": socket.gethostname(),
                    "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": " ".join(sys.argv)[:500]}
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(info) + "\n").encode("utf-8"), 0)
            os.fsync(fd)
            self._fd = fd
            return self
        raise OutputError(f"could not take the lock {self.path} (it kept being replaced); try again")

    def _log_takeover(self, fd: int) -> None:
        """One log line about the lock file a finished or killed run left (which this run now holds)."""
        try:
            previous, why = _parse_holder(os.pread(fd, _MAX_RECORD, 0))
        except OSError as e:
            previous, why = {}, f"it cannot be read ({e.strerror or e})"
        if why is not None:
            log.warning("taking over the lock %s as stale: %s", self.path, why)
            return
        here = previous.get("host") == socket.gethostname()
        gone = "no longer running" if here and not _pid_alive(previous["pid"]) else "its lock was released"
        log.warning("taking over the lock %s left by PID %s on %s (%s)", self.path, previous["pid"],
                    previous.get("host", "?"), gone)

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
