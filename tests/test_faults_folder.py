"""A model folder is checked before any audio is read: every number of its front end and steps in range, every
file name inside the folder (for every backend), and the manifest against the graphs it names (label count
against the output width, the front end's windows against each graph's input). ``submit`` and ``predict``
stop with exit 2 and one sentence on each; nothing is computed.

The folders are real: a tiny network (mel windows → 12 classes × 16 frames, batch of 6 chunks like the 4th
place's) written as ONNX with onnx.helper and as OpenVINO IR, with a version 1 manifest (one mel group, one
model), copied into ``tmp_path`` and edited there."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
import typing
from pathlib import Path

import numpy as np
import pytest

from birdinfer.errors import ModelFolderError
from birdinfer.ops import COMBINE_STEPS, MODEL_STEPS, OPS, ROW_STEPS
from birdinfer.spec.files import sha256_file
from birdinfer.spec.manifest import Manifest

from conftest import REFERENCE_RECIPE, SMALL_RECIPE, recipe_spec, write_ogg

onnx = pytest.importorskip("onnx")
ov = pytest.importorskip("openvino")

REPO = Path(__file__).resolve().parents[1]
LABELS = [f"sp{i:02d}" for i in range(12)]
GROUP = {"name": "g", "n_fft": 512, "hop_length": 128, "n_mels": 32, "fmin": 50.0, "fmax": 16000.0,
         "frames_per_window": 32, "weight": 1.0, "top_db": 80.0}


def _graph(batch, classes: int = 12):
    """(B, 1, 32, 64) mel windows → (B, classes, 16) logits: mean over the mel bands, pooled over 4 frames,
    scaled and shifted per class."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes = [helper.make_node("ReduceMean", ["mel"], ["m"], axes=[2], keepdims=0),
             helper.make_node("AveragePool", ["m"], ["p"], kernel_shape=[4], strides=[4]),
             helper.make_node("Mul", ["p", "w"], ["s"]),
             helper.make_node("Add", ["s", "b"], ["logits"])]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("mel", TensorProto.FLOAT, [batch, 1, 32, 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, classes, 16])],
        [numpy_helper.from_array((rng.standard_normal((1, classes, 1)) * 0.05).astype(np.float32), "w"),
         numpy_helper.from_array(rng.standard_normal((1, classes, 1)).astype(np.float32), "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _write_network(folder: Path, name: str, batch) -> list[str]:
    onnx.save(_graph(batch), str(folder / f"{name}.onnx"))
    ov.save_model(ov.convert_model(str(folder / f"{name}.onnx")), str(folder / f"{name}.xml"), compress_to_fp16=False)
    return [f"{name}.xml", f"{name}.bin", f"{name}.onnx"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """A version 1 folder: one mel group, one model with a fixed batch of 6 chunks, f32 as IR and ONNX."""
    out = tmp_path_factory.mktemp("tiny_v1")
    names = _write_network(out, "m", 6)
    manifest = {
        "format": "birdinfer-model-folder", "format_version": 1, "sample_rate": 32000, "window_seconds": 5.0,
        "chunk_seconds": 10.0, "smoothing": 0.15, "labels": LABELS, "groups": [GROUP],
        "models": [{"name": "m", "arch": "tiny", "group": "g", "weight": 1.0, "input_shape": [6, 1, 32, 64],
                    "frames_per_chunk": 16, "input_name": "mel", "output_name": "logits",
                    "variants": {"f32": {"openvino": "m.xml", "onnx": "m.onnx", "verification": {}}}}],
        "files": {n: sha256_file(out / n) for n in names},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return out


@pytest.fixture(scope="module")
def folder_v2(folder, tmp_path_factory) -> Path:
    """The same network with a dynamic batch, in a version 2 folder (its manifest: the version 1 one's spec)."""
    from birdinfer.spec.upgrade import spec_from_v1

    out = tmp_path_factory.mktemp("tiny_v2")
    names = _write_network(out, "m", "W")
    spec = spec_from_v1(Manifest.load(folder, upgrade=False))
    spec["models"][0]["input_shape"][0] = -1
    spec["files"] = {n: sha256_file(out / n) for n in names}
    (out / "manifest.json").write_text(json.dumps(spec, indent=2))
    return out


@pytest.fixture(scope="module")
def audio(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("audio") / "rec.ogg"
    write_ogg(path, 12.0, seed=3)
    return path


def edited(src: Path, dest: Path, change) -> Path:
    """A copy of the folder ``src`` at ``dest`` whose manifest ``change(data)`` edited."""
    shutil.copytree(src, dest)
    data = json.loads((dest / "manifest.json").read_text())
    change(data)
    (dest / "manifest.json").write_text(json.dumps(data, indent=2))  # NaN is written as the JSON token NaN
    return dest


def refused(models: Path, *patterns: str, **kwargs) -> str:
    """Load the folder as ``Predictor`` does (manifest, then graphs): it must fail with a message holding every pattern."""
    from birdinfer.runtime.pipeline import Predictor

    with pytest.raises(ModelFolderError) as info:
        Predictor(models, precision="f32", pin_decode_thread=False, **kwargs).close()
    message = str(info.value)
    for pattern in patterns:
        assert pattern in message, message
    return message


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "birdinfer.cli", *args], env=env, capture_output=True, text=True,
                          timeout=300)


def assert_one_sentence_before_any_audio(run: subprocess.CompletedProcess, command: str, out: Path) -> str:
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr, run.stderr
    errors = [line for line in run.stderr.splitlines() if line.startswith(f"birdinfer {command}: error: ")]
    assert len(errors) == 1, run.stderr
    assert not out.exists(), "an output was written"
    parts = out.with_name(out.name + ".parts")
    assert not parts.exists() or not any(p.suffix == ".npy" for p in parts.iterdir()), "audio was scored"
    return errors[0]


# ------------------------------------------------------------------------ the CLI, real processes
@pytest.mark.parametrize("command,backend", [("submit", "openvino"), ("predict", "openvino"), ("submit", "onnxruntime"),
                                             ("predict", "onnxruntime")])
def test_ten_labels_for_a_twelve_class_graph_stop_both_commands(folder, audio, tmp_path, command, backend):
    if backend == "onnxruntime":
        pytest.importorskip("onnxruntime")
    models = edited(folder, tmp_path / "models", lambda d: d.update(labels=LABELS[:10]))
    out = tmp_path / ("submission.csv" if command == "submit" else "detections.csv")
    run = run_cli(command, str(audio), "--models", str(models), "--out", str(out), "--precision", "f32", "--backend", backend)
    line = assert_one_sentence_before_any_audio(run, command, out)
    graph = "m.xml" if backend == "openvino" else "m.onnx"
    for needle in (str(models), f"({graph})", "model 'm'", "gives 12 classes", "lists 10 labels"):
        assert needle in line, line


@pytest.mark.parametrize("version,command", [(1, "submit"), (1, "predict"), (2, "submit"), (2, "predict")])
def test_nan_top_db_stops_both_commands(folder, folder_v2, audio, tmp_path, version, command):
    def nan_top_db(d):
        if version == 1:
            d["groups"][0]["top_db"] = math.nan
        else:
            next(s for s in d["features"]["g"]["steps"] if s["op"] == "db")["top_db"] = math.nan

    models = edited(folder if version == 1 else folder_v2, tmp_path / "models", nan_top_db)
    out = tmp_path / "out.csv"
    run = run_cli(command, str(audio), "--models", str(models), "--out", str(out), "--precision", "f32")
    line = assert_one_sentence_before_any_audio(run, command, out)
    where = "mel group 'g': top_db=nan" if version == 1 else "features.g.steps[4] (front-end op 'db'): parameter 'top_db'=nan"
    for needle in (str(models / "manifest.json"), where, "must be a finite number in [0, 1000]"):
        assert needle in line, line


# ------------------------------------------------------------------------- ranges of every parameter
def _numbers_without_range(hint, path: str) -> list[str]:
    """The numeric leaves of a parameter's type hint not wrapped in ``Annotated[..., Range(...)]``."""
    from birdinfer.ops.registry import Range

    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Annotated:
        inner = args[0]
        if inner in (int, float):
            return [] if any(isinstance(m, Range) for m in hint.__metadata__) else [path]
        return _numbers_without_range(inner, path)
    if hint in (int, float):
        return [path]
    if origin is typing.Literal:
        return []
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):  # a parameter made of parts (rank_mean's gates)
        inner = typing.get_type_hints(hint, include_extras=True)
        return [p for name, h in inner.items() for p in _numbers_without_range(h, f"{path}.{name}")]
    return [p for a in args if a is not Ellipsis for p in _numbers_without_range(a, path)]


def test_every_numeric_parameter_declares_a_range_that_admits_every_shipped_spec():
    missing = []
    for registry in (OPS, MODEL_STEPS, ROW_STEPS, COMBINE_STEPS):
        for name in registry.names():
            hints = typing.get_type_hints(registry[name].params, include_extras=True)
            for field, hint in hints.items():
                missing += _numbers_without_range(hint, f"{registry.kind} {name}.{field}")
    assert not missing, missing
    assert len([1 for r in (OPS, MODEL_STEPS, ROW_STEPS) for n in r.names()]) > 20  # the walk saw the registries
    # the ranges admit every spec the project ships or tests: the three solutions, the 4th place, the demo
    from birdinfer.spec.parse import parse_spec
    from birdinfer.spec.manifest import MelGroup

    for path in sorted((REPO / "weights").glob("*.spec.json")):
        parse_spec(json.loads(path.read_text()), require_files=False, source=str(path))
    for recipe in (json.loads(REFERENCE_RECIPE.read_text()), json.loads((REPO / "export" / "data" / "birdclef2025_4th.json").read_text()),
                   SMALL_RECIPE):
        recipe_spec(recipe)  # the 4th place's groups as version 1 and as the spec they run as


def test_the_demo_mel_group_is_within_the_ranges():
    """The demo's training group (the torch side: skipped where torch is not installed, e.g. a runtime-only venv)."""
    pytest.importorskip("torch")
    from birdinfer.spec.manifest import MelGroup

    sys.path.insert(0, str(REPO))
    try:
        from train.demo import DEMO_GROUP
    finally:
        sys.path.remove(str(REPO))
    MelGroup.from_dict(DEMO_GROUP.to_dict()).validate()


BAD = [  # (registry, {"op"/"step": name, ...valid params}, parameter, bad value, the range the message gives)
    (OPS, {"op": "stft", "n_fft": 1024, "hop_length": 320}, "n_fft", 10**9, "a whole number in [2, 65536]"),
    (OPS, {"op": "stft", "n_fft": 1024, "hop_length": 320}, "hop_length", -320, "a whole number in [1, 65536]"),
    (OPS, {"op": "stft", "n_fft": 1024, "hop_length": 320}, "n_fft", math.inf, "a whole number in [2, 65536]"),
    (OPS, {"op": "stft", "n_fft": 1024, "hop_length": 320}, "n_fft", 10**400, "a whole number in [2, 65536]"),
    (OPS, {"op": "mel", "n_mels": 64}, "n_mels", 10**9, "a whole number in [1, 4096]"),
    (OPS, {"op": "mel", "n_mels": 64}, "fmin", math.nan, "a finite number in [0, 1000000]"),
    (OPS, {"op": "db"}, "top_db", math.nan, "a finite number in [0, 1000]"),
    (OPS, {"op": "db"}, "amin", 0.0, "a finite number in (0, 1000000]"),
    (OPS, {"op": "resize_time", "frames_per_row": 256}, "frames_per_row", 2.5, "a whole number in [1, 100000]"),
    (OPS, {"op": "pad"}, "left_seconds", -1.0, "a finite number in [0, 3600]"),
    (OPS, {"op": "pad", "fit": {"hop_length": 500, "length_frames": 512, "step_frames": 128}}, "fit",
     {"hop_length": 0, "length_frames": 512, "step_frames": 128}, "a whole number in [1, 1000000]"),
    (OPS, {"op": "windows", "length_seconds": 5.0, "step_seconds": 5.0}, "length_seconds", 1e9, "a finite number in (0, 3600]"),
    (OPS, {"op": "normalize", "method": "affine"}, "scale", math.inf, "a finite number in [-1e+09, 1e+09]"),
    (OPS, {"op": "normalize", "method": "zscore"}, "ddof", 2, "a whole number in [0, 1]"),
    (OPS, {"op": "channels"}, "repeat", 10**6, "a whole number in [1, 64]"),
    (OPS, {"op": "crop_time", "length": 320}, "start", -1, "a whole number in [0, 1000000]"),
    (OPS, {"op": "gain", "factor": 2.0}, "factor", math.nan, "a finite number in [-1e+09, 1e+09]"),
    (MODEL_STEPS, {"step": "timeline_rows"}, "shifts", [{"frames": math.inf, "weight": 1.0}], "a finite number in [-1000000, 1000000]"),
    (MODEL_STEPS, {"step": "softmax"}, "axis", 7, "a whole number in [-3, 2]"),
    (ROW_STEPS, {"step": "smooth", "kernel": [0.25, 0.5, 0.25]}, "kernel", [0.25, math.nan, 0.25], "a finite number in [-1000000, 1000000]"),
    (ROW_STEPS, {"step": "gaussian_smooth", "sigma": 1.0}, "sigma", 0.0, "a finite number in (0, 10000]"),
    (ROW_STEPS, {"step": "file_max_blend", "weight": 0.5}, "weight", 1.5, "a finite number in [0, 1]"),
    (ROW_STEPS, {"step": "power", "exponent": 2.0}, "exponent", math.nan, "a finite number in (0, 100]"),
    (ROW_STEPS, {"step": "box_mean"}, "size", 10**7, "a whole number in [1, 10001]"),
]


@pytest.mark.parametrize("registry,entry,param,value,allowed", BAD, ids=[f"{e.get('op', e.get('step'))}.{p}={v!r:.12}" for _, e, p, v, _ in BAD])
def test_a_number_out_of_range_is_refused_naming_the_value_and_the_range(registry, entry, param, value, allowed):
    name = entry.get("op") or entry.get("step")
    registry.parse(entry, where="spec.json: features.f.steps[0]")  # the entry is good as it is
    with pytest.raises(ModelFolderError) as info:
        registry.parse({**entry, param: value}, where="spec.json: features.f.steps[0]")
    message = str(info.value)
    assert message.startswith(f"spec.json: features.f.steps[0] ({registry.kind} {name!r}): parameter {param!r}="), message
    assert f"must be {allowed}" in message, message
    assert len(message) < 300, message  # a 400-digit number is cut short


def test_relations_between_parameters_and_the_nyquist_frequency(tmp_path):
    from birdinfer.spec.parse import parse_spec

    def spec(**mel):
        feature = [{"op": "windows", "length_seconds": 5.0, "step_seconds": 5.0},
                   {"op": "stft", "n_fft": 1024, "hop_length": 320}, {"op": "mel", "n_mels": 32, **mel}]
        return {"format": "birdinfer-model-folder", "format_version": 2, "sample_rate": 32000, "labels": ["a"],
                "features": {"f": {"steps": feature}},
                "models": [{"name": "m", "input": "f", "input_shape": [-1, 32, 501],
                            "outputs": [{"name": "o", "kind": "clip_logits"}], "steps": [{"step": "clip_rows"}],
                            "variants": {"f32": {"openvino": "m.xml"}}}], "ensemble": {}}

    parse_spec(spec(fmax=16000.0), require_files=False)  # at the Nyquist frequency: allowed, as before
    with pytest.raises(ModelFolderError, match=r"fmax=16001 is above the Nyquist frequency 16000 Hz"):
        parse_spec(spec(fmax=16001.0), require_files=False)
    with pytest.raises(ModelFolderError, match=r"fmin=20000 must be below fmax, which defaults to the Nyquist frequency"):
        parse_spec(spec(fmin=20000.0), require_files=False)
    with pytest.raises(ModelFolderError, match=r"need fmin < fmax, got fmin=8000, fmax=4000"):
        parse_spec(spec(fmin=8000.0, fmax=4000.0), require_files=False)
    with pytest.raises(ModelFolderError, match=r"win_length=2048 must be <= n_fft=1024"):
        OPS.parse({"op": "stft", "n_fft": 1024, "hop_length": 320, "win_length": 2048}, where="spec.json")
    with pytest.raises(ModelFolderError, match=r"need min <= max, got min=1, max=0"):
        ROW_STEPS.parse({"step": "clip_values", "min": 1.0, "max": 0.0}, where="spec.json")


@pytest.mark.parametrize("change,message", [
    (lambda d: d["groups"][0].update(n_fft=10**9), "mel group 'g': n_fft=1000000000: must be a whole number in [2, 65536]"),
    (lambda d: d["groups"][0].update(n_mels=10**9), "mel group 'g': n_mels=1000000000: must be a whole number in [1, 4096]"),
    (lambda d: d["groups"][0].update(hop_length=-64), "mel group 'g': hop_length=-64: must be a whole number in [1, 65536]"),
    (lambda d: d["groups"][0].update(frames_per_window=32.5), "frames_per_window=32.5: must be a whole number in [1, 100000]"),
    (lambda d: d.update(sample_rate=math.nan), "sample_rate=nan: must be a whole number"),
    (lambda d: d.update(labels="sp00"), "'labels' must be a list of class names, got 'sp00'"),
], ids=["n_fft", "n_mels", "hop", "frames_per_window", "sample_rate", "labels"])
def test_version_1_numbers_are_checked_with_the_ranges_of_the_ops_they_become(folder, tmp_path, change, message):
    models = edited(folder, tmp_path / "models", change)
    for upgrade in (True, False):
        with pytest.raises(ModelFolderError) as info:
            Manifest.load(models, upgrade=upgrade)
        assert str(info.value).startswith(str(models / "manifest.json")), info.value
        assert message in str(info.value), info.value


@pytest.mark.parametrize("change,message", [
    (lambda d: d["models"][0].update(pad_value=math.nan), "models['m'].pad_value=nan: must be a finite number"),
    (lambda d: d["models"][0]["input_shape"].__setitem__(2, 10**9), "models['m'].input_shape[2]=1000000000: must be a whole number in [-1, 10000000]"),
    (lambda d: d.update(rows={"seconds": math.inf}), "rows.seconds=inf: must be a finite number in (0, 3600]"),
    (lambda d: d.update(block_seconds=-60), "block_seconds=-60: must be a finite number in (0, 1000000]"),
    (lambda d: d["models"][0].update(weight=math.inf), "models['m'].weight=inf: must be a finite number in [0, 1000000]"),
], ids=["pad_value", "input_shape", "rows", "block_seconds", "weight"])
def test_version_2_manifest_numbers_in_range(folder_v2, tmp_path, change, message):
    models = edited(folder_v2, tmp_path / "models", change)
    with pytest.raises(ModelFolderError) as info:
        Manifest.load(models)
    assert str(info.value).startswith(str(models / "manifest.json")) and message in str(info.value), info.value


# ------------------------------------------------------------------------------- file names
def test_file_names_escaping_the_folder_are_refused_at_load_for_every_backend(folder, audio, tmp_path):
    escapes = {
        "onnx_up": lambda d: d["models"][0]["variants"]["f32"].update(onnx="../x.onnx"),
        "onnx_abs": lambda d: d["models"][0]["variants"]["f32"].update(onnx="/etc/x.onnx"),
        "files": lambda d: d["files"].update({"../extra.bin": "0" * 64}),
    }
    for name, change in escapes.items():
        models = edited(folder, tmp_path / name, change)
        for upgrade in (True, False):  # as it runs and as written (the INT8 variant writers, export)
            with pytest.raises(ModelFolderError, match="must be a plain name inside the model folder"):
                Manifest.load(models, upgrade=upgrade)
    linked = edited(folder, tmp_path / "linked", lambda d: d["models"][0]["variants"]["f32"].update(onnx="link.onnx"))
    (tmp_path / "outside.onnx").write_bytes(b"not a model")
    (linked / "link.onnx").symlink_to(tmp_path / "outside.onnx")
    for upgrade in (True, False):
        with pytest.raises(ModelFolderError, match="'link.onnx' resolves outside the model folder"):
            Manifest.load(linked, upgrade=upgrade)
    out = tmp_path / "out.csv"  # an ONNX-only name stops `predict` on the OpenVINO backend, which never reads it
    run = run_cli("predict", str(audio), "--models", str(tmp_path / "onnx_up"), "--out", str(out), "--backend", "openvino")
    line = assert_one_sentence_before_any_audio(run, "predict", out)
    assert "'../x.onnx' must be a plain name inside the model folder" in line, line


# ----------------------------------------------------------------------------- graphs at load
@pytest.mark.parametrize("backend", ["openvino", "onnxruntime"])
def test_the_front_end_must_fit_each_graph_input(folder, tmp_path, backend):
    if backend == "onnxruntime":
        pytest.importorskip("onnxruntime")

    def sixteen_mels(d):  # consistent in the manifest, wrong for the graph (32 mel bands)
        d["groups"][0]["n_mels"] = 16
        d["models"][0]["input_shape"][2] = 16

    refused(edited(folder, tmp_path / "mels", sixteen_mels), "model 'm' (m.", "graph's input 'mel' is [6, 1, 32, 64]",
            "feature 'g' gives windows of [1, 16, 64]", "dimension 2 is 32 in the graph and 16 from the manifest",
            backend=backend)

    def longer_windows(d):  # 48 frames per row: 96 per window, the graph takes 64
        d["groups"][0]["frames_per_window"] = 48
        d["models"][0]["input_shape"][3] = 96

    refused(edited(folder, tmp_path / "frames", longer_windows), "dimension 3 is 64 in the graph and 96", backend=backend)
    refused(edited(folder, tmp_path / "batch", lambda d: d["models"][0]["input_shape"].__setitem__(0, -1)),
            "the graph takes batches of exactly 6 windows but the manifest's input_shape[0] is -1", backend=backend)
    refused(edited(folder, tmp_path / "name", lambda d: d["models"][0].update(input_name="spec")),
            "the graph has no input named 'spec' (its inputs: mel)", backend=backend)


def test_outputs_must_fit_the_graph_and_label_maps_are_counted(folder, folder_v2, tmp_path):
    refused(edited(folder, tmp_path / "frames", lambda d: d["models"][0].update(frames_per_chunk=20)),
            "output 'logits' is [6, 12, 16] in the graph but [?, 12, 20] in the manifest (dimension 2: 16 against 20)")
    refused(edited(folder_v2, tmp_path / "index", lambda d: d["models"][0]["outputs"][0].update(index=1)),
            "output 'logits' is graph output 1, but the graph has 1 output(s)")

    def clip_kind(d):
        d["models"][0]["outputs"][0].update(kind="clip_logits", shape=None)
        d["models"][0]["steps"] = [{"step": "sigmoid"}, {"step": "clip_rows"}]

    refused(edited(folder_v2, tmp_path / "kind", clip_kind), "a clip_logits output must be (windows, classes)")

    def label_map(labels):
        def change(d):
            d["labels"] = labels
            d["models"][0]["outputs"][0]["shape"] = None
            d["models"][0]["label_map"] = {"labels": LABELS, "fill": 0.0}
        return change

    # 12 graph classes mapped onto 5 of them plus 2 new labels: loads, the new ones filled
    from birdinfer.runtime.pipeline import Predictor

    mapped = edited(folder_v2, tmp_path / "mapped", label_map(LABELS[:5] + ["x", "y"]))
    Predictor(mapped, precision="f32", pin_decode_thread=False).close()

    def short_map(d):
        label_map(LABELS[:5] + ["x", "y"])(d)
        d["models"][0]["label_map"]["labels"] = LABELS[:10]

    refused(edited(folder_v2, tmp_path / "short", short_map), "gives 12 classes (graph shape [?, 12, 16]), but its label map lists 10 labels")


def test_untouched_folders_run_a_dynamic_dimension_is_accepted_and_a_static_class_axis_still_checked(
        folder, folder_v2, audio, tmp_path):
    from birdinfer.runtime.pipeline import Predictor

    for models in (folder, folder_v2):  # folder_v2: batch '?' in the graph, -1 in the manifest
        predictor = Predictor(models, precision="f32", pin_decode_thread=False)
        try:
            probs = predictor.predict_file(audio)
        finally:
            predictor.close()
        assert probs.shape == (2, 12) and np.isfinite(probs).all() and np.ptp(probs) > 0
    refused(edited(folder_v2, tmp_path / "labels", lambda d: d.update(labels=LABELS + ["extra"]) or
                   d["models"][0]["outputs"][0].update(shape=None)),
            str(tmp_path / "labels"), "(m.xml)", "gives 12 classes (graph shape [?, 12, 16]), but the manifest lists 13 labels")


def test_frames_per_row_of_a_frame_output_must_be_whole(folder_v2, tmp_path):
    def thirty_frames_per_row(d):  # windows of 64 frames at 30 per row span 2.13 rows: 16 output frames, 7.5 per row
        for step in d["features"]["g"]["steps"]:
            if step["op"] == "resize_time":
                step["frames_per_row"] = 30
            if step["op"] == "windows":
                step["step_frames"] = 60

    refused(edited(folder_v2, tmp_path / "fpr", thirty_frames_per_row),
            "output 'logits' has 16 frames per window, which spans 2.13333 rows of 5 s: 7.5 frames per row, not a whole number")
