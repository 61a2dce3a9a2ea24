"""Instances from the predicted maps: h-maxima seeds of the distance map, watershed of the mask.

The paper (section 2.3.2) takes the h-maxima transform of the predicted distance map
(``HMAX_h(f)``, the reconstruction by dilation of ``f - h`` under ``f``), whose
regional maxima are the seeds, one per cell; the watershed of the (negated) distance
map then splits the predicted mask into one region per seed.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def find_seeds(distance: np.ndarray, mask: np.ndarray, h: float, *, smooth: float = 0.0) -> np.ndarray:
    """Label the h-maxima of ``distance`` inside ``mask``: one id per seed.

    Parameters
    ----------
    distance : ndarray of float, shape (H, W)
        Predicted distance map (about 1 at object centres, 0 on the background).
    mask : ndarray of bool, shape (H, W)
    h : float
        Minimum contrast (dynamic) of a maximum to be kept; maxima lower than this above
        the saddle to a higher neighbour merge into it.
    smooth : float
        Gaussian sigma (pixels) applied first, to remove pixel noise from the map.

    Returns
    -------
    ndarray of int32
        Seed labels 1..N (0 elsewhere).
    """
    from skimage.morphology import h_maxima

    d = np.asarray(distance, dtype=np.float32)
    if smooth > 0:
        d = ndi.gaussian_filter(d, smooth)
    # h_maxima works on the map's own grey levels; clipping negatives keeps the
    # background flat so it cannot host spurious maxima.
    d = np.clip(d, 0.0, None)
    if not mask.any() or float(d.max()) <= 0:
        return np.zeros(d.shape, np.int32)
    peaks = h_maxima(d, max(float(h), 1e-6)).astype(bool) & mask
    seeds, _ = ndi.label(peaks, structure=np.ones((3, 3)))
    return seeds.astype(np.int32)


def watershed_instances(distance: np.ndarray, mask: np.ndarray, seeds: np.ndarray, min_area: int) -> np.ndarray:
    """Watershed of ``-distance`` from ``seeds`` within ``mask``; small objects removed.

    Mask components that received no seed (an object whose distance peak was lower
    than ``h`` everywhere, e.g. a tiny one) keep their own id rather than being lost.

    Returns
    -------
    ndarray of int32
        Labels 1..N.
    """
    from skimage.segmentation import relabel_sequential, watershed

    if not mask.any():
        return np.zeros(mask.shape, np.int32)
    labels = watershed(-np.asarray(distance, np.float32), seeds, mask=mask)
    orphans, n_orphans = ndi.label(mask & (labels == 0))
    if n_orphans:
        labels = np.where(orphans > 0, orphans + labels.max(), labels)
    counts = np.bincount(labels.ravel())
    small = counts < max(1, int(min_area))
    small[0] = False
    labels = np.where(small[labels], 0, labels)
    return relabel_sequential(labels.astype(np.int32))[0].astype(np.int32)


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
    mask = ndi.binary_fill_holes(mask)
    seeds = find_seeds(distance, mask, h, smooth=smooth)
    return seeds, watershed_instances(distance, mask, seeds, min_area)
