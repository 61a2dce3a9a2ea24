"""The one input normalisation every engine uses.

Layer data or a file (any dtype, any layout a microscope produces) goes through
:func:`prepare_image` before it reaches a model: it picks the 2-D plane, turns it into
``float32``, handles NaN / inf and constant images, and applies robust percentile
normalisation so that the background sits near 0 and bright objects near 1, whatever
the camera's bit depth or offset.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from ...errors import InputError
from .polarity import colour_bright_field, decide_dark, luminance, turned_round

#: Percentiles used by :func:`normalize_percentile` (as CSBDeep / StarDist use them).
DEFAULT_PERCENTILES: tuple[float, float] = (1.0, 99.8)

#: Below this many pixels along either axis an image cannot hold a single object.
MIN_SIDE = 8

#: Percentiles of images larger than this are computed on a regular subsample (speed).
_PERCENTILE_SAMPLE = 4_000_000

#: Contrast below this many noise standard deviations is not stretched to full range.
MIN_CONTRAST_SD = 8.0

#: What a run says when it turns a bright-field image round (:func:`bright_objects`).
DARK_OBJECTS = ("the objects are darker than their field (stained nuclei in bright-field): segmented as the image's "
                "inverse; set objects='bright' (CLI --param objects=bright) if they are not, or use a label-free "
                "model for unstained cells")

_COLOUR_BRIGHT_FIELD = ("a colour picture of a bright field (stained cells or a stained section): its grey luminance is "
                        "segmented; pick a channel (channel=N, CLI --channel N) to use one stain instead")


class InputWarning(UserWarning):
    """The input was usable but had to be changed (e.g. NaN pixels were filled)."""


def describe(image: np.ndarray) -> str:
    """Return ``'shape (H, W), dtype uint16'`` for messages."""
    shape = tuple(int(s) for s in np.shape(image))
    dtype = getattr(image, "dtype", None) or np.asarray(image).dtype
    return f"shape {shape}, dtype {dtype}"


def looks_rgb(image: np.ndarray) -> bool:
    """Whether ``image`` is laid out as RGB(A): ``(H, W, 3)`` or ``(H, W, 4)``.

    This is napari's own guess for ``rgb=None``; a 3-plane stack is ``(3, H, W)`` and
    does not match.
    """
    return rgb_layout(np.shape(image))


def rgb_layout(shape: tuple[int, ...]) -> bool:
    """:func:`looks_rgb` of an array's ``shape`` (a file's header, a lazy array).

    Examples
    --------
    >>> rgb_layout((20000, 30000, 3)), rgb_layout((3, 512, 512))
    (True, False)
    """
    return len(shape) == 3 and shape[-1] in (3, 4) and min(shape[:2]) > 4


def grey_in_colour(image: np.ndarray) -> bool:
    """Whether an RGB(A) image is one grey image stored as colour.

    True when red, green and blue agree everywhere (to one grey level for integer
    pixels: a JPEG of a grey image differs by that much) and an alpha channel, if any,
    is the same everywhere. Micrographs often travel that way: DSB2018's PNGs are grey
    RGBA, and an ImageJ "RGB Color" export or a screenshot of a grey image is RGB. Such
    an image holds one stain, so its red channel is the image; a colour image (two or
    more stains) still has to be given a channel.

    Examples
    --------
    >>> grey = np.arange(64, dtype=np.uint8).reshape(8, 8)
    >>> grey_in_colour(np.dstack([grey, grey, grey, np.full_like(grey, 255)]))
    True
    >>> grey_in_colour(np.dstack([grey, grey // 2, grey]))
    False
    """
    arr = np.asarray(image)
    if not looks_rgb(arr) or arr.dtype.kind not in "uifb":
        return False
    tolerance = 1 if arr.dtype.kind in "ui" else 0
    red = arr[..., 0]
    for other in (arr[..., 1], arr[..., 2]):
        if arr.dtype.kind == "u":
            # In the pixels' own dtype (no copy 8 bytes a pixel): the larger minus the
            # smaller cannot wrap around, as a plain difference of unsigned pixels does.
            if int((np.maximum(red, other) - np.minimum(red, other)).max()) > tolerance:
                return False
        elif tolerance:
            if int(np.abs(red.astype(np.int64) - other).max()) > tolerance:
                return False
        elif not np.array_equal(red, other):
            return False
    if arr.shape[-1] == 4:
        alpha = arr[..., 3]
        return bool((alpha == alpha.flat[0]).all())
    return True


def colour_plane_kind(image: np.ndarray, *, say: bool = True) -> Literal["red", "luminance"] | None:
    """Which grey plane an RGB(A) image has: the rule of :func:`grey_plane_of_colour`.

    ``'red'`` for a grey image stored as colour (:func:`grey_in_colour`), ``'luminance'``
    for a colour picture of a bright field (stained cells or a stained section,
    :func:`~napari_kaizen.engines._common.polarity.colour_bright_field`; with ``say`` an
    :class:`InputWarning` says so), None for a colour image on a dark field (stains in
    different channels: its channel must be picked). Decided on the pixels given: the
    whole image, or a regular sample of a huge one that is then read tile by tile
    (:class:`napari_kaizen.tiled.ColourPlane`).
    """
    arr = np.asarray(image)
    if grey_in_colour(arr):
        return "red"
    if not looks_rgb(arr) or arr.dtype.kind not in "uifb" or not colour_bright_field(arr):
        return None
    if say:
        warnings.warn(_COLOUR_BRIGHT_FIELD, InputWarning, stacklevel=3)
    return "luminance"


def grey_of_colour(image: np.ndarray, kind: Literal["red", "luminance"]) -> np.ndarray:
    """The grey plane :func:`colour_plane_kind` named, of an RGB(A) image or any window of it."""
    arr = np.asarray(image)
    return arr[..., 0] if kind == "red" else luminance(arr)


def grey_plane_of_colour(image: np.ndarray, *, say: bool = True) -> np.ndarray | None:
    """The one grey plane of an RGB(A) image that has one, else None.

    A grey image stored as colour (:func:`grey_in_colour`) gives its red channel; a
    colour picture of a bright field (stained cells or a stained section,
    :func:`~napari_kaizen.engines._common.polarity.colour_bright_field`) its luminance,
    and with ``say`` an :class:`InputWarning` says so. A colour image on a dark field
    (stains in different channels) has none: its channel must be picked
    (:func:`colour_plane_kind`).
    """
    arr = np.asarray(image)
    kind = colour_plane_kind(arr, say=say)
    return None if kind is None else grey_of_colour(arr, kind)


def colour_without_grey_plane(what: str, image: np.ndarray) -> str:
    """The one line refusing a colour image that has no grey plane (:func:`colour_plane_kind` None).

    ``what`` names the image as the caller sees it and ``image`` is its pixels (or the
    regular sample a huge one was judged on); every front end (a plane, every plane, a
    huge field tile by tile) gives the same advice. Mostly a colour image on a dark
    field (stains in different channels); or a grey image whose transparency (alpha)
    varies, which is not read as grey because a transparent part is no part of a
    micrograph and is not masked out here.

    Examples
    --------
    >>> stains = np.zeros((8, 8, 3), np.uint8); stains[..., 1] = 9
    >>> colour_without_grey_plane("stains.tif is a colour RGB image", stains).split(";")[0]
    'stains.tif is a colour RGB image on a dark field: pick one channel (channel=0..2, CLI --channel N)'
    >>> masked = np.full((8, 8, 4), 9, np.uint8); masked[:2, :, 3] = 0
    >>> colour_without_grey_plane("masked.png is an RGBA image", masked).split(";")[0]
    'masked.png is an RGBA image: its colours are one grey image but its transparency (alpha) varies'
    """
    arr = np.asarray(image)
    if arr.shape[-1] == 4 and grey_in_colour(arr[..., :3]):
        return (f"{what}: its colours are one grey image but its transparency (alpha) varies; transparent pixels "
                "are not masked out: give channel=0 (CLI --channel 0) to segment the grey image as it is")
    return (f"{what} on a dark field: pick one channel (channel=0..{arr.shape[-1] - 1}, CLI --channel N); its "
            "channels differ (different stains) and are not averaged")


def plane_of_one_plane(plane: int | tuple[int, ...], what: str, *, colour: bool = False) -> str:
    """The one line refusing a plane index for an image that is a single 2-D plane.

    A 2-D image, or a colour (RGB(A)) image, which is one plane whose last axis holds
    its colours, has no stack to pick from; running the whole image anyway would hide
    that the person meant another file or a channel.

    Examples
    --------
    >>> plane_of_one_plane((1,), "the image (512x512x3 uint8)", colour=True)  # doctest: +NORMALIZE_WHITESPACE
    'plane 1 was given but the image (512x512x3 uint8) is a single 2-D colour image, not a stack: leave the plane
    out (CLI: drop --plane), or pick one of its colour channels (channel=i, CLI --channel i)'
    """
    index = (plane,) if isinstance(plane, (int, np.integer)) else tuple(plane)
    kind, hint = ("colour image", ", or pick one of its colour channels (channel=i, CLI --channel i)") if colour else ("plane", "")
    return (f"plane {','.join(str(int(i)) for i in index)} was given but {what} is a single 2-D {kind}, not a "
            f"stack: leave the plane out (CLI: drop --plane){hint}")


def channel_error(channel: int, shape: tuple[int, ...], what: str) -> str | None:
    """The one line refusing ``channel`` for an image of ``shape``, or None when it can be taken.

    A channel is a colour channel of an RGB(A) image (:func:`rgb_layout`); a stack's
    leading axes, fluorescence channels stored as planes included, are picked with a
    plane instead. ``what`` names the image as the caller sees it.

    Examples
    --------
    >>> channel_error(1, (512, 512, 3), "the image") is None
    True
    >>> channel_error(5, (512, 512, 3), "the image")
    'channel 5 does not exist: the image is a colour RGB(A) image of 3 channels (0..2)'
    >>> channel_error(1, (3, 512, 512), "the image").split(": ", 1)[1]
    'pick one of its planes with plane=i (CLI --plane i)'
    """
    if rgb_layout(tuple(shape)):
        if 0 <= channel < shape[-1]:
            return None
        return f"channel {channel} does not exist: {what} is a colour RGB(A) image of {shape[-1]} channels (0..{shape[-1] - 1})"
    return (f"channel {channel} was given but {what} is not a colour RGB(A) image: "
            + ("it has one channel" if len(shape) == 2 else "pick one of its planes with plane=i (CLI --plane i)"))


def to_plane(
    image: np.ndarray,
    *,
    channel: int | None = None,
    plane: int | tuple[int, ...] | None = None,
    axes: str | None = None,
) -> np.ndarray:
    """Reduce ``image`` to one 2-D plane, or explain in one line why it cannot.

    Parameters
    ----------
    image : array_like
        2-D image, RGB(A) image ``(H, W, 3|4)``, or a stack ``(..., H, W)`` of planes
        (z-stack, time series, or both).
    channel : int, optional
        Channel of an RGB(A) image to use. A colour image on a dark field without a
        channel is refused, because averaging its channels mixes stains; a grey image
        stored as RGB(A) (:func:`grey_in_colour`) needs none, and a colour picture of a
        bright field (stained cells or a stained section,
        :func:`~napari_kaizen.engines._common.polarity.colour_bright_field`) is read as
        its grey luminance (an :class:`InputWarning` says so).
    plane : int or tuple of int, optional
        Index into the leading axes of a stack. Stacks without a plane are refused;
        run every plane with :func:`iter_planes` instead. A plane given for a single
        2-D or colour image is refused too (:func:`plane_of_one_plane`).
    axes : str, optional
        Letters naming a stack's leading axes (``'TZC'``: time, z, channel), as the
        file stored them (:func:`napari_kaizen.io.zarr.stack_axes`): the refusals name
        them. Ignored when they do not match the stack.

    Returns
    -------
    plane : ndarray
        A 2-D array (a view where possible), dtype unchanged (``float32`` for a
        colour picture's luminance).

    Raises
    ------
    InputError
        For 0-D / 1-D input, colour RGB without ``channel``, stacks without ``plane``, a
        ``plane`` for a single 2-D or colour image, an index out of range, or a plane smaller than ``MIN_SIDE`` pixels.
    """
    if image is None:
        raise InputError("no image was given: expected a 2-D array (H, W)")
    arr = np.asarray(image)
    if arr.dtype == object or arr.dtype.kind in "USV":
        raise InputError(f"image has dtype {arr.dtype}: expected numbers (integer, float or bool)")
    if arr.ndim < 2:
        raise InputError(f"image has {arr.ndim} dimension(s) ({describe(arr)}): expected a 2-D image (H, W)")
    if colour_stack_layout(arr.shape):
        # A stack of colour images (a colour time-lapse, (T, H, W, 3)): the plane picks a
        # colour image, which is then read as one (its channel, or its grey plane).
        arr, plane = _stack_plane(arr, arr.shape[:-3], plane, "colour images", axes), None
    if plane is not None and (isinstance(plane, (int, np.integer)) or len(plane)) and (arr.ndim == 2 or looks_rgb(arr)):
        raise InputError(plane_of_one_plane(plane, f"the image ({describe(arr)})", colour=looks_rgb(arr) and channel is None))
    if channel is not None and (said := channel_error(channel, arr.shape, f"the image ({describe(arr)})")):
        raise InputError(said)
    if looks_rgb(arr):
        if channel is not None:
            arr = arr[..., channel]
        else:
            grey = grey_plane_of_colour(arr)
            if grey is None:
                raise InputError(colour_without_grey_plane(f"colour RGB(A) image ({describe(arr)})", arr))
            arr = grey
    if arr.ndim > 2:
        arr = _stack_plane(arr, arr.shape[:-2], plane, "planes", axes)
    if min(arr.shape) < MIN_SIDE:
        raise InputError(
            f"image is too small ({describe(arr)}): at least {MIN_SIDE}x{MIN_SIDE} pixels are needed"
        )
    return arr


def colour_stack_layout(shape: tuple[int, ...]) -> bool:
    """Whether ``shape`` is a stack of colour (RGB(A)) images, ``(..., H, W, 3|4)``.

    Examples
    --------
    >>> colour_stack_layout((5, 512, 512, 3)), colour_stack_layout((512, 512, 3)), colour_stack_layout((5, 3, 64, 64))
    (True, False, False)
    """
    return len(shape) >= 4 and rgb_layout(tuple(shape[-3:]))


def _stack_plane(arr: np.ndarray, lead: tuple[int, ...], plane: int | tuple[int, ...] | None, what: str,
                 axes: str | None = None) -> np.ndarray:
    """The item of ``arr`` at ``plane`` over its leading axes ``lead``, or the line why not.

    ``axes`` names the leading axes (``'TZC'``, one letter each, as an ImageJ hyperstack
    or an OME image stores them) when the file said so; the line then names them, so a
    person need not know the order the indices go in.

    Examples
    --------
    >>> stack = np.zeros((2, 5, 3, 32, 32), np.uint16)
    >>> try:
    ...     _stack_plane(stack, stack.shape[:-2], None, "planes", "TZC")
    ... except InputError as exc:
    ...     print(str(exc).split("pick a plane ")[1].split(" or run")[0])
    (plane=(t, z, c), CLI --plane t,z,c, one index for each of its 3 leading axes: T 0..1, Z 0..4, C 0..2)
    """
    from ...io.images import colour_slide_hint, plane_outside

    named = axes is not None and len(axes) == len(lead)
    if plane is None:
        # One index per leading axis: a (z, c) hyperstack needs two.
        names = list(axes.lower()) if named else [chr(ord("i") + k) for k in range(len(lead))]
        ranges = f": {', '.join(f'{a} 0..{n - 1}' for a, n in zip(axes, lead))}" if named else ""
        pick = (f"plane={names[0]}, CLI --plane {names[0]}{ranges}" if len(lead) == 1 else
                f"plane=({', '.join(names)}), CLI --plane {','.join(names)}, one index for each of its "
                f"{len(lead)} leading axes{ranges}")
        colour = colour_slide_hint(lead, arr.dtype) if what == "planes" else ""
        raise InputError(f"image is a stack of {int(np.prod(lead))} {what} ({describe(arr)}): pick a plane "
                         f"({pick}){colour} or run every plane (CLI --all-planes)")
    index = (plane,) if isinstance(plane, (int, np.integer)) else tuple(plane)
    if len(index) != len(lead) or any(not 0 <= i < n for i, n in zip(index, lead)):
        raise InputError(plane_outside(index, "this stack", lead, axes))
    return arr[index]


def iter_planes(image: np.ndarray) -> Iterator[tuple[tuple[int, ...], np.ndarray]]:
    """Yield ``(index, plane)`` for every 2-D plane of a stack ``(..., H, W)``.

    A 2-D image, or an RGB(A) image with a grey plane (:func:`grey_plane_of_colour`),
    yields it once with index ``()``; a stack of colour images ``(..., H, W, 3|4)``
    yields each one's grey plane, of the kind its first image has
    (:func:`colour_plane_kind`). Other colour input is refused (pick a channel first),
    as in :func:`to_plane`.
    """
    arr = np.asarray(image)
    if looks_rgb(arr) or colour_stack_layout(arr.shape):
        # A colour image, or a stack of them (one microscope, one stain layout): its kind
        # is told once, on the first image, so every plane is read alike.
        first = arr[(0,) * (arr.ndim - 3)]
        kind = colour_plane_kind(first)
        if kind is None:
            what = "colour RGB(A) image" if arr.ndim == 3 else "a stack of colour RGB(A) images"
            raise InputError(colour_without_grey_plane(f"{what} ({describe(arr)})", first))
        for index in np.ndindex(*arr.shape[:-3]):
            yield index, grey_of_colour(arr[index], kind)
        return
    if arr.ndim < 2:
        raise InputError(f"image has {arr.ndim} dimension(s): expected a 2-D image or a stack (..., H, W)")
    for index in np.ndindex(*arr.shape[:-2]):
        yield index, arr[index]


def as_float(image: np.ndarray) -> np.ndarray:
    """Return ``image`` as ``float32``, with NaN / inf replaced, or raise.

    Non-finite pixels are filled with the lowest finite value (they are usually masked
    or saturated-out regions, which should read as background) and an
    :class:`InputWarning` says how many there were.
    """
    arr = np.asarray(image)
    if arr.dtype.kind == "c":
        raise InputError(f"image is complex-valued ({describe(arr)}): pass its magnitude or phase as a real image")
    if arr.dtype.kind not in "biuf":
        raise InputError(f"image has dtype {arr.dtype}: expected integer, float or bool pixels")
    if arr.dtype.kind in "iu" and arr.dtype.itemsize >= 4 and arr.size:
        # float32 keeps 24 bits: int32 / int64 pixels on a large offset (a camera's
        # +1e9 pedestal, a -1e12 signed background) would be quantised or read as
        # constant. Subtracting the minimum, exactly, first keeps the contrast;
        # the percentile normalisation that follows ignores offsets anyway.
        low = arr.min()
        out = (arr.astype(np.float64) - float(low)).astype(np.float32)
        if arr.dtype.itemsize == 8 and int(arr.max()) - int(low) > 2**53:
            warnings.warn("the image's integer range exceeds 2**53; faint differences are rounded", InputWarning,
                          stacklevel=2)
        return out
    if arr.dtype.kind == "f" and arr.size:
        # Finite values near float32's limit (+-3e38) overflow to inf in any
        # subtraction; bring them down by a power of two (exact, and percentile
        # normalisation is scale-invariant). Tiny ones (an image in physical units,
        # 1e-17 W) are brought up the same way: the constancy test's floor (1e-12)
        # called such an image constant, and float32 would flush values below 1e-38.
        with np.errstate(invalid="ignore", over="ignore"):
            peak = float(np.nanmax(np.abs(np.where(np.isfinite(arr), arr, 0)))) if arr.size else 0.0
        if peak > 2.0**100 or 0.0 < peak < 2.0**-20:
            arr = arr.astype(np.float64) * 2.0 ** -int(np.ceil(np.log2(peak)))
    out = arr.astype(np.float32, copy=True)
    if arr.dtype.kind == "f":
        finite = np.isfinite(out)
        if not finite.all():
            n_bad = int(out.size - finite.sum())
            if n_bad == out.size:
                raise InputError(f"image has no finite pixels ({describe(arr)}: all NaN / inf)")
            fill = float(out[finite].min())
            out[~finite] = fill
            warnings.warn(
                f"{n_bad} NaN / inf pixel(s) were replaced by the image minimum ({fill:g})",
                InputWarning,
                stacklevel=2,
            )
    return out


@dataclass(frozen=True)
class WholeImageStats:
    """Intensity statistics of a whole image, for the tiles of a tiled run.

    Inside :func:`whole_image_stats`, :func:`percentiles` and the noise floor of
    :func:`normalize_percentile` come from these instead of from the array at hand, so every tile of a huge image
    is normalised to the same scale as the whole image (a tile with few cells would
    otherwise stretch its background, and neighbouring tiles would disagree).

    Attributes
    ----------
    sample : ndarray of float32
        A regular (strided) sample of the whole image's pixels, as :func:`as_float` gives them.
    noise : float
        :func:`noise_sd` of the whole image (from a sampled block).
    values : mapping of str to float
        Other whole-image decisions by name (e.g. ``'classical_otsu'``), read by
        :func:`whole_image_value`.
    collect : dict, optional
        If given, :func:`whole_image_value` computes its value as usual and also keeps,
        under its name, its function and a subsample of its input (how a tiled run
        measures those decisions on sample crops: the function of the pooled samples).
    sparse : bool, optional
        Whether the whole image is a sparse field (:func:`share_standing_out` of crops
        of it), which every tile's :func:`sparse_field` then answers, so all tiles
        follow the same rules. ``None``: not decided for the whole image (a label-free
        input, whose engine looks for bright objects only in what it predicts from it):
        each array decides for itself.
    sparse_objects : ndarray of float32, optional
        On a sparse image, the pixels of its objects that stand out of the noise, pooled
        from crops (:func:`pixels_standing_out`; maybe none): every tile's
        normalisation takes its top from them, as an untiled run of the image would.
    """

    sample: np.ndarray
    noise: float
    values: Mapping[str, float] = field(default_factory=dict)
    collect: dict | None = None
    sparse: bool | None = None
    sparse_objects: np.ndarray | None = None


_WHOLE_IMAGE: contextvars.ContextVar[WholeImageStats | None] = contextvars.ContextVar("whole_image_stats", default=None)


@contextlib.contextmanager
def whole_image_stats(stats: WholeImageStats | None):
    """Within this block (this thread), normalise with ``stats`` instead of each array's own."""
    token = _WHOLE_IMAGE.set(stats)
    try:
        yield stats
    finally:
        _WHOLE_IMAGE.reset(token)


def in_tiled_run() -> bool:
    """Whether this thread is inside :func:`whole_image_stats` (a tile of a tiled run, or a crop its plan reads)."""
    return _WHOLE_IMAGE.get() is not None


def whole_image_value(name: str, compute: Callable[..., float], *args) -> float:
    """``compute(*args)``, unless a tiled run has fixed ``name`` for the whole image.

    ``compute`` must be a statistic of the pixels / values in ``args[0]`` (a threshold,
    a median), so that it can be recomputed on samples pooled from several crops.

    For an engine's image-wide decisions (a histogram threshold): inside
    :func:`whole_image_stats` every tile gets the same value instead of its own.
    """
    stats = _WHOLE_IMAGE.get()
    if stats is not None and name in stats.values:
        return float(stats.values[name])
    if stats is not None and stats.collect is not None:
        sample = np.ravel(np.asarray(args[0]))
        step = max(1, sample.size // _COLLECT_SAMPLE)
        stats.collect.setdefault(name, (compute, []))[1].append(sample[::step].copy())
    return float(compute(*args))


#: Values kept per call by :func:`whole_image_value` in collect mode.
_COLLECT_SAMPLE = 250_000


def pooled_values(collect: Mapping[str, tuple[Callable[..., float], list[np.ndarray]]]) -> dict[str, float]:
    """Each collected decision recomputed on the pooled samples of every call (see :class:`WholeImageStats`)."""
    return {name: float(compute(np.concatenate(samples))) for name, (compute, samples) in collect.items() if samples}


def percentiles(image: np.ndarray, low: float, high: float) -> tuple[float, float]:
    """Percentiles of ``image``, from a regular subsample when it is huge."""
    stats = _WHOLE_IMAGE.get()
    if stats is not None:
        lo, hi = np.percentile(stats.sample, [low, high])
        return float(lo), float(hi)
    flat = image.ravel()
    if flat.size > _PERCENTILE_SAMPLE:
        flat = flat[:: int(np.ceil(flat.size / _PERCENTILE_SAMPLE))]
    lo, hi = np.percentile(flat, [low, high])
    return float(lo), float(hi)


def _neighbour_differences(image: np.ndarray) -> np.ndarray:
    """Differences of horizontal neighbours (float32), from a regular sample of rows when huge."""
    arr = np.asarray(image, dtype=np.float32)
    if arr.size > _PERCENTILE_SAMPLE:
        step = int(np.ceil(arr.shape[0] * arr.shape[1] / _PERCENTILE_SAMPLE))
        arr = arr[::step]
    return (arr[:, 1:] - arr[:, :-1]).ravel()


def _mad_sd(d: np.ndarray) -> float:
    """:func:`noise_sd` from neighbour differences ``d``."""
    if d.size == 0:
        return 0.0
    return 1.4826 * float(np.median(np.abs(d - np.median(d)))) / np.sqrt(2.0)


def noise_sd(image: np.ndarray) -> float:
    """Robust estimate of the pixel noise SD of ``image``.

    The median absolute deviation of differences between horizontal neighbours,
    divided by sqrt(2): smooth structure (cells, uneven background) barely changes
    neighbour differences, noise dominates them. 0 for noise-free images (including
    quantised ones whose background is a single grey level).
    """
    return _mad_sd(_neighbour_differences(image))


def pixel_noise(image: np.ndarray) -> float:
    """The SD of independent pixel noise in ``image``, quantised images included.

    :func:`noise_sd` takes the median absolute difference of horizontal neighbours,
    which is 0 for a dim 8-bit field whose neighbours mostly share a grey level (a
    background of 0s with a sixth of 1s has an SD of 0.37 grey levels). Here the SD of
    those differences is taken over the ones within five of :func:`noise_sd`'s SDs, or
    three grey levels (the smallest step between neighbours) when that is wider, which
    leaves out the edges of objects; divided by sqrt(2).
    """
    d = _neighbour_differences(image)
    steps = np.abs(d[d != 0])
    if steps.size == 0:
        return 0.0
    sd = _mad_sd(d)
    within = d[np.abs(d) <= max(5.0 * np.sqrt(2.0) * sd, 3.0 * float(steps.min()))]
    return max(sd, float(np.sqrt(np.mean(within.astype(np.float64) ** 2))) / np.sqrt(2.0))


#: An object stands out of the noise where the image smoothed by 1 px rises this many
#: of its noise SDs above the background (:func:`significant_level`).
SIGNIFICANT_SD = 6.0

#: A field with less than this share of its pixels standing out of the noise is sparse
#: (:func:`sparse_field`): a few nuclei on a wide empty field.
SPARSE_SHARE = 0.04

#: Side of the central crop :func:`sparse_field` reads (pixels).
SPARSE_CHECK_SIDE = 512


def central_crop(image: np.ndarray, side: int) -> np.ndarray:
    """The central ``side`` x ``side`` window of an image (the whole of a smaller one)."""
    h, w = image.shape
    y0, x0 = max(0, (h - side) // 2), max(0, (w - side) // 2)
    return image[y0 : y0 + side, x0 : x0 + side]


def significant_level(smooth: np.ndarray, image: np.ndarray, sigma: float = 1.0) -> float:
    """The level ``smooth`` (``image`` under a Gaussian of ``sigma`` px) must rise above to stand out of its noise.

    The pixel noise of ``image`` (:func:`pixel_noise`) shrinks under the Gaussian by the
    root of the sum of its squared weights (independent pixel noise, as a camera's shot
    and read noise are; about ``1 / (2 sqrt(pi) sigma)``); the background is the 25th
    percentile of ``smooth``. The level is that background plus :data:`SIGNIFICANT_SD`
    smoothed noise SDs.
    """
    from scipy import ndimage as ndi

    step = max(1, int(np.sqrt(smooth.size / 250_000)))
    background = float(np.percentile(smooth[::step, ::step], 25))
    r = int(np.ceil(4.0 * sigma))
    impulse = np.zeros((2 * r + 1, 2 * r + 1))
    impulse[r, r] = 1.0
    shrink = float(np.sqrt((ndi.gaussian_filter(impulse, sigma) ** 2).sum()))
    return background + SIGNIFICANT_SD * pixel_noise(image) * shrink


def sparse_field(image: np.ndarray, side: int = SPARSE_CHECK_SIDE) -> bool:
    """Whether less than :data:`SPARSE_SHARE` of the central crop stands out of the noise.

    On a wide empty field with a few nuclei, the noise outnumbers them thousands to
    one: the 99.8th percentile is noise, and so are Otsu's threshold and most blobs of
    a scale space. Crowded fields, dim ones included, have a tenth to a half of their
    pixels on nuclei: of the 566 annotated real images of ``scripts/nuclei_sources.py``
    the median has 31 %, one in twenty less than 7 %, and the 11 under 4 % are fields
    of 1-10 nuclei (256 x 256 and one 520 x 696). Three or ten real nuclei on a 1024 x 1024
    field (``benchmarks/real_nuclei.py --sparse``) leave at most 1.7 % and 3.3 % of the
    central crop standing out.

    Inside :func:`whole_image_stats` (a tile of a tiled run, or a crop its plan reads)
    the whole image's decision (:attr:`WholeImageStats.sparse`) is returned, so every
    tile follows the same rules: a tile of a sparse slide may be crowded, and one of a
    crowded slide empty.
    """
    stats = _WHOLE_IMAGE.get()
    if stats is not None and stats.sparse is not None:
        return stats.sparse
    crop = np.ascontiguousarray(central_crop(np.asarray(image, dtype=np.float32), side))
    # An engine asks two or three times about the same normalised plane in one run (the
    # empty-field check, the size estimate, its own threshold or filter): the answer is
    # kept by the crop's content, so a repeat costs a hash (1 ms) instead of 12 ms.
    key = (crop.shape, hashlib.blake2b(crop, digest_size=16).digest())
    with _SPARSE_MEMO_LOCK:
        known = _SPARSE_MEMO.get(key)
    if known is not None:
        return known
    answer = float(np.mean(_above_noise(crop))) < SPARSE_SHARE
    with _SPARSE_MEMO_LOCK:
        _SPARSE_MEMO[key] = answer
        while len(_SPARSE_MEMO) > _SPARSE_MEMO_SIZE:
            _SPARSE_MEMO.popitem(last=False)
    return answer


#: Recent :func:`sparse_field` answers by the content of the crop they read (a few
#: planes' worth: the repeats come within one run).
_SPARSE_MEMO: OrderedDict[tuple, bool] = OrderedDict()
_SPARSE_MEMO_SIZE = 8
_SPARSE_MEMO_LOCK = threading.Lock()


def _above_noise(arr: np.ndarray) -> np.ndarray:
    """Where ``arr`` smoothed by 1 px rises above its :func:`significant_level`."""
    from scipy import ndimage as ndi

    smooth = ndi.gaussian_filter(arr, 1.0)
    return smooth > significant_level(smooth, arr)


def share_standing_out(crops: Iterable[np.ndarray]) -> float | None:
    """The share of the crops' pixels that stand out of the noise, pooled; None if no crop is measurable.

    Each crop is measured as :func:`sparse_field` measures its central crop (smoothed
    by 1 px, against its own :func:`significant_level`); crops narrower than
    :data:`EMPTY_CHECK_MIN_SIDE` are passed over. Under :data:`SPARSE_SHARE`, the
    image the crops sample is a sparse field (how a tiled run decides it for a whole
    slide).
    """
    above = total = 0
    for crop in crops:
        arr = np.asarray(crop, dtype=np.float32)
        if min(arr.shape) >= EMPTY_CHECK_MIN_SIDE:
            mask = _above_noise(arr)
            above, total = above + int(mask.sum()), total + mask.size
    return above / total if total else None


#: Values kept by :func:`pixels_standing_out` (a regular subsample beyond this).
_OBJECT_SAMPLE = 1_000_000


def pixels_standing_out(crops: Iterable[np.ndarray]) -> np.ndarray:
    """The pixels of the objects standing out of the noise in each crop, pooled (float32, maybe none).

    Objects as :func:`objects_standing_out` finds them (patches of at least
    :data:`MIN_OBJECT_PIXELS`), at the crops' full resolution; at most
    ``_OBJECT_SAMPLE`` values (a regular subsample), for the percentile of a sparse
    slide's objects (:attr:`WholeImageStats.sparse_objects`).
    """
    pixels = [np.empty(0, np.float32)]
    for crop in crops:
        arr = np.asarray(crop, dtype=np.float32)
        if min(arr.shape) >= EMPTY_CHECK_MIN_SIDE:
            pixels.append(arr[_big_patches(_above_noise(arr))])
    out = np.concatenate(pixels)
    return out[:: int(np.ceil(out.size / _OBJECT_SAMPLE))] if out.size > _OBJECT_SAMPLE else out


#: Below this contrast-to-noise ratio a fluorescence image holds no object (see
#: :func:`contrast_to_noise`). Measured on 300 random synthetic fields (96-320 px, every
#: microscope setting) and their empty twins: empty fields reach 4.6 (2 of 300 above 4),
#: fields with nuclei go down to 6.8; the 566 real fluorescence images of the nucleus
#: sources to 6.5, DSB2018's turned-round stained sections to 2.9 (1 of 105 below 4:
#: nuclei over a textured stroma; 4 of 105 when the ripple was measured below the
#: median). A field with visible cells reported empty is the worse error (the person
#: gets nothing), so the threshold sits at the low end.
EMPTY_CNR = 4.0

#: The blur (Gaussian sigma, pixels) under which both empty-field checks measure: single
#: noisy pixels do not survive it, cells (wider than 2 px) do.
CHECK_BLUR = 2.0

#: Below this side length (pixels) the guard is not applied: the smooth background (an
#: eighth of the image) cannot be told from a nucleus that fills much of a small crop.
EMPTY_CHECK_MIN_SIDE = 96


def contrast_to_noise(image: np.ndarray, *, blurred: np.ndarray | None = None) -> float:
    """How far the brightest blob-sized structure rises above the background, in noise SDs.

    The image is smoothed a little (2 px, so single noisy pixels do not count), a
    smooth background (an eighth of the image size) is subtracted, and the maximum of
    what is left (above its median) is divided by the larger of :func:`noise_sd` and the
    spread of the residual below its median. Scale-invariant, so it can be run on
    the raw or the normalised image. ``blurred``: the image (float32) already blurred
    by 2 px, when at hand.
    """
    from scipy import ndimage as ndi

    arr = np.asarray(image, dtype=np.float32)
    sd = noise_sd(arr)
    if sd <= 0:
        return float("inf") if float(arr.max() - arr.min()) > 0 else 0.0
    # A coarse copy gives the smooth background at a fraction of the cost.
    f = max(1, min(arr.shape) // 64)
    coarse = ndi.gaussian_filter(arr[::f, ::f], max(arr.shape) / 8.0 / f)
    background = ndi.zoom(coarse, (arr.shape[0] / coarse.shape[0], arr.shape[1] / coarse.shape[1]), order=1)
    background = background[: arr.shape[0], : arr.shape[1]]
    if blurred is None:
        blurred = ndi.gaussian_filter(arr, CHECK_BLUR)
    residual = blurred[: background.shape[0], : background.shape[1]] - background
    # What the smooth background leaves unexplained (ripples of an uneven background,
    # strongest at high photon counts where the pixel noise is small) counts as noise
    # too. It is the spread between the residual's 5th and 25th percentiles (a normal
    # one's SD: 0.971 of it), where bright objects are not as long as they cover under
    # three quarters of the field. Below the median, as it was first measured, it took
    # in the dark gaps between nuclei that cover half a stained section.
    step = max(1, int(np.ceil(np.sqrt(residual.size / _PERCENTILE_SAMPLE))))
    sample = residual[::step, ::step]  # quantiles of a regular sample: same answer, a fraction of the time
    p5, p25, median = (float(v) for v in np.percentile(sample, [5, 25, 50]))
    ripple = (p25 - p5) / 0.971
    return float((residual.max() - median) / max(sd, ripple))


#: Share of an image's variance left after a Gaussian blur of sigma 2 px below which it is
#: structureless noise. White noise keeps about 1 / (4 pi sigma^2) = 0.02; on the
#: synthetic sets every label-free field keeps at least 0.25 and every fluorescence
#: field at least 0.6, because cells are larger than 2 px.
STRUCTURE_MIN = 0.1


def structure_share(image: np.ndarray, sigma: float = CHECK_BLUR, *, blurred: np.ndarray | None = None) -> float:
    """The share of ``image``'s variance that survives a Gaussian blur of ``sigma`` pixels.

    ``blurred``: ``image`` (float32) already blurred by ``sigma``, when at hand; used
    for images of up to 4 MP, which are measured whole.
    """
    from scipy import ndimage as ndi

    arr = as_float(image)
    step = max(1, int(np.sqrt(arr.size / 1_000_000)))  # a 1 MP sample is plenty
    arr = arr[::step, ::step]
    sd = float(arr.std())
    if not np.isfinite(sd) or sd == 0:
        return 0.0
    if blurred is not None and step == 1:
        # The blur is linear and keeps constants: var(G(a - m) / sd) = var(G(a)) / sd^2.
        return float(blurred.var(dtype=np.float64)) / sd**2
    return float(ndi.gaussian_filter((arr - arr.mean()) / sd, sigma / step).var())


def noise_field_message(image: np.ndarray, *, blurred: np.ndarray | None = None) -> str | None:
    """A one-line reason if ``image`` is structureless noise (for any channel), else None.

    Label-free fields have a mid-grey background, so the fluorescence test of
    :func:`empty_field_message` cannot call them empty; but an image with nothing in it
    is also one without spatial structure at the scale of a cell.
    """
    if min(np.shape(image)[:2]) < EMPTY_CHECK_MIN_SIDE:
        return None
    share = structure_share(image, blurred=blurred)
    if share >= STRUCTURE_MIN:
        return None
    return (f"no objects: the image is noise without structure (only {100 * share:.0f} % of its variance "
            f"is wider than 2 px; images with cells keep at least {100 * STRUCTURE_MIN:.0f} %)")


def empty_field_message(image: np.ndarray, min_cnr: float = EMPTY_CNR, *,
                        blurred: np.ndarray | None = None) -> str | None:
    """A one-line reason if a fluorescence image is an empty field, else None.

    Engines for bright objects (nuclei) return no objects for such an image instead of
    finding "cells" in the noise, which percentile normalisation would otherwise stretch
    to full range. Images with a side under :data:`EMPTY_CHECK_MIN_SIDE` are never
    called empty (too small to separate background from objects).
    """
    if min(np.shape(image)[:2]) < EMPTY_CHECK_MIN_SIDE:
        return None
    cnr = contrast_to_noise(image, blurred=blurred)
    if cnr >= min_cnr:
        return None
    return (f"no objects: nothing rises more than {cnr:.1f} noise SDs above the background "
            f"(an empty field; objects need {min_cnr:g})")


def field_message(image: np.ndarray, *, fluorescence: bool = True) -> str | None:
    """:func:`noise_field_message`, then (``fluorescence``) :func:`empty_field_message`.

    Both measure the image blurred by 2 px: it is made once here (a sixth of the
    check's time on a 1024 x 1024 field). A sparse fluorescence field
    (:func:`sparse_field`) with objects standing out of its noise
    (:func:`objects_standing_out`) is not held to the noise test: its few nuclei
    carry too little of the field's variance (3 % for three 7 px nuclei on a
    1024 x 1024 field), and it is no label-free image.
    """
    from scipy import ndimage as ndi

    if min(np.shape(image)[:2]) < EMPTY_CHECK_MIN_SIDE:
        return None
    arr = as_float(image)
    blurred = ndi.gaussian_filter(arr, CHECK_BLUR)
    few_nuclei = fluorescence and sparse_field(arr) and objects_standing_out(arr)[1].any()
    return (None if few_nuclei else noise_field_message(arr, blurred=blurred)) or (
        empty_field_message(arr, blurred=blurred) if fluorescence else None)


#: Pixels (of the sampled image) a patch standing out of the noise must cover to be an
#: object (:func:`objects_standing_out`): a nucleus of 5 px covers 20, a pair of photons 2-3.
MIN_OBJECT_PIXELS = 16


def objects_standing_out(arr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(sample, mask)``: a regular sample of ``arr`` (all of it up to 4 MP) and its objects that stand out of the noise.

    The mask holds the connected patches of at least :data:`MIN_OBJECT_PIXELS` where the
    sample smoothed by 1 px rises above :func:`significant_level`.
    """
    step = max(1, int(np.ceil(np.sqrt(arr.size / _PERCENTILE_SAMPLE))))
    sample = arr[::step, ::step]
    return sample, _big_patches(_above_noise(sample))


def _big_patches(mask: np.ndarray) -> np.ndarray:
    """``mask`` without its connected patches under :data:`MIN_OBJECT_PIXELS`."""
    from scipy import ndimage as ndi

    patches, n = ndi.label(mask)
    if not n:
        return mask
    big = np.bincount(patches.ravel()) >= MIN_OBJECT_PIXELS
    big[0] = False
    return big[patches]


def normalize_percentile(
    image: np.ndarray,
    low: float = DEFAULT_PERCENTILES[0],
    high: float = DEFAULT_PERCENTILES[1],
    *,
    min_contrast_sd: float = MIN_CONTRAST_SD,
    by_objects: bool = True,
) -> np.ndarray:
    """Map the ``low`` percentile to 0 and the ``high`` percentile to 1.

    Values are not clipped: bright outliers keep their relative brightness, which the
    generative Kaizen model needs to reconstruct them.

    The range is never narrower than ``min_contrast_sd`` noise standard deviations
    (:func:`noise_sd`): an image of pure noise (an empty field) stays a dim, flat
    image instead of being stretched until its noise looks like cells. Images with
    objects have far more contrast than that (on the synthetic sets, at least 9 SDs
    for label-free and 13 for fluorescence images), so they are unaffected.

    With ``by_objects`` (bright objects on a dark field: fluorescence), on a sparse
    field (:func:`sparse_field`: a few nuclei on a wide empty one) the ``high``
    percentile of the whole field is noise; the ``high`` percentile of the pixels that
    stand out of the noise (:func:`objects_standing_out`) is used instead when
    brighter, so the nuclei come out as bright as in a dense field and the noise as
    faint. A tile of a tiled run takes the whole image's decision and objects
    (:attr:`WholeImageStats.sparse`, ``sparse_objects``), so tiles agree. ``by_objects=False``
    for label-free images and where the plain percentiles are the contract
    (bioimage.io's ``scale_range``).

    Raises
    ------
    InputError
        If the image is constant (nothing to segment).
    """
    arr = as_float(image)
    lo, hi = percentiles(arr, low, high)
    if hi - lo <= 1e-12 * max(1.0, abs(hi)):
        vmin, vmax = float(arr.min()), float(arr.max())
        if vmax - vmin <= 1e-12 * max(1.0, abs(vmax)):
            raise InputError(
                f"image is constant (every pixel is {vmin:g}): there is nothing to segment; "
                "expected an image with contrast"
            )
        # Sparse objects on a flat background: the percentiles coincide, use the range.
        lo, hi = vmin, vmax
    if by_objects and min(arr.shape) >= EMPTY_CHECK_MIN_SIDE:
        objects = _sparse_object_pixels(arr)
        if objects.size:
            hi = max(hi, float(np.percentile(objects, high)))
    if min_contrast_sd > 0:
        stats = _WHOLE_IMAGE.get()
        hi = max(hi, lo + min_contrast_sd * (stats.noise if stats is not None else noise_sd(arr)))
    out = ((arr - lo) / (hi - lo)).astype(np.float32, copy=False)
    # The one place every engine's input passes: whatever the dtype and range, what
    # leaves here is finite (a non-finite value would crash or hang the morphology
    # downstream, e.g. h-maxima).
    if not np.isfinite(out).all() or not np.isfinite(hi - lo):
        raise InputError(f"image values ({describe(image)}) cannot be normalised to a finite range: "
                         "expected finite pixel values of a real-valued image")
    return out


def _sparse_object_pixels(arr: np.ndarray) -> np.ndarray:
    """The pixels of a sparse field's objects standing out of the noise (none if it is not sparse).

    A tile of a tiled run reads the whole image's (:attr:`WholeImageStats.sparse_objects`),
    or none when the whole image's decision was not made: tiles share one range.
    """
    stats = _WHOLE_IMAGE.get()
    if stats is not None:
        return stats.sparse_objects if stats.sparse_objects is not None else np.empty(0, np.float32)
    if not sparse_field(arr):
        return np.empty(0, np.float32)
    sample, objects = objects_standing_out(arr)
    return sample[objects]


def bright_objects(plane: np.ndarray, objects: str = "auto") -> np.ndarray:
    """``plane`` with its objects bright on a dark field, as the nucleus engines take it.

    A bright-field frame or a stained section shows nuclei darker than their field;
    turned round (:func:`~napari_kaizen.engines._common.polarity.turned_round`), they
    are bright on a dark one, as a fluorescence stain shows them.

    Parameters
    ----------
    plane : ndarray, shape (H, W)
        One plane; an RGB(A) image is read as its grey plane
        (:func:`grey_plane_of_colour`: a grey image stored as colour, a colour picture
        of a bright field as its luminance). Anything else (a colour image on a dark
        field, a stack) is passed through for the engine's own input check to name.
    objects : {'auto', 'bright', 'dark'}
        How the objects stand against their field; ``'auto'`` decides by
        :func:`~napari_kaizen.engines._common.polarity.dark_objects` and says so (an
        :class:`InputWarning`) when it turns the plane round.

    Returns
    -------
    ndarray
        The plane, or its inverse.

    Examples
    --------
    >>> field = np.full((64, 64), 200, np.uint8)
    >>> field[20:30, 20:30] = 40  # a dark nucleus on a bright field
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore", InputWarning)
    ...     int(bright_objects(field)[25, 25]), int(bright_objects(field)[0, 0])
    (215, 55)
    """
    arr = np.asarray(plane)
    if looks_rgb(arr):
        arr = grey_plane_of_colour(arr)
        if arr is None:
            return plane  # a colour image on a dark field: the engine's input check names it
    if arr.ndim != 2 or arr.dtype.kind not in "uifb" or not decide_dark(arr, objects):
        return arr if arr.ndim == 2 else plane
    if objects == "auto":
        warnings.warn(DARK_OBJECTS, InputWarning, stacklevel=3)
    return turned_round(arr)


def prepare_image(
    image: np.ndarray,
    *,
    channel: int | None = None,
    plane: int | tuple[int, ...] | None = None,
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
    by_objects: bool = True,
) -> np.ndarray:
    """Validate and normalise ``image`` for an engine: one 2-D ``float32`` plane.

    This is the single entry point every engine, the CLI and the widgets use.

    Parameters
    ----------
    image : array_like
        Layer data or a file's pixels: any real dtype, 2-D, RGB(A) or a stack.
    channel, plane : int, optional
        See :func:`to_plane`.
    percentiles : (float, float)
        Low / high percentiles mapped to 0 / 1.
    by_objects : bool
        A sparse fluorescence field's top from its objects (see
        :func:`normalize_percentile`); False for label-free images.

    Returns
    -------
    ndarray of float32, shape (H, W)

    Raises
    ------
    InputError
        With a one-line message naming what was wrong and what is accepted.

    Examples
    --------
    >>> import numpy as np
    >>> img = np.arange(100, dtype=np.uint16).reshape(10, 10)
    >>> out = prepare_image(img)
    >>> out.dtype, out.shape
    (dtype('float32'), (10, 10))
    """
    return normalize_percentile(to_plane(image, channel=channel, plane=plane), *percentiles, by_objects=by_objects)
