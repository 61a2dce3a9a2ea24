"""Reading micrographs from disk for the CLI (TIFF, PNG, JPEG, NPY)."""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

import numpy as np

from ..errors import InputError

#: Suffixes :func:`read_image` understands.
IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".npy")


@contextlib.contextmanager
def quiet_tifffile():
    """Silence tifffile's logger for the duration.

    tifffile logs a damaged file's problems and may then return nothing or raise: the
    caller says it once, in our words, instead of log lines and a puzzling shape.
    """
    log = logging.getLogger("tifffile")
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(level)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as a numpy array (dtype and layout as stored).

    Raises
    ------
    InputError
        Unknown suffix or an unreadable file, in one line.
    FileNotFoundError
    """
    src = Path(path)
    if not src.exists():
        raise FileNotFoundError(f"image file {src} not found")
    suffix = src.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise InputError(f"cannot read '{src.name}': expected one of {', '.join(IMAGE_SUFFIXES)}")
    try:
        if suffix == ".npy":
            arr = np.load(src, allow_pickle=False)
        elif suffix in (".tif", ".tiff"):
            import tifffile

            with quiet_tifffile():
                arr = tifffile.imread(src)
        else:
            import imageio.v3 as iio

            arr = iio.imread(src)
    except (ValueError, OSError, IndexError, KeyError) as exc:
        raise InputError(f"cannot read '{src.name}': {exc.__class__.__name__}: {exc}") from None
    arr = np.asarray(arr)
    if arr.size == 0:
        raise InputError(f"cannot read '{src.name}': the file holds no image (damaged or not a {suffix[1:].upper()})")
    return arr


#: File-name ending of label images, left out when a folder is expanded.
LABELS_SUFFIX = "_labels"


def find_images(inputs: list[str | os.PathLike]) -> list[Path]:
    """Expand files and folders into a sorted list of image files.

    In a folder, label images (``*_labels.*``, as ``kaizen synth`` and ``kaizen
    segment`` write them) are left out: segmenting a folder of images and their
    ground truth segments the images. A label file named explicitly is kept.

    Raises
    ------
    InputError
        A path that does not exist, or a folder with no image files.
    """
    found: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
                           and not f.stem.lower().endswith(LABELS_SUFFIX))
            if not files:
                raise InputError(f"folder {p} holds no images ({', '.join(IMAGE_SUFFIXES)})")
            found.extend(files)
        elif p.is_file():
            found.append(p)
        else:
            raise InputError(f"{p} does not exist")
    return found
