"""The inference threads yield to the front-end thread (birdinfer.runtime.threads): the threads started after
the snapshot run at nice +5, once, except the ones kept; a Predictor lowers the threads its models started, never the
feeding thread nor the caller's, and nothing with ``frontend_priority=False``; numpy's BLAS runs on one thread while
a Predictor runs, restored after."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from birdinfer.runtime.threads import INFERENCE_NICE, InferencePriority, process_threads

from conftest import cli_env, write_ogg

pytestmark = pytest.mark.skipif(not process_threads() or not hasattr(os, "setpriority"),
                                reason="per-thread priorities need Linux")


def nice(tid: int) -> int:
    return os.getpriority(os.PRIO_PROCESS, tid)


def test_new_threads_are_lowered_once_and_the_kept_ones_are_not():
    before = process_threads()
    stop, ids = threading.Event(), []

    def park():
        ids.append(threading.get_native_id())
        stop.wait(30)

    workers = [threading.Thread(target=park) for _ in range(3)]
    for w in workers:
        w.start()
    while len(ids) < 3:
        threading.Event().wait(0.01)
    me = threading.get_native_id()
    base = nice(me)
    try:
        priority = InferencePriority(before)
        assert priority.lower(keep=(me, ids[1])) == 2
        assert [nice(t) for t in ids] == [min(19, base + INFERENCE_NICE), base, min(19, base + INFERENCE_NICE)]
        assert nice(me) == base
        assert priority.lower(keep=(me,)) == 1  # ids[1], no longer kept; the others are not lowered twice
        assert [nice(t) for t in ids] == [min(19, base + INFERENCE_NICE)] * 3
        assert InferencePriority(set()).lower(keep=()) == 0  # no snapshot: nothing is known to be new
    finally:
        stop.set()
        for w in workers:
            w.join()


CHILD = r"""
import json, os, sys, threading
from birdinfer.runtime.threads import process_threads
from birdinfer.runtime.pipeline import Predictor

folder, flag, paths = sys.argv[1], sys.argv[2] == "1", sys.argv[3:]
nice = lambda tid: os.getpriority(os.PRIO_PROCESS, tid)
me = threading.get_native_id()
base, before = nice(me), process_threads()
predictor = Predictor(folder, frontend_priority=flag)
feeding = []
blocks = predictor._file_blocks

def file_blocks(path):  # runs in the feeding thread
    feeding.append((threading.get_native_id(), nice(threading.get_native_id())))
    yield from blocks(path)

predictor._file_blocks = file_blocks
ok = [r.ok for r in predictor.iter_files(paths)]
new = {t: nice(t) for t in process_threads() - before - {me}}
print(json.dumps({"base": base, "me": nice(me), "feeding": feeding, "new": new, "ok": ok}))
"""


@pytest.mark.parametrize("flag", [True, False])
def test_a_predictor_lowers_its_inference_threads_not_the_front_end(small_model_folder, tmp_path: Path, flag: bool):
    paths = [str(write_ogg(tmp_path / f"a{i}.ogg", 4.0, seed=i)) for i in range(6)]  # the feeder waits 2 files ahead
    out = subprocess.run([sys.executable, "-c", CHILD, str(small_model_folder), "1" if flag else "0", *paths],
                         capture_output=True, text=True, env=cli_env(), timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    base = got["base"]
    assert got["ok"] == [True] * 6 and got["me"] == base
    assert len(got["feeding"]) == 6 and all(n == base for _, n in got["feeding"])  # files 4-6 start after the lowering
    feeder = {t for t, _ in got["feeding"]}
    inference = {int(t): n for t, n in got["new"].items() if int(t) not in feeder}
    assert inference  # OpenVINO's threads, started by the Predictor
    assert set(inference.values()) == {min(19, base + INFERENCE_NICE) if flag else base}


def test_blas_runs_on_one_thread_while_a_predictor_runs_and_is_restored(small_model_folder, tmp_path: Path):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from birdinfer.runtime.pipeline import Predictor

    def blas_threads() -> list[int]:
        return [lib["num_threads"] for lib in threadpoolctl.threadpool_info() if lib["user_api"] == "blas"]

    paths = [write_ogg(tmp_path / f"b{i}.ogg", 4.0, seed=i) for i in range(2)]
    predictor = Predictor(small_model_folder, frontend_priority=False)
    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):
        assert blas_threads() and set(blas_threads()) == {2}
        during = []
        results = list(predictor.iter_files(paths, on_file_start=lambda i: during.append(blas_threads()) or True))
        assert [r.ok for r in results] == [True, True] and during and all(set(d) == {1} for d in during)
        assert set(blas_threads()) == {2}  # restored when the iteration ends
        probs = predictor.predict_file(paths[0])
        np.testing.assert_array_equal(probs, results[0].probs)
        assert set(blas_threads()) == {2}
