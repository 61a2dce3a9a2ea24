"""Losses for segmentation with few images: Dice, log-Dice and pixel-weighted BCE.

Dice-type losses care about the overlap of objects, not the count of pixels, so a
field that is 90 % background does not teach the network to predict background
everywhere; log-Dice keeps the gradient large when the overlap is already good.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def dice_coefficient(prob: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Soft Dice per sample and channel: ``(2|P∩T| + eps) / (|P| + |T| + eps)``.

    Parameters
    ----------
    prob, target : Tensor, shape (B, C, H, W)
        Probabilities in ``[0, 1]`` and binary (or soft) targets.
    eps : float
        Smoothing, so empty-vs-empty scores 1.
    """
    dims = tuple(range(2, prob.ndim))
    inter = (prob * target).sum(dims)
    total = prob.sum(dims) + target.sum(dims)
    return (2 * inter + eps) / (total + eps)


def dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """``1 - Dice`` of ``sigmoid(logits)``, averaged over samples and channels."""
    return 1.0 - dice_coefficient(torch.sigmoid(logits), target, eps).mean()


def log_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """``-log(Dice)`` of ``sigmoid(logits)``, averaged over samples and channels."""
    return -torch.log(dice_coefficient(torch.sigmoid(logits), target, eps).clamp_min(1e-6)).mean()


def weighted_bce(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Binary cross-entropy with logits and an optional per-pixel weight map.

    The mean is taken over the weights, so over-weighting edges changes what matters,
    not the scale of the loss.
    """
    loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    if weight is None:
        return loss.mean()
    weight = weight.expand_as(loss)
    return (loss * weight).sum() / weight.sum().clamp_min(1e-6)


def weighted_cross_entropy(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Multi-class cross-entropy ``(B, K, H, W)`` vs class ids ``(B, H, W)``, pixel-weighted."""
    loss = F.cross_entropy(logits, target.long(), reduction="none")
    if weight is None:
        return loss.mean()
    return (loss * weight).sum() / weight.sum().clamp_min(1e-6)
