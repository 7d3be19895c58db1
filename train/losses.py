"""Training losses on clip-wise logits: the hard and soft AUC losses of REFERENCE.md section 5, and BCE.

Both AUC losses are pairwise logistic losses over every (positive, negative) pair of entries in the batch,
all classes pooled: with logits ``p`` and labels ``y`` of shape ``(B, C)``, an entry is a positive when
``y > 0.5`` and a negative when ``y < 0.5`` (``y == 0.5`` is neither). Then::

    loss = mean over pairs (i pos, j neg) of  w_i * w_j * log(1 + exp(-margin * (p_i - p_j)))

- soft AUC: ``w_i = pos_weight * (y_i - 0.5)``, ``w_j = neg_weight * (0.5 - y_j)``;
- hard AUC: ``w_i = w_j = 1``;

each optionally times the per-sample weight of the entry's row. The mean is over all pairs (not a
weighted mean), and the loss is 0 when the batch has no positive or no negative. ``log(1 + exp(x))`` is
computed as ``softplus(x)``, which is the same number without overflow for large ``x``.

Note: with labels of exactly 0/1 the soft weights are ``0.5 * pos_weight`` and ``0.5 * neg_weight``, so
the soft loss is the hard loss times ``pos_weight * neg_weight / 4`` (equal to it for weights of 2).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

__all__ = ["soft_auc_loss", "auc_loss", "bce_loss", "LOSSES", "get_loss"]


def _pairwise_logistic(
    logits: torch.Tensor,
    positive: torch.Tensor,
    negative: torch.Tensor,
    pos_entry_weight: torch.Tensor,
    neg_entry_weight: torch.Tensor,
    margin: float,
) -> torch.Tensor:
    """Mean of ``w_i w_j softplus(-margin (p_i - p_j))`` over positive i, negative j; 0 without pairs."""
    pos_logits = logits[positive]  # (P,)
    neg_logits = logits[negative]  # (N,)
    if pos_logits.numel() == 0 or neg_logits.numel() == 0:
        return logits.sum() * 0.0  # keeps the graph (and dtype/device) for backward()
    pair_loss = F.softplus(-margin * (pos_logits[:, None] - neg_logits[None, :]))  # (P, N)
    weighted = pos_entry_weight[positive][:, None] * pair_loss * neg_entry_weight[negative][None, :]
    return weighted.sum() / (pos_logits.numel() * neg_logits.numel())


def _row_weights(labels: torch.Tensor, sample_weight: torch.Tensor | None) -> torch.Tensor:
    """Per-sample weights ``(B,)`` broadcast to the entries ``(B, C)`` (ones when absent)."""
    if sample_weight is None:
        return torch.ones_like(labels)
    sample_weight = torch.as_tensor(sample_weight, dtype=labels.dtype, device=labels.device)
    if sample_weight.shape != labels.shape[:1]:
        raise ValueError(f"sample_weight must have shape ({labels.shape[0]},), got {tuple(sample_weight.shape)}")
    return sample_weight[:, None].expand_as(labels)


def _check(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    if logits.shape != labels.shape or logits.dim() != 2:
        raise ValueError(f"logits and labels must both be (batch, classes); got {tuple(logits.shape)} and {tuple(labels.shape)}")
    return labels.to(dtype=logits.dtype)


def soft_auc_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    margin: float = 1.0,
    pos_weight: float = 1.0,
    neg_weight: float = 1.0,
    sample_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Soft-label AUC loss (scalar) of clip logits ``(B, C)`` against labels in [0, 1] ``(B, C)``.

    ``sample_weight``: optional ``(B,)`` weight of each row (e.g. lower for pseudo-labelled samples).
    """
    labels = _check(logits, labels)
    rows = _row_weights(labels, sample_weight)
    positive, negative = labels > 0.5, labels < 0.5
    pos_w = pos_weight * (labels - 0.5) * rows
    neg_w = neg_weight * (0.5 - labels) * rows
    return _pairwise_logistic(logits, positive, negative, pos_w, neg_w, margin)


def auc_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    margin: float = 1.0,
    sample_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Hard-label AUC loss (scalar): every pair weighs 1 (times the optional per-row ``sample_weight`` ``(B,)``).

    Labels are meant to be 0/1; soft labels are split at 0.5 like the soft loss does.
    """
    labels = _check(logits, labels)
    rows = _row_weights(labels, sample_weight)
    return _pairwise_logistic(logits, labels > 0.5, labels < 0.5, rows, rows, margin)


def bce_loss(
    logits: torch.Tensor, labels: torch.Tensor, *, sample_weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean binary cross-entropy with logits over all entries ``(B, C)`` (rows weighted by ``sample_weight``)."""
    labels = _check(logits, labels)
    per_entry = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    return (per_entry * _row_weights(labels, sample_weight)).mean()


#: Loss name (as on the command line) → function ``(logits, labels, *, sample_weight=None) -> scalar``.
LOSSES: dict[str, Callable[..., torch.Tensor]] = {"soft-auc": soft_auc_loss, "auc": auc_loss, "bce": bce_loss}


def get_loss(name: str) -> Callable[..., torch.Tensor]:
    """The loss function registered under ``name`` (``soft-auc``, ``auc`` or ``bce``)."""
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; choose one of {sorted(LOSSES)}") from None
