"""ISL pretraining and few-image fine-tuning of the U-Net, as generators of TrainingSnapshot.

*Pretraining* (the paper's pretext task, seed 001 sections 2.2.1 / 2.3.1): from paired
synthetic fields, learn to predict a fluorescent channel (``'nuclei'``, DAPI-like, or
``'membrane'``, CellMask-like) from the label-free one, with an L1 loss.

*Fine-tuning* (section 2.3.2): append the two-layer head to the pretrained trunk and
train on one to ten annotated images towards a per-object distance map and a mask with
``MSE + lambda * BCEWithLogits``, lambda the initial ratio of the two. The sets are tiny,
so every crop is augmented (flips, rotations, elastic deformation, gain, gamma, blur and
noise: the training practice of seed 002).

Both write weights with the JSON metadata the developer guide asks for.
"""

from __future__ import annotations

import copy
import math
import shlex
import sys
import time
from collections.abc import Generator, Iterator, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import InputError
from .._common.augment import AugmentParams, augment
from .._common.metadata import with_kind_keys
from .._common.normalize import DEFAULT_PERCENTILES, prepare_image
from .._common.scale import rescale_for_model
from .._common.snapshots import TrainingSnapshot
from .._common.training import check_output, check_regions, resample_mask, training_pairs
from .model import ARCHITECTURE, ISLUNet, build_model
from .params import INPUT_KIND
from .targets import balance_lambda, segmentation_loss_parts, segmentation_targets

#: Fluorescent channels of the synthetic generator a model can learn to predict.
TARGETS = ("nuclei", "membrane")

#: Augmentation of fine-tuning crops: the defaults (flips, any rotation, elastic, noise).
FINETUNE_AUGMENT = AugmentParams()

#: Augmentation of pretraining crops: the set is large, so only lossless geometry and a
#: mild photometric jitter of the input (the paper used none).
PRETRAIN_AUGMENT = AugmentParams(
    rotate=False, elastic_prob=0.0, gain_range=(0.85, 1.15), gamma_range=(0.9, 1.1),
    offset_sd=0.02, noise_sd_range=(0.0, 0.02), blur_prob=0.1, blur_sigma_max=0.8,
)


def _command_line() -> str:
    return " ".join(shlex.quote(a) for a in ["python", *sys.argv]) if sys.argv and sys.argv[0] else ""


def _pad_to(arr: np.ndarray, size: int, *, labels: bool) -> np.ndarray:
    h, w = arr.shape[-2:]
    ph, pw = max(0, size - h), max(0, size - w)
    if not ph and not pw:
        return arr
    pad = [(0, 0)] * (arr.ndim - 2) + [(ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)]
    return np.pad(arr, pad, mode="constant" if labels else "reflect")


def _random_crop(rng: np.random.Generator, arrays: Sequence[np.ndarray], size: int) -> list[np.ndarray]:
    h, w = arrays[0].shape[-2:]
    y = int(rng.integers(0, h - size + 1))
    x = int(rng.integers(0, w - size + 1))
    return [a[..., y : y + size, x : x + size] for a in arrays]


# --------------------------------------------------------------------------- data


def synthetic_pairs(
    seeds: Sequence[int],
    target: str = "nuclei",
    *,
    shape: tuple[int, int] = (256, 256),
    hard: float = 0.5,
    nucleus_diameter: float = 18.0,
    label_free: str | None = None,
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Paired ``(label_free, fluorescence, nucleus_labels)`` fields, normalised.

    Field ``s`` is ``synthesize(random_params(default_rng(s), ...), seed=s)``, the
    developer guide's convention (training seeds from 0 up, evaluation from 10 000).

    Parameters
    ----------
    seeds : sequence of int
    target : {'nuclei', 'membrane'}
        Which fluorescent channel to return.
    shape : (int, int)
    hard : float
        ``random_params``' difficulty.
    nucleus_diameter : float
        Nominal diameter (each field jitters it).
    label_free : {'phase', 'brightfield', 'dic'}, optional
        Force one label-free modality (default: drawn per field).

    Returns
    -------
    list of (ndarray, ndarray, ndarray)
        ``prepare_image`` of the label-free and fluorescent channels, and the nucleus
        labels (int32) of each field.
    """
    from ...data import random_params, synthesize

    if target not in TARGETS:
        raise InputError(f"unknown ISL target '{target}': choose one of {', '.join(TARGETS)}")
    out = []
    for s in seeds:
        # real_world=False: the 0.1.0 fields the bundled U-Nets were trained on.
        p = random_params(np.random.default_rng(int(s)), shape=shape, hard=hard, nucleus_diameter=nucleus_diameter,
                          real_world=False)
        if label_free is not None:
            p = replace(p, label_free=label_free)
        f = synthesize(p, seed=int(s))
        fluo = f.nuclei if target == "nuclei" else f.membrane
        out.append((prepare_image(f.label_free, by_objects=False), prepare_image(fluo), f.nucleus_labels))
    return out


def pair_batches(
    pairs: Sequence[tuple[np.ndarray, np.ndarray]],
    *,
    rng: np.random.Generator,
    batch_size: int,
    crop: int,
    augment_params: AugmentParams = PRETRAIN_AUGMENT,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Endless batches ``(x (B,1,c,c), y (B,1,c,c))`` of random augmented crops of image pairs."""
    while True:
        xs, ys = [], []
        for _ in range(batch_size):
            x, y = pairs[int(rng.integers(len(pairs)))][:2]
            x, y = _random_crop(rng, [_pad_to(x, crop, labels=False), _pad_to(y, crop, labels=False)], crop)
            x, (y,) = augment(x, [y], rng=rng, params=augment_params, label_targets=(False,))
            xs.append(x[None])
            ys.append(y[None])
        yield np.stack(xs).astype(np.float32), np.stack(ys).astype(np.float32)


def segmentation_batches(
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    *,
    rng: np.random.Generator,
    batch_size: int,
    crop: int,
    augment_params: AugmentParams = FINETUNE_AUGMENT,
    regions: Sequence[np.ndarray | None] | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Endless batches ``(x (B,1,c,c), targets (B,2,c,c))`` of augmented crops.

    Geometry is applied to the image and the *labels*; the distance map and mask are
    computed from the deformed labels, so they are exact for every crop (a deformed
    distance map is no longer a distance map).

    With ``regions`` (one boolean mask or None per image; a partly corrected image),
    crops contain a checked pixel and the targets get a third channel, the checked
    mask, which :func:`~.targets.segmentation_loss_parts` uses as the pixels' weight.
    """
    imgs = [_pad_to(i, crop, labels=False) for i in images]
    labs = [_pad_to(lab, crop, labels=True) for lab in labels]
    masked = regions is not None and any(r is not None for r in regions)
    regs = [None if r is None else _pad_to(np.asarray(r, np.int32), crop, labels=True)
            for r in (regions or [None] * len(imgs))]
    checked = [None if r is None else np.flatnonzero(r) for r in regs]
    while True:
        xs, ts = [], []
        for _ in range(batch_size):
            k = int(rng.integers(len(imgs)))
            if regs[k] is None:
                x, lab = _random_crop(rng, [imgs[k], labs[k]], crop)
                reg = np.ones_like(lab)
            else:
                x, lab, reg = _crop_around(rng, [imgs[k], labs[k], regs[k]], crop, checked[k])
            x, (lab, reg) = augment(x, [lab, reg], rng=rng, params=augment_params, label_targets=(True, True))
            xs.append(x[None])
            t = segmentation_targets(lab)
            ts.append(np.concatenate([t, (reg > 0)[None].astype(t.dtype)]) if masked else t)
        yield np.stack(xs).astype(np.float32), np.stack(ts).astype(np.float32)


def _crop_around(rng: np.random.Generator, arrays: Sequence[np.ndarray], size: int, pixels: np.ndarray
                 ) -> list[np.ndarray]:
    """A random ``size`` crop of ``arrays`` that contains a random one of ``pixels`` (flat indices)."""
    h, w = arrays[0].shape[-2:]
    y, x = divmod(int(pixels[int(rng.integers(pixels.size))]), w)
    y0 = int(rng.integers(max(0, y - size + 1), min(y, h - size) + 1))
    x0 = int(rng.integers(max(0, x - size + 1), min(x, w - size) + 1))
    return [a[..., y0 : y0 + size, x0 : x0 + size] for a in arrays]


# --------------------------------------------------------------------------- helpers


def _metadata(net: ISLUNet, **extra: Any) -> dict[str, Any]:
    meta = {
        "architecture": ARCHITECTURE,
        "config": dict(net.config),
        "normalization": {"percentiles": list(DEFAULT_PERCENTILES)},
        "input": "label-free (phase contrast, bright field or DIC), one channel",
        "task": "segmentation" if net.segmentation else "fluorescence",
    }
    meta.update(extra)
    return with_kind_keys(meta, default_input=INPUT_KIND)


def _optimizer(net, learning_rate: float, steps: int):
    import torch

    opt = torch.optim.Adam(net.parameters(), lr=learning_rate)
    warm = max(1, min(50, steps // 20))
    # Short linear warm-up (Adam's first steps on a fresh head are large), then cosine.
    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        t = (step - warm) / max(1, steps - warm)
        return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def _wrap_training(gen: Generator, device) -> Generator:
    """Turn torch's device errors into one-line messages."""
    from ...errors import DeviceError

    try:
        result = yield from gen
    except RuntimeError as exc:
        if "out of memory" in str(exc).lower():
            raise DeviceError(
                f"out of memory on {device} while training: lower batch_size or crop, or use device 'cpu'"
            ) from None
        raise
    return result


# --------------------------------------------------------------------------- pretraining


def pretrain(
    *,
    target: str = "nuclei",
    n_fields: int = 160,
    field_shape: tuple[int, int] = (256, 256),
    steps: int = 3000,
    batch_size: int = 8,
    crop: int = 128,
    learning_rate: float = 2e-3,
    seed: int = 0,
    val_fields: int = 8,
    validate_every: int = 250,
    config: dict[str, Any] | None = None,
    device: Any = "auto",
    output: str | Path | None = None,
    overwrite: bool = False,
    reproduce: str | None = None,
) -> Generator[TrainingSnapshot, None, Any]:
    """Pretrain a U-Net by In-Silico Labelling: label-free -> fluorescence, L1 loss.

    Parameters
    ----------
    target : {'nuclei', 'membrane'}
        The fluorescent channel to predict (DAPI-like or CellMask-like).
    n_fields : int
        Training fields (seeds ``seed .. seed + n_fields - 1``).
    field_shape : (int, int)
        Size of each synthetic field.
    steps, batch_size, crop, learning_rate
        Adam steps, crops per step, crop side (multiple of 16), peak learning rate.
    seed : int
        First training seed; also seeds the sampler and the initial weights.
    val_fields : int
        Held-out fields (seeds from 10 000) on which PCC is reported.
    validate_every : int
        Steps between validations (0: only at the end).
    config : dict, optional
        U-Net constructor arguments (see :data:`~.model.DEFAULT_CONFIG`).
    device : str or torch.device
    output : path, optional
        Where to write ``.safetensors`` + ``.json``.
    overwrite : bool
    reproduce : str, optional
        Command line recorded in the metadata (default: this process's).

    Yields
    ------
    TrainingSnapshot
        ``validation`` holds ``{'pcc': mean PCC}`` when a validation ran; the last
        snapshot has ``done=True`` and ``weights_path``.

    Returns
    -------
    UNetModel
    """
    import torch

    from .._common.device import choose_device
    from .._common.training import seed_everything, train_loop
    from .model import UNetModel

    if target not in TARGETS:
        raise InputError(f"unknown ISL target '{target}': choose one of {', '.join(TARGETS)}")
    if crop % 16:
        raise InputError(f"crop must be a multiple of 16 (the U-Net's stride), got {crop}")
    # Refused before training, not after, when the weights would overwrite a file.
    check_output(output, overwrite, required=False)
    dev = choose_device(device)
    rng = seed_everything(seed)
    yield TrainingSnapshot(stage="data", progress=0.0, message=f"synthesising {n_fields} training fields",
                           total_steps=steps)
    train = synthetic_pairs(range(seed, seed + n_fields), target, shape=field_shape)
    val = synthetic_pairs(range(10_000, 10_000 + val_fields), target, shape=field_shape)
    # Median equivalent diameter of every training nucleus: the scale the model learns.
    diam = float(np.median(np.concatenate([_diameters(lab) for _, _, lab in train])))
    net = build_model({**(config or {}), "segmentation": False}).to(dev)

    def loss_fn(model, batch):
        x, y = batch
        loss = torch.nn.functional.l1_loss(model(x), y)
        return loss, {"l1": float(loss.detach())}

    def validate(model):
        return {"pcc": float(np.mean(predicted_pcc(model, val, dev)))}

    opt, sched = _optimizer(net, learning_rate, steps)
    batches = pair_batches(train, rng=rng, batch_size=batch_size, crop=crop)
    start = time.perf_counter()
    summary = yield from _wrap_training(
        train_loop(net, batches, loss_fn, opt, steps=steps, device=dev, scheduler=sched,
                   validate=validate, validate_every=validate_every, report_every=5),
        dev,
    )
    meta = _metadata(
        net,
        target=target,
        object_diameter=diam,
        training={
            "kind": "isl_pretraining",
            "data": f"{n_fields} synthetic fields {field_shape[0]}x{field_shape[1]} (random_params, hard=0.5), "
            f"seeds {seed}..{seed + n_fields - 1}; label-free -> {target} channel",
            "loss": "L1",
            "steps": steps, "batch_size": batch_size, "crop": crop, "learning_rate": learning_rate,
            "optimizer": "Adam, warm-up + cosine", "seed": seed,
            "augmentation": asdict(PRETRAIN_AUGMENT),
            "final_loss": summary["final_loss"], "seconds": round(time.perf_counter() - start, 1),
            "validation": {"pcc_mean": summary["validation"].get("pcc"),
                           "fields": f"{val_fields} held-out fields, seeds 10000..{10_000 + val_fields - 1}"},
            "reproduce": reproduce or _command_line(),
        },
    )
    weights_path = None
    if output is not None:
        from .._common.weights import save_weights

        weights_path = save_weights(output, net.state_dict(), meta, overwrite=overwrite)
    model = UNetModel(net=net.eval(), metadata=meta, device=dev, source=str(weights_path or "in memory"))
    yield TrainingSnapshot(
        stage="done", progress=1.0,
        message=f"pretrained ({target}); PCC {summary['validation'].get('pcc', float('nan')):.3f}",
        step=steps, total_steps=steps, loss=summary["final_loss"], validation=summary["validation"],
        weights_path=weights_path, done=True,
    )
    return model


def _diameters(labels: np.ndarray) -> np.ndarray:
    from .._common.scale import equivalent_diameters

    return equivalent_diameters(labels)


def predicted_pcc(model, pairs, device) -> list[float]:
    """PCC between the predicted and the true fluorescence of each ``(x, y, ...)`` pair."""
    import torch

    from ...metrics import pcc

    net = model.net if hasattr(model, "net") else model
    was_training = net.training
    net.eval()
    out = []
    with torch.inference_mode():
        for x, y, *_ in pairs:
            h, w = x.shape
            ph, pw = (-h) % 16, (-w) % 16
            xin = np.pad(x, ((0, ph), (0, pw)), mode="reflect")
            pred = net(torch.from_numpy(xin)[None, None].to(device))[0, 0, :h, :w].float().cpu().numpy()
            out.append(pcc(pred, y))
    net.train(was_training)
    return out


# --------------------------------------------------------------------------- fine-tuning


def _rescale_pair(img: np.ndarray, lab: np.ndarray, factor: float) -> tuple[np.ndarray, np.ndarray]:
    from skimage.transform import resize

    if factor == 1.0:
        return img, lab
    shape = tuple(max(16, int(round(s * factor))) for s in img.shape)
    img2 = resize(img, shape, order=1, mode="reflect", anti_aliasing=factor < 1, preserve_range=True)
    lab2 = resize(lab, shape, order=0, mode="edge", anti_aliasing=False, preserve_range=True)
    return img2.astype(np.float32), lab2.astype(np.int32)


def initial_lambda(net, batches: Iterator, device, n_batches: int = 4) -> tuple[float, float, float]:
    """Measure ``(lambda, mse0, bce0)`` on a few batches before the first step.

    The model runs as it will train (batch-norm in training mode); its batch-norm
    running statistics are restored afterwards, so measuring changes nothing.
    """
    import torch

    state = copy.deepcopy({k: v for k, v in net.state_dict().items() if "running" in k or "num_batches" in k})
    was_training = net.training
    net.train()
    mses, bces = [], []
    with torch.no_grad():
        for _ in range(n_batches):
            x, t = next(batches)
            out = net(torch.from_numpy(x).to(device))
            mse, bce = segmentation_loss_parts(out, torch.from_numpy(t).to(device))
            mses.append(float(mse))
            bces.append(float(bce))
    net.load_state_dict(state, strict=False)
    net.train(was_training)
    mse0, bce0 = float(np.mean(mses)), float(np.mean(bces))
    return balance_lambda(mse0, bce0), mse0, bce0


def finetune(
    images: np.ndarray | Sequence[np.ndarray],
    labels: np.ndarray | Sequence[np.ndarray],
    *,
    model: Any = "bundled:unet_isl_nuclei",
    regions: Any = None,
    steps: int = 300,
    learning_rate: float = 1e-3,
    batch_size: int = 4,
    crop: int = 128,
    seed: int = 0,
    lam: float | str = "auto",
    augment_params: AugmentParams = FINETUNE_AUGMENT,
    config: dict[str, Any] | None = None,
    device: Any = "auto",
    output: str | Path | None = None,
    overwrite: bool = False,
    description: str | None = None,
    reproduce: str | None = None,
) -> Generator[TrainingSnapshot, None, Any]:
    """Fine-tune a U-Net on a few annotated images to a distance map + mask.

    Parameters
    ----------
    images : ndarray (H, W) or sequence of them
        Label-free images (any real dtype; normalised like at inference).
    labels : ndarray (H, W) or sequence of them
        Instance labels of the same shapes (0 background, 1..N objects).
    model : str, path, UNetModel or None
        Starting point. An ISL (fluorescence) model gets the two-layer head appended
        (the paper's transfer); a segmentation model is trained further (fine-tuning on
        a correction); ``None`` or ``'scratch'`` starts from random weights (the
        paper's baseline), with ``config``.
    regions : ndarray or sequence of (ndarray or None), optional
        Where the labels are complete (nonzero), one mask per image: only those pixels
        count in the loss (a partial correction). ``None``: everywhere.
    steps, learning_rate, batch_size, crop
        Adam steps, peak learning rate, crops per step, crop side (multiple of 16).
    seed : int
        Seeds the sampler, the augmentation and any fresh weights.
    lam : float or 'auto'
        Weight of the BCE term; ``'auto'`` measures the paper's initial ratio.
    augment_params : AugmentParams
        Augmentation of every crop (default: flips, rotations, elastic, noise).
    config : dict, optional
        U-Net constructor arguments when starting from scratch.
    device : str or torch.device
    output : path, optional
        Where to write ``.safetensors`` + ``.json`` (an existing file is refused
        before training starts, unless ``overwrite``).
    overwrite : bool
    description : str, optional
        What the training images are, for the metadata.
    reproduce : str, optional
        Command line recorded in the metadata.

    Yields
    ------
    TrainingSnapshot
        Progress with the smoothed loss and its ``mse`` / ``bce`` parts; the last has
        ``done=True`` and ``weights_path`` (``None`` without ``output``).

    Returns
    -------
    UNetModel
        The fine-tuned model (eval mode).

    Raises
    ------
    InputError
        Bad images or labels (one line), a crop that is not a multiple of 16.
    WeightsError
        Starting weights missing or not a U-Net.
    OverwriteError
        ``output`` exists and ``overwrite`` is False.
    """

    from .._common.device import choose_device
    from .._common.training import seed_everything, train_loop
    from .model import UNetModel, load_model

    if crop % 16 or crop < 32:
        raise InputError(f"crop must be a multiple of 16 and at least 32, got {crop}")
    if int(steps) < 1:
        raise InputError(f"steps must be at least 1, got {steps}")
    if not (isinstance(learning_rate, (int, float)) and 0 < float(learning_rate) < 1):
        raise InputError(f"learning_rate must be a number between 0 and 1, got {learning_rate!r}")
    # Refused before training, not after, when the weights would overwrite a file.
    check_output(output, overwrite, required=False)
    dev = choose_device(device)
    rng = seed_everything(seed)

    scratch = model is None or (isinstance(model, str) and model.strip().lower() == "scratch")
    if scratch:
        base_meta: dict[str, Any] = {}
        net = build_model({**(config or {}), "segmentation": True})
        init = {"kind": "random", "seed": seed}
    else:
        base = load_model(model, device=dev)
        base_meta = base.metadata
        src = copy.deepcopy(base.net).cpu()
        net = src if src.segmentation else src.with_head()
        init = {
            "kind": "segmentation" if src.segmentation else "isl",
            "weights": base.source,
            "sha256": base_meta.get("sha256"),
            "target": base_meta.get("target"),
        }
    net = net.to(dev)
    percentiles = tuple(base_meta.get("normalization", {}).get("percentiles", DEFAULT_PERCENTILES))
    imgs, labs = training_pairs(images, labels, percentiles=percentiles, by_objects=False)
    masks = check_regions(regions, [i.shape for i in imgs])

    # Train at the base model's object scale, so the pretrained features see objects of
    # the size they learned (the same rescaling segment() applies at inference).
    measured = float(np.median(np.concatenate([_diameters(lab) for lab in labs])))
    model_d = base_meta.get("object_diameter")
    factor = rescale_for_model(imgs[0].shape, measured, model_d).factor if model_d else 1.0
    if factor != 1.0:
        pairs = [_rescale_pair(i, lab, factor) for i, lab in zip(imgs, labs)]
        imgs, labs = [p[0] for p in pairs], [p[1] for p in pairs]
        masks = [resample_mask(m, i.shape) for m, i in zip(masks, imgs)]
    object_diameter = float(np.median(np.concatenate([_diameters(lab) for lab in labs])))

    batches = segmentation_batches(imgs, labs, rng=rng, batch_size=batch_size, crop=crop,
                                   augment_params=augment_params, regions=masks)
    if lam == "auto":
        lam_value, mse0, bce0 = initial_lambda(net, batches, dev)
    else:
        lam_value, mse0, bce0 = float(lam), math.nan, math.nan
    n_objects = int(sum(np.count_nonzero(np.unique(lab)) for lab in labs))
    yield TrainingSnapshot(
        stage="start", progress=0.0, total_steps=steps,
        message=f"{len(imgs)} image(s), {n_objects} objects; lambda {lam_value:.3g} "
        f"(MSE0 {mse0:.3g} / BCE0 {bce0:.3g})",
        components={"lambda": lam_value, "mse0": mse0, "bce0": bce0},
    )

    def loss_fn(m, batch):
        x, t = batch
        mse, bce = segmentation_loss_parts(m(x), t)
        return mse + lam_value * bce, {"mse": float(mse.detach()), "bce": float(bce.detach())}

    opt, sched = _optimizer(net, float(learning_rate), int(steps))
    start = time.perf_counter()
    summary = yield from _wrap_training(
        train_loop(net, batches, loss_fn, opt, steps=int(steps), device=dev, scheduler=sched, report_every=5),
        dev,
    )
    meta = _metadata(
        net,
        target=base_meta.get("target", "nuclei"),
        object_diameter=object_diameter,
        postprocess={"h": 0.12, "mask_threshold": 0.5},
        training={
            "kind": "finetune",
            "init": init,
            "data": description or f"{len(imgs)} annotated image(s), {n_objects} objects",
            "images": len(imgs), "objects": n_objects,
            "checked_fraction": [1.0 if m is None else round(float(m.mean()), 4) for m in masks],
            "rescaled_by": factor,
            "loss": "MSE(distance) + lambda * BCEWithLogits(mask)",
            "lambda": lam_value, "mse0": mse0, "bce0": bce0,
            "steps": int(steps), "batch_size": batch_size, "crop": crop, "learning_rate": float(learning_rate),
            "optimizer": "Adam, warm-up + cosine", "seed": seed,
            "augmentation": asdict(augment_params),
            "final_loss": summary["final_loss"], "seconds": round(time.perf_counter() - start, 1),
            "reproduce": reproduce or _command_line(),
        },
    )
    weights_path = None
    if output is not None:
        from .._common.weights import save_weights

        weights_path = save_weights(output, net.state_dict(), meta, overwrite=overwrite)
    result = UNetModel(net=net.eval(), metadata=meta, device=dev, source=str(weights_path or "in memory"))
    yield TrainingSnapshot(
        stage="done", progress=1.0, message=f"fine-tuned: loss {summary['final_loss']:.4g}"
        + (f", saved {weights_path.name}" if weights_path else ""),
        step=int(steps), total_steps=int(steps), loss=summary["final_loss"], weights_path=weights_path, done=True,
    )
    return result


__all__ = [
    "FINETUNE_AUGMENT",
    "PRETRAIN_AUGMENT",
    "TARGETS",
    "finetune",
    "initial_lambda",
    "pair_batches",
    "predicted_pcc",
    "pretrain",
    "segmentation_batches",
    "synthetic_pairs",
]
