"""The BirdCLEF 2026 5th place (jak-ma/BirdCLEF2026-5th-solution) as a spec, against a transcription of its public
inference notebook (``notebooks/5th-solution_ensemble_inference_script.ipynb``) written here in numpy / librosa /
pandas from the facts in docs/solutions/2026_5th.md, with ONNX Runtime running the same graphs.

Public and reproduced: the four CNNs' front ends (torchaudio-style log-mels: HTK mel without norm, window-normalised
power, reflect padding, a top-80 dB floor over the file's windows, ``clamp((dB + 80) / 80, 0, 1)``; the 10 s windows
centred on each row; the 384 × 384 resize of the EfficientNet-B3 input), their SED heads (GeM over time, attention
pooling, FrequencySE and channel attention for HGNet) on random-weight timm backbones, the 2.5 s TTA pass with its
fusion, the ``[0.1, 0.8, 0.1]`` smoothing and file peak scaling, the distilled SED's librosa front end and
``0.5·σ(clip) + 0.5·σ(max frame)`` with a Gaussian over rows, percentile-rank blends over the submission and the
final ``0.6 × CNN + 0.4 × (0.6 proto + 0.4 sed)``, the perch/sed blend's three gates (``rank_mean``'s ``gates``),
sonotype mirroring (``column_group_max``) and rare-class suppression (``rare_suppress``). Synthetic (same shapes):
ProtoSSM is a small sequence model on a Perch-v2-shaped stand-in's embedding (the public ProtoSSM pipeline reads
Perch's scores and site / hour ids too), and the distilled SED is a small CNN with random weights (two of its class
biases and one of proto's shifted so that every gate's tests hold in some cells and fail in others). The test's
labels have no sonotypes: one group of its labels stands for them (``TEST_GROUPS``), and its taxonomy has Amphibia
but no Mammalia or Reptilia.

Deviations stated by the transcription, each where it is written: files of any length (the notebook cuts or pads to
60 s: its 12 windows), and the shifted pass's dB floor per file (the notebook's batches of 12 shifted windows run
across files).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import librosa
import numpy as np
import pandas as pd
import pytest
import scipy.ndimage
import soundfile as sf

from conftest import synth_signal, write_ogg
from test_recipe2026_dag import (DIRECT, EMB, FILL, SONOTYPE_GROUPS, PerchLike, Sequence, _export,
                                 mirror_groups, near, pct_ranks, spread_over_groups, swap_prone, temporal_context,
                                 write_perch_labels)
from test_recipe2026_steps import LABELS, TAXONOMY

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")
ort = pytest.importorskip("onnxruntime")

SR = 32000
ROW = 5 * SR
REPO = Path(__file__).resolve().parents[1]
EPS = 1e-5
#: The public backbones; CI runs them as a small timm network of the same interface (``slow``: the real ones).
ARCHS = {"hgnet": "hgnetv2_b0.ssld_stage2_ft_in1k", "effv2_5s": "tf_efficientnetv2_s.in21k",
         "effv2_10s": "tf_efficientnetv2_s.in21k", "effb3": "tf_efficientnet_b3.ns_jft_in1k"}
SMALL = {name: "mobilenetv3_small_050" for name in ARCHS}
CNN_WEIGHTS = {"hgnet": 0.25, "effv2_5s": 0.40, "effv2_10s": 0.25, "effb3": 0.10}
TAXA = pd.read_csv(io.StringIO(TAXONOMY)).set_index("primary_label")["class_name"].to_dict()  # label → taxon class
FILES = [("BC2026_Test_0001_S05_20250227_010002.ogg", 12.3, 11), ("BC2026_Test_0002_S07_20250301_140000.ogg", 60.0, 12),
         ("BC2026_Test_0003_S13_20250302_233000.ogg", 75.0, 13)]


# ---------------------------------------------------------------------------------------------- the spec
def _torchaudio_mel(n_fft: int, hop: int, n_mels: int, fmin: float) -> list[dict]:
    """MelSpectrogram(normalized=True) → AmplitudeToDB(top_db=80) over the file's windows (its batch of 12)."""
    return [{"op": "stft", "n_fft": n_fft, "hop_length": hop, "pad_mode": "reflect", "normalized": True},
            {"op": "mel", "n_mels": n_mels, "fmin": fmin, "fmax": 16000.0, "scale": "htk", "norm": None},
            {"op": "db", "top_db": 80.0, "scope": "file"}]


def _clamp() -> dict:  # clamp((dB + 80) / 80, 0, 1)
    return {"op": "normalize", "method": "clamp", "scale": 0.0125, "offset": 1.0}


def _test(member: str, of: str, above=None, below=None) -> dict:
    return {"member": member, "of": of, **({"above": above} if above is not None else {"below": below})}


#: The perch/sed blend's three gates (the notebook's ``fake_only``, ``proto_cont``, ``sed_only``), in its order.
GATES = [{"name": "noise", "when": [_test("proto", "value", above=0.5), _test("sed", "value", below=0.05)],
          "toward": [{"member": "proto", "of": "rank"}], "alpha": 0.08},
         {"name": "temporal", "when": [_test("proto", "context", above=0.88), _test("proto", "rank", above=0.75),
                                       _test("sed", "value", below=0.12)],
          "toward": [{"member": "proto", "of": "rank"}, {"member": "proto", "of": "context"}], "alpha": 0.15,
          "context": {"radius": 3, "scale": 1.2, "df": 2.0}},
         {"name": "spike", "when": [_test("sed", "rank", above=0.95), _test("proto", "rank", below=0.80)],
          "toward": [{"member": "sed", "of": "rank"}], "alpha": 0.12}]
RARE_CLASSES = ("Amphibia", "Mammalia", "Reptilia")
#: The test's labels have no sonotypes: one group of its labels stands for them (see test_recipe2026_2nd).
TEST_GROUPS = SONOTYPE_GROUPS + (("strvar", "bubvir"),)


def fifth_spec(labels, groups=TEST_GROUPS, rare=("Amphibia",)) -> dict:
    """The 5th place's spec for ``labels`` (``groups``: the mirrored groups; ``rare``: the taxon classes suppressed,
    those of the test's taxonomy). Shipped with the sonotype groups and Amphibia, Mammalia, Reptilia."""
    win5 = [{"op": "windows", "length_seconds": 5.0, "step_seconds": 5.0}]
    channel = {"op": "channels", "layout": ["x"]}
    features = {
        "wave5s": {"steps": win5},
        "mel_hgnet": {"steps": win5 + _torchaudio_mel(2048, 512, 128, 20.0) + [_clamp(), channel]},
        "mel_eff": {"steps": win5 + _torchaudio_mel(2048, 512, 128, 0.0) + [_clamp(), channel]},
        "mel_effb3": {"steps": win5 + _torchaudio_mel(3072, 420, 384, 0.0) + [channel]},  # resize + clamp in the graph
        "mel_eff10s": {"steps": [{"op": "pad", "left_seconds": 2.5, "right_seconds": 2.5},
                                 {"op": "windows", "length_seconds": 10.0, "step_seconds": 5.0, "lead_seconds": "centre"}]
                       + _torchaudio_mel(2048, 512, 128, 0.0) + [_clamp(), channel]},
        "mel_sed": {"steps": win5 + [{"op": "stft", "n_fft": 2048, "hop_length": 512},
                                     {"op": "mel", "n_mels": 256, "fmin": 20.0, "fmax": 16000.0},
                                     {"op": "db", "top_db": 80.0}, {"op": "normalize", "method": "zscore", "ddof": 0},
                                     channel]},
    }
    tta = {"mode": "shift", "passes": [{"seconds": 0.0, "weight": 0.5}, {"seconds": 2.5, "weight": 0.5}]}
    clip = {"step": "clip_values", "min": EPS, "max": 1.0 - EPS}

    def cnn(name, feature, shape, row_steps, with_tta):
        out = {"name": name, "input": feature, "input_shape": shape, "outputs": [{"name": "logits", "kind": "clip_logits"}],
               "steps": [{"step": "sigmoid"}, {"step": "clip_rows"}] + row_steps,
               "variants": {"f32": {"onnx": f"{name}.onnx"}}, "export": {"head": "sed_5th_2026", "arch": ARCHS[name]}}
        return out | ({"tta": tta} if with_tta else {})

    models = [
        cnn("hgnet", "mel_hgnet", [-1, 1, 128, 313], [{"step": "smooth", "kernel": [0.1, 0.8, 0.1]}], True),
        cnn("effv2_5s", "mel_eff", [-1, 1, 128, 313], [{"step": "file_scale", "top_k": 1, "power": 1.0}], True),
        cnn("effv2_10s", "mel_eff10s", [-1, 1, 128, 626], [{"step": "file_scale", "top_k": 1, "power": 1.0}], False),
        cnn("effb3", "mel_effb3", [-1, 1, 384, 381], [], False),
        {"name": "perch", "input": "wave5s", "input_shape": [-1, ROW],
         "outputs": [{"name": "label", "kind": "clip_logits", "index": 0},
                     {"name": "embedding", "kind": "embedding", "index": 1, "shape": [-1, EMB]}],
         "steps": [{"step": "label_map", "labels": "perch_labels.csv", "taxonomy": "taxonomy.csv", "output": "label",
                    "fill": FILL}, {"step": "sigmoid", "output": "label"}, {"step": "clip_rows", "output": "label"}],
         "variants": {"f32": {"onnx": "perch.onnx"}}},
        {"name": "proto", "input": {"model": "perch", "output": "embedding", "sequence": True}, "input_shape": [1, -1, EMB],
         "outputs": [{"name": "logits", "kind": "clip_logits"}],
         "steps": [{"step": "sigmoid"}, {"step": "clip_rows"}, clip], "variants": {"f32": {"onnx": "proto.onnx"}}},
        {"name": "sed", "input": "mel_sed", "input_shape": [-1, 1, 256, 313],
         "outputs": [{"name": "clip", "kind": "clip_logits", "index": 0}, {"name": "frames", "kind": "frame_logits", "index": 1}],
         "steps": [{"step": "sigmoid", "output": "clip"}, {"step": "sigmoid", "output": "frames"},
                   {"step": "reduce_frames", "output": "frames", "into": "frame_max", "how": "max"},
                   {"step": "blend", "weights": {"clip": 0.5, "frame_max": 0.5}, "into": "p"},
                   {"step": "clip_rows", "output": "p"},
                   {"step": "gaussian_smooth", "sigma": 0.65, "mode": "nearest"}, clip],
         "variants": {"f32": {"onnx": "sed.onnx"}}},
    ]
    rank = {"step": "rank_mean", "scope": "submission", "ranks": "percent"}
    ensemble = {"members": [
        {"name": "cnn", "weight": 0.6, "members": [{"model": m, "weight": w} for m, w in CNN_WEIGHTS.items()],
         "steps": [rank, clip]},
        {"name": "perch_sed", "weight": 0.4, "members": [{"model": "proto", "weight": 0.6}, {"model": "sed", "weight": 0.4},
                                                          {"model": "perch", "weight": 0.0}],
         "steps": [{**rank, "gates": GATES}, clip]}],
        "steps": [{"step": "weighted_mean"}, clip,
                  {"step": "column_group_max", "groups": [list(g) for g in groups], "missing": "skip"},
                  {"step": "rare_suppress", "taxonomy": "taxonomy.csv", "classes": list(rare), "margin": 0.05,
                   "factor": 0.9}]}
    return {"format": "birdinfer-model-folder", "format_version": 2, "sample_rate": SR, "labels": list(labels),
            "rows": {"seconds": 5.0}, "block_seconds": None, "features": features, "models": models, "ensemble": ensemble}


def test_shipped_spec_is_this_one():
    shipped = json.loads((REPO / "weights" / "birdclef2026_5th.spec.json").read_text())
    mine = fifth_spec(shipped["labels"], SONOTYPE_GROUPS, RARE_CLASSES)
    assert len(shipped["labels"]) == 234
    assert {k: v for k, v in shipped.items() if k != "extra"} == mine


# ---------------------------------------------------------------------------------------- the networks
class FrequencySE(torch.nn.Module):
    """Per mel band: mean over time → bottleneck MLP → sigmoid gate on the band."""

    def __init__(self, n_mels: int, reduction: int = 16):
        super().__init__()
        self.fc = torch.nn.Sequential(torch.nn.Linear(n_mels, n_mels // reduction, bias=False), torch.nn.ReLU(),
                                      torch.nn.Linear(n_mels // reduction, n_mels, bias=False), torch.nn.Sigmoid())

    def forward(self, x):  # (W, 1, F, T)
        return x * self.fc(x.mean(dim=(1, 3)))[:, None, :, None]


class ChannelAttention(torch.nn.Module):
    """Per channel: a shared MLP on the mean and the max over time, summed, sigmoid gate."""

    def __init__(self, dim: int, reduction: int = 16):
        super().__init__()
        self.fc = torch.nn.Sequential(torch.nn.Linear(dim, dim // reduction, bias=False), torch.nn.ReLU(),
                                      torch.nn.Linear(dim // reduction, dim, bias=False))

    def forward(self, x):  # (W, C, T)
        return x * torch.sigmoid(self.fc(x.mean(dim=2)) + self.fc(x.amax(dim=2)))[:, :, None]


class FifthSed(torch.nn.Module):
    """The 5th place's SED head on a timm backbone: BatchNorm over mel bands, [FrequencySE], backbone, mean over
    frequency, [channel attention], GeM (p = 3) over 3 frames, linear + ReLU, attention pooling over time
    (softmax of the clamped attention logits) → clip logits. ``resize``: the input resized bilinearly first (B3)
    and clamped as the notebook's transform does after its resize."""

    def __init__(self, arch: str, n_mels: int, n_classes: int, frequency_se=False, channel_attention=False, resize=None):
        super().__init__()
        self.bn0 = torch.nn.BatchNorm2d(n_mels)
        self.backbone = timm.create_model(arch, pretrained=False, in_chans=1, global_pool="", num_classes=0)
        with torch.no_grad():
            n_feat = self.backbone(torch.zeros(1, 1, n_mels, 64)).shape[1]
        self.freq_se = FrequencySE(n_mels) if frequency_se else None
        self.channel_att = ChannelAttention(n_feat) if channel_attention else None
        self.p = torch.nn.Parameter(torch.ones(1) * 3.0)
        self.fc1 = torch.nn.Linear(n_feat, n_feat)
        self.att = torch.nn.Conv1d(n_feat, n_classes, 1)
        self.cla = torch.nn.Conv1d(n_feat, n_classes, 1)
        self.resize = resize

    def forward(self, x):
        if self.resize is not None:
            x = torch.nn.functional.interpolate(x, size=self.resize, mode="bilinear", align_corners=False)
            x = torch.clamp((x + 80.0) / 80.0, 0.0, 1.0)
        x = self.bn0(x.transpose(1, 2)).transpose(1, 2)
        if self.freq_se is not None:
            x = self.freq_se(x)
        h = self.backbone(x).mean(dim=2)  # (W, C, T')
        if self.channel_att is not None:
            h = self.channel_att(h)
        h = torch.nn.functional.avg_pool1d(h.clamp(min=1e-6).pow(self.p), 3, stride=1, padding=1).pow(1.0 / self.p)
        h = torch.relu(self.fc1(h.transpose(1, 2))).transpose(1, 2)
        weights = torch.softmax(torch.clamp(self.att(h), -10, 10), dim=-1)
        return (weights * self.cla(h)).sum(dim=2)


class DistilledSed(torch.nn.Module):
    """A small stand-in with the public distilled SED's outputs: clip logits (W, C) and frame logits (W, C, T')."""

    def __init__(self, n_classes: int):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Conv2d(1, 16, 5, stride=(4, 2), padding=2), torch.nn.ReLU(),
                                        torch.nn.Conv2d(16, 32, 3, stride=(4, 2), padding=1), torch.nn.ReLU())
        self.frame = torch.nn.Conv1d(32, n_classes, 1)

    def forward(self, x):
        frames = self.frame(self.body(x).mean(dim=2)) * 20.0  # (W, C, T')
        return frames.mean(dim=2), frames


def calibrate(net: torch.nn.Module, x: np.ndarray) -> None:
    """Batch-norm statistics measured on the model's own input from synthetic audio, then the class logits centred
    and scaled per class (the attention pooling is linear in them: exactly) to a std of 1.5 between windows: random
    initial statistics make a deep random network's scores nearly equal in every window, and their ranks noise."""
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    x = torch.tensor(x, dtype=torch.float32)
    net.train()
    with torch.no_grad():
        net(x)
        net.eval()
        z = net(x)
        mean, scale = z.mean(dim=0), 1.5 / z.std(dim=0).clamp(min=1e-12)
        net.cla.weight.mul_(scale[:, None, None])
        net.cla.bias.sub_(mean).mul_(scale)


def calibration_inputs(seconds: float = 30.0) -> dict[str, np.ndarray]:
    """Each CNN's input for a synthetic recording (another seed than the test files), as the transcription makes it."""
    y = synth_signal(seconds, seed=99)
    wins = y[: len(y) // ROW * ROW].reshape(-1, ROW)
    half = ROW // 2
    ctx = np.concatenate([np.zeros(half, np.float32), y, np.zeros(2 * ROW, np.float32)])
    wins10 = np.stack([ctx[k * ROW: k * ROW + 2 * ROW] for k in range(len(wins))])
    return {"hgnet": clamp01(torchaudio_db(wins, 2048, 512, 128, 20.0))[:, None],
            "effv2_5s": clamp01(torchaudio_db(wins, 2048, 512, 128, 0.0))[:, None],
            "effv2_10s": clamp01(torchaudio_db(wins10, 2048, 512, 128, 0.0))[:, None],
            "effb3": torchaudio_db(wins, 3072, 420, 384, 0.0)[:, None]}


def build(root: Path, archs: dict[str, str]) -> Path:
    torch.manual_seed(5)
    c = len(LABELS)
    nets = {"hgnet": (FifthSed(archs["hgnet"], 128, c, frequency_se=True, channel_attention=True), (2, 1, 128, 313)),
            "effv2_5s": (FifthSed(archs["effv2_5s"], 128, c), (2, 1, 128, 313)),
            "effv2_10s": (FifthSed(archs["effv2_10s"], 128, c), (2, 1, 128, 626)),
            "effb3": (FifthSed(archs["effb3"], 384, c, resize=(384, 384)), (2, 1, 384, 381))}
    inputs = calibration_inputs()
    for name, (net, shape) in nets.items():
        calibrate(net, inputs[name])
        _export(net, torch.zeros(shape), root / f"{name}.onnx", ["x"], ["logits"], {"x": {0: "n"}, "logits": {0: "n"}})
    sed = DistilledSed(c)
    with torch.no_grad():  # SED probabilities of amecro about 0.03–0.08 and of strvar about 0.1: the gates' tests
        sed.frame.bias[0] -= 0.03  # on p_sed (< 0.05, < 0.12) hold in some cells and not in others
        sed.frame.bias[3] -= 0.11
    _export(sed, torch.zeros(2, 1, 256, 313), root / "sed.onnx", ["x"], ["clip", "frames"],
            {"x": {0: "n"}, "clip": {0: "n"}, "frames": {0: "n"}})
    torch.manual_seed(1)
    _export(PerchLike(), torch.zeros(2, ROW), root / "perch.onnx", ["x"], ["label", "embedding"],
            {"x": {0: "n"}, "label": {0: "n"}, "embedding": {0: "n"}})
    proto = Sequence()
    with torch.no_grad():  # amecro's proto probabilities spread around 0.5 (gate 1's p_proto > 0.5 matters)
        proto.out.bias[0] -= 0.25
    _export(proto, torch.zeros(1, 3, EMB), root / "proto.onnx", ["e"], ["logits"], {"e": {1: "t"}, "logits": {1: "t"}})
    write_perch_labels(root)
    (root / "taxonomy.csv").write_text(TAXONOMY)
    (root / "spec.json").write_text(json.dumps(fifth_spec(LABELS), indent=1))
    return root / "spec.json"


# ------------------------------------------------------------------------------------ the transcription
def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


def htk_filterbank(n_freqs: int, fmin: float, fmax: float, n_mels: int) -> np.ndarray:
    """Triangular filters equally spaced on the HTK mel scale, no normalisation (torchaudio's default): (F, M)."""
    mel = lambda f: 2595.0 * np.log10(1.0 + f / 700.0)  # noqa: E731
    hz = lambda m: 700.0 * (10 ** (m / 2595.0) - 1.0)  # noqa: E731
    points = hz(np.linspace(mel(fmin), mel(fmax), n_mels + 2))
    freqs = np.linspace(0, SR // 2, n_freqs)
    down = (freqs[:, None] - points[None, :-2]) / (points[1:-1] - points[:-2])
    up = (points[None, 2:] - freqs[:, None]) / (points[2:] - points[1:-1])
    return np.maximum(0.0, np.minimum(down, up))


def torchaudio_db(windows: np.ndarray, n_fft: int, hop: int, n_mels: int, fmin: float) -> np.ndarray:
    """A batch of waveform windows (B, L) → dB mels (B, M, T): reflect-padded centred frames, periodic Hann,
    power divided by Σ window², HTK mel, 10·log10(max(x, 1e-10)), floored at the batch's max − 80."""
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    padded = np.pad(windows.astype(np.float64), ((0, 0), (n_fft // 2, n_fft // 2)), mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft, axis=1)[:, ::hop]
    power = np.abs(np.fft.rfft(frames * window, axis=-1)) ** 2 / np.sum(window ** 2)
    db = 10.0 * np.log10(np.maximum(power @ htk_filterbank(n_fft // 2 + 1, fmin, 16000.0, n_mels), 1e-10))
    return np.maximum(db, db.max() - 80.0).transpose(0, 2, 1)


def clamp01(db):
    return np.clip((db + 80.0) / 80.0, 0.0, 1.0)


def fuse_tta(norm, shift):
    out = np.empty_like(norm)
    out[0], out[-1] = 0.75 * norm[0] + 0.25 * shift[0], 0.75 * norm[-1] + 0.25 * shift[-1]
    out[1:-1] = 0.5 * norm[1:-1] + 0.25 * shift[:-1] + 0.25 * shift[1:]
    return out


def smooth_edges(p, alpha=0.1):
    out = p.copy()
    out[1:-1] = alpha * p[:-2] + (1 - 2 * alpha) * p[1:-1] + alpha * p[2:]
    out[0], out[-1] = (1 - alpha) * p[0] + alpha * p[1], (1 - alpha) * p[-1] + alpha * p[-2]
    return out


class Reference:
    """Per file each member's rows as the notebook computes them, then its blends over the whole submission."""

    def __init__(self, root: Path):
        s = {n: ort.InferenceSession(str(root / f"{n}.onnx"), providers=["CPUExecutionProvider"])
             for n in ("hgnet", "effv2_5s", "effv2_10s", "effb3", "sed", "perch", "proto")}
        self.run = lambda name, x: s[name].run(None, {s[name].get_inputs()[0].name: np.asarray(x, np.float32)})

    def cnn(self, name: str, waves: np.ndarray, fmin: float = 0.0) -> np.ndarray:
        return sigmoid(self.run(name, clamp01(torchaudio_db(waves, 2048, 512, 128, fmin))[:, None])[0])

    def members(self, path: Path) -> dict[str, np.ndarray]:
        full, _ = sf.read(path, dtype="float32")
        n = max(1, len(full) // ROW)  # deviation: every 5 s row of the file (the notebook: the first 60 s, padded)
        y = np.concatenate([full, np.zeros(ROW, np.float32)])[: n * ROW]
        wins = y.reshape(n, ROW)
        half = ROW // 2
        shifted = np.stack([y[half + k * ROW: half + (k + 1) * ROW] for k in range(n - 1)])  # inside the file
        out = {}
        # the shifted windows' dB floor over the file's shifted windows (deviation: the notebook's batches of 12
        # shifted windows run across files)
        for name, fmin in (("hgnet", 20.0), ("effv2_5s", 0.0)):
            out[name] = fuse_tta(self.cnn(name, wins, fmin), self.cnn(name, shifted, fmin))
        out["hgnet"] = smooth_edges(out["hgnet"])
        out["effv2_5s"] = out["effv2_5s"] * out["effv2_5s"].max(axis=0)
        ctx = np.concatenate([np.zeros(half, np.float32), full, np.zeros(2 * ROW, np.float32)])  # the file's samples
        wins10 = np.stack([ctx[k * ROW: k * ROW + 2 * ROW] for k in range(n)])
        out["effv2_10s"] = self.cnn("effv2_10s", wins10)
        out["effv2_10s"] = out["effv2_10s"] * out["effv2_10s"].max(axis=0)
        out["effb3"] = sigmoid(self.run("effb3", torchaudio_db(wins, 3072, 420, 384, 0.0)[:, None])[0])
        label, emb = self.run("perch", wins)
        mapped = np.full((n, len(LABELS)), FILL)
        for c, name in enumerate(LABELS):
            if DIRECT[name]:
                mapped[:, c] = label[:, DIRECT[name]].max(axis=1)
        out["perch"] = sigmoid(mapped)
        out["proto"] = np.clip(sigmoid(self.run("proto", emb[None])[0][0]), EPS, 1 - EPS)
        mels = []
        for x in wins:
            m = librosa.power_to_db(librosa.feature.melspectrogram(y=x, sr=SR, n_fft=2048, hop_length=512, n_mels=256,
                                                                   fmin=20, fmax=16000, power=2.0), top_db=80)
            mels.append((m - m.mean()) / (m.std() + 1e-6))
        clip, frames = self.run("sed", np.stack(mels)[:, None])
        p = 0.5 * sigmoid(clip) + 0.5 * sigmoid(frames.max(axis=2))
        p = scipy.ndimage.gaussian_filter1d(p, sigma=0.65, axis=0, mode="nearest") if n > 1 else p
        out["sed"] = np.clip(np.clip(p, 0, 1), EPS, 1 - EPS)
        return out

    @staticmethod
    def fused(members: list[dict[str, np.ndarray]], gates: bool = True) -> dict[str, np.ndarray]:
        """The notebook's blends: the CNN ranks; the perch/sed ranks ``0.6·proto + 0.4·sed`` and its gates (``gates``)
        on the clipped probabilities ``p_proto``, ``p_sed`` and their ranks: 1 ``fake_only`` (p_proto > 0.5 and
        p_sed < 0.05: 0.92·pred + 0.08·rank_proto), 2 ``proto_cont`` (xctx > 0.88, rank_proto > 0.75, p_sed < 0.12,
        not gate 1: 0.85·pred + 0.15·max(rank_proto, xctx); xctx: p_proto smoothed per file, ranked), 3
        ``sed_only`` (rank_sed > 0.95, rank_proto < 0.80, neither gate before: 0.88·pred + 0.12·rank_sed); both
        blends clipped, ``0.4·perch_sed + 0.6·cnn`` clipped; then sonotype mirroring (``TEST_GROUPS``) and the
        rare-class suppression (Amphibia here: values < column mean + 0.05 times 0.9). Returns the submission and
        the quantities the gates compared."""
        counts = [len(f["proto"]) for f in members]
        whole = {m: np.concatenate([f[m] for f in members]) for m in members[0]}
        pct = {m: pct_ranks(v) for m, v in whole.items()}
        rank_cnn = np.clip(sum(w * pct[m] for m, w in CNN_WEIGHTS.items()), EPS, 1 - EPS)
        p_proto, p_sed, rank_proto, rank_sed = whole["proto"], whole["sed"], pct["proto"], pct["sed"]
        pred = 0.6 * rank_proto + 0.4 * rank_sed
        xctx = pct_ranks(temporal_context(p_proto, counts))
        fake_only = (p_proto > 0.50) & (p_sed < 0.05)
        proto_cont = (xctx > 0.88) & (rank_proto > 0.75) & (p_sed < 0.12) & ~fake_only
        sed_only = (rank_sed > 0.95) & (rank_proto < 0.80) & ~fake_only & ~proto_cont
        if gates:
            pred = np.where(fake_only, 0.92 * pred + 0.08 * rank_proto, pred)
            pred = np.where(proto_cont, 0.85 * pred + 0.15 * np.maximum(rank_proto, xctx), pred)
            pred = np.where(sed_only, 0.88 * pred + 0.12 * rank_sed, pred)
        final = np.clip(0.4 * np.clip(pred, EPS, 1 - EPS) + 0.6 * rank_cnn, EPS, 1 - EPS)
        mirrored = mirror_groups(final, LABELS, TEST_GROUPS) if gates else final
        sub = mirrored.copy()
        rare = np.array([TAXA[label] == "Amphibia" for label in LABELS])
        threshold = sub.mean(axis=0) + 0.05
        if gates:
            sub[:, rare] = np.where(sub[:, rare] < threshold[rare], sub[:, rare] * 0.9, sub[:, rare])
        return {"sub": sub, "mirrored": mirrored, "threshold": threshold, "rare": rare, "p_proto": p_proto,
                "p_sed": p_sed, "rank_proto": rank_proto, "rank_sed": rank_sed, "xctx": xctx,
                "gated": {"noise": fake_only, "temporal": proto_cont, "spike": sed_only}, "counts": counts}


# -------------------------------------------------------------------------------------------- the tests
def _run(spec_path: Path, out: Path, paths: list[Path]):
    from birdinfer.runtime.pipeline import Predictor
    from birdinfer.tools.importer import import_folder

    import_folder(spec_path, out, measure=False)
    predictor = Predictor(out, precision="f32", backend="openvino")
    try:
        results = list(predictor.iter_files(paths))
        predictor.fuse(results)
        return results
    finally:
        predictor.close()


#: The members' weights in the fusion (perch's rows are read only by proto: weight 0).
FUSED_WEIGHTS = {**CNN_WEIGHTS, "proto": 0.6, "sed": 0.4}


def _check(spec_path: Path, tmp_path: Path, paths: list[Path], atol: dict[str, float] | None = None,
           max_prone: float = 0.2, max_flip: float = 0.1):
    got = _run(spec_path, tmp_path / "models", paths)
    ref = Reference(spec_path.parent)
    members = [ref.members(p) for p in paths]
    error = dict.fromkeys(members[0], 0.0)
    for r, want in zip(got, members):
        assert r.ok, r.error
        for name, rows in want.items():  # every member's rows before fusion, at f32 precision
            bound = (atol or {}).get(name, 1e-4)
            np.testing.assert_allclose(r.members.models[name], rows, rtol=0, atol=bound, err_msg=f"{r.path.name} {name}")
            error[name] = max(error[name], float(np.abs(r.members.models[name] - rows).max()))
    check_fused(np.concatenate([r.probs for r in got]), members, error, max_prone, max_flip)


def check_fused(have: np.ndarray, members: list[dict[str, np.ndarray]], error: dict[str, float], max_prone: float,
                max_flip: float):
    """birdinfer's submission against :meth:`Reference.fused`, with the bound derived as follows.

    Ranks: the rows are percentile ranks over the submission. Two rows of a member closer than twice that member's
    error (measured) may swap, which moves both by 1/N; every other cell has the same ranks on both sides, so its
    fused value must agree within float error (``swap``: about 12 % of the cells here); the same for proto's
    smoothed context (normalised taps ≥ 0: its error is at most proto's). Gates compare with thresholds: a
    swap-prone rank within 1/N of a threshold, or a probability within its member's error of one, may fall on the
    other side and flip a gate (and the gates after it, whose masks exclude it): ``flip``, where the cell may differ
    by the largest alpha (0.15) plus a rank step. Mirroring takes a group's row max: a flagged cell flags its row's
    group. Rare-class suppression compares each value with its column's mean + 0.05: that mean moves by at most the
    column's mean bound, so a value within its own bound plus that of the threshold flips too (a flip there moves
    it by at most 10 %). Clean cells within 1e-4, swap cells within 1/N + 1e-4, flips within 0.15 + 1/N + 1e-4."""
    ref = Reference.fused(members)
    fused, n = ref["sub"], len(have)
    whole = {m: np.concatenate([f[m] for f in members]) for m in members[0]}
    prone = {name: swap_prone(whole[name], 2 * error[name] + 1e-9) for name in FUSED_WEIGHTS}
    prone_ctx = swap_prone(temporal_context(whole["proto"], ref["counts"]), 2 * error["proto"] + 1e-9)
    swap = np.logical_or.reduce(list(prone.values())) | prone_ctx
    step = 1.0 / n + 1e-9
    flip = (near(ref["p_proto"], 0.5, 2 * error["proto"]) | near(ref["p_sed"], 0.05, 2 * error["sed"])
            | near(ref["p_sed"], 0.12, 2 * error["sed"]) | (prone_ctx & near(ref["xctx"], 0.88, step))
            | (prone["proto"] & (near(ref["rank_proto"], 0.75, step) | near(ref["rank_proto"], 0.80, step)))
            | (prone["sed"] & near(ref["rank_sed"], 0.95, step)))
    swap, flip = spread_over_groups(swap, LABELS, TEST_GROUPS), spread_over_groups(flip, LABELS, TEST_GROUPS)
    cell = np.where(flip, 0.15 + 1.0 / n, np.where(swap, 1.0 / n, 0.0)) + 1e-4
    rare_flip = ref["rare"][None, :] & near(ref["mirrored"], ref["threshold"], cell + cell.mean(axis=0))
    flip |= rare_flip
    assert swap.mean() < max_prone, f"{swap.mean():.0%} of the fused cells are swap-prone: the test would check little"
    assert flip.mean() < max_flip, f"{flip.mean():.0%} of the cells may flip a gate"
    # the data trips every gate, mirroring and the suppression in cells compared exactly
    clean = ~swap & ~flip
    for name, gated in ref["gated"].items():
        assert (gated & clean).sum() > 0, f"gate {name!r} moves no cell that is compared exactly"
    plain = Reference.fused(members, gates=False)["sub"]
    cols = [LABELS.index(label) for label in TEST_GROUPS[-1]]
    assert np.ptp(fused[:, cols], axis=1).max() == 0 and np.ptp(plain[:, cols], axis=1).max() > 0.01
    assert (ref["sub"] != ref["mirrored"])[clean].sum() > 0
    np.testing.assert_allclose(have[clean], fused[clean], rtol=0, atol=1e-4)
    assert np.abs(have - fused)[swap & ~flip].max(initial=0.0) <= 1.0 / n + 1e-4  # a swap moves a rank by 1/N
    assert np.abs(have - fused)[flip].max(initial=0.0) <= 0.15 + 1.0 / n + 1e-4


@pytest.fixture(scope="module")
def audio(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("fifth_audio")
    return [write_ogg(root / name, seconds, seed=seed) for name, seconds, seed in FILES]


def test_fifth_place_end_to_end_small_backbones(audio, tmp_path):
    spec_path = build(tmp_path / "src", SMALL) if (tmp_path / "src").mkdir() is None else None
    _check(spec_path, tmp_path, audio)


@pytest.mark.slow
def test_fifth_place_end_to_end_real_architectures(audio, tmp_path):
    """The real backbones. The random-weight EfficientNet-B3 on 384 × 384 inputs amplifies the float32 front end's
    rounding (birdinfer's mel and dB in float32, the transcription's in float64): its rows were measured within
    1.7e-4 (most within 7e-5), so it is held to 2e-4 here; the other members to 1e-4 (measured ≤ 3.3e-5). With these
    larger member errors more fused cells are swap-prone (measured 45 %): the rest are compared."""
    (tmp_path / "src").mkdir()
    _check(build(tmp_path / "src", ARCHS), tmp_path, audio, atol={"effb3": 2e-4}, max_prone=0.6, max_flip=0.25)
