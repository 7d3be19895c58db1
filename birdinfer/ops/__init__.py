"""Registered ops and steps: pure functions named in a manifest, each with frozen parameters and a shape rule.

Registration happens here, in one place: this module imports every op module, so importing
``birdinfer.ops`` (or anything under it) fills the registries. Op modules import only the base types
(:mod:`birdinfer.ops.base`, :mod:`birdinfer.ops.registry`), never each other.

    base.py        Signal, Block, Static, WindowLayout and the front-end op registry OPS
    frontend.py    pad, normalize_wave, windows, normalize
    spectral.py    stft, resize_time, mel, db, log (kernels in birdinfer.dsp)
    window.py      channels, neighbours, gain, crop_time
    birdnet.py     birdnet_stft (BirdNET V2.4's min-max scaled two-branch real-part STFT), birdnet_mel (its banded
                   mel products, square and power)
    filters.py     bandpass (BirdNET-Analyzer's Butterworth filter on the whole waveform, --fmin / --fmax)
    steps.py       model / row / combine steps (sigmoid, rows per 5 s, smoothing, weighted means)
    label_map.py   label_map: a model's classes onto the folder's labels by scientific name (tables.py: CSV files)
    file_steps.py  temperature per taxon class, file_prior (file-name fields → prior table), delta_smooth,
                   class_thresholds, run_row_steps
    submission.py  steps over the whole submission (rank_mean scope "submission", column_normalize)
    gates.py       rank_mean's gates, column_group_max (sonotype mirroring), rare_suppress
    file_stats.py  whole-file statistics accumulated over blocks (streamed execution)
    tta.py         roll, and the combination of a model's shifted-window passes (its ``tta`` field)
"""

from . import birdnet, filters, frontend, spectral, tta, window  # noqa: F401  (register their ops in OPS)
from . import file_steps, gates, label_map, submission  # noqa: F401  (register their steps)
from .base import OPS, Block, Scope, Signal, Static, WindowLayout
from .registry import Entry, Registry
from .steps import COMBINE_STEPS, MODEL_STEPS, ROW_PRODUCING, ROW_STEPS, Outputs

__all__ = ["OPS", "MODEL_STEPS", "ROW_STEPS", "COMBINE_STEPS", "ROW_PRODUCING", "Block", "Entry", "Outputs",
           "Registry", "Scope", "Signal", "Static", "WindowLayout"]
