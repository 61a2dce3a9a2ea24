"""Object scale: estimate the typical object diameter, and rescale to a model's scale.

A network learns cells of the size it was trained on. Every engine therefore takes a
``diameter`` (pixels, or ``'auto'``), rescales the image so objects have the diameter
recorded in the model's metadata, runs there, and maps labels back to the input grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from ...errors import InputError
from .normalize import central_crop, in_tiled_run, significant_level, sparse_field

#: Scale differences below this are left alone: every model is trained on objects whose
#: size varies by about +-15 % around its nominal diameter (and the ``'auto'`` estimate is
#: good to about 10-15 %), so resampling inside that range only adds interpolation blur.
SCALE_TOLERANCE = 0.2


def equivalent_diameters(labels: np.ndarray) -> np.ndarray:
    """Diameter of the circle of equal area, for every label > 0."""
    counts = np.bincount(np.asarray(labels).ravel())[1:]
    counts = counts[counts > 0]
    return 2.0 * np.sqrt(counts / np.pi)


def median_diameter(labels: np.ndarray) -> float:
    """Median equivalent diameter of the objects in ``labels`` (NaN if there are none)."""
    d = equivalent_diameters(labels)
    return float(np.median(d)) if d.size else float("nan")


#: Diameters the automatic estimate searches (pixels): nuclei from 5 to 160 px across.
AUTO_DIAMETER_RANGE = (5.0, 160.0)
#: Scales of that search (geometric steps of about 12 %).
AUTO_DIAMETER_STEPS = 32
#: The shortest side of an image whose object size is estimated (pixels).
MIN_SIDE_TO_ESTIMATE = 64
#: Annotated diameter per blob diameter ``2 * sqrt(2) * sigma`` of the strongest
#: normalised-Laplacian response: a blurred nucleus answers at a slightly smaller scale
#: than the outline people draw. The median ratio on every second of the 566 annotated
#: images of seven sources (``scripts/nuclei_sources.py``), not held out.
LOG_TO_ANNOTATED = 1.074
#: The smallest diameter the scale space can answer (pixels, as annotated).
SMALLEST_BLOB = AUTO_DIAMETER_RANGE[0] * LOG_TO_ANNOTATED


def _shrink_factor(sigma: float, shape: tuple[int, int]) -> int:
    """1, 2, 4...: how far a copy may be shrunk before a Gaussian of ``sigma`` runs on it.

    A Gaussian of sigma 4 or more loses nothing by running on a 2x, 4x... shrunk copy,
    so every scale costs about the same.
    """
    f = 1
    while sigma / f > 4 and min(shape) // (2 * f) >= 16:
        f *= 2
    return f


def _gaussian_taps(sigma: float, radius: int) -> tuple[np.ndarray, np.ndarray]:
    """scipy.ndimage's sampled Gaussian (order 0) and its second derivative (order 2)."""
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    phi = np.exp(-0.5 / (sigma * sigma) * x * x)
    phi /= phi.sum()
    return phi, (x * x / sigma**4 - 1.0 / sigma**2) * phi


class _Spectrum:
    """One Fourier transform of an image, filtered by scipy.ndimage's Gaussian kernels.

    scipy convolves with a sampled Gaussian or its second derivative along each axis in
    turn (a blur is two passes, a Laplacian of Gaussian four). The same kernels act
    here as their exact transfer functions on one transform of the image, reflected at
    its edges (scipy's ``'reflect'``) as far as the longest kernel reaches: each filter
    is one product and one inverse transform, equal to scipy's to float32 rounding
    (``tests/test_scale_space.py``).
    """

    def __init__(self, image: np.ndarray, reach: int):
        from scipy import fft

        self.shape = h, w = image.shape
        self.pad = reach
        hh = fft.next_fast_len(h + 2 * reach, real=True)
        ww = fft.next_fast_len(w + 2 * reach, real=True)
        padded = np.pad(np.asarray(image, np.float32), ((reach, hh - h - reach), (reach, ww - w - reach)),
                        mode="symmetric")
        self.size = (hh, ww)
        self.spectrum = fft.rfft2(padded)
        self.wy = 2.0 * np.pi * fft.fftfreq(hh)
        self.wx = 2.0 * np.pi * fft.rfftfreq(ww)

    def filtered(self, sigma: float, laplacian: bool) -> np.ndarray:
        """``gaussian_filter(image, sigma)``, or ``-sigma**2 * gaussian_laplace(image, sigma)``."""
        from scipy import fft

        radius = int(4.0 * sigma + 0.5)  # scipy's truncate=4
        if radius > self.pad:
            raise ValueError(f"a Gaussian of sigma {sigma} reaches {radius} px, beyond the {self.pad} px reflected")
        g0, g2 = _gaussian_taps(sigma, radius)
        x = np.arange(-radius, radius + 1)
        # A symmetric kernel's transfer function is real: its cosine series.
        cy, cx = np.cos(np.outer(self.wy, x)), np.cos(np.outer(self.wx, x))
        if laplacian:
            transfer = -(sigma * sigma) * (np.outer(cy @ g2, cx @ g0) + np.outer(cy @ g0, cx @ g2))
        else:
            transfer = np.outer(cy @ g0, cx @ g0)
        out = fft.irfft2(self.spectrum * transfer.astype(np.float32), s=self.size)
        (h, w), p = self.shape, self.pad
        return out[p : p + h, p : p + w]


def _strongest_scale(img: np.ndarray, diameters: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel, the strongest scale-normalised negative Laplacian of Gaussian and its index.

    ``diameters`` are blob diameters (sigma = d / 2 sqrt 2); bright blobs answer > 0.
    The scales that share a shrunk copy (:func:`_shrink_factor`) are compared on that
    copy, made once, and only the copy's strongest response and its index are enlarged
    back (linear and nearest): one enlargement per octave instead of one per scale. The
    scale space then costs 0.16 s instead of 0.42 s (0.87 s with each copy made per
    scale) on the central 512 x 512 of the 1024 x 1024 benchmark field; single
    estimates move by up to 20 % (6 of the 70 benchmark images by more than 2 %), the
    share of the 566 annotated images within 25 % stays 507, and the leave-one-source-out
    scores of all three engines did not change (the threshold measurement decides where
    the two agree). The filters run on one Fourier transform per copy
    (:class:`_Spectrum`): the scale space then took 0.11 instead of 0.22 s (two busy
    cores), and one estimate of the 566 moved (43.9 -> 41.5 px; 522 within 25 % either way).
    """
    h, w = img.shape
    best = np.full(img.shape, -np.inf, np.float32)
    arg = np.zeros(img.shape, np.int16)
    octaves: dict[int, list[tuple[int, float]]] = {}
    for k, d in enumerate(diameters):
        sigma = float(d) / (2.0 * np.sqrt(2.0))
        octaves.setdefault(_shrink_factor(sigma, img.shape), []).append((k, sigma))
    # One transform of the image serves its own scales and the blurs of the shrunk copies.
    full = _Spectrum(img, max([int(4.0 * s + 0.5) for _, s in octaves.get(1, [])]
                              + [int(2.0 * f + 0.5) for f in octaves if f > 1] + [1]))
    for f, scales in sorted(octaves.items()):
        spectrum = full
        if f > 1:
            small = ndi.zoom(full.filtered(f / 2, laplacian=False), 1 / f, order=1)
            spectrum = _Spectrum(small, max(int(4.0 * sigma / f + 0.5) for _, sigma in scales))
        b = np.full(spectrum.shape, -np.inf, np.float32)
        a = np.zeros(spectrum.shape, np.int16)
        for k, sigma in scales:
            r = spectrum.filtered(sigma / f, laplacian=True)
            better = r > b
            np.copyto(a, k, where=better)
            np.maximum(b, r, out=b)
        if f > 1:
            zoom = (h / b.shape[0], w / b.shape[1])
            b_up, a_up = ndi.zoom(b, zoom, order=1), ndi.zoom(a, zoom, order=0)
            b, a = np.full(img.shape, -np.inf, np.float32), np.zeros(img.shape, np.int16)
            b[: b_up.shape[0], : b_up.shape[1]] = b_up[:h, :w]
            a[: a_up.shape[0], : a_up.shape[1]] = a_up[:h, :w]
        better = b > best
        np.copyto(arg, a, where=better)
        np.maximum(best, b, out=best)
    return best, arg


def blob_diameter(image: np.ndarray, *, max_side: int = 1024, min_objects: int = 3) -> float:
    """Typical diameter (pixels) of bright blobs in a normalised image, from scale space.

    Every pixel is given the scale at which the scale-normalised Laplacian of Gaussian
    answers most strongly (the blob detector of Lindeberg 1998); the local maxima of
    that strongest response at least half as strong as the strongest few (its 99th
    percentile) are the objects, and the median of their scales weighted by response
    times size, converted to an outline diameter (:data:`LOG_TO_ANNOTATED`), is returned. Unlike a threshold, this needs no object
    to stand apart: touching nuclei, clumps, dim 8-bit fields and a bright few among
    many faint ones each answer at their own size.

    Parameters
    ----------
    image : ndarray, shape (H, W)
        Normalised image (background low, objects bright), e.g. from
        :func:`~napari_kaizen.engines._common.normalize.prepare_image`.
    max_side : int
        A larger image is measured on a central crop of this side (speed).
    min_objects : int
        Fewer objects than this is an error.

    Returns
    -------
    float
        Between :data:`AUTO_DIAMETER_RANGE` (times :data:`LOG_TO_ANNOTATED`).

    Raises
    ------
    InputError
        For a constant image, or fewer than ``min_objects`` blobs.

    Notes
    -----
    Alone, on the 566 annotated images of ``scripts/nuclei_sources.py`` (median
    nucleus diameters 7-58 px), an earlier version of this measurement was within 25 %
    of the annotated median on about 9 images in 10, against 8.9 in 10 for
    :func:`threshold_diameter`, which also failed outright on 4 (read 270-530 px or
    found nothing); :func:`estimate_diameter` combines the two.

    Examples
    --------
    >>> import numpy as np
    >>> yy, xx = np.mgrid[:128, :128]
    >>> img = np.zeros((128, 128), np.float32)
    >>> for cy, cx in [(30, 30), (30, 90), (90, 30), (90, 90), (60, 60)]:
    ...     img[np.hypot(yy - cy, xx - cx) < 10] = 1.0
    >>> 16 < blob_diameter(img) < 24
    True
    """
    img = central_crop(np.asarray(image, dtype=np.float32), max_side)
    if float(img.max() - img.min()) <= 1e-12:
        raise InputError("could not estimate the object diameter of a constant image: give the diameter in pixels")
    if min(img.shape) < MIN_SIDE_TO_ESTIMATE:
        # A crop this small holds a nucleus or two and their texture, not a sample of sizes.
        raise InputError(f"could not estimate the object diameter of a {img.shape[0]}x{img.shape[1]} image (at least "
                         f"{MIN_SIDE_TO_ESTIMATE} px a side are needed): give the diameter in pixels")
    diameters = np.geomspace(*AUTO_DIAMETER_RANGE, AUTO_DIAMETER_STEPS)
    best, arg = _strongest_scale(img, diameters)
    peaks = (best == ndi.maximum_filter(best, size=5)) & (best > 0)
    d, strength = diameters[arg[peaks]], best[peaks].astype(np.float64)
    # A blob cut by the image's edge answers at a biased scale: only whole ones count.
    yy, xx = np.nonzero(peaks)
    whole = np.minimum.reduce([yy, xx, img.shape[0] - 1 - yy, img.shape[1] - 1 - xx]) >= d / 2
    d, strength = d[whole], strength[whole]
    # Objects answer at least half as strongly as the strongest few (the 99th
    # percentile, not the maximum: one very bright speck must not silence the rest).
    keep = strength >= 0.5 * np.quantile(strength, 0.99) if strength.size else strength > 0
    if 0 < keep.sum() < min_objects:
        # A few saturated nuclei among many dim ones leave only themselves above that
        # bar: then the ten strongest count.
        keep = strength >= np.sort(strength)[-min(10, strength.size)]
    d, strength = d[keep], strength[keep]
    if d.size < min_objects:
        raise InputError(
            f"could not estimate the object diameter (found {d.size} bright objects, need "
            f"{min_objects}): give the diameter in pixels"
        )
    # Weighted by response times size: texture inside a nucleus answers as many small
    # blobs, the nucleus as one large one.
    wts = strength * d
    order = np.argsort(d, kind="stable")
    cdf = np.cumsum(wts[order])
    return float(d[order][np.searchsorted(cdf, cdf[-1] / 2.0)] * LOG_TO_ANNOTATED)


def _convex_enough(prop, level: float) -> bool:
    """``prop.solidity >= level``, building the convex hull only when a bound cannot tell.

    The hull of a region lies inside its octagon, the region's extent along the rows,
    the columns and both diagonals; so a region that fills ``level`` of the pixels of
    its octagon fills at least that of its hull. A round nucleus fills about 0.95 of
    its octagon, and scikit-image's hull (a Qhull call per region) took two thirds of
    the threshold measurement.
    """
    image = prop.image
    yy, xx = np.nonzero(image)
    gy, gx = np.ogrid[: image.shape[0], : image.shape[1]]
    s, d = yy + xx, yy - xx
    octagon = int(np.count_nonzero((gy + gx >= s.min()) & (gy + gx <= s.max())
                                   & (gy - gx >= d.min()) & (gy - gx <= d.max())))
    if prop.area / octagon >= level:
        return True
    return not prop.solidity < level


def threshold_diameter(image: np.ndarray, *, max_side: int = 1024, min_objects: int = 3,
                       above_noise: bool = False, otsu: bool = True) -> float:
    """Typical diameter (pixels) of the separate, convex bright objects of a normalised image.

    Objects are found with Otsu's threshold on a lightly smoothed image; only convex
    ones (solidity > 0.9) are measured, because clumps of touching nuclei are not
    convex and would inflate the size. Each is re-outlined at half its own height above
    the background (full width at half maximum, which tracks the true edge of a blurred
    object whatever its brightness), and the area-weighted median of their
    equivalent diameters is returned, so dim fragments and debris count little.

    Parameters
    ----------
    image : ndarray, shape (H, W)
        Normalised image (background low, objects bright), e.g. from
        :func:`~napari_kaizen.engines._common.normalize.prepare_image`.
    max_side : int
        A larger image is measured on a central crop of this side (speed).
    min_objects : int
        Fewer measurable objects than this is an error.
    above_noise : bool
        Objects must also rise above :func:`~.normalize.significant_level`: on a wide
        empty field with a few nuclei, Otsu's threshold splits the noise itself (the
        nuclei's pixels weigh nothing in the histogram). Objects cut by the image's
        (or crop's) edge are then measured only if no whole one is found: among a
        few, one cut object moves the median.
    otsu : bool
        With ``above_noise``, False takes every object that rises above the noise,
        whether or not it also rises above Otsu's threshold (:func:`estimate_diameter`'s
        second look at a sparse field).

    Returns
    -------
    float

    Raises
    ------
    InputError
        If too few separate, convex objects are found to measure.
    """
    from skimage.filters import threshold_otsu
    from skimage.measure import regionprops

    from .instances import fill_holes

    img = central_crop(np.asarray(image, dtype=np.float32), max_side)
    smooth = ndi.gaussian_filter(img, 1.0)
    if float(smooth.max() - smooth.min()) <= 1e-12:
        raise InputError("could not estimate the object diameter of a constant image: give the diameter in pixels")
    level = float(threshold_otsu(smooth)) if otsu or not above_noise else -np.inf
    if above_noise:
        level = max(level, significant_level(smooth, img))
    mask = ndi.binary_opening(fill_holes(smooth > level))
    background = float(np.median(smooth[~mask])) if (~mask).any() else float(smooth.min())
    comps, _ = ndi.label(mask)
    diameters, weights, cut = [], [], []
    for prop in regionprops(comps):
        if prop.area < 12 or not _convex_enough(prop, 0.9):
            continue
        y0, x0, y1, x1 = prop.bbox
        cut.append(y0 == 0 or x0 == 0 or y1 == img.shape[0] or x1 == img.shape[1])
        pad = int(0.5 * np.sqrt(prop.area)) + 2
        Y0, X0 = max(0, y0 - pad), max(0, x0 - pad)
        Y1, X1 = min(smooth.shape[0], y1 + pad), min(smooth.shape[1], x1 + pad)
        seed = np.zeros((Y1 - Y0, X1 - X0), bool)
        seed[y0 - Y0 : y1 - Y0, x0 - X0 : x1 - X0] = prop.image
        sub = smooth[Y0:Y1, X0:X1]
        peak = float(np.percentile(sub[seed], 90))
        above = sub > background + 0.5 * (peak - background)
        cc, _ = ndi.label(above)
        ids = np.unique(cc[seed & above])
        region = np.isin(cc, ids[ids > 0])
        # A half-maximum region that runs off its box has merged with a neighbour.
        if not region.any() or region[[0, -1]].any() or region[:, [0, -1]].any():
            region = seed
        area = float(region.sum())
        diameters.append(2.0 * np.sqrt(area / np.pi))
        weights.append(area)
    if above_noise and not all(cut):
        # One of a few objects cut by the edge reads small and weighs as much as a whole
        # one: the whole ones are measured (all of them if every one is cut).
        diameters = [d for d, c in zip(diameters, cut) if not c]
        weights = [w for w, c in zip(weights, cut) if not c]
    if len(diameters) < min_objects:
        raise InputError(
            f"could not estimate the object diameter (found {len(diameters)} separate objects to measure, "
            f"need {min_objects}): give the diameter in pixels"
        )
    d, wts = np.asarray(diameters), np.asarray(weights)
    order = np.argsort(d)
    cdf = np.cumsum(wts[order])
    return float(d[order][np.searchsorted(cdf, cdf[-1] / 2.0)])


#: Side of the central crop both measurements of :func:`estimate_diameter` read (speed).
ESTIMATE_SIDE = 512
#: How far the two estimates may disagree before the threshold one is not trusted.
AGREEMENT = 2.0
#: Block sizes of the coarser looks :func:`coarse_diameter` takes (each reads a central
#: crop ``ESTIMATE_SIDE`` times as wide, averaged down to at most that side).
COARSE_FACTORS = (2, 4, 8)
#: At a coarse look, both measurements must agree this closely, the next coarser look
#: must confirm them as closely, and the objects must be at least
#: :data:`COARSE_MIN_DIAMETER` pixels of that look (well above its resolution).
COARSE_AGREEMENT = 1.5
COARSE_MIN_DIAMETER = 10.0
#: Full-resolution measurements that agree on objects narrower than this (pixels, twice
#: the smallest blob the scale space reads) are checked at the coarse looks too: the
#: pixel noise of a field of large nuclei answers both as specks of 6-9 px.
COARSE_CHECK_BELOW = 2.0 * SMALLEST_BLOB
#: The central crop a sparse field's nuclei are looked for in (pixels a side).
SPARSE_SIDE = 2048


def _blob_or_none(image: np.ndarray, side: int, min_objects: int) -> tuple[float | None, InputError | None]:
    """:func:`blob_diameter`, or None when it fails or answers at the smallest scale searched."""
    try:
        blob = blob_diameter(image, max_side=side, min_objects=min_objects)
    except InputError as exc:
        return None, exc
    if blob < SMALLEST_BLOB * 1.05:
        # The smallest scale searched: pixel noise or fine texture answered, not nuclei.
        return None, None
    return blob, None


def _threshold_or_none(image: np.ndarray, side: int, min_objects: int) -> tuple[float | None, InputError | None]:
    """:func:`threshold_diameter`, or None when it finds too few objects."""
    try:
        return threshold_diameter(image, max_side=side, min_objects=min_objects), None
    except InputError as exc:
        return None, exc


def _agree(a: float | None, b: float | None, within: float) -> bool:
    return a is not None and b is not None and 1.0 / within <= a / b <= within


def block_mean(image: np.ndarray, factor: int, side: int = ESTIMATE_SIDE) -> np.ndarray:
    """The central ``side * factor`` square of ``image``, averaged over ``factor`` x ``factor`` blocks."""
    crop = central_crop(np.asarray(image, dtype=np.float32), side * factor)
    h, w = (crop.shape[0] // factor) * factor, (crop.shape[1] // factor) * factor
    return crop[:h, :w].reshape(h // factor, factor, w // factor, factor).mean(axis=(1, 3))


def coarse_diameter(image: np.ndarray, *, side: int = ESTIMATE_SIDE, min_objects: int = 3) -> float | None:
    """The object diameter seen at coarser resolutions, or None if none sees it clearly.

    Large nuclei (60-150 px, a 60x or 100x objective) defeat both full-resolution
    measurements: the scale space answers at the grain of their chromatin and of the
    pixel noise, which outnumber them, the threshold outlines noise specks or finds too
    few whole nuclei in the central crop. Averaged over 2 x 2, 4 x 4 and 8 x 8 blocks
    of a crop as many times wider, the grain fades and more nuclei come in, at the same
    cost per look. The finest look where both measurements agree within
    :data:`COARSE_AGREEMENT`, whose objects are at least :data:`COARSE_MIN_DIAMETER` of
    its pixels, and which the next coarser look confirms (either measurement, as
    closely), gives their geometric mean.

    Parameters
    ----------
    image : ndarray, shape (H, W)
        Normalised image.
    side : int
        Side of each look (pixels after averaging).
    min_objects : int
        Fewer objects than this at a look is no answer from it.

    Returns
    -------
    float or None
        Diameter in pixels of ``image``.
    """
    looks = []
    for factor in COARSE_FACTORS:
        small = block_mean(image, factor, side)
        if min(small.shape) < 2 * MIN_SIDE_TO_ESTIMATE:
            break
        blob, _ = _blob_or_none(small, side, min_objects)
        thresh, _ = _threshold_or_none(small, side, min_objects)
        looks.append((factor, blob and blob * factor, thresh and thresh * factor))
    for i, (factor, blob, thresh) in enumerate(looks):
        if not _agree(blob, thresh, COARSE_AGREEMENT):
            continue
        found = float(np.sqrt(blob * thresh))
        if found / factor < COARSE_MIN_DIAMETER:
            continue
        if i + 1 < len(looks) and not any(_agree(m, found, COARSE_AGREEMENT) for m in looks[i + 1][1:]):
            continue
        return found
    return None


def estimate_diameter(image: np.ndarray, *, max_side: int = 1024, min_objects: int = 3) -> float:
    """Estimate the typical diameter (pixels) of bright objects (nuclei) in a normalised image.

    Two measurements: :func:`threshold_diameter` outlines the separate, convex objects
    above Otsu's threshold at half their height (accurate where nuclei stand apart), and
    :func:`blob_diameter` reads the scale of every blob from a Laplacian-of-Gaussian
    scale space (needs no threshold, so it does not fail on dim, dense or clumped
    fields). When both agree within a factor of :data:`AGREEMENT` their geometric mean
    is returned. Otherwise (or when one fails, or they agree on specks at the smallest
    scales) the objects may be large nuclei whose chromatin and noise both measurements
    mistook for objects, and :func:`coarse_diameter` looks again at coarser resolutions;
    if no coarse look sees objects clearly, the scale space answers, unless it answered
    at the smallest scale searched (pixel noise, not nuclei), then the threshold one.
    A sparse field (:func:`~.normalize.sparse_field`: a few nuclei on a wide empty one)
    is measured first by its separate objects that stand out of the noise, over a
    central crop of up to :data:`SPARSE_SIDE` (one is enough).

    Parameters
    ----------
    image : ndarray, shape (H, W)
        Normalised image (background low, objects bright), e.g. from
        :func:`~napari_kaizen.engines._common.normalize.prepare_image`.
    max_side : int
        The full-resolution measurements read a central crop of at most this side
        (speed); the coarse looks read up to eight times wider, averaged down.
    min_objects : int
        Fewer objects than this is an error.

    Returns
    -------
    float

    Raises
    ------
    InputError
        If neither measurement finds enough objects at any resolution (a constant
        image, a crop of a nucleus or two).

    Notes
    -----
    On the dim 8-bit DSB2018 fields of 10-12 px nuclei the threshold measurement alone
    read 270 and 530 px, and the learned engines refused the image. This estimate is
    within 25 % of the annotated median on 65 of the 70 images that
    ``benchmarks/real_nuclei.py`` scores (seven sources; per-source figures there) and
    on 523 of all 566 annotated images of those sources. Their nuclei are 7-58 px
    across; enlarged 2x and 3x (``benchmarks/real_nuclei.py --zoom``: 14-174 px, as a
    60x or 100x objective shows such nuclei), the 70 were within 25 % on 50 and 33
    before the coarse looks, 66 and 65 with them, and the other 496 images on 436 and
    342, now 457 and 440 (estimates that failed: 9 and 23, now 5 and 1). Unenlarged,
    the coarse looks moved four of the 566 estimates: one that had failed is now
    within 25 %, three moved by 3-5 %. With k of an image's nuclei set on a 1024 x 1024
    field of its own background noise (``benchmarks/real_nuclei.py --sparse``) the
    estimate read the noise (a fifth to a third of the nuclei's size) or failed: within
    25 % on 0, 3 and 13 of 21 such fields for k = 1, 3, 10, and 0 of 21 for k = 3 on
    2048 x 2048; measured as a sparse field, 17, 16, 17 and 15, none failed. The sparse
    rule moved ten of the 566 estimates (small fields of 1-10 nuclei): two that had
    failed are within 25 %, 525 within 25 % in all (523 before). The second look at a
    sparse field (every object standing out of the noise, when none above Otsu's level
    can be measured; 2026-12-07) moved one of the 566 (``dsb2018-256x256/e1bcb583``, six
    nuclei in haze: 0.89 -> 2.3 times the annotated median; 524 within 25 %) and none of
    the 70 the benchmark scores, crowded or enlarged; it measures the fields it was made
    for (a lone irregular nucleus read as noise specks, a bright nucleus among dim ones
    refused: ``docs/real_nuclei.md``).
    """
    # A central 512 x 512 holds enough nuclei for both measurements (tens of them even
    # at 60 px) at a quarter of the cost of 1024 x 1024. Scale space: the same estimates
    # on the 70 benchmark images. Threshold: the same share within 25 % of the annotated
    # median either way (then 507 of 566, 62 against 61 of the 70). With the scale space
    # compared octave by octave, 1.6 -> 0.3 s on a 1024 x 1024 field.
    side = min(max_side, ESTIMATE_SIDE)
    if min(np.shape(image)) >= MIN_SIDE_TO_ESTIMATE and sparse_field(image, side):
        # A few nuclei on a wide empty field: the noise's blobs and specks outnumber them
        # thousands to one at any resolution, and the central crop may hold none. The
        # separate objects that stand out of the noise, over a wider crop, are measured;
        # one is enough (a field is not refused for holding one nucleus). First those
        # also above Otsu's level of the field; if none of them is whole, separate and
        # convex, every object standing out of the noise (Otsu's level may lie above
        # the dim nuclei, or cut an irregular nucleus into a shape too concave to
        # measure, whose outline at the noise level is convex enough: a single U2OS
        # nucleus was read as 5 px). Not that level first: on small real fields of 1-10
        # nuclei it also picks up specks and haze (520 of the 566 annotated images
        # within 25 % that way, 524 this way). Still none: the measurements below try,
        # except on a crop of a sparse slide (a tiled run's plan), where they would read
        # its noise: the plan tries its other crops instead.
        for otsu in (True, False):
            try:
                return threshold_diameter(image, max_side=max(max_side, SPARSE_SIDE), min_objects=1,
                                          above_noise=True, otsu=otsu)
            except InputError as exc:
                if not otsu and in_tiled_run():
                    raise exc from None
    blob, blob_error = _blob_or_none(image, side, min_objects)
    thresh, thresh_error = _threshold_or_none(image, side, min_objects)
    agreed = _agree(thresh, blob, AGREEMENT)
    # Two independent measurements that agree: their geometric mean. The threshold one
    # reads small, sparse nuclei large (the half-maximum outline of a blurred 10 px
    # nucleus), the scale space errs either way; together within 25 % of the annotated
    # median on 519 of 566 images of seven sources (the threshold one alone, when they
    # agreed: 504).
    fine = float(np.sqrt(thresh * blob)) if agreed else (blob if blob is not None else thresh)
    if not agreed or fine < COARSE_CHECK_BELOW:
        coarse = coarse_diameter(image, side=side, min_objects=min_objects)
        if coarse is not None:
            return coarse
    if fine is not None:
        return fine
    raise thresh_error or blob_error or InputError(
        "could not estimate the object diameter: give the diameter in pixels")


class EstimatedDiameter(float):
    """A diameter the software estimated (``'auto'``), not one a person gave.

    :func:`rescale_for_model` brings an estimate outside a model's range into it with a
    warning instead of refusing the image: the person asked for no particular size.
    """


def parse_diameter(value: float | str | None, *, what: str = "diameter") -> float | str | None:
    """Read a diameter as a person gives it: a number of pixels, ``'auto'`` or ``None``.

    Every front end reads the diameter through this one function (the command line's
    ``--diameter`` and ``--param diameter=``, the widgets' forms, the Python API), so a
    job carries a float, ``'auto'`` or ``None`` and nothing downstream parses text.

    Parameters
    ----------
    value : float, str or None
        ``17.5``, ``'17.5'``, ``'auto'`` (any case), ``'none'`` / ``''`` / ``None``.
    what : str
        How the value is named in an error (``'--diameter'``).

    Returns
    -------
    float, 'auto' or None

    Raises
    ------
    InputError
        Text that is not a number, ``'auto'`` or ``'none'``; a number that is not
        finite and positive.

    Examples
    --------
    >>> parse_diameter("60"), parse_diameter(" Auto "), parse_diameter("none"), parse_diameter(12)
    (60.0, 'auto', None, 12.0)
    """
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "auto":
            return "auto"
        if text in ("", "none"):
            return None
        try:
            number = float(text)
        except ValueError:
            raise InputError(f"{what} '{value}' is not understood: give pixels (e.g. 17.5), 'auto' or 'none'") from None
    elif isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InputError(f"{what} {value!r} is not understood: give pixels (e.g. 17.5), 'auto' or None")
    else:
        number = float(value)
    if not np.isfinite(number) or number <= 0:
        raise InputError(f"{what} must be a positive number of pixels or 'auto', got {value!r}")
    return number


def resolve_diameter(image: np.ndarray, diameter: float | str | None, *, required: bool = True) -> float | None:
    """Turn a ``diameter`` argument into pixels (``'auto'`` estimates, ``None`` stays None).

    Parameters
    ----------
    image : ndarray
        Normalised image, for ``'auto'``.
    diameter : float, str or None
    required : bool
        If False, an ``'auto'`` estimate that fails (too few separate objects, e.g. in
        a tiny crop) gives None -- the model's own scale -- with an
        :class:`~.normalize.InputWarning`, instead of an error.
    """
    if diameter is None:
        return None
    if isinstance(diameter, str):
        if diameter.strip().lower() == "auto":
            try:
                return EstimatedDiameter(estimate_diameter(image))
            except InputError as exc:
                if required:
                    raise
                import warnings

                from .normalize import InputWarning

                warnings.warn(f"{exc}; running at the model's own scale", InputWarning, stacklevel=2)
                return None
        try:
            diameter = float(diameter)
        except ValueError:
            raise InputError(f"diameter '{diameter}' is not understood: give pixels (e.g. 17.5) or 'auto'") from None
    d = float(diameter)
    if not np.isfinite(d) or d <= 0:
        raise InputError(f"diameter must be a positive number of pixels or 'auto', got {diameter!r}")
    return d


def resample_labels(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resample a label image to ``shape``, each object smoothly (ids unchanged).

    Every object's mask is resampled bilinearly inside its box and kept where it covers
    at least half a pixel; a pixel two objects claim goes to the one covering more of
    it. Outlines so follow the objects instead of a staircase of the coarser grid. An
    object smaller than half a new pixel disappears.
    """
    lab = np.asarray(labels)
    mh, mw = lab.shape
    h, w = int(shape[0]), int(shape[1])
    out = np.zeros((h, w), lab.dtype)
    best = np.zeros((h, w), np.float32)
    sy, sx = mh / h, mw / w  # source pixels per output pixel
    for i, sl in enumerate(ndi.find_objects(lab.astype(np.int64, copy=False)), start=1):
        if sl is None:
            continue
        y0, y1 = max(0, sl[0].start - 1), min(mh, sl[0].stop + 1)
        x0, x1 = max(0, sl[1].start - 1), min(mw, sl[1].stop + 1)
        # Output pixels whose centres fall inside the (padded) source box.
        Y0, Y1 = max(0, int(np.floor(y0 / sy))), min(h, int(np.ceil(y1 / sy)))
        X0, X1 = max(0, int(np.floor(x0 / sx))), min(w, int(np.ceil(x1 / sx)))
        if Y1 <= Y0 or X1 <= X0:
            continue
        yy = (np.arange(Y0, Y1) + 0.5) * sy - 0.5 - y0
        xx = (np.arange(X0, X1) + 0.5) * sx - 0.5 - x0
        own = (lab[y0:y1, x0:x1] == i).astype(np.float32)
        cover = ndi.map_coordinates(own, np.meshgrid(yy, xx, indexing="ij"), order=1, mode="nearest")
        box = (slice(Y0, Y1), slice(X0, X1))
        take = (cover >= 0.5) & (cover > best[box])
        out[box][take] = i
        best[box][take] = cover[take]
    return out


def rescale_pair(image: np.ndarray, labels: np.ndarray, factor: float) -> tuple[np.ndarray, np.ndarray]:
    """An image and its labels resampled by ``factor`` (anti-aliased when shrinking)."""
    if abs(np.log(factor)) < 1e-3:
        return np.asarray(image, np.float32), np.asarray(labels)
    shape = tuple(max(1, int(round(s * factor))) for s in np.shape(labels))
    return Rescale(factor, tuple(np.shape(labels))).to_model(np.asarray(image, np.float32)), resample_labels(labels, shape)


def rescale_to_diameter(pairs, diameter: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """Every ``(image, labels)`` pair resampled so its objects' median diameter is ``diameter``.

    Training sets mix magnifications; a model learns one object scale (inference
    rescales to it as well). Pairs without objects are kept as they are.
    """
    return [rescale_pair(img, lab, float(diameter) / median_diameter(lab)) if np.any(lab) else (img, lab)
            for img, lab in pairs]


@dataclass(frozen=True)
class Rescale:
    """Resampling between the input grid and the grid a model works on.

    Attributes
    ----------
    factor : float
        Model pixels per input pixel (``model_diameter / diameter``); 1 is identity.
    input_shape : (int, int)
        Shape of the input plane.
    """

    factor: float
    input_shape: tuple[int, int]

    @property
    def identity(self) -> bool:
        return self.factor == 1.0

    @property
    def model_shape(self) -> tuple[int, int]:
        return tuple(max(1, int(round(s * self.factor))) for s in self.input_shape)  # type: ignore[return-value]

    def to_model(self, image: np.ndarray) -> np.ndarray:
        """Resample an input-grid image to the model grid (anti-aliased when shrinking)."""
        if self.identity:
            return image
        from skimage.transform import resize

        return resize(
            image, self.model_shape, order=1, mode="reflect", anti_aliasing=self.factor < 1, preserve_range=True
        ).astype(np.float32)

    def to_input(self, image: np.ndarray) -> np.ndarray:
        """Resample a model-grid float map back to the input grid."""
        if self.identity:
            return image
        from skimage.transform import resize

        return resize(image, self.input_shape, order=1, mode="edge", anti_aliasing=False, preserve_range=True).astype(
            np.float32
        )

    def labels_to_input(self, labels: np.ndarray, *, smooth: bool = True) -> np.ndarray:
        """Map model-grid labels to the input grid (ids unchanged).

        Parameters
        ----------
        labels : ndarray of int, shape ``model_shape``
        smooth : bool
            True: every object's mask is resampled bilinearly inside its box and kept
            where it covers at least half a pixel, so an outline enlarged from a coarser
            grid follows the object instead of a staircase of model pixels (a staircase
            costs about a pixel of outline, which is the difference between AP75 and
            AP90 on a 25-pixel nucleus); see :func:`resample_labels`. False: nearest
            neighbour (fast; for previews).
        """
        if self.identity:
            return labels
        h, w = self.input_shape
        mh, mw = labels.shape
        if not smooth:
            yi = np.minimum(((np.arange(h) + 0.5) * mh / h).astype(np.intp), mh - 1)
            xi = np.minimum(((np.arange(w) + 0.5) * mw / w).astype(np.intp), mw - 1)
            return labels[np.ix_(yi, xi)]
        return resample_labels(labels, (h, w))


#: Largest zoom in either direction between the image and a model's object size.
MAX_RESCALE = 8.0
#: Largest image a rescale may make (pixels): 1 GiB as float32.
MAX_MODEL_PIXELS = 2.5e8


def rescale_for_model(
    input_shape: tuple[int, int],
    diameter: float | None,
    model_diameter: float | None,
    *,
    tolerance: float = SCALE_TOLERANCE,
) -> Rescale:
    """The :class:`Rescale` that brings objects of ``diameter`` to ``model_diameter``.

    No rescaling when either is unknown or the change is below ``tolerance``. A
    ``diameter`` given by a person outside the model's range is refused in one line; an
    :class:`EstimatedDiameter` is clamped into it with an :class:`~.normalize.InputWarning`.

    Objects are brought to ``model_diameter`` itself, where a model's constants were
    calibrated. (Until 2026-12-07 the FCN was brought only into the band that
    ``tolerance`` leaves alone, the smallest resample; with the 4000-step models that
    cost held-out accuracy on small nuclei: ``docs/real_nuclei.md``.)

    Examples
    --------
    >>> rescale_for_model((100, 100), 18.0, 24.0).factor, rescale_for_model((100, 100), 22.0, 24.0).factor
    (1.3333333333333333, 1.0)
    """
    if not diameter or not model_diameter:
        return Rescale(1.0, tuple(input_shape))
    factor = float(model_diameter) / float(diameter)
    if isinstance(diameter, EstimatedDiameter):
        # The person asked for no size: bring an estimate the model cannot take into its
        # range (and the rescaled image under the memory bar) and say so, never refuse.
        limit = min(MAX_RESCALE, float(np.sqrt(MAX_MODEL_PIXELS / max(1.0, float(np.prod(input_shape))))))
        clamped = float(np.clip(factor, MAX_RESCALE ** -1, limit))
        if clamped != factor:
            import warnings

            from .normalize import InputWarning

            used = float(model_diameter) / clamped
            warnings.warn(f"estimated object diameter {float(diameter):.3g} px is outside what this model takes "
                          f"(trained at {float(model_diameter):g} px); segmenting as if it were {used:.3g} px - "
                          "give --diameter if that is wrong", InputWarning, stacklevel=2)
            factor = clamped
    if not MAX_RESCALE ** -1 <= factor <= MAX_RESCALE:
        # Beyond 8x the model sees mush (objects < 3 px) or a few pixels blown up to
        # tens of thousands, and the buffers grow as factor**2 (a 1e-3 px diameter
        # asked for terabytes): refuse before allocating.
        lo, hi = float(model_diameter) / MAX_RESCALE, float(model_diameter) * MAX_RESCALE
        raise InputError(f"diameter {float(diameter):g} px is out of range for this model (trained at "
                         f"{float(model_diameter):g} px): give a diameter between {lo:.3g} and {hi:.3g} px")
    model_pixels = float(np.prod(input_shape)) * factor**2
    if model_pixels > MAX_MODEL_PIXELS:
        raise InputError(f"diameter {float(diameter):g} px would enlarge this {input_shape[0]}x{input_shape[1]} image "
                         f"to {model_pixels / 1e6:.0f} megapixels (limit {MAX_MODEL_PIXELS / 1e6:.0f}): "
                         "check the diameter, or crop the image")
    if abs(np.log(factor)) < np.log1p(tolerance):
        factor = 1.0
    return Rescale(factor, tuple(input_shape))
