"""A tiny end-to-end training on synthetic data: reference-format checkpoint, better than chance."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import torch

pytest.importorskip("timm")

from birdinfer.manifest import MelGroup  # noqa: E402
from birdinfer.metric import macro_roc_auc  # noqa: E402
from birdinfer.synth import make_dataset  # noqa: E402
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
