"""ImageJ / Fiji ROI sets (``.zip``) from label images, and back.

Each object becomes one polygon ROI traced along its outline at sub-pixel precision
(the 0.5 iso-contour between pixel centres), named ``label-<id>``; an object made of
several pieces gets one ROI per piece. Filling the polygons by pixel centre, as ImageJ
does, gives back the same pixels for every simply connected object (holes are not
represented: ImageJ polygon ROIs have none).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from .._files import atomic_write
from ..errors import InputError


def object_outlines(labels: np.ndarray):
    """Outer outline of every piece of every labelled object of a 2-D image.

    The outline is the 0.5 iso-contour between pixel centres, in image pixel coordinates
    (x, y) with pixel centres at +0.5 (the convention of ImageJ and QuPath: pixel (0, 0)
    covers [0, 1) x [0, 1)). Filling it by pixel centre gives back the object's pixels.

    Parameters
    ----------
    labels : ndarray of int, shape (H, W)

    Yields
    ------
    label : int
    piece, n_pieces : int
        1-based index of the connected piece and how many the object has.
    xy : ndarray of float, shape (N, 2)
        Open ring (the first point is not repeated at the end).
    """
    from skimage.measure import find_contours

    lab = np.asarray(labels)
    if lab.ndim != 2:
        raise InputError(f"outlines are traced per 2-D plane; got labels of shape {lab.shape}")
    slices = ndi.find_objects(lab.astype(np.int64, copy=False))
    for idx, sl in enumerate(slices, start=1):
        if sl is None:
            continue
        y0, x0 = sl[0].start, sl[1].start
        mask = np.pad(lab[sl] == idx, 1)
        pieces, n = ndi.label(mask)
        for k in range(1, n + 1):
            contours = find_contours((pieces == k).astype(np.float32), 0.5)
            if not contours:
                continue
            outer = max(contours, key=len)
            # skimage (row, col) with pixel centres at integers -> (x, y) with pixel
            # centres at +0.5; undo the 1-pixel pad.
            xy = np.column_stack([outer[:, 1] - 1 + x0 + 0.5, outer[:, 0] - 1 + y0 + 0.5])
            if len(xy) > 1 and np.allclose(xy[0], xy[-1]):
                xy = xy[:-1]
            yield idx, k, n, xy


def labels_to_rois(labels: np.ndarray, *, position: int | None = None) -> list:
    """Polygon :class:`roifile.ImagejRoi` for every labelled object of a 2-D image.

    Parameters
    ----------
    labels : ndarray of int, shape (H, W)
    position : int, optional
        0-based index of the plane in a stack (stored as ImageJ's 1-based position).
    """
    from roifile import ImagejRoi

    lab = np.asarray(labels)
    if lab.ndim != 2:
        raise InputError(f"ROIs are made per 2-D plane; got labels of shape {lab.shape}")
    rois = []
    for idx, k, n, xy in object_outlines(lab):
        name = f"label-{idx:05d}" + (f"-{k}" if n > 1 else "")
        rois.append(ImagejRoi.frompoints(xy.astype(np.float32), name=name, position=position))
    return rois


def write_roi_zip(path: str | os.PathLike, labels: np.ndarray, *, overwrite: bool = False) -> Path:
    """Write an ImageJ ROI set (``.zip``) with one polygon per object.

    3-D label stacks get ROIs per plane with the ImageJ stack position set.
    """
    from roifile import roiwrite

    dest = Path(path)
    if dest.suffix.lower() != ".zip":
        raise InputError(f"an ImageJ ROI set is a .zip file; got '{dest.name}'")
    lab = np.asarray(labels)
    if lab.dtype.kind not in "biu":
        raise InputError(f"labels must be integers, got dtype {lab.dtype}")
    if lab.ndim == 2:
        rois = labels_to_rois(lab)
    elif lab.ndim == 3:
        rois = [r for z in range(lab.shape[0]) for r in labels_to_rois(lab[z], position=z)]
    else:
        raise InputError(f"ROI sets hold 2-D labels or a stack of them; got shape {lab.shape}")
    if not rois:
        raise InputError("there are no labelled objects to write as ROIs")
    return atomic_write(dest, lambda tmp: roiwrite(tmp, rois, mode="w"), overwrite=overwrite)


def read_roi_zip(path: str | os.PathLike, shape: tuple[int, ...]) -> np.ndarray:
    """Rasterise an ImageJ ROI set into labels of ``shape`` (pixel-centre rule).

    ROIs named ``label-<id>`` keep their id; others are numbered in file order after
    the largest id.
    """
    from roifile import roiread
    from skimage.draw import polygon

    rois = roiread(path)
    if not isinstance(rois, list):
        rois = [rois]
    out = np.zeros(shape, np.uint32)
    next_id = 1 + max(
        (int(r.name.split("-")[1]) for r in rois if r.name and r.name.startswith("label-")), default=0
    )
    for roi in rois:
        if roi.name and roi.name.startswith("label-"):
            value = int(roi.name.split("-")[1])
        else:
            value, next_id = next_id, next_id + 1
        xy = np.asarray(roi.coordinates(), dtype=np.float64)
        rr, cc = polygon(xy[:, 1] - 0.5, xy[:, 0] - 0.5, shape=shape[-2:])
        if len(shape) == 3:
            z = max(0, int(roi.position or 1) - 1)
            out[z, rr, cc] = value
        else:
            out[rr, cc] = value
    return out
