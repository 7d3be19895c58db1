"""Odd inputs and operating-system faults (issue 19): every input the file system hands over is scored or
listed with a reason, never a hang; every operating-system fault ends with exit 2 and one sentence.

Real processes (``python -m birdinfer.cli``, each with a timeout: a hang fails the test instead of the
suite), real FIFOs, sockets, device links, symbolic link loops and dangling links, a real FLAC whose
STREAMINFO lies, a real file name that is not UTF-8, and a real small tmpfs for a full and a read-only
disk (mounted where this process may mount: root; skipped with the reason elsewhere).
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from birdinfer.cli import main as cli_main
from birdinfer.errors import AudioDecodeError

from conftest import LABELS, SR, cli_env, synth_signal, unprivileged_prefix, write_ogg

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
TIMEOUT = 300  # seconds for one run; a run that hangs fails the test here


# ============================================================================================ helpers
def _env() -> dict:
    return cli_env()


def _run(*args, prefix: tuple = (), umask: int | None = None) -> subprocess.CompletedProcess:
    """``birdinfer -q ARGS`` in a real process (stderr decoded with backslash escapes for non-UTF-8 names)."""
    preexec = None if umask is None else (lambda: os.umask(umask))
    return subprocess.run([*prefix, sys.executable, "-m", "birdinfer.cli", "-q", *map(str, args)], env=_env(),
                          capture_output=True, text=True, errors="backslashreplace", timeout=TIMEOUT,
                          preexec_fn=preexec)


def _one_sentence(run: subprocess.CompletedProcess, command: str) -> str:
    """Exit 2, no traceback, and the error as one line ``birdinfer COMMAND: error: ...``; returns that line."""
    assert run.returncode == 2, run.stderr[-3000:]
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    lines = [line for line in run.stderr.splitlines() if "error:" in line]
    assert len(lines) == 1 and lines[0].startswith(f"birdinfer {command}: error: "), run.stderr[-3000:]
    return lines[0]


def _errors_csv(path: Path) -> dict[bytes, str]:
    """``<out>.errors.csv`` as ``{file name as bytes: reason}`` (the names are written byte-exact)."""
    text = path.read_bytes().decode("utf-8", "surrogateescape")
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == ["file", "error"]
    return {os.fsencode(name): reason for name, reason in rows[1:]}


def write_lying_flac(path: Path, *, rate: int, frames: int, seed: int) -> Path:
    """A valid 1 s FLAC (libsndfile), then its STREAMINFO patched to claim ``rate`` Hz and ``frames`` frames.

    STREAMINFO is the first metadata block (``fLaC``, a 4-byte block header, then the block): min/max block
    size (2 + 2 bytes), min/max frame size (3 + 3), then 64 bits: sample rate (20), channels - 1 (3), bits
    per sample - 1 (5), total samples (36)."""
    sf.write(path, synth_signal(1.0, seed), SR, format="FLAC", subtype="PCM_16")
    data = bytearray(path.read_bytes())
    assert data[:4] == b"fLaC" and data[4] & 0x7F == 0, "the first metadata block must be STREAMINFO"
    at = 4 + 4 + 10
    packed = int.from_bytes(data[at : at + 8], "big")
    packed = (rate << 44) | (((packed >> 36) & 0xFF) << 36) | frames
    data[at : at + 8] = packed.to_bytes(8, "big")
    path.write_bytes(bytes(data))
    info = sf.info(str(path))
    assert (info.samplerate, info.frames) == (rate, frames)  # libsndfile believes the patched header
    return path



@contextlib.contextmanager
def small_disk(where: Path, size: str = "256k"):
    """A real tmpfs of ``size`` mounted at ``where`` for the block (skips the test where mounting is not
    allowed: a full or read-only disk cannot be had without one)."""
    where.mkdir()
    mount = shutil.which("mount")
    if not IS_ROOT or mount is None:
        pytest.skip("mounting a small tmpfs needs root and mount(8): the full / read-only disk cases need a real one")
    done = subprocess.run([mount, "-t", "tmpfs", "-o", f"size={size},mode=0777", "tmpfs", str(where)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()[-200:]}): the disk-fault cases need one")
    try:
        yield where
    finally:
        if subprocess.run(["umount", str(where)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], capture_output=True)


def _fill(disk: Path, leave_pages: int = 0) -> Path:
    """Fill ``disk`` up to ``leave_pages`` free blocks with one file (returned, to delete for space)."""
    filler = disk / "filler"
    stats = os.statvfs(disk)
    filler.write_bytes(b"\0" * max(0, (stats.f_bavail - leave_pages) * stats.f_frsize))
    assert os.statvfs(disk).f_bavail == leave_pages
    return filler


def _remount(disk: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(disk)], check=True, capture_output=True)


@pytest.fixture(scope="module")
def two_good(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("two_good")
    write_ogg(folder / "good_0.ogg", 10.0, seed=900)
    write_ogg(folder / "good_1.ogg", 5.0, seed=901)
    return folder


# ======================================================================================= lying headers
def test_header_lengths_are_bounded_before_use(tmp_path):
    from birdinfer.io.audio import audio_info, iter_audio_blocks

    slow = write_lying_flac(tmp_path / "one_hertz.flac", rate=1, frames=2**36 - 1, seed=1)
    long = write_lying_flac(tmp_path / "long.flac", rate=SR, frames=2**36 - 1, seed=2)
    for path, reason in ((slow, "sample rate of 1 Hz"), (long, f"declares {2**36 - 1} frames")):
        for read in (audio_info, lambda p: next(iter_audio_blocks(p))):
            with pytest.raises(AudioDecodeError, match=reason):
                read(path)
    honest = write_lying_flac(tmp_path / "honest.flac", rate=SR, frames=SR, seed=3)
    assert audio_info(honest).frames == SR  # the real header of the same file is accepted


def test_lying_flac_is_listed_and_submit_writes_the_others(small_model_folder, two_good, tmp_path):
    """The issue's FLAC (STREAMINFO: 1 Hz, 2^36 - 1 samples) crashed `submit` (libsoxr on a 32 000× resampling,
    or a 10 TiB allocation): now both commands finish; the file is listed with its reason and `submit` gives
    it 60 s of fallback rows (not 2^36 s worth)."""
    audio = tmp_path / "audio"
    shutil.copytree(two_good, audio)
    write_lying_flac(audio / "one_hertz.flac", rate=1, frames=2**36 - 1, seed=4)
    write_lying_flac(audio / "endless.flac", rate=SR, frames=2**36 - 1, seed=5)
    out, report = tmp_path / "submission.csv", tmp_path / "report.json"
    run = _run("submit", audio, "--models", small_model_folder, "--out", out, "--report", report, "--precision", "f32")
    assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr[-3000:]
    failed = {Path(f["file"]).name: f["error"] for f in json.loads(report.read_text())["failed"]}
    assert set(failed) == {"one_hertz.flac", "endless.flac"}
    assert "sample rate of 1 Hz" in failed["one_hertz.flac"] and "more than a file of" in failed["endless.flac"]
    stems = pd.read_csv(out).row_id.str.rsplit("_", n=1).str[0].value_counts().to_dict()
    assert stems == {"good_0": 2, "good_1": 1, "one_hertz": 12, "endless": 12}

    windows = tmp_path / "windows.csv"
    run = _run("predict", audio, "--models", small_model_folder, "--out", windows, "--precision", "f32")
    assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr[-3000:]
    assert pd.read_csv(windows).file.map(lambda f: Path(f).name).value_counts().to_dict() == {"good_0.ogg": 2, "good_1.ogg": 1}
    listed = {Path(os.fsdecode(k)).name: v for k, v in _errors_csv(tmp_path / "windows.csv.errors.csv").items()}
    assert set(listed) == {"one_hertz.flac", "endless.flac"}


# ====================================================================================== odd file names
def _non_utf8(folder: Path, name: bytes) -> Path:
    path = Path(os.fsdecode(os.path.join(os.fsencode(folder), name)))
    try:
        path.touch()
    except (OSError, UnicodeEncodeError) as e:  # a file system that refuses such names (macOS, some mounts)
        pytest.skip(f"this file system does not take the non-UTF-8 name {name!r}: {e}")
    return path


def test_non_utf8_names_are_read_and_kept_byte_exact(small_model_folder, two_good, tmp_path):
    audio = tmp_path / "audio"
    shutil.copytree(two_good, audio)
    cafe = _non_utf8(audio, b"caf\xe9.ogg")
    shutil.copyfile(two_good / "good_0.ogg", cafe)
    _non_utf8(audio, b"bad\xff.ogg").write_bytes(b"not audio at all" * 50)
    listing = tmp_path / "list.txt"  # a list naming the file by its bytes
    listing.write_bytes(os.fsencode(cafe) + b"\n")

    windows = tmp_path / "windows.csv"
    run = _run("predict", audio, "--models", small_model_folder, "--out", windows, "--precision", "f32")
    assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr[-3000:]
    table = windows.read_bytes()
    cafe_rows = [line for line in table.splitlines() if line.startswith(os.fsencode(cafe) + b",")]
    good_rows = [line for line in table.splitlines() if line.startswith(os.fsencode(audio / "good_0.ogg") + b",")]
    assert len(cafe_rows) == 2 and [r.split(b",", 1)[1] for r in cafe_rows] == [r.split(b",", 1)[1] for r in good_rows]
    errors = _errors_csv(tmp_path / "windows.csv.errors.csv")
    assert list(errors) == [os.path.join(os.fsencode(audio), b"bad\xff.ogg")]

    parquet = tmp_path / "windows.parquet"
    run = _run("predict", listing, "--models", small_model_folder, "--out", parquet, "--precision", "f32")
    assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr[-3000:]
    # parquet strings are UTF-8: the name's undecodable byte is written as a \xNN escape (the documented rule)
    assert set(pd.read_parquet(parquet).file) == {str(audio).replace(os.sep, "/") + "/caf\\xe9.ogg"}

    out, report = tmp_path / "submission.csv", tmp_path / "report.json"
    run = _run("submit", audio, "--models", small_model_folder, "--out", out, "--report", report, "--precision", "f32")
    assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr[-3000:]
    ids = [line.split(b",", 1)[0] for line in out.read_bytes().splitlines()[1:]]
    assert ids[:2] == [b"bad\xff_5", b"bad\xff_10"] and b"caf\xe9_5" in ids and b"caf\xe9_10" in ids
    failed = json.loads(report.read_text(encoding="ascii"))["failed"]
    assert [os.fsencode(f["file"]) for f in failed] == [os.path.join(os.fsencode(audio), b"bad\xff.ogg")]


# ============================================================================ FIFOs, sockets, devices, links
def _odd_entries(folder: Path, device: str = "/dev/zero") -> dict[str, str]:
    """Entries no run may open for reading, each named like audio: ``{name: the reason it must be listed with}``.
    ``device``: a character device that never ends (two folders of one run link different ones: links to
    one file are one input)."""
    folder.mkdir(parents=True, exist_ok=True)
    os.mkfifo(folder / "pipe.ogg")
    # bind with a relative name: AF_UNIX paths are limited to ~108 bytes and tmp_path can be longer
    subprocess.run([sys.executable, "-c", "import socket; socket.socket(socket.AF_UNIX).bind('socket.ogg')"],
                   cwd=folder, check=True, timeout=60)
    (folder / "zero.wav").symlink_to(device)
    (folder / "loop.ogg").symlink_to("loop.ogg")
    (folder / "ping.flac").symlink_to("pong.flac")
    (folder / "pong.flac").symlink_to("ping.flac")
    (folder / "dangling.mp3").symlink_to("nowhere.mp3")
    return {"pipe.ogg": "not a regular file: FIFO", "socket.ogg": "not a regular file: socket",
            "zero.wav": "not a regular file: character device", "loop.ogg": "symbolic link loop",
            "ping.flac": "symbolic link loop", "pong.flac": "symbolic link loop",
            "dangling.mp3": "dangling symbolic link: it points to nowhere.mp3"}


def test_list_audio_files_lists_what_it_cannot_read(tmp_path):
    from birdinfer.io.audio import list_audio_files

    expected = _odd_entries(tmp_path)
    write_ogg(tmp_path / "good.ogg", 1.0, seed=902)
    (tmp_path / "folder.ogg").mkdir()  # a folder is not a recording
    assert [p.name for p in list_audio_files(tmp_path)] == sorted([*expected, "good.ogg"])


def test_symlink_loop_given_directly_is_an_input_not_a_crash(tmp_path):
    from birdinfer.jobs.predict import collect_inputs

    (tmp_path / "loop.ogg").symlink_to("loop.ogg")
    (tmp_path / "list.txt").write_text("loop.ogg\n")
    assert [r.name for r in collect_inputs([tmp_path / "loop.ogg", tmp_path / "list.txt"])] == [(tmp_path / "loop.ogg").as_posix()]


def test_odd_entries_are_listed_with_a_reason_never_opened(small_model_folder, two_good, tmp_path):
    """In a folder, given directly and in a list: FIFOs (which used to hang the run), sockets, a device,
    link loops and a dangling link are each listed with what they are; the good files are scored."""
    audio = tmp_path / "audio"
    shutil.copytree(two_good, audio)
    expected = _odd_entries(audio)
    direct = tmp_path / "direct"
    direct_expected = _odd_entries(direct, "/dev/urandom")
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"direct/{name}\n" for name in direct_expected))

    windows = tmp_path / "windows.csv"
    run = _run("predict", audio, direct / "pipe.ogg", direct / "loop.ogg", "/dev/null", listing,
               "--models", small_model_folder, "--out", windows, "--precision", "f32")
    assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr[-3000:]
    errors = {os.fsdecode(k): v for k, v in _errors_csv(tmp_path / "windows.csv.errors.csv").items()}
    want = {**{(audio / n).as_posix(): r for n, r in expected.items()},
            **{(direct / n).as_posix(): r for n, r in direct_expected.items()},
            "/dev/null": "not a regular file: character device"}
    assert set(errors) == set(want)
    for name, reason in want.items():
        assert errors[name].startswith(reason), (name, errors[name])
    assert set(pd.read_csv(windows).file) == {(audio / "good_0.ogg").as_posix(), (audio / "good_1.ogg").as_posix()}

    out, report = tmp_path / "submission.csv", tmp_path / "report.json"
    run = _run("submit", audio, "--models", small_model_folder, "--out", out, "--report", report, "--precision", "f32")
    assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr[-3000:]
    failed = {Path(f["file"]).name: f["error"] for f in json.loads(report.read_text())["failed"]}
    assert set(failed) == set(expected) and all(failed[n].startswith(r) for n, r in expected.items()), failed
    stems = pd.read_csv(out).row_id.str.rsplit("_", n=1).str[0].value_counts().to_dict()
    assert stems == {"good_0": 2, "good_1": 1, **{Path(n).stem: 12 for n in expected}}

    run = _run("submit", direct / "pipe.ogg", "--models", small_model_folder, "--out", tmp_path / "one.csv")
    assert run.returncode == 0 and "not a regular file: FIFO" in run.stderr, run.stderr[-3000:]


def test_folders_that_cannot_be_listed_are_named(small_model_folder, two_good, tmp_path):
    """A sub-folder the walk cannot enter is listed with that reason (pathlib's walk skipped it silently); a
    folder argument that cannot be listed is one sentence, exit 2."""
    prefix = unprivileged_prefix()
    audio = tmp_path / "audio"
    shutil.copytree(two_good, audio)
    closed = audio / "closed"
    write_ogg(closed / "hidden_from_us.ogg", 5.0, seed=903)
    closed.chmod(0)
    try:
        windows = tmp_path / "windows.csv"
        run = _run("predict", audio, "--models", small_model_folder, "--out", windows, prefix=prefix)
        assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr[-3000:]
        errors = {os.fsdecode(k): v for k, v in _errors_csv(tmp_path / "windows.csv.errors.csv").items()}
        assert list(errors) == [closed.as_posix()] and "cannot be listed (permission denied)" in errors[closed.as_posix()]
        assert len(pd.read_csv(windows)) == 3
        for command in ("predict", "submit"):
            run = _run(command, closed, "--models", small_model_folder, "--out", tmp_path / f"{command}.csv", prefix=prefix)
            line = _one_sentence(run, command)
            assert f"cannot list the folder {closed}: Permission denied" in line, line
    finally:
        closed.chmod(0o755)


# ========================================================================================= full disk
def test_full_disk_is_one_sentence_and_loses_nothing(small_model_folder, two_good, tmp_path):
    """ENOSPC on a real full tmpfs: `submit` keeps the previous submission, `--report` leaves no cut report,
    `predict` stops with its finished parts kept and completes on the next run once there is space (the
    same bytes as a run that never hit the fault); exit 2 and one sentence each, no temporary file left."""
    from birdinfer.jobs.predict import predict

    reference = predict([two_good], small_model_folder, tmp_path / "reference.csv", precision="f32", progress=False)
    with small_disk(tmp_path / "disk") as disk:
        previous = disk / "submission.csv"
        previous.write_text("row_id,sp00\nold_5,0.5\n")
        old_report = disk / "report.json"
        old_report.write_text('{"old": true}\n')
        filler = _fill(disk, leave_pages=1)  # room for the lock file, not for the submission

        run = _run("submit", two_good, "--models", small_model_folder, "--out", previous, "--precision", "f32")
        line = _one_sentence(run, "submit")
        assert f"cannot write to {previous}" in line and "No space left on device" in line and "--out" in line
        assert previous.read_text() == "row_id,sp00\nold_5,0.5\n"

        filler.unlink()
        filler = _fill(disk, leave_pages=0)  # no room for a report either
        elsewhere = tmp_path / "submission.csv"
        run = _run("submit", two_good, "--models", small_model_folder, "--out", elsewhere, "--report", old_report,
                   "--precision", "f32")
        line = _one_sentence(run, "submit")
        assert f"cannot write to {old_report}" in line and "No space left on device" in line and "--report" in line
        assert old_report.read_text() == '{"old": true}\n'  # never a 0-byte or cut report

        filler.unlink()
        filler = _fill(disk, leave_pages=3)  # a part or two, not the whole run
        windows = disk / "windows.csv"
        run = _run("predict", two_good, "--models", small_model_folder, "--out", windows, "--precision", "f32")
        line = _one_sentence(run, "predict")
        assert str(disk) in line and "No space left on device" in line, line
        assert not windows.exists()
        assert not [p for p in disk.rglob("*") if p.name.endswith(".tmp")]

        filler.unlink()
        run = _run("predict", two_good, "--models", small_model_folder, "--out", windows, "--precision", "f32")
        assert run.returncode == 0, run.stderr[-3000:]
        assert windows.read_bytes() == reference.read_bytes()


# ============================================================================ read-only, folders, permissions
def test_read_only_disk_and_folders_in_the_way_name_the_path_and_the_option(small_model_folder, two_good, tmp_path):
    with small_disk(tmp_path / "disk") as disk:
        previous = disk / "submission.csv"
        previous.write_text("row_id,sp00\nold_5,0.5\n")
        _remount(disk, "ro")
        try:
            run = _run("submit", two_good, "--models", small_model_folder, "--out", previous)
            line = _one_sentence(run, "submit")
            assert f"cannot write to {previous}" in line and "Read-only file system" in line
            run = _run("submit", two_good, "--models", small_model_folder, "--out", tmp_path / "s.csv", "--report",
                       disk / "report.json")
            line = _one_sentence(run, "submit")
            assert f"{disk / 'report.json'}" in line and "Read-only file system" in line and "--report" in line
            assert "--out" not in line
            run = _run("predict", two_good, "--models", small_model_folder, "--out", disk / "windows.csv")
            assert "Read-only file system" in _one_sentence(run, "predict")
        finally:
            _remount(disk, "rw")
        assert previous.read_text() == "row_id,sp00\nold_5,0.5\n"

    folder = tmp_path / "reports"
    folder.mkdir()
    line = _one_sentence(_run("submit", two_good, "--models", small_model_folder, "--out", tmp_path / "s.csv",
                              "--report", folder), "submit")
    assert f"--report {folder} is a folder" in line and "report.json" in line.split("such as", 1)[1]


def test_folder_in_the_way_of_the_final_write(small_model_folder, two_good, tmp_path):
    """EISDIR at the last step (a Raven table's name taken by a folder): one sentence, not a traceback."""
    out = tmp_path / "tables"
    (out / "good_1.selections.txt").mkdir(parents=True)
    run = _run("predict", two_good, "--models", small_model_folder, "--out", out, "--format", "raven", "--precision", "f32")
    line = _one_sentence(run, "predict")
    assert f"cannot write to {out / 'good_1.selections.txt'}" in line and "Is a directory" in line


def test_parts_folder_without_write_permission(small_model_folder, two_good, tmp_path):
    prefix = unprivileged_prefix()
    out = tmp_path / "windows.csv"
    parts = tmp_path / "windows.csv.parts"
    parts.mkdir()
    parts.chmod(0o555)
    try:
        line = _one_sentence(_run("predict", two_good, "--models", small_model_folder, "--out", out, prefix=prefix),
                             "predict")
        assert str(parts) in line and "Permission denied" in line, line
    finally:
        parts.chmod(0o755)


def test_os_fault_without_a_file_name_is_one_sentence(monkeypatch, tmp_path, capsys):
    """An operating-system error no job turned into a sentence (a write(2) on a descriptor carries no file
    name) still ends with exit 2 and a sentence naming the output."""
    import birdinfer.jobs.submit as submit

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(submit, "make_submission", full)
    out = tmp_path / "submission.csv"
    assert cli_main(["submit", str(tmp_path), "--models", str(tmp_path), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"birdinfer submit: error: cannot write to {out} (or a file beside it): No space left on device")
    assert len(err.splitlines()) == 1


# ============================================================================================== minor
def test_outputs_follow_the_umask(small_model_folder, two_good, tmp_path):
    """Outputs get the mode ``open`` gives (0666 less the umask: 0664 under umask 002), not mkstemp's 0600."""
    out, report, windows = tmp_path / "submission.csv", tmp_path / "report.json", tmp_path / "windows.csv"
    run = _run("submit", two_good, "--models", small_model_folder, "--out", out, "--report", report, umask=0o002)
    assert run.returncode == 0, run.stderr[-3000:]
    run = _run("predict", two_good, "--models", small_model_folder, "--out", windows, umask=0o002)
    assert run.returncode == 0, run.stderr[-3000:]
    for path in (out, report, windows):
        assert path.stat().st_mode & 0o777 == 0o664, (path, oct(path.stat().st_mode))


def test_ray_no_input_message_names_the_paths(small_model_folder, tmp_path):
    pytest.importorskip("ray")
    pytest.importorskip("pyarrow")
    empty = tmp_path / "empty"
    empty.mkdir()
    line = _one_sentence(_run("predict", empty, "--engine", "ray", "--models", small_model_folder, "--out", tmp_path / "o"),
                         "predict")
    assert f"no audio files found in {empty} (" in line and "PosixPath" not in line
