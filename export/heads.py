"""Torch networks of other public BirdCLEF solutions, state-dict compatible with their checkpoints.

Facts and sources: docs/solutions/*.md. Every backbone is a real timm architecture built with
``pretrained=False`` (nothing downloaded).

- :class:`GemSEDNet` — 2025 1st place: timm ``features_only`` backbone (3 input channels), frequency GeM,
  ``Linear(C, 512)`` + ReLU, ``fix_scale`` 1×1 conv → framewise logits ``(B, K, T)``. Submodules ``backbone`` and
  ``head.{pooling, dense_layers, attention, fix_scale}`` as in their ``CLEFClassifierSED``.
- :func:`timm_classifier` — 2024 1st place: a plain ``timm.create_model(arch, num_classes=K, in_chans=1)``,
  clip logits ``(B, K)``.
- :class:`WaveSEDNet` / :class:`FoldMean` — 2025 2nd place: waveform ``(B, 160000)`` → conv STFT + HTK mel +
  per-sample dB + z-score/min-max (:mod:`.frontends`) → timm ``features_only`` backbone (1 channel) → attention
  head → clip **probabilities** ``(B, K)``; :class:`FoldMean` averages several folds in one graph
  (their ``ONNXEnsemble`` without weights).
- :class:`PerchLikeNet` — a stand-in with the shape of Google's Perch v2 as the 2026 teams ran it
  (``perch_v2_no_dft.onnx``): waveform ``(B, 160000)`` → an in-graph spectrogram without a DFT op (frames and a
  windowed DFT as one strided convolution, power, mel product, log) → a timm backbone (1 channel; Perch v2's
  family is EfficientNet-B3, whose pooled width 1,536 is the ``embedding``) → ``label`` logits ``(B, 14795)``
  and ``embedding`` ``(B, 1536)``. Its front-end constants are this stand-in's choice, not Perch v2's.
"""

from __future__ import annotations

import torch
from torch import nn

from .frontends import ChannelAgnosticDB, NormalizeMelSpec, TraceableMel

__all__ = ["GeMFreq", "AttHead", "GemSEDNet", "timm_classifier", "WaveSEDNet", "FoldMean", "features_backbone",
           "PerchLikeNet"]


def features_backbone(arch: str, *, in_chans: int, exportable: bool = False) -> nn.Module:
    """``timm.create_model(arch, pretrained=False, features_only=True, in_chans=...)`` (last map = output[-1])."""
    import timm

    kwargs = {"exportable": True} if exportable else {}
    try:
        return timm.create_model(arch, pretrained=False, features_only=True, in_chans=in_chans, **kwargs)
    except RuntimeError as e:  # timm: "Unknown model"
        raise ValueError(f"unknown timm architecture {arch!r}: {e}") from e


class GeMFreq(nn.Module):
    """Generalized mean over the frequency axis (dim 2) with a learnable exponent ``p`` (shape ``(1,)``)."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6):
        super().__init__()
        self.p = nn.Parameter(torch.ones(1) * p)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(min=self.eps).pow(self.p).mean(2, keepdim=True).pow(1.0 / self.p)


class AttHead(nn.Module):
    """The SED head both 2025 solutions share: GeM over frequency → dropout/Linear/ReLU/dropout → two 1×1 convs.

    ``output="framewise_logits"`` (1st place) returns ``fix_scale(h)`` ``(B, K, T)``; ``output="clipwise_prob"``
    (2nd place, train period = infer period) returns ``Σ_t sigmoid(fix_scale(h)) · softmax_t(tanh(attention(h)))``.
    """

    def __init__(self, in_chans: int, n_classes: int, *, hidden: int = 512, p: float = 0.5, output: str = "framewise_logits"):
        super().__init__()
        if output not in ("framewise_logits", "clipwise_prob"):
            raise ValueError(f"AttHead output must be 'framewise_logits' or 'clipwise_prob', got {output!r}")
        self.output = output
        self.pooling = GeMFreq()
        self.dense_layers = nn.Sequential(nn.Dropout(p / 2), nn.Linear(in_chans, hidden), nn.ReLU(), nn.Dropout(p))
        self.attention = nn.Conv1d(hidden, n_classes, kernel_size=1)
        self.fix_scale = nn.Conv1d(hidden, n_classes, kernel_size=1)

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        h = self.pooling(feat).squeeze(-2).permute(0, 2, 1)  # (B, T, C)
        h = self.dense_layers(h).permute(0, 2, 1)  # (B, hidden, T)
        logits = self.fix_scale(h)
        if self.output == "framewise_logits":
            return logits
        att = torch.softmax(torch.tanh(self.attention(h)), dim=-1)
        return (torch.sigmoid(logits) * att).sum(dim=-1)


def _channels(backbone: nn.Module) -> int:
    return int(backbone.feature_info.channels()[-1])


class GemSEDNet(nn.Module):
    """2025 1st place network: ``(B, 3, n_mels, T)`` in [0, 1] → framewise logits ``(B, K, T / 32)``."""

    def __init__(self, arch: str, n_classes: int, *, in_chans: int = 3):
        super().__init__()
        self.arch, self.n_classes = arch, n_classes
        self.backbone = features_backbone(arch, in_chans=in_chans)
        self.head = AttHead(_channels(self.backbone), n_classes, output="framewise_logits")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x)[-1])


def timm_classifier(arch: str, n_classes: int, *, in_chans: int = 1) -> nn.Module:
    """2024 1st place network: a plain timm classifier, clip logits ``(B, K)``."""
    import timm

    try:
        model = timm.create_model(arch, pretrained=False, num_classes=n_classes, in_chans=in_chans)
    except RuntimeError as e:
        raise ValueError(f"unknown timm architecture {arch!r}: {e}") from e
    model.arch, model.n_classes = arch, n_classes
    return model


class WaveSEDNet(nn.Module):
    """2025 2nd place network (one fold): waveform ``(B, samples)`` → clip probabilities ``(B, K)``.

    State-dict names follow their ``WaveCNNAttenClasifier``: ``logmelspec_extractor.{0: mel, 1: dB, 2: norm}``,
    ``backbone`` (timm features_only, 1 channel, exportable), ``head``.
    """

    def __init__(self, arch: str, n_classes: int, *, sample_rate: int = 32000, n_fft: int = 2048, hop_length: int = 512,
                 n_mels: int = 128, f_min: float = 20.0, f_max: float | None = None, top_db: float = 80.0):
        super().__init__()
        self.arch, self.n_classes = arch, n_classes
        self.logmelspec_extractor = nn.Sequential(
            TraceableMel(sample_rate=sample_rate, n_fft=n_fft, hop_length=hop_length, n_mels=n_mels, f_min=f_min,
                         f_max=f_max, normalized=True),
            ChannelAgnosticDB(top_db=top_db),
            NormalizeMelSpec(),
        )
        self.backbone = features_backbone(arch, in_chans=1, exportable=True)
        self.head = AttHead(_channels(self.backbone), n_classes, output="clipwise_prob")

    def spectrogram(self, wave: torch.Tensor) -> torch.Tensor:
        """The backbone input ``(B, 1, n_mels, frames)``."""
        return self.logmelspec_extractor(wave)[:, None]

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(self.spectrogram(wave))[-1])


class FoldMean(nn.Module):
    """Several fold networks in one graph; output = mean of their outputs (their ``ONNXEnsemble``, no weights)."""

    def __init__(self, models: list[nn.Module]):
        super().__init__()
        if not models:
            raise ValueError("FoldMean needs at least one model")
        self.models = nn.ModuleList(models)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in self.models], dim=0).mean(dim=0)



class PerchLikeNet(nn.Module):
    """Perch-v2-shaped stand-in (module docstring): ``(B, samples)`` → ``(label (B, n_labels), embedding (B, C))``."""

    def __init__(self, arch: str = "efficientnet_b3", n_labels: int = 14795, *, sample_rate: int = 32000,
                 n_fft: int = 640, hop_length: int = 320, n_mels: int = 128, f_min: float = 60.0, f_max: float = 16000.0):
        super().__init__()
        import math

        import timm

        from birdinfer.dsp.mel import mel_filterbank

        self.arch, self.n_classes, self.hop_length = arch, n_labels, hop_length
        bins = n_fft // 2 + 1
        t = torch.arange(n_fft, dtype=torch.float64)
        k = torch.arange(bins, dtype=torch.float64)[:, None]
        window = 0.5 - 0.5 * torch.cos(2 * math.pi * t / n_fft)
        basis = torch.cat([torch.cos(2 * math.pi * k * t / n_fft), -torch.sin(2 * math.pi * k * t / n_fft)]) * window
        self.register_buffer("basis", basis[:, None, :].float())
        mel = mel_filterbank(sample_rate=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=f_min, fmax=f_max)
        self.register_buffer("mel", torch.as_tensor(mel, dtype=torch.float32).T.contiguous())
        self.backbone = timm.create_model(arch, pretrained=False, in_chans=1, num_classes=0)
        self.head = nn.Linear(self.backbone.num_features, n_labels)

    def spectrogram(self, wave: torch.Tensor) -> torch.Tensor:
        """Log-mel ``(B, 1, frames, n_mels)``."""
        spec = nn.functional.conv1d(wave[:, None, :], self.basis, stride=self.hop_length)
        bins = spec.shape[1] // 2
        power = spec[:, :bins] ** 2 + spec[:, bins:] ** 2
        return torch.log(torch.matmul(power.transpose(1, 2), self.mel) + 1e-6)[:, None]

    def forward(self, wave: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedding = self.backbone(self.spectrogram(wave))
        return self.head(embedding), embedding
