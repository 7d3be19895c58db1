"""CPU classes: ISA-cap parsing, class naming, precision / variant choice per class, explicit precision hints,
and the cap really acting in a child process (kernels read back from compiled models). No timing assertions."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from birdinfer.runtime.cpu import (
    class_of,
    cap_for_class,
    effective_isa,
    isa_cap,
    parse_isa_cap,
    physical_cores,
    run_in_cpu_class,
    sibling_groups,
    spare_siblings,
)
from birdinfer.errors import ParameterError
from birdinfer.spec.manifest import Manifest, MelGroup, ModelEntry
from birdinfer.spec.files import ModelVariant
from birdinfer.runtime.models import plan_models

BASE = {"sse4_1", "avx", "avx2", "fma"}
AVX512 = {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512cd"}
SKYLAKE_SP = BASE | AVX512  # Kaggle's class
ICE_LAKE = SKYLAKE_SP | {"avx512_vnni"}
ZEN4 = ICE_LAKE | {"avx512_bf16"}
SAPPHIRE_RAPIDS = ZEN4 | {"amx_tile", "amx_int8", "amx_bf16", "avx_vnni"}
ALDER_LAKE = BASE | {"avx_vnni"}


@pytest.mark.parametrize("flags, name", [
    (SKYLAKE_SP, "avx512"), (ICE_LAKE, "avx512_vnni"), (ZEN4, "avx512_vnni_bf16"), (SAPPHIRE_RAPIDS, "amx"),
    (BASE, "avx2"), (ALDER_LAKE, "avx2_vnni"), ({"sse4_1"}, "sse41"), (set(), "baseline"),
    (BASE | {"avx512f"}, "avx2"),  # avx512f alone (no BW/VL/DQ) is not oneDNN's avx512_core
])
def test_native_class_from_cpuinfo_flags(flags, name):
    isa = effective_isa(flags, environ={})
    assert isa.cpu_class == name and isa.native_class == name and isa.cap is None and not isa.masked


@pytest.mark.parametrize("flags, cap, name, bf16, int8_exact", [
    (ZEN4, "AVX512_CORE", "avx512", False, False),
    (ZEN4, "avx512_core", "avx512", False, False),  # oneDNN accepts any case
    (ZEN4, "AVX512_CORE_VNNI", "avx512_vnni", False, True),
    (ZEN4, "AVX512_CORE_BF16", "avx512_vnni_bf16", True, True),
    (ZEN4, "AVX2", "avx2", False, False),
    (SAPPHIRE_RAPIDS, "AVX2_VNNI", "avx2_vnni", False, True),
    (SAPPHIRE_RAPIDS, "AVX512_CORE_AMX", "amx", True, True),
    (ICE_LAKE, "AVX512_CORE_BF16", "avx512_vnni", False, True),  # a cap never adds features
    (ICE_LAKE, "ALL", "avx512_vnni", False, True),
])
def test_cap_masks_features(flags, cap, name, bf16, int8_exact):
    isa = effective_isa(flags, environ={"ONEDNN_MAX_CPU_ISA": cap})
    assert isa.cpu_class == name
    assert isa.bf16_native is bf16 and isa.int8_exact is int8_exact
    assert isa.float_hint == ("bf16" if bf16 else "f32")
    assert isa.effective <= isa.native


def test_cap_label_names_what_is_masked():
    isa = effective_isa(ZEN4, environ={"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"})
    assert isa.masked == ("avx512_vnni", "avx512_bf16")
    assert "cap ONEDNN_MAX_CPU_ISA=AVX512_CORE" in isa.label() and "avx512_vnni_bf16 CPU" in isa.label()
    assert effective_isa(ZEN4, environ={"DNNL_MAX_CPU_ISA": "AVX2"}).cpu_class == "avx2"  # oneDNN's older name


def test_unknown_cap_value():
    with pytest.raises(ParameterError, match="AVX513.*not a oneDNN ISA name.*AVX512_CORE"):
        parse_isa_cap("AVX513")
    with pytest.warns(UserWarning, match="oneDNN ignores it"):
        assert isa_cap({"ONEDNN_MAX_CPU_ISA": "AVX513"}) == ("AVX513", None)
    assert parse_isa_cap(None) is None and parse_isa_cap("  ") is None and parse_isa_cap("default") is None


def test_class_of_is_ordered_most_capable_first():
    assert class_of({"avx2", "avx512_core", "avx512_vnni", "avx512_bf16", "amx_int8", "amx_bf16"}) == "amx"
    assert class_of({"avx2", "avx_vnni"}) == "avx2_vnni"


def test_cap_for_class_refuses_what_the_cpu_cannot_emulate():
    icelake = effective_isa(ICE_LAKE, environ={})
    assert cap_for_class("avx512", icelake) == "AVX512_CORE"
    assert cap_for_class("avx2", icelake) == "AVX2"
    assert cap_for_class("native", icelake) is None
    with pytest.raises(ParameterError, match="cannot emulate class 'avx512_vnni_bf16'"):
        cap_for_class("avx512_vnni_bf16", icelake)
    with pytest.raises(ParameterError, match="cpu class 'kaggle'"):
        cap_for_class("kaggle", icelake)


# ------------------------------------------------------------------------------------------ topology
def test_hyperthread_topology(tmp_path, monkeypatch):
    """A Kaggle-like VM: 4 logical CPUs, siblings (0, 2) and (1, 3): 2 physical cores, decode thread on 2 and 3."""
    for cpu, siblings in {0: "0,2", 1: "1,3", 2: "0,2", 3: "1,3"}.items():
        folder = tmp_path / "sys" / f"cpu{cpu}" / "topology"
        folder.mkdir(parents=True)
        (folder / "thread_siblings_list").write_text(siblings + "\n")
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("".join(f"processor\t: {cpu}\nphysical id\t: 0\ncore id\t\t: {cpu % 2}\nflags\t\t: avx2\n\n" for cpu in range(4)))
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2, 3})
    groups = sibling_groups(tmp_path / "sys")
    assert groups == [(0, 2), (1, 3)]
    assert spare_siblings(groups) == [2, 3]
    assert physical_cores(cpuinfo) == 2
    assert spare_siblings([(0,), (1,)]) == []  # no hyper-threads (this machine): nothing to pin


# ------------------------------------------------------------------------------------------ plans
def _manifest(variants: dict) -> Manifest:
    group = MelGroup("v1", 2048, 64, 256, 60, 16000, 256)
    entry = ModelEntry("m", "tf_efficientnet_lite0", "v1", 1.0, (6, 1, 256, 512), 16, variants)
    return Manifest(labels=("a", "b"), groups=(group,), models=(entry,))


#: every class a plan can meet: (flags, cap) → the effective ISA (fake: no real CPU involved)
EVERY_CLASS = [(ZEN4, None), (ZEN4, "AVX512_CORE"), (ZEN4, "AVX2"), (ICE_LAKE, None), (SKYLAKE_SP, None),
               (SAPPHIRE_RAPIDS, None), (SAPPHIRE_RAPIDS, "AVX512_CORE_BF16"), (ALDER_LAKE, None), (BASE, None)]


def _isa(flags, cap=None):
    return effective_isa(flags, environ={} if cap is None else {"ONEDNN_MAX_CPU_ISA": cap})


def _bf16(*classes, max_abs_dp=1e-3):
    return {"cpu_classes": list(classes), "max_abs_dp": max_abs_dp, "windows": 24, "bar": 5e-3,
            "measured_on": classes[0] if classes else "avx512_vnni_bf16"}


TWO_INT8 = {
    "f32": ModelVariant(openvino="m.xml"),
    "int8": ModelVariant(openvino="m.int8.xml", cpu_classes=("amx", "avx512_vnni_bf16", "avx512_vnni", "avx2_vnni")),
    "int8-compat": ModelVariant(openvino="m.int8-compat.xml", cpu_classes=("avx512", "avx2")),
}
#: the same, with bf16 measured within the bar on Zen 4's class for every variant
MEASURED = {k: ModelVariant(openvino=v.openvino, cpu_classes=v.cpu_classes, bf16=_bf16("avx512_vnni_bf16"))
            for k, v in TWO_INT8.items()}


@pytest.mark.parametrize("flags, cap, variant", [
    (ZEN4, None, "int8"), (ICE_LAKE, None, "int8"), (ZEN4, "AVX512_CORE", "int8-compat"), (ZEN4, "AVX2", "int8-compat"),
    (SAPPHIRE_RAPIDS, None, "int8"), (BASE | {"sse4_1"}, "SSE41", "f32"),  # sse41: no INT8 variant valid → auto
])
@pytest.mark.parametrize("variants", [TWO_INT8, MEASURED], ids=["no-bf16-record", "bf16-on-zen4"])
def test_fast_picks_the_variant_valid_for_the_class(flags, cap, variant, variants):
    isa = _isa(flags, cap)
    plans, summary = plan_models(_manifest(variants), precision="fast", isa=isa)
    # float layers: bf16 only where this class is recorded within the bar for the chosen variant
    hint = "bf16" if isa.bf16_native and isa.cpu_class in variants[variant].bf16_classes else "f32"
    assert (plans[0].variant, plans[0].hint) == (variant, hint)
    assert isa.cpu_class in summary and f"{plans[0].label} ×1" in summary and f"[m {plans[0].label}]" in summary
    if variant == "f32":
        assert "no INT8 variant valid on sse41" in summary


@pytest.mark.parametrize("flags, cap", EVERY_CLASS)
def test_auto_runs_f32_where_nothing_is_recorded(flags, cap):
    isa = _isa(flags, cap)
    plans, summary = plan_models(_manifest(TWO_INT8), precision="auto", isa=isa)
    assert (plans[0].variant, plans[0].hint, plans[0].label) == ("f32", "f32", "f32")
    assert "runs f32 ×1 [m f32]" in summary and "float layers" not in summary
    # where bf16 would be native, the log says once why it does not run; elsewhere there is nothing to say
    assert ("no bf16 measurement recorded" in summary) is isa.bf16_native
    assert summary.count("no bf16 measurement recorded") <= 1


@pytest.mark.parametrize("flags, cap", EVERY_CLASS)
@pytest.mark.parametrize("recorded", [("avx512_vnni_bf16",), ("amx",), ("amx", "avx512_vnni_bf16"), ()])
def test_auto_runs_bf16_only_where_recorded_for_this_class(flags, cap, recorded):
    isa = _isa(flags, cap)
    variants = {"f32": ModelVariant(openvino="m.xml", bf16=_bf16(*recorded))}
    plans, summary = plan_models(_manifest(variants), precision="auto", isa=isa)
    expected = "bf16" if isa.bf16_native and isa.cpu_class in recorded else "f32"
    assert plans[0].hint == expected and f"runs {expected} ×1 [m {expected}]" in summary
    if isa.bf16_native and expected == "f32":
        assert "bf16" in summary.split("]", 1)[1]  # the reason is given


def test_bf16_over_the_bar_or_not_measurable_runs_f32():
    zen4 = _isa(ZEN4)
    over = {"f32": ModelVariant(openvino="m.xml", bf16={**_bf16(), "max_abs_dp": 0.15, "measured_on": "avx512_vnni_bf16"})}
    plans, summary = plan_models(_manifest(over), precision="auto", isa=zen4)
    assert plans[0].hint == "f32" and "over the bar" in summary
    never = {"f32": ModelVariant(openvino="m.xml", bf16={"cpu_classes": [], "measured_on": "avx512_vnni",
                                                          "not_measurable": "bf16 is not native on avx512_vnni"})}
    plans, summary = plan_models(_manifest(never), precision="auto", isa=zen4)
    assert plans[0].hint == "f32" and "not native on avx512_vnni" in summary


@pytest.mark.parametrize("flags, cap", EVERY_CLASS)
def test_fast_skips_an_int8_variant_measured_slower_here(flags, cap):
    isa = _isa(flags, cap)
    per_class = {"avx512": {"speedup_vs_f32": 0.8}, "avx512_vnni_bf16": {"speedup_vs_f32": 1.4}}
    everywhere = ("amx", "avx512_vnni_bf16", "avx512_vnni", "avx512", "avx2_vnni", "avx2")
    variants = {"f32": ModelVariant(openvino="m.xml"),
                "int8": ModelVariant(openvino="m.int8.xml", cpu_classes=everywhere, verification={"per_class": per_class})}
    plans, summary = plan_models(_manifest(variants), precision="fast", isa=isa)
    slower = per_class.get(isa.cpu_class, {}).get("speedup_vs_f32", 1.0) < 1.0  # unmeasured classes: no figure, INT8
    assert plans[0].variant == ("f32" if slower or isa.cpu_class not in everywhere else "int8")
    assert ("measured slower than f32" in summary) is slower
    assert plan_models(_manifest(variants), precision="int8", isa=isa)[0][0].variant == "int8"  # explicit: as asked


@pytest.mark.parametrize("precision", ["f32", "bf16", "int8"])
@pytest.mark.parametrize("flags, cap", EVERY_CLASS)
def test_explicit_modes_stay(precision, flags, cap):
    isa = _isa(flags, cap)
    plans, _ = plan_models(_manifest(TWO_INT8), precision=precision, isa=isa)
    assert plans[0].hint == ("f32" if precision == "f32" else isa.float_hint)  # bf16 only where native
    if precision == "int8":
        valid = [k for k in ("int8", "int8-compat") if isa.cpu_class in TWO_INT8[k].cpu_classes]
        assert plans[0].variant == (valid or ["int8"])[0]


@pytest.mark.parametrize("flags, cap", EVERY_CLASS)
def test_int8_variant_without_measured_classes_never_runs_under_fast(flags, cap, caplog):
    """A folder written before INT8 was measured per class: ``fast`` runs f32 on every class (never an
    unmeasured INT8, not even where VNNI makes the arithmetic exact) and says how to measure it."""
    legacy = {"f32": ModelVariant(openvino="m.xml"), "int8": ModelVariant(openvino="m.int8.xml")}
    manifest = _manifest(legacy)
    isa = _isa(flags, cap)
    plans, summary = plan_models(manifest, precision="fast", isa=isa)
    assert plans[0].variant == "f32"
    with caplog.at_level(logging.WARNING):
        plans, summary = plan_models(manifest, precision="int8", isa=isa)  # asked for: runs, with a warning
    assert plans[0].variant == "int8" and f"not validated on {isa.cpu_class}" in caplog.text
    assert "not measured" in summary and "--measure" in summary
    assert plan_models(manifest, precision="fast", backend="onnxruntime", isa=isa)[0][0].hint is None


def test_manifest_cpu_classes_round_trip_and_v1_unchanged():
    manifest = _manifest(TWO_INT8)
    data = manifest.to_dict()
    assert data["models"][0]["variants"]["int8-compat"]["cpu_classes"] == ["avx512", "avx2"]
    assert "cpu_classes" not in data["models"][0]["variants"]["f32"]  # absent stays absent (v1 readers)
    back = Manifest.from_dict(data)
    assert back.models[0].variants["int8"].cpu_classes == TWO_INT8["int8"].cpu_classes
    assert back.models[0].variants["f32"].cpu_classes is None
    data["models"][0]["variants"]["int8"]["cpu_classes"] = "avx512"
    with pytest.raises(Exception, match="cpu_classes must be a list"):
        Manifest.from_dict(data)


# ------------------------------------------------------------------------------------------ real models
def _load_report(folder: str, precision: str) -> dict:
    """Child side: compile the folder and read back what every compiled model runs."""
    from birdinfer.runtime.models import load_models

    models = load_models(Manifest.load(folder), precision=precision)
    return {"isa": effective_isa().to_dict(), "precisions": [m.precision for m in models],
            "kernels": [m.kernels for m in models]}


@pytest.mark.parametrize("cpu_class, family", [("avx512", "avx512"), ("avx2", "avx2")])
def test_cap_acts_in_a_child_process(small_model_folder, cpu_class, family):
    """Under the cap, auto runs f32 (read back from the compiled models), and the convolution kernels are the
    capped ISA's: no AVX-512 kernel under AVX2."""
    from conftest import can_emulate  # here: this module is also loaded as a script by the child process

    if not can_emulate(cpu_class):
        pytest.skip(f"this CPU ({effective_isa().native_class}) cannot emulate {cpu_class}")
    report = run_in_cpu_class(cpu_class, f"{Path(__file__).resolve()}:_load_report",
                              {"folder": str(small_model_folder), "precision": "auto"})
    assert report["isa"]["class"] == cpu_class and report["isa"]["cap"] is not None
    assert report["precisions"] == ["f32"] * 4
    kernels = [k for per_model in report["kernels"] for k in per_model]
    assert kernels and all(family in k or "ref" in k for k in kernels), kernels
    if cpu_class == "avx2":
        assert not any("avx512" in k for k in kernels)


def test_every_compile_passes_an_explicit_hint(small_model_folder, monkeypatch):
    import openvino as ov

    from birdinfer.runtime.models import load_models

    configs = []
    original = ov.Core.compile_model

    def spy(self, model, device=None, config=None, *args, **kwargs):
        configs.append(dict(config or {}))
        return original(self, model, device, config or {}, *args, **kwargs)

    monkeypatch.setattr(ov.Core, "compile_model", spy)
    manifest = Manifest.load(small_model_folder).select([Manifest.load(small_model_folder).models[0].name])
    precisions = ("auto", "f32", "fast", "int8")
    for precision in precisions:
        load_models(manifest, precision=precision)
    assert len(configs) == 4
    # Derived from this process's CPU class and the folder's records: f32 always asks for f32; auto and fast
    # (no INT8 variant here) ask for bf16 only where the export recorded bf16 within the bar for this class;
    # explicit int8 (no INT8 variant: its f32 variant) asks for the class's float hint.
    isa, variant = effective_isa(), manifest.models[0].variants["f32"]
    trusted = "bf16" if isa.bf16_native and isa.cpu_class in variant.bf16_classes else "f32"
    assert variant.bf16 is not None and variant.bf16["measured_on"] == isa.cpu_class  # export measured it here
    expected = {"auto": trusted, "f32": "f32", "fast": trusted, "int8": isa.float_hint}
    expected = [expected[p] for p in precisions]
    assert [c.get("INFERENCE_PRECISION_HINT") for c in configs] == expected, configs


def test_bench_cpu_class_report(small_model_folder, tmp_path):
    """The report of an emulated class (AVX-512 where this CPU has it, else AVX2, which every supported CPU can run
    under a cap)."""
    from birdinfer.tools.bench_cpu import run_bench_classes
    from conftest import can_emulate

    cpu_class = "avx512" if can_emulate("avx512") else "avx2"
    report = run_bench_classes(small_model_folder, cpu_class, files=1, compare=["f32"], print_table=False,
                               json_out=tmp_path / "b.json")
    one = report["cpu_classes"][cpu_class]
    assert one["machine"]["cpu_class"]["class"] == cpu_class
    assert [m["mode"] for m in one["modes"]] == ["auto", "f32"]
    for mode in one["modes"]:
        assert cpu_class in mode["precision_plan"] and mode["precision_ran"] == "f32 ×4"
        assert mode["kernel_families"] and all(m["kernels"] for m in mode["models"])
        p = mode["projection"]
        assert p["drops_models"] == (p["seconds"] > p["notebook_budget_seconds"] - 10)
    assert (tmp_path / "b.json").is_file()
