"""Segment an image of any size tile by tile, in memory bounded by the tile.

:func:`segment_tiled` runs any engine on halo tiles of a huge image (numpy, memory map,
zarr / OME-Zarr, TIFF through tifffile's zarr view, dask) and stitches the labels across
the seams (:mod:`napari_kaizen.engines._common.stitch`) into an output array (zarr,
memory map or numpy). Engines know nothing of this: each receives an ordinary 2-D numpy
window. What must agree between tiles is decided once for the whole image, from a
strided sample and a few full-resolution crops (:func:`plan_tiles`):

* intensity normalisation: the whole image's percentiles and noise, handed to every
  tile through :func:`~napari_kaizen.engines._common.normalize.whole_image_stats`;
* the object scale: the engine's own scale rule (``engine.scale_for``, the function its
  untiled run calls) on the centre crop (:func:`plan_scale`), handed to every tile as a number;
* the halo, from that diameter (:func:`~napari_kaizen.engines._common.stitch.choose_halo`).

Engines yield, front ends draw: :func:`segment_tiled` is a generator of
:class:`TiledSnapshot`, one per finished tile (with the region it wrote), then a final
one with ``done=True`` whose ``labels`` is the output array.
"""

from __future__ import annotations

import ctypes
import dataclasses
import gc
import math
import os
import time
import warnings
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from .engines import (
    DARK_OBJECTS,
    DEFAULT_TILE,
    MIN_SIDE,
    SPARSE_SHARE,
    SPARSE_SIDE,
    InputWarning,
    Scale,
    SegmentationSnapshot,
    Tile,
    WholeImageStats,
    as_float,
    check_tile,
    choose_halo,
    colour_plane_kind,
    colour_without_grey_plane,
    decide_dark,
    grey_of_colour,
    merge_tile,
    noise_sd,
    owned_objects,
    parse_diameter,
    pixels_standing_out,
    pooled_values,
    rgb_layout,
    run_to_end,
    share_standing_out,
    tile_grid,
    turned_round,
    whole_image_stats,
)
from .errors import InputError, KaizenError
from .io.zarr import picked

#: Fields with more pixels than this are segmented tile by tile, by every front end (an
#: 8000^2 field took 8.4 GB untiled with the classical engine).
TILED_ABOVE_PIXELS = 4096 * 4096

#: A lazy (dask, zarr) image with more pixels than this is segmented tile by tile too:
#: loading it whole into memory is what tiling avoids.
TILED_LAZY_ABOVE_PIXELS = 2048 * 2048

#: Tile tasks in flight per dask worker thread: enough to keep workers busy, few enough
#: that windows waiting to be stitched stay a bounded amount of memory.
INFLIGHT_PER_THREAD = 2

#: Pixels in the strided sample used for the whole image's percentiles.
SAMPLE_PIXELS = 2_000_000

#: The engines' whole-image thresholds are measured on a grid of up to this many crops
#: per axis, each 8 object diameters wide (within these bounds, pixels).
CALIBRATION_GRID = 8
CALIBRATION_CROP_MIN = 256
CALIBRATION_CROP_MAX = 1024

#: Smallest halo for the learned engines (pixels).
LEARNED_MIN_HALO = 128

#: Side of the full-resolution crops used for the noise level, the sparse-field decision
#: and the diameter estimate (five: the centre and the centres of the quadrants; a grid
#: of 64 crops of 512^2 for the decision cost 1 s of a 13 s tiled run of a crowded 5000^2 field).
CROP = 1024

#: A sparse image's diameter and its objects' brightness are measured on up to this many
#: crops per axis, each as wide as the untiled sparse rule reads (``SPARSE_SIDE``).
SPARSE_SCALE_GRID = 4


@dataclass(frozen=True)
class TiledSnapshot(SegmentationSnapshot):
    """A step of a tiled run.

    Attributes
    ----------
    region : (y0, y1, x0, x1), optional
        The part of the output this step changed (a tile's window); ``None`` for the
        final snapshot.
    tile_index, n_tiles : int
        Which tile (raster order) finished, and how many there are.
    n_objects : int
        Objects in the output so far.

    On the final snapshot (``done=True``) ``labels`` is the output array (zarr, memory
    map or numpy, as given) -- never a copy of it.
    """

    region: tuple[int, int, int, int] | None = None
    tile_index: int = -1
    n_tiles: int = 0
    n_objects: int = 0


@dataclass(frozen=True)
class TilePlan:
    """Everything the tiles of one image share; small and picklable (sent to dask workers).

    Attributes
    ----------
    shape : (H, W)
    tiles : list of Tile
    halo : int
    params : dataclass
        The engine's params with ``diameter`` fixed for the whole image.
    stats : WholeImageStats
        Intensity statistics every tile is normalised with.
    pixels : PixelMap
        How every window's pixels reach the engine.
    diameter : float or None
        Object diameter (pixels) the halo was chosen for.
    """

    shape: tuple[int, int]
    tiles: list[Tile]
    halo: int
    params: Any
    stats: WholeImageStats
    pixels: PixelMap
    diameter: float | None


# --------------------------------------------------------------------------- inputs


def should_tile(shape: tuple[int, ...], *, lazy: bool = False) -> bool:
    """Whether an image of ``shape`` is segmented tile by tile (lazy: a dask / zarr array).

    An RGB(A) shape ``(H, W, 3|4)`` counts its ``H x W`` pixels (its colour axis is no
    plane axis).

    Examples
    --------
    >>> should_tile((512, 512)), should_tile((5000, 5000)), should_tile((3000, 3000), lazy=True)
    (False, True, True)
    >>> should_tile((5000, 5000, 3))
    True
    """
    shape = tuple(shape)[:2] if rgb_layout(tuple(shape)) else tuple(shape)
    pixels = math.prod(int(s) for s in shape[-2:]) if len(shape) >= 2 else 0
    return pixels > TILED_ABOVE_PIXELS or (lazy and pixels > TILED_LAZY_ABOVE_PIXELS)


class ColourPlane:
    """The grey plane of a lazy colour (RGB(A)) image, read window by window.

    What an untiled run reads of the whole picture
    (:func:`~napari_kaizen.engines._common.normalize.grey_plane_of_colour`), for an
    image too large to read whole: ``kind`` (``'red'`` or ``'luminance'``) is decided
    once, on a sample of the whole image (:func:`as_2d_source`), and each slice reads
    only the colour pixels it covers.

    Examples
    --------
    >>> rgb = np.zeros((64, 80, 3), np.uint8); rgb[..., 1] = 100
    >>> plane = ColourPlane(rgb, "luminance")
    >>> plane.shape, plane.dtype.name, round(float(plane[:2, :2][0, 0]), 1)
    ((64, 80), 'float32', 58.7)
    """

    def __init__(self, image: Any, kind: str, *, sample: np.ndarray | None = None, step: int = 0):
        self.image, self.kind = image, kind
        self.shape = tuple(int(s) for s in image.shape[:2])
        self.dtype = np.dtype(np.float32) if kind == "luminance" else np.dtype(image.dtype)
        self.ndim = 2
        # The colour sample the kind was decided on, as grey: the plan's whole-image
        # sample (the same rows and columns) is not read a second time.
        self.sample = None if sample is None else grey_of_colour(sample, kind)
        self.step = step

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        return grey_of_colour(_computed(self.image[key]), self.kind)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[:, :]
        return out if dtype is None else out.astype(dtype)


def _computed(block: Any) -> np.ndarray:
    """A numpy array of a slice (computes a dask one)."""
    compute = getattr(block, "compute", None)
    if compute is not None and not isinstance(block, np.ndarray):
        block = compute()
    return np.asarray(block)


def as_2d_source(image: Any, *, name: str = "image") -> Any:
    """Check a lazy or in-memory 2-D image and return something numpy-sliceable.

    Accepts numpy arrays and memory maps, zarr arrays, dask arrays, and a list of
    arrays (a multiscale pyramid: level 0 is used). A colour image ``(H, W, 3|4)``
    becomes its grey plane, read tile by tile (:class:`ColourPlane`), when it has one
    (a grey image stored as colour, a colour picture of a stained section); its
    colours are told apart on a regular sample of the whole image.

    Raises
    ------
    InputError
        Not 2-D (after dropping leading axes of size 1), a colour image on a dark field
        (its channel must be picked), not real numbers, or too small.
    """
    if isinstance(image, (list, tuple)):
        if not image:
            raise InputError(f"{name} is an empty list: expected an array or a multiscale list of arrays")
        image = image[0]
    if not hasattr(image, "shape") or not hasattr(image, "dtype"):
        image = np.asarray(image)
    shape = tuple(int(s) for s in image.shape)
    ones = next((k for k, n in enumerate(shape[:-2]) if n != 1), max(0, len(shape) - 2))
    # Leading axes of size 1 dropped without reading the plane (a zarr array indexed with
    # integers reads it whole).
    image, shape = picked(image, (0,) * ones), shape[ones:]
    if rgb_layout(shape) and np.dtype(image.dtype).kind in "biuf":
        step = _sample_step(shape)
        sample = _strided(image, step)
        kind = colour_plane_kind(sample)
        if kind is None:
            raise InputError(colour_without_grey_plane(f"{name} is a colour RGB(A) image of shape {shape}", sample))
        image, shape = ColourPlane(image, kind, sample=sample, step=step), shape[:2]
    if len(shape) != 2:
        raise InputError(f"{name} has shape {shape}: a tiled run segments one 2-D plane (H, W); pick a plane first")
    dtype = np.dtype(image.dtype)
    if dtype.kind not in "biuf":
        raise InputError(f"{name} has dtype {dtype}: expected integer, float or bool pixels")
    if min(shape) < MIN_SIDE:
        raise InputError(f"{name} is too small ({shape}): at least {MIN_SIDE}x{MIN_SIDE} pixels are needed")
    return image


def read_region(image: Any, box: tuple[int, int, int, int]) -> np.ndarray:
    """Pixels of ``box`` (y0, y1, x0, x1) as a numpy array (computes a dask slice)."""
    y0, y1, x0, x1 = box
    return _computed(image[y0:y1, x0:x1])


def _strided(image: Any, step: int) -> np.ndarray:
    if isinstance(image, ColourPlane) and image.sample is not None and image.step == step:
        return image.sample
    return _computed(image[::step, ::step])


def _sample_step(shape: tuple[int, ...]) -> int:
    """Row / column step of :func:`strided_sample`: about :data:`SAMPLE_PIXELS` pixels of the plane."""
    h, w = (int(s) for s in shape[:2])
    return max(1, int(math.ceil(math.sqrt(h * w / SAMPLE_PIXELS))))


@dataclass(frozen=True)
class PixelMap:
    """How a window's pixels reach the engine, the same for every tile of one image.

    Attributes
    ----------
    offset : float or None
        For 32/64-bit integer images, the whole image's minimum, subtracted first (the
        engines' own float conversion would subtract each window's own minimum).
    dark : bool
        The objects are darker than their field (a nucleus engine's ``objects``, or
        :func:`~napari_kaizen.engines._common.polarity.dark_objects` of the whole
        image's sample): every window is turned round about ``top``, as an untiled run
        turns its plane round; a tile's own decision would differ on an empty tile.
    top : float
        What a dark image is turned round about: its sampled maximum (an unsigned
        integer image: its dtype's maximum, as untiled).
    """

    offset: float | None = None
    dark: bool = False
    top: float = 0.0

    def __call__(self, window: np.ndarray) -> np.ndarray:
        if self.offset is not None:
            window = (window.astype(np.float64) - self.offset).astype(np.float32)
        return turned_round(window, self.top) if self.dark else window


def strided_sample(image: Any) -> np.ndarray:
    """A regular sample of about :data:`SAMPLE_PIXELS` pixels of a whole (lazy) 2-D or colour image, in its dtype."""
    return _strided(image, _sample_step(tuple(image.shape)))


def pixel_map(sample: np.ndarray, params: Any) -> PixelMap:
    """The :class:`PixelMap` of a whole image from its :func:`strided_sample`, for an engine's ``params``."""
    dtype = sample.dtype
    offset = None
    if dtype.kind in "iu" and dtype.itemsize >= 4:
        # as_float subtracts an int32/int64 image's minimum; each window would subtract its own.
        offset = float(sample.min())
    objects = getattr(params, "objects", None)  # only the nucleus engines look for bright objects
    if objects is None or not decide_dark(sample, objects):
        return PixelMap(offset)
    if objects == "auto":
        warnings.warn(DARK_OBJECTS, InputWarning, stacklevel=3)
    shifted = PixelMap(offset)(sample).astype(np.float64)
    return PixelMap(offset, dark=True, top=float(np.nanmax(shifted)) if shifted.size else 0.0)


def grid_crops(shape: tuple[int, int], side: int, n: int) -> list[tuple[int, int, int, int]]:
    """Up to ``n`` x ``n`` crops of ``side`` pixels centred on an even grid (fewer if they would overlap)."""
    h, w = shape
    ny, nx = min(n, max(1, -(-h // side))), min(n, max(1, -(-w // side)))
    boxes = []
    for i in range(ny):
        for j in range(nx):
            cy, cx = int((i + 0.5) * h / ny), int((j + 0.5) * w / nx)
            y0, x0 = max(0, min(h - side, cy - side // 2)), max(0, min(w - side, cx - side // 2))
            boxes.append((y0, min(h, y0 + side), x0, min(w, x0 + side)))
    return boxes


def _crops(shape: tuple[int, int], side: int) -> list[tuple[int, int, int, int]]:
    """The centre crop and the centres of the four quadrants, each ``side`` wide (clipped)."""
    h, w = shape
    boxes = []
    for cy, cx in ((h // 2, w // 2), (h // 4, w // 4), (h // 4, 3 * w // 4), (3 * h // 4, w // 4),
                   (3 * h // 4, 3 * w // 4)):
        y0, x0 = max(0, min(h - side, cy - side // 2)), max(0, min(w - side, cx - side // 2))
        box = (y0, min(h, y0 + side), x0, min(w, x0 + side))
        if box not in boxes:
            boxes.append(box)
    return boxes


# --------------------------------------------------------------------------- plan


def _load(engine: Any, spec: Any, device: Any) -> Any:
    """The engine's loaded model (None for an engine without models)."""
    return engine.load_model(spec, device=device) if engine.learned else None


def resolve_engine(engine: Any) -> Any:
    """An engine object from a name (``'classical'``) or the object itself."""
    if isinstance(engine, str):
        from .engines import get_engine

        return get_engine(engine)
    return engine


def load_engine_model(engine: Any, model: Any, device: Any) -> Any:
    """A loaded model for a learned engine (default model if ``model`` is None); None for classical."""
    spec = model if model is not None else getattr(engine, "default_model", None)
    if spec is None:
        return None
    if not isinstance(spec, (str, bytes)) and not hasattr(spec, "__fspath__"):
        return spec  # already loaded
    return _load(engine, spec, device)


def whole_image_intensity(image: Any, pixels: PixelMap | None = None, *, fluorescence: bool = True,
                          sample: np.ndarray | None = None) -> WholeImageStats:
    """Percentile sample, noise level and sparse-field decision of a whole (lazy) image.

    The percentiles come from a strided sample; the noise, and whether the image is a
    few objects on a wide empty field (:func:`share_standing_out`, as an untiled run
    decides on its centre), from five full-resolution crops; a sparse image's objects'
    pixels from a grid of wider crops (:func:`pixels_standing_out`). A slide scan or a
    mosaic is often mostly empty, and its percentiles are then noise. Not
    ``fluorescence`` (a label-free input): no sparse decision for the whole image.
    All of it on the pixels as the engine takes them (``pixels``, default unchanged);
    ``sample``: the image's :func:`strided_sample`, when at hand (a lazy image's every
    chunk is read for it).
    """
    to_engine = pixels or PixelMap()
    h, w = (int(s) for s in image.shape)
    sample = as_float(to_engine(strided_sample(image) if sample is None else sample)).ravel()
    crops = [as_float(to_engine(read_region(image, box))) for box in _crops((h, w), CROP)]
    noises = [noise_sd(crop) for crop in crops]
    share = share_standing_out(crops) if fluorescence else None
    del crops
    sparse = None if share is None else share < SPARSE_SHARE
    objects = None
    if sparse:
        # Few objects: they are looked for over wider crops (those the scale is measured on).
        objects = pixels_standing_out(as_float(to_engine(read_region(image, box)))
                                      for box in grid_crops((h, w), SPARSE_SIDE, SPARSE_SCALE_GRID))
    return WholeImageStats(sample=sample, noise=float(np.median(noises)), sparse=sparse, sparse_objects=objects)


def plan_tiles(engine: Any, image: Any, params: Any = None, *, model: Any = None, tile: int | None = DEFAULT_TILE,
               halo: int | None = None, device: Any = "auto") -> TilePlan:
    """Decide once, for the whole image, what every tile must agree on.

    Parameters
    ----------
    engine : Engine or str
    image : array_like, shape (H, W)
        Lazy or in-memory (see :func:`as_2d_source`).
    params : engine params, optional
        Their ``diameter`` is read here by the engine's own scale rule
        (:func:`plan_scale`), once for the whole image, and the result is handed to
        every tile.
    model : loaded model, optional
        For the engine's scale rule and the model's object diameter (halo).
    tile : int, optional
        Core side in pixels (None: :data:`DEFAULT_TILE`).
    halo : int, optional
        Pixels of context on each side; default from the diameter.
    device : str
        Where the engine runs on the sample crops (the classical and FCN engines'
        whole-image thresholds are measured there).

    Returns
    -------
    TilePlan
    """
    tile = check_tile(tile)
    engine = resolve_engine(engine)
    src = as_2d_source(image)
    p = params if params is not None else engine.Params()
    if isinstance(getattr(p, "diameter", None), str):
        # Read once here too, for callers of this public function that pass text: a
        # diameter of '60' must size the halo as 60 does, not fall back to the default.
        p = dataclasses.replace(p, diameter=parse_diameter(p.diameter))
    h, w = (int(s) for s in src.shape)
    sample = strided_sample(src)
    pixels = pixel_map(sample, p)
    # A label-free input's engine looks for bright objects only in what it predicts.
    stats = whole_image_intensity(src, pixels, fluorescence=engine.input_kind != "label-free", sample=sample)
    del sample
    learned = model is not None
    # The engine's own scale rule, once for the whole image; every tile then reads back
    # the same scale from its params (an estimate stays marked as one).
    scale = plan_scale(engine, src, p, stats=stats, pixels=pixels, model=model)
    diameter = scale.diameter
    p = dataclasses.replace(p, diameter=scale.param)
    if getattr(engine, "calibrates_on_crops", False):
        stats = _decide_on_crops(engine, src, p, stats, pixels, model, device)
    object_diameter = getattr(model, "object_diameter", None)
    size = diameter if diameter is not None else object_diameter
    # tile_grid checks the tile; the halo follows it.
    if halo is None:
        halo = choose_halo(size, int(tile))
        if learned:
            # A network's receptive field reaches further than a few diameters; more
            # context makes a window's probabilities near its core match the whole image's.
            halo = max(halo, min(LEARNED_MIN_HALO, int(tile) // 2))
    tiles = tile_grid((h, w), tile, halo)
    return TilePlan(shape=(h, w), tiles=tiles, halo=int(halo), params=p, stats=stats, pixels=pixels,
                    diameter=None if diameter is None else float(diameter))


def plan_scale(engine: Any, src: Any, params: Any, *, stats: WholeImageStats, pixels: PixelMap | None = None,
               model: Any = None) -> Scale:
    """The engine's scale (its ``scale_for``) for a whole lazy image, read on full-resolution crops.

    The centre crop goes first: it is what an untiled run of an image up to
    :data:`CROP` pixels a side measures. The other four crops stand in only when the
    rule cannot measure the centre one (too few objects there). An estimate on a
    sparse image (:attr:`WholeImageStats.sparse`) is the median of those on a grid of
    crops of ``SPARSE_SIDE`` over all of it (up to :data:`SPARSE_SCALE_GRID` squared).
    Crops are normalised with the whole image's statistics, as the tiles will be.

    Returns
    -------
    Scale
        The rule's fallback (a learned engine's: the model's own scale; the classical
        engine's: a typical nucleus), with one warning, when ``'auto'`` fails on every
        crop.

    Raises
    ------
    InputError
        When the engine's rule refuses every crop.
    """
    failures: list[str] = []
    fallback: Scale | None = None
    shape = tuple(int(s) for s in src.shape)
    sparse = bool(stats.sparse)
    # A few objects on a wide empty field (a slide scan, a mosaic): a crop holds a
    # handful at most, or none. The rule measures crops as wide as an untiled run's
    # sparse rule reads, on a grid over the whole image, and the median scale is taken.
    boxes = grid_crops(shape, SPARSE_SIDE, SPARSE_SCALE_GRID) if sparse else _crops(shape, CROP)
    measured: list[Scale] = []
    to_engine = pixels or PixelMap()
    with whole_image_stats(stats), warnings.catch_warnings():
        # A crop the rule cannot measure is not yet the image's failure: say it once, below.
        warnings.simplefilter("ignore", InputWarning)
        for box in boxes:
            try:
                scale = engine.scale_for(to_engine(read_region(src, box)), params, model=model)
            except InputError as exc:
                failures.append(str(exc))
                continue
            if scale.failure is None and not (sparse and scale.estimated):
                return scale
            if scale.failure is None:
                measured.append(scale)
            else:
                failures.append(scale.failure)
                fallback = dataclasses.replace(scale, probe=None)  # a crop's maps are no tile's
    if measured:
        return sorted(measured, key=lambda sc: sc.diameter)[(len(measured) - 1) // 2]
    where = f" (on every one of the {len(failures)} crops read to measure the size)" if len(failures) > 1 else ""
    if fallback is None:
        raise InputError(failures[-1] + where)
    warnings.warn(f"{fallback.failure}{where}; running at {fallback.running_at}", InputWarning, stacklevel=3)
    return fallback


def _decide_on_crops(engine: Any, src: Any, params: Any, stats: WholeImageStats, pixels: PixelMap,
                     model: Any, device: Any) -> WholeImageStats:
    """Run the engine on the sample crops and fix its whole-image values (from their pooled samples)."""
    collect: dict = {}
    probe = dataclasses.replace(stats, collect=collect)
    diameter = getattr(params, "diameter", None)
    side = int(min(CALIBRATION_CROP_MAX, max(CALIBRATION_CROP_MIN, 8 * diameter))) if isinstance(
        diameter, (int, float)) else CALIBRATION_CROP_MIN
    with whole_image_stats(probe):
        for box in grid_crops(tuple(int(s) for s in src.shape), side, CALIBRATION_GRID):
            try:
                run_to_end(engine.segment(pixels(read_region(src, box)), params, model=model, device=device))
            except InputError:
                continue  # a crop the engine refuses (no objects to size) decides nothing
    # Pooled samples of many small crops spread evenly, not a few big crops nor a median
    # of per-crop values: on a 4096^2 field the untiled Otsu threshold was 0.3145; 8 x 8
    # crops of 256 px pooled gave 0.3145, the median of their own thresholds 0.3170, and
    # five crops of 1024 px pooled 0.3218 -- enough to cost 1.5 % AP50 against untiled.
    return dataclasses.replace(stats, values=pooled_values(collect), collect=None)


# --------------------------------------------------------------------------- measurements

#: Columns of a measurements table that are row or column coordinates on the image grid.
_ROW_COLUMNS, _COL_COLUMNS = ("centroid-0", "bbox-0", "bbox-2"), ("centroid-1", "bbox-1", "bbox-3")
#: Context read around each core when measuring a huge field tile by tile (pixels): an
#: object whose top-left corner lies in the core is whole in its window unless it is
#: larger than this, and then its window grows until it is.
MEASURE_HALO = 256


def measure_tiled(labels: Any, image: Any | None = None, *, tile: int | None = DEFAULT_TILE,
                  halo: int = MEASURE_HALO) -> dict[str, np.ndarray]:
    """:func:`~napari_kaizen.io.measurements.measurements_table` of a huge labelled field, tile by tile.

    Each object is measured once, whole, in the window of the tile whose core holds
    the top-left corner of its bounding box (its first row and first column: one
    point, in exactly one core); coordinates are moved to the image grid. Memory is
    that of one window, however large the field.

    Parameters
    ----------
    labels : array_like, shape (H, W)
        The field's labels (zarr, a lazy TIFF, dask or numpy).
    image : array_like, shape (H, W), optional
        The plane that was segmented, for the intensity columns.
    tile, halo : int
        Core side and context of each window (pixels).

    Returns
    -------
    dict of column name -> 1-D array, one row per label (ascending), as
    :func:`~napari_kaizen.io.measurements.measurements_table` gives for the whole field.

    Examples
    --------
    >>> from napari_kaizen.io.measurements import measurements_table
    >>> lab = np.zeros((300, 300), np.int32)
    >>> lab[10:20, 250:290] = 1; lab[140:170, 120:150] = 2; lab[280:300, 0:300] = 3
    >>> tiled = measure_tiled(lab, tile=128, halo=16)
    >>> whole = measurements_table(lab)
    >>> all(np.allclose(tiled[k], whole[k], equal_nan=True) for k in whole)
    True
    """
    from .io.measurements import measurements_table

    shape = tuple(int(n) for n in labels.shape)
    h, w = shape
    parts: list[dict[str, np.ndarray]] = []
    for t in tile_grid(shape, check_tile(tile), int(halo)):
        c0, c1, c2, c3 = t.core
        box = t.window
        while True:
            y0, y1, x0, x1 = box
            lab = np.asarray(read_region(labels, box))
            ids, first_row, first_col, last_row, last_col = _boxes(lab)
            mine = ((first_row + y0 >= c0) & (first_row + y0 < c1) & (first_col + x0 >= c2) & (first_col + x0 < c3))
            # An object of this core cut by the window's edge (not the image's) is larger
            # than the halo: read a window that holds it.
            cut = mine & (((first_row == 0) & (y0 > 0)) | ((last_row == y1 - y0) & (y1 < h))
                          | ((first_col == 0) & (x0 > 0)) | ((last_col == x1 - x0) & (x1 < w)))
            if not cut.any() or box == (0, h, 0, w):
                break
            grow = max(y1 - y0, x1 - x0)
            box = (max(0, y0 - grow), min(h, y1 + grow), max(0, x0 - grow), min(w, x1 + grow))
        # Only this core's objects are measured (the neighbours' would cost as much again).
        own = np.where(np.isin(lab, ids[mine]), lab, 0)
        part = measurements_table(own, None if image is None else read_region(image, box))
        for k in _ROW_COLUMNS:
            part[k] = part[k] + y0
        for k in _COL_COLUMNS:
            part[k] = part[k] + x0
        parts.append(part)
    joined = {k: np.concatenate([part[k] for part in parts]) for k in parts[0]}
    order = np.argsort(joined["label"], kind="stable")
    return {k: v[order] for k, v in joined.items()}


def _boxes(labels: np.ndarray) -> tuple[np.ndarray, ...]:
    """``(ids, first_row, first_col, row_end, col_end)`` of every object of ``labels`` (ends exclusive)."""
    from scipy import ndimage as ndi

    ids = np.unique(labels)
    ids = ids[ids > 0]
    if not ids.size:
        return (ids,) + (np.zeros(0, np.int64),) * 4
    # find_objects indexes by label value: relabel the window's objects 1..n first.
    dense = np.searchsorted(ids, labels) + 1
    dense[labels == 0] = 0
    slices = ndi.find_objects(dense)
    return (ids, *(np.array([getattr(sl[axis], end) for sl in slices]) for axis, end in
                   ((0, "start"), (1, "start"), (0, "stop"), (1, "stop"))))


# --------------------------------------------------------------------------- one tile


def segment_window(engine: Any, window: np.ndarray, plan: TilePlan, tile: Tile, *, model: Any = None,
                   device: Any = "auto") -> np.ndarray:
    """Run the engine on one window and keep the objects this tile owns (ids 1..N, int32).

    This is the unit of work of a tiled run (a dask task when run on a cluster).
    """
    engine = resolve_engine(engine)
    with whole_image_stats(plan.stats):
        last = run_to_end(engine.segment(plan.pixels(window), plan.params, model=model, device=device))
    if last.labels is None:
        raise KaizenError(f"the {getattr(engine, 'name', 'engine')} engine finished tile {tile.index} without labels")
    owned = owned_objects(last.labels, tile, plan.shape)
    del last
    release_memory()
    return owned


_LIBC: Any = None


def release_memory() -> None:
    """Give back what a finished tile left behind, so memory stays bounded by one tile.

    Measured with Kaizen on 768 px tiles of a 4096^2 field: resident memory grew from 0.58
    to 1.01 GiB over 7 tiles without this, and stayed at 0.37-0.41 GiB with it (reference
    cycles the garbage collector frees late, and freed heap pages glibc keeps).
    """
    global _LIBC
    gc.collect()
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL("libc.so.6")
        except OSError:  # not glibc (macOS, Windows): nothing to trim
            _LIBC = False
    trim = getattr(_LIBC, "malloc_trim", None) if _LIBC else None
    if trim is not None:
        trim(0)


def compact(labels: np.ndarray) -> np.ndarray:
    """``labels`` in the smallest unsigned dtype that holds them (smaller task results)."""
    n = int(labels.max()) if labels.size else 0
    dtype = np.uint8 if n < 2**8 else np.uint16 if n < 2**16 else np.int32
    return labels.astype(dtype, copy=False)


# --------------------------------------------------------------------------- the run


def new_output(shape: tuple[int, int], out: Any = None) -> list[Any]:
    """The output as a list of levels (level 0 first): ``out`` as given, or an in-memory zarr pyramid."""
    if out is None:
        import zarr

        from .io.zarr import create_label_levels

        return create_label_levels(zarr.storage.MemoryStore(), shape)
    levels = list(out) if isinstance(out, (list, tuple)) else [out]
    if tuple(int(s) for s in levels[0].shape) != tuple(shape):
        raise InputError(f"the output array has shape {tuple(levels[0].shape)}, the image {tuple(shape)}: they must match")
    return levels


def segment_tiled(
    engine: Any,
    image: Any,
    params: Any = None,
    *,
    model: Any = None,
    device: Any = "auto",
    tile: int | None = DEFAULT_TILE,
    halo: int | None = None,
    out: Any = None,
    client: Any = None,
    plan: TilePlan | None = None,
) -> Generator[TiledSnapshot, None, None]:
    """Segment an image of any size tile by tile; yield one snapshot per finished tile.

    Parameters
    ----------
    engine : Engine or str
        From :func:`napari_kaizen.engines.get_engine`, or its name.
    image : array_like, shape (H, W)
        numpy array, memory map, zarr / OME-Zarr level, dask array, or a multiscale
        list (level 0 is segmented). Only one window is in memory at a time.
    params : engine params, optional
    model : loaded model, weights path or ``'bundled:NAME'``, optional
        Loaded once here (default: the engine's default model).
    device : str
    tile : int, optional
        Core side of a tile (pixels; None: :data:`DEFAULT_TILE`).
    halo : int, optional
        Context on each side (default: :data:`~.engines._common.stitch.HALO_DIAMETERS`
        object diameters).
    out : array or list of arrays, optional
        Where the labels go: a 2-D int32 zarr array / memory map / numpy array of the
        image's shape, or a list of pyramid levels (level 0 first, each half the size,
        e.g. from :func:`napari_kaizen.io.zarr.create_label_levels`), which are kept up
        to date tile by tile. Default: an in-memory (compressed) zarr pyramid.
    client : dask.distributed.Client, optional
        Run the tiles as dask tasks (:func:`iter_tile_labels`); the labels are
        identical to a run without it.
    plan : TilePlan, optional
        A plan from :func:`plan_tiles` (otherwise made here).

    Yields
    ------
    TiledSnapshot
        One per tile, in raster order, with the ``region`` it wrote; then the final
        snapshot (``done=True``) whose ``labels`` is level 0 of the output.

    Examples
    --------
    >>> from napari_kaizen.data import synthesize, SynthParams
    >>> from napari_kaizen import run_to_end
    >>> field = synthesize(SynthParams(shape=(512, 512)), seed=1)
    >>> last = run_to_end(segment_tiled("classical", field.nuclei, tile=256))
    >>> last.labels.shape, int(last.n_tiles)
    ((512, 512), 4)
    """
    engine = resolve_engine(engine)
    tile = check_tile(tile)
    src = as_2d_source(image)
    loaded = load_engine_model(engine, model, device)
    if plan is None:
        plan = plan_tiles(engine, src, params, model=loaded, tile=tile, halo=halo, device=device)
    levels = new_output(plan.shape, out)
    n_tiles = len(plan.tiles)
    yield TiledSnapshot(stage="tiles", progress=0.0, n_tiles=n_tiles,
                        message=f"{n_tiles} tiles of {tile} px (+{plan.halo} px halo)")
    if client is not None:
        results: Iterable[tuple[Tile, np.ndarray]] = iter_tile_labels(client, engine, src, plan, model=model,
                                                                       device=device)
    else:
        results = ((t, segment_window(engine, read_region(src, t.window), plan, t, model=loaded, device=device))
                   for t in plan.tiles)
    from .io.zarr import update_pyramid

    next_id, done = 1, 0
    try:
        for t, owned in results:
            sl = t.window_slices
            merged, next_id, _ = merge_tile(np.asarray(levels[0][sl]), owned, next_id)
            levels[0][sl] = merged
            update_pyramid(levels, t.window)
            done += 1
            yield TiledSnapshot(stage="tiles", progress=done / (n_tiles + 1), region=t.window, tile_index=t.index,
                                n_tiles=n_tiles, n_objects=next_id - 1,
                                message=f"tile {done}/{n_tiles}: {next_id - 1} objects")
    finally:
        close = getattr(results, "close", None)
        if close is not None:
            close()  # cancels a cluster's outstanding tiles when the run is closed
    flush = getattr(levels[0], "flush", None)
    if flush is not None:
        flush()
    yield TiledSnapshot(stage="labels", progress=1.0, labels=levels[0], done=True, n_tiles=n_tiles,
                        n_objects=next_id - 1, message=f"{next_id - 1} objects")


# --------------------------------------------------------------------------- tiles as dask tasks

_MODELS: dict[tuple[str, str, str], Any] = {}


def cached_model(engine: Any, spec: Any, device: Any) -> Any:
    """A loaded model that this process keeps: a worker loads each model once for all its tasks."""
    if spec is not None and not isinstance(spec, (str, os.PathLike)):
        return spec
    key = (engine.name, str(spec), str(device))
    if key not in _MODELS:
        _MODELS[key] = load_engine_model(engine, spec, device)
    return _MODELS[key]


def tile_task(engine_name: str, window: np.ndarray, plan: TilePlan, tile: Tile, model: Any, device: str) -> np.ndarray:
    """A dask task: one tile's owned labels (see :func:`segment_window`)."""
    engine = resolve_engine(engine_name)
    return compact(segment_window(engine, window, plan, tile, model=cached_model(engine, model, device),
                                  device=device))


def _threads(client: Any) -> int:
    try:
        return max(1, sum(client.nthreads().values()))
    except Exception:  # noqa: BLE001 (a cluster without workers yet still takes tasks)
        return 1


def iter_tile_labels(client: Any, engine: Any, src: Any, plan: TilePlan, *, model: Any = None, device: str = "auto"
                     ) -> Iterator[tuple[Tile, np.ndarray]]:
    """Run a plan's tiles as dask tasks on ``client``; yield ``(tile, owned labels)`` in raster order.

    Windows are read here and sent with their task, at most
    :data:`INFLIGHT_PER_THREAD` per worker thread at a time; finished tiles wait
    (small, compact dtype) until every tile before them is done.
    """
    from distributed import wait  # dask's own package (an absolute import)

    plan_future = client.scatter(plan, broadcast=True)
    limit = INFLIGHT_PER_THREAD * _threads(client)
    tiles = list(plan.tiles)
    futures: dict[Any, Any] = {}
    ready: dict[int, np.ndarray] = {}
    nxt, submitted = 0, 0
    try:
        while nxt < len(tiles):
            while submitted < len(tiles) and len(futures) < limit:
                t = tiles[submitted]
                f = client.submit(tile_task, engine.name, read_region(src, t.window), plan_future, t, model, device,
                                  pure=False, key=f"kaizen-tile-{t.index}-{os.getpid()}-{time.monotonic_ns()}")
                futures[f] = t
                submitted += 1
            done = wait(list(futures), return_when="FIRST_COMPLETED").done
            for f in done:
                t = futures.pop(f)
                ready[t.index] = f.result()
            while nxt in ready:
                yield tiles[nxt], ready.pop(nxt)
                nxt += 1
    finally:
        if futures:
            client.cancel(list(futures), force=True)
