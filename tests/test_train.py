"""A tiny end-to-end training on synthetic data: reference-format checkpoint, better than chance."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import torch

pytest.importorskip("timm")

from birdinfer.spec.manifest import MelGroup  # noqa: E402
from birdinfer.tools.metric import macro_roc_auc  # noqa: E402
from birdinfer.tools.synth import make_dataset  # noqa: E402
from birdinfer_export.checkpoint import load_checkpoint  # noqa: E402
from birdinfer_train import train  # noqa: E402
from birdinfer_train.data import SpectrogramCache, crop_db, read_taxonomy, recording_samples  # noqa: E402

#: A small group for CPU tests: 64 mels, 64 columns per 5 s (input 64 x 128 per 10 s chunk, 4 frames).
TINY = MelGroup("tiny", n_fft=1024, hop_length=256, n_mels=64, fmin=60.0, fmax=16000.0, frames_per_window=64)
ARCH = "tinynet_e"  # an EfficientNet-family timm model (~2.4 M parameters): keeps the time axis for the SED head
#: Held-out clip-wise macro ROC-AUC the tiny run must reach (chance is 0.5).
MIN_HELD_OUT_AUC = 0.75


@pytest.fixture(scope="module")
def split_dataset(tmp_path_factory):
    """A synthetic dataset whose train.csv keeps 6 of 8 recordings per species; the rest is held out."""
    root = tmp_path_factory.mktemp("train")
    full = make_dataset(root / "full", species=4, recordings_per_species=8, soundscapes=2, seed=3, train_seconds=(10, 12))
    table = pd.read_csv(full / "train.csv")
    held_out = table.groupby("primary_label").tail(2)
    data = root / "data"
    data.mkdir()
    for name in ("taxonomy.csv", "train_audio", "train_soundscapes"):
        (data / name).symlink_to(full / name)
    table.drop(held_out.index).to_csv(data / "train.csv", index=False)
    held = root / "held"
    held.mkdir()
    shutil.copy(full / "taxonomy.csv", held / "taxonomy.csv")
    (held / "train_audio").symlink_to(full / "train_audio")
    held_out.to_csv(held / "train.csv", index=False)
    return data, held


def test_tiny_training_writes_reference_checkpoint_that_beats_chance(split_dataset, tmp_path):
    data, held = split_dataset
    out = train(data=data, arch=ARCH, group=TINY, out=tmp_path / "tiny.pth", epochs=4, batch_size=16, lr=3e-3,
                min_class_samples=24, drop_rate=0.0, drop_path_rate=0.0, head_dropout=0.0, mixup=False,
                cache_dir=tmp_path / "cache", progress=False, seed=0)
    saved = torch.load(out, map_location="cpu", weights_only=True)
    state = saved["model_state_dict"]
    assert set(saved) == {"model_state_dict"}
    assert "n_averaged" in state and int(state["n_averaged"]) >= 1
    assert all(k.startswith("module.") for k in state if k != "n_averaged")

    labels = read_taxonomy(data)
    model = load_checkpoint(out, arch=ARCH, n_mels=TINY.n_mels, n_classes=len(labels))
    samples = recording_samples(held, labels, crop="first10")
    cache = SpectrogramCache(TINY)
    x = torch.from_numpy(np.stack([crop_db(cache.power(s), 0, TINY) for s in samples]))
    with torch.no_grad():
        clip_logits, frame_logits = model.clipwise(x)
    assert frame_logits.shape == (len(samples), len(labels), TINY.frames_per_chunk // 32)
    truth = pd.DataFrame(np.stack([s.labels for s in samples]).astype(int), columns=labels)
    scores = pd.DataFrame(clip_logits.numpy(), columns=labels)
    assert macro_roc_auc(truth, scores) >= MIN_HELD_OUT_AUC


def test_training_rejects_bad_settings(split_dataset, tmp_path):
    data, _ = split_dataset
    from birdinfer.errors import ParameterError

    with pytest.raises(ParameterError, match="crop"):
        train(data=data, arch=ARCH, group=TINY, out=tmp_path / "x.pth", crop="middle")
    with pytest.raises(ValueError, match="unknown loss"):
        train(data=data, arch=ARCH, group=TINY, out=tmp_path / "x.pth", loss="focal")
    with pytest.raises(ParameterError, match="taxonomy.csv"):
        train(data=tmp_path, arch=ARCH, group=TINY, out=tmp_path / "x.pth")


def test_training_rejects_bad_noise_and_frame_settings(split_dataset, tmp_path):
    data, _ = split_dataset
    from birdinfer.errors import ParameterError

    with pytest.raises(ParameterError, match="frame_loss_weight"):
        train(data=data, arch=ARCH, group=TINY, out=tmp_path / "x.pth", frame_loss_weight=-1.0)
    with pytest.raises(ParameterError, match="noise_probability"):
        train(data=data, arch=ARCH, group=TINY, out=tmp_path / "x.pth", noise_probability=1.5)


def test_noise_power_adds_like_audio():
    """The premise of NoiseBank: mel power of (signal + independent noise) ≈ power(signal) + power(noise)."""
    from birdinfer_train.data import NoiseBank, mel_power

    rng = np.random.default_rng(0)
    t = np.arange(32000 * 10) / 32000
    tone = (0.3 * np.sin(2 * np.pi * 3000 * t)).astype(np.float32)
    noise = (0.05 * rng.standard_normal(len(t))).astype(np.float32)
    mixed = mel_power(tone + noise, TINY)
    added = mel_power(tone, TINY) + mel_power(noise, TINY)
    # per mel band, summed over time: equal within 3 % (the cross term averages out)
    np.testing.assert_allclose(mixed.sum(0), added.sum(0), rtol=0.03)

    bank = NoiseBank(TINY, seed=1, seconds=12.0, level=(0.02, 0.02))
    piece = bank.crop(TINY.frames_per_chunk, np.random.default_rng(2))
    assert piece.shape == (TINY.frames_per_chunk, TINY.n_mels) and piece.dtype == np.float32
    # unit-RMS clips scaled to RMS 0.02: the power is 0.02² of the clip's; compare with real noise of RMS 0.02
    reference = mel_power((0.02 * rng.standard_normal(32000 * 10)).astype(np.float32), TINY)
    assert 0.2 < piece.sum() / reference[: TINY.frames_per_chunk].sum() < 5.0  # coloured vs white: same order
    bigger = NoiseBank(TINY, seed=1, seconds=12.0, level=(0.2, 0.2)).crop(TINY.frames_per_chunk, np.random.default_rng(2))
    np.testing.assert_allclose(bigger, piece * 100.0, rtol=1e-5)  # 10x the RMS = 100x the power


def test_noise_negatives_frame_loss_and_noise_augmentation_train(split_dataset, tmp_path):
    from birdinfer_train.data import noise_samples, oversample_rare
    from birdinfer_train.training import _crop_logits
    from birdinfer_export.network import SEDNet

    negatives = noise_samples(5, 4)
    assert all(not s.sources and not s.labels.any() for s in negatives)
    grown = oversample_rare(negatives, 4, minimum=10, rng=np.random.default_rng(0))
    assert len(grown) == 5  # noise-only samples are no class: never oversampled

    torch.manual_seed(0)
    model = SEDNet(ARCH, n_mels=TINY.n_mels, n_classes=4).eval()
    x = torch.randn(3, 1, TINY.n_mels, TINY.frames_per_chunk)
    with torch.no_grad():
        both = _crop_logits(model, x, 0.5)
        clip, frame = model.clipwise(x)
    assert [w for _, w in both] == [1.0, 0.5]
    torch.testing.assert_close(both[0][0], clip)
    torch.testing.assert_close(both[1][0], frame.amax(dim=-1))
    assert len(_crop_logits(model, x, 0.0)) == 1

    data, _ = split_dataset
    out = train(data=data, arch=ARCH, group=TINY, out=tmp_path / "n.pth", epochs=1, batch_size=16, lr=3e-3,
                min_class_samples=8, frame_loss_weight=0.5, noise_negatives=0.25, noise_probability=0.5,
                cache_dir=tmp_path / "cache", progress=False, seed=0)
    import json

    info = json.loads(out.with_name(out.name + ".json").read_text())
    assert info["frame_loss_weight"] == 0.5 and info["noise_negatives"] == 0.25 and info["noise_probability"] == 0.5
    recordings = len(recording_samples(data, read_taxonomy(data), crop="random"))
    assert info["samples"] > recordings  # the noise-only negatives joined
    assert np.isfinite([h["loss"] for h in info["history"]]).all()
