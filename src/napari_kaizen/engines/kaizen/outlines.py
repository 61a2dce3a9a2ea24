"""Outlines drawn from the image, inside the cells Kaizen found.

The decomposition decides *which* cells there are and roughly where: each accepted
prediction explains part of the image. Its mask, though, is a threshold of the
VQ-VAE's reconstruction, which is smooth and made at the model's coarser grid, so the
outline is only as sharp as the reconstruction. People outline a nucleus where its
own brightness fades into the background: on the real annotated nuclei of
``scripts/real_nuclei.py`` the first pixel inside a drawn outline sits at 0.26-0.38,
the first outside at 0.10-0.15 of the nucleus's own peak above the local background
(the same measurement set the synthetic generator's ``edge_level=0.2``).

:func:`image_outlines` redraws each cell at that level of its *own* contrast in the
input image: each cell's region is its mask grown by a margin; its level is
``background + edge_level * (peak - background)`` with the peak a high percentile
inside the mask and the background a low percentile of a ring around it; the
pixels above their cell's level are shared out among the cells by a watershed of the
smoothed image seeded with the (eroded) Kaizen masks, so touching nuclei meet along
the dark valley between them. Two cells that touch with no such valley (two
predictions inside one nucleus) become one (:func:`merge_without_valley`), and a cell
left with less than ``min_area_fraction`` of the median cell area (a rim fragment, a
micronucleus) is dropped (a cell cut by the image's edge is held to a lower bar:
only part of it is visible), as is a cell much dimmer than the typical one
(``min_contrast``); before any outline is drawn, a cell whose mask lies mostly on the
field's background goes (``min_foreground``). The constants are calibrated per model
on annotated real nuclei (``scripts/calibrate_kaizen_outlines.py``) and stored in its
metadata.

A model fine-tuned on a person's corrections also carries a learned outline rule
(:mod:`~napari_kaizen.engines.kaizen.outline_rule`): a small per-pixel classifier of
:func:`outline_features` (the pixel's brightness relative to its nearest cell's own
contrast at three smoothings, the gradient, the curvature, and how far it lies inside
or outside the decomposition's mask) fitted to the corrected outlines. Given ``rule``,
:func:`image_outlines` averages the rule's probability with a soft version of the
level's decision (:func:`rule_near_level`), so the rule moves each outline near the
calibrated level, not anywhere; the watershed, merges and size and contrast filters
are the same. One fixed level is what the annotators of many sessions agree on; the
rule is how the person who corrected this session outlines, where that level and the
cell's shape disagree. One corrected frame is a small sample of that person: a rule
free to draw anywhere gained 0.10 mAP on the held-out source whose annotators outline
wider than the level, and lost up to 0.07 on those who outline at it
(``docs/correction_loop.md``).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from .._common.instances import BORDER_AREA_FRACTION, background_objects, dim_objects, seeded_watershed, small_objects


def image_outlines(
    labels: np.ndarray,
    image: np.ndarray,
    *,
    edge_level: float = 0.2,
    margin: float = 0.25,
    min_area_fraction: float = 0.25,
    valley: float = 0.9,
    min_contrast: float = 0.0,
    min_foreground: float = 0.0,
    border_area_fraction: float | None = BORDER_AREA_FRACTION,
    rule=None,
) -> np.ndarray:
    """Redraw every cell of ``labels`` at ``edge_level`` of its own contrast in ``image``.

    Parameters
    ----------
    labels : ndarray of int, shape (H, W)
        Cells found by the decomposition (ids 1..N, 0 background).
    image : ndarray of float, shape (H, W)
        The normalised input image on the same grid.
    edge_level : float
        Fraction of a cell's peak above its local background where its outline runs.
    margin : float
        How far (in typical cell diameters) a cell may grow past its Kaizen mask.
    min_area_fraction : float
        Cells smaller than this fraction of the median cell area are dropped.
    valley : float
        Touching cells whose shared border is brighter than this fraction of the
        dimmer cell's peak are one cell (see :func:`merge_without_valley`).
    min_contrast : float
        Cells dimmer than this fraction of the typical cell's contrast are dropped
        (:func:`~napari_kaizen.engines._common.instances.dim_objects`); 0 keeps all.
    min_foreground : float
        Cells whose mask in ``labels`` has less than this fraction of its pixels in the
        field's stained foreground are dropped before their outlines are drawn (noise
        or haze explained as a cell:
        :func:`~napari_kaizen.engines._common.instances.background_objects`); 0 keeps all.
    border_area_fraction : float or None
        The smallest area, as a fraction of the median cell, of a cell that touches
        the image's edge (only part of it is in the image, so ``min_area_fraction``
        would drop it; people outline such cells). ``None``: the same bar as the others.
        On the real annotated nuclei, 12.6 % of the nuclei touch the edge, and holding
        them to ``min_area_fraction`` lost most of those the decomposition had found.
    rule : callable, optional
        A learned outline rule: a callable mapping :func:`outline_features` rows to
        probabilities (:meth:`~napari_kaizen.engines.kaizen.outline_rule.OutlineRule.probability`);
        a pixel is inside a cell where it and the soft ``edge_level`` decision agree
        on average (:func:`rule_near_level`).

    Returns
    -------
    labels : ndarray of int32
        Ids 1..M in the order of the input ids (dropped cells leave no gap).
    lut : ndarray of int32, shape (N + 1,)
        Old id -> new id (0: dropped).
    """
    lab = np.asarray(labels)
    img = np.asarray(image, np.float32)
    n = int(lab.max()) if lab.size else 0
    if n == 0:
        return np.zeros(lab.shape, np.int32), np.zeros(1, np.int32)
    # Cells the decomposition read into the background go before any outline is drawn:
    # measured on the model's own masks, the filter does not depend on how wide the
    # outlines are drawn (the calibrated level, or a person's learned rule, which drew
    # wider outlines and lost whole cells to a filter measured on them).
    off = background_objects(lab, img, min_foreground)
    if off.any():
        lab = np.where(off[lab], 0, lab)
    areas = np.bincount(lab.ravel(), minlength=n + 1)[1:]
    present = areas > 0
    if not present.any():
        return np.zeros(lab.shape, np.int32), np.zeros(n + 1, np.int32)
    d_typ = 2.0 * np.sqrt(np.median(areas[present]) / np.pi)
    grow = max(1, int(round(margin * d_typ)))
    ring = max(2, int(round(0.3 * d_typ)))
    smooth = ndi.gaussian_filter(img, max(0.5, d_typ / 25.0))
    peak, back, regions = _cell_contrasts(lab, smooth, grow, ring, n)
    if rule is None:
        foreground = _above_own_level(lab, smooth, peak, back, regions, edge_level)
    else:
        feats, where = _features(lab, img, smooth, peak, back, d_typ, grow)
        foreground = np.zeros(lab.shape, bool)
        if feats.shape[0]:
            foreground[where] = rule_near_level(np.asarray(rule(feats)), feats, edge_level)
    markers = np.where(foreground | (lab > 0), ndi.grey_erosion(lab, size=3), 0)
    out = seeded_watershed(-smooth, markers, foreground | (markers > 0))
    out = np.where(foreground, out, 0)
    root = merge_without_valley(out, smooth, valley=valley, n_labels=n)
    out = root[out]
    out_areas = np.bincount(out.ravel(), minlength=n + 1)[1:]
    kept = out_areas[out_areas > 0]
    if kept.size == 0:
        return np.zeros(lab.shape, np.int32), np.zeros(n + 1, np.int32)
    median = float(np.median(kept))
    # A cell cut by the image's edge shows only part of its area, so its size says
    # nothing of whether it is a rim fragment: it is held to a lower bar.
    border = None if border_area_fraction is None else border_area_fraction * median
    keep = ~small_objects(out, min_area_fraction * median, border, n=n)
    keep[0] = False
    dim = dim_objects(out, img, min_contrast)  # ids up to out.max(), which may be below n
    keep[: dim.size] &= ~dim
    lut = np.zeros(n + 1, np.int32)
    lut[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return lut[out], lut[root]


#: How far a learned outline rule may move an outline from the calibrated level, as
#: the softness of that level's decision (in units of a cell's own contrast):
#: :func:`rule_near_level`. Of 0.05, 0.1 and 0.2 (and a free rule), measured on the
#: correction loop's held-out sources, 0.05 kept most of the rule's gain where the
#: annotators outline wider than the level and lost least where they outline at it
#: (``docs/correction_loop.md``).
RULE_REACH = 0.05


def rule_near_level(probability: np.ndarray, features: np.ndarray, edge_level: float) -> np.ndarray:
    """Pixels inside a cell by a learned rule, held near the calibrated level.

    The rule's probability and the level's decision made soft,
    ``sigmoid((brightness - edge_level) / RULE_REACH)`` (``brightness``: the
    ``'smoothed'`` feature, relative to the cell's own contrast as the level measures
    it), are averaged and the pixel is inside at 0.5 or more: far above the level a
    pixel is inside and far below outside whatever the rule says; near it, the rule
    decides.

    Examples
    --------
    >>> feats = np.zeros((3, len(FEATURES)), np.float32)
    >>> feats[:, FEATURES.index("smoothed")] = [0.9, 0.33, 0.0]
    >>> rule_near_level(np.array([0.1, 0.9, 0.95]), feats, 0.35).tolist()
    [True, True, False]
    """
    from scipy.special import expit  # the logistic, without exp's overflow far from the level

    brightness = np.asarray(features, np.float64)[:, FEATURES.index("smoothed")]
    level = expit((brightness - edge_level) / RULE_REACH)
    return 0.5 * (np.asarray(probability, np.float64) + level) >= 0.5


def _above_own_level(lab: np.ndarray, smooth: np.ndarray, peak: np.ndarray, back: np.ndarray, regions: list,
                     edge_level: float) -> np.ndarray:
    """Pixels within ``grow`` of a cell that are above ``edge_level`` of its contrast
    (where grown cells overlap, the lowest of their levels); ``regions`` from
    :func:`_cell_contrasts`."""
    level = np.full(lab.shape, np.inf, np.float32)
    region_any = np.zeros(lab.shape, bool)
    for i, sl, region in regions:
        if peak[i] <= back[i]:
            continue
        cut = back[i] + edge_level * (peak[i] - back[i])
        sub = level[sl]
        sub[region] = np.minimum(sub[region], cut)
        region_any[sl] |= region
    return region_any & (smooth > level)


#: A merge may not make a cell larger than this many median cells: two halves of one
#: nucleus become one, two whole nuclei pressed together (no valley in a blurry or
#: synthetic image) stay two.
MAX_MERGED_AREA = 2.0


def merge_without_valley(labels: np.ndarray, smooth: np.ndarray, *, valley: float = 0.9,
                         n_labels: int | None = None) -> np.ndarray:
    """Which touching cells are one: a lookup table id -> id of its merged group.

    Two nuclei pressed together still show a dimmer seam where they meet; two
    predictions inside one nucleus do not. Cells ``a`` and ``b`` that share a border
    are merged when the median brightness along it is above ``valley`` times the
    dimmer of their two peaks (90th percentiles), and the merged cell is at most
    :data:`MAX_MERGED_AREA` median cells. Brightest borders merge first. Apply as
    ``lut[labels]``; the table has ``n_labels + 1`` entries (default: the largest id
    present).
    """
    lab = np.asarray(labels)
    n = max(int(lab.max()) if lab.size else 0, int(n_labels or 0))
    identity = np.arange(n + 1, dtype=np.int32)
    if n < 2:
        return identity
    peaks = np.zeros(n + 1, np.float64)
    inside = lab > 0
    ids, tops = _percentiles_by_group(np.asarray(smooth)[inside], lab[inside], 90)
    peaks[ids] = tops
    area = np.bincount(lab.ravel(), minlength=n + 1).astype(np.float64)
    if not (area[1:] > 0).any():
        return identity
    cap = MAX_MERGED_AREA * float(np.median(area[1:][area[1:] > 0]))
    # Border pixel pairs: horizontally and vertically adjacent pixels of two cells.
    pairs, values = [], []
    for a, b, va, vb in ((lab[:, :-1], lab[:, 1:], smooth[:, :-1], smooth[:, 1:]),
                         (lab[:-1, :], lab[1:, :], smooth[:-1, :], smooth[1:, :])):
        m = (a > 0) & (b > 0) & (a != b)
        lo, hi = np.minimum(a[m], b[m]), np.maximum(a[m], b[m])
        pairs.append(lo.astype(np.int64) * (n + 1) + hi)
        values.append(0.5 * (va[m] + vb[m]))
    keys, vals = np.concatenate(pairs), np.concatenate(values)
    if keys.size == 0:
        return identity
    order = np.argsort(keys, kind="stable")
    keys, vals = keys[order], vals[order]
    uniq, start = np.unique(keys, return_index=True)
    bounds = np.append(start, keys.size)
    candidates = []
    for k, key in enumerate(uniq):
        a, b = int(key // (n + 1)), int(key % (n + 1))
        ratio = float(np.median(vals[bounds[k]:bounds[k + 1]])) / max(min(peaks[a], peaks[b]), 1e-12)
        if ratio > valley:
            candidates.append((ratio, a, b))
    parent = identity.copy()
    size = area.copy()

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = int(parent[i])
        return i

    for _, a, b in sorted(candidates, reverse=True):
        ra, rb = root(a), root(b)
        if ra != rb and size[ra] + size[rb] <= cap:
            keep, gone = min(ra, rb), max(ra, rb)
            parent[gone] = keep
            size[keep] += size[gone]
    return np.array([root(i) for i in range(n + 1)], np.int32)


#: Names of the columns of :func:`outline_features`, in order (stored with a learned rule).
FEATURES = ("intensity", "smoothed", "blurred", "gradient", "signed_distance", "curvature")


def outline_features(labels: np.ndarray, image: np.ndarray, *, margin: float = 0.25
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel features of the pixels near the cells found, for a learned outline rule.

    Every pixel within ``margin`` typical diameters of a cell belongs to its nearest
    cell. Brightness is measured relative to that cell's own contrast (0 at its local
    background, 1 at its peak, as :func:`image_outlines` measures them), so one rule
    fits dim and bright nuclei alike; lengths are in typical cell diameters, so it
    fits any magnification.

    Parameters
    ----------
    labels : ndarray of int, shape (H, W)
        The decomposition's cells (ids 1..N).
    image : ndarray of float, shape (H, W)
        The normalised input image.
    margin : float
        How far past its mask a cell's pixels reach, in typical cell diameters.

    Returns
    -------
    features : ndarray of float32, shape (M, 6)
        Columns :data:`FEATURES`: the pixel's value, its value smoothed at 1/25 and
        at 1/8 of a diameter, the gradient magnitude and the Laplacian of Gaussian
        (at 1/6 diameter), all relative to the cell's contrast, and the signed
        distance to the cell mask's edge (positive inside) in diameters.
    where : ndarray of bool, shape (H, W)
        The M pixels, in row-major order.
    """
    lab = np.asarray(labels)
    img = np.asarray(image, np.float32)
    n = int(lab.max()) if lab.size else 0
    areas = np.bincount(lab.ravel(), minlength=n + 1)[1:] if n else np.zeros(0, np.int64)
    if n == 0 or not (areas > 0).any():
        return np.zeros((0, len(FEATURES)), np.float32), np.zeros(lab.shape, bool)
    d = 2.0 * np.sqrt(np.median(areas[areas > 0]) / np.pi)
    grow = max(1, int(round(margin * d)))
    ring = max(2, int(round(0.3 * d)))
    smooth = ndi.gaussian_filter(img, max(0.5, d / 25.0))
    peak, back, _ = _cell_contrasts(lab, smooth, grow, ring, n)
    return _features(lab, img, smooth, peak, back, d, grow)


def _features(lab: np.ndarray, img: np.ndarray, smooth: np.ndarray, peak: np.ndarray, back: np.ndarray,
              d: float, grow: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`outline_features` from what :func:`image_outlines` has already measured."""
    from skimage.segmentation import expand_labels

    nearest = expand_labels(lab, grow)
    nearest = np.where(peak[nearest] > back[nearest], nearest, 0)
    where = nearest > 0
    cell = nearest[where]
    b = back[cell]
    scale = (peak - back)[cell]
    gy, gx = np.gradient(smooth)
    inside = ndi.distance_transform_edt(lab > 0)
    outside = ndi.distance_transform_edt(lab == 0)
    # Gradient and curvature are scaled to about unit size for a cell of contrast 1.
    columns = (
        (img[where] - b) / scale,
        (smooth[where] - b) / scale,
        (ndi.gaussian_filter(img, d / 8.0)[where] - b) / scale,
        np.hypot(gy, gx)[where] * d / scale / 10.0,
        (inside - outside)[where] / d,
        ndi.gaussian_laplace(img, d / 6.0)[where] * d * d / scale / 10.0,
    )
    return np.stack(columns, -1).astype(np.float32), where


def _cell_contrasts(lab: np.ndarray, smooth: np.ndarray, grow: int, ring: int, n: int
                    ) -> tuple[np.ndarray, np.ndarray, list]:
    """Each cell's peak (90th percentile inside) and local background (20th of a ring).

    The ring is the background between ``grow`` and ``grow + ring`` pixels (city-block
    distance, as that many 4-connected dilations) from the cell. Also returns, per
    cell, its box and the pixels within ``grow`` of it there (``(id, box, region)``),
    which :func:`_above_own_level` needs. The percentiles of every cell are taken in
    one sort (:func:`_percentiles_by_group`), not one ``np.percentile`` call each:
    those were 60 % of this loop.
    """
    pad = grow + ring + 1
    inside: list[np.ndarray] = []
    around: list[np.ndarray] = []
    around_ids, bare, regions = [], [], []
    for i, sl in enumerate(ndi.find_objects(lab), start=1):
        if sl is None:
            continue
        sl = tuple(slice(max(0, s.start - pad), min(dim, s.stop + pad)) for s, dim in zip(sl, lab.shape))
        sub = lab[sl]
        own = sub == i
        dist = ndi.distance_transform_cdt(~own, metric="taxicab")
        region = dist <= grow
        outer = (dist <= grow + ring) & ~region & (sub == 0)
        values = smooth[sl]
        inside.append(values[own])
        if outer.any():
            around.append(values[outer])
            around_ids.append(i)
        else:
            bare.append((i, values[~own]))
        regions.append((i, sl, region))
    peak = np.zeros(n + 1, np.float32)
    back = np.zeros(n + 1, np.float32)
    if regions:
        owners = np.repeat([i for i, _, _ in regions], [v.size for v in inside])
        ids, values = _percentiles_by_group(np.concatenate(inside), owners, 90)
        peak[ids] = values
    if around:
        owners = np.repeat(around_ids, [v.size for v in around])
        ids, values = _percentiles_by_group(np.concatenate(around), owners, 20)
        back[ids] = values
    for i, rest in bare:
        back[i] = rest.min(initial=peak[i])
    return peak, back, regions


def _percentiles_by_group(values: np.ndarray, owners: np.ndarray, q: float) -> tuple[np.ndarray, np.ndarray]:
    """The ``q``-th percentile of ``values`` per owner id, as ``np.percentile`` each, in one sort.

    Returns the owner ids present (ascending) and their percentiles. numpy's arithmetic
    (default linear method) is kept step by step: the index ``(n - 1) q / 100`` in
    float64, the weight cast to the values' dtype, the upper neighbour minus
    ``1 - weight`` from 0.5 up; so the values are the same to the bit
    (``tests/test_kaizen_outlines.py``).
    """
    order = np.lexsort((values, owners))
    ordered, owned = values[order], owners[order]
    ids, starts, counts = np.unique(owned, return_index=True, return_counts=True)
    virtual = (counts - 1) * (q / 100)
    below = np.floor(virtual).astype(np.intp)
    above = np.minimum(below + 1, counts - 1)
    weight = virtual - below
    lo, hi = ordered[starts + below], ordered[starts + above]
    diff = hi - lo
    dtype = ordered.dtype
    return ids, np.where(weight >= 0.5, hi - diff * (1 - weight).astype(dtype), lo + diff * weight.astype(dtype))
