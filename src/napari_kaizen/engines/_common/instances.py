"""Instance-level clean-up shared by the engines (pure numpy / scipy)."""

from __future__ import annotations

import numpy as np

from .normalize import whole_image_value

#: The smallest area of an object cut by the image's edge, as a fraction of a typical
#: object's area. Only part of such an object is in the image, so the engines' usual
#: smallest size (meant for rim fragments and micronuclei) would drop it, and people
#: outline it: 12.6 % of the annotated real nuclei (``scripts/real_nuclei.py``) touch
#: the edge of their image.
BORDER_AREA_FRACTION = 0.1


def small_objects(labels: np.ndarray, min_area: float, border_min_area: float | None = None,
                  n: int | None = None) -> np.ndarray:
    """Boolean table over ids ``0..n``: objects with fewer than ``min_area`` pixels.

    Parameters
    ----------
    labels : ndarray of int
    min_area : float
        Pixels; objects below it are small (at least 1: absent ids are always small).
    border_min_area : float, optional
        The bar for objects that touch the edge of ``labels`` (they show only part of
        their area), never above ``min_area``; ``None``: the same as ``min_area``.
    n : int, optional
        The largest id of the table (default ``labels.max()``).

    Examples
    --------
    >>> lab = np.zeros((6, 8), int); lab[2:4, 3:5] = 1; lab[0:2, 0:2] = 2
    >>> small_objects(lab, 5).tolist(), small_objects(lab, 5, border_min_area=2).tolist()
    ([False, True, True], [False, True, False])
    """
    lab = np.asarray(labels)
    n = (int(lab.max()) if lab.size else 0) if n is None else int(n)
    counts = np.bincount(lab.ravel(), minlength=n + 1)[: n + 1]
    small = counts < max(1.0, float(min_area))
    if border_min_area is not None and lab.ndim == 2 and lab.size:
        edge = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
        edge = edge[(edge > 0) & (edge <= n)]
        small[edge] = counts[edge] < max(1.0, min(float(border_min_area), float(min_area)))
    small[0] = False
    return small


def dim_objects(labels: np.ndarray, image: np.ndarray, min_contrast: float) -> np.ndarray:
    """Boolean table over ids ``0..max``: objects much dimmer than the field's typical one.

    An object's contrast is its mean brightness minus the median of the pixels outside
    every object; an object under ``min_contrast`` times the median contrast of the
    objects is dim (faint cytoplasm or out-of-focus haze taken for a nucleus on a dark,
    sparse field). ``min_contrast`` 0 marks nothing.
    """
    lab = np.asarray(labels)
    n = int(lab.max()) if lab.size else 0
    dim = np.zeros(n + 1, bool)
    if min_contrast <= 0 or n < 2 or not (lab == 0).any():
        return dim
    img = np.asarray(image, np.float32)
    sums = np.bincount(lab.ravel(), weights=img.ravel(), minlength=n + 1)
    counts = np.bincount(lab.ravel(), minlength=n + 1)
    present = counts[1:] > 0
    contrast = np.zeros(n + 1)
    contrast[1:][present] = sums[1:][present] / counts[1:][present] - float(np.median(img[lab == 0]))
    # A tiled run fixes the typical contrast for the whole image, so tiles drop the same objects.
    typical = whole_image_value("dim_typical_contrast", np.median, contrast[1:][present])
    if typical > 0:
        dim[1:] = present & (contrast[1:] < min_contrast * typical)
    return dim


def drop_dim_objects(labels: np.ndarray, image: np.ndarray, min_contrast: float) -> np.ndarray:
    """``labels`` without its :func:`dim_objects`, ids renumbered 1..M."""
    from skimage.segmentation import relabel_sequential

    lab = np.asarray(labels)
    dim = dim_objects(lab, image, min_contrast)
    if not dim.any():
        return lab
    return relabel_sequential(np.where(dim[lab], 0, lab).astype(np.int32))[0].astype(np.int32)
