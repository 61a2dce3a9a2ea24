"""Three-class targets and pixel weights from instance labels.

The GoogLeNet FCN classifies every pixel as background, cell interior or cell edge.
The edge class is a band of ``edge_width`` pixels inside each object along its outline:
where it meets the background *and* where it meets another object, so two touching
cells are always separated by a band of edge pixels about ``2 * edge_width`` wide.
Thresholding the interior probability then gives one component per cell, which is
grown back over its band afterwards (:mod:`.segment`).

The post over-weighted errors on edge pixels so the network is careful exactly where
touching cells are told apart; :func:`pixel_weights` does that with one number.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from ...errors import InputError
from .._common.training import check_labels

BACKGROUND, INTERIOR, EDGE = 0, 1, 2


def edge_distance(labels: np.ndarray) -> np.ndarray:
    """Distance (pixels) from each object pixel to its object's outline; 0 on the outline.

    The outline is the set of object pixels with a 4-neighbour of another label
    (another object or background), i.e. ``find_boundaries(mode='inner')``. The image
    border is not an outline: an object cut by a crop continues beyond it.
    """
    lab = np.asarray(labels)
    outline = np.zeros(lab.shape, bool)
    # Pixels whose right / lower neighbour differs, marked on both sides (4-connectivity).
    dy = lab[1:, :] != lab[:-1, :]
    dx = lab[:, 1:] != lab[:, :-1]
    outline[1:, :] |= dy
    outline[:-1, :] |= dy
    outline[:, 1:] |= dx
    outline[:, :-1] |= dx
    outline &= lab > 0
    if not outline.any():
        return np.where(lab > 0, np.inf, 0.0).astype(np.float32)
    dist = ndi.distance_transform_edt(~outline).astype(np.float32)
    dist[lab == 0] = 0.0
    return dist


def fcn_targets(labels: np.ndarray, edge_width: float = 2.0) -> np.ndarray:
    """Class of every pixel: 0 background, 1 interior, 2 edge.

    Parameters
    ----------
    labels : ndarray of int, shape (H, W)
        Instance labels (0 = background).
    edge_width : float
        Width in pixels of the edge band inside each object (1 = the outline only).

    Returns
    -------
    ndarray of uint8, shape (H, W)

    Notes
    -----
    An object too small or thin to keep any interior after the band is removed keeps
    its innermost pixels as interior, so every object leaves a seed when the interior
    probability is thresholded.

    Examples
    --------
    >>> import numpy as np
    >>> lab = np.zeros((9, 12), int); lab[1:8, 1:6] = 1; lab[1:8, 6:11] = 2
    >>> t = fcn_targets(lab, edge_width=1)
    >>> t[4]
    array([0, 2, 1, 1, 1, 2, 2, 1, 1, 1, 2, 0], dtype=uint8)
    """
    lab = check_labels(labels)
    if not edge_width > 0:
        raise InputError(f"edge_width must be positive (pixels), got {edge_width}")
    fg = lab > 0
    dist = edge_distance(lab)
    edge = fg & (dist < float(edge_width) - 0.5)
    interior = fg & ~edge
    out = np.zeros(lab.shape, np.uint8)
    out[interior] = INTERIOR
    out[edge] = EDGE
    ids = np.unique(lab[fg])
    if ids.size:
        have = np.unique(lab[interior])
        lacking = np.setdiff1d(ids, have, assume_unique=True)
        if lacking.size:
            # Innermost pixels of objects that would otherwise have no interior at all.
            deepest = np.asarray(ndi.maximum(dist, lab, lacking), np.float32)
            lut = np.full(int(lab.max()) + 1, np.inf, np.float32)
            lut[lacking] = deepest
            core = fg & (dist >= lut[lab])
            out[core] = INTERIOR
    return out


def pixel_weights(classes: np.ndarray, edge_weight: float = 5.0) -> np.ndarray:
    """Loss weight of every pixel: ``edge_weight`` on edge pixels, 1 elsewhere.

    The loss is divided by the summed weights (see
    :func:`~napari_kaizen.engines._common.losses.weighted_cross_entropy`), so the weight
    changes how much edges matter relative to the rest, not the scale of the loss.
    """
    if not np.isfinite(edge_weight) or edge_weight <= 0:
        raise InputError(f"edge_weight must be a positive number, got {edge_weight}")
    w = np.ones(np.shape(classes), np.float32)
    w[np.asarray(classes) == EDGE] = float(edge_weight)
    return w
