"""The SED network of REFERENCE.md section 3: a timm encoder with an attention head.

State-dict compatible with the published checkpoints: submodules are named ``bn0``, ``encoder``, ``fc1``
and ``att_block.{att,cla,bn_att}`` exactly as the reference saved them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SEDNet", "AttBlock", "build_encoder"]


def build_encoder(arch: str, *, drop_rate: float = 0.0, drop_path_rate: float = 0.0) -> nn.Sequential:
    """Every child of ``timm.create_model(arch)`` but the global pool and the classifier.

    ``pretrained=False`` always: nothing is downloaded, weights come from the checkpoint.
    """
    import timm

    try:
        backbone = timm.create_model(
            arch, pretrained=False, in_chans=1, drop_rate=drop_rate, drop_path_rate=drop_path_rate
        )
    except RuntimeError as e:  # timm raises RuntimeError("Unknown model ...")
        raise ValueError(f"unknown timm architecture {arch!r}: {e}") from e
    return nn.Sequential(*list(backbone.children())[:-2])


def _encoder_channels(encoder: nn.Sequential) -> int:
    """Channels of the encoder's last feature map, probed with a tiny input.

    The probe runs in eval mode: in training mode it would move the batch-norm running statistics.
    """
    was_training = encoder.training
    encoder.eval()
    try:
        with torch.no_grad():
            return int(encoder(torch.zeros(1, 1, 64, 64)).shape[1])
    finally:
        encoder.train(was_training)


class AttBlock(nn.Module):
    """Attention pooling head: ``att`` gives per-frame attention, ``cla`` per-frame class logits."""

    def __init__(self, in_features: int, n_classes: int):
        super().__init__()
        self.att = nn.Conv1d(in_features, n_classes, kernel_size=1)
        self.cla = nn.Conv1d(in_features, n_classes, kernel_size=1)
        self.bn_att = nn.BatchNorm1d(n_classes)  # stored in the checkpoints, unused by the forward pass


class SEDNet(nn.Module):
    """Sound-event-detection network.

    Input: dB mel chunks ``(B, 1, n_mels, T)``. ``forward`` returns frame-wise logits ``(B, n_classes, T/32)``;
    ``clipwise`` returns the attention-pooled clip logits ``(B, n_classes)`` used by the training loss.
    """

    def __init__(
        self,
        arch: str,
        *,
        n_mels: int,
        n_classes: int,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        head_dropout: float = 0.0,
    ):
        super().__init__()
        self.arch = arch
        self.n_mels = n_mels
        self.n_classes = n_classes
        self.bn0 = nn.BatchNorm2d(n_mels)
        self.encoder = build_encoder(arch, drop_rate=drop_rate, drop_path_rate=drop_path_rate)
        channels = _encoder_channels(self.encoder)
        self.fc1 = nn.Linear(channels, channels, bias=True)
        self.att_block = AttBlock(channels, n_classes)
        self.head_dropout = head_dropout

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 1, M, T)`` → per-frame features ``(B, C, T')`` after fc1 + ReLU."""
        x = x.transpose(1, 2)
        x = self.bn0(x)
        x = x.transpose(1, 2)
        x = self.encoder(x)
        x = x.mean(dim=2)  # over frequency
        x = F.max_pool1d(x, kernel_size=3, stride=1, padding=1) + F.avg_pool1d(x, kernel_size=3, stride=1, padding=1)
        x = F.dropout(x, p=self.head_dropout, training=self.training)
        x = self.fc1(x.transpose(1, 2)).transpose(1, 2)
        x = F.relu(x)
        return F.dropout(x, p=self.head_dropout, training=self.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.att_block.cla(self.features(x))

    def clipwise(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(clip logits ``(B, C)``, frame logits ``(B, C, T')``)."""
        h = self.features(x)
        att = torch.softmax(torch.clamp(self.att_block.att(h), -10, 10), dim=-1)
        frame = self.att_block.cla(h)
        return (att * frame).sum(dim=-1), frame
