"""Instances from the predicted maps: h-maxima seeds of the distance map, watershed of the mask.

The paper (section 2.3.2) takes the h-maxima transform of the predicted distance map
(``HMAX_h(f)``, the reconstruction by dilation of ``f - h`` under ``f``), whose
regional maxima are the seeds, one per cell; the watershed of the (negated) distance
map then splits the predicted mask into one region per seed.
"""

from __future__ import annotations

import numpy as np

# The seeding and watershed are shared with the FCN's distance output.
from .._common.instances import fill_holes, find_seeds, watershed_instances

__all__ = ["find_seeds", "instances", "watershed_instances"]


def instances(
    distance: np.ndarray,
    mask_probability: np.ndarray,
    *,
    h: float,
    min_area: int,
    mask_threshold: float = 0.5,
    smooth: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Seeds and instance labels from a predicted distance map and mask probability.

    Returns
    -------
    seeds, labels : ndarray of int32
    """
    mask = np.asarray(mask_probability) > mask_threshold
    mask = fill_holes(mask)
    seeds = find_seeds(distance, mask, h, smooth=smooth)
    return seeds, watershed_instances(distance, mask, seeds, min_area)
