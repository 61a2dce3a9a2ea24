"""Huge images on disk: lazy readers (TIFF / BigTIFF, OME-Zarr, NPY) and tile-by-tile label writers.

Nothing here reads or writes a whole image at once: readers return arrays that load
the pixels of a slice when it is indexed (a zarr array over a TIFF's tiles or strips, a
memory map, an OME-Zarr level), and writers fill their output one region at a time.

Labels are written as

* OME-Zarr (NGFF 0.4, zarr format 2, so every current reader opens it): a group whose
  ``multiscales`` levels ``0, 1, 2, ...`` halve the resolution (nearest neighbour, so
  every level holds real ids) and whose ``image-label`` attribute marks it as labels;
* BigTIFF: a tiled, zlib-compressed TIFF streamed tile by tile from a zarr array.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError, OverwriteError

#: Side of the chunks of label arrays written here (and of BigTIFF tiles: 512).
CHUNK = 1024
TIFF_TILE = 512

#: Pyramid levels stop once the coarsest is at most this many pixels on a side.
PYRAMID_MIN_SIDE = 512

#: Suffixes of lazily readable inputs.
LAZY_SUFFIXES = (".tif", ".tiff", ".zarr", ".npy")


def _compressor():
    import numcodecs

    return numcodecs.Blosc(cname="zstd", clevel=3, shuffle=numcodecs.Blosc.BITSHUFFLE)


def is_zarr_path(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a zarr store (a ``.zarr`` folder, existing or to be made)."""
    p = Path(path)
    return p.suffix.lower() == ".zarr" or (p.is_dir() and ((p / ".zgroup").exists() or (p / "zarr.json").exists()
                                                           or (p / ".zarray").exists()))


def image_shape(path: str | os.PathLike) -> tuple[int, ...]:
    """Shape of an image file without reading its pixels (TIFF, OME-Zarr, NPY; others are read)."""
    return tuple(int(s) for s in open_lazy(path).shape)


def open_lazy(path: str | os.PathLike) -> Any:
    """Open an image for tile-by-tile reading, without loading its pixels.

    Parameters
    ----------
    path : path-like
        A TIFF / BigTIFF (any compression, tiled or stripped: read through
        tifffile's zarr view), an OME-Zarr (its full-resolution level) or a plain zarr
        array, or an ``.npy`` file (memory-mapped). PNG / JPEG are read whole.

    Returns
    -------
    array_like
        Supports ``.shape``, ``.dtype`` and numpy slicing; a slice reads only the
        tiles / chunks it needs.

    Raises
    ------
    InputError
        Unknown format or an unreadable file, in one line.
    FileNotFoundError
    """
    src = Path(path)
    if not src.exists():
        raise FileNotFoundError(f"image {src} not found")
    suffix = src.suffix.lower()
    try:
        if is_zarr_path(src):
            return _open_zarr_image(src)
        if suffix in (".tif", ".tiff"):
            import tifffile
            import zarr

            from .images import quiet_tifffile

            # level 0 of a pyramidal TIFF; tifffile decodes only the tiles a slice touches.
            with quiet_tifffile():
                store = tifffile.imread(src, aszarr=True, level=0)
            return zarr.open(store, mode="r")
        if suffix == ".npy":
            return np.load(src, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, KeyError, TypeError) as exc:
        raise InputError(f"cannot read '{src.name}': {exc.__class__.__name__}: {exc}") from None
    from .images import read_image

    return read_image(src)


def _open_zarr_image(path: Path) -> Any:
    import zarr

    node = zarr.open(str(path), mode="r")
    if isinstance(node, zarr.Array):
        return node
    attrs = dict(node.attrs)
    ome = attrs.get("ome", attrs)  # NGFF 0.5 nests its metadata under 'ome'
    multiscales = ome.get("multiscales")
    if not multiscales:
        arrays = sorted(k for k, v in node.arrays())
        if len(arrays) == 1:
            return node[arrays[0]]
        raise InputError(f"{path.name} is a zarr group without OME-Zarr 'multiscales' metadata: "
                         "expected an OME-Zarr image or a single zarr array")
    return node[multiscales[0]["datasets"][0]["path"]]


def squeeze_to_2d(image: Any, *, plane: Sequence[int] | int | None = None, name: str = "image") -> Any:
    """A 2-D lazy view of ``image``: leading axes of size 1 dropped, or ``plane`` picked.

    OME-Zarr images are ``(t, c, z, y, x)`` with most leading axes of size 1.

    Raises
    ------
    InputError
        A stack without ``plane``, or an index that does not fit.
    """
    shape = tuple(int(s) for s in image.shape)
    if len(shape) < 2:
        raise InputError(f"{name} has {len(shape)} dimension(s): expected a 2-D image (H, W)")
    lead = shape[:-2]
    if plane is None:
        if any(n != 1 for n in lead):
            raise InputError(f"{name} is a stack of shape {shape}: pick a plane (--plane i, or i,j for several "
                             "leading axes); tiled runs segment one 2-D plane")
        index: tuple[int, ...] = (0,) * len(lead)
    else:
        given = (plane,) if isinstance(plane, (int, np.integer)) else tuple(plane)
        ones = [i for i, n in enumerate(lead) if n != 1]
        if len(given) == len(lead):
            index = tuple(int(i) for i in given)
        elif len(given) == len(ones):
            full = [0] * len(lead)
            for axis, i in zip(ones, given):
                full[axis] = int(i)
            index = tuple(full)
        else:
            raise InputError(f"plane {plane} does not fit {name}'s leading axes {lead}")
        if any(not 0 <= i < n for i, n in zip(index, lead)):
            raise InputError(f"plane {plane} is outside {name}: leading axes have sizes {lead}")
    return image[index] if index else image


def pyramid_shapes(shape: Sequence[int], *, min_side: int = PYRAMID_MIN_SIDE) -> list[tuple[int, int]]:
    """Shapes of the levels of a 2x pyramid down to ``min_side`` pixels (level 0 first)."""
    h, w = (int(s) for s in shape)
    shapes = [(h, w)]
    while max(shapes[-1]) > min_side:
        ph, pw = shapes[-1]
        shapes.append(((ph + 1) // 2, (pw + 1) // 2))
    return shapes


def create_label_levels(store: Any, shape: Sequence[int], *, name: str = "labels", levels: int | None = None,
                        chunk: int = CHUNK) -> list[Any]:
    """Create an (empty) OME-Zarr multiscale label image; return its level arrays.

    Parameters
    ----------
    store : path-like or zarr store
        Where to create it (a folder path, or e.g. ``zarr.storage.MemoryStore()``).
    shape : (H, W)
    name : str
        The image's name in its metadata.
    levels : int, optional
        Number of levels; default: down to :data:`PYRAMID_MIN_SIDE` pixels.

    Returns
    -------
    list of zarr.Array
        Level 0 (full resolution) first; all int32, filled with 0.
    """
    import zarr

    shapes = pyramid_shapes(shape)
    if levels is not None:
        shapes = shapes[: max(1, int(levels))]
    group = zarr.open_group(str(store) if isinstance(store, (str, os.PathLike)) else store, mode="w", zarr_format=2)
    arrays = []
    for k, s in enumerate(shapes):
        c = (min(chunk, s[0]), min(chunk, s[1]))
        arrays.append(group.create_array(str(k), shape=s, chunks=c, dtype="int32", fill_value=0,
                                         compressors=_compressor()))
    group.attrs.update({
        "multiscales": [{
            "version": "0.4",
            "name": name,
            "axes": [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}],
            "datasets": [{"path": str(k), "coordinateTransformations": [{"type": "scale", "scale": [2.0**k, 2.0**k]}]}
                         for k in range(len(shapes))],
            "type": "nearest",
        }],
        "image-label": {"version": "0.4", "source": {"image": "../../"}},
    })
    return arrays


def update_pyramid(levels: Sequence[Any], region: tuple[int, int, int, int]) -> None:
    """Refresh the coarser levels of a label pyramid over ``region`` of level 0.

    Level ``k`` holds level 0's pixels ``[::2**k, ::2**k]`` (nearest neighbour: every
    value is a real id). Only the level-``k`` pixels whose source lies in ``region``
    (y0, y1, x0, x1) are read and written, so a finished tile costs a tile.
    """
    if len(levels) < 2:
        return
    y0, y1, x0, x1 = region
    base = levels[0]
    for k in range(1, len(levels)):
        f = 2**k
        a0, a1 = -(-y0 // f), -(-y1 // f)
        b0, b1 = -(-x0 // f), -(-x1 // f)
        a1, b1 = min(a1, levels[k].shape[0]), min(b1, levels[k].shape[1])
        if a1 <= a0 or b1 <= b0:
            continue
        levels[k][a0:a1, b0:b1] = np.asarray(base[a0 * f : (a1 - 1) * f + 1 : f, b0 * f : (b1 - 1) * f + 1 : f])


def read_label_levels(path: str | os.PathLike) -> list[Any]:
    """The level arrays of an OME-Zarr label image (level 0 first), lazily."""
    import zarr

    group = zarr.open_group(str(path), mode="r")
    datasets = dict(group.attrs)["multiscales"][0]["datasets"]
    return [group[d["path"]] for d in datasets]


@contextlib.contextmanager
def atomic_zarr(dest: str | os.PathLike, *, overwrite: bool = False):
    """Yield a temporary folder beside ``dest``; move it to ``dest`` when the block succeeds.

    A crash or Ctrl-C leaves no half-written store under the user's name.

    Raises
    ------
    OverwriteError
        If ``dest`` exists and ``overwrite`` is False.
    """
    dest = Path(dest)
    if dest.exists() and not overwrite:
        raise OverwriteError(f"{dest} already exists; not overwriting it (pass overwrite=True, CLI --overwrite)")
    from .._files import temp_prefix

    tmp: Path | None = None
    try:
        tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(dest.name), suffix=".tmp.zarr", dir=dest.parent))
        yield tmp
        if dest.exists():
            if not overwrite:
                raise OverwriteError(f"{dest} appeared while writing; not overwriting it")
            old = Path(tempfile.mkdtemp(prefix=temp_prefix(dest.name), suffix=".old", dir=dest.parent))
            os.replace(dest, old / dest.name)
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    finally:
        if tmp is not None and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_bigtiff(path: str | os.PathLike, source: Any, *, overwrite: bool = False) -> Path:
    """Write a 2-D label array (zarr, memmap, numpy) as a tiled BigTIFF, one band of tiles at a time.

    Memory: one band of :data:`TIFF_TILE` rows of the image. Atomic and no-clobber as
    every writer here (:func:`napari_kaizen._files.atomic_write`).
    """
    import tifffile

    from .._files import atomic_write

    h, w = (int(s) for s in source.shape)
    dtype = np.dtype(source.dtype)
    t = TIFF_TILE

    def tiles():
        for y in range(0, h, t):
            band = np.asarray(source[y : min(h, y + t), :])
            for x in range(0, w, t):
                block = np.zeros((t, t), dtype)
                part = band[:, x : x + t]
                block[: part.shape[0], : part.shape[1]] = part
                yield block

    def write(tmp: Path) -> None:
        tifffile.imwrite(tmp, tiles(), shape=(h, w), dtype=dtype, tile=(t, t), bigtiff=True,
                         compression="zlib", photometric="minisblack", metadata=None)

    return atomic_write(path, write, overwrite=overwrite)


def write_ome_zarr_labels(path: str | os.PathLike, source: Any, *, overwrite: bool = False, name: str = "labels") -> Path:
    """Copy a 2-D label array into a new OME-Zarr multiscale label image at ``path``, chunk by chunk."""
    dest = Path(path)
    h, w = (int(s) for s in source.shape)
    with atomic_zarr(dest, overwrite=overwrite) as tmp:
        levels = create_label_levels(tmp, (h, w), name=name)
        step = CHUNK * 2
        for y in range(0, h, step):
            for x in range(0, w, step):
                region = (y, min(h, y + step), x, min(w, x + step))
                levels[0][region[0] : region[1], region[2] : region[3]] = np.asarray(
                    source[region[0] : region[1], region[2] : region[3]])
                update_pyramid(levels, region)
    return dest


def labels_format_for(shape: Sequence[int]) -> str:
    """``'.zarr'`` for label images past :data:`ZARR_ABOVE_PIXELS`, else ``'.tif'`` (BigTIFF)."""
    return ".zarr" if math.prod(int(s) for s in shape) > ZARR_ABOVE_PIXELS else ".tif"


#: Label images with more pixels than this (a 16k x 16k field) go to OME-Zarr when the
#: output is a folder: past it, a TIFF reader must hold gigabytes, and viewers want levels.
ZARR_ABOVE_PIXELS = 16384 * 16384
