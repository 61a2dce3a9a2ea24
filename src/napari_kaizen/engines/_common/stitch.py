"""Halo tiles and seam stitching of instance labels, for images of any size.

A huge image is cut into a grid of *cores* that cover it exactly once; each core is
segmented inside a *window* that adds a halo of ``halo`` pixels on every side (clipped
at the image border). Because the halo is wider than an object, every object that
touches a core lies whole inside that core's window, so some tile always sees it
uncut. Stitching keeps, from each tile, the objects that touch its core and are not
cut by its window's edge, and merges them into the image's labels in raster order:

* an object mostly covered (``min_overlap`` of its pixels) by an object written by an
  earlier tile is the same object seen twice and is dropped, so an object cut by a
  seam comes out as one object;
* any other object gets the next global id and fills the pixels still free.

Raster order makes the result deterministic whatever order the tiles finish in (a
parallel run buffers finished tiles until their turn), so a run on a dask cluster gives
exactly the labels of a run in one process. Nothing here holds more than one window.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...errors import InputError

#: Fraction of an object's pixels that, already labelled by an earlier tile, make it a
#: duplicate of that object rather than a new one.
MIN_OVERLAP = 0.5

#: Halo in object diameters: objects are whole in some window (1 diameter), and the
#: engines' neighbourhood operations (smoothing, the classical engine's background
#: opening, the networks' receptive fields) see the same context on both sides of a seam.
HALO_DIAMETERS = 3.0

#: Smallest and default halo (pixels), used when no object diameter is known.
MIN_HALO = 32
DEFAULT_HALO = 96

#: Default core side of a stitching tile (pixels): big enough that per-tile work (a
#: network's own window, Otsu's histogram) is efficient, small enough that any engine's
#: peak memory for one window stays well under a gigabyte or two.
DEFAULT_TILE = 2048

#: Smallest stitching tile (pixels): below it the halo would be most of every window.
MIN_TILE = 64


@dataclass(frozen=True)
class Tile:
    """One tile of a grid: its core (owned pixels) and its window (core + halo).

    Attributes
    ----------
    index : int
        Position in raster order (the stitching order).
    core, window : (y0, y1, x0, x1)
        Half-open pixel boxes on the image grid; ``window`` contains ``core``.
    """

    index: int
    core: tuple[int, int, int, int]
    window: tuple[int, int, int, int]

    @property
    def window_slices(self) -> tuple[slice, slice]:
        """``image[tile.window_slices]`` is the window."""
        y0, y1, x0, x1 = self.window
        return slice(y0, y1), slice(x0, x1)

    @property
    def core_in_window(self) -> tuple[slice, slice]:
        """The core as slices into the window array."""
        y0, y1, x0, x1 = self.core
        wy, _, wx, _ = self.window
        return slice(y0 - wy, y1 - wy), slice(x0 - wx, x1 - wx)

    @property
    def shape(self) -> tuple[int, int]:
        """Shape of the window."""
        y0, y1, x0, x1 = self.window
        return y1 - y0, x1 - x0


def choose_halo(diameter: float | None, tile: int) -> int:
    """Halo (pixels) for objects of ``diameter`` pixels: :data:`HALO_DIAMETERS` of them.

    ``None`` (unknown size) gives :data:`DEFAULT_HALO`. The halo never exceeds half the
    tile, so a window is at most twice a core.
    """
    if diameter is None or not math.isfinite(float(diameter)) or diameter <= 0:
        halo = DEFAULT_HALO
    else:
        halo = int(math.ceil(HALO_DIAMETERS * float(diameter)))
    return int(min(max(MIN_HALO, halo), max(MIN_HALO, tile // 2)))


def check_tile(tile: Any, *, what: str = "tile size") -> int:
    """The stitching tile side: :data:`DEFAULT_TILE` for None, else ``tile`` if it is a
    whole number of at least :data:`MIN_TILE` pixels. The one check every front end uses.

    Raises
    ------
    InputError
        Anything else, in one line naming ``what``.

    Examples
    --------
    >>> check_tile(256), check_tile(None)
    (256, 2048)
    """
    if tile is None:
        return DEFAULT_TILE
    if isinstance(tile, bool) or not isinstance(tile, (int, np.integer)) or tile < MIN_TILE:
        raise InputError(f"{what} {tile!r} is too small: give at least {MIN_TILE} pixels (e.g. {DEFAULT_TILE})")
    return int(tile)


def tile_grid(shape: Sequence[int], tile: int, halo: int) -> list[Tile]:
    """The tiles covering an image of ``shape``, in raster order.

    Parameters
    ----------
    shape : (H, W)
    tile : int
        Side of a core (the last row / column of cores may be smaller; a remainder
        under half a tile is folded into its neighbour, so no core is a sliver).
    halo : int
        Pixels added to each side of a core (clipped at the image border).

    Raises
    ------
    InputError
        If ``tile`` or ``halo`` is not a sensible size.
    """
    h, w = (int(s) for s in shape)
    tile = check_tile(tile)
    if isinstance(halo, bool) or not isinstance(halo, (int, np.integer)) or halo < 0:
        raise InputError(f"halo {halo!r} must be a whole number of pixels >= 0")

    def cuts(n: int) -> list[int]:
        edges = list(range(0, n, tile)) + [n]
        if len(edges) > 2 and edges[-1] - edges[-2] < tile // 2:
            del edges[-2]
        return edges

    ys, xs = cuts(h), cuts(w)
    tiles = []
    for i in range(len(ys) - 1):
        for j in range(len(xs) - 1):
            core = (ys[i], ys[i + 1], xs[j], xs[j + 1])
            window = (max(0, core[0] - halo), min(h, core[1] + halo), max(0, core[2] - halo), min(w, core[3] + halo))
            tiles.append(Tile(index=len(tiles), core=core, window=window))
    return tiles


def owned_objects(labels: np.ndarray, tile: Tile, image_shape: Sequence[int]) -> np.ndarray:
    """The objects of one window that this tile is responsible for, relabelled 1..N.

    Kept: objects that touch the tile's core and do not touch an edge of the window
    that lies inside the image (such an object is cut; the tile whose core holds more
    of it sees it whole). Objects only in the halo belong to a neighbour.

    Parameters
    ----------
    labels : ndarray of int, shape of ``tile.window``
        The engine's labels for the window.
    tile : Tile
    image_shape : (H, W)

    Returns
    -------
    ndarray of int32, the window's shape
    """
    lab = np.asarray(labels)
    if lab.shape != tile.shape:
        raise InputError(f"labels of shape {lab.shape} do not fit tile {tile.index}'s window {tile.shape}")
    n = int(lab.max()) if lab.size else 0
    if n == 0:
        return np.zeros(lab.shape, np.int32)
    keep = np.zeros(n + 1, bool)
    keep[np.unique(lab[tile.core_in_window])] = True
    h, w = (int(s) for s in image_shape)
    y0, y1, x0, x1 = tile.window
    edges = []
    if y0 > 0:
        edges.append(lab[0, :])
    if y1 < h:
        edges.append(lab[-1, :])
    if x0 > 0:
        edges.append(lab[:, 0])
    if x1 < w:
        edges.append(lab[:, -1])
    for edge in edges:
        keep[np.unique(edge)] = False
    keep[0] = False
    new_ids = np.zeros(n + 1, np.int32)
    new_ids[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return new_ids[lab]


def merge_tile(existing: np.ndarray, owned: np.ndarray, next_id: int, *, min_overlap: float = MIN_OVERLAP
               ) -> tuple[np.ndarray, int, int]:
    """Merge one tile's owned objects into the labels already written in its window.

    Parameters
    ----------
    existing : ndarray of int, window shape
        The image's labels in the window so far (0 = free).
    owned : ndarray of int, window shape
        :func:`owned_objects` of the tile (ids 1..N).
    next_id : int
        The first unused global id.
    min_overlap : float
        An object with at least this fraction of its pixels already labelled is a
        duplicate of what an earlier tile wrote, and is dropped.

    Returns
    -------
    merged : ndarray of int32
        ``existing`` with the new objects on free pixels.
    next_id : int
        The first unused id after this tile.
    n_new : int
        How many objects this tile added.
    """
    merged = np.asarray(existing).astype(np.int32, copy=True)
    lab = np.asarray(owned)
    n = int(lab.max()) if lab.size else 0
    if n == 0:
        return merged, next_id, 0
    area = np.bincount(lab.ravel(), minlength=n + 1)
    covered = np.bincount(lab[merged > 0], minlength=n + 1)
    new = (area > 0) & (covered < min_overlap * area)
    new[0] = False
    n_new = int(new.sum())
    if n_new == 0:
        return merged, next_id, 0
    ids = np.zeros(n + 1, np.int64)
    ids[new] = np.arange(next_id, next_id + n_new)
    if next_id + n_new >= np.iinfo(np.int32).max:
        raise InputError("more than 2**31 objects: this image cannot be labelled with int32 ids")
    write = new[lab] & (merged == 0)
    merged[write] = ids[lab[write]]
    return merged, next_id + n_new, n_new
