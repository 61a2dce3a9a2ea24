"""Per-object measurements (scikit-image ``regionprops_table``) as a CSV table."""

from __future__ import annotations

import csv
import io as _io
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .._files import atomic_write
from ..errors import InputError

#: Shape properties measured for every object (2-D); 3-D drops the ones undefined there.
SHAPE_PROPERTIES_2D = (
    "label",
    "area",
    "centroid",
    "bbox",
    "equivalent_diameter_area",
    "perimeter",
    "eccentricity",
    "solidity",
    "orientation",
    "axis_major_length",
    "axis_minor_length",
)
SHAPE_PROPERTIES_3D = ("label", "area", "centroid", "bbox", "equivalent_diameter_area", "solidity")
INTENSITY_PROPERTIES = ("intensity_mean", "intensity_min", "intensity_max")


def measurements_table(
    labels: np.ndarray,
    intensity: np.ndarray | None = None,
    *,
    extra: Mapping[str, Mapping[int, float]] | None = None,
) -> dict[str, np.ndarray]:
    """Measure every labelled object.

    Parameters
    ----------
    labels : ndarray of int, 2-D or 3-D
    intensity : ndarray, optional
        Image of the same shape for intensity statistics.
    extra : mapping of column name to {label: value}, optional
        Further per-object columns (e.g. Kaizen's ``score``); missing labels get NaN.

    Returns
    -------
    dict of column name -> 1-D array, one row per label (ascending).
    """
    from skimage.measure import regionprops_table

    lab = np.asarray(labels)
    if lab.dtype.kind not in "biu":
        raise InputError(f"labels must be integers, got dtype {lab.dtype}")
    if lab.ndim not in (2, 3):
        raise InputError(f"measurements need 2-D or 3-D labels, got shape {lab.shape}")
    props = list(SHAPE_PROPERTIES_2D if lab.ndim == 2 else SHAPE_PROPERTIES_3D)
    img = None
    if intensity is not None:
        img = np.asarray(intensity)
        if img.shape != lab.shape:
            raise InputError(f"intensity image shape {img.shape} differs from labels shape {lab.shape}")
        if img.dtype.kind not in "biuf":
            raise InputError(f"intensity image has dtype {img.dtype}: expected numbers")
        props += list(INTENSITY_PROPERTIES)
    import warnings

    with warnings.catch_warnings():
        # qhull complains about flat objects (one plane of a stack, a 1-px line);
        # their solidity is undefined and becomes NaN below.
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("ignore", UserWarning)
        table = regionprops_table(lab.astype(np.int64, copy=False), intensity_image=img, properties=props)
    table = {k: np.asarray(v) for k, v in table.items()}
    if "solidity" in table:
        sol = table["solidity"].astype(float)
        sol[~np.isfinite(sol) | (sol > 1.0 + 1e-6)] = np.nan  # undefined, not infinitely solid
        table["solidity"] = sol
    for name, values in (extra or {}).items():
        table[name] = np.array([values.get(int(i), np.nan) for i in table["label"]], dtype=float)
    return table


def write_measurements_csv(
    path: str | os.PathLike,
    labels: np.ndarray,
    intensity: np.ndarray | None = None,
    *,
    extra: Mapping[str, Mapping[int, float]] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write :func:`measurements_table` as CSV (atomic, no clobber unless asked)."""
    return write_table_csv(path, measurements_table(labels, intensity, extra=extra), overwrite=overwrite)


def write_table_csv(path: str | os.PathLike, table: Mapping[str, np.ndarray], *, overwrite: bool = False) -> Path:
    """Write a measurements table (columns of one row per object) as CSV (atomic, no clobber unless asked)."""
    columns = list(table)
    buf = _io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    n = len(table["label"]) if columns else 0
    for i in range(n):
        row = []
        for c in columns:
            v = table[c][i]
            row.append(int(v) if np.issubdtype(type(v), np.integer) else repr(float(v)))
        writer.writerow(row)
    text = buf.getvalue()
    return atomic_write(Path(path), lambda tmp: tmp.write_text(text), overwrite=overwrite)


def read_measurements_csv(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a CSV written by :func:`write_measurements_csv` back into columns."""
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows:
        return {}
    header, body = rows[0], rows[1:]
    out: dict[str, np.ndarray] = {}
    for j, name in enumerate(header):
        col = [r[j] for r in body]
        out[name] = np.array([int(v) for v in col]) if name == "label" else np.array([float(v) for v in col])
    return out
