"""Loading U-Net weights and segmenting with them, as a snapshot generator."""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING, Any

import numpy as np

from ...errors import DeviceError, InputError
from .._common.normalize import prepare_image
from .._common.scale import median_diameter, rescale_for_model, resolve_diameter
from .._common.snapshots import SegmentationSnapshot, Snapshot, empty_field_snapshot, relay
from .params import DEFAULT_MODEL, PRETRAINED_MEMBRANE, PRETRAINED_NUCLEI, UNetParams

if TYPE_CHECKING:  # the model module imports torch; segment() loads it on first call
    from .model import UNetModel

__all__ = ["DEFAULT_MODEL", "PRETRAINED_MEMBRANE", "PRETRAINED_NUCLEI", "segment"]


def _predict_fn(net, segmentation: bool):
    import torch

    from .._common.inference import as_inference_input, inference_network

    # Batch norm folded, channels last: same output, a fraction of the time (docs/speed.md).
    net = inference_network(net)

    def predict(batch):
        out = net(as_inference_input(batch))
        if segmentation:
            # Tiles are averaged as probabilities, not logits: averaging logits would
            # let one confident tile override its neighbours.
            out = torch.cat([out[:, :2], torch.sigmoid(out[:, 2:3])], 1)
        return out.contiguous()

    return predict


def predict_maps(
    model: UNetModel, image: np.ndarray, params: UNetParams
) -> Generator[Snapshot, None, np.ndarray]:
    """Tiled prediction of a normalised model-scale image; returns ``(K, H, W)`` maps.

    ``K`` is 1 (fluorescence) or 3 (fluorescence, distance, mask probability).
    """
    from .._common.tiling import iter_tiled_predict

    try:
        return (
            yield from iter_tiled_predict(
                _predict_fn(model.net, model.segmentation),
                image,
                tile=int(params.window),
                overlap=int(params.overlap),
                batch_size=int(params.batch_size),
                multiple_of=model.net.stride,
                device=model.device,
            )
        )
    except RuntimeError as exc:
        if "out of memory" in str(exc).lower():
            raise DeviceError(
                f"out of memory on {model.device}: lower the window (now {params.window}) or use device 'cpu'"
            ) from None
        raise


def _min_area(params: UNetParams, diameter: float | None) -> int:
    d = diameter or 17.0
    return max(4, int(params.min_size * np.pi * (d / 2.0) ** 2))


def segment(
    image: np.ndarray,
    params: UNetParams | None = None,
    *,
    model: Any = None,
    device: Any = "auto",
) -> Generator[Snapshot, None, None]:
    """Segment nuclei (or cells) in a label-free image with the ISL U-Net.

    Parameters
    ----------
    image : ndarray, shape (H, W)
        A label-free image (phase contrast, bright field, DIC), any real dtype.
    params : UNetParams, optional
    model : str, path, UNetModel or None
        Weights (``None``: :data:`DEFAULT_MODEL`). Load once with :func:`load_model`
        when segmenting many images.
    device : {'auto', 'cpu', 'cuda', 'mps'} or torch.device

    Yields
    ------
    Snapshot
        ``'tiles'`` progress while tiles are predicted; a ``'maps'``
        :class:`SegmentationSnapshot` with ``maps`` ``'fluorescence'``, ``'distance'``
        and ``'mask'`` (input grid); a ``'seeds'`` snapshot (``maps['seeds']``); and the
        final ``'labels'`` snapshot (``done=True``, int32 labels 1..N on the input grid).
        A fluorescence-only (ISL-pretrained) model yields its fluorescence; for a nucleus
        model the labels then come from the classical pipeline run on that prediction.

    Raises
    ------
    InputError, WeightsError, DeviceError
        One-line messages for bad images, parameters, weights or devices.

    Examples
    --------
    >>> from napari_kaizen.data import synthesize
    >>> from napari_kaizen.engines._common import run_to_end
    >>> field = synthesize(seed=10_001, shape=(128, 128))
    >>> labels = run_to_end(segment(field.label_free, device="cpu")).labels
    >>> labels.shape, labels.dtype
    ((128, 128), dtype('int32'))
    """
    from .postprocess import instances

    p = params if params is not None else UNetParams()
    if not isinstance(p, UNetParams):
        raise InputError(f"params must be UNetParams, got {type(p).__name__}")
    from .model import load_model

    net_model = load_model(model, device)
    img = prepare_image(image, percentiles=net_model.percentiles)
    # Pure noise: the U-Net would find dozens of "nuclei" in it (it never saw an image
    # without cells); say why there are none instead.
    empty = empty_field_snapshot(img, SegmentationSnapshot, fluorescence=False)
    if empty is not None:
        yield empty
        return
    model_d = net_model.object_diameter
    auto = isinstance(p.diameter, str) and p.diameter.strip().lower() == "auto"
    diameter = None if auto else resolve_diameter(img, p.diameter)
    rs = rescale_for_model(img.shape, diameter, model_d)
    if min(rs.model_shape) < 16:
        raise InputError(
            f"image is too small at the model's scale ({rs.model_shape[0]}x{rs.model_shape[1]} px): "
            "at least 16x16 pixels are needed"
        )
    yield Snapshot(stage="tiles", progress=0.0, message="predicting")
    maps = yield from relay(predict_maps(net_model, rs.to_model(img), p), 0.0, 0.8 if not auto else 0.4)

    if auto and net_model.segmentation and model_d:
        # 'auto': measure what the model found at the image's own scale, then rerun
        # rescaled if those objects are not the size the model was trained on.
        _, first = instances(maps[1], maps[2], h=p.h, min_area=_min_area(p, model_d),
                             mask_threshold=p.mask_threshold, smooth=p.smooth)
        found = median_diameter(first)
        if np.isfinite(found):
            rs = rescale_for_model(img.shape, found, model_d)
            if not rs.identity:
                maps = yield from relay(predict_maps(net_model, rs.to_model(img), p), 0.4, 0.8)
        diameter = found if np.isfinite(found) else None

    fluo = rs.to_input(maps[0])
    if not net_model.segmentation:
        yield from _fluorescence_only(net_model, fluo, maps[0], rs, p)
        return
    distance_m, mask_m = maps[1], maps[2]
    shown = {"fluorescence": fluo, "distance": rs.to_input(distance_m), "mask": rs.to_input(mask_m)}
    yield SegmentationSnapshot(stage="maps", progress=0.8, message="maps predicted", maps=shown)
    seeds, labels = instances(distance_m, mask_m, h=p.h, min_area=_min_area(p, model_d),
                              mask_threshold=p.mask_threshold, smooth=p.smooth)
    seeds_in = rs.labels_to_input(seeds)
    yield SegmentationSnapshot(
        stage="seeds", progress=0.9, message=f"{int(seeds.max())} seeds (h={p.h:g})",
        maps={**shown, "seeds": seeds_in},
    )
    labels = rs.labels_to_input(labels).astype(np.int32)
    scale = "" if rs.identity else f", rescaled x{rs.factor:.2f}"
    yield SegmentationSnapshot(
        stage="labels", progress=1.0, message=f"{int(labels.max())} objects{scale}",
        labels=labels, maps=shown, changed=tuple(range(1, int(labels.max()) + 1)), done=True,
    )


def _fluorescence_only(net_model: UNetModel, fluo: np.ndarray, fluo_model: np.ndarray, rs, p: UNetParams):
    """Finish a run of an ISL (fluorescence-only) model."""
    shown = {"fluorescence": fluo}
    yield SegmentationSnapshot(stage="maps", progress=0.8, message="fluorescence predicted", maps=shown)
    if net_model.target != "nuclei":
        yield SegmentationSnapshot(
            stage="labels", progress=1.0, maps=shown, labels=np.zeros(fluo.shape, np.int32), done=True,
            message=f"'{net_model.source}' predicts {net_model.target} fluorescence only: fine-tune it for instances",
        )
        return
    # A DAPI-like prediction is a nucleus image: the classical pipeline segments it.
    from .._common.snapshots import run_to_end
    from ..classical import ClassicalParams
    from ..classical import segment as classical_segment

    try:
        last = run_to_end(classical_segment(fluo_model, ClassicalParams(diameter=net_model.object_diameter or "auto")))
        labels = rs.labels_to_input(last.labels).astype(np.int32)
        message = f"{int(labels.max())} objects (classical watershed of the predicted fluorescence)"
    except InputError as exc:
        labels = np.zeros(fluo.shape, np.int32)
        message = f"no objects: {exc}"
    yield SegmentationSnapshot(stage="labels", progress=1.0, message=message, labels=labels, maps=shown, done=True)
