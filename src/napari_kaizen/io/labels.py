"""Label images to and from TIFF, PNG and NPY, without changing a single value.

The dtype written is the smallest unsigned integer type that holds the largest label
(uint8, uint16, uint32, uint64), so a file opens everywhere and round-trips exactly.
Writers are atomic and never replace an existing file unless asked.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .._files import atomic_write
from ..errors import InputError

#: Suffixes the label reader and writer understand.
LABEL_SUFFIXES = (".tif", ".tiff", ".png", ".npy")


def label_dtype(labels: np.ndarray) -> np.dtype:
    """Smallest unsigned dtype that holds every value of ``labels``.

    Raises
    ------
    InputError
        Negative or non-integer values.
    """
    arr = np.asarray(labels)
    if arr.dtype == bool:
        return np.dtype(np.uint8)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.all(np.mod(arr, 1) == 0):
            raise InputError("labels must be whole numbers: this array has fractional, NaN or infinite values")
    elif arr.dtype.kind not in "iu":
        raise InputError(f"labels must be integers, got dtype {arr.dtype}")
    if arr.size == 0:
        return np.dtype(np.uint8)
    lo, hi = arr.min(), arr.max()
    if lo < 0:
        raise InputError(f"labels must not be negative (minimum is {lo})")
    for dt in (np.uint8, np.uint16, np.uint32, np.uint64):
        if hi <= np.iinfo(dt).max:
            return np.dtype(dt)
    raise InputError(f"largest label {hi} does not fit 64 bits")


def _format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in LABEL_SUFFIXES:
        raise InputError(f"cannot write labels as '{suffix or path.name}': use .tif, .tiff, .png or .npy")
    return suffix


def imagej_axes(axes: str | None, data: np.ndarray) -> str | None:
    """The ImageJ hyperstack axes (``'TZCYX'`` and its parts) labels of these leading ``axes`` keep, or None.

    A stack segmented from an ImageJ hyperstack or an OME image keeps its time, z and
    channel axes, so Fiji opens its labels with the same sliders as the image. ImageJ
    takes them only in T, Z, C order and as 8- or 16-bit pixels; other labels are a
    plain stack.

    >>> imagej_axes("TZC", np.zeros((2, 3, 2, 8, 8), np.uint16)), imagej_axes("CZ", np.zeros((2, 3, 8, 8), np.uint8))
    ('TZCYX', None)
    """
    if not axes or len(axes) != np.ndim(data) - 2 or np.dtype(data.dtype) not in (np.uint8, np.uint16):
        return None
    order = [("TZC".find(a)) for a in axes]
    return axes + "YX" if all(k >= 0 for k in order) and order == sorted(set(order)) else None


def write_labels(path: str | os.PathLike, labels: np.ndarray, *, overwrite: bool = False,
                 axes: str | None = None) -> Path:
    """Write a label image; the format follows the suffix (.tif/.tiff, .png, .npy).

    Parameters
    ----------
    path : path-like
    labels : ndarray of non-negative integers
        2-D, or a stack for TIFF / NPY.
    overwrite : bool
        Replace an existing file. Without it, an existing file raises ``OverwriteError``.
    axes : str, optional
        Letters of a stack's leading axes (``'TZC'``, as the image's file named them,
        :func:`~napari_kaizen.io.zarr.stack_axes`): a TIFF is then written as an ImageJ
        hyperstack with them where ImageJ can hold it (:func:`imagej_axes`).

    Returns
    -------
    Path

    Raises
    ------
    InputError
        Unsupported suffix, non-integer or negative labels, a stack or labels above
        65535 for PNG.
    OverwriteError
        The file exists and ``overwrite`` is False.
    """
    dest = Path(path)
    fmt = _format(dest)
    arr = np.asarray(labels)
    data = arr.astype(label_dtype(arr), copy=False)
    if fmt == ".png":
        if data.ndim != 2:
            raise InputError(f"PNG holds one 2-D plane; these labels have shape {data.shape}: use .tif or .npy")
        if data.dtype.itemsize > 2:
            raise InputError(f"PNG holds labels up to 65535; the largest here is {int(data.max())}: use .tif or .npy")

        def write(tmp: Path) -> None:
            import imageio.v3 as iio

            iio.imwrite(tmp, data, extension=".png")
    elif fmt == ".npy":
        def write(tmp: Path) -> None:
            with open(tmp, "wb") as fh:
                np.save(fh, data, allow_pickle=False)
    else:
        hyperstack = imagej_axes(axes, data)

        def write(tmp: Path) -> None:
            import tifffile

            if hyperstack:
                tifffile.imwrite(tmp, data, compression="zlib", imagej=True, metadata={"axes": hyperstack})
            else:
                # minisblack: a 3-plane stack must not be read back as an RGB image.
                tifffile.imwrite(tmp, data, compression="zlib", photometric="minisblack")

    return atomic_write(dest, write, overwrite=overwrite)


def read_labels(path: str | os.PathLike) -> np.ndarray:
    """Read a label image written by :func:`write_labels` (or any integer image file).

    Raises
    ------
    InputError
        Unknown suffix or a file that does not hold integer labels.
    FileNotFoundError
    """
    src = Path(path)
    if not src.exists():
        raise FileNotFoundError(f"labels file {src} not found")
    fmt = src.suffix.lower()
    if fmt not in LABEL_SUFFIXES:
        raise InputError(f"cannot read labels from '{src.name}': expected .tif, .tiff, .png or .npy")
    if fmt == ".npy":
        data = np.load(src, allow_pickle=False)
    elif fmt == ".png":
        import imageio.v3 as iio

        data = iio.imread(src)
    else:
        import tifffile

        data = tifffile.imread(src)
    if data.dtype.kind == "f":
        # Some tools save labels as float: whole numbers are labels, anything else is not.
        finite = np.isfinite(data)
        if finite.all() and np.all(np.mod(data, 1) == 0) and (data.size == 0 or data.min() >= 0):
            return data.astype(np.int64)
        raise InputError(f"{src.name} holds {data.dtype} pixels that are not whole numbers >= 0 (e.g. "
                         f"{float(data[~finite].flat[0] if not finite.all() else data[(np.mod(data, 1) != 0) | (data < 0)].flat[0])!r})"
                         ": not labels (an intensity or probability image?)")
    if data.dtype.kind not in "biu":
        raise InputError(f"{src.name} holds {data.dtype} pixels, not integer labels")
    if data.dtype.kind == "i" and data.size and data.min() < 0:
        raise InputError(f"{src.name} holds negative values (minimum {data.min()}): labels are 0 for background "
                         "and positive ids for objects")
    return data
