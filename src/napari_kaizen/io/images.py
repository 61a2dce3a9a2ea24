"""Reading micrographs from disk for the CLI (TIFF, PNG, JPEG, NPY)."""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

import numpy as np

from ..errors import InputError, quiet_loggers

#: Suffixes :func:`read_image` understands.
IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".npy")


def quiet_tifffile() -> contextlib.AbstractContextManager[None]:
    """Silence tifffile's logger for the duration.

    tifffile logs a damaged file's problems and may then return nothing or raise: the
    caller says it once, in our words, instead of log lines and a puzzling shape.
    """
    return quiet_loggers("tifffile", level=logging.CRITICAL)


#: Share of the available memory one image read whole may take (the engines need the rest).
MEMORY_SHARE = 0.5


def _human(nbytes: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if nbytes < 1024 or unit == "PiB":
            return f"{nbytes:.0f} {unit}" if unit == "bytes" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return f"{nbytes:.1f} PiB"  # pragma: no cover


def available_memory() -> int:
    """Bytes of memory free for a new array now (``NAPARI_KAIZEN_MAX_READ_BYTES`` caps it)."""
    cap = os.environ.get("NAPARI_KAIZEN_MAX_READ_BYTES")
    try:
        import psutil

        free = int(psutil.virtual_memory().available)
    except Exception:  # noqa: BLE001 (no psutil: the pages the kernel reports)
        try:
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            free = 1 << 62
    return min(free, int(cap)) if cap and cap.isdigit() else free


def check_fits_memory(name: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
    """Refuse, in one line, to read an array of ``shape`` whole when it cannot fit in memory.

    Raises
    ------
    InputError
        Naming the file, the size it claims and the ways to read less of it.
    """
    nbytes = float(np.prod([float(s) for s in shape])) * np.dtype(dtype).itemsize
    limit = available_memory() * MEMORY_SHARE
    if nbytes > limit:
        raise InputError(f"the header of '{name}' claims {'x'.join(map(str, shape))} {np.dtype(dtype)} ({_human(nbytes)}), more "
                         f"than the {_human(limit)} this machine can read at once: segment one plane (--plane N) or "
                         "tile by tile (--tile 2048, OME-Zarr or TIFF input), or check the file is not damaged")


def _header(src: Path) -> tuple[tuple[int, ...], np.dtype] | None:
    """Shape and dtype a TIFF or NPY file's header claims, without reading pixels (None: not probed)."""
    suffix = src.suffix.lower()
    if suffix == ".npy":
        with open(src, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
            else:
                return None
        return tuple(int(s) for s in shape), np.dtype(dtype)
    if suffix in (".tif", ".tiff"):
        import tifffile

        with quiet_tifffile(), tifffile.TiffFile(src) as tf:
            series = tf.series[0]
            return tuple(int(s) for s in series.shape), np.dtype(series.dtype)
    return None


#: Stack axes a refusal names by their letter (ImageJ hyperstacks and OME store them):
#: time, z, channel. Others (tifffile's ``I``, ``Q``, ``S`` for a sequence of unknown
#: kind) say nothing a person could use.
NAMED_AXES = "TZC"


def named_axes(letters: str | None) -> str | None:
    """``letters`` (upper case) if each is one of :data:`NAMED_AXES`, once; else None.

    >>> named_axes("tzc"), named_axes("QS"), named_axes("ZZ"), named_axes("")
    ('TZC', None, None, None)
    """
    up = (letters or "").upper()
    return up if up and all(a in NAMED_AXES for a in up) and len(set(up)) == len(up) else None


def plane_outside(plane: int | tuple[int, ...], what: str, lead: tuple[int, ...], axes: str | None = None) -> str:
    """The one line refusing a plane index that does not fit a stack's leading axes ``lead``.

    ``axes`` (``'TZC'``) names them when the file did. An index of the wrong length is
    told how many it needs.

    >>> plane_outside((1, 9), "img.tif", (2, 3), "TZ")
    'plane 1,9 is outside img.tif: its leading axes T, Z have sizes (2, 3)'
    >>> plane_outside(1, "img.tif", (2, 3), "TZ")
    'plane 1 does not fit img.tif: give one index for each of its 2 leading axes T, Z (sizes (2, 3))'
    """
    index = (plane,) if isinstance(plane, (int, np.integer)) else tuple(plane)
    which = f" {', '.join(axes)}" if axes and len(axes) == len(lead) else ""
    given, sizes = ",".join(str(int(i)) for i in index), tuple(int(n) for n in lead)
    if len(index) != len(lead):
        return f"plane {given} does not fit {what}: give one index for each of its {len(lead)} leading axes{which} " \
               f"(sizes {sizes})"
    return f"plane {given} is outside {what}: its leading axes{which} have sizes {sizes}"


def colour_slide_hint(lead: tuple[int, ...], dtype: np.dtype) -> str:
    """A hint for a stack of three 8-bit planes with nothing saying they are colours, else ``''``.

    A plain zarr array or a TIFF of three 8-bit planes (tifffile writes any ``(3, H, W)``
    array so, marked RGB or not) may be a colour slide stored channels first; whether it
    is, only the person knows. An OME-Zarr whose NGFF channel axis holds them opens as
    a colour image instead (:func:`~napari_kaizen.io.zarr.open_lazy`).

    >>> colour_slide_hint((3,), np.dtype("uint8"))[:40]
    ' (three 8-bit channels: a colour slide? '
    >>> colour_slide_hint((3,), np.dtype("uint16")), colour_slide_hint((1, 3, 1), np.dtype("uint8"))[:7]
    ('', ' (three')
    """
    big = [n for n in lead if n != 1]
    if big != [3] or np.dtype(dtype) != np.uint8:
        return ""
    return " (three 8-bit channels: a colour slide? --plane 1 takes its green one, where a stained section's nuclei " \
           "are darkest)"


def tiff_stack_axes(path: str | os.PathLike) -> str | None:
    """The letters of a TIFF stack's leading axes as :func:`read_image` returns it (``'TZC'``), or None.

    tifffile reads them from an ImageJ hyperstack's or an OME-TIFF's metadata, axes of
    size 1 dropped as the pixels are; a colour stack's samples (``S``) are not a leading axis.
    """
    import tifffile

    try:
        with quiet_tifffile(), tifffile.TiffFile(path) as tf:
            axes = str(tf.series[0].axes)
    except (ValueError, OSError, IndexError, KeyError, TypeError):
        return None
    for tail in ("YXS", "YX"):
        if axes.endswith(tail):
            return named_axes(axes[: -len(tail)])
    return None


def read_plane(path: str | os.PathLike, plane: tuple[int, ...]) -> np.ndarray | None:
    """Only ``plane`` of a stack in a TIFF (its one page) or NPY (memory-mapped) file.

    Returns None where the file is not a stack of single-channel 2-D planes addressed
    by ``plane`` (a 2-D image, an RGB stack, an index of the wrong length): the caller
    reads it whole and reports why the plane does not fit.

    Raises
    ------
    InputError
        A damaged file, an index outside the stack.
    """
    src = Path(path)
    suffix = src.suffix.lower()
    try:
        head = _header(src) if src.is_file() else None
        if head is None:
            return None
        shape, _ = head
        lead, page = shape[:-2], shape[-2:]
        if len(lead) != len(plane) or not lead or shape[-1] in (3, 4):
            return None
        if any(not 0 <= i < n for i, n in zip(plane, lead)):
            raise InputError(plane_outside(plane, src.name, lead, tiff_stack_axes(src) if suffix != ".npy" else None))
        if suffix == ".npy":
            return np.array(np.load(src, mmap_mode="r", allow_pickle=False)[tuple(plane)])
        import tifffile

        with quiet_tifffile(), tifffile.TiffFile(src) as tf:
            series = tf.series[0]
            if len(series.pages) != int(np.prod(lead)) or tuple(series.pages[0].shape) != page:
                return None
            return np.asarray(tf.asarray(series=0, key=int(np.ravel_multi_index(plane, lead))))
    except InputError:
        raise  # already the line (an InputError is a ValueError: not "cannot read" it)
    except (ValueError, OSError, IndexError, KeyError, TypeError, MemoryError) as exc:
        raise InputError(f"cannot read '{src.name}': {exc.__class__.__name__}: {exc}") from None


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as a numpy array (dtype and layout as stored).

    A TIFF or NPY whose header claims more than the memory available is refused before
    anything is read (:func:`check_fits_memory`).

    Raises
    ------
    InputError
        Unknown suffix, an unreadable file, or one too large to read whole, in one line.
    FileNotFoundError
    """
    src = Path(path)
    if not src.exists():
        raise FileNotFoundError(f"image file {src} not found")
    suffix = src.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise InputError(f"cannot read '{src.name}': expected one of {', '.join(IMAGE_SUFFIXES)}")
    try:
        head = _header(src)
    except (ValueError, OSError, IndexError, KeyError, TypeError, SyntaxError):
        head = None  # the read below says what is wrong
    if head is not None:
        check_fits_memory(src.name, *head)
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
    except MemoryError:
        raise InputError(f"'{src.name}' does not fit in the memory available: segment one plane (--plane N) or "
                         "tile by tile (--tile 2048)") from None
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
