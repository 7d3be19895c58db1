"""The AUC losses against a direct transcription of REFERENCE.md section 5, stability and gradients."""

from __future__ import annotations

import math

import pytest
import torch

from birdinfer_train.losses import auc_loss, bce_loss, get_loss, soft_auc_loss


def _formula(logits, labels, *, margin=1.0, pos_weight=1.0, neg_weight=1.0, sample_weight=None, hard=False):
    """Loop transcription of the written formula, in Python floats (log(1 + exp(x)) as written)."""
    rows, cols = len(labels), len(labels[0])
    sw = [1.0] * rows if sample_weight is None else [float(w) for w in sample_weight]
    positives, negatives = [], []
    for b in range(rows):
        for c in range(cols):
            y, p = float(labels[b][c]), float(logits[b][c])
            if y > 0.5:
                positives.append((p, (1.0 if hard else pos_weight * (y - 0.5)) * sw[b]))
            elif y < 0.5:
                negatives.append((p, (1.0 if hard else neg_weight * (0.5 - y)) * sw[b]))
    if not positives or not negatives:
        return 0.0
    total = 0.0
    for p_pos, w_pos in positives:
        for p_neg, w_neg in negatives:
            total += w_pos * w_neg * math.log(1.0 + math.exp(-margin * (p_pos - p_neg)))
    return total / (len(positives) * len(negatives))


def _case(seed, batch=6, classes=5, *, soft=True):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, classes, generator=g, dtype=torch.float64) * 3
    labels = torch.rand(batch, classes, generator=g, dtype=torch.float64)
    if not soft:
        labels = (labels > 0.7).to(torch.float64)
    labels[0, 0] = 0.5  # neither positive nor negative
    return logits, labels


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("margin,pos_weight,neg_weight", [(1.0, 1.0, 1.0), (2.0, 0.5, 3.0)])
def test_soft_auc_equals_formula(seed, margin, pos_weight, neg_weight):
    logits, labels = _case(seed)
    weights = torch.linspace(0.2, 1.5, labels.shape[0], dtype=torch.float64)
    for sw in (None, weights):
        got = soft_auc_loss(logits, labels, margin=margin, pos_weight=pos_weight, neg_weight=neg_weight, sample_weight=sw)
        want = _formula(logits.tolist(), labels.tolist(), margin=margin, pos_weight=pos_weight,
                        neg_weight=neg_weight, sample_weight=None if sw is None else sw.tolist())
        assert got.item() == pytest.approx(want, rel=1e-9)  # log(1 + tiny) in the transcription loses ~1e-11


@pytest.mark.parametrize("seed", range(4))
def test_hard_auc_equals_formula(seed):
    logits, labels = _case(seed, soft=False)
    weights = torch.linspace(1.5, 0.1, labels.shape[0], dtype=torch.float64)
    for sw, margin in ((None, 1.0), (weights, 0.7)):
        got = auc_loss(logits, labels, margin=margin, sample_weight=sw)
        want = _formula(logits.tolist(), labels.tolist(), margin=margin, hard=True,
                        sample_weight=None if sw is None else sw.tolist())
        assert got.item() == pytest.approx(want, rel=1e-9)


def test_zero_without_positive_or_negative_and_still_differentiable():
    logits = torch.randn(4, 3, requires_grad=True)
    for labels in (torch.zeros(4, 3), torch.ones(4, 3), torch.full((4, 3), 0.5)):
        for fn in (soft_auc_loss, auc_loss):
            loss = fn(logits, labels)
            assert loss.item() == 0.0
            loss.backward()
            assert torch.all(logits.grad == 0)


def test_extreme_logits_are_finite_and_correct():
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # Positives far below negatives: each pair's softplus(-(p_pos - p_neg)) = 2e4 exactly (the formula overflows).
    wrong = torch.tensor([[-1e4, 1e4], [1e4, -1e4]], requires_grad=True)
    loss = auc_loss(wrong, labels)
    assert torch.isfinite(loss) and loss.item() == pytest.approx(2e4, rel=1e-6)
    loss.backward()
    assert torch.isfinite(wrong.grad).all() and wrong.grad.abs().max() > 0
    soft = soft_auc_loss(wrong.detach(), labels)
    assert soft.item() == pytest.approx(0.25 * 2e4, rel=1e-6)
    # Positives far above negatives: the loss vanishes (exp(-2e4) underflows to exactly 0).
    right = -wrong.detach()
    assert auc_loss(right, labels).item() == 0.0
    assert torch.isfinite(bce_loss(wrong, labels))


def test_soft_labels_of_exactly_zero_one_reduce_to_hard_loss():
    logits, labels = _case(11, soft=False)
    labels[0, 0] = 1.0
    hard = auc_loss(logits, labels)
    # Written weights: (y - 0.5) = 0.5 and (0.5 - y) = 0.5 per entry, so a constant factor 1/4 ...
    assert soft_auc_loss(logits, labels).item() == pytest.approx(0.25 * hard.item(), rel=1e-12)
    # ... and exactly the hard loss with pos_weight = neg_weight = 2, also with sample weights.
    sw = torch.linspace(0.5, 2.0, labels.shape[0], dtype=torch.float64)
    assert soft_auc_loss(logits, labels, pos_weight=2.0, neg_weight=2.0, sample_weight=sw).item() == pytest.approx(
        auc_loss(logits, labels, sample_weight=sw).item(), rel=1e-12
    )


def test_gradcheck_float64():
    logits, labels = _case(3)
    logits.requires_grad_(True)
    sw = torch.linspace(0.3, 1.2, labels.shape[0], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda p: soft_auc_loss(p, labels, margin=1.5, sample_weight=sw), (logits,))
    hard = (labels > 0.5).to(torch.float64)
    assert torch.autograd.gradcheck(lambda p: auc_loss(p, hard), (logits,))
    assert torch.autograd.gradcheck(lambda p: bce_loss(p, labels), (logits,))


def test_auc_loss_decreases_as_ranking_improves():
    labels = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    bad = torch.tensor([[0.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    assert auc_loss(-bad, labels) < auc_loss(bad, labels)


def test_bce_matches_torch_and_registry():
    logits, labels = _case(5)
    assert bce_loss(logits, labels).item() == pytest.approx(
        torch.nn.functional.binary_cross_entropy_with_logits(logits, labels).item(), rel=1e-12
    )
    assert get_loss("soft-auc") is soft_auc_loss
    with pytest.raises(ValueError, match="unknown loss"):
        get_loss("focal")
