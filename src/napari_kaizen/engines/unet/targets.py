"""Fine-tuning targets and loss of the ISL U-Net: mask + per-cell distance map.

The paper (seed 001, section 2.3.2) fine-tunes to two channels: a distance map, "an
image where pixel values get higher as they are closer to the centre of the cell, the
background remaining black", and a semantic mask. The loss is

    L = MSE(distance) + lambda * BCEWithLogits(mask)

with lambda "the initial ratio between MSELoss and BCEWithLogitsLoss" (2000 for their
8-bit distance maps). Here the distance of every object is normalised to a peak of 1,
so big and small objects weigh the same and h (the seed contrast) means the same for
all of them; lambda is measured again at the start of every fine-tune
(:func:`balance_lambda`), because it depends on the targets and on the initial model.
"""

from __future__ import annotations

import numpy as np

from .._common.instances import distance_map  # noqa: F401 - shared with the FCN's distance output
from .._common.training import check_labels  # noqa: F401 - part of this module's API


def segmentation_targets(labels: np.ndarray) -> np.ndarray:
    """Targets ``(2, H, W)`` float32: per-object normalised distance map, then the mask.

    The channel order (distance first) is the paper's.
    """
    lab = np.asarray(labels)
    return np.stack([distance_map(lab), (lab > 0).astype(np.float32)])


def segmentation_loss_parts(output, target):
    """``(mse_distance, bce_mask)`` of a segmentation output against its targets.

    Parameters
    ----------
    output : Tensor, shape (B, 3, H, W)
        ``(fluorescence, distance, mask_logit)`` from :class:`~.model.ISLUNet`.
    target : Tensor, shape (B, 2, H, W) or (B, 3, H, W)
        ``(distance, mask)`` from :func:`segmentation_targets`, optionally with a third
        channel: the pixels that count (a partial correction's checked region).
    """
    import torch.nn.functional as F

    if target.shape[1] < 3:
        mse = F.mse_loss(output[:, 1], target[:, 0])
        bce = F.binary_cross_entropy_with_logits(output[:, 2], target[:, 1])
        return mse, bce
    weight = target[:, 2]
    total = weight.sum().clamp_min(1.0)
    mse = (weight * (output[:, 1] - target[:, 0]) ** 2).sum() / total
    bce = (weight * F.binary_cross_entropy_with_logits(output[:, 2], target[:, 1], reduction="none")).sum() / total
    return mse, bce


def balance_lambda(mse0: float, bce0: float, *, floor: float = 1e-3, ceiling: float = 1e4) -> float:
    """The paper's lambda: the initial ratio ``MSE / BCE``, so both terms start equal.

    Parameters
    ----------
    mse0, bce0 : float
        The two losses of the model before fine-tuning (averaged over a few batches).
    floor, ceiling : float
        Clamp, so a degenerate start (a perfect mask, an empty batch) cannot make one
        term vanish or explode.

    Returns
    -------
    float

    Examples
    --------
    >>> balance_lambda(0.2, 0.8)
    0.25
    """
    mse0, bce0 = float(mse0), float(bce0)
    if not np.isfinite(mse0) or not np.isfinite(bce0) or bce0 <= 0 or mse0 <= 0:
        return 1.0
    return float(np.clip(mse0 / bce0, floor, ceiling))
