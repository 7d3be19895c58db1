"""Resume state and locks under attack (issue 19, items 1, 2, 7, 8, 9): real ``birdinfer`` processes, real
SIGKILL and SIGTERM, real files.

* A killed run's parts tampered with (bytes garbled, two parts swapped, a journal entry's row count changed)
  or its inputs replaced (another length; the same size and time stamp with other content): every bad part
  is named in the log with its reason and computed again, and the output is byte-identical to an
  uninterrupted run.
* Temporary files of a run killed while writing its output (``.o.csv.*.tmp``, ``.submission.csv.*.tmp``) are
  swept by the next run on that output, and nothing else; a run stopped by SIGTERM while writing leaves none.
* A lock file holding anything but a lock record is a stale lock, taken over with a log line; a lock path or a
  parts folder that is not what it must be, or an unreadable ``run.json``, is a sentence or a logged reset.
* ``--engine ray`` takes the same output lock, and its ``_SUCCESS`` lists only shards that exist and verify.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf

from conftest import LABELS, SR, assert_same_rows, cli_env, stop_process, synth_signal, wait_for_lock, write_ogg


#: Runs ``birdinfer`` (argv[3:]) and sends itself the signal argv[2] when it is about to rename a finished
#: temporary file onto argv[1]: a run killed or stopped during its final write, at a point chosen exactly.
_SIGNAL_AT_RENAME = r"""
import os, signal, sys
target, sig = os.path.abspath(sys.argv[1]), getattr(signal, sys.argv[2])
real_replace = os.replace
def replace(src, dst, *args, **kwargs):
    if os.path.abspath(dst) == target:
        os.kill(os.getpid(), sig)
    return real_replace(src, dst, *args, **kwargs)
os.replace = replace
from birdinfer.cli import main
sys.exit(main(sys.argv[3:]))
"""


def _env() -> dict:
    return cli_env(RAY_ADDRESS="")


def _birdinfer(*args, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "birdinfer.cli", *map(str, args)], env=_env(), capture_output=True,
                          text=True, timeout=timeout)


def _signalled(target: Path, sig: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _SIGNAL_AT_RENAME, str(target), sig, *map(str, args)], env=_env(),
                          capture_output=True, text=True, timeout=600)


def _predict(inputs: Path, models: Path, out: Path, *extra) -> list:
    return ["predict", inputs, "--models", models, "--out", out, "--precision", "f32", *extra]


def _clean_exit(proc: subprocess.CompletedProcess, code: int = 0) -> None:
    assert proc.returncode == code, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]


def _write_wav(path: Path, seconds: float, seed: int) -> Path:
    sf.write(path, synth_signal(seconds, seed), SR, subtype="PCM_16")
    return path


def _make_audio(folder: Path) -> Path:
    """a, b: 5 s (parts of one shape); c: 10 s OGG; d: 7 s WAV."""
    write_ogg(folder / "a.ogg", 5.0, seed=901)
    write_ogg(folder / "b.ogg", 5.0, seed=902)
    write_ogg(folder / "c.ogg", 10.0, seed=903)
    _write_wav(folder / "d.wav", 7.0, seed=904)
    return folder


def _killed_at_the_final_write(audio: Path, models: Path, out: Path) -> Path:
    """A real run SIGKILLed when it renames its finished output into place: every part is done and journalled,
    the output's complete temporary file and the lock file are left behind. Returns the parts folder."""
    proc = _signalled(out, "SIGKILL", *_predict(audio, models, out))
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    parts = out.with_name(out.name + ".parts")
    assert len(list(parts.glob("*.npy"))) == 4 and not out.exists()
    return parts


def _part(audio: Path, out: Path, name: str) -> Path:
    """The part ``predict`` keeps for the recording ``audio/name`` (its key: the path as given, hashed)."""
    from birdinfer.jobs.predict import Recording

    return _parts(out) / f"{Recording(audio / name, (audio / name).as_posix(), name).key}.npy"


def _redone(stderr: str) -> dict[str, str]:
    """``{file name: reason}`` of the log's "redoing" lines."""
    lines = [line.split("redoing ", 1)[1] for line in stderr.splitlines() if "redoing " in line]
    return {Path(line.split(": ", 1)[0]).name: line.split(": ", 1)[1] for line in lines}


@pytest.fixture(scope="module")
def audio(tmp_path_factory) -> Path:
    return _make_audio(tmp_path_factory.mktemp("resume_audio"))


@pytest.fixture(scope="module")
def reference(audio, small_model_folder, tmp_path_factory) -> bytes:
    """The output of an uninterrupted run."""
    from birdinfer.jobs.predict import predict

    out = predict([audio], small_model_folder, tmp_path_factory.mktemp("resume_ref") / "ref.csv", precision="f32",
                  progress=False)
    return out.read_bytes()


@pytest.fixture(scope="module")
def killed(audio, small_model_folder, tmp_path_factory) -> Path:
    """Folder holding what a run on ``o.csv`` killed at its final write left: ``o.csv.parts/``, ``o.csv.lock``
    (naming the dead PID) and ``.o.csv.XXXXXXXX.tmp``."""
    folder = tmp_path_factory.mktemp("resume_killed")
    _killed_at_the_final_write(audio, small_model_folder, folder / "o.csv")
    assert (folder / "o.csv.lock").is_file() and len(list(folder.glob(".o.csv.*.tmp"))) == 1
    return folder


@pytest.fixture
def state(killed, tmp_path) -> Path:
    """A private copy of the killed run's state; returns its output path ``o.csv``."""
    for item in killed.iterdir():
        (shutil.copytree if item.is_dir() else shutil.copy2)(item, tmp_path / item.name)
    return tmp_path / "o.csv"


def _parts(out: Path) -> Path:
    return out.with_name(out.name + ".parts")


# ==================================================================================== tampered parts
def test_garbled_part_and_wrong_row_count_are_redone(state, audio, small_model_folder, reference):
    """One part's float bytes overwritten in place (same size: it still loads, as NaN), another's journal entry
    claiming 3 rows for its 2: both named in the log with their reason and computed again, the rest kept."""
    parts = _parts(state)
    garbled = _part(audio, state, "a.ogg")
    data = bytearray(garbled.read_bytes())
    data[-48:] = b"\xff" * 48  # the 12 float32 probabilities of its one row: all NaN now
    garbled.write_bytes(bytes(data))
    lines = (parts / "done.txt").read_text().splitlines()
    for i, line in enumerate(lines):
        entry = json.loads(line)
        if entry["file"].endswith("c.ogg"):
            lines[i] = json.dumps({**entry, "rows": 3, "shape": [3, len(LABELS)]})
    (parts / "done.txt").write_text("\n".join(lines) + "\n")

    proc = _birdinfer(*_predict(audio, small_model_folder, state))
    _clean_exit(proc)
    redone = _redone(proc.stderr)
    assert set(redone) == {"a.ogg", "c.ogg"}, proc.stderr[-3000:]
    assert "does not hold the bytes written for it" in redone["a.ogg"] and str(garbled) in redone["a.ogg"]
    assert "holds 2 rows × 12 labels, its entry says 3 × 12" in redone["c.ogg"]
    assert "resuming: 2 of 4 recordings" in proc.stderr
    assert state.read_bytes() == reference


def test_swapped_parts_are_redone(state, audio, small_model_folder, reference):
    """Two parts of the same shape swapped (each a valid result, of the other recording)."""
    a, b = _part(audio, state, "a.ogg"), _part(audio, state, "b.ogg")
    data_a, data_b = a.read_bytes(), b.read_bytes()
    assert len(data_a) == len(data_b) and data_a != data_b
    a.write_bytes(data_b)
    b.write_bytes(data_a)

    proc = _birdinfer(*_predict(audio, small_model_folder, state))
    _clean_exit(proc)
    redone = _redone(proc.stderr)
    assert set(redone) == {"a.ogg", "b.ogg"}, proc.stderr[-3000:]
    assert all("sha256" in why for why in redone.values())
    assert state.read_bytes() == reference


def test_replaced_inputs_are_redone(small_model_folder, tmp_path):
    """After a kill, one input is replaced by a shorter recording, another by one of the same size and time stamp
    but other samples (``cp -p`` of another take): only the content hash tells; both are computed again."""
    from birdinfer.jobs.predict import predict

    audio = _make_audio(tmp_path / "audio")
    out = tmp_path / "o.csv"
    _killed_at_the_final_write(audio, small_model_folder, out)
    write_ogg(audio / "c.ogg", 5.0, seed=913)
    before = os.stat(audio / "d.wav")
    _write_wav(audio / "d.wav", 7.0, seed=914)
    os.utime(audio / "d.wav", ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(audio / "d.wav")
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)

    proc = _birdinfer(*_predict(audio, small_model_folder, out))
    _clean_exit(proc)
    redone = _redone(proc.stderr)
    assert set(redone) == {"c.ogg", "d.wav"}, proc.stderr[-3000:]
    assert "size" in redone["c.ogg"] and "same size, other content" in redone["d.wav"]
    reference = predict([audio], small_model_folder, tmp_path / "ref.csv", precision="f32", progress=False)
    assert out.read_bytes() == reference.read_bytes()


# ================================================================================= temporary files
def test_temporaries_of_a_killed_write_are_swept_and_nothing_else(state, audio, small_model_folder, reference):
    """The complete ``.o.csv.XXXXXXXX.tmp`` and the lock file a SIGKILL at the final rename left, and a part's
    temporary file: removed (one log line), the lock taken over; files that only look alike are kept."""
    folder = state.parent
    left = list(folder.glob(".o.csv.*.tmp"))
    assert len(left) == 1 and left[0].stat().st_size > 0
    part_tmp = _parts(state) / f".{next(_parts(state).glob('*.npy')).name}.k3x_9q0z.tmp"
    part_tmp.write_bytes(b"\x93NUMPY half")
    decoys = [folder / ".o.csv.tmp", folder / ".o.csv.abcdefghi.tmp", folder / ".other.csv.abcdefgh.tmp",
              folder / "o.csv.abcdefgh.tmp", folder / ".o.csv.ABCDEFGH.tmp"]
    for decoy in decoys:
        decoy.write_text("not birdinfer's")

    proc = _birdinfer(*_predict(audio, small_model_folder, state))
    _clean_exit(proc)
    assert not left[0].exists() and not part_tmp.exists()
    assert all(d.read_text() == "not birdinfer's" for d in decoys)
    assert "removed 1 temporary file left by an interrupted run" in proc.stderr and str(left[0]) in proc.stderr
    assert f"taking over the lock {state}.lock left by PID" in proc.stderr and "no longer running" in proc.stderr
    assert state.read_bytes() == reference and not Path(f"{state}.lock").exists()


def test_sigterm_during_the_final_write_leaves_no_temporary_file(state, audio, small_model_folder):
    """SIGTERM arriving as the finished output is renamed into place: the run ends through its cleanup (exit
    143, a sentence), its temporary file and lock are gone, its parts are kept for the next run."""
    before = set(state.parent.glob(".o.csv.*.tmp"))
    proc = _signalled(state, "SIGTERM", *_predict(audio, small_model_folder, state))
    _clean_exit(proc, 128 + signal.SIGTERM)
    assert "stopped by SIGTERM" in proc.stderr
    assert set(state.parent.glob(".o.csv.*.tmp")) == set()  # the killed run's is swept, its own removed
    assert before and not state.exists() and not Path(f"{state}.lock").exists()
    assert len(list(_parts(state).glob("*.npy"))) == 4


def test_submit_sweeps_the_temporary_file_of_a_killed_write(small_model_folder, tmp_path):
    audio = tmp_path / "audio"
    write_ogg(audio / "soundscape_1.ogg", 5.0, seed=920)
    out = tmp_path / "submission.csv"
    args = ["submit", audio, "--models", small_model_folder, "--out", out, "--precision", "f32"]
    first = _signalled(out, "SIGKILL", *args)
    assert first.returncode == -signal.SIGKILL, first.stderr[-3000:]
    left = list(tmp_path.glob(".submission.csv.*.tmp"))
    assert len(left) == 1 and not out.exists()

    again = _birdinfer(*args)
    _clean_exit(again)
    assert not left[0].exists() and list(tmp_path.glob(".submission.csv.*.tmp")) == []
    assert "removed 1 temporary file" in again.stderr and str(left[0]) in again.stderr
    assert out.read_text().startswith("row_id,")


# ============================================================================================== locks
@pytest.mark.parametrize("content, why", [
    (b'{"pid": "abc", "host": "HOST"}', "names no valid PID"),
    (b'{"pid": 99999999999999999999999999, "host": "HOST"}', "names no valid PID"),
    (b'{"pid": 4294967297, "host": "HOST"}', "names no valid PID"),
    (b"[1234, 5678]", "holds a JSON list"),
    (b"", "it is empty"),
    (b"\xff\xfe{\x00p\x00i\x00d\x00", "it is not JSON text"),
], ids=["pid-text", "pid-huge", "pid-over-32-bits", "list", "empty", "not-utf8"])
def test_a_malformed_lock_is_a_stale_lock_taken_over(state, audio, small_model_folder, reference, content, why):
    """A lock file written by someone else (``HOST``: this machine, so its PID is looked up)."""
    lock = Path(f"{state}.lock")
    lock.write_bytes(content.replace(b"HOST", socket.gethostname().encode()))
    proc = _birdinfer(*_predict(audio, small_model_folder, state))
    _clean_exit(proc)
    assert f"taking over the lock {lock} as stale: " in proc.stderr and why in proc.stderr, proc.stderr[-3000:]
    assert state.read_bytes() == reference and not lock.exists()


def test_a_lock_path_that_is_a_folder_is_a_sentence(state, audio, small_model_folder):
    lock = Path(f"{state}.lock")
    lock.unlink()
    lock.mkdir()
    proc = _birdinfer(*_predict(audio, small_model_folder, state))
    _clean_exit(proc, 2)
    assert f"the lock file {lock} is not a regular file" in proc.stderr and "choose another --out" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert lock.is_dir() and not state.exists()


# ======================================================================================= run folder
def test_parts_path_that_is_a_file_is_a_sentence(audio, small_model_folder, tmp_path):
    out = tmp_path / "o.csv"
    _parts(out).write_text("someone's notes\n")
    proc = _birdinfer(*_predict(audio, small_model_folder, out))
    _clean_exit(proc, 2)
    line = proc.stderr.strip().splitlines()
    assert len(line) == 1 and str(_parts(out)) in line[0] and "move it away or choose another --out" in line[0], proc.stderr
    assert _parts(out).read_text() == "someone's notes\n" and not out.exists()


def test_done_list_that_is_a_folder_is_a_sentence(state, audio, small_model_folder):
    done = _parts(state) / "done.txt"
    done.unlink()
    (done / "notes").mkdir(parents=True)
    proc = _birdinfer(*_predict(audio, small_model_folder, state))
    _clean_exit(proc, 2)
    assert f"{done} is in the way" in proc.stderr and "move it away or choose another --out" in proc.stderr, proc.stderr
    assert (done / "notes").is_dir() and not state.exists() and not Path(f"{state}.lock").exists()


def test_unreadable_run_file_resets_the_parts_with_a_log_line(state, audio, small_model_folder, reference):
    """``run.json`` not UTF-8: the parts' settings are unknown, so they are discarded (one log line) and the
    recordings computed again; the output is the uninterrupted run's."""
    run = _parts(state) / "run.json"
    run.write_bytes(b"\xff\xfe\x00garbled" + run.read_bytes()[:20])
    proc = _birdinfer(*_predict(audio, small_model_folder, state))
    _clean_exit(proc)
    assert f"discarding 4 finished recordings in {_parts(state)}: {run} cannot be read" in proc.stderr, proc.stderr[-3000:]
    assert "resuming" not in proc.stderr
    assert state.read_bytes() == reference


# ============================================================================================== Ray
def _ray_available() -> bool:
    try:
        import pyarrow  # noqa: F401
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


needs_ray = pytest.mark.skipif(not _ray_available(), reason="ray and pyarrow are not installed: pip install 'birdinfer[ray]'")


def _listed_shards_verify(out: Path) -> list[dict]:
    index = json.loads((out / "_SUCCESS").read_text())
    for entry in index["files"]:
        assert hashlib.sha256((out / entry["shard"]).read_bytes()).hexdigest() == entry["sha256"], entry
    return index["files"]


@pytest.mark.ray
@needs_ray
def test_ray_takes_the_output_lock_and_resume_verifies_its_shards(audio, small_model_folder, tmp_path):
    """A second ``--engine ray`` run on a folder a first one is writing stops at once (exit 2, a sentence naming
    the first's PID); the first finishes. Then one shard garbled and one deleted: the re-run names both, computes
    them again, and ``_SUCCESS`` lists the four shards, each as it is on disk; the table is ``predict``'s."""
    import pyarrow.parquet as pq

    from birdinfer.jobs.distributed import read_output
    from birdinfer.jobs.predict import predict

    out = tmp_path / "ray_out"
    lock = Path(f"{out}.lock")
    args = _predict(audio, small_model_folder, out, "--engine", "ray")
    first = subprocess.Popen([sys.executable, "-m", "birdinfer.cli", *map(str, args)], env=_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_lock(lock, first)
        second = _birdinfer(*args, timeout=300)
        assert first.poll() is None, "the first run must still be running while the second is refused"
        _clean_exit(second, 2)
        assert f"PID {first.pid}" in second.stderr and str(out) in second.stderr, second.stderr[-3000:]
        assert first.wait(timeout=900) == 0, first.stderr.read()[-3000:]
    finally:
        stop_process(first)
    assert len(_listed_shards_verify(out)) == 4 and not lock.exists()

    reference = pq.read_table(predict([audio], small_model_folder, tmp_path / "ref.parquet", precision="f32",
                                      progress=False))
    assert_same_rows(read_output(out), reference)
    entries = {Path(e["file"]).name: e for e in map(json.loads, (out / "_done.jsonl").read_text().splitlines())}
    garbled, lost = out / entries["b.ogg"]["part"], out / entries["d.wav"]["part"]
    data = bytearray(garbled.read_bytes())
    data[len(data) // 2] ^= 0xFF
    garbled.write_bytes(bytes(data))
    lost.unlink()
    (out / "_SUCCESS").unlink()  # as if killed before the end

    again = _birdinfer(*args)
    _clean_exit(again)
    redone = _redone(again.stderr)
    assert set(redone) == {"b.ogg", "d.wav"}, again.stderr[-3000:]
    assert "sha256" in redone["b.ogg"] and "missing" in redone["d.wav"]
    assert len(_listed_shards_verify(out)) == 4
    assert_same_rows(read_output(out), reference)
