"""napari reader and writer hooks (thin: all work is in :mod:`napari_kaizen.io`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .labels import LABEL_SUFFIXES, read_labels, write_labels
from .roi import write_roi_zip


def get_reader(path: str | list[str]):
    """Return a reader for label files / ImageJ ROI sets, or None to decline."""
    paths = [path] if isinstance(path, str) else list(path)
    if not paths:
        return None
    for p in paths:
        suffix = Path(p).suffix.lower()
        if suffix not in LABEL_SUFFIXES and suffix != ".zip":
            return None
    return read_as_labels


def _roi_shape(path: str) -> tuple[int, int]:
    from roifile import roiread

    rois = roiread(path)
    rois = rois if isinstance(rois, list) else [rois]
    ys = [float(np.max(r.coordinates()[:, 1])) for r in rois]
    xs = [float(np.max(r.coordinates()[:, 0])) for r in rois]
    return int(np.ceil(max(ys))) + 1, int(np.ceil(max(xs))) + 1


def read_as_labels(path: str | list[str]) -> list[tuple]:
    """Read label files (or ROI sets) as napari labels layers."""
    from .roi import read_roi_zip

    paths = [path] if isinstance(path, str) else list(path)
    layers = []
    for p in paths:
        if Path(p).suffix.lower() == ".zip":
            # An ROI set does not record the image size: use the extent of its ROIs.
            data = read_roi_zip(p, _roi_shape(p))
        else:
            data = read_labels(p)
        layers.append((data, {"name": Path(p).stem}, "labels"))
    return layers


def write_labels_layer(path: str, data: Any, attributes: dict) -> list[str]:
    """Save a labels layer as TIFF / PNG / NPY (never replacing an existing file)."""
    return [str(write_labels(path, np.asarray(data), overwrite=False))]


def write_rois_layer(path: str, data: Any, attributes: dict) -> list[str]:
    """Save a labels layer as an ImageJ ROI set (.zip)."""
    return [str(write_roi_zip(path, np.asarray(data), overwrite=False))]
