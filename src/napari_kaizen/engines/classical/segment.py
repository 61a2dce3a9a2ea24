"""The classical pipeline as a snapshot generator."""

from __future__ import annotations

from collections.abc import Generator

import numpy as np
from scipy import ndimage as ndi

from ...errors import InputError
from .._common.allocator import keep_freed_memory
from .._common.normalize import prepare_image, significant_level, sparse_field, whole_image_value
from .._common.snapshots import SegmentationSnapshot, empty_field_snapshot
from .params import ClassicalParams
from .scale_rule import scale_for

#: Smallest object diameter the engine accepts (pixels): below it no seed is a nucleus.
MIN_DIAMETER = 2.0


def segment(
    image: np.ndarray,
    params: ClassicalParams | None = None,
    *,
    model=None,
    device: str = "cpu",
) -> Generator[SegmentationSnapshot, None, None]:
    """Segment bright objects: smooth, Otsu, distance transform, h-maxima, watershed.

    Parameters
    ----------
    image : ndarray, shape (H, W)
        Any real dtype; normalised by
        :func:`~napari_kaizen.engines._common.normalize.prepare_image`.
    params : ClassicalParams, optional
    model, device
        Ignored (accepted so every engine has the same call).

    Yields
    ------
    SegmentationSnapshot
        ``'foreground'`` (maps: smoothed image, mask), ``'seeds'`` (maps: distance),
        then the final ``'labels'`` snapshot with ``done=True``.

    Examples
    --------
    >>> from napari_kaizen.data import synthesize
    >>> from napari_kaizen.engines._common import run_to_end
    >>> field = synthesize(seed=0, shape=(128, 128))
    >>> labels = run_to_end(segment(field.nuclei)).labels
    >>> labels.shape
    (128, 128)
    """
    from skimage.filters import threshold_otsu
    from skimage.morphology import remove_small_objects

    from .._common.instances import fill_holes, h_maxima_sampled, seed_step, seeded_watershed, seeds_in_mask

    keep_freed_memory()  # reuse big blocks across calls (allocator.py)
    p = params or ClassicalParams()
    img = prepare_image(image)
    empty = empty_field_snapshot(img)
    if empty is not None:
        yield empty
        return
    diameter = scale_for(image, p, prepared=img).diameter
    sparse = sparse_field(img)
    if not MIN_DIAMETER <= diameter <= max(img.shape):
        raise InputError(f"diameter {diameter:g} px is out of range for this {img.shape[0]}x{img.shape[1]} image: "
                         f"give a diameter between {MIN_DIAMETER:g} px and the image's side ({max(img.shape)} px)")
    radius = diameter / 2.0
    sigma = max(0.5, p.smoothing * diameter)
    smooth = ndi.gaussian_filter(img, sigma)
    if p.background_radius > 0:
        # Remove smooth illumination: a large-scale grey opening keeps objects, drops the floor.
        # An opening wider than the image is a constant floor: cap it (and its cost).
        size = max(3, min(int(2 * p.background_radius * diameter), 2 * max(img.shape)) | 1)
        small = max(1, size // 8)
        floor = ndi.grey_opening(smooth[::small, ::small], size=max(3, size // small))
        floor = ndi.gaussian_filter(floor, max(1.0, size / small / 4))
        floor = np.kron(floor, np.ones((small, small), np.float32))[: img.shape[0], : img.shape[1]]
        smooth = smooth - floor
    # Otsu on square-root intensities: compressing the range keeps a few very bright
    # (mitotic) nuclei from lifting the threshold above the dim ones, and the square root
    # roughly evens out shot noise between dim and bright objects.
    compressed = np.sqrt(np.clip(smooth, 0.0, None))
    if sparse:
        # A few nuclei on a wide empty field: over the whole field Otsu's threshold splits
        # the noise (the nuclei weigh nothing in the histogram). Over the objects that
        # stand out of the noise and their surroundings it splits nucleus from background.
        level = significant_level(smooth, img, sigma)
        near = ndi.maximum_filter(smooth > level, size=max(3, int(diameter) | 1))
        # A tiled run's tiles share the Otsu threshold of the whole image's objects.
        otsu = whole_image_value("classical_sparse_otsu", threshold_otsu, compressed[near]) if near.any() else 0.0
        thr = max(float(np.sqrt(max(level, 0.0))), otsu)
        thr *= p.threshold_scale
    else:
        thr = whole_image_value("classical_otsu", threshold_otsu, compressed) * p.threshold_scale
    mask = fill_holes(compressed > thr)
    min_area = max(4, int(p.min_size * np.pi * radius**2))
    mask = remove_small_objects(mask, max_size=min_area - 1) if _new_skimage() else remove_small_objects(mask, min_area)
    yield SegmentationSnapshot(
        stage="foreground", progress=0.4, message=f"Otsu threshold (diameter {diameter:.1f} px)",
        maps={"smoothed": smooth, "foreground": mask.astype(np.float32)},
    )
    dist = ndi.distance_transform_edt(mask)
    dist = ndi.gaussian_filter(dist, max(0.5, radius / 6.0))
    # Seeds on a grid of about 6 samples per diameter: the smoothed distance map keeps
    # its maxima and dips there, at a fraction of the h-maxima's cost (docs/speed.md).
    markers = seeds_in_mask(h_maxima_sampled(dist, p.h * radius, seed_step(diameter)), mask)
    n = int(markers.max())
    yield SegmentationSnapshot(
        stage="seeds", progress=0.7, message=f"{n} seeds", maps={"distance": dist.astype(np.float32)}
    )
    labels = seeded_watershed(-dist, markers, mask)
    labels = _remove_small(labels, min_area)
    yield SegmentationSnapshot(
        stage="labels", progress=1.0, message=f"{int(labels.max())} objects", labels=labels, done=True,
        maps={"distance": dist.astype(np.float32)},
    )


def _new_skimage() -> bool:
    import skimage

    major, minor = (int(x) for x in skimage.__version__.split(".")[:2])
    return (major, minor) >= (0, 26)


def _remove_small(labels: np.ndarray, min_area: int) -> np.ndarray:
    """Drop labels under ``min_area`` pixels and renumber 1..N (dtype int32)."""
    from .._common.instances import relabel

    counts = np.bincount(labels.ravel())
    small = counts < min_area
    small[0] = False
    return relabel(np.where(small[labels], 0, labels))
