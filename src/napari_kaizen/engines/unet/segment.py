"""Loading U-Net weights and segmenting with them, as a snapshot generator."""

from __future__ import annotations

import dataclasses
from collections.abc import Generator
from typing import TYPE_CHECKING, Any

import numpy as np

from ...errors import DeviceError, InputError
from .._common.allocator import keep_freed_memory
from .._common.normalize import prepare_image
from .._common.scale import median_diameter
from .._common.scale_rule import Scale, given_or_estimated, is_auto
from .._common.snapshots import SegmentationSnapshot, Snapshot, empty_field_snapshot, relay
from .params import DEFAULT_MODEL, PRETRAINED_MEMBRANE, PRETRAINED_NUCLEI, UNetParams

if TYPE_CHECKING:  # the model module imports torch; segment() loads it on first call
    from .model import UNetModel

__all__ = ["DEFAULT_MODEL", "PRETRAINED_MEMBRANE", "PRETRAINED_NUCLEI", "measure_scale", "scale_for", "segment"]


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

    keep_freed_memory()  # reuse big blocks across calls (allocator.py)
    p = params if params is not None else UNetParams()
    if not isinstance(p, UNetParams):
        raise InputError(f"params must be UNetParams, got {type(p).__name__}")
    from .model import load_model

    net_model = load_model(model, device)
    # Label-free input: no bright objects on a dark field to take the range from.
    img = prepare_image(image, percentiles=net_model.percentiles, by_objects=False)
    # Pure noise: the U-Net would find dozens of "nuclei" in it (it never saw an image
    # without cells); say why there are none instead.
    empty = empty_field_snapshot(img, SegmentationSnapshot, fluorescence=False)
    if empty is not None:
        yield empty
        return
    model_d = net_model.object_diameter
    measuring = _measures(p.diameter, net_model)
    yield Snapshot(stage="tiles", progress=0.0, message="predicting")
    object_scale = yield from relay(measure_scale(image, p, net_model, prepared=img), 0.0, 0.4)
    rs = object_scale.rescale(img.shape, model_d)
    _check_model_shape(rs.model_shape)
    # The measuring pass ran at the image's own scale: its maps serve when no rescale follows.
    maps = object_scale.probe if object_scale.probe is not None and rs.identity else None
    if maps is None:
        maps = yield from relay(predict_maps(net_model, rs.to_model(img), p), 0.4 if measuring else 0.0, 0.8)

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


def _check_model_shape(shape: tuple[int, int]) -> None:
    if min(shape) < 16:
        raise InputError(
            f"image is too small at the model's scale ({shape[0]}x{shape[1]} px): "
            "at least 16x16 pixels are needed"
        )


def _measures(diameter: Any, net_model: UNetModel) -> bool:
    """Whether ``'auto'`` is measured by a pass of the network (a nucleus or cell model of known size)."""
    return is_auto(diameter) and bool(net_model.segmentation) and bool(net_model.object_diameter)


def measure_scale(
    image: np.ndarray, params: UNetParams | None, model: UNetModel, *, prepared: np.ndarray | None = None
) -> Generator[Snapshot, None, Scale]:
    """The U-Net's scale rule as a generator: ``'tiles'`` progress, then returns the :class:`Scale`.

    A number is used as given and ``None`` is the model's own scale. ``'auto'`` runs the
    network once at the image's own scale and measures the objects it finds (their
    median equivalent diameter): the U-Net reads label-free images, whose nuclei a
    fluorescence blob estimate cannot size. A model that predicts fluorescence only,
    or whose training diameter is unknown, runs ``'auto'`` at its own scale. The
    measuring pass's maps travel in :attr:`Scale.probe`, so :func:`segment` reuses
    them when no rescale follows. :func:`scale_for` is the same rule without the
    progress.
    """
    p = params if params is not None else UNetParams()
    if not _measures(p.diameter, model):
        return given_or_estimated(None, None if is_auto(p.diameter) else p.diameter)
    from .postprocess import instances

    img = prepared if prepared is not None else prepare_image(image, percentiles=model.percentiles,
                                                              by_objects=False)
    _check_model_shape(img.shape)  # the measuring pass runs at the image's own scale
    maps = yield from predict_maps(model, img, p)
    _, first = instances(maps[1], maps[2], h=p.h, min_area=_min_area(p, model.object_diameter),
                         mask_threshold=p.mask_threshold, smooth=p.smooth)
    found = median_diameter(first)
    if not np.isfinite(found):
        return Scale(None, failure="the model found no objects to measure at the image's own scale", probe=maps)
    return Scale(float(found), estimated=True, probe=maps)


def scale_for(image: np.ndarray, params: UNetParams | None = None, *, model: Any = None,
              prepared: np.ndarray | None = None) -> Scale:
    """The object diameter the U-Net segments ``image`` at (the rule of :func:`measure_scale`).

    Parameters
    ----------
    image : ndarray, shape (H, W)
        The label-free plane as :func:`segment` receives it.
    params : UNetParams, optional
    model : UNetModel, str or None
        The loaded model ('auto' runs it); a name or path is loaded, ``None`` is
        :data:`DEFAULT_MODEL`.
    prepared : ndarray, optional
        ``image`` already normalised with the model's percentiles.

    Returns
    -------
    Scale
        Without :attr:`Scale.probe` (the maps are not kept).
    """
    from .model import load_model

    rule = measure_scale(image, params, load_model(model, "auto"), prepared=prepared)
    while True:
        try:
            next(rule)
        except StopIteration as stop:
            return dataclasses.replace(stop.value, probe=None)


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
