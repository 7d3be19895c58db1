"""``birdinfer`` console script: one sub-command per job, each a thin layer over a keyword-argument function.

Each ``_cmd_*`` function only parses arguments and calls the library function that does the work, so
everything the CLI can do is also available from Python with the same names.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

from .errors import BirdinferError
from .tools.commands import TOOL_COMMANDS, backend_arg, precision_arg

__all__ = ["main", "build_parser"]


# --------------------------------------------------------------------------------------------- submit
def _add_submit(sub) -> None:
    p = sub.add_parser("submit", help="score a folder of soundscapes and write submission.csv")
    p.add_argument("audio_dir", type=Path, help="folder of soundscapes (.ogg, .wav, .flac, .mp3)")
    p.add_argument("--models", type=Path, required=True, help="model folder written by `birdinfer export`")
    p.add_argument("--out", type=Path, default=Path("submission.csv"), help="output CSV (default: submission.csv)")
    p.add_argument("--sample-submission", type=Path, default=None, help="sample_submission.csv: its column order is used")
    precision_arg(p)
    backend_arg(p)
    p.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                   help="finish within this many seconds: models are dropped (lowest weight per cost first) when the projection says the budget would be exceeded")
    p.add_argument("--limit", type=int, default=None, help="only the first N files (sorted by name)")
    p.add_argument("--cache-dir", type=Path, default=None, help="OpenVINO compiled-model cache folder (faster second start)")
    p.add_argument("--report", type=Path, default=None, help="write a JSON run report (timings, dropped models, failed files)")
    p.add_argument("--member-rows", type=Path, default=None, metavar="DIR",
                   help="also write every member's rows before fusion into DIR, one CSV per model and group (row_id + columns)")
    p.set_defaults(func=_cmd_submit)


def _cmd_submit(args) -> int:
    from .jobs.submit import make_submission

    make_submission(
        args.audio_dir,
        args.models,
        out=args.out,
        sample_submission=args.sample_submission,
        precision=args.precision,
        backend=args.backend,
        time_budget_s=args.time_budget,
        limit=args.limit,
        cache_dir=args.cache_dir,
        report=args.report,
        member_rows=args.member_rows,
    )
    return 0


# -------------------------------------------------------------------------------------------- predict
def _add_predict(sub) -> None:
    p = sub.add_parser("predict", help="per-5 s-window probabilities for recordings of any length (resumable)")
    p.add_argument("inputs", nargs="+", type=Path, help="audio files, folders (walked recursively) or .txt file lists")
    p.add_argument("--models", type=Path, required=True, help="model folder written by `birdinfer export`")
    p.add_argument("--out", type=Path, required=True, help="output file (csv/parquet), Raven folder, or Ray output folder")
    p.add_argument("--format", default=None, choices=["csv", "parquet", "raven", "birdnet_csv", "audacity", "kaleidoscope"],
                   help="default: from --out's suffix, else csv. raven and BirdNET-Analyzer's birdnet_csv, audacity, "
                   "kaleidoscope write one table per recording into the --out folder")
    p.add_argument("--threshold", type=float, default=None, help="Raven tables: detection threshold (default 0.5; "
                   "BirdNET folders: --min-confidence)")
    _detection_args(p)
    p.add_argument("--overlap", type=float, default=None,
                   help="seconds shared by consecutive windows (folders that declare it, e.g. BirdNET: 0-2.9, default 0)")
    p.add_argument("--sensitivity", type=float, default=None,
                   help="score sensitivity (folders that declare it, e.g. BirdNET: 0.5-1.5, default 1.0)")
    p.add_argument("--fmin", type=float, default=None, help="BirdNET folders: high-pass the audio at this many Hz "
                   "before the model (BirdNET-Analyzer's bandpass, 0-15000, default 0: none)")
    p.add_argument("--fmax", type=float, default=None, help="BirdNET folders: low-pass the audio at this many Hz "
                   "(0-15000, above --fmin; default 15000: none)")
    p.add_argument("--audio-speed", type=float, default=None, help="BirdNET folders: read each recording as if "
                   "sampled at its rate × this (BirdNET-Analyzer's --audio_speed, 0.01-100, default 1; 0.1: ultrasound "
                   "ten times slower); times in the outputs are of the recording")
    precision_arg(p)
    backend_arg(p)
    p.add_argument("--embeddings", type=Path, default=None, help="also write each window's embedding (BirdNET: the "
                   "1024-d layer before the classifier), one <stem>.birdnet.embeddings.txt per recording in this folder")
    p.add_argument("--engine", default="local", choices=["local", "ray"], help="local (default) or a Ray cluster")
    p.add_argument("--address", default=None, help="Ray cluster address (default: start a local instance)")
    p.add_argument("--no-resume", action="store_true", help="start over instead of skipping finished files")
    p.set_defaults(func=_cmd_predict)


def _detection_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--min-confidence", type=float, default=None, help="detections: the lowest score kept (default "
                   "0.25 as BirdNET-Analyzer's --min_conf; the csv/parquet table keeps every score unless given)")
    p.add_argument("--top-k", type=int, default=None, help="keep the k best labels per window whatever their score "
                   "(BirdNET-Analyzer's --top_n; not with --min-confidence)")
    p.add_argument("--species-list", type=Path, default=None, help="keep only these labels (a file, one label per "
                   "line, e.g. Turdus merula_Eurasian Blackbird)")
    p.add_argument("--combine", action="store_true", help="also write BirdNET-Analyzer's combined table of all "
                   "recordings (birdnet_csv, kaleidoscope, raven of a BirdNET folder)")
    p.add_argument("--species-codes", type=Path, default=None, help="BirdNET's Raven tables: a JSON file of label: "
                   "species code (e.g. BirdNET-Analyzer's eBird_taxonomy_codes_2024E.json); default: the label")
    p.add_argument("--merge-consecutive", type=int, default=None, metavar="N", help="merge up to N consecutive "
                   "detections of a species into one row, scored by the mean of its 3 best (BirdNET-Analyzer's "
                   "--merge_consecutive; default 1: no merging)")
    p.add_argument("--locale", default=None, help="common names in this language in BirdNET-Analyzer's tables (its "
                   "--locale: de, fr, ja, ...; en: the labels), from a folder imported with --translated-labels")
    _location_args(p)


def _location_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lat", type=float, default=None, help="recording latitude: the folder's meta model keeps the "
                   "species expected there (with --lon)")
    p.add_argument("--lon", type=float, default=None, help="recording longitude (with --lat)")
    p.add_argument("--week", type=int, default=None, help="week of the year 1-48 (4 per month); -1: the whole year (default)")
    p.add_argument("--sf-thresh", type=float, default=None, help="meta model score a species needs (default 0.03)")


def _cmd_predict(args) -> int:
    options = {"overlap": args.overlap, "sensitivity": args.sensitivity, "fmin": args.fmin, "fmax": args.fmax,
               "audio_speed": args.audio_speed}
    filters = {"min_confidence": args.min_confidence, "top_k": args.top_k, "species_list": args.species_list,
               "lat": args.lat, "lon": args.lon, "week": args.week, "sf_thresh": args.sf_thresh,
               "combine": args.combine or None, "species_codes": args.species_codes,
               "merge_consecutive": args.merge_consecutive, "locale": args.locale}
    if args.engine == "ray":  # the shards, and the tables --format asks for written from them
        from .jobs.distributed import predict_ray

        predict_ray(args.inputs, args.models, args.out, address=args.address, precision=args.precision,
                    backend=args.backend, resume=not args.no_resume, options=options, embeddings=args.embeddings,
                    format=args.format, threshold=args.threshold, **filters)
        return 0
    from .jobs.predict import predict

    predict(args.inputs, args.models, args.out, format=args.format, threshold=args.threshold,
            precision=args.precision, backend=args.backend, resume=not args.no_resume, options=options,
            embeddings=args.embeddings, **{**filters, "combine": args.combine})
    return 0


def _add_species(sub) -> None:
    p = sub.add_parser("species", help="the species BirdNET's meta model expects at a location and week (one per line)")
    p.add_argument("--models", type=Path, required=True, help="BirdNET folder imported with --meta-model")
    _location_args(p)
    p.add_argument("--sortby", default="freq", choices=["freq", "alpha"], help="by meta model score (default) or name")
    p.set_defaults(func=_cmd_species)


def _cmd_species(args) -> int:
    from .jobs.species import location_species
    from .spec.manifest import Manifest

    names = location_species(Manifest.load(args.models), args.lat, args.lon, args.week, args.sf_thresh)
    try:
        print("\n".join(sorted(names) if args.sortby == "alpha" else names), flush=True)
    except BrokenPipeError:  # `| head`: the reader stopped early, which is no fault
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


# ----------------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="birdinfer", description="Fast offline CPU inference for BirdCLEF SED ensembles")
    parser.add_argument("--version", action="version", version=f"birdinfer {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_submit, _add_predict, _add_species) + TOOL_COMMANDS:
        add(sub)
    return parser


class _Terminated(BaseException):
    """SIGTERM, raised in the main thread like Ctrl-C: a stopped predict or submit removes its temporary file and
    releases its lock on the way out (a BaseException, so no ``except Exception`` swallows it)."""


def _raise_terminated(signum, frame) -> None:
    raise _Terminated()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    in_main = threading.current_thread() is threading.main_thread()  # signal handlers can only be set there
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if in_main and args.command in ("predict", "submit") else None
    try:
        return int(args.func(args) or 0)
    except BirdinferError as e:
        print(f"birdinfer {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a fault no job turned into a sentence itself (a lock, a journal line): one sentence too
        from .io.output import os_fault

        print(f"birdinfer {args.command}: error: {os_fault(e, beside=getattr(args, 'out', None))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"birdinfer {args.command}: interrupted", file=sys.stderr)
        return 130
    except _Terminated:
        print(f"birdinfer {args.command}: stopped by SIGTERM", file=sys.stderr)
        return 128 + signal.SIGTERM
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
