"""Huge images on disk: lazy readers (TIFF / BigTIFF, OME-Zarr, NPY) and tile-by-tile label writers.

Nothing here reads or writes a whole image at once: readers return arrays that load
the pixels of a slice when it is indexed (a zarr array over a TIFF's tiles or strips, a
memory map, an OME-Zarr level), and writers fill their output one region at a time.

Labels are written as

* OME-Zarr (NGFF 0.5 on zarr format 3 by default; 0.4 on zarr format 2 on request, and
  always beside a 0.4 image): a group whose ``multiscales`` levels ``0, 1, 2, ...`` halve
  the resolution (nearest neighbour, so every level holds real ids) and whose
  ``image-label`` attribute marks it as labels. When the input is an OME-Zarr image, the
  labels go into its own ``labels/`` group (``IMAGE.zarr/labels/NAME``, listed in the
  ``labels`` attribute), so napari and other NGFF viewers open image and labels together;
* BigTIFF: a tiled, zlib-compressed TIFF streamed tile by tile from a zarr array.

The NGFF metadata is read and written by the reference library, ome-zarr-py
(:mod:`ome_zarr`): it detects the version of a store (0.4 keeps its metadata in the
group's attributes on zarr format 2, 0.5 nests it under ``ome`` on zarr format 3) and
writes ``multiscales``, ``labels`` and ``image-label`` as the specification spells them.
What stays here is what the library does not do for us: creating empty level arrays
that a tiled run fills tile by tile (ome-zarr writes whole arrays or dask graphs), the
pyramid update of one finished tile, and the atomic, no-clobber placement of a store.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError, OverwriteError, quiet_loggers

#: Side of the chunks of label arrays written here (and of BigTIFF tiles: 512).
CHUNK = 1024
TIFF_TILE = 512

#: Pyramid levels stop once the coarsest is at most this many pixels on a side.
PYRAMID_MIN_SIDE = 512

#: Suffixes of lazily readable inputs.
LAZY_SUFFIXES = (".tif", ".tiff", ".zarr", ".npy")


#: The NGFF version of label images written here (and of the label groups of 0.5 images).
NGFF_VERSION = "0.5"

#: NGFF versions this module writes; reading takes any version ome-zarr-py reads (0.1-0.5).
WRITABLE_NGFF = ("0.4", "0.5")


def _compressor(zarr_format: int = 3):
    # Blosc zstd + bit shuffle: label ids compress well; the codec type differs by format.
    if zarr_format == 2:
        import numcodecs

        return numcodecs.Blosc(cname="zstd", clevel=3, shuffle=numcodecs.Blosc.BITSHUFFLE)
    from zarr.codecs import BloscCodec

    return BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle")


def ngff_format(version: str = NGFF_VERSION):
    """The ome-zarr-py ``Format`` of an NGFF ``version`` this module writes (``'0.4'`` or ``'0.5'``).

    Raises
    ------
    InputError
        Another version.
    """
    from ome_zarr.format import FormatV04, FormatV05

    formats = {"0.4": FormatV04, "0.5": FormatV05}
    if str(version) not in formats:
        raise InputError(f"OME-Zarr version {version!r} cannot be written: choose one of {', '.join(WRITABLE_NGFF)}")
    return formats[str(version)]()


def _quiet_ome_zarr() -> contextlib.AbstractContextManager[None]:
    """Keep ome-zarr-py's log lines (e.g. 'version mismatch' on every 0.4 store it opens) off
    the terminal: a person reads our one-line messages, not the library's debug chatter."""
    import logging

    return quiet_loggers("ome_zarr", level=logging.ERROR)


def ome_attrs(path: str | os.PathLike) -> tuple[dict[str, Any], str | None]:
    """The NGFF metadata of a zarr group and its version, whatever the version.

    ome-zarr-py detects the version: 0.4 and older keep the metadata in the group's
    attributes (zarr format 2), 0.5 under ``attributes.ome`` (zarr format 3).

    Returns
    -------
    attrs : dict
        ``multiscales``, ``plate``, ``well``, ``labels``, ``image-label``, ... as present
        (empty for a path that is no zarr group).
    version : str or None
        The NGFF version ome-zarr-py detected, None for no OME-Zarr metadata.
    """
    from ome_zarr.io import parse_url

    with _quiet_ome_zarr():
        try:
            loc = parse_url(str(Path(path)), mode="r")
        except (ValueError, OSError, KeyError, TypeError):
            loc = None
        if loc is None:
            return {}, None
        attrs = dict(loc.root_attrs)
        if not any(k in attrs for k in ("multiscales", "plate", "well", "labels", "image-label")):
            return attrs, None
        return attrs, str(loc.fmt.version)


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
    attrs, _ = ome_attrs(path)
    multiscales = attrs.get("multiscales")
    if not multiscales:
        arrays = sorted(k for k, v in node.arrays())
        if len(arrays) == 1:
            return node[arrays[0]]
        what = ("an OME-Zarr HCS plate: `kaizen segment` segments every field of it" if "plate" in attrs
                else "a zarr group without OME-Zarr 'multiscales' metadata")
        raise InputError(f"{path.name} is {what}; expected an OME-Zarr image (NGFF 'multiscales', 0.4 or 0.5) "
                         "or a single zarr array")
    # The full-resolution level, as a zarr array: a slice reads only the chunks it touches
    # (ome-zarr-py's reader would wrap it in dask, which a dask worker task must not compute).
    level0 = node[multiscales[0]["datasets"][0]["path"]]
    axis = _colour_axis(multiscales[0].get("axes"), tuple(int(n) for n in level0.shape), np.dtype(level0.dtype))
    return level0 if axis is None else ColoursLast(level0, axis)


def _colour_axis(axes: Any, shape: tuple[int, ...], dtype: np.dtype) -> int | None:
    """The channel axis of an OME-Zarr image that is one colour picture, else None.

    A colour slide converted to OME-Zarr (bioformats2raw: ``(t, c, z, y, x)`` = ``(1, 3, 1,
    Y, X)``, 8-bit) keeps its red, green and blue on the NGFF channel axis; read as a
    colour image it gets what a colour TIFF gets (its luminance for a stained section,
    ``--channel`` for stains on a dark field). Only 3 or 4 8-bit channels with every
    other leading axis of size 1 count: more channels, or 16-bit ones, are fluorescence
    channels, picked with ``--plane``.
    """
    if not isinstance(axes, list) or len(axes) != len(shape) or dtype != np.uint8:
        return None
    kinds = [(a.get("type") or a.get("name")) if isinstance(a, dict) else a for a in axes]
    channel = [i for i, k in enumerate(kinds[:-2]) if k in ("channel", "c")]
    if len(channel) != 1 or shape[channel[0]] not in (3, 4):
        return None
    if any(n != 1 for i, n in enumerate(shape[:-2]) if i != channel[0]):
        return None
    return channel[0]


def _full_key(key: Any, ndim: int) -> tuple:
    """``key`` of a lazy view as one entry per axis (an Ellipsis expanded, missing axes whole).

    >>> _full_key((Ellipsis, 1), 3), _full_key(slice(2, 4), 2)
    ((slice(None, None, None), slice(None, None, None), 1), (slice(2, 4, None), slice(None, None, None)))
    """
    key = key if isinstance(key, tuple) else (key,)
    if any(k is Ellipsis for k in key):
        at = next(i for i, k in enumerate(key) if k is Ellipsis)
        key = key[:at] + (slice(None),) * (ndim - len(key) + 1) + key[at + 1:]
    return key + (slice(None),) * (ndim - len(key))


class ColoursLast:
    """A lazy ``(Y, X, C)`` view of an OME-Zarr colour image stored ``(..., C, ..., Y, X)``.

    Slices read only the chunks they touch, as the zarr array under it does; the
    leading axes of size 1 are dropped and the colours come last, as in a colour TIFF.

    Examples
    --------
    >>> stored = np.arange(3 * 4 * 5).reshape(1, 3, 1, 4, 5)
    >>> view = ColoursLast(stored, 1)
    >>> view.shape, view[1:3, 2].tolist(), view[..., 2].shape
    ((4, 5, 3), [[7, 27, 47], [12, 32, 52]], (4, 5))
    """

    def __init__(self, image: Any, axis: int):
        self.image, self.axis = image, axis
        shape = tuple(int(n) for n in image.shape)
        self.shape = (shape[-2], shape[-1], shape[axis])
        self.dtype = np.dtype(image.dtype)
        self.ndim = 3

    def __getitem__(self, key: Any) -> np.ndarray:
        y, x, c = _full_key(key, 3)
        lead: list[Any] = [0] * (len(self.image.shape) - 2)
        lead[self.axis] = c
        block = np.asarray(self.image[(*lead, y, x)])
        # The colour axis is the first one left when it was sliced (an integer drops it).
        return block if isinstance(c, (int, np.integer)) else np.moveaxis(block, 0, -1)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[:, :]
        return out if dtype is None else out.astype(dtype)


class PickedPlane:
    """A lazy view of ``image[index]`` (and of its colour ``channel``): slices read only what they touch.

    Indexing a zarr array with integers reads all it selects at once (a numpy array
    comes back): an OME-Zarr image stored ``(t, c, z, y, x)`` = ``(1, 1, 1, Y, X)`` was
    read whole before its first tile, however large, and so was one colour of a huge
    RGB TIFF taken with ``--channel``. This view defers every read to the slices a tile
    asks for, as the array under it does.

    Examples
    --------
    >>> stored = np.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5)
    >>> view = PickedPlane(stored, (1, 2))
    >>> view.shape, view[1:3, 2].tolist(), bool((np.asarray(view) == stored[1, 2]).all())
    ((4, 5), [107, 112], True)
    >>> green = PickedPlane(np.arange(4 * 5 * 3).reshape(4, 5, 3), channel=1)
    >>> green.shape, green[0, :2].tolist(), green[..., 1].tolist()
    ((4, 5), [1, 4], [4, 19, 34, 49])
    """

    def __init__(self, image: Any, index: tuple[int, ...] = (), channel: int | None = None):
        self.image, self.index = image, tuple(int(i) for i in index)
        self.channel = None if channel is None else int(channel)
        shape = tuple(int(n) for n in image.shape)[len(self.index):]
        self.shape = shape if self.channel is None else shape[:-1]
        self.dtype = np.dtype(image.dtype)
        self.ndim = len(self.shape)

    def __getitem__(self, key: Any) -> np.ndarray:
        last = () if self.channel is None else (self.channel,)
        return np.asarray(self.image[self.index + _full_key(key, self.ndim) + last])

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[...]
        return out if dtype is None else out.astype(dtype)


def picked(image: Any, index: tuple[int, ...] = (), channel: int | None = None) -> Any:
    """``image[index]`` (``[..., channel]`` too) without reading it: numpy and dask index lazily
    themselves, others get a :class:`PickedPlane`."""
    if not index and channel is None:
        return image
    if isinstance(image, np.ndarray) or hasattr(image, "dask"):
        return image[index] if channel is None else image[index][..., channel]
    return PickedPlane(image, index, channel)


def open_pyramid(path: str | os.PathLike) -> list[Any]:
    """Every level of an OME-Zarr image as lazy dask arrays (level 0 first), through ome-zarr-py.

    For viewers: napari takes the list as a multiscale layer and reads only the chunks
    on screen. Tile-by-tile segmentation reads :func:`open_lazy`'s level 0 instead.

    Raises
    ------
    InputError
        No OME-Zarr image at ``path``.
    """
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Multiscales, Reader

    with _quiet_ome_zarr():
        loc = parse_url(str(Path(path)), mode="r")
        nodes = [n for n in Reader(loc)()] if loc is not None else []
        image = next((n for n in nodes if n.load(Multiscales) is not None and n.data), None)
    if image is None:
        raise InputError(f"{Path(path).name} holds no OME-Zarr image (NGFF 'multiscales' metadata)")
    return list(image.data)


def squeeze_to_2d(image: Any, *, plane: Sequence[int] | int | None = None, name: str = "image",
                  axes: str | None = None) -> Any:
    """A 2-D lazy view of ``image``: leading axes of size 1 dropped, or ``plane`` picked.

    OME-Zarr images are ``(t, c, z, y, x)`` with most leading axes of size 1. ``axes``
    (:func:`stack_axes`) names the leading axes in the refusals.

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
            from .images import colour_slide_hint

            colour = colour_slide_hint(lead, image.dtype)
            named = [(a, n) for a, n in zip(axes, lead) if n != 1] if axes and len(axes) == len(lead) else []
            pick = (f"--plane {','.join(a.lower() for a, _ in named)}: "
                    f"{', '.join(f'{a} 0..{n - 1}' for a, n in named)}" if named else
                    "--plane i, or i,j for several leading axes")
            raise InputError(f"{name} is a stack of shape {shape}: pick a plane ({pick}){colour}; "
                             "tiled runs segment one 2-D plane")
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
            index = given  # the wrong number of indices: said below
        if len(index) != len(lead) or any(not 0 <= i < n for i, n in zip(index, lead)):
            from .images import plane_outside

            raise InputError(plane_outside(index, name, lead, axes))
    return picked(image, index)


def pyramid_shapes(shape: Sequence[int], *, min_side: int = PYRAMID_MIN_SIDE) -> list[tuple[int, int]]:
    """Shapes of the levels of a 2x pyramid down to ``min_side`` pixels (level 0 first)."""
    h, w = (int(s) for s in shape)
    shapes = [(h, w)]
    while max(shapes[-1]) > min_side:
        ph, pw = shapes[-1]
        shapes.append(((ph + 1) // 2, (pw + 1) // 2))
    return shapes


def create_label_levels(store: Any, shape: Sequence[int], *, name: str = "labels", levels: int | None = None,
                        chunk: int = CHUNK, version: str = NGFF_VERSION, source: str | None = "../../") -> list[Any]:
    """Create an (empty) OME-Zarr multiscale label image; return its level arrays.

    The arrays are made empty here so that a tiled run fills them tile by tile
    (:func:`update_pyramid`); the ``multiscales`` and ``image-label`` metadata are
    written by ome-zarr-py (``write_multiscales_metadata``, ``add_metadata``) in the
    layout of NGFF ``version``.

    Parameters
    ----------
    store : path-like or zarr store
        Where to create it (a folder path, or e.g. ``zarr.storage.MemoryStore()``).
    shape : (H, W)
    name : str
        The image's name in its metadata.
    levels : int, optional
        Number of levels; default: down to :data:`PYRAMID_MIN_SIDE` pixels.
    chunk : int
        Side of the chunks.
    version : {'0.5', '0.4'}
        NGFF version: 0.5 is zarr format 3, 0.4 zarr format 2.
    source : str or None
        The ``image-label`` ``source.image`` (the image these labels belong to,
        relative to the label group); None leaves it out.

    Returns
    -------
    list of zarr.Array
        Level 0 (full resolution) first; all int32, filled with 0.
    """
    import zarr
    from ome_zarr.writer import add_metadata, write_multiscales_metadata

    fmt = ngff_format(version)
    shapes = pyramid_shapes(shape)
    if levels is not None:
        shapes = shapes[: max(1, int(levels))]
    group = zarr.open_group(str(store) if isinstance(store, (str, os.PathLike)) else store, mode="w",
                            zarr_format=fmt.zarr_format)
    arrays = []
    for k, s in enumerate(shapes):
        c = (min(chunk, s[0]), min(chunk, s[1]))
        extra = {"dimension_names": ("y", "x")} if fmt.zarr_format == 3 else {}
        arrays.append(group.create_array(str(k), shape=s, chunks=c, dtype="int32", fill_value=0,
                                         compressors=_compressor(fmt.zarr_format), **extra))
    datasets = [{"path": str(k), "coordinateTransformations": [{"type": "scale", "scale": [2.0**k, 2.0**k]}]}
                for k in range(len(shapes))]
    write_multiscales_metadata(group, datasets, fmt=fmt, axes=["y", "x"], name=name, metadata={"method": "nearest"})
    label = {"version": fmt.version}
    if source is not None:
        label["source"] = {"image": source}
    add_metadata(group, {"image-label": label}, fmt=fmt)
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
    """The level arrays of an OME-Zarr label image (level 0 first), lazily; NGFF 0.4 or 0.5.

    Raises
    ------
    InputError
        No ``multiscales`` metadata at ``path``.
    """
    import zarr

    attrs, _ = ome_attrs(path)
    if not attrs.get("multiscales"):
        raise InputError(f"{path} holds no OME-Zarr label image (NGFF 'multiscales' metadata)")
    group = zarr.open_group(str(path), mode="r")
    return [group[d["path"]] for d in attrs["multiscales"][0]["datasets"]]


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


def image_of_labels_group(path: str | os.PathLike) -> Path | None:
    """The OME-Zarr image that ``path`` is a label group of, else None.

    ``IMAGE/labels/NAME`` is such a path when ``IMAGE`` holds NGFF ``multiscales``
    metadata (the labels group and ``NAME`` need not exist yet): labels written there
    belong to that image, as the NGFF ``labels`` specification lays them out.
    """
    p = Path(path)
    if p.parent.name != "labels" or not p.name or p.name.startswith("."):
        return None
    image = p.parent.parent
    if not image.is_dir():
        return None
    attrs, _ = ome_attrs(image)
    return image if attrs.get("multiscales") else None


@contextlib.contextmanager
def label_levels_at(dest: str | os.PathLike, shape: Sequence[int], *, name: str | None = None,
                    levels: int | None = None, overwrite: bool = False) -> Iterator[list[Any]]:
    """Yield the empty level arrays of a new OME-Zarr label image that will appear at ``dest``.

    Fill them (and :func:`update_pyramid`) inside the block; the label image appears
    under its name only when the block succeeds, so a crash or Ctrl-C leaves nothing
    half-written (:func:`atomic_zarr`).

    ``dest`` is either a store of its own (``labels.zarr``, NGFF :data:`NGFF_VERSION`) or
    ``IMAGE.zarr/labels/NAME`` inside an OME-Zarr image (:func:`image_of_labels_group`):
    then the label image takes the image's NGFF version (a 0.4 image gets 0.4 labels on
    zarr format 2, so its readers still open it), its ``image-label`` points at the
    image, and its name is added to the ``labels`` group's list after it is in place.

    Raises
    ------
    OverwriteError
        ``dest`` exists and ``overwrite`` is False.
    """
    dest = Path(dest)
    image = image_of_labels_group(dest)
    if image is None:
        with atomic_zarr(dest, overwrite=overwrite) as tmp:
            yield create_label_levels(tmp, shape, name=name or dest.stem, levels=levels)
        return
    _, version = ome_attrs(image)
    version = version if version in WRITABLE_NGFF else "0.4"
    labels_group = _require_labels_group(dest.parent, version)
    with atomic_zarr(dest, overwrite=overwrite) as tmp:
        yield create_label_levels(tmp, shape, name=name or dest.name, levels=levels, version=version, source="../../")
    _list_label(labels_group, dest.name, version)


def _require_labels_group(folder: Path, version: str) -> Any:
    """The ``labels`` group of an image (created, in the image's zarr format, if missing)."""
    import zarr

    fmt = ngff_format(version)
    if folder.is_dir() and ((folder / "zarr.json").exists() or (folder / ".zgroup").exists()):
        return zarr.open_group(str(folder), mode="r+")
    return zarr.open_group(str(folder), mode="a", zarr_format=fmt.zarr_format)


def _list_label(group: Any, name: str, version: str) -> None:
    """Add ``name`` to the ``labels`` list of an image's labels group (once), through ome-zarr-py."""
    from ome_zarr.writer import add_metadata, get_metadata

    names = [str(n) for n in get_metadata(group).get("labels", [])]
    if name not in names:
        add_metadata(group, {"labels": [*names, name]}, fmt=ngff_format(version))


def write_ome_zarr_labels(path: str | os.PathLike, source: Any, *, overwrite: bool = False, name: str | None = None) -> Path:
    """Copy a 2-D label array into a new OME-Zarr multiscale label image at ``path``, chunk by chunk.

    ``path`` is a store of its own (``labels.zarr``) or the label group of an OME-Zarr
    image (``IMAGE.zarr/labels/NAME``, see :func:`label_levels_at`). Atomic and
    no-clobber as every writer here.
    """
    dest = Path(path)
    h, w = (int(s) for s in source.shape[-2:])
    if len(source.shape) != 2:
        raise InputError(f"OME-Zarr labels are written from a 2-D label image; these have shape {tuple(source.shape)}")
    with label_levels_at(dest, (h, w), name=name, overwrite=overwrite) as levels:
        step = CHUNK * 2
        for y in range(0, h, step):
            for x in range(0, w, step):
                region = (y, min(h, y + step), x, min(w, x + step))
                levels[0][region[0] : region[1], region[2] : region[3]] = np.asarray(
                    source[region[0] : region[1], region[2] : region[3]])
                update_pyramid(levels, region)
    return dest


def is_ome_zarr_labels_path(path: str | os.PathLike) -> bool:
    """Whether labels at ``path`` are written as OME-Zarr (a ``.zarr`` store or an image's label group)."""
    p = Path(path)
    return p.suffix.lower() == ".zarr" or image_of_labels_group(p) is not None


def read_image_or_ome_zarr(path: str | os.PathLike) -> np.ndarray:
    """Read a whole image file (:func:`~napari_kaizen.io.images.read_image`) or OME-Zarr image
    (its full-resolution level, leading axes of size 1 dropped) as a numpy array.

    For fields that fit in memory (a plate's fields); huge images are read tile by tile
    from :func:`open_lazy` instead.
    """
    from .images import check_fits_memory, read_image

    src = Path(path)
    if not (src.is_dir() and is_zarr_path(src)):
        return read_image(src)
    lazy = open_lazy(src)
    shape = tuple(int(n) for n in lazy.shape)
    check_fits_memory(src.name, shape, np.dtype(lazy.dtype))
    keep = next((i for i, n in enumerate(shape[:-2]) if n != 1), len(shape) - 2)
    return np.asarray(lazy[(0,) * keep])


def stack_axes(path: str | os.PathLike, lead: int) -> str | None:
    """Letters naming the last ``lead`` leading axes of the image at ``path``, or None.

    ``'TZC'`` and its parts (time, z, channel), from an ImageJ hyperstack's or an
    OME-TIFF's metadata or an OME-Zarr's NGFF axes; None when the file does not say
    (a plain multi-page TIFF, an NPY) or names other axes. The last ``lead``: the
    image as read whole (:func:`read_image_or_ome_zarr` drops leading axes of size 1)
    or lazily (:func:`open_lazy`, every axis) keeps its trailing axes. Refusals of a
    stack name them (:func:`~napari_kaizen.engines.to_plane`, :func:`squeeze_to_2d`).
    """
    from .images import named_axes, tiff_stack_axes

    src = Path(path)
    if lead < 1:
        return None
    if src.suffix.lower() in (".tif", ".tiff"):
        letters = tiff_stack_axes(src)
        return letters if letters is not None and len(letters) == lead else None
    if not (src.is_dir() and is_zarr_path(src)):
        return None
    try:
        axes = ome_attrs(src)[0]["multiscales"][0]["axes"]
        names = [str(a.get("name", "")) if isinstance(a, dict) else str(a) for a in axes][:-2]
    except (KeyError, IndexError, TypeError):
        return None
    return named_axes("".join(n[:1] for n in names[-lead:])) if lead <= len(names) else None


def write_labels_or_ome_zarr(path: str | os.PathLike, labels: np.ndarray, *, overwrite: bool = False,
                             axes: str | None = None) -> Path:
    """Write labels as :func:`~napari_kaizen.io.labels.write_labels` does (``axes`` too), or as
    OME-Zarr when :func:`is_ome_zarr_labels_path` says so (an image's ``labels/NAME`` group)."""
    from .labels import label_dtype, write_labels

    if not is_ome_zarr_labels_path(path):
        return write_labels(path, labels, overwrite=overwrite, axes=axes)
    arr = np.asarray(labels)
    label_dtype(arr)  # the same checks as every labels writer: integers, not negative
    if arr.max(initial=0) > np.iinfo(np.int32).max:
        raise InputError(f"OME-Zarr labels here are int32; the largest label {int(arr.max())} does not fit")
    return write_ome_zarr_labels(path, arr.astype(np.int32, copy=False), overwrite=overwrite)


def read_labels_or_ome_zarr(path: str | os.PathLike) -> np.ndarray:
    """Read labels as :func:`~napari_kaizen.io.labels.read_labels` does, or level 0 of an OME-Zarr label image."""
    from .labels import read_labels

    if not is_ome_zarr_labels_path(path) or not Path(path).is_dir():
        return read_labels(path)
    return np.asarray(read_label_levels(path)[0][...])


def labels_format_for(shape: Sequence[int]) -> str:
    """``'.zarr'`` for label images past :data:`ZARR_ABOVE_PIXELS`, else ``'.tif'`` (BigTIFF)."""
    return ".zarr" if math.prod(int(s) for s in shape) > ZARR_ABOVE_PIXELS else ".tif"


#: Label images with more pixels than this (a 16k x 16k field) go to OME-Zarr when the
#: output is a folder: past it, a TIFF reader must hold gigabytes, and viewers want levels.
ZARR_ABOVE_PIXELS = 16384 * 16384
