"""Segmentation with the GoogLeNet FCN: class probabilities, then instances.

The network gives every pixel a probability of background, cell interior and cell
edge. Instances follow the post: threshold the interior probability and label the
connected components. Because the interior class stops an edge band short of each
outline, the components are then grown back over their band (a watershed on the
interior probability restricted to pixels that are interior or edge), so cells keep
their full size; a min-size filter removes crumbs.

A model with a distance output (ours, not the post's: ``config.distance``) seeds one
object per h-maximum of its predicted distance map instead and splits the cell pixels
by a watershed of that map, as the ISL U-Net does: touching nuclei with no visible
edge band between them are still told apart where the map dips.
"""

from __future__ import annotations

from collections.abc import Generator

import numpy as np
from scipy import ndimage as ndi

from .._common.allocator import keep_freed_memory
from .._common.instances import BORDER_AREA_FRACTION, drop_dim_objects, small_objects
from .._common.normalize import DEFAULT_PERCENTILES, prepare_image
from .._common.snapshots import SegmentationSnapshot, Snapshot, empty_field_snapshot, relay
from .params import FCNParams
from .scale_rule import scale_for

#: Names of the predictor's output channels, in order (the third only with a distance output).
MAP_NAMES = ("probability", "edge", "distance")

#: The mirror images averaged at test time (``FCNParams.flip_average``): the image and
#: its left-right mirror. All four mirror images (adding up-down and both) bought 0.001
#: mean mAP more, leave one source out, for twice the time (docs/speed.md).
FLIPS = ((), (-1,))


def predictor(net, flip_average: bool):
    """The function from a batch ``(B, 1, H, W)`` to interior and edge probabilities ``(B, 2, H, W)``.

    A network with a distance output gives ``(B, 3, H, W)``: the distance map third.

    With ``flip_average``, the mean of the mirror images' probabilities (:data:`FLIPS`),
    each flipped back, so an outline depends less on which way a cell faces the
    network's stride grid. No default here: segmentation takes ``FCNParams.flip_average``,
    the calibration of the thresholds its own argument.

    Batches are handed to ``net`` channels last (what
    :func:`~napari_kaizen.engines._common.inference.inference_network` runs fastest);
    the output is contiguous again.
    """
    import torch

    from .._common.inference import as_inference_input

    n_classes = int(getattr(net, "n_classes", 3))

    def maps(batch: torch.Tensor) -> torch.Tensor:
        y = net(batch)
        probs = torch.softmax(y[:, :n_classes], dim=1)[:, 1:]
        if y.shape[1] == n_classes:
            return probs
        return torch.cat([probs, torch.sigmoid(y[:, n_classes:])], dim=1)

    def predict(batch: torch.Tensor) -> torch.Tensor:
        batch = as_inference_input(batch)
        if not flip_average:
            return maps(batch).contiguous()
        out = 0
        for dims in FLIPS:
            y = maps(as_inference_input(torch.flip(batch, dims)) if dims else batch)
            out = out + (torch.flip(y, dims) if dims else y)
        return (out / len(FLIPS)).contiguous()

    return predict


def instances_from_probabilities(
    prob_interior: np.ndarray,
    prob_edge: np.ndarray,
    *,
    threshold: float = 0.5,
    foreground: float = 0.5,
    min_area: int = 0,
    border_min_area: int | None = None,
) -> np.ndarray:
    """Instance labels from interior and edge probability maps.

    Parameters
    ----------
    prob_interior, prob_edge : ndarray, shape (H, W)
        Per-pixel class probabilities in ``[0, 1]``.
    threshold : float
        Interior probability above which a pixel is a seed; each 4-connected
        component of seeds is one cell.
    foreground : float
        ``prob_interior + prob_edge`` above which a pixel belongs to a cell; seeds grow
        over these pixels only.
    min_area : int
        Objects with fewer pixels are removed.
    border_min_area : int, optional
        The bar for objects that touch the image's edge, which show only part of their
        area (:data:`~napari_kaizen.engines._common.instances.BORDER_AREA_FRACTION`);
        ``None``: ``min_area``.

    Returns
    -------
    ndarray of int32, shape (H, W)
        Ids 1..N, 0 background.

    Notes
    -----
    Growing is a watershed on ``1 - prob_interior`` from the seeds, so a band between
    two touching cells is split where the interior probability of both is lowest.
    Cell-like regions with no seed at all (an object the network saw only as edge)
    become objects of their own when they pass ``min_area``.

    Examples
    --------
    >>> import numpy as np
    >>> pi = np.zeros((8, 12)); pi[2:6, 2:5] = 0.9; pi[2:6, 7:10] = 0.9
    >>> pe = np.zeros((8, 12)); pe[1:7, 1:11] = 0.9; pe[pi > 0] = 0.05
    >>> lab = instances_from_probabilities(pi, pe)
    >>> int(lab.max()), int((lab > 0).sum())
    (2, 60)
    """
    from .._common.instances import relabel, seeded_watershed

    p_int = np.asarray(prob_interior, np.float32)
    p_edge = np.asarray(prob_edge, np.float32)
    seeds = p_int > threshold
    markers, n = ndi.label(seeds)
    fg = ((p_int + p_edge) > foreground) | seeds
    labels = seeded_watershed(1.0 - p_int, markers, fg) if n else np.zeros(p_int.shape, np.int32)
    orphans = fg & (labels == 0)
    if orphans.any():
        extra, m = ndi.label(orphans)
        labels = np.where(extra > 0, extra + n, labels)
    labels = labels.astype(np.int32, copy=False)
    if min_area > 1 and labels.any():
        labels = np.where(small_objects(labels, min_area, border_min_area)[labels], 0, labels)
    return relabel(labels)


def instances_from_distance(
    prob_interior: np.ndarray,
    prob_edge: np.ndarray,
    distance: np.ndarray,
    *,
    h: float = 0.1,
    foreground: float = 0.5,
    min_area: int = 0,
    border_min_area: int | None = None,
    peaks: np.ndarray | None = None,
) -> np.ndarray:
    """Instance labels from class probabilities and a predicted distance map.

    Parameters
    ----------
    prob_interior, prob_edge : ndarray, shape (H, W)
        Per-pixel class probabilities in ``[0, 1]``.
    distance : ndarray, shape (H, W)
        Predicted distance to the outline, about 1 at object centres, 0 outside.
    h : float
        Seed contrast: a maximum of ``distance`` seeds an object only if it stands
        ``h`` above the saddle to any higher one (h-maxima), so one nucleus gives one
        seed and two touching ones, with a dip between them, give two.
    foreground : float
        ``prob_interior + prob_edge`` above which a pixel belongs to a cell.
    min_area, border_min_area : int
        As in :func:`instances_from_probabilities`.
    peaks : ndarray of bool, optional
        The h-maxima of ``distance`` at ``h``, when already computed
        (:func:`~napari_kaizen.engines._common.instances.distance_peaks`).

    Returns
    -------
    ndarray of int32, shape (H, W)

    Examples
    --------
    >>> import numpy as np
    >>> yy, xx = np.mgrid[:12, :20]
    >>> d = np.maximum(0, 1 - np.hypot(yy - 6, xx - 5) / 5) + np.maximum(0, 1 - np.hypot(yy - 6, xx - 13) / 5)
    >>> cell = (d > 0.05).astype(float)
    >>> lab = instances_from_distance(cell, np.zeros_like(cell), d, h=0.2)
    >>> int(lab.max()), bool(lab[6, 5] != lab[6, 13])
    (2, True)
    """
    from .._common.instances import fill_holes, find_seeds, relabel, watershed_instances

    fg = (np.asarray(prob_interior, np.float32) + np.asarray(prob_edge, np.float32)) > foreground
    fg = fill_holes(fg)
    d = np.asarray(distance, np.float32)
    # Seeds from every pixel: finding them on a sampled grid (as the classical engine
    # does) cost the FCN 0.011 mean mAP, leave one source out (docs/speed.md).
    seeds = find_seeds(d, fg, h, peaks=peaks)
    labels = watershed_instances(d, fg, seeds, 1)
    if min_area > 1 and labels.any():
        labels = relabel(np.where(small_objects(labels, min_area, border_min_area)[labels], 0, labels))
    return labels


def instances(maps: dict[str, np.ndarray], thresholds: dict[str, float], min_area: int = 0,
              border_min_area: int | None = None, peaks: np.ndarray | None = None) -> np.ndarray:
    """Instances from the FCN's maps: by seeded watershed when there is a ``'distance'`` map.

    ``thresholds`` holds ``foreground`` and ``h`` (distance models) or ``threshold``;
    ``peaks`` optionally the distance map's h-maxima at that ``h``.
    """
    if "distance" in maps:
        return instances_from_distance(maps["probability"], maps["edge"], maps["distance"], h=thresholds["h"],
                                       foreground=thresholds["foreground"], min_area=min_area,
                                       border_min_area=border_min_area, peaks=peaks)
    return instances_from_probabilities(maps["probability"], maps["edge"], threshold=thresholds["threshold"],
                                        foreground=thresholds["foreground"], min_area=min_area,
                                        border_min_area=border_min_area)


def min_area_pixels(min_size: float, object_diameter: float | None) -> int:
    """``min_size`` (fraction of a typical object's area) in pixels on the model grid."""
    if not object_diameter or min_size <= 0:
        return 0
    return max(1, int(round(min_size * np.pi * (object_diameter / 2.0) ** 2)))


def area_bars(min_size: float, object_diameter: float | None) -> dict[str, int]:
    """``{min_area, border_min_area}`` of :func:`instances_from_probabilities` in pixels.

    Objects cut by the image's edge are held to ``BORDER_AREA_FRACTION`` of a typical
    object's area (or ``min_size``, if lower: :func:`small_objects` takes the lower bar).
    """
    return {"min_area": min_area_pixels(min_size, object_diameter),
            "border_min_area": min_area_pixels(BORDER_AREA_FRACTION, object_diameter)}


def segment(
    image: np.ndarray,
    params: FCNParams | None = None,
    *,
    model=None,
    device="auto",
) -> Generator[Snapshot, None, None]:
    """Segment cells (or nuclei) with the GoogLeNet FCN.

    Parameters
    ----------
    image : ndarray, shape (H, W)
        One channel of any real dtype (the channel the model was trained on: DAPI-like
        for ``bundled:fcn_nuclei``, membrane for ``bundled:fcn_cells``); normalised by
        :func:`~napari_kaizen.engines._common.normalize.prepare_image`.
    params : FCNParams, optional
    model : FCNModel, str or path, optional
        A model from :func:`~napari_kaizen.engines.fcn.load_model`, a weights path, or
        ``'bundled:NAME'``; ``None`` means :data:`~napari_kaizen.engines.fcn.DEFAULT_MODEL`.
    device : {'auto', 'cpu', 'cuda', 'cuda:N', 'mps'}

    Yields
    ------
    Snapshot
        ``'tiles'`` progress while the network runs; ``'probability'`` with maps
        ``{'probability': interior probability, 'edge': edge probability}`` (and
        ``'distance'`` for a model with a distance output) on the input grid; then the final ``'labels'`` :class:`SegmentationSnapshot`
        (``done=True``, int32 labels 1..N on the input grid, the same maps).

    Raises
    ------
    InputError, WeightsError, DeviceError
        With a one-line message.

    Examples
    --------
    >>> from napari_kaizen.data import synthesize
    >>> from napari_kaizen.engines._common import run_to_end
    >>> field = synthesize(seed=10_001, shape=(128, 128))
    >>> last = run_to_end(segment(field.nuclei, device="cpu"))
    >>> last.labels.shape, sorted(last.maps)  # the bundled model has a distance output
    ((128, 128), ['distance', 'edge', 'probability'])
    """

    from .._common.inference import inference_network
    from .._common.tiling import iter_tiled_predict
    from .model import load_model

    keep_freed_memory()  # reuse big blocks across calls (allocator.py)
    p = (params or FCNParams()).check()
    # Validate the image before loading weights: a bad image is the commoner mistake.
    img = prepare_image(image)
    fcn = load_model(model, device)
    dev = fcn.device
    if fcn.percentiles != tuple(DEFAULT_PERCENTILES):
        img = prepare_image(image, percentiles=fcn.percentiles)
    # Nuclei models only: a membrane stain's thin outlines can sit close to the noise
    # and must not be mistaken for an empty field.
    empty = empty_field_snapshot(img, fluorescence=fcn.input_kind == "nuclei")
    if empty is not None:
        yield empty
        return
    # To the model's own object size, where its constants were calibrated, not just into
    # its size band (+-20 %). One network pass, held out: dsb2018-512x640 0.471 -> 0.532,
    # dsb2018-256x256 0.462 -> 0.506, dsb2018-360x360 0.752 -> 0.729; mean over seven
    # sources 0.535, against 0.532 for the band with two passes (docs/real_nuclei.md).
    # 15 px nuclei are enlarged 1.56x instead of 1.30x: 1.44x the network pixels, paid
    # for by one pass (flip_average) instead of two.
    rs = scale_for(image, p, model=fcn, prepared=img).rescale(img.shape, fcn.object_diameter)
    x = rs.to_model(img)
    # Batch norm folded, channels last: about twice as fast, same output (module docs).
    net = inference_network(fcn.net.eval())
    scale_note = "" if rs.identity else f", rescaled x{rs.factor:.2f}"
    yield SegmentationSnapshot(stage="tiles", progress=0.0, message=f"running the FCN on {x.shape[0]}x{x.shape[1]}{scale_note}")

    predict = predictor(net, p.flip_average)

    probs = yield from relay(
        iter_tiled_predict(
            predict, x, tile=p.window, overlap=p.overlap, batch_size=p.batch_size, multiple_of=fcn.stride, device=dev
        ),
        0.0,
        0.8,
    )
    maps = {name: rs.to_input(p_map) for name, p_map in zip(MAP_NAMES, probs)}
    yield SegmentationSnapshot(stage="probability", progress=0.85, message="class probabilities", maps=maps)
    # Instances on the input grid, from the resampled probabilities: outlines then have
    # the input's resolution, not the staircase of a coarser model grid.
    input_diameter = fcn.object_diameter / rs.factor if fcn.object_diameter else None
    bars = area_bars(fcn.calibrated("min_size", p.min_size), input_diameter)
    thresholds = {"threshold": fcn.calibrated("threshold", p.threshold), "h": fcn.calibrated("h", p.h),
                  "foreground": fcn.calibrated("foreground", p.foreground)}
    labels = instances(maps, thresholds, **bars)
    labels = drop_dim_objects(labels, img, fcn.calibrated("min_contrast", p.min_contrast))
    n = int(labels.max())
    yield SegmentationSnapshot(
        stage="labels", progress=1.0, message=f"{n} objects", labels=labels, maps=maps, done=True
    )
