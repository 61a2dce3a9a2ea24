"""Reading micrographs from disk for the CLI (TIFF, PNG, JPEG, NPY)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import InputError

#: Suffixes :func:`read_image` understands.
IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".npy")


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
            return np.load(src, allow_pickle=False)
        if suffix in (".tif", ".tiff"):
            import tifffile

            return tifffile.imread(src)
        import imageio.v3 as iio

        return iio.imread(src)
    except (ValueError, OSError) as exc:
        raise InputError(f"cannot read '{src.name}': {exc.__class__.__name__}: {exc}") from None


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
