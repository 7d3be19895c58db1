"""Training one SED ensemble member (REFERENCE.md section 5) and saving it in the reference format.

``train(data=..., arch=..., group=..., out=...)``: 10 s crops of every ``train.csv`` recording (first 10 s
or a random 10 s), optional audio-mixup samples (two recordings summed, label = element-wise max) and
pseudo-labelled soundscape chunks; rare classes oversampled; batch mixup with λ ~ Beta(0.5, 0.5) and
loss λ·L(y_a) + (1 − λ)·L(y_b); spectrogram masks and gain; AdamW with cosine annealing to 1e-6 (stepped
per batch); ``torch.optim.swa_utils.AveragedModel`` averaging from a late epoch; the averaged model saved
as ``{"model_state_dict": averaged.state_dict()}`` (``module.`` keys + ``n_averaged``), which
``birdinfer export`` reads unchanged. The loss is applied to the clip-wise (attention-pooled) logits.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from birdinfer.errors import ParameterError
from birdinfer.spec.manifest import MelGroup
from birdinfer_export.network import SEDNet

from .data import (
    NoiseBank,
    Sample,
    SpectrogramCache,
    augment_db,
    crop_db,
    noise_samples,
    oversample_rare,
    pseudo_label_samples,
    read_taxonomy,
    recording_samples,
)
from .losses import get_loss

__all__ = ["train", "resolve_group", "TrainingSet", "CROPS"]

log = logging.getLogger(__name__)

CROPS = ("first10", "random")


def resolve_group(group: str | MelGroup, recipe: str | Path | None = None) -> MelGroup:
    """A :class:`MelGroup` as given, or the recipe group of that name (default recipe: the reference's v1/v2/v3)."""
    if isinstance(group, MelGroup):
        group.validate(where="train")
        return group
    from birdinfer_export.recipe import load_recipe

    return load_recipe(recipe).group(str(group))


class TrainingSet(Dataset):
    """Crops → ``(x (1, n_mels, 2F) float32 dB, labels (C,) float32, weight () float32)``.

    ``random_crop``: samples without a fixed start get a random ``2F``-column window (else column 0).
    ``augment``: masks and gain (:func:`birdinfer_train.data.augment_db`). Randomness comes from a
    generator seeded by ``seed`` and the epoch (:meth:`set_epoch`) so a run is reproducible.
    """

    def __init__(self, samples: Sequence[Sample], cache: SpectrogramCache, *, random_crop: bool, augment: bool, seed: int,
                 noise: NoiseBank | None = None, noise_probability: float = 0.0):
        self.samples = list(samples)
        self.cache = cache
        self.group = cache.group
        self.random_crop = random_crop
        self.augment = augment
        self.seed = seed
        self.noise = noise
        self.noise_probability = noise_probability
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        sample = self.samples[index]
        rng = np.random.default_rng((self.seed, self.epoch, index))
        columns = self.group.frames_per_chunk
        if not sample.sources:  # a noise-only negative
            if self.noise is None:
                raise ParameterError(f"training sample {sample.key!r} has no audio source and no noise bank was given")
            power, start, noise = self.noise.crop(columns, rng), 0, None
        else:
            power = self.cache.power(sample)
            if sample.start_column is not None:
                start = sample.start_column
            elif self.random_crop:
                start = int(rng.integers(0, max(1, len(power) - columns + 1)))
            else:
                start = 0
            noise = None
            if self.noise is not None and rng.random() < self.noise_probability:
                noise = self.noise.crop(columns, rng)
        x = crop_db(power, start, self.group, noise=noise)
        if self.augment:
            x = augment_db(x, rng)
        return torch.from_numpy(x), torch.from_numpy(sample.labels), torch.tensor(sample.weight, dtype=torch.float32)


def _audio_mixup_samples(samples: Sequence[Sample], fraction: float, rng: np.random.Generator) -> list[Sample]:
    """``fraction * len(samples)`` extra samples, each two recordings of different primary labels summed,
    label = element-wise max (REFERENCE.md "audio mixup")."""
    count = int(round(fraction * len(samples)))
    out = []
    for k in range(count):
        a, b = rng.choice(len(samples), 2, replace=False)
        sa, sb = samples[a], samples[b]
        if np.argmax(sa.labels) == np.argmax(sb.labels):
            continue
        out.append(Sample(key=f"mix:{sa.key}+{sb.key}", sources=sa.sources + sb.sources,
                          labels=np.maximum(sa.labels, sb.labels), start_column=sa.start_column,
                          max_seconds=sa.max_seconds))
    return out


def _device(device: str | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def train(
    *,
    data: str | Path,
    arch: str,
    group: str | MelGroup,
    out: str | Path,
    loss: str = "soft-auc",
    epochs: int = 20,
    batch_size: int = 32,
    lr: float = 5e-4,
    weight_decay: float = 1e-5,
    min_lr: float = 1e-6,
    crop: str = "first10",
    pseudo_labels: str | Path | None = None,
    pseudo_audio_dir: str | Path | None = None,
    pseudo_weight: float = 1.0,
    seed: int = 0,
    device: str | None = None,
    recipe: str | Path | None = None,
    cache_dir: str | Path | None = None,
    average_from_epoch: int | None = None,
    mixup: bool = True,
    audio_mixup: float = 0.0,
    augment: bool = True,
    min_class_samples: int = 100,
    drop_rate: float = 0.2,
    drop_path_rate: float = 0.5,
    head_dropout: float = 0.5,
    max_seconds: float | None = 60.0,
    frame_loss_weight: float = 0.0,
    noise_negatives: float = 0.0,
    noise_probability: float = 0.0,
    noise_level: tuple[float, float] = (0.003, 0.06),
    num_workers: int = 0,
    progress: bool = True,
) -> Path:
    """Train one SED model on the BirdCLEF-format folder ``data``; write the checkpoint ``out``; return it.

    ``group``: a recipe group name (``v1``/``v2``/``v3`` of ``recipe``, default the reference recipe) or a
    :class:`MelGroup` (e.g. a small one for tests). ``crop``: ``first10`` or ``random`` (a random 10 s of
    the first ``max_seconds`` of each recording). ``pseudo_labels``: CSV of soft labels for 5 s windows of
    ``pseudo_audio_dir`` (default ``data/train_soundscapes``); its 10 s chunks join training with weight
    ``pseudo_weight``. ``average_from_epoch`` (1-based): weight averaging starts after that epoch
    (default: ``max(1, round(0.8 * epochs))``, cf. 18 of 22). ``min_class_samples``: rare-class
    oversampling target. ``cache_dir``: on-disk spectrogram cache (default ``data/.birdinfer_cache``).
    ``frame_loss_weight``: weight ``w`` of an extra term on the frame-wise logits, ``loss = L(clip) +
    w * L(max over time of frame logits)`` (0 = the reference recipe, loss on the clip-wise output only). The
    runtime scores a 5 s window by the max of its frame probabilities, and the attention pooling lets a
    frame the attention ignores keep any logit, so with ``w = 0`` call-free frames are never trained; the
    max term pushes every frame of a crop below the crop's absent classes (see :func:`_crop_logits`).
    ``noise_negatives``: add ``round(noise_negatives * len(recordings))`` noise-only samples with all labels
    0; ``noise_probability``: chance that a recording crop gets generated background noise added (at an
    RMS level log-uniform in ``noise_level``; :class:`birdinfer_train.data.NoiseBank`). Both 0 = reference.
    A JSON side file ``<out>.json`` records the settings and per-epoch losses.
    """
    if crop not in CROPS:
        raise ParameterError(f"crop must be one of {CROPS}, got {crop!r}")
    if not frame_loss_weight >= 0:
        raise ParameterError(f"frame_loss_weight must be >= 0, got {frame_loss_weight!r}")
    if not (0 <= noise_probability <= 1 and noise_negatives >= 0):
        raise ParameterError(f"need 0 <= noise_probability <= 1 and noise_negatives >= 0 (got {noise_probability}, {noise_negatives})")
    if epochs < 1 or batch_size < 1 or not lr > 0:
        raise ParameterError(f"need epochs >= 1, batch_size >= 1 and lr > 0 (got {epochs}, {batch_size}, {lr})")
    loss_fn = get_loss(loss)
    data, out = Path(data), Path(out)
    mel_group = resolve_group(group, recipe)
    labels = read_taxonomy(data)
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    dev = _device(device)

    samples = recording_samples(data, labels, crop=crop, max_seconds=max_seconds)
    samples += _audio_mixup_samples(samples, audio_mixup, rng)
    if pseudo_labels is not None:
        audio_dir = Path(pseudo_audio_dir) if pseudo_audio_dir is not None else data / "train_soundscapes"
        samples += pseudo_label_samples(pseudo_labels, audio_dir, labels, frames_per_window=mel_group.frames_per_window,
                                        weight=pseudo_weight)
    samples = oversample_rare(samples, len(labels), minimum=min_class_samples, rng=rng)
    samples += noise_samples(int(round(noise_negatives * len(samples))), len(labels))

    cache = SpectrogramCache(mel_group, cache_dir=cache_dir if cache_dir is not None else data / ".birdinfer_cache")
    started = time.perf_counter()
    _fill_cache(cache, samples, progress=progress)
    cache_seconds = time.perf_counter() - started

    noise = NoiseBank(mel_group, seed=seed, level=noise_level) if (noise_negatives > 0 or noise_probability > 0) else None
    dataset = TrainingSet(samples, cache, random_crop=crop == "random", augment=augment, seed=seed, noise=noise,
                          noise_probability=noise_probability)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=len(dataset) > batch_size,
                        num_workers=num_workers, generator=torch.Generator().manual_seed(seed))
    model = SEDNet(arch, n_mels=mel_group.n_mels, n_classes=len(labels), drop_rate=drop_rate,
                   drop_path_rate=drop_path_rate, head_dropout=head_dropout).to(dev)
    _check_time_axis(model, mel_group, arch)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * len(loader)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, steps), eta_min=min_lr)
    average_from = average_from_epoch if average_from_epoch is not None else max(1, round(0.8 * epochs))
    average_from = min(max(1, average_from), epochs)
    averaged = torch.optim.swa_utils.AveragedModel(model, use_buffers=True)  # buffers too: bn0 statistics matter
    use_amp = dev.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    beta = torch.distributions.Beta(torch.tensor(0.5), torch.tensor(0.5))

    history = []
    for epoch in range(1, epochs + 1):
        model.train()
        dataset.set_epoch(epoch)
        total, batches = 0.0, 0
        iterator = loader
        if progress:
            from tqdm.auto import tqdm

            iterator = tqdm(loader, desc=f"epoch {epoch}/{epochs}", leave=False)
        for x, y, w in iterator:
            x, y, w = x.to(dev), y.to(dev), w.to(dev)
            with torch.autocast(dev.type, enabled=use_amp):
                if mixup and len(x) > 1:
                    lam = float(beta.sample())
                    perm = torch.randperm(len(x), device=dev)
                    logits = _crop_logits(model, lam * x + (1 - lam) * x[perm], frame_loss_weight)
                    value = sum(scale * (lam * loss_fn(z, y, sample_weight=w) + (1 - lam) * loss_fn(z, y[perm], sample_weight=w[perm]))
                                for z, scale in logits)
                else:
                    value = sum(scale * loss_fn(z, y, sample_weight=w) for z, scale in _crop_logits(model, x, frame_loss_weight))
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(value).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            total += float(value.detach())
            batches += 1
            if progress:
                iterator.set_postfix(loss=f"{total / batches:.4f}")
        if epoch >= average_from:
            averaged.update_parameters(model)
        mean_loss = total / max(1, batches)
        history.append({"epoch": epoch, "loss": mean_loss, "lr": scheduler.get_last_lr()[0]})
        log.info("epoch %d/%d: loss %.5f", epoch, epochs, mean_loss)
        if not math.isfinite(mean_loss):
            raise ParameterError(f"training diverged at epoch {epoch} (loss {mean_loss}); lower --lr")

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    torch.save({"model_state_dict": {k: v.detach().cpu() for k, v in averaged.state_dict().items()}}, tmp)
    tmp.replace(out)
    info = {
        "arch": arch, "group": mel_group.to_dict(), "labels": labels, "loss": loss, "epochs": epochs,
        "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay, "crop": crop, "seed": seed,
        "pseudo_labels": str(pseudo_labels) if pseudo_labels is not None else None, "pseudo_weight": pseudo_weight,
        "samples": len(samples), "average_from_epoch": average_from, "n_averaged": int(averaged.n_averaged),
        "mixup": mixup, "audio_mixup": audio_mixup, "augment": augment, "min_class_samples": min_class_samples,
        "drop_rate": drop_rate, "drop_path_rate": drop_path_rate, "head_dropout": head_dropout,
        "frame_loss_weight": frame_loss_weight, "noise_negatives": noise_negatives,
        "noise_probability": noise_probability, "noise_level": list(noise_level), "device": str(dev), "cache_seconds": round(cache_seconds, 2),
        "train_seconds": round(time.perf_counter() - started - cache_seconds, 2), "history": history,
    }
    out.with_name(out.name + ".json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return out


def _crop_logits(model: SEDNet, x: torch.Tensor, frame_loss_weight: float) -> list[tuple[torch.Tensor, float]]:
    """The logits the loss sees, each with its weight: the clip-wise (attention-pooled) logits ``(B, C)``
    and, when ``frame_loss_weight > 0``, the max over time of the frame-wise logits ``(B, C)`` (what the
    runtime's 5 s max reads)."""
    clip, frame = model.clipwise(x)
    out = [(clip.float(), 1.0)]
    if frame_loss_weight > 0:
        out.append((frame.float().amax(dim=-1), float(frame_loss_weight)))
    return out


def _check_time_axis(model: SEDNet, group: MelGroup, arch: str) -> None:
    """The SED head needs a time axis: at least 2 frames per 10 s chunk (one per 5 s window)."""
    model.eval()
    with torch.no_grad():
        probe = torch.zeros(1, 1, group.n_mels, group.frames_per_chunk, device=next(model.parameters()).device)
        frames = model(probe).shape[-1]
    if frames < 2 or frames % 2:
        raise ParameterError(
            f"architecture {arch!r} gives {frames} output frame(s) per 10 s chunk of group {group.name!r} "
            f"({group.n_mels}x{group.frames_per_chunk}); the SED head needs an even count >= 2. Use an "
            "EfficientNet-family timm model (e.g. tf_efficientnet_lite0) or a larger group."
        )


def _fill_cache(cache: SpectrogramCache, samples: Sequence[Sample], *, progress: bool) -> None:
    """Compute every distinct spectrogram once before training (keeps epochs free of audio decoding)."""
    unique = {}
    for s in samples:
        if s.sources:  # noise-only negatives have none
            unique.setdefault((s.sources, s.max_seconds), s)
    items = list(unique.values())
    if progress:
        from tqdm.auto import tqdm

        items = tqdm(items, desc=f"spectrograms ({cache.group.name})", leave=False)
    for s in items:
        cache.power(s)
