"""The 2026 2nd place's pipeline at full size (``slow``): tests/test_recipe2026_2nd.py's spec, files and
transcription with the public architectures in place of its small stand-in networks.

What changes against the CI test (everything else is that module's: the spec, the front ends, the probes, the
sequence models, the fusion and its bound, the five soundscapes):

* the Perch-v2-shaped stand-in's body is timm's EfficientNet-B3 (Perch v2's backbone; 1,536 features, 14,795
  logits, a 1,536-d embedding) on a 128-mel log spectrogram computed inside the graph (a DFT convolution);
* the SED folds are EfficientNetV2-S (``tf_efficientnetv2_s``, the team's "v2s") on ``[N, 1, 128, 313]``;
* the other CNN sections use the backbones docs/solutions/2026_2nd.md lists: exp53 ``convnext_base``; exp72e,
  exp79b ``tf_efficientnetv2_s``; exp88 an NFNet (``eca_nfnet_l0``: the script does not say which NFNet);
  exp85 ``tf_efficientnetv2_s`` on 20 s windows ``[N, 3, 224, 512]`` giving 16 frames;
* each backbone's feature map is averaged over frequency and read by a frame head and attention pooling (the SED
  heads' shape), as in the small stand-ins.

Still synthetic (not public): every weight. timm's random initialisation leaves a deep network's batch-norm
statistics at 0 / 1, so the features of EfficientNet-B3 come out ~1e-5 wide and every window looks alike; each
network's batch-norm statistics are therefore first gathered on random inputs of its input's shape (as training
would set them), so its outputs differ between windows by amounts a real network's would. Two SED folds as in CI
(the script has five copies of the same graph).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")
pytest.importorskip("onnxruntime")

from test_recipe2026_2nd import (C, CNNS, FOLDS, FinalLike, Probes, ProtoLike, cnn_mels, compare_stack,  # noqa: E402
                                 compute_reference, exp85_windows, reference, sed_mels, soundscapes, write_source)
from test_recipe2026_dag import EMB, PerchLike, _windows  # noqa: E402

pytestmark = pytest.mark.slow
__all__ = ["soundscapes"]  # the CI module's fixture, used here


def _backbone(name: str, chans: int):
    """A timm backbone giving its last feature map ``[N, F, freq, time]`` (no pooling, no classifier)."""
    return timm.create_model(name, pretrained=False, num_classes=0, global_pool="", in_chans=chans)


def _set_batch_norms(net, inputs: list[np.ndarray], chunk: int = 8):
    """Batch-norm statistics gathered over ``inputs`` (cumulative averages over chunks of rows), then eval mode."""
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    net.train()
    rows = np.concatenate(inputs)
    with torch.no_grad():
        for at in range(0, len(rows) - 1, chunk):  # a chunk of one row cannot train a batch norm
            net(torch.tensor(rows[at : at + max(2, chunk)], dtype=torch.float32))
    return net.eval()


class PerchFull(PerchLike):
    """Perch v2's interface with an EfficientNet-B3 body: ``[N, 160000]`` → in-graph DFT convolution (1024 points,
    hop 320) → 128 mels → log → EfficientNet-B3 → mean over the map → layer norm → ``label [N, 14795]``,
    ``embedding [N, 1536]``."""

    def __init__(self):
        super().__init__(n_fft=1024, hop=320, n_mels=128, width=1536)
        self.body = _backbone("efficientnet_b3", 1)


class Attention(torch.nn.Module):
    """A timm backbone, its feature map averaged over frequency, a frame head and attention pooling: clip logits
    ``[N, C]`` (``frames``: the frame logits ``[N, C, T']`` only; ``both``: clip and frame logits, a SED fold)."""

    def __init__(self, name: str, chans: int, out: str = "clip", scale: float = 3.0):
        super().__init__()
        self.body = _backbone(name, chans)
        width = self.body.num_features
        self.cla, self.att, self.out, self.scale = torch.nn.Conv1d(width, C, 1), torch.nn.Conv1d(width, C, 1), out, scale

    def forward(self, mel):
        h = self.body(mel).mean(dim=2)
        frames = self.cla(h) * self.scale
        if self.out == "frames":
            return frames
        clip = (torch.softmax(self.att(h), dim=-1) * frames).sum(dim=-1)
        return (clip, frames) if self.out == "both" else clip


BACKBONES = {"exp53": "convnext_base", "exp72e": "tf_efficientnetv2_s", "exp79b": "tf_efficientnetv2_s",
             "exp85": "tf_efficientnetv2_s", "exp88": "eca_nfnet_l0"}


@pytest.fixture(scope="module")
def full_nets(soundscapes):
    """The networks, each one's batch-norm statistics gathered on its inputs from the test's soundscapes (the
    transcription's front ends): the data a trained network's statistics would come from."""
    import soundfile as sf

    torch.manual_seed(11)
    paths = sorted(soundscapes.iterdir())
    windows = [_windows(p) for p in paths]
    features = {"mel_exp53": [cnn_mels(x, 4096, 512, 224, 0.0) for x in windows],
                "mel_cnn": [cnn_mels(x, 2048, 512, 128, 20.0) for x in windows],
                "mel_exp85": [cnn_mels(exp85_windows(sf.read(p, dtype="float32")[0], len(x)), 4096, 1252, 224, 0.0)
                              for p, x in zip(paths, windows)]}
    nets = {"perch": _set_batch_norms(PerchFull(), windows),
            "probe": Probes().eval(), "proto": ProtoLike().eval(), "final": FinalLike().eval()}
    sed = [sed_mels(x) for x in windows]
    for k in range(FOLDS):
        nets[f"sed_fold{k}"] = _set_batch_norms(Attention("tf_efficientnetv2_s", 1, "both"), sed)
    for name, (feature, _, _, kind, _) in CNNS.items():
        nets[name] = _set_batch_norms(Attention(BACKBONES[name], 3, "frames" if kind == "frame" else "clip"),
                                      features[feature])
    return nets


@pytest.fixture(scope="module")
def full_folder(full_nets, tmp_path_factory) -> Path:
    from birdinfer.tools.importer import import_folder

    src = write_source(full_nets, tmp_path_factory.mktemp("second_full_src"))
    out = tmp_path_factory.mktemp("second_full") / "models"
    import_folder(src / "spec.json", out, measure=False)
    return out


class Perturbed(torch.nn.Module):
    """``net`` on its first input times ``1 + rel·ε`` (ε standard normal, fixed seed)."""

    def __init__(self, net, rel: float, seed: int):
        super().__init__()
        self.net, self.rel, self.seed = net, rel, seed

    def forward(self, x, *more):
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(self.seed), dtype=torch.float64)
        return self.net((x.double() * (1.0 + self.rel * noise)).float(), *more)


#: Relative change of the conditioning probe, and the share of the bar a row may move under it.
PROBE_REL, PROBE_SHARE, BAR = 1e-6, 0.25, 1e-4


def ill_conditioned(nets, soundscapes: Path, monkeypatch) -> dict[str, np.ndarray]:
    """Per member, the rows whose transcription moves by more than a quarter of the bar when its inputs change by
    1e-6 relative, the size of the rounding between birdinfer's float32 front ends and the transcription's float64
    ones: the waveform Perch reads (its spectrogram is inside the graph) and the dB spectrograms of the SED and CNN
    front ends before their per-window scaling (a window floored to nearly one value has a tiny range, and the
    min-max scaling then magnifies its rounding). On such rows float32 rounding alone decides the row to the bar
    (the random deep networks magnify it on some windows: measured up to ~1.9 in a logit on the 3 s file's window
    and the quiet windows), so 1e-4 cannot be asked there."""
    import test_recipe2026_2nd as second

    exact = second.batch_db

    def rounded(*args, **kwargs):
        db = exact(*args, **kwargs)
        return db * (1.0 + PROBE_REL * np.random.default_rng(db.size).standard_normal(db.shape))

    probe = dict(nets, perch=Perturbed(nets["perch"], PROBE_REL, seed=100))
    moved = {}
    for path in sorted(soundscapes.iterdir()):
        base = reference(nets, path)
        with monkeypatch.context() as m:
            m.setattr(second, "batch_db", rounded)
            other = compute_reference(probe, path)
        for name in base:
            moved.setdefault(name, []).append(np.abs(other[name] - base[name]).max(axis=1))
    return {name: np.concatenate(rows) > PROBE_SHARE * BAR for name, rows in moved.items()}


def test_full_size_stack_against_the_transcription(full_folder, full_nets, soundscapes, tmp_path, monkeypatch):
    """The CI test's comparison with the public architectures: every member's rows within 1e-4 of the transcription
    but the ill-conditioned ones (:func:`ill_conditioned`; asserted few: at most 6 of the 45 rows of any member), the
    fused rows against the transcription's fusion of birdinfer's member rows (the CI test bounds the fusion of the
    transcription's own rows; with free rows its swap bound does not apply). The random ConvNeXt's rows lie closer
    together than the small stand-ins' (ptp ~2e-3 where those exceed 1e-2): each member's compared rows must spread
    over 1e-3, ten times the bar."""
    assert full_nets["perch"].body.num_features == EMB
    ill = ill_conditioned(full_nets, soundscapes, monkeypatch)
    print({name: int(mask.sum()) for name, mask in ill.items()})
    assert max(int(mask.sum()) for mask in ill.values()) <= 6
    measured = compare_stack(full_folder, full_nets, soundscapes, tmp_path, ill=ill, spread=1e-3)
    print({name: f"{value:.2e}" for name, value in measured["error"].items()})
