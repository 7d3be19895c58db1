"""Input paths: which entries of the file system are read as recordings, and the reason for the others.

Every input the file system can hand over is either read or refused with a sentence, never opened blindly:

* only regular files are opened (following symbolic links). A FIFO, socket or device named ``x.ogg`` is
  refused with its kind ("not a regular file: FIFO (named pipe)") before anything opens it: opening a
  FIFO blocks until a writer appears, which would hang the run;
* a symbolic link loop, a dangling link, a missing file, a folder that cannot be searched: refused with
  what it is;
* a folder lists every entry whose name has an audio suffix and that is not a folder, and the sub-folders
  it cannot enter, so the refused ones are reported by the run (``predict``'s errors list, ``submit``'s
  report) instead of vanishing;
* a name that is not valid in the file system encoding (``caf\\xe9.ogg`` on a UTF-8 Linux system) is kept
  as Python keeps it (the byte as a surrogate, ``'caf\\udce9.ogg'``; ``os.fsencode`` gives the bytes back)
  and handed to libsndfile as bytes (:func:`native_name`).
"""

from __future__ import annotations

import errno
import os
import stat
import sys
from pathlib import Path

from ..errors import AudioDecodeError, ParameterError

__all__ = ["AUDIO_EXTENSIONS", "checked_file", "list_audio_files", "native_name"]

#: File name suffixes treated as audio when listing a folder (lower case; matching ignores case).
AUDIO_EXTENSIONS = (".ogg", ".oga", ".opus", ".wav", ".flac", ".mp3", ".aif", ".aiff", ".au", ".w64", ".caf")


def checked_file(path) -> Path:
    """``path`` as a :class:`Path` once it is known to be a regular file (links followed); nothing is opened.
    Raises :class:`AudioDecodeError` saying what it is otherwise."""
    try:
        p = Path(os.fspath(path))
    except TypeError as e:
        raise ParameterError(f"path must be a file path (str or os.PathLike), got {path!r}") from e
    try:
        mode = os.stat(p).st_mode
    except OSError as e:
        raise AudioDecodeError(p, _stat_problem(p, e)) from e
    if stat.S_ISDIR(mode):
        if not os.access(p, os.R_OK | os.X_OK):  # listed by a folder walk that could not enter it
            raise AudioDecodeError(p, "a folder that cannot be listed (permission denied): the recordings in it "
                                      "are not read; change its permissions")
        raise AudioDecodeError(p, "is a folder, not an audio file")
    if not stat.S_ISREG(mode):
        raise AudioDecodeError(p, f"not a regular file: {_file_kind(mode)}; only regular files are read, so it is skipped")
    return p


def _file_kind(mode: int) -> str:
    for test, kind in ((stat.S_ISFIFO, "FIFO (named pipe)"), (stat.S_ISSOCK, "socket"),
                       (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device")):
        if test(mode):
            return kind
    return "special file"


def _stat_problem(p: Path, error: OSError) -> str:
    """Why ``os.stat(p)`` failed, in words: a loop, a dangling link, a missing file, a closed folder."""
    if error.errno == errno.ELOOP:
        return "symbolic link loop (the link leads back to itself); fix or remove the link"
    if error.errno == errno.ENOENT and os.path.islink(p):
        try:
            target = os.readlink(p)
        except OSError:
            target = "?"
        return f"dangling symbolic link: it points to {target}, which does not exist; fix or remove the link"
    if error.errno == errno.ENOENT:
        return "file not found; check the path"
    if error.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied ({error.strerror}): a folder on its path cannot be searched"
    if error.errno == errno.ENOTDIR:
        return "a part of its path is a file, not a folder; check the path"
    return f"cannot be read: {error.strerror or error}"


def native_name(path: Path) -> str | bytes:
    """The path as libsndfile takes it: text, or its bytes when the name is not valid in the file system
    encoding (Python holds such bytes as surrogates, which the C library cannot be given as text)."""
    name = str(path)
    try:
        name.encode(sys.getfilesystemencoding())
    except UnicodeEncodeError:
        return os.fsencode(path)
    return name


def list_audio_files(folder, *, recursive: bool = False) -> list[Path]:
    """Entries of ``folder`` whose name has an audio suffix (:data:`AUDIO_EXTENSIONS`, any case) and that are
    not folders, sorted by name.

    FIFOs, sockets, devices, symbolic link loops and dangling links are listed too, so that the run reports
    them (reading refuses them with a reason: :func:`checked_file`) instead of skipping them silently.
    With ``recursive=True`` sub-folders are walked too (links to folders are not followed), a sub-folder
    that cannot be listed is listed itself (reading it says so), and the list is sorted by path relative to
    ``folder``. Hidden entries (name starting with ".") are skipped. Raises :class:`ParameterError` when
    ``folder`` is not an existing folder or cannot be listed.
    """
    root = Path(folder)
    if not root.is_dir():
        raise ParameterError(f"{root} is not a folder; pass the folder that holds the audio files")
    closed: list[Path] = []  # sub-folders the walk cannot enter

    def refuse(error: OSError) -> None:
        if error.filename is None or Path(error.filename) == root:
            raise _unlistable(root, error) from error
        closed.append(Path(error.filename))

    if recursive:
        entries = [Path(base) / name for base, _, files in os.walk(root, onerror=refuse) for name in files]
    else:
        try:
            entries = [q for q in root.iterdir() if not q.is_dir()]
        except OSError as e:
            raise _unlistable(root, e) from e
    found = [q for q in entries if q.suffix.lower() in AUDIO_EXTENSIONS] + closed
    found = [q for q in found if not q.name.startswith(".")]
    return sorted(found, key=lambda q: (q.relative_to(root).as_posix() if recursive else q.name))


def _unlistable(root: Path, error: OSError) -> ParameterError:
    return ParameterError(f"cannot list the folder {root}: {error.strerror or error}; check its permissions")
