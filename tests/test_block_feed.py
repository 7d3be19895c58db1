"""The two ways blocks reach the models (birdinfer/runtime/block_feed.py): inline and in a background thread give
the same blocks and the same rows; inline asks the time budget before a file is decoded; a bad file costs only
itself; the thread stops when the caller stops early."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from birdinfer.errors import AudioDecodeError
from birdinfer.runtime.block_feed import SKIPPED, ThreadFeed, feed_blocks
from birdinfer.runtime.cpu import spare_siblings
from birdinfer.runtime.pipeline import Predictor

from conftest import write_ogg


def fake_blocks(decoded: list):
    """``path → blocks``: a path named ``<n>.blk`` gives n blocks of 2 rows (features: the path and the block
    index); ``bad.blk`` fails to decode after one block; ``empty.blk`` has no samples."""

    def file_blocks(path: Path):
        decoded.append(path.name)
        if path.stem == "bad":
            yield 2, lambda: {"x": (path.name, 0)}
            raise AudioDecodeError(path, "truncated")
        if path.stem == "empty":
            return
        for b in range(int(path.stem)):
            yield 2, (lambda b=b: {"x": (path.name, b)})

    return file_blocks


def summary(items) -> list[tuple]:
    return [(i.file_index, i.features and i.features["x"], i.n_windows, i.last, i.error) for i in items]


PATHS = [Path(n) for n in ("2.blk", "bad.blk", "1.blk", "empty.blk", "3.blk")]


def test_inline_and_thread_feed_the_same_blocks():
    inline = summary(feed_blocks(PATHS, fake_blocks([])))
    feed = ThreadFeed(PATHS, fake_blocks([]), prefetch=1)
    try:
        threaded = summary(feed)
    finally:
        feed.close()
    assert inline == threaded
    assert inline[:2] == [(0, ("2.blk", 0), 2, False, None), (0, ("2.blk", 1), 2, True, None)]
    assert inline[2] == (1, None, 0, True, "truncated")  # its decoded block is not given: the file failed
    assert inline[4][4] == "no samples"
    assert [i[0] for i in inline if i[3]] == [0, 1, 2, 3, 4]  # one last block per file, in order


def test_inline_asks_before_decoding_and_decodes_nothing_it_skips():
    decoded, asked = [], []

    def before(index: int) -> bool:
        asked.append((index, list(decoded)))
        return index < 2

    items = summary(feed_blocks(PATHS, fake_blocks(decoded), before))
    assert decoded == ["2.blk", "bad.blk"]
    assert asked[1] == (1, ["2.blk"])  # asked for file 1 after file 0 was decoded, before file 1 was
    assert [i for i in items if i[4] == SKIPPED] == [(k, None, 0, True, SKIPPED) for k in (2, 3, 4)]


def test_thread_feed_stops_when_closed_early():
    feed = ThreadFeed([Path(f"{5}.blk")] * 50, fake_blocks([]), prefetch=1)
    first = next(iter(feed))
    assert first.file_index == 0
    feed.close()
    assert not any(t.name == "birdinfer-decode" and t.is_alive() for t in threading.enumerate())


def test_predictor_rows_are_the_same_inline_and_threaded(small_model_folder, tmp_path):
    paths = [write_ogg(tmp_path / f"s{k}.ogg", seconds, seed=k) for k, seconds in enumerate((12.0, 3.0, 65.0))]
    (tmp_path / "broken.ogg").write_bytes(b"OggS not really")
    paths.insert(1, tmp_path / "broken.ogg")
    results = {}
    for thread in (False, True):
        predictor = Predictor(small_model_folder, precision="f32", frontend_thread=thread)
        try:
            assert predictor.frontend_thread is thread
            results[thread] = list(predictor.iter_files(paths))
        finally:
            predictor.close()
    for a, b in zip(results[False], results[True], strict=True):
        assert a.path == b.path and a.ok == b.ok
        if a.ok:
            np.testing.assert_array_equal(a.probs, b.probs)
    assert [r.ok for r in results[False]] == [True, False, True, True]
    assert [len(r.probs) for r in results[False] if r.ok] == [2, 1, 13]


def test_default_schedule_is_the_background_thread_on_its_spare_cpus(small_model_folder):
    predictor = Predictor(small_model_folder, precision="f32")
    try:
        assert predictor.frontend_thread is True and predictor.frontend_threads == 1
        assert predictor.decode_cpus == spare_siblings()
    finally:
        predictor.close()


def test_inline_budget_skips_files_without_decoding_them(small_model_folder, tmp_path, monkeypatch):
    paths = [write_ogg(tmp_path / f"s{k}.ogg", 6.0, seed=k) for k in range(4)]
    predictor = Predictor(small_model_folder, precision="f32", frontend_thread=False)
    decoded = []
    real = predictor._file_blocks
    monkeypatch.setattr(predictor, "_file_blocks", lambda path: (decoded.append(Path(path).name), real(path))[1])
    try:
        results = list(predictor.iter_files(paths, on_file_start=lambda index: index < 2))
    finally:
        predictor.close()
    assert [r.error for r in results] == [None, None, SKIPPED, SKIPPED]
    assert decoded == ["s0.ogg", "s1.ogg"]


@pytest.mark.parametrize("thread", [False, True])
def test_skipped_files_keep_their_place(small_model_folder, tmp_path, thread):
    paths = [write_ogg(tmp_path / f"s{k}.ogg", 6.0, seed=k) for k in range(3)]
    predictor = Predictor(small_model_folder, precision="f32", frontend_thread=thread)
    try:
        results = list(predictor.iter_files(paths, on_file_start=lambda index: index != 1))
    finally:
        predictor.close()
    assert [r.path.name for r in results] == ["s0.ogg", "s1.ogg", "s2.ogg"]
    assert [r.error for r in results] == [None, SKIPPED, None]
