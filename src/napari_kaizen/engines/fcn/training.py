"""Training and fine-tuning of the GoogLeNet FCN, as generators of snapshots.

The recipe is the post's: a handful of annotated images (it used seven) turned into
thousands of training samples by random crops, circular x/y translations ("rolls"),
flips and rotations (plus the gentle elastic / intensity changes every engine here
uses); three classes from the instance labels with edge pixels over-weighted in the
cross-entropy; RMSprop with an annealed (cosine) learning rate.

``train`` starts from random weights, ``finetune`` from a trained model (e.g. on a
labels layer a person corrected). Both yield
:class:`~napari_kaizen.engines._common.snapshots.TrainingSnapshot` s, write
``.safetensors`` + ``.json`` at the end (never over an existing file unless told), and
can be cancelled by closing the generator.
"""

from __future__ import annotations

import copy
from collections.abc import Generator, Iterator, Mapping, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import InputError
from .._common.augment import AugmentParams, augment, draw_zoom, trained_augment, zoom_window
from .._common.metadata import with_kind_keys
from .._common.normalize import DEFAULT_PERCENTILES
from .._common.scale import equivalent_diameters, rescale_for_model, rescale_to_diameter, resolve_diameter
from .._common.snapshots import TrainingSnapshot
from .._common.training import average_with_start, check_output, resample_mask, training_pairs
from .params import INPUT_KIND
from .targets import fcn_targets, pixel_weights

#: Augmentation of the post (crops are taken by the sampler): rolls, flips, rotations;
#: plus mild elastic and photometric changes shared with the other engines.
FCN_AUGMENT = AugmentParams(roll=True, elastic_prob=0.3, elastic_alpha=3.0)

#: Training recipes of the bundled models (and defaults of ``kaizen train fcn``).
RECIPES: dict[str, dict[str, Any]] = {
    "nuclei": dict(
        channel="nuclei", n_images=7, shape=(512, 512), hard=1.0, crop=128, batch_size=8, steps=1200, lr=1e-3,
        edge_weight=5.0, edge_width=2.0, width=1.0, stride=8, seed=0,
    ),
    "membrane": dict(
        channel="membrane", n_images=7, shape=(512, 512), hard=1.0, crop=160, batch_size=8, steps=1200, lr=1e-3,
        edge_weight=5.0, edge_width=2.0, width=1.0, stride=8, seed=0,
    ),
}

#: Bundled model name of each recipe.
BUNDLED_NAMES = {"nuclei": "fcn_nuclei", "membrane": "fcn_cells"}

#: Share of every fine-tuning batch drawn from synthetic fields of the model's channel
#: ("rehearsal"). Fine-tuned on one corrected frame alone, the real-nuclei model learned
#: that frame and forgot the rest (a one-nucleus frame emptied the model); with half of
#: each batch rehearsing fields like those it was trained on, one frame adjusts it
#: instead (docs/correction_loop.md, "Rehearsal").
REHEARSAL_SHARE = 0.5
#: Share of the starting weights in a fine-tuned model: the fine-tuned weights are
#: averaged with those the fine-tune started from (``_common.training.average_with_start``,
#: WiSE-FT). With the fine-tuned weights alone, one corrected frame of a held-out source
#: changed the mAP of its other frames by -0.004 on average over seven sources (-0.080 to
#: +0.057 per frame); averaged half-way, +0.004 (-0.030 to +0.032), the quarter-corrected
#: frame -0.007 -> +0.003 (benchmarks/correction_loop.py; 0.5, the paper's middle, was the
#: only value tried; docs/correction_loop.md).
FINETUNE_START_SHARE = 0.5
#: The rehearsal fields: the generator's first training seeds, hardness cycling as in
#: the bundled recipe; drawn at the model's object diameter.
REHEARSAL_FIELDS: dict[str, Any] = {"n_images": 4, "shape": (256, 256), "hard": (0.4, 0.6, 0.8, 1.0)}


# --------------------------------------------------------------------------- data


def prepare_pairs(
    images: Any, labels: Any, *, percentiles: Sequence[float] = DEFAULT_PERCENTILES
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Normalised images and checked labels as ``(float32 image, int32 labels)`` pairs.

    See :func:`~napari_kaizen.engines._common.training.training_pairs`.
    """
    return list(zip(*training_pairs(images, labels, percentiles=tuple(percentiles)))) or []


def training_diameter(pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> float:
    """Median equivalent diameter of all objects of all label images (pixels)."""
    d = np.concatenate([equivalent_diameters(lab) for _, lab in pairs])
    return float(np.median(d)) if d.size else float("nan")


def synthetic_training_set(
    n_images: int = 7,
    *,
    channel: str = "nuclei",
    shape: tuple[int, int] = (512, 512),
    hard: float | Sequence[float] = 1.0,
    first_seed: int = 0,
    nucleus_diameter: float = 18.0,
    real_world: bool = True,
) -> tuple[list[np.ndarray], list[np.ndarray], dict[str, Any]]:
    """Synthetic images + labels for training: seeds ``first_seed ..``, varied fields.

    Each field's settings come from ``random_params(np.random.default_rng(seed), ...)``
    with the same seed; ``channel='nuclei'`` pairs the DAPI-like channel with
    ``nucleus_labels``, ``'membrane'`` the CellMask-like channel with ``cell_labels``.
    ``hard`` may be a sequence: field ``k`` then takes ``hard[k % len(hard)]``.
    ``real_world=False`` draws the napari-kaizen 0.1.0 fields (see ``random_params``).

    Returns
    -------
    images, labels : list of ndarray
    description : dict
        JSON-friendly record of how the set was made (for the weights metadata).
    """
    from ...data import random_params, synthesize

    if channel not in ("nuclei", "membrane"):
        raise InputError(f"channel must be 'nuclei' or 'membrane', got {channel!r}")
    if int(n_images) < 1:
        raise InputError(f"the synthetic training set needs at least one image, got {n_images}")
    images, labels = [], []
    seeds = list(range(int(first_seed), int(first_seed) + int(n_images)))
    hards = [float(h) for h in hard] if isinstance(hard, Sequence) else [float(hard)]
    for k, s in enumerate(seeds):
        prm = random_params(np.random.default_rng(s), shape=tuple(shape), nucleus_diameter=nucleus_diameter,
                            hard=hards[k % len(hards)], real_world=real_world)
        f = synthesize(prm, seed=s)
        images.append(f.nuclei if channel == "nuclei" else f.membrane)
        labels.append(f.nucleus_labels if channel == "nuclei" else f.cell_labels)
    desc = {
        "source": "napari_kaizen.data.synthesize",
        "params": f"random_params(np.random.default_rng(seed), shape={tuple(shape)}, "
        f"nucleus_diameter={nucleus_diameter}, "
        + (f"hard={hards[0]}" if len(hards) == 1
           else f"hard={tuple(hards)}[(seed - {int(first_seed)}) % {len(hards)}]")
        + ("" if real_world else ", real_world=False") + ")",
        "seeds": seeds,
        "channel": channel,
        "labels": "nucleus_labels" if channel == "nuclei" else "cell_labels",
    }
    return images, labels, desc


def iter_batches(
    pairs: Sequence[tuple[np.ndarray, np.ndarray]],
    rng: np.random.Generator,
    *,
    crop: int,
    batch_size: int,
    edge_width: float,
    edge_weight: float,
    augment_params: AugmentParams = FCN_AUGMENT,
    weights: Sequence[float] | None = None,
    regions: Sequence[np.ndarray | None] | None = None,
    distance: bool = False,
) -> Iterator[tuple[np.ndarray, ...]]:
    """Endless ``(images (B,1,c,c), classes (B,c,c), weights (B,c,c))`` training batches.

    With ``distance``, a fourth array: the distance-map targets ``(B,c,c)``
    (:func:`~napari_kaizen.engines._common.instances.distance_map` of the augmented labels).

    A sample is a random ``crop x crop`` window of a random image (chosen in proportion
    to its area, times ``weights`` when given). With ``augment_params.roll`` the window
    wraps around the image edges, which is cropping a circularly rolled image, as the
    post did; with a ``scale_range`` the window is zoomed about its centre
    (:func:`~napari_kaizen.engines._common.augment.draw_zoom`); flips, rotations,
    elastic and intensity changes follow, and the three-class targets are computed
    from the augmented labels (so bands keep their width under rotation and zoom).

    ``regions`` (one boolean mask or None per image) limits the loss to checked pixels
    of a partly corrected image: its windows are centred on checked pixels and every
    other pixel gets weight 0.
    """
    regions = list(regions) if regions is not None else [None] * len(pairs)
    checked = [np.flatnonzero(r) if r is not None else None for r in regions]
    areas = np.array([img.size if c is None else c.size for (img, _), c in zip(pairs, checked)], np.float64)
    if weights is not None:
        areas = areas * np.asarray(weights, np.float64)
    prob = areas / areas.sum()
    geo = replace(augment_params, roll=False, scale_range=(1.0, 1.0), scale_spread=0.0)
    if distance:
        from .._common.instances import distance_map
    while True:
        xs, cs, ws, ds = [], [], [], []
        for _ in range(batch_size):
            k = int(rng.choice(len(pairs), p=prob))
            img, lab = pairs[k]
            h, w = img.shape
            zoom = draw_zoom(rng, augment_params)
            reach = int(np.ceil(crop / zoom))
            if checked[k] is not None:
                centre = divmod(int(checked[k][int(rng.integers(checked[k].size))]), w)
            elif augment_params.roll:
                centre = (int(rng.integers(h)), int(rng.integers(w)))
            else:
                centre = (int(rng.integers(max(1, h - reach + 1))) + min(h, reach) // 2,
                          int(rng.integers(max(1, w - reach + 1))) + min(w, reach) // 2)
            sub_img, sub_lab = zoom_window(img, lab, centre, crop, zoom, wrap=augment_params.roll)
            if regions[k] is None:
                a_img, (a_lab,) = augment(sub_img, [sub_lab], rng=rng, params=geo, label_targets=(True,))
                a_reg = None
            else:
                _, sub_reg = zoom_window(img, regions[k].astype(np.int32), centre, crop, zoom,
                                         wrap=augment_params.roll)
                a_img, (a_lab, a_reg) = augment(sub_img, [sub_lab, sub_reg], rng=rng, params=geo,
                                                label_targets=(True, True))
            cls = fcn_targets(a_lab, edge_width)
            xs.append(a_img)
            cs.append(cls)
            w_px = pixel_weights(cls, edge_weight)
            ws.append(w_px if a_reg is None else w_px * (a_reg > 0))
            if distance:
                ds.append(distance_map(a_lab))
        batch = (np.stack(xs)[:, None].astype(np.float32), np.stack(cs).astype(np.int64), np.stack(ws))
        yield batch + (np.stack(ds),) if distance else batch


# --------------------------------------------------------------------------- the loop


def _check_number(name: str, value: Any, lo: float, *, integer: bool = False) -> None:
    ok = isinstance(value, (int, np.integer)) if integer else isinstance(value, (int, float, np.number))
    if not ok or not np.isfinite(value) or value < lo:
        kind = "an integer" if integer else "a number"
        raise InputError(f"{name} must be {kind} >= {lo:g}, got {value!r}")


def _fit_crop(pairs, crop: int, stride: int) -> int:
    side = min(min(img.shape) for img, _ in pairs)
    fitted = min(int(crop), side) // stride * stride
    if fitted < 32:
        raise InputError(
            f"training images are too small ({side} px on their shortest side at the model's scale): "
            "at least 32 x 32 pixels are needed"
        )
    return fitted


def _validation_fn(val_pairs, object_diameter: float | None, edge_width: float):
    """AP50 / mAP and pixel accuracy on held-out pairs, for the training log."""
    if not val_pairs:
        return None

    def validate(net) -> dict[str, float]:
        from ...metrics import evaluate
        from .._common.tiling import tiled_predict
        from .params import FCNParams
        from .segment import MAP_NAMES, instances, min_area_pixels, predictor

        p = FCNParams()
        dev = next(net.parameters()).device
        gts, preds, acc = [], [], []
        predict = predictor(net, False)
        for img, lab in val_pairs:
            probs = tiled_predict(predict, img, tile=p.window, overlap=p.overlap, multiple_of=net.stride, device=dev)
            maps = dict(zip(MAP_NAMES, probs))
            pred = instances(maps, {"threshold": 0.5, "foreground": 0.5, "h": 0.1},
                             min_area=min_area_pixels(0.1, object_diameter))
            gts.append(lab)
            preds.append(pred)
            classes = np.stack([1.0 - probs[0] - probs[1], probs[0], probs[1]]).argmax(0)
            acc.append(float((classes == fcn_targets(lab, edge_width)).mean()))
        ev = evaluate(gts, preds)
        return {"ap50": ev.ap50, "map": ev.map, "pixel_accuracy": float(np.mean(acc))}

    return validate


def _fit(
    net,
    pairs,
    *,
    steps: int,
    lr: float,
    batch_size: int,
    crop: int,
    edge_width: float,
    edge_weight: float,
    seed: int,
    dev,
    augment_params: AugmentParams,
    validate=None,
    validate_every: int = 0,
    report_every: int = 10,
    weights: Sequence[float] | None = None,
    regions: Sequence[np.ndarray | None] | None = None,
    distance_weight: float = 1.0,
) -> Generator[TrainingSnapshot, None, dict[str, Any]]:
    import torch
    import torch.nn.functional as F

    from .._common.losses import weighted_cross_entropy
    from .._common.training import seed_everything, train_loop

    rng = seed_everything(seed)
    batches = iter_batches(
        pairs, rng, crop=crop, batch_size=batch_size, edge_width=edge_width, edge_weight=edge_weight,
        augment_params=augment_params, weights=weights, regions=regions, distance=net.distance,
    )
    n_classes = net.n_classes
    # RMSprop with a cosine-annealed learning rate (the post: "RMSprop with an annealed
    # learning rate"); eps 1e-6 keeps early steps of rarely-updated weights bounded.
    optimizer = torch.optim.RMSprop(net.parameters(), lr=lr, alpha=0.9, eps=1e-6, weight_decay=1e-5)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps, eta_min=lr * 0.02)

    def loss_fn(model, batch):
        x, cls, w = batch[:3]
        out = model(x)
        logits = out[:, :n_classes]
        loss = weighted_cross_entropy(logits, cls, w)
        parts = {"weighted_ce": float(loss.detach())}
        if len(batch) > 3:
            # The distance map as a soft target of a logistic output: the same scale as
            # the cross-entropy, so one weight of 1 balances the two. Unchecked pixels of
            # a partial correction (weight 0) do not count.
            seen = (w > 0).float()
            bce = F.binary_cross_entropy_with_logits(out[:, n_classes], batch[3], reduction="none")
            dist_loss = (bce * seen).sum() / seen.sum().clamp_min(1.0)
            loss = loss + distance_weight * dist_loss
            parts["distance_bce"] = float(dist_loss.detach())
        with torch.no_grad():
            edge = cls == 2
            parts["edge_recall"] = float((logits.argmax(1)[edge] == 2).float().mean()) if bool(edge.any()) else float("nan")
        return loss, parts

    return (
        yield from train_loop(
            net, batches, loss_fn, optimizer, steps=steps, device=dev, scheduler=scheduler,
            report_every=report_every, validate=validate, validate_every=validate_every, clip_grad_norm=5.0,
        )
    )


#: Dim-object filter levels searched after the grid (see ``_common.instances.dim_objects``).
MIN_CONTRAST_GRID = (0.0, 0.15, 0.25, 0.35, 0.5)

#: Post-processing values searched by :func:`calibrate_thresholds` (a full grid).
CALIBRATION_GRID = {
    "threshold": (0.3, 0.4, 0.5, 0.6),
    "foreground": (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9),
    "min_size": (0.1, 0.25),
}
#: The grid of a model with a distance output: the seed contrast ``h`` instead of the
#: interior threshold.
DISTANCE_CALIBRATION_GRID = {
    "h": (0.05, 0.1, 0.2, 0.3),
    "foreground": (0.5, 0.6, 0.7, 0.8, 0.85, 0.9),
    "min_size": (0.1, 0.25),
}


#: Side of the central window of each image that :func:`calibrate_thresholds` scores.
CALIBRATION_SIDE = 768


def _central(n: int, side: int = CALIBRATION_SIDE) -> slice:
    start = max(0, (n - side) // 2)
    return slice(start, start + side)


def calibrate_thresholds(net, pairs, object_diameter: float | None, grid: Mapping[str, Sequence[float]] | None = None,
                         *, flip_average: bool = False, described: str | None = None) -> dict:
    """The seed ``threshold``, ``foreground``, ``min_size`` and ``min_contrast`` with the best mAP on ``pairs``.

    The probabilities are predicted once per image (model grid, a central window of at
    most :data:`CALIBRATION_SIDE` pixels square); every combination of ``grid``
    (default :data:`CALIBRATION_GRID`, or :data:`DISTANCE_CALIBRATION_GRID` for a model
    with a distance output) is then scored, and with the best of
    them every level of :data:`MIN_CONTRAST_GRID`. The images are the model's own
    training images: nothing held out is looked at. ``described`` says what they are in
    the record (default: how many).

    Returns ``{'threshold', 'foreground', 'min_size', 'min_contrast', 'chosen_on', 'map',
    'map_by_min_contrast'}`` for the metadata (``map``: the best score per foreground
    value, for the record).
    """
    import torch

    from ...metrics import evaluate
    from .._common.instances import distance_peaks, drop_dim_objects, small_objects
    from .._common.tiling import tiled_predict
    from .params import FCNParams
    from .segment import FLIPS, MAP_NAMES, area_bars, instances, predictor

    distance = bool(getattr(net, "distance", False))
    grid = dict(grid or (DISTANCE_CALIBRATION_GRID if distance else CALIBRATION_GRID))
    # A central window of each image bounds the time (h-maxima and watersheds of a
    # 3-megapixel field rescaled from small nuclei take seconds each, times the grid).
    pairs = [(img[_central(img.shape[0])], lab[_central(lab.shape[0])]) for img, lab in pairs]
    pairs = [(img[:, _central(img.shape[1])], lab[:, _central(lab.shape[1])]) for img, lab in pairs]
    seed_key = "h" if distance else "threshold"
    p = FCNParams()
    dev = next(net.parameters()).device
    net.eval()
    probs = []
    # Plain probabilities by default: the bundled thresholds were chosen on them, and a
    # recalibration on flip-averaged ones (which segment() uses by default) chose a lower
    # outline threshold that cost the held-out 8-bit folder 0.02 mAP (0.753 -> 0.731);
    # applied to averaged probabilities, these thresholds raised every folder.
    predict = predictor(net, flip_average)
    with torch.no_grad():
        for img, _ in pairs:
            probs.append(tiled_predict(predict, img, tile=p.window, overlap=p.overlap, multiple_of=net.stride,
                                       device=dev))
    truth = [lab for _, lab in pairs]
    maps = [dict(zip(MAP_NAMES, pr)) for pr in probs]
    scores: dict[tuple[float, float, float], float] = {}
    for thr in grid[seed_key]:
        # The h-maxima transform is the costly step, and depends on h alone.
        peaks = [distance_peaks(m["distance"], thr) if distance else None for m in maps]
        for fg in grid["foreground"]:
            # The smallest-object bar only removes objects: one watershed serves every bar.
            full = [instances(m, {seed_key: thr, "foreground": fg}, peaks=pk) for m, pk in zip(maps, peaks)]
            for ms in grid["min_size"]:
                bars = area_bars(ms, object_diameter)
                preds = [np.where(small_objects(f, bars["min_area"], bars["border_min_area"])[f], 0, f) for f in full]
                scores[(float(thr), float(fg), float(ms))] = round(evaluate(truth, preds).map, 4)
    thr, fg, ms = max(scores, key=scores.get)
    by_fg = {f: max(v for k, v in scores.items() if k[1] == f) for f in sorted({k[1] for k in scores})}
    # Then, with those, the dim-object filter (a fourth axis would quadruple the grid).
    bars = area_bars(ms, object_diameter)
    base = [instances(m, {seed_key: thr, "foreground": fg}, **bars) for m in maps]
    by_contrast = {float(c): round(evaluate(truth, [drop_dim_objects(b, img, c) for b, (img, _) in zip(base, pairs)]).map, 4)
                   for c in MIN_CONTRAST_GRID}
    contrast = max(by_contrast, key=by_contrast.get)
    return {seed_key: thr, "foreground": fg, "min_size": ms, "min_contrast": contrast,
            "chosen_on": f"{described or f'{len(pairs)} training images'} (mAP, grid {grid}, then min_contrast "
                         f"{MIN_CONTRAST_GRID})"
                         + (f", probabilities averaged over {len(FLIPS)} mirror images" if flip_average else ""),
            "map": by_fg, "map_by_min_contrast": by_contrast}


def calibration_pairs(pairs: Sequence, calibrate: int | Sequence[int]) -> list:
    """The training pairs the constants are calibrated on: the first ``calibrate``, or those indices.

    Raises
    ------
    InputError
        For an index outside the training images.
    """
    if isinstance(calibrate, (int, np.integer)):
        return list(pairs[: int(calibrate)])
    idx = [int(i) for i in calibrate]
    bad = [i for i in idx if not 0 <= i < len(pairs)]
    if bad:
        raise InputError(f"calibrate: image index {bad[0]} is outside the {len(pairs)} training images")
    return [pairs[i] for i in idx]


def recalibrate(path: str | Path, images: Any, labels: Any, *, object_diameter: float | None,
                calibrate: int | Sequence[int] = 12, device: Any = "cpu",
                grid: Mapping[str, Sequence[float]] | None = None, described: str | None = None) -> dict:
    """Run :func:`calibrate_thresholds` again for a trained model and rewrite its JSON.

    ``images`` / ``labels`` (and ``object_diameter``) must be those given to
    :func:`train`, in the same order, and ``calibrate`` the same: the first
    ``calibrate`` images, or those indices, are prepared and rescaled exactly as
    training did. ``grid`` and ``described``: as :func:`calibrate_thresholds`. The
    tensors are not touched.
    """
    from .._common.weights import read_metadata, sha256, weights_paths, write_metadata
    from .model import load_model

    pairs = calibration_pairs(prepare_pairs(images, labels), calibrate)
    if object_diameter is not None:
        pairs = rescale_to_diameter(pairs, object_diameter)
    fcn = load_model(path, device)
    thresholds = calibrate_thresholds(fcn.net, pairs, fcn.object_diameter, grid, described=described)
    tensor_path, json_path = weights_paths(path)
    meta = read_metadata(path)
    if meta.get("sha256") and meta["sha256"] != sha256(tensor_path):
        raise InputError(f"{json_path.name} does not describe {tensor_path.name}; not rewriting it")
    meta["thresholds"] = thresholds
    write_metadata(json_path, meta, overwrite=True)
    return thresholds


def _save(net, path: Path, metadata: Mapping[str, Any], overwrite: bool) -> Path:
    from .._common.weights import save_weights

    return save_weights(path, net.state_dict(), metadata, overwrite=overwrite)


def train(
    images: Any,
    labels: Any,
    *,
    output: str | Path,
    edge_weight: float = 5.0,
    edge_width: float = 2.0,
    steps: int = 1200,
    lr: float = 1e-3,
    batch_size: int = 8,
    crop: int = 128,
    width: float = 1.0,
    stride: int = 8,
    seed: int = 0,
    device: Any = "auto",
    channel: str | None = None,
    augment_params: AugmentParams = FCN_AUGMENT,
    validation: tuple[Any, Any] | None = None,
    validate_every: int = 0,
    data_description: Mapping[str, Any] | None = None,
    reproduce: str | None = None,
    overwrite: bool = False,
    report_every: int = 10,
    learning_rate: float | None = None,
    object_diameter: float | None = None,
    weights: Sequence[float] | None = None,
    calibrate: int | Sequence[int] = 0,
    calibration_described: str | None = None,
    distance: bool = False,
    distance_weight: float = 1.0,
) -> Generator[TrainingSnapshot, None, None]:
    """Train a GoogLeNet FCN from scratch on annotated images.

    Parameters
    ----------
    images : ndarray or sequence of ndarray
        2-D images (any real dtype; each normalised with percentiles 1 / 99.8), or a
        stack ``(N, H, W)``.
    labels : ndarray or sequence of ndarray
        Instance labels, one per image, same shapes.
    output : path
        Weights to write (``.safetensors`` + ``.json``); must not exist unless
        ``overwrite``. Checked before training starts.
    edge_weight : float
        Loss weight of edge pixels (1 = no over-weighting).
    edge_width : float
        Width in pixels of the edge band inside each object.
    steps, lr, batch_size, crop : int, float, int, int
        Optimiser steps, initial RMSprop learning rate (cosine-annealed to 2 % of it),
        crops per step, crop side (pixels; reduced to fit the smallest image).
    width, stride : float, int
        Network size (see :class:`~napari_kaizen.engines.fcn.model.GoogLeNetFCN`).
    seed : int
        Seeds weight initialisation and sampling: same data + seed, same weights.
    device : str
        ``'auto'``, ``'cpu'``, ``'cuda'``...
    channel : str, optional
        Which stain the images show (``'nuclei'``, ``'membrane'``), for the metadata.
    augment_params : AugmentParams
    validation : (images, labels), optional
        Held-out data scored (AP50, mAP, pixel accuracy) every ``validate_every``
        steps and at the end, for the log only (nothing is selected on it).
    data_description, reproduce : optional
        Stored in the metadata's ``training`` record.
    overwrite : bool
    report_every : int
    learning_rate : float, optional
        Another name for ``lr`` (the name the other engines use); wins when given.
    object_diameter : float, optional
        Bring every image to this median object diameter (pixels, from its labels)
        before training, so the model learns one object scale whatever the
        magnification of its training images; inference rescales to it too. Default:
        the images as they are (their median diameter is recorded).
    weights : sequence of float, optional
        Relative sampling weight of each image (default: in proportion to its area),
        e.g. to balance real against synthetic images.
    calibrate : int or sequence of int
        Choose the post-processing constants (:func:`calibrate_thresholds`: seed and
        outline thresholds, smallest object, dim-object filter) on this many of the
        training images (the first ones), or on the images of these indices, by mAP,
        and store them in the metadata (``thresholds``); 0 keeps the defaults. The
        edge weighting shifts where the summed cell probability crosses one half, so a
        model's own thresholds draw outlines closer to its annotators'.
    calibration_described : str, optional
        What the calibration images are, for the record (default: how many).
    distance : bool
        Add a distance-map output (ours, not the post's), trained with a logistic loss
        against each object's distance to its outline (1 at its centre); instances are
        then seeded at its h-maxima and split by a watershed, which separates touching
        nuclei that the edge band alone merges.
    distance_weight : float
        Weight of the distance loss beside the cross-entropy.

    Yields
    ------
    TrainingSnapshot
        Progress every ``report_every`` steps; the last has ``done=True`` and
        ``weights_path``.
    """
    import torch

    from .._common.device import choose_device
    from .model import ARCHITECTURE, CLASSES, GoogLeNetFCN

    lr = lr if learning_rate is None else learning_rate
    _check_number("steps", steps, 1, integer=True)
    _check_number("batch_size", batch_size, 1, integer=True)
    _check_number("crop", crop, 32, integer=True)
    _check_number("lr", lr, 0)
    _check_number("edge_weight", edge_weight, 1e-6)
    _check_number("edge_width", edge_width, 0.5)
    path = check_output(output, overwrite)
    pairs = prepare_pairs(images, labels)
    if object_diameter is not None:
        _check_number("object_diameter", object_diameter, 1)
        pairs = rescale_to_diameter(pairs, object_diameter)
    # Chosen now, so a bad index is refused before the training, not after it.
    to_calibrate = calibration_pairs(pairs, calibrate)
    val_pairs = prepare_pairs(*validation) if validation is not None else []
    dev = choose_device(device)
    try:
        net = GoogLeNetFCN(in_channels=1, n_classes=len(CLASSES), width=width, stride=stride, distance=distance)
    except ValueError as exc:
        raise InputError(f"cannot build the network: {exc}") from None
    crop = _fit_crop(pairs, crop, net.stride)
    diameter = float(object_diameter) if object_diameter is not None else training_diameter(pairs)
    torch.manual_seed(seed)
    net = GoogLeNetFCN(**net.config).to(dev)
    result = yield from _fit(
        net, pairs, steps=steps, lr=lr, batch_size=batch_size, crop=crop, edge_width=edge_width,
        edge_weight=edge_weight, seed=seed, dev=dev, augment_params=augment_params,
        validate=_validation_fn(val_pairs, diameter, edge_width), validate_every=validate_every,
        report_every=report_every, weights=weights, distance_weight=distance_weight,
    )
    thresholds = {}
    if to_calibrate:
        yield TrainingSnapshot(stage="calibrating", progress=1.0, message="calibrating the post-processing thresholds",
                               step=steps, total_steps=steps)
        thresholds = calibrate_thresholds(net, to_calibrate, diameter, described=calibration_described)
    meta = {
        "architecture": ARCHITECTURE,
        "config": dict(net.config),
        "classes": list(CLASSES),
        "object_diameter": round(diameter, 3),
        "normalization": {"percentiles": list(DEFAULT_PERCENTILES)},
        "channel": channel,
        "targets": {"edge_width": float(edge_width), "edge_weight": float(edge_weight)},
        **({"thresholds": thresholds} if thresholds else {}),
        "training": {
            "data": dict(data_description or {"images": len(pairs)}),
            "n_images": len(pairs),
            "image_shapes": [list(img.shape) for img, _ in pairs],
            # Six significant digits: weights per unit area are about 1e-7 (six decimals read 0).
            "sampling_weights": [float(f"{w:.6g}") for w in weights] if weights is not None else None,
            "steps": int(steps),
            "batch_size": int(batch_size),
            "crop": int(crop),
            "optimizer": "RMSprop(alpha=0.9, eps=1e-6, weight_decay=1e-5)",
            "lr": float(lr),
            "schedule": "cosine annealing to 0.02 * lr",
            "loss": "cross-entropy, edge pixels weighted by edge_weight"
                    + (f"; + {distance_weight:g} x logistic loss of the distance map" if distance else ""),
            "augment": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(augment_params).items()},
            "seed": int(seed),
            "device": str(dev),
            "torch": torch.__version__,
            "final_loss": result["final_loss"],
            "seconds": round(result["seconds"], 1),
            "validation": result["validation"],
            "reproduce": reproduce or "",
        },
    }
    saved = _save(net.cpu(), path, with_kind_keys(meta, default_input=INPUT_KIND), overwrite)
    yield TrainingSnapshot(
        stage="saved", progress=1.0, message=f"saved {saved.name}", step=steps, total_steps=steps,
        loss=result["final_loss"], validation=result["validation"], weights_path=saved, done=True,
    )


def _with_rehearsal(pairs, masks, share: float, *, channel: str, diameter: float, percentiles, crop: int):
    """``pairs`` and ``masks`` with the rehearsal fields added, and sampling weights.

    The weights make the synthetic fields ``share`` of the crops and the person's
    (checked) pixels the rest, whatever their areas. Returns ``(pairs, masks, weights,
    description)``.
    """
    # A field at least two crops wide once at the model's scale (whole cells are
    # larger than the nucleus diameter the generator is given, and shrink).
    side = max(REHEARSAL_FIELDS["shape"][0], 2 * int(crop))
    fields = {**REHEARSAL_FIELDS, "shape": (side, side)}
    images, labels, desc = synthetic_training_set(channel=channel, nucleus_diameter=float(diameter), **fields)
    synth = rescale_to_diameter(prepare_pairs(images, labels, percentiles=percentiles), diameter)
    real_area = sum(img.size if m is None else int(np.count_nonzero(m)) for (img, _), m in zip(pairs, masks))
    synth_area = sum(img.size for img, _ in synth)
    weights = [(1.0 - share) / real_area] * len(pairs) + [share / synth_area] * len(synth)
    return list(pairs) + synth, list(masks) + [None] * len(synth), weights, {"share": share, **desc}


def finetune(
    images: Any,
    labels: Any,
    *,
    model: Any = None,
    regions: Any = None,
    steps: int = 200,
    learning_rate: float = 2e-4,
    device: Any = "auto",
    output: str | Path | None = None,
    diameter: float | str | None = "auto",
    edge_weight: float | None = None,
    batch_size: int = 4,
    crop: int | None = None,
    seed: int = 0,
    freeze_batchnorm: bool = True,
    rehearsal: float = REHEARSAL_SHARE,
    start_share: float = FINETUNE_START_SHARE,
    overwrite: bool = False,
    report_every: int = 10,
    description: str | None = None,
    reproduce: str | None = None,
    lr: float | None = None,
) -> Generator[TrainingSnapshot, None, None]:
    """Fine-tune a trained FCN on a few (corrected) label images.

    The model is copied (the one passed in is left as it was), trained for ``steps``
    more RMSprop steps with the same targets as :func:`train` and the augmentation the
    model was trained with (its metadata's ``training.augment``; else the synthetic
    recipe's), a share of every batch rehearsing synthetic fields, and written to
    ``output`` with metadata that records what it was fine-tuned from.

    Parameters
    ----------
    images : ndarray or sequence of ndarray
        The image(s) the labels belong to (same channel as the model's).
    labels : ndarray or sequence of ndarray
        Instance labels, e.g. a labels layer after correction: complete everywhere, or
        inside ``regions``.
    model : FCNModel, path or 'bundled:NAME', optional
        Starting point; ``None`` means ``DEFAULT_MODEL``.
    regions : ndarray or sequence of (ndarray or None), optional
        Where the labels are complete (nonzero), one mask per image: only those pixels
        count in the loss (partial corrections). ``None``: everywhere.
    output : path
        Weights to write; must not exist unless ``overwrite``. Checked first.
    steps : int
    learning_rate : float
        Initial RMSprop learning rate (cosine-annealed); lower than for training from
        scratch so a few images adjust the model rather than overwrite it. ``lr`` is
        accepted as another name for it.
    device : str
    diameter : float or 'auto' or None
        Object diameter in ``images`` (pixels), as given to ``segment``: images and
        labels are rescaled to the model's ``object_diameter`` so the fine-tuned model
        keeps its scale. ``'auto'`` (default) measures it from the labels (of the
        objects inside ``regions`` when given), as Kaizen's
        and the U-Net's fine-tunes do (the widget's panel passes no diameter, and
        ``segment`` rescales to the model's scale by default); ``None``: already at the
        model's scale.
    edge_weight : float, optional
        Default: the model's own (metadata ``targets.edge_weight``).
    batch_size : int
    crop : int, optional
        Default: the model's training crop, reduced to fit the images.
    seed : int
    freeze_batchnorm : bool
        Keep batch-norm statistics fixed: a handful of crops from one image is too few
        to re-estimate them.
    rehearsal : float
        Share of the training crops taken from synthetic fields of the model's channel
        (``REHEARSAL_FIELDS``, at the model's object diameter) rather than from
        ``images``, in [0, 1); 0 trains on ``images`` alone. The default keeps one
        corrected frame from overwriting what the model knew (``REHEARSAL_SHARE``).
    start_share : float
        In [0, 1): the saved weights are this share of the starting model's plus the
        rest of the fine-tuned ones (:func:`~napari_kaizen.engines._common.training.average_with_start`,
        default :data:`FINETUNE_START_SHARE`); 0 saves the fine-tuned weights as trained.
    overwrite : bool
    report_every : int
    description : str, optional
        What the images are (e.g. which napari layers), stored in the metadata.
    reproduce : str, optional
        How to rerun this, stored in the metadata.

    Notes
    -----
    The call shape matches the shared fine-tune panel of the widgets
    (``finetune_fn(image, labels, *, model, steps, learning_rate, output, device,
    description)``), so ``fcn.finetune`` plugs in as is.

    Yields
    ------
    TrainingSnapshot
        Progress; the last has ``done=True`` and ``weights_path``.
    """
    import torch

    from .._common.device import choose_device
    from .model import FCNModel, load_model

    lr = learning_rate if lr is None else lr
    _check_number("steps", steps, 1, integer=True)
    _check_number("batch_size", batch_size, 1, integer=True)
    _check_number("learning_rate", lr, 0)
    _check_number("rehearsal", rehearsal, 0)
    if rehearsal >= 1:
        raise InputError(f"rehearsal must be a share in [0, 1) (0: your images only), got {rehearsal!r}")
    _check_number("start_share", start_share, 0)
    if start_share >= 1:
        raise InputError(f"start_share must be a share in [0, 1) (0: the fine-tuned weights as trained), "
                         f"got {start_share!r}")
    path = check_output(output, overwrite)
    # A loaded model is only read (its net is deep-copied below), never moved or changed:
    # the widget may be segmenting with it at the same time.
    base = model if isinstance(model, FCNModel) else load_model(model, "cpu")
    meta0 = base.metadata
    from .._common.training import check_regions

    pairs = prepare_pairs(images, labels, percentiles=base.percentiles)
    masks = check_regions(regions, [img.shape for img, _ in pairs])
    target = base.object_diameter
    scaled = []
    for (img, lab), mask in zip(pairs, masks):
        if isinstance(diameter, str) and diameter.strip().lower() == "auto":
            # Only the checked objects: labels outside a region are not the person's.
            seen = lab if mask is None else np.where(np.isin(lab, lab[mask]), lab, 0)
            d = training_diameter([(img, seen)])
        else:
            d = resolve_diameter(img, diameter)
        rs = rescale_for_model(img.shape, d, target)
        scaled.append((rs.to_model(img), resample_mask(lab, rs.model_shape)))
    masks = [resample_mask(m, img.shape) for m, (img, _) in zip(masks, scaled)]
    pairs = scaled
    tmeta = dict(meta0.get("targets", {}))
    edge_width = float(tmeta.get("edge_width", 2.0))
    edge_weight = float(tmeta.get("edge_weight", 5.0) if edge_weight is None else edge_weight)
    _check_number("edge_weight", edge_weight, 1e-6)
    crop = _fit_crop(pairs, crop or int(meta0.get("training", {}).get("crop", 128)), base.stride)
    dev = choose_device(device)
    net = copy.deepcopy(base.net).to(dev)
    net.freeze_batchnorm(freeze_batchnorm)
    # The base model's own augmentation (the real-nuclei model's zoom, contrast and
    # noise): with the synthetic recipe's flips and rolls only, one corrected frame of
    # a new source lowered the mAP of its other frames (docs/correction_loop.md).
    augment = trained_augment(meta0, FCN_AUGMENT)
    # What is trained on: the person's pairs, and the rehearsal fields beside them.
    fit_pairs, fit_masks, weights, rehearsed = pairs, masks, None, None
    if rehearsal > 0:
        fit_pairs, fit_masks, weights, rehearsed = _with_rehearsal(
            pairs, masks, float(rehearsal), channel=str(meta0.get("channel", "nuclei")), diameter=target,
            percentiles=base.percentiles, crop=crop,
        )
    result = yield from _fit(
        net, fit_pairs, steps=steps, lr=lr, batch_size=batch_size, crop=crop, edge_width=edge_width,
        edge_weight=edge_weight, seed=seed, dev=dev, augment_params=augment, report_every=report_every,
        regions=fit_masks, weights=weights,
    )
    net.freeze_batchnorm(False)
    average_with_start(net, base.net.state_dict(), float(start_share))
    meta = {k: v for k, v in meta0.items() if k not in ("sha256", "weights_file", "created", "format_version",
                                                            "napari_kaizen_version")}
    meta["targets"] = {"edge_width": edge_width, "edge_weight": edge_weight}
    meta["training"] = {
        "finetuned_from": base.source,
        "data": description or f"{len(pairs)} image(s) with corrected labels",
        "base_training": meta0.get("training", {}),
        "n_images": len(pairs),
        "image_shapes": [list(img.shape) for img, _ in pairs],
        "checked_fraction": [1.0 if m is None else round(float(m.mean()), 4) for m in masks],
        "n_objects": int(sum(len(np.unique(lab)) - 1 for _, lab in pairs)),
        "rehearsal": rehearsed,
        "start_share": float(start_share),
        "steps": int(steps),
        "batch_size": int(batch_size),
        "crop": int(crop),
        "optimizer": "RMSprop(alpha=0.9, eps=1e-6, weight_decay=1e-5)",
        "lr": float(lr),
        "schedule": "cosine annealing to 0.02 * lr",
        "freeze_batchnorm": bool(freeze_batchnorm),
        "augment": asdict(augment),
        "seed": int(seed),
        "device": str(dev),
        "torch": torch.__version__,
        "final_loss": result["final_loss"],
        "seconds": round(result["seconds"], 1),
        "reproduce": reproduce or "",
    }
    saved = _save(net.cpu(), path, with_kind_keys(meta, default_input=INPUT_KIND), overwrite)
    yield TrainingSnapshot(
        stage="saved", progress=1.0, message=f"saved {saved.name}", step=steps, total_steps=steps,
        loss=result["final_loss"], weights_path=saved, done=True,
    )
