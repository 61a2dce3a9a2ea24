"""Which way round the objects are: bright on a dark field, or dark on a bright one.

The nucleus engines look for bright objects on a dark field (a fluorescence nucleus
stain). Nuclei are just as often imaged the other way round: a bright-field frame of
stained cells, a hematoxylin-stained section, a colour camera's picture of a slide. Such
a plane is turned round (:func:`turned_round`, by
:func:`~napari_kaizen.engines._common.normalize.bright_objects`) before the engine sees
it, so it finds the nuclei instead of the spaces between them; nothing else about the
run changes. A colour picture of a bright field is read as its grey luminance
(:func:`colour_bright_field`, :func:`luminance`).

The decision (:func:`dark_objects`) is the sign of the pixels' skewness: the field is
most of a micrograph and its objects the histogram's tail, on the bright side for
fluorescence and on the dark side for a bright field.
"""

from __future__ import annotations

import numpy as np

from ...errors import InputError

#: Values of the nucleus engines' ``objects`` parameter.
OBJECTS = ("auto", "bright", "dark")

#: Pixels the skewness is computed on (a regular subsample of larger planes): its
#: sampling error there is about 0.005, against a margin of 0.7 on the benchmarks.
SKEW_SAMPLE = 1 << 18


def check_objects(value: object, owner: str) -> str:
    """``value`` if it is one of :data:`OBJECTS`, else one line naming what is accepted."""
    if value not in OBJECTS:
        raise InputError(f"{owner}.objects must be one of {', '.join(repr(o) for o in OBJECTS)} "
                         f"(nuclei brighter or darker than their field, or 'auto' to tell), got {value!r}")
    return str(value)


def skewness(pixels: np.ndarray) -> float:
    """Sample skewness of the finite values of ``pixels`` (0 for a constant array).

    Examples
    --------
    >>> round(skewness(np.array([0, 0, 0, 0, 10])), 2)
    1.5
    """
    arr = np.asarray(pixels)
    if arr.ndim >= 2:
        step = _stride(arr)  # rows and columns: no copy of the whole plane
        values = arr[::step, ::step].astype(np.float64).ravel()
    else:
        values = arr[:: max(1, arr.size // SKEW_SAMPLE)].astype(np.float64)
    if arr.dtype.kind == "f":
        values = values[np.isfinite(values)]
    if values.size < 3:
        return 0.0
    centred = values - values.mean()
    squares = centred * centred
    m2 = float(squares.sum()) / values.size
    if m2 == 0.0:
        return 0.0
    return float(np.dot(squares, centred)) / values.size / m2**1.5


def dark_objects(pixels: np.ndarray) -> bool:
    """Whether the objects of an image (or a sample of its pixels) are darker than its field.

    True when the pixels' skewness is negative: the histogram's long tail, the objects,
    lies on the dark side. Fluorescence puts it on the bright side: on the 566 frames of
    the nucleus benchmark's seven sources and the synthetic fields the skewness is 0.74
    or more (crowded, sparse, 8- and 16-bit); on DSB2018's bright-field and stained
    frames (123, none of them used to train or calibrate) it is below 0 on all but
    two stained sections (0.16 and 0.31: nuclei over most of the field, which stay
    refused as colour images on a dark field, with the way to pick a channel).

    Examples
    --------
    >>> field = np.full((64, 64), 200.0)
    >>> field[20:30, 20:30] = 40.0  # a dark nucleus on a bright field
    >>> dark_objects(field), dark_objects(255 - field)
    (True, False)
    """
    return skewness(pixels) < 0.0


def turned_round(plane: np.ndarray, top: float | None = None) -> np.ndarray:
    """``top - plane``: dark objects become bright ones, the noise and contrast unchanged.

    Unsigned integers keep their dtype (``top`` is the dtype's maximum, so nothing
    wraps and the pixel grid stays that of the file); other pixels become ``float32``
    about ``top`` (default: their maximum).
    """
    arr = np.asarray(plane)
    if arr.dtype == bool:
        return ~arr
    if arr.dtype.kind == "u":
        return np.iinfo(arr.dtype).max - arr
    values = arr.astype(np.float32)
    if top is None:
        finite = values[np.isfinite(values)]
        top = float(finite.max()) if finite.size else 0.0
    return np.float32(top) - values


def decide_dark(pixels: np.ndarray, objects: str) -> bool:
    """Whether to turn an image round: ``objects`` as given, or :func:`dark_objects` of its pixels."""
    if objects == "auto":
        return dark_objects(pixels)
    return objects == "dark"


def luminance(rgb: np.ndarray) -> np.ndarray:
    """The grey luminance (ITU-R 601 weights) of an RGB(A) image, ``float32``, alpha ignored.

    Examples
    --------
    >>> float(luminance(np.full((2, 2, 3), 100, np.uint8))[0, 0])
    100.0
    """
    arr = np.asarray(rgb)
    weights = np.array([0.299, 0.587, 0.114], np.float32)
    return np.tensordot(arr[..., :3].astype(np.float32), weights, axes=([-1], [0])).astype(np.float32)


def colour_bright_field(rgb: np.ndarray) -> bool:
    """Whether a colour RGB(A) image is a picture of a bright field (stained cells or tissue).

    Its luminance has dark objects (:func:`dark_objects`). A colour fluorescence image
    (two stains on a dark field, a composite) has bright ones, and still needs its
    channel picked: its stains are different objects. A stained section is one picture
    of one field, whose nuclei are its darkest parts in every channel.
    """
    step = _stride(rgb)
    return dark_objects(luminance(np.asarray(rgb)[::step, ::step]))


def _stride(image: np.ndarray) -> int:
    """Row / column step that leaves at most about :data:`SKEW_SAMPLE` pixels."""
    h, w = np.shape(image)[:2]
    return max(1, int(np.ceil(np.sqrt(h * w / SKEW_SAMPLE))))
