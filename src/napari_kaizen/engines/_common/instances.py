"""Instance-level clean-up shared by the engines (pure numpy / scipy)."""

from __future__ import annotations

import numpy as np

from .normalize import whole_image_value


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
