"""``--backend auto``: each model on the backend its folder records faster on this CPU class.

The records (``variants.f32.backends``) are written by ``birdinfer bench --record-backends`` from real timings;
here most are written by hand so the plan can be checked both ways on any machine, and one test records real
timings and checks that the plan follows whatever was measured.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from birdinfer.errors import ModelFolderError, ParameterError
from birdinfer.runtime.cpu import effective_isa
from birdinfer.runtime.pipeline import Predictor
from birdinfer.runtime.plan import ModelPlan, _auto_backend, plan_models, plan_variants
from birdinfer.spec.manifest import Manifest
from birdinfer.tools.bench import run_bench
from birdinfer.tools.precision import update_variants

from conftest import write_ogg

pytest.importorskip("onnxruntime")


@pytest.fixture()
def folder(small_model_folder, tmp_path) -> Path:
    out = tmp_path / "models"
    shutil.copytree(small_model_folder, out)
    return out


def _record(folder: Path, records: dict[str, dict]) -> Manifest:
    return update_variants(folder, {name: {"f32": {"backends": r}} for name, r in records.items()})


def _names(folder: Path) -> list[str]:
    return [m.name for m in Manifest.load(folder).models]


def test_auto_puts_a_model_on_onnxruntime_only_where_recorded_faster_on_this_class(folder):
    here = effective_isa().cpu_class
    other = "avx2" if here != "avx2" else "avx512"
    a, b, c, d = _names(folder)
    manifest = _record(folder, {a: {here: {"openvino": 0.2, "onnxruntime": 0.1}},
                                b: {here: {"openvino": 0.1, "onnxruntime": 0.2}},
                                c: {other: {"openvino": 0.2, "onnxruntime": 0.1}},
                                d: {here: {"openvino": 0.1, "onnxruntime": 0.097}}})  # within the margin: noise
    plans, summary = plan_models(manifest, precision="f32", backend="auto")
    assert [p.backend for p in plans] == ["onnxruntime", "openvino", "openvino", "openvino"]
    assert plans[0].hint is None and plans[1].hint == "f32"
    assert f"{a} f32 on ONNX Runtime" in summary and f"ONNX Runtime measured faster on {here}" in summary
    assert f"ONNX Runtime not measured ≥ 5% faster than OpenVINO on {here} (0.2 vs 0.1 s/file)" in summary
    assert f"ONNX Runtime not measured ≥ 5% faster than OpenVINO on {here} (0.097 vs 0.1 s/file)" in summary
    files = [name for _, name in plan_variants(manifest, precision="f32", backend="auto", plans=plans)]
    assert files[0].endswith(".onnx") and all(f.endswith(".xml") for f in files[1:])
    # an explicit backend overrides the records
    assert {p.backend for p in plan_models(manifest, precision="f32", backend="openvino")[0]} == {"openvino"}
    assert {p.backend for p in plan_models(manifest, precision="f32", backend="onnxruntime")[0]} == {"onnxruntime"}


def test_auto_keeps_openvino_where_the_plan_is_not_f32(folder):
    """INT8 variants and bf16 float layers are OpenVINO's: a record comparing f32 speeds says nothing of them."""
    isa = effective_isa()
    a = _names(folder)[0]
    entry = _record(folder, {a: {isa.cpu_class: {"openvino": 0.2, "onnxruntime": 0.1}}}).models[0]
    assert _auto_backend(ModelPlan(entry, "f32", "f32"), isa, []).backend == "onnxruntime"
    assert _auto_backend(ModelPlan(entry, "f32", "bf16"), isa, []).backend == "openvino"
    assert _auto_backend(ModelPlan(entry, "int8", "f32"), isa, []).backend == "openvino"


def test_auto_runs_both_backends_with_f32_results(folder, tmp_path):
    here = effective_isa().cpu_class
    a, b, *_ = _names(folder)
    _record(folder, {a: {here: {"openvino": 0.2, "onnxruntime": 0.1}}})
    ogg = write_ogg(tmp_path / "a.ogg", 15.0, seed=3)
    mixed = Predictor(folder, precision="f32", backend="auto")
    assert [m.backend for m in mixed.models][:2] == ["onnxruntime", "openvino"]
    assert mixed.ran_backends == f"openvino + onnxruntime ({a})"
    plain = Predictor(folder, precision="f32", backend="openvino")
    assert plain.ran_backends == "openvino"
    np.testing.assert_allclose(mixed.predict_file(ogg), plain.predict_file(ogg), atol=1e-5)
    mixed.close()
    plain.close()


def test_submit_reports_the_backends_that_ran(folder, tmp_path):
    from birdinfer.jobs.submit import make_submission

    here = effective_isa().cpu_class
    a = _names(folder)[0]
    _record(folder, {a: {here: {"openvino": 0.2, "onnxruntime": 0.1}}})
    audio = tmp_path / "audio"
    audio.mkdir()
    write_ogg(audio / "s.ogg", 10.0, seed=1)
    make_submission(audio, folder, out=tmp_path / "sub.csv", report=tmp_path / "r.json", precision="f32", progress=False)
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["backend"] == "auto" and report["backend_ran"] == f"openvino + onnxruntime ({a})"


def test_auto_says_why_a_faster_onnxruntime_is_not_used_without_the_onnx_file(folder):
    here = effective_isa().cpu_class
    a = _names(folder)[0]
    _record(folder, {a: {here: {"openvino": 0.2, "onnxruntime": 0.1}}})
    data = json.loads((folder / "manifest.json").read_text())
    model = next(m for m in data["models"] if m["name"] == a)
    model["variants"]["f32"].pop("onnx")
    (folder / "manifest.json").write_text(json.dumps(data))
    plans, summary = plan_models(Manifest.load(folder), precision="f32", backend="auto")
    assert plans[0].backend == "openvino"
    assert "has no ONNX file" in summary


@pytest.mark.parametrize("bad", [{"x": {"openvino": 0.1}}, {"x": {"openvino": -1, "onnxruntime": 0.1}}, ["x"]])
def test_a_bad_backend_record_is_refused_at_load(folder, bad):
    data = json.loads((folder / "manifest.json").read_text())
    data["models"][0]["variants"]["f32"]["backends"] = bad
    (folder / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ModelFolderError, match="backends must map CPU classes"):
        Manifest.load(folder)


def test_bench_records_both_backends_and_auto_follows_the_measurement(folder, tmp_path):
    if effective_isa().cap is not None:  # run under ONEDNN_MAX_CPU_ISA: the record is refused (ONNX Runtime ignores caps)
        with pytest.raises(ParameterError, match="ignores ONEDNN_MAX_CPU_ISA"):
            run_bench(folder, files=1, precision="f32", record_backends=True, print_table=False)
        return
    report = run_bench(folder, files=1, precision="f32", record_backends=True, print_table=False)
    here = effective_isa().cpu_class
    manifest = Manifest.load(folder)
    assert set(report["backends_recorded"]) == {m.name for m in manifest.models}
    plans, _ = plan_models(manifest, precision="f32", backend="auto")
    for entry, plan in zip(manifest.models, plans):
        record = entry.variants["f32"].backends[here]
        assert record["openvino"] > 0 and record["onnxruntime"] > 0 and record["files"] == 1
        assert plan.backend == ("onnxruntime" if record["onnxruntime"] < 0.95 * record["openvino"] else "openvino")


def test_record_backends_refuses_a_capped_class(folder):
    with pytest.raises(ParameterError, match="ignores ONEDNN_MAX_CPU_ISA"):
        run_bench(folder, files=1, record_backends=True, cpu_class="avx2", print_table=False)
