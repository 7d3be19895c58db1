"""A model whose head a label map cuts (``runtime/prune_outputs.py``), timed with and without the cut in one process.

A Predictor of one model of a folder (default ``perch``, e.g. of the folder ``benchmarks/build_2026_ensemble.py``
writes) with ``prune_outputs`` True and False, over synthetic 60 s files at the folder's rate, interleaved rounds;
prints each one's columns line and best / median seconds per file.

    python benchmarks/label_cut_ab.py --models E/models
    ONEDNN_MAX_CPU_ISA=AVX2 python benchmarks/label_cut_ab.py --models E/models
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from birdinfer.runtime.pipeline import Predictor


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", required=True, type=Path)
    p.add_argument("--model", default="perch")
    p.add_argument("--files", type=int, default=3)
    p.add_argument("--rounds", type=int, default=6)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        predictors = {cut: Predictor(args.models, precision="f32", model_names=[args.model], prune_outputs=cut)
                      for cut in (True, False)}
        rate, rng = predictors[True].sample_rate, np.random.default_rng(0)
        paths = []
        for i in range(args.files):
            paths.append(Path(tmp) / f"f{i}.wav")
            sf.write(paths[-1], (rng.standard_normal(rate * 60) * 0.05).astype(np.float32), rate)
        for cut, predictor in predictors.items():
            print("cut" if cut else "full", predictor.models[0].columns)
        times = {True: [], False: []}
        for r in range(args.rounds):
            for cut in ((True, False) if r % 2 == 0 else (False, True)):
                start = time.perf_counter()
                for result in predictors[cut].iter_files(paths):
                    assert result.ok, result.error
                times[cut].append((time.perf_counter() - start) / len(paths))
        for cut, values in times.items():
            print(f"{'cut' if cut else 'full'}: best {min(values):.4f} median {np.median(values):.4f} s/file")
        for predictor in predictors.values():
            predictor.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
