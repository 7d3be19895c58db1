"""``birdinfer submit`` / :func:`make_submission`: a folder of soundscapes → ``submission.csv``.

Runs a :class:`birdinfer.runtime.pipeline.Predictor` over the files in name order, keeps the run inside an optional
:class:`birdinfer.runtime.budget.TimeBudget`, fills the rows of files that cannot be decoded (or that the budget
skipped) and writes the CSV atomically, under an exclusive lock on the output (:mod:`birdinfer.io.lock`).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .._console import progress_bar, say
from ..io.audio import AUDIO_EXTENSIONS, audio_info, list_audio_files
from ..runtime.budget import TimeBudget
from ..errors import BirdinferError, ParameterError
from ..io.lock import OutputLock
from ..spec.manifest import Manifest
from ..runtime.models import plan_variants
from ..io.output import (atomic_write, check_writable, plan_columns, row_ids, submission_frame, sweep_temporaries,
                         temporaries_of, write_csv_atomic)
from ..runtime.pipeline import FileResult, Predictor
from .members import check_file_names, notes_of, plan_report, prepare_member_dir, write_member_rows

__all__ = ["FALLBACK_SECONDS", "make_submission", "resolve_inputs"]

log = logging.getLogger(__name__)

#: Rows assumed for a file that cannot be decoded and whose header gives no duration, or one refused as
#: corrupt (a rate under 1 kHz, more frames than its size can hold: birdinfer.io.audio): a Kaggle soundscape.
FALLBACK_SECONDS = 60.0


def resolve_inputs(audio: str | Path | Sequence[str | Path]) -> list[Path]:
    """A folder (its audio files, sorted by name, not recursive), one file or an explicit list of files. Entries
    that are not regular files (FIFOs, link loops, ...) are kept: decoding refuses them with a reason and they
    get fallback rows like any bad file."""
    if isinstance(audio, (str, Path)):
        folder = Path(audio)
        if not folder.exists():  # a dangling link or a link loop here too: most likely a broken folder link
            raise ParameterError(f"audio folder {folder} does not exist")
        if not folder.is_dir():
            return [folder]
        return list_audio_files(folder)
    return [Path(p) for p in audio]


def _fallback_windows(path: Path, window_seconds: float) -> int:
    try:
        seconds = audio_info(path).duration_s
    except BirdinferError:
        seconds = FALLBACK_SECONDS
    if not seconds or not np.isfinite(seconds) or seconds <= 0:
        seconds = FALLBACK_SECONDS
    return max(1, int(seconds // window_seconds))


def make_submission(
    audio_dir: str | Path | Sequence[str | Path],
    models: str | Path | Manifest,
    out: str | Path | None = "submission.csv",
    *,
    sample_submission: str | Path | None = None,
    precision: str = "auto",
    backend: str = "auto",
    time_budget_s: float | None = None,
    limit: int | None = None,
    cache_dir: str | Path | None = None,
    report: str | Path | None = None,
    progress: bool = True,
    clock: Callable[[], float] = time.perf_counter,
    member_rows: str | Path | None = None,
):
    """Score every soundscape of ``audio_dir`` with the model folder ``models`` and write ``out``.

    Parameters
    ----------
    audio_dir : folder of recordings (sorted by name) or a list of files.
    models : model folder written by ``birdinfer export`` (or a loaded :class:`Manifest`).
    out : CSV to write atomically (``None``: do not write). Checked for writability before any work.
    sample_submission : its columns give the output order; missing species get 0.0, extra model classes
        are dropped (both with a warning). Default: the manifest's label order.
    precision : ``auto`` | ``f32`` | ``bf16`` | ``int8`` | ``fast`` (see :mod:`birdinfer.runtime.models`).
    time_budget_s : finish within this many seconds (from the call): see :class:`TimeBudget`.
    limit : only the first ``limit`` files.
    report : write a JSON run report here (timings, precision, failed files, dropped models).
    clock : time source for the budget (tests pass a fake clock).
    member_rows : folder for every member's rows before fusion, one CSV per model / group (:mod:`birdinfer.jobs.members`).

    Returns
    -------
    pandas.DataFrame : ``row_id`` + one column per species, probabilities; ``.attrs["birdinfer"]`` holds
    the run report. A file that cannot be decoded gets its rows (from its header's duration, else 60 s: a
    header refused as corrupt by :mod:`birdinfer.io.audio` counts as none)
    filled with the mean probabilities of the files that succeeded (0.0 if none), and a warning; so do
    files skipped because the time budget ran out.
    """
    start = clock()
    wall_start = time.perf_counter()
    _check_outputs(out, report)
    member_dir = prepare_member_dir(member_rows) if member_rows is not None else None
    manifest = models if isinstance(models, Manifest) else Manifest.load(models)
    plan_variants(manifest, precision=precision, backend=backend)  # e.g. no ONNX files for onnxruntime: fail now
    lock = OutputLock(out).acquire() if out is not None else None  # a second run on `out` fails here
    try:
        if out is not None:
            sweep_temporaries(temporaries_of(out), out)  # left by a run killed while writing `out`
        columns = plan_columns(manifest.labels, sample_submission)
        paths = resolve_inputs(audio_dir)
        if limit is not None:
            paths = paths[: max(0, int(limit))]
        info: dict = {"files": len(paths), "precision_requested": precision, "backend": backend}
        if not paths:
            return _empty_submission(audio_dir, manifest, columns, out, report, info, wall_start)

        predictor = Predictor(manifest, precision=precision, backend=backend, cache_dir=cache_dir)
        say(progress, f"birdinfer: {len(predictor.models)} models loaded in {predictor.load_seconds:.1f} s; "
                       f"{predictor.ran_backends} precision: {predictor.precision}\nbirdinfer: {predictor.plan_summary}")
        info.update(cpu_class=predictor.isa.to_dict(), precision_plan=predictor.plan_summary, backend_ran=predictor.ran_backends,
                    **_before_audio(predictor.manifest, paths))
        budget = _make_budget(time_budget_s)
        results: list[FileResult] = []
        stats: dict = {}
        gate = _budget_gate(budget, predictor, clock, start, results, len(paths))
        _score_files(predictor, paths, gate, results, stats, info, clock=clock, progress=progress,
                     wall_start=wall_start, time_budget_s=time_budget_s, members=member_dir is not None)
        _fuse(predictor, results, info, member_dir, columns)
        frame = submission_frame(*_rows_with_fallback(results, manifest), columns)
        if out is not None:
            write_csv_atomic(frame, out)
        _record_run(info, frame, results, predictor, budget, stats, paths=paths, out=out, wall_start=wall_start)
        _write_report(report, info)
        say(progress, _summary_line(info, frame, predictor, len(paths), out))
        return frame
    finally:
        if lock is not None:
            lock.release()


def _check_outputs(out, report) -> None:
    """The submission and the report can be written (checked before any work)."""
    if out is not None:
        check_writable(out)
    if report is not None:
        check_writable(report, option="--report", example="report.json")


def _before_audio(manifest, paths: list[Path]) -> dict:
    """What the report says before any audio is read: the file-reading steps' plans (label maps: direct / by
    genus / missing) and the file names a ``file_prior`` pattern does not match (their prior is skipped)."""
    out = {}
    if steps := plan_report(manifest):
        out["steps"] = steps
    if priors := check_file_names(manifest, [p.name for p in paths]):
        out["file_prior"] = priors
    return out


def _fuse(predictor: Predictor, results: list[FileResult], info: dict, member_dir: Path | None, columns) -> None:
    """Every file's rows of a spec with steps over the whole submission (:meth:`Predictor.fuse`, once every file is
    done; the time budget dropped models before this: a dropped model's files are fused without it); the notes its
    steps left and, with ``member_dir``, every member's rows before fusion (:func:`birdinfer.jobs.members.write_member_rows`)."""
    predictor.fuse(results)
    if notes := notes_of(results):
        info["notes"] = notes
    if member_dir is not None:
        info["member_rows"] = write_member_rows(member_dir, predictor.manifest, results, columns)


def _make_budget(time_budget_s: float | None) -> TimeBudget | None:
    """The run's time budget (None: no budget); its reserve is at most 5 % of the budget."""
    if time_budget_s is None:
        return None
    budget = TimeBudget(time_budget_s)
    budget.reserve_s = min(budget.reserve_s, 0.05 * time_budget_s)
    return budget


def _summary_line(info: dict, frame, predictor: Predictor, n_files: int, out) -> str:
    wall, failed = info["seconds"], info["failed"]
    dropped = ", ".join(e["model"] for e in info["dropped"]) or "none"
    return (f"birdinfer: {n_files} files, {len(frame)} rows, {wall:.1f} s ({wall / n_files:.2f} s/file), "
            f"precision {predictor.precision}, {len(failed)} failed, models dropped: {dropped}"
            + (f" → {out}" if out is not None else ""))


def _empty_submission(audio_dir, manifest: Manifest, columns, out, report, info: dict, wall_start: float):
    """No recordings: a header-only submission (on Kaggle the hidden test set appears only when submitted)."""
    msg = (f"NO AUDIO FILES in {audio_dir} (extensions {', '.join(AUDIO_EXTENSIONS)}): writing a header-only "
           "submission. On Kaggle the hidden test set appears only when the notebook is submitted.")
    log.warning(msg)
    print(f"birdinfer: WARNING: {msg}", file=sys.stderr)
    frame = submission_frame([], np.zeros((0, len(manifest.labels)), np.float32), columns)
    if out is not None:
        write_csv_atomic(frame, out)
    info.update(rows=0, seconds=round(time.perf_counter() - wall_start, 3), failed=[], dropped=[])
    frame.attrs["birdinfer"] = info
    _write_report(report, info)
    return frame


def _budget_gate(budget: TimeBudget | None, predictor: Predictor, clock, start: float, results: list,
                 n_files: int) -> Callable[[int], bool]:
    """``on_file_start(index)``: False once the budget is spent (the rest get fallback rows); before each file,
    drop the models the budget plan says cannot fit."""

    def on_file_start(index: int) -> bool:
        if budget is None:
            return True
        elapsed = clock() - start
        done = len(results)
        if elapsed >= budget.budget_s - budget.reserve_s:
            return False  # out of time: remaining files get fallback rows
        if done:
            model_total = sum(predictor.model_seconds.values())
            overhead = max(0.0, (elapsed - model_total) / done)
            for name in budget.plan(predictor, elapsed=elapsed, files_done=done, files_left=n_files - index,
                                    overhead_per_file=overhead):
                predictor.drop(name)
        return True

    return on_file_start


def _score_files(predictor: Predictor, paths: list[Path], gate, results: list, stats: dict, info: dict, *, clock,
                 progress: bool, wall_start: float, time_budget_s: float | None, members: bool = False) -> None:
    """Every file through the predictor into ``results``; the projection after the first file goes in ``info``."""
    bar = progress_bar(progress, total=len(paths), desc="birdinfer")
    try:
        for result in predictor.iter_files(paths, on_file_start=gate, clock=clock, stats=stats, members=members):
            results.append(result)
            if len(results) == 1 and len(paths) > 1 and result.ok:
                info["projection"] = _projection(time.perf_counter() - wall_start, predictor.load_seconds, len(paths),
                                                 time_budget_s)
                say(progress, f"birdinfer: after the first file: {info['projection']['text']}")
            if not result.ok:
                log.warning("%s: %s; its rows get the fallback", result.path, result.error)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()


def _rows_with_fallback(results: list[FileResult], manifest: Manifest) -> tuple[list[str], np.ndarray]:
    """Row ids and probabilities; a failed or skipped file gets the mean of the good files' rows (0.0 if none)."""
    good = [r.probs for r in results if r.ok and r.probs is not None and len(r.probs)]
    fallback = np.concatenate(good).mean(axis=0) if good else np.zeros(len(manifest.labels), np.float32)
    ids, rows = [], []
    for r in results:
        if r.ok:
            probs = r.probs
        else:
            probs = np.repeat(fallback[None, :], _fallback_windows(r.path, manifest.window_seconds), axis=0)
        ids += row_ids(r.stem, len(probs), manifest.window_seconds)
        rows.append(probs)
    return ids, np.concatenate(rows).astype(np.float32)


def _record_run(info: dict, frame, results: list[FileResult], predictor: Predictor, budget: TimeBudget | None,
                stats: dict, *, paths: list[Path], out, wall_start: float) -> None:
    """The run report (``frame.attrs["birdinfer"]``): timings, precision, failed files, dropped models."""
    wall = time.perf_counter() - wall_start
    info.update(
        rows=len(frame),
        seconds=round(wall, 3),
        seconds_per_file=round(wall / len(paths), 4),
        precision=predictor.precision,
        load_seconds=round(predictor.load_seconds, 3),
        parallel_models=predictor.parallel_models,
        failed=[{"file": str(r.path), "error": r.error} for r in results if not r.ok],
        dropped=budget.events if budget else [],
        model_seconds={k: round(v, 4) for k, v in predictor.model_seconds.items()},
        decode_seconds=round(stats.get("decode_seconds", 0.0), 3),
        front_end_seconds=round(stats.get("front_end_seconds", 0.0), 3),
        waited_for_front_end_seconds=round(stats.get("wait_seconds", 0.0), 3),
        out=str(out) if out is not None else None,
    )
    frame.attrs["birdinfer"] = info


def _projection(elapsed: float, load_seconds: float, files: int, budget: float | None) -> dict:
    """Projected wall time of ``files`` files from the first one (its time includes warm-up: pessimistic)."""
    per_file = max(0.0, elapsed - load_seconds)
    projected = load_seconds + files * per_file
    text = f"{per_file:.2f} s/file (first file, incl. warm-up) → {files} files ≈ {projected / 60:.1f} min with loading"
    if budget is not None:
        text += (f"; budget {budget / 60:.1f} min: " + ("models will be dropped if later files keep this pace"
                                                           if projected > budget else "fits"))
    return {"seconds_per_file_first": round(per_file, 3), "projected_seconds": round(projected, 1), "text": text}


def _write_report(path, info: dict) -> None:
    """The JSON report, written atomically (a fault leaves the previous report or none, never a cut one)."""
    if path is None:
        return
    text = json.dumps(info, indent=2, default=str) + "\n"  # ASCII: names held as surrogates come out as \udcXX
    atomic_write(path, lambda f: f.write(text.encode("ascii")), option="--report")
