"""birdinfer.tools.bench: the report has every figure, positive and consistent; the plot is a PNG. No timing assertions."""

from __future__ import annotations

import json

import pytest

from birdinfer.tools.bench import ir_gflop, parse_mode, run_bench
from birdinfer.errors import ParameterError
from birdinfer.spec.manifest import Manifest


def test_run_bench_report_and_plot(small_model_folder, tmp_path):
    pytest.importorskip("matplotlib")
    json_path, png_path = tmp_path / "bench.json", tmp_path / "bench.png"
    report = run_bench(small_model_folder, files=1, json_out=json_path, plot=png_path, compare=["f32"],
                       precision="auto", print_table=False)

    on_disk = json.loads(json_path.read_text())
    assert on_disk == json.loads(json.dumps(report))
    assert set(on_disk) >= {"machine", "audio", "gflop_source", "modes", "primary", "n_models", "kaggle"}
    machine = on_disk["machine"]
    assert machine["cpu"] and machine["matmul_f32_gflops"] > 0
    assert set(machine["isa"]) >= {"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8"}
    assert [m["mode"] for m in on_disk["modes"]] == ["auto", "f32"]

    manifest = Manifest.load(small_model_folder)
    for mode in on_disk["modes"]:
        assert "error" not in mode, mode.get("error")
        stages = mode["stages_seconds_per_file"]
        assert set(stages) == {"decode", "front_end", "models", "ensemble_output"}
        assert all(v > 0 for v in stages.values())
        assert set(mode["front_end_features_alone_seconds_per_file"]) == {"v1", "v2", "v3"}
        assert [m["name"] for m in mode["models"]] == [m.name for m in manifest.models]
        for m in mode["models"]:
            assert m["seconds_per_file"] > 0 and m["gflop_per_file"] > 0 and m["gflops"] > 0
            assert 0 < m["f32_peak_fraction"]
        assert mode["models_gflop_per_file"] == pytest.approx(sum(m["gflop_per_file"] for m in mode["models"]), rel=1e-3)
        # the stage is the models' own seconds plus infer_block's dispatch around them (1.1 ms per file measured on a
        # slow AVX2 host): never less than their sum (4-decimal rounding aside), never much more
        in_models = sum(m["seconds_per_file"] for m in mode["models"])
        assert in_models - 5e-4 <= stages["models"] <= in_models * 1.05 + 5e-3
        assert mode["pipelined_seconds_per_file"] > 0 and mode["real_time_factor"] > 0
        assert mode["schedule"] in ("front end in a background thread", "front end inline, 1 thread") or (
            mode["schedule"].startswith("front end inline, ") and mode["schedule"].endswith(" threads"))
        p = mode["projection"]
        assert p["seconds"] > 700 * mode["pipelined_seconds_per_file"] * 0.99  # 700 files + load time
        assert p["fits"] == (p["seconds"] <= 5400)
        assert mode["load_seconds"] > 0
    f32 = on_disk["modes"][1]
    assert all(m["precision"] == "f32" for m in f32["models"])
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_ir_gflop_matches_hand_count(small_model_folder):
    """tf_efficientnet_lite0 on a 256×512 input, 6 chunks: the count is of the size ImageNet figures predict
    (0.39 GMAC at 224² → × (256·512)/(224²) × 6 chunks × 2 FLOP/MAC ≈ 12 GFLOP), not zero or off by 1000."""
    manifest = Manifest.load(small_model_folder)
    entry = manifest.models[0]
    gflop = ir_gflop(manifest.path_of(entry.variants["f32"].openvino))
    expected = 0.39 * (256 * 512) / (224 * 224) * entry.batch_chunks * 2
    assert gflop == pytest.approx(expected, rel=0.25)


def test_parse_mode():
    assert parse_mode("onnxruntime") == ("onnxruntime", "f32")
    assert parse_mode("int8") == ("openvino", "int8")
    with pytest.raises(ParameterError, match="unknown bench mode"):
        parse_mode("fp64")
    with pytest.raises(ParameterError, match="unknown bench mode"):
        run_bench("does-not-matter", compare=["int4"])


def test_run_bench_on_a_version_2_folder(small_v2_folder):
    """A v2 folder (whole-file block, three-level tree, its own mel bands) gets every figure: stages, each
    feature alone, per-model time and GFLOP, the tree weights and what the notebook budget would do."""
    from birdinfer.tools.bench import format_report
    from birdinfer.spec.info import effective_weights

    manifest = Manifest.load(small_v2_folder)
    assert manifest.format_version == 2
    report = run_bench(small_v2_folder, files=1, precision="f32", print_table=False)
    (mode,) = report["modes"]
    assert "error" not in mode, mode.get("error")
    assert mode["block_seconds"] is None
    assert mode["kernel_families"] and all(m["kernels"] for m in mode["models"])  # oneDNN kernels of v2 models too
    assert all(v > 0 for v in mode["stages_seconds_per_file"].values())
    assert set(mode["front_end_features_alone_seconds_per_file"]) == {"v1", "v2", "v3"}
    assert all(v > 0 for v in mode["front_end_features_alone_seconds_per_file"].values())
    assert mode["windows_per_file"] == {"v1": 6, "v2": 6, "v3": 6}  # 60 s in 10 s windows
    weights = effective_weights(manifest)
    assert weights[manifest.models[2].name] == pytest.approx(2 / 3 * 1 / 4 * 1 / 2)
    for m in mode["models"]:
        assert m["seconds_per_file"] > 0 and m["gflop_per_file"] > 0 and m["precision"] == "f32"
        assert m["weight"] == pytest.approx(weights[m["name"]], abs=1e-4)
    p = mode["projection"]
    assert isinstance(p["budget_would_drop"], list) and bool(p["budget_would_drop"]) == p["drops_models"]
    text = format_report(report)
    assert "feature v3 alone" in text and manifest.models[3].name in text


def test_projection_names_the_models_the_notebook_budget_drops():
    """The 4th place at 9 s per file (its 16 models ~0.5 s each + 1 s of overhead) does not fit 700 files in
    85 minutes: the projection names what the time budget would drop, lowest tree weight per second first."""
    import json
    from types import SimpleNamespace

    from birdinfer.tools.bench_report import budget_verdict
    from birdinfer.tools.bench_stages import NOTEBOOK_BUDGET_SECONDS, _projection
    from birdinfer.spec.info import effective_weights
    from conftest import REFERENCE_RECIPE, recipe_spec

    spec = recipe_spec(json.loads(REFERENCE_RECIPE.read_text()))
    seconds = {m.name: 0.3 + 0.02 * i for i, m in enumerate(spec.models)}
    pipelined = sum(seconds.values()) + 1.0
    predictor = SimpleNamespace(manifest=spec, active=[m.name for m in spec.models], load_seconds=120.0)
    models = [{"name": n, "seconds_per_file": s} for n, s in seconds.items()]
    p = _projection(predictor, models, pipelined, 60.0)
    assert p["drops_models"] and p["seconds"] > NOTEBOOK_BUDGET_SECONDS
    drops = p["budget_would_drop"]
    assert 0 < len(drops) < 16
    kept = [n for n in seconds if n not in drops]
    assert 120 + 700 * (pipelined - sum(seconds[n] for n in drops)) <= NOTEBOOK_BUDGET_SECONDS - 10  # now it fits
    weights = effective_weights(spec)
    assert drops[0] == min(seconds, key=lambda n: weights[n] / seconds[n])
    assert kept and budget_verdict(p).startswith(f"drops {len(drops)}: {drops[0]}")
