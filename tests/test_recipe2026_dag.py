"""Models on other models' outputs (issue 21, items 1 and 4): a Perch-v2-shaped stand-in, a probe on its
embedding with per-file context, a sequence model on the file's embeddings, and a SED CNN, fused by rank.

The stand-in is Perch v2's interface with a small body: input float32 ``[N, 160000]`` (5 s at 32 kHz), an in-graph
spectrogram (a Hann-windowed DFT as a strided convolution, power, a mel-like matrix, log), outputs ``label``
``[N, 14795]`` and ``embedding`` ``[N, 1536]``; random weights (torch → ONNX). Its 14,795 classes are mapped onto
six competition classes by scientific name (genus fallback) from a labels CSV. ``birdinfer import`` turns the ONNX
graphs into OpenVINO IR and birdinfer runs them; the reference runs the same ONNX files with ONNX Runtime and
writes everything around them (windows, label map, context, sigmoid, frame max, rank fusion, smoothing) in numpy
here. Members within 1e-4 (float32, two backends); the fused rows where a rank swap cannot explain a difference
(:func:`swap_allowance` and the test say how the bound is derived).
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.stats
import soundfile as sf

from birdinfer.errors import ModelFolderError
from birdinfer.spec.manifest import Manifest
from birdinfer.spec.parse import parse_spec

from conftest import write_ogg
from test_recipe2026_steps import LABELS, TAXONOMY  # the same six competition classes and their taxonomy

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

SR = 32000
ROW = 5 * SR
N_PERCH, EMB = 14795, 1536
#: Where the stand-in's label list holds the competition's species: direct names, the genus of ``strvar`` twice
#: (the max of both), ``frog1``'s genus alone; ``insect9`` has neither (filled). The last class is a direct one.
DIRECT = {"amecro": [100], "tytalb": [7000], "bubvir": [N_PERCH - 1], "strvar": [5, 12000], "frog1": [300], "insect9": []}
NAMES = {100: "Corvus brachyrhynchos", 7000: "Tyto alba", N_PERCH - 1: "Bubo virginianus", 5: "Strix aluco",
         12000: "Strix nebulosa", 300: "Leptodactylus"}
FILL = -8.0
#: BirdCLEF-2026-style names: a 3 s file (one zero-filled row), a 12.3 s one, a full minute, and a 130 s one (run
#: block by block by the streamed whole-file executor).
FILES = [("BC2026_Test_0001_S05_20250227_010002.ogg", 3.0, 1), ("BC2026_Test_0002_S07_20250301_140000.ogg", 12.3, 2),
         ("BC2026_Test_0003_S09_20250301_050000.ogg", 60.0, 3), ("BC2026_Test_0004_S13_20250302_233000.ogg", 130.0, 4)]
WEIGHTS = {"sed": 0.4, "perch": 0.2, "probe": 0.2, "seq": 0.2}


# ------------------------------------------------------------------------------------------ the graphs
class PerchLike(torch.nn.Module):
    """Perch v2's interface, a small body: waveform → in-graph spectrogram → conv body → label, embedding."""

    def __init__(self, n_fft: int = 512, hop: int = 320, n_mels: int = 32, width: int = 48):
        super().__init__()
        k, f = np.arange(n_fft), np.arange(n_fft // 2 + 1)
        window = 0.5 - 0.5 * np.cos(2 * np.pi * k / n_fft)
        phase = 2 * np.pi * np.outer(f, k) / n_fft
        dft = np.concatenate([np.cos(phase) * window, -np.sin(phase) * window])[:, None, :]
        rng = np.random.default_rng(0)
        self.register_buffer("dft", torch.tensor(dft, dtype=torch.float32))
        self.register_buffer("mel", torch.tensor(rng.random((n_fft // 2 + 1, n_mels)) / n_fft, dtype=torch.float32))
        self.hop, self.bins, self.width = hop, n_fft // 2 + 1, width
        self.body = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(),
                                        torch.nn.Conv2d(8, width, 3, stride=2, padding=1), torch.nn.ReLU())
        self.head = torch.nn.Linear(width, N_PERCH)
        self.embed = torch.nn.Linear(width, EMB)

    def forward(self, x):
        s = torch.nn.functional.conv1d(x[:, None, :], self.dft, stride=self.hop)
        power = s[:, : self.bins] ** 2 + s[:, self.bins :] ** 2
        m = torch.log(torch.matmul(power.transpose(1, 2), self.mel) + 1e-3)
        h = self.body(m[:, None]).mean(dim=(2, 3))
        # what differs between windows, not their common level. (Width 48: OpenVINO 2026.4.1's CPU plugin segfaults on
        # a layer norm whose width is not a multiple of 16 (8, 20, 24, 40, 56, 100) under ONEDNN_MAX_CPU_ISA=AVX2 on a
        # Zen 4; 16, 48, 96, 1536 run.)
        h = torch.nn.functional.layer_norm(h, (self.width,))
        return self.head(h) * 3.0, self.embed(h) * 3.0


class Probe(torch.nn.Module):
    """An MLP probe on the embedding and its file's mean and std (1536 · 3 → 6 logits)."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(3 * EMB, 64), torch.nn.ReLU(), torch.nn.Linear(64, len(LABELS)))

    def forward(self, x):
        return self.net(x) * 8.0


class Sequence(torch.nn.Module):
    """A small sequence model on a file's embeddings ``[1, T, 1536]`` → ``[1, T, 6]`` (neighbours and the file mean)."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(EMB, 32)
        self.conv = torch.nn.Conv1d(32, 32, 3, padding=1)
        self.out = torch.nn.Linear(32, len(LABELS))

    def forward(self, e):
        h = torch.relu(self.proj(e))
        h = h + self.conv(h.transpose(1, 2)).transpose(1, 2) + h.mean(dim=1, keepdim=True)
        return self.out(h) * 4.0


class Sed(torch.nn.Module):
    """A SED CNN on the waveform: ``[N, 160000]`` → frame logits ``[N, 6, 10]``."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv1d(1, 16, 1600, stride=1600)
        self.head = torch.nn.Conv1d(16, len(LABELS), 1)

    def forward(self, x):
        h = torch.nn.functional.max_pool1d(torch.relu(self.conv(x[:, None, :]) * 20.0), 10)
        return self.head(h) * 2.0


def _export(net, example, path: Path, inputs: list[str], outputs: list[str], dynamic: dict) -> None:
    torch.manual_seed(0)
    torch.onnx.export(net.eval(), example, str(path), input_names=inputs, output_names=outputs, dynamic_axes=dynamic,
                      opset_version=17, dynamo=False)


def _spec() -> dict:
    wave = {"windows": {"steps": [{"op": "windows", "length_seconds": 5.0, "step_seconds": 5.0}]}}
    models = [
        {"name": "sed", "input": "windows", "input_shape": [-1, ROW],
         "outputs": [{"name": "frames", "kind": "frame_logits"}],
         "steps": [{"step": "sigmoid"}, {"step": "timeline_rows", "reduce": "max"}], "variants": {"f32": {"onnx": "sed.onnx"}}},
        {"name": "perch", "input": "windows", "input_shape": [-1, ROW],
         "outputs": [{"name": "label", "kind": "clip_logits", "index": 0},
                     {"name": "embedding", "kind": "embedding", "index": 1, "shape": [-1, EMB]}],
         "steps": [{"step": "label_map", "labels": "perch_labels.csv", "taxonomy": "taxonomy.csv", "output": "label",
                    "fill": FILL},
                   {"step": "sigmoid", "output": "label"}, {"step": "clip_rows", "output": "label"}],
         "variants": {"f32": {"onnx": "perch.onnx"}}},
        {"name": "probe", "input": {"model": "perch", "output": "embedding", "context": ["mean", "std"]},
         "input_shape": [-1, 3 * EMB], "outputs": [{"name": "logits", "kind": "clip_logits"}],
         "steps": [{"step": "sigmoid"}, {"step": "clip_rows"}], "variants": {"f32": {"onnx": "probe.onnx"}}},
        {"name": "seq", "input": {"model": "perch", "output": "embedding", "sequence": True},
         "input_shape": [1, -1, EMB], "outputs": [{"name": "logits", "kind": "clip_logits"}],
         "steps": [{"step": "sigmoid"}, {"step": "clip_rows"}], "variants": {"f32": {"onnx": "seq.onnx"}}},
    ]
    return {"format": "birdinfer-model-folder", "format_version": 2, "sample_rate": SR, "labels": LABELS,
            "rows": {"seconds": 5.0}, "block_seconds": None, "features": wave, "models": models,
            "ensemble": {"members": [{"model": m, "weight": w} for m, w in WEIGHTS.items()],
                         "steps": [{"step": "rank_mean", "scope": "submission"}, {"step": "smooth", "kernel": [0.1, 0.8, 0.1]}]}}



def write_perch_labels(folder: Path, named: dict[int, str] | None = None) -> None:
    """The stand-in's ``perch_labels.csv``: ``Genus<i> species<i>`` for each of its classes, ``named`` (default
    :data:`NAMES`) where set."""
    names = [f"Genus{i} species{i}" for i in range(N_PERCH)]
    for i, name in (NAMES if named is None else named).items():
        names[i] = name
    (folder / "perch_labels.csv").write_text("inat2024_fsd50k\n" + "\n".join(names) + "\n")


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("dag_src")
    torch.manual_seed(1)
    _export(PerchLike(), torch.zeros(2, ROW), src / "perch.onnx", ["x"], ["label", "embedding"],
            {"x": {0: "n"}, "label": {0: "n"}, "embedding": {0: "n"}})
    _export(Probe(), torch.zeros(2, 3 * EMB), src / "probe.onnx", ["x"], ["logits"], {"x": {0: "n"}, "logits": {0: "n"}})
    _export(Sequence(), torch.zeros(1, 3, EMB), src / "seq.onnx", ["e"], ["logits"], {"e": {1: "t"}, "logits": {1: "t"}})
    _export(Sed(), torch.zeros(2, ROW), src / "sed.onnx", ["x"], ["frames"], {"x": {0: "n"}, "frames": {0: "n"}})
    write_perch_labels(src)
    (src / "taxonomy.csv").write_text(TAXONOMY)
    (src / "spec.json").write_text(json.dumps(_spec(), indent=1))
    return src


@pytest.fixture(scope="module")
def folder(source, tmp_path_factory) -> Path:
    from birdinfer.tools.importer import import_folder

    out = tmp_path_factory.mktemp("dag") / "models"
    import_folder(source / "spec.json", out, measure=False)
    return out


@pytest.fixture(scope="module")
def soundscapes(tmp_path_factory) -> Path:
    audio = tmp_path_factory.mktemp("dag_audio")
    for name, seconds, seed in FILES:
        write_ogg(audio / name, seconds, seed=seed)
    return audio


# ------------------------------------------------------------------------------------ the transcription
def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


def _windows(path: Path) -> np.ndarray:
    """The file's 5 s windows (a trailing part dropped; a file shorter than 5 s zero-filled to one window)."""
    y, sr = sf.read(path, dtype="float32")
    assert sr == SR
    n = max(1, len(y) // ROW)
    return np.concatenate([y, np.zeros(ROW, np.float32)])[: n * ROW].reshape(n, ROW)


def _session(src: Path, name: str):
    return ort.InferenceSession(str(src / f"{name}.onnx"), providers=["CPUExecutionProvider"])


def reference(src: Path, paths: list[Path]) -> tuple[dict[str, list[np.ndarray]], list[np.ndarray]]:
    """Per file every member's rows (ONNX Runtime + numpy), then the rank fusion over all files and the smoothing."""
    sessions = {n: _session(src, n) for n in WEIGHTS}
    members: dict[str, list[np.ndarray]] = {n: [] for n in WEIGHTS}
    for path in paths:
        x = _windows(path)
        label, emb = sessions["perch"].run(["label", "embedding"], {"x": x})
        mapped = np.full((len(x), len(LABELS)), FILL)
        for c, name in enumerate(LABELS):
            if DIRECT[name]:
                mapped[:, c] = label[:, DIRECT[name]].max(axis=1)  # direct, or the max over the genus
        members["perch"].append(sigmoid(mapped))
        context = np.concatenate([emb, np.repeat(emb.mean(0, keepdims=True), len(emb), 0),
                                  np.repeat(emb.std(0, keepdims=True), len(emb), 0)], axis=1)
        members["probe"].append(sigmoid(sessions["probe"].run(None, {"x": context.astype(np.float32)})[0]))
        members["seq"].append(sigmoid(sessions["seq"].run(None, {"e": emb[None]})[0][0]))
        members["sed"].append(sigmoid(sessions["sed"].run(None, {"x": x})[0]).max(axis=2))
    ranked = {}
    for name, rows in members.items():  # per class over the rows of every file, ties averaged, in [0, 1]
        whole = np.concatenate(rows)
        ranks = np.stack([scipy.stats.rankdata(whole[:, c]) for c in range(whole.shape[1])], axis=1)
        ranked[name] = np.split((ranks - 1) / (len(whole) - 1), np.cumsum([len(r) for r in rows])[:-1])
    fused = [_smooth(sum(w * ranked[n][f] for n, w in WEIGHTS.items()) / sum(WEIGHTS.values())) for f in range(len(paths))]
    return members, fused


def _smooth(p: np.ndarray) -> np.ndarray:
    """Row r = 0.1·row(r−1) + 0.8·row(r) + 0.1·row(r+1), a missing neighbour replaced by the edge row."""
    padded = np.concatenate([p[:1], p, p[-1:]])
    return 0.1 * padded[:-2] + 0.8 * padded[1:-1] + 0.1 * padded[2:]


def swap_allowance(reference_rows: np.ndarray, got: np.ndarray) -> np.ndarray:
    """How far a member's unit rank ``(rank − 1)/(R − 1)`` per class may move because of float noise, per row and class.

    Every value of ``got`` is within δ of the reference (δ = the largest difference plus 1e-7 for the CSV's float32
    rounding). Two rows can then change order only where their reference values are closer than 2δ, so row ``i``'s
    rank moves by at most the number of other rows within 2δ of it (ties included): the allowance is that count over
    ``R − 1``. Rows exactly tied in the reference (the class the label map fills) must be tied in ``got`` too."""
    delta = float(np.abs(got - reference_rows).max()) + 1e-7
    allowance = np.zeros(reference_rows.shape)
    for c in range(reference_rows.shape[1]):
        if np.ptp(reference_rows[:, c]) == 0:
            assert np.ptp(got[:, c]) == 0
            continue
        close = np.abs(reference_rows[:, c, None] - reference_rows[None, :, c]) < 2 * delta
        allowance[:, c] = (close.sum(axis=1) - 1) / (len(reference_rows) - 1)
    return allowance


def swap_prone(values: np.ndarray, bound: float) -> np.ndarray:
    """Cells whose value lies within ``bound`` of another row's in its column: two rows further apart than the
    members' error keep their order, so only these can change rank between birdinfer and the transcription."""
    out = np.zeros(values.shape, dtype=bool)
    for c in range(values.shape[1]):
        order = np.argsort(values[:, c], kind="stable")
        close = np.diff(values[order, c]) <= bound
        out[order[1:][close], c] = out[order[:-1][close], c] = True
    return out


# ---------------------------------------------- the 2026 scripts' gates after the rank blend (2nd and 5th place)
#: The sonotype groups both scripts mirror (``MIRROR_PAIRS``): each column of a group takes the group's row max.
SONOTYPE_GROUPS = (("47158son15", "47158son16"), ("47158son09", "47158son12"), ("47158son02", "47158son14"),
                   ("47158son13", "47158son21", "47158son22", "47158son23"))


def pct_ranks(values: np.ndarray) -> np.ndarray:
    """pandas ``rank(axis=0, pct=True)`` (ties averaged) over every row of the submission."""
    return pd.DataFrame(values).rank(axis=0, pct=True).to_numpy(np.float64)


def temporal_context(p: np.ndarray, counts: list[int]) -> np.ndarray:
    """The scripts' ``pa_ctx``: per file of more than one row, ``p`` smoothed over its rows with the kernel
    ``(1 + (k/1.2)²/2)^−1.5``, ``k = −3 … 3``, normalised, the edge rows repeated; a file of one row unchanged."""
    offsets = np.arange(-3, 4, dtype=np.float64)
    kernel = (1.0 + (offsets / 1.2) ** 2 / 2.0) ** -1.5
    kernel /= kernel.sum()
    out, start = np.array(p, np.float64), 0
    for n in counts:
        if n > 1:
            padded = np.pad(p[start:start + n], ((3, 3), (0, 0)), mode="edge")
            out[start:start + n] = sum(kernel[i] * padded[i:i + n] for i in range(7))
        start += n
    return out


def mirror_groups(sub: np.ndarray, labels, groups) -> np.ndarray:
    """Gate 4: a group with at least two of its labels among ``labels`` gets the row max over them."""
    index = {label: i for i, label in enumerate(labels)}
    out = np.array(sub, np.float64)
    for group in groups:
        cols = [index[label] for label in group if label in index]
        if len(cols) >= 2:
            out[:, cols] = out[:, cols].max(axis=1, keepdims=True)
    return out


def spread_over_groups(mask: np.ndarray, labels, groups) -> np.ndarray:
    """A cell flagged in one column of a mirrored group flags the row's whole group (the max reads them all)."""
    index = {label: i for i, label in enumerate(labels)}
    out = mask.copy()
    for group in groups:
        cols = [index[label] for label in group if label in index]
        if len(cols) >= 2:
            out[:, cols] = out[:, cols].any(axis=1, keepdims=True)
    return out


def near(values: np.ndarray, threshold, bound: float) -> np.ndarray:
    """Cells within ``bound`` of ``threshold``: where a value off by ``bound`` could fall on the other side of it."""
    return np.abs(values - threshold) <= bound


def fused_bound(allowance: dict[str, np.ndarray], counts: list[int]) -> np.ndarray:
    """How far the fused rows may be from the reference's: the weighted mean of the members' swap allowances,
    smoothed per file as the ranks are (|smooth(a) − smooth(b)| ≤ smooth(|a − b|) for a kernel of non-negative
    taps), plus 1e-6 for the float error of the mean and the smoothing."""
    mean = sum(w * allowance[n] for n, w in WEIGHTS.items()) / sum(WEIGHTS.values())
    return np.concatenate([_smooth(part) for part in np.split(mean, np.cumsum(counts)[:-1])]) + 1e-6


# ---------------------------------------------------------------------------------------------- tests
def test_perch_stand_in_has_perch_v2_shapes(source):
    session = _session(source, "perch")
    assert [(i.name, i.shape[1]) for i in session.get_inputs()] == [("x", ROW)]
    label, emb = session.run(["label", "embedding"], {"x": np.zeros((3, ROW), np.float32)})
    assert label.shape == (3, N_PERCH) and emb.shape == (3, EMB)


def test_members_and_fused_rows_against_onnxruntime_transcription(folder, source, soundscapes, tmp_path, caplog):
    """``birdinfer submit --member-rows`` on a 3 s, a 12.3 s, a 60 s and a 130 s file (the last streamed block by
    block). Members within 1e-4 of the transcription (OpenVINO against ONNX Runtime, float32); the probe and the
    sequence model see their file's embeddings (context and sequence over the whole file). Fused rows: rank fusion
    turns a difference into a swap only between rows closer than twice a member's largest difference
    (:func:`swap_allowance`); the fused rows agree within what such swaps can move them, plus 1e-6 (float error of
    the weighted mean and the smoothing), and that allowance is 0 for most rows and classes."""
    from birdinfer.cli import main

    out, member_dir = tmp_path / "submission.csv", tmp_path / "members"
    with caplog.at_level(logging.INFO):
        assert main(["submit", str(soundscapes), "--models", str(folder), "--out", str(out), "--precision", "f32",
                     "--member-rows", str(member_dir)]) == 0
    paths = sorted(soundscapes.iterdir())
    members, fused = reference(source, paths)
    counts, allowance = [len(r) for r in members["sed"]], {}
    assert counts == [1, 2, 12, 26]
    ids = [f"{p.stem}_{5 * (k + 1)}" for p, n in zip(paths, counts) for k in range(n)]
    for name, want in members.items():
        table = pd.read_csv(member_dir / f"{name}.csv")
        assert list(table.row_id) == ids
        got, want = table[LABELS].to_numpy(), np.concatenate(want)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4, err_msg=name)
        assert np.ptp(want, axis=0).max() > 2e-2  # rows differ (200× the tolerance): the comparison is not vacuous
        allowance[name] = swap_allowance(want, got)
    # the context and the sequence are the whole file's: the 130 s file's rows differ from its blocks' alone
    probe_long = members["probe"][3]
    sessions = _session(source, "perch"), _session(source, "probe")
    _, emb = sessions[0].run(["label", "embedding"], {"x": _windows(paths[3])[:12]})
    alone = sigmoid(sessions[1].run(None, {"x": np.concatenate([emb, np.repeat(emb.mean(0, keepdims=True), 12, 0),
                                                                np.repeat(emb.std(0, keepdims=True), 12, 0)], 1)})[0])
    assert np.abs(alone - probe_long[:12]).max() > 1e-3
    sub = pd.read_csv(out)
    assert list(sub.row_id) == ids
    bound = fused_bound(allowance, counts)
    diff = np.abs(sub[LABELS].to_numpy() - np.concatenate(fused))
    assert (diff <= bound).all(), f"largest excess {(diff - bound).max():g}"
    assert (bound == 1e-6).mean() > 0.5  # no swap is possible for most rows and classes: there the bound is 1e-6
    assert any("streamed" in r.getMessage() or "block" in r.getMessage() for r in caplog.records)


def test_predict_gives_the_same_fused_rows(folder, source, soundscapes, tmp_path):
    """``predict`` fuses by rank over the whole run as ``submit`` does: its rows equal the reference's within the
    swap allowance of the members' rows (those taken through :class:`Predictor`, the engine under ``predict``)."""
    from birdinfer.jobs.predict import predict
    from birdinfer.runtime.pipeline import Predictor

    paths = sorted(soundscapes.iterdir())
    table = pd.read_csv(predict([soundscapes], folder, tmp_path / "p.csv", precision="f32", progress=False))
    members, fused = reference(source, paths)
    got = [r.members.models for r in Predictor(folder, precision="f32").iter_files(paths, members=True)]
    counts = [len(r) for r in members["sed"]]
    allowance = {}
    for name, want in members.items():
        rows, want = np.concatenate([g[name] for g in got]), np.concatenate(want)
        np.testing.assert_allclose(rows, want, rtol=0, atol=1e-4, err_msg=name)
        allowance[name] = swap_allowance(want, rows)
    diff = np.abs(table[LABELS].to_numpy() - np.concatenate(fused))
    bound = fused_bound(allowance, counts)
    assert (diff <= bound).all(), f"largest excess {(diff - bound).max():g}"
    assert (bound == 1e-6).mean() > 0.5


@pytest.mark.parametrize("parallel_models", [1, 2])
def test_blocks_of_60_s_context_and_sequence_over_the_whole_file(folder, source, soundscapes, tmp_path, parallel_models):
    """With ``block_seconds: 60`` the blocks run apart, but a model on another model's outputs still sees the
    file's windows: the same member rows (also with the feature models run side by side in worker threads)."""
    from birdinfer.runtime.pipeline import Predictor

    copy_ = tmp_path / "blocks"
    shutil.copytree(folder, copy_)
    data = json.loads((copy_ / "manifest.json").read_text())
    data["block_seconds"] = 60.0
    (copy_ / "manifest.json").write_text(json.dumps(data))
    predictor = Predictor(copy_, precision="f32", parallel_models=parallel_models)
    path = soundscapes / FILES[3][0]
    result = next(predictor.iter_files([path], members=True))
    members, _ = reference(source, [path])
    for name in ("probe", "seq", "perch"):
        np.testing.assert_allclose(result.members.models[name], members[name][0], rtol=0, atol=1e-4, err_msg=name)


def test_dropping_a_producer_drops_the_models_on_its_outputs(folder, caplog):
    from birdinfer.runtime.pipeline import Predictor

    predictor = Predictor(folder, precision="f32")
    with caplog.at_level(logging.WARNING):
        predictor.drop("perch")
    assert predictor.active == ["sed"]
    assert "dropping perch drops probe, seq too" in caplog.text
    predictor.drop("sed")  # the last model is never dropped
    assert predictor.active == ["sed"]
    predictor = Predictor(folder, precision="f32", model_names=["perch", "seq"])
    predictor.drop("seq")
    assert predictor.active == ["perch"]
    with pytest.raises(ModelFolderError, match=r"model 'probe' reads model 'perch''s output 'embedding': select 'perch' too"):
        Predictor(folder, precision="f32", model_names=["sed", "probe"])


def _edit(spec: dict, change) -> dict:
    spec = copy.deepcopy(spec)
    change(spec)
    return spec


def _set(path: str, value):
    def change(spec):
        *keys, last = path.split("/")
        node = spec
        for k in keys:
            node = node[int(k)] if isinstance(node, list) else node[k]
        node[int(last) if isinstance(node, list) else last] = value
    return change


@pytest.mark.parametrize("change, message", [
    (_set("models/2/input_shape", [-1, EMB]),
     r"models\['probe'\]\.input_shape \[-1, 1536\]: its input is 1536 \(perch\.embedding\) \+ 1536 \(mean\) \+ 1536 "
     r"\(std\) = 4608 wide, not 1536"),
    (_set("models/3/input/model", "perhc"), r"models\['seq'\]\.input: no model named 'perhc' \(models: sed, perch"),
    (_set("models/2/input/output", "emb"), r"models\['probe'\]\.input: model 'perch' has no output 'emb' "
                                           r"\(its outputs: label, embedding\)"),
    (_set("models/2/input/context", ["median"]), r"models\['probe'\]\.input\.context must be .* got \['median'\]"),
    (_set("models/1/outputs/1/shape", None),
     r"models\['probe'\]\.input: output 'embedding' of model 'perch' must declare its width: \"shape\": \[-1, width\]"),
    (_set("models/2/input/output", "label"), r"models\['probe'\]\.input: output 'label' of model 'perch' must declare its width"),
    (_set("models/3/input_shape", [-1, EMB]), r"models\['seq'\]\.input_shape \[-1, 1536\]: a model on perch\.embedding "
                                              r"as a file sequence takes \[1, -1, width\]"),
    (_set("models/1/input", {"model": "seq", "output": "logits"}),
     r"models: the inputs form a cycle: perch -> seq -> perch"),
    (_set("models/0/input", {"model": "sed", "output": "frames"}), r"models: the inputs form a cycle: sed -> sed"),
    (_set("models/2/input", {"model": "sed", "output": "frames"}),
     r"models\['probe'\]\.input: output 'frames' of model 'sed' is a frame_logits output"),
])
def test_the_graph_of_models_is_checked_at_load(change, message):
    spec = _edit(_spec(), change)
    with pytest.raises(ModelFolderError, match=r"^models/manifest\.json: " + message):
        parse_spec(spec, source="models/manifest.json")


def test_a_folder_whose_probe_does_not_fit_is_refused_before_any_audio(folder, tmp_path):
    """A folder's manifest edited to claim another width: refused when loaded, naming the manifest, the model and
    both widths; a graph whose input is another width than the producer's is refused when read."""
    copy_ = tmp_path / "edited"
    shutil.copytree(folder, copy_)
    data = json.loads((copy_ / "manifest.json").read_text())
    data["models"][2]["input"]["context"] = ["mean"]
    data["models"][2]["input_shape"] = [-1, 2 * EMB]
    (copy_ / "manifest.json").write_text(json.dumps(data))
    from birdinfer.runtime.pipeline import Predictor

    with pytest.raises(ModelFolderError, match=rf"{copy_}: model 'probe' \(probe\.xml\): the graph's input 'x' is "
                                               r"\[\?, 4608\], but the manifest's input_shape is \[\?, 3072\]"):
        Predictor(copy_, precision="f32")
    data["models"][2]["input_shape"] = [-1, 3 * EMB]
    (copy_ / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ModelFolderError, match=rf"{copy_ / 'manifest.json'}: models\['probe'\]\.input_shape \[-1, 4608\]: "
                                               r"its input is 1536 \(perch\.embedding\) \+ 1536 \(mean\) = 3072 wide"):
        Manifest.load(copy_)


def test_context_columns():
    from birdinfer.runtime.dag import with_context

    x = np.arange(12, dtype=np.float32).reshape(4, 3) ** 1.5
    got = with_context(x, ["mean", "std", "max", "min", "prev", "next"])
    want = np.concatenate([x, np.tile(x.mean(0), (4, 1)), np.tile(x.std(0), (4, 1)), np.tile(x.max(0), (4, 1)),
                           np.tile(x.min(0), (4, 1)), x[[0, 0, 1, 2]], x[[1, 2, 3, 3]]], axis=1)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert with_context(x[:1], ["prev", "std"]).tolist() == [x[0].tolist() * 2 + [0.0, 0.0, 0.0]]


def test_time_budget_drops_the_models_on_a_dropped_producer(folder, soundscapes, tmp_path):
    """A budget on a fake clock drops perch part-way: the probe and the sequence model go with it (the report
    says so) and have rows exactly for the files perch ran on."""
    from birdinfer.jobs.submit import make_submission

    ticks = iter(range(10**9))
    paths = sorted(soundscapes.iterdir())
    frame = make_submission(paths, folder, out=None, precision="f32", progress=False, time_budget_s=30.0,
                            clock=lambda: float(next(ticks)), member_rows=tmp_path / "rows")
    events = frame.attrs["birdinfer"]["dropped"]
    assert [(e["model"], e.get("with")) for e in events] == [("perch", ["probe", "seq"])]
    ran = {m: set(pd.read_csv(tmp_path / "rows" / f"{m}.csv").row_id.str.rsplit("_", n=1).str[0])
           for m in ("sed", "perch", "probe", "seq")}
    assert ran["sed"] == {p.stem for p in paths}
    assert ran["probe"] == ran["seq"] == ran["perch"] and 0 < len(ran["perch"]) < len(paths)


def test_int8_import_of_models_on_outputs_is_refused_before_writing(source, tmp_path):
    from birdinfer.errors import ParameterError
    from birdinfer.tools.importer import import_folder

    with pytest.raises(ParameterError, match=r"spec\.json: INT8 variants .* models probe, seq read other models' "
                                             r"outputs .* --precision f32"):
        import_folder(source / "spec.json", tmp_path / "int8", precision="int8", measure=False)
    assert not (tmp_path / "int8").exists()


def test_bench_times_the_models_on_outputs(folder, soundscapes):
    """``birdinfer bench`` on the folder: every model gets its time per file (the probe and the sequence model
    from their per-file runs), and their GFLOP is not counted (no front-end windows of their own)."""
    from birdinfer.tools.bench import run_bench

    report = run_bench(folder, audio=soundscapes, files=2, precision="f32", print_table=False)
    (mode,) = report["modes"]
    assert "error" not in mode, mode.get("error")
    rows = {m["name"]: m for m in mode["models"]}
    assert set(rows) == set(WEIGHTS)
    assert rows["probe"]["seconds_per_file"] > 0 and rows["seq"]["seconds_per_file"] > 0
    assert rows["probe"]["gflop_per_file"] is None and rows["perch"]["gflop_per_file"] > 0
    assert (rows["perch"]["feature"], rows["probe"]["feature"]) == ("windows", "perch.embedding")
