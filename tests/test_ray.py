"""``birdinfer predict --engine ray`` on a real local Ray head (loopback, 2 CPUs): same output as the
single-machine ``predict``, resumable, and complete after a worker process is killed mid-run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from birdinfer.errors import MissingDependencyError, ParameterError
from conftest import assert_same_rows, write_ogg

try:
    import ray
except ImportError:
    ray = None

pytestmark = pytest.mark.ray
needs_ray = pytest.mark.skipif(ray is None, reason="ray is not installed: pip install 'birdinfer[ray]' to run the Ray tests")

#: Mixed lengths: shorter than a window, a remainder, exactly a block, more than a block.
SECONDS = [3.0, 12.5, 60.0, 70.0, 27.0, 41.0]


@pytest.fixture(scope="module")
def audio_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ray_audio")
    for i, seconds in enumerate(SECONDS):
        write_ogg(folder / ("sub" if i % 2 else "") / f"rec_{i:02d}.ogg", seconds, seed=100 + i)
    (folder / "broken.ogg").write_bytes(b"OggS" + bytes(range(200)))  # reported, never fatal
    return folder


@pytest.fixture(scope="module")
def reference(audio_folder, small_model_folder, tmp_path_factory):
    """Single-machine ``predict`` → (table, failed file names)."""
    import pyarrow.parquet as pq

    from birdinfer.jobs.predict import predict

    out = predict([audio_folder], small_model_folder, tmp_path_factory.mktemp("ref") / "ref.parquet",
                  precision="f32", progress=False)
    errors = out.with_name(out.name + ".errors.csv").read_text().splitlines()[1:]
    return pq.read_table(out), sorted(line.split(",")[0] for line in errors)


def _failed(out_dir: Path) -> list[str]:
    path = out_dir / "_errors.csv"
    return sorted(line.split(",")[0] for line in path.read_text().splitlines()[1:]) if path.exists() else []


def test_missing_ray_is_a_clear_error(audio_folder, small_model_folder, tmp_path, monkeypatch):
    """Without Ray, a run whose inputs and flags are right stops before any audio work, naming the extra; flags that
    --engine ray refuses are named first, whether Ray is installed or not."""
    from birdinfer.jobs.distributed import predict_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(MissingDependencyError, match=r"birdinfer\[ray\]"):
        predict_ray([audio_folder], small_model_folder, tmp_path / "out")
    with pytest.raises(ParameterError, match="--format csv with --engine ray"):
        predict_ray([audio_folder], small_model_folder, tmp_path / "out", format="csv")
    assert not (tmp_path / "out").exists()


@needs_ray
def test_cli_on_a_cluster_address_equals_single_machine(ray_head, audio_folder, small_model_folder, reference, tmp_path):
    """`birdinfer predict --engine ray --address ADDR` from another process joins the head as a second
    driver; shards read in input order equal the single-machine parquet exactly; the bad file is listed."""
    from birdinfer.jobs.distributed import read_output

    table, failed = reference
    assert table.num_rows == sum(max(1, int(s // 5)) for s in SECONDS) and failed == [str(audio_folder / "broken.ogg")]
    out = tmp_path / "ray_out"
    code = ("import sys; from birdinfer.cli import main; sys.exit(main(sys.argv[1:]))")
    done = subprocess.run(
        [sys.executable, "-c", code, "predict", str(audio_folder), "--models", str(small_model_folder), "--out", str(out),
         "--engine", "ray", "--address", ray_head, "--precision", "f32"],
        capture_output=True, text=True, timeout=180, env={**os.environ, "RAY_ADDRESS": ""},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = read_output(out)
    assert_same_rows(result, table)  # Ray's output is single-machine predict's
    assert _failed(out) == failed
    assert len(list((out / "shards").glob("*.parquet"))) == len(SECONDS)


@needs_ray
def test_resume_recomputes_only_what_is_missing(ray_head, audio_folder, small_model_folder, reference, tmp_path):
    """A run cut short (a shard lost, the last done line torn, no _SUCCESS) is finished by a re-run that
    recomputes only the missing recording; the output is identical."""
    from birdinfer.jobs import distributed
    from birdinfer.jobs.distributed import predict_ray, read_output

    table, _ = reference
    out = predict_ray([audio_folder], small_model_folder, tmp_path / "o", precision="f32", progress=False)
    lines = (out / "_done.jsonl").read_text().splitlines()
    lost = json.loads(lines[0])
    (out / lost["part"]).unlink()
    (out / "_done.jsonl").write_text("\n".join(lines[1:-1] + [lines[-1][:10]]) + "\n")
    (out / "_SUCCESS").unlink()
    torn = json.loads(lines[-1])
    kept = {p.name: p.stat().st_mtime_ns for p in (out / "shards").glob("*.parquet")}

    with pytest.raises(distributed.OutputError, match="other models, precision or backend"):
        predict_ray([audio_folder], small_model_folder, out, precision="bf16", progress=False)
    predict_ray([audio_folder], small_model_folder, out, precision="f32", progress=False)
    assert_same_rows(read_output(out), table)
    redone = {p.name for p in (out / "shards").glob("*.parquet") if kept.get(p.name) != p.stat().st_mtime_ns}
    assert redone == {Path(lost["part"]).name, Path(torn["part"]).name}


@needs_ray
def test_worker_killed_mid_run_is_retried_and_output_is_identical(ray_head, audio_folder, small_model_folder, reference, tmp_path):
    import psutil
    from ray._private.state import actors  # the GCS actor table: works without the dashboard, unlike ray.util.state

    from birdinfer.jobs.distributed import predict_ray, read_output

    table, failed = reference
    out = tmp_path / "fault"
    killed: dict = {}

    def kill_one_worker_after_first_file() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            done = out / "_done.jsonl"
            if done.exists() and done.read_text().count("\n") >= 1:
                for actor_id, info in actors().items():
                    if info["ActorClassName"] != "_Worker" or info["State"] != "ALIVE" or not info["Pid"]:
                        continue
                    try:
                        title = " ".join(psutil.Process(info["Pid"]).cmdline())  # "ray::_Worker.run" while busy
                    except psutil.Error:
                        continue
                    if "_Worker.run" in title:
                        os.kill(info["Pid"], signal.SIGKILL)
                        killed.update(actor_id=actor_id, title=title, done_before=done.read_text().count("\n"))
                        return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_one_worker_after_first_file, daemon=True)
    killer.start()
    predict_ray([audio_folder], small_model_folder, out, precision="f32", progress=False, num_workers=2)
    killer.join(timeout=5)
    assert killed, "no worker was killed: the test did not test a fault"
    assert killed["done_before"] < len(SECONDS), "the kill came after the run had finished"
    assert actors()[killed["actor_id"]]["NumRestarts"] >= 1, "Ray did not restart the killed worker"
    assert_same_rows(read_output(out), table)
    assert _failed(out) == failed


@needs_ray
def test_a_version_2_folder_on_ray_equals_single_machine(ray_head, audio_folder, small_v2_folder, tmp_path):
    """A format_version 2 folder (whole-file block, nested ensemble tree) gives the very table of
    single-machine ``predict`` on Ray too, and its fingerprint records the engine version."""
    import pyarrow.parquet as pq

    from birdinfer.jobs.distributed import predict_ray, read_output
    from birdinfer.jobs.journal import ENGINE_VERSION
    from birdinfer.jobs.predict import predict

    single = pq.read_table(predict([audio_folder], small_v2_folder, tmp_path / "single.parquet", precision="f32",
                                   progress=False))
    out = predict_ray([audio_folder], small_v2_folder, tmp_path / "v2", precision="f32", progress=False, num_workers=2)
    result = read_output(out)
    assert single.num_rows > 0
    # The v2 front end's mel product goes through the BLAS, which runs on one thread in both engines while a
    # Predictor runs (birdinfer.runtime.threads; with all cores here and one per Ray worker it moved sums by ~4e-7)
    assert_same_rows(result, single)
    assert json.loads((out / "_run.json").read_text())["engine_version"] == ENGINE_VERSION
    assert _failed(out) == [str(audio_folder / "broken.ogg")]
