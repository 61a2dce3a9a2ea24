"""Training the Kaizen VQ-VAE: generators of progress snapshots (the CLI is :mod:`.cli`).

The paper trains 500,000 steps of Adam at 1e-4 with batch 32 on patches of 40x40
(section 3.6). That is days on a CPU. This trainer keeps the loss (L1 on the
reconstruction of the central cell, plus the VQ commitment term), the batch size and
the optimiser, and makes a few thousand steps enough instead: a higher learning rate
with warm-up and cosine decay, more informative patches (see
:mod:`~napari_kaizen.engines.kaizen.dataset`) and a codebook that starts on encoder
outputs and restarts unused codes. Every choice is written into the weights' JSON.
"""

from __future__ import annotations

import math
import shlex
import sys
import time
from collections.abc import Generator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import InputError
from .._common.snapshots import TrainingSnapshot
from .dataset import PatchSampler, synthetic_training_set
from .params import INPUT_KIND

#: Default optimiser steps of :func:`train`.
DEFAULT_STEPS = 6000
#: Default peak learning rate (the paper's 1e-4 is for 500k steps; see module docstring).
DEFAULT_LR = 6e-4
#: Seeds of synthetic validation fields (never used for training nor for evaluation).
VALIDATION_SEED = 5_000


def _object_diameter(labels: Sequence[np.ndarray]) -> float:
    from .._common.scale import equivalent_diameters

    d = np.concatenate([equivalent_diameters(lab) for lab in labels]) if labels else np.zeros(0)
    return float(np.median(d)) if d.size else float("nan")


def train(
    images: Sequence[Any] | None = None,
    labels: Sequence[Any] | None = None,
    *,
    output: str | Path,
    synthetic: int = 0,
    steps: int = DEFAULT_STEPS,
    batch_size: int = 32,
    learning_rate: float = DEFAULT_LR,
    warmup_steps: int = 200,
    patch_size: int = 40,
    config: dict | None = None,
    device: str = "auto",
    seed: int = 0,
    threads: int | None = None,
    report_every: int = 50,
    validate_every: int = 500,
    overwrite: bool = False,
    reproduce: str | None = None,
    sampler_options: dict | None = None,
    checkpoint_every: int = 0,
    init: Any = None,
    object_diameter: float | None = None,
    augment: Any = None,
    real_share: float | None = None,
    synthetic_options: dict | None = None,
    data_description: dict | None = None,
    calibrate_mask: bool = True,
    regions: Any = None,
    freeze_codebook: bool = False,
    before_save: Any = None,
) -> Generator[TrainingSnapshot, None, Path]:
    """Train a Kaizen VQ-VAE and write its weights; yields progress.

    Parameters
    ----------
    images, labels : sequence of ndarray or of paths, optional
        Training images (any dtype; normalised with ``prepare_image``) and their
        instance labels; files and folders are read. May be omitted with
        ``synthetic``.
    output : path-like
        Where to write ``.safetensors`` and ``.json``.
    synthetic : int
        Also use this many synthetic fluorescent-nuclei fields (seeds 0, 1, ...).
    steps, batch_size : int
        Optimiser steps and patches per step (paper: batch 32).
    learning_rate : float
        Peak Adam learning rate, reached after ``warmup_steps`` and decayed along a
        cosine to 5 % of it.
    patch_size : int
        Patch side (paper: 40); a multiple of 8.
    config : dict, optional
        Overrides of :class:`~napari_kaizen.engines.kaizen.model.VQVAEConfig`.
    device : str
        ``'auto'``, ``'cpu'``, ``'cuda'``, ...
    seed : int
        Seeds weights, sampling and data order (same seed, same weights on one
        machine and torch version).
    threads : int, optional
        ``torch.set_num_threads`` for this run (use 1 beside other work).
    report_every, validate_every : int
        Steps between progress snapshots and validations.
    overwrite : bool
        Replace existing weights files.
    reproduce : str, optional
        Command line that reproduces this run (recorded in the metadata); defaults
        to the current process's command line.
    sampler_options : dict, optional
        Keyword arguments of :class:`~napari_kaizen.engines.kaizen.dataset.PatchSampler`.
    checkpoint_every : int
        Also write ``<output>_stepN`` weights every this many steps (0: never).
    init : str or path, optional
        Start from these weights (``'bundled:NAME'`` or a path) instead of random
        ones; their architecture and patch size are kept.
    object_diameter : float, optional
        Bring every annotated image to this median object diameter (pixels) before
        cutting patches, so the model learns one object scale whatever the
        magnification of its training images (inference rescales to it too). Default:
        ``init``'s, else the images are used as they are.
    augment : AugmentParams, optional
        Zoom and photometric augmentation of the patches (see
        :class:`~napari_kaizen.engines.kaizen.dataset.PatchSampler`).
    real_share : float, optional
        With both annotated images and ``synthetic`` fields: the share of patches cut
        from the annotated images (default: in proportion to their cells).
    synthetic_options : dict, optional
        Keyword arguments of :func:`~napari_kaizen.engines.kaizen.dataset.synthetic_training_set`
        (e.g. ``first_seed``, ``shape``, ``nucleus_diameter``).
    data_description : dict, optional
        Where the annotated images come from (stored in the metadata).
    regions : sequence of (ndarray or None), optional
        Per annotated image, where its labels are complete (partial corrections; see
        :class:`~napari_kaizen.engines.kaizen.dataset.PatchSampler`).
    freeze_codebook : bool
        Keep the codebook fixed (fine-tuning; see
        :meth:`~napari_kaizen.engines.kaizen.model.KaizenVQVAE.freeze_codebook`).
    calibrate_mask : bool
        Measure, after training, which fraction of a reconstructed cell's peak best
        outlines the annotated cells (the ``'cell'`` mask rule of
        :class:`~napari_kaizen.engines.kaizen.params.KaizenParams`), and store it as
        ``mask_fraction`` in the metadata.
    before_save : callable, optional
        ``before_save(model)``, a generator run on the trained network before its
        weights are written: it may yield progress and change the network (the
        fine-tune adds its learned outline rule); it returns a dict merged into the
        metadata's ``training`` record.

    Yields
    ------
    TrainingSnapshot
        Progress (step, loss, validation); the last has ``done=True`` and
        ``weights_path``.

    Returns
    -------
    Path
        The ``.safetensors`` file written.

    Raises
    ------
    InputError
        No data, images and labels that do not pair up, bad labels.
    """
    import torch

    from .._common.device import choose_device
    from .._common.training import check_output, seed_everything, train_loop, training_pairs
    from .._common.weights import save_weights
    from .model import ARCHITECTURE, KaizenVQVAE

    if steps < 1:
        raise InputError(f"steps must be at least 1, got {steps}")
    out_path = check_output(output, overwrite)
    if threads:
        torch.set_num_threads(int(threads))
    dev = choose_device(device)
    rng = seed_everything(seed)

    start_net = None
    inherited: dict = {}
    if init is not None:
        from .model import load_model

        km = load_model(init, dev)
        start_net = km.net
        # What was calibrated for the starting weights stays true for their fine-tune.
        inherited = {k: km.metadata[k] for k in ("outlines", "mask_fraction", "input_kind", "output_kind")
                     if k in km.metadata}
        patch_size = km.patch_size
        if object_diameter is None:
            object_diameter = km.object_diameter

    yield TrainingSnapshot(stage="data", progress=0.0, message="preparing training data", total_steps=steps)
    imgs, labs = training_pairs(images, labels, require_objects=False)
    from .._common.training import check_regions, resample_mask

    masks = check_regions(regions, [i.shape for i in imgs]) if regions is not None else None
    if object_diameter is not None and imgs:
        from .._common.scale import rescale_to_diameter

        pairs = rescale_to_diameter(zip(imgs, labs), object_diameter)
        imgs, labs = [p[0] for p in pairs], [p[1].astype(np.int32) for p in pairs]
        if masks is not None:
            masks = [resample_mask(m, i.shape) for m, i in zip(masks, imgs)]
    n_real = len(imgs)
    synth_params: list[dict] = []
    synth_opts = dict(synthetic_options or {})
    if synthetic:
        s_imgs, s_labs, synth_params = synthetic_training_set(int(synthetic), **synth_opts)
        imgs += s_imgs
        labs += s_labs
    if not imgs:
        raise InputError("no training data: give images and labels, or synthetic fields (--synthetic N)")
    options = dict(sampler_options or {})
    if real_share is not None and n_real and synthetic:
        cells = np.array([len(np.unique(lab)) - 1 for lab in labs], np.float64).clip(min=1)
        share = np.where(np.arange(len(labs)) < n_real, real_share / cells[:n_real].sum(),
                         (1.0 - real_share) / cells[n_real:].sum())
        options["image_weights"] = list(share)
    if augment is not None:
        options["augment"] = augment
    if masks is not None:
        options["regions"] = masks + [None] * (len(imgs) - len(masks))
    sampler = PatchSampler(imgs, labs, patch_size=patch_size, rng=rng, **options)
    if synthetic:
        v_opts = {k: v for k, v in synth_opts.items() if k != "first_seed"}
        v_imgs, v_labs, _ = synthetic_training_set(4, first_seed=VALIDATION_SEED, **v_opts)
    else:
        v_imgs, v_labs = imgs, labs
    val_sampler = PatchSampler(v_imgs, v_labs, patch_size=patch_size, rng=np.random.default_rng(seed + 1),
                               residual_prob=0.0, flips=False, gain_range=(1.0, 1.0))
    val_x, val_t = val_sampler.batch(256)
    val_has = val_t.reshape(len(val_t), -1).any(1)
    val_x_t = torch.from_numpy(val_x).to(dev)
    val_t_t = torch.from_numpy(val_t).to(dev)

    if start_net is not None:
        # The codebook comes with it (its ``initialized`` buffer is set), so it is
        # refined by the EMA updates, not re-drawn.
        model = start_net.to(dev)
        model.freeze_codebook(freeze_codebook)
    else:
        cfg = dict(config or {})
        cfg["patch_size"] = int(patch_size)
        model = KaizenVQVAE(cfg).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=learning_rate)

    def lr_factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        t = (step - warmup_steps) / max(1, steps - warmup_steps)
        return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)

    def loss_fn(net, batch):
        x, t = batch
        recon, commitment, _ = net(x)
        l1 = (recon - t).abs().mean()
        return l1 + commitment, {"l1": float(l1.detach()), "commitment": float(commitment.detach()),
                                 "restarts": float(net.codebook.last_restarts)}

    def validate(net) -> dict[str, float]:
        recon = net.predict(val_x_t)
        err = (recon - val_t_t).abs().flatten(1).mean(1).cpu().numpy()
        codes = net.codebook(net.encoder(val_x_t))[2]
        used = int(torch.unique(codes).numel())
        return {"val_l1": float(err.mean()), "val_l1_cells": float(err[val_has].mean()) if val_has.any() else 0.0,
                "val_l1_empty": float(err[~val_has].mean()) if (~val_has).any() else 0.0, "codes_used": used}

    mask_fraction: float | None = None
    start = time.perf_counter()
    if reproduce is None:
        reproduce = " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv])

    def metadata(done_steps: int, summary: dict) -> dict:
        from .._common.metadata import with_kind_keys

        return with_kind_keys({
            "architecture": ARCHITECTURE,
            "config": model.config.to_dict(),
            "patch_size": int(patch_size),
            "object_diameter": float(object_diameter) if object_diameter is not None else _object_diameter(labs),
            **inherited,
            **({"mask_fraction": mask_fraction} if mask_fraction is not None else {}),
            "normalization": {"percentiles": [1.0, 99.8]},
            "description": "Kaizen VQ-VAE: reconstructs the one cell touching the centre of a patch",
            "training": {
                "init": (getattr(init, "source", None) or str(init)) if init is not None else None,
                "codebook": "frozen" if freeze_codebook else "EMA updates + dead-code restarts",
                "checked_fraction": None if masks is None else [
                    1.0 if m is None else round(float(m.mean()), 4) for m in masks],
                "data": {
                    "n_images": n_real,
                    "images": dict(data_description) if data_description else None,
                    "rescaled_to_diameter": float(object_diameter) if object_diameter is not None and n_real else None,
                    "real_share": real_share,
                    "n_synthetic_fields": len(synth_params),
                    "synthetic": (
                        "napari_kaizen.engines.kaizen.dataset.synthetic_training_set("
                        + ", ".join(f"{k}={v!r}" for k, v in {"n_fields": len(synth_params), **synth_opts}.items())
                        + "): field k uses seed first_seed + k in random_params(np.random.default_rng(seed), "
                        "shape, nucleus_diameter, hard=(0.4, 0.6, 0.8, 1.0)[k % 4]) and synthesize(params, seed=seed); "
                        "channel 'nuclei'"
                    ) if synth_params else None,
                    "n_cells": int(sum(len(np.unique(lab)) - (lab == 0).any() for lab in labs)),
                    "validation": f"256 patches from synthetic seeds {VALIDATION_SEED}..{VALIDATION_SEED + 3}"
                    if synthetic else "256 patches from the training images",
                },
                "sampler": {"positive_fraction": sampler.positive_fraction, "near_fraction": sampler.near_fraction,
                            "residual_prob": sampler.residual_prob, "flips": sampler.flips,
                            "gain_range": list(sampler.gain_range), "bright_fraction": sampler.bright_fraction},
                "augment": asdict(augment) if augment is not None else None,  # JSON writes tuples as lists
                "loss": "L1(reconstruction, input x mask of the centre cell) + 0.25 commitment (EMA codebook)",
                "optimizer": "Adam",
                "learning_rate": learning_rate,
                "schedule": f"linear warm-up {warmup_steps} steps, cosine decay to 5%",
                "batch_size": int(batch_size),
                "steps": int(done_steps),
                "seed": int(seed),
                "device": str(dev),
                "threads": int(torch.get_num_threads()),
                "seconds": round(time.perf_counter() - start, 1),
                "final_loss": summary.get("final_loss"),
                "validation": summary.get("validation"),
                "torch_version": torch.__version__,
                "reproduce": reproduce,
            },
        }, default_input=INPUT_KIND)

    batches = sampler.batches(batch_size)
    loop = train_loop(
        model, batches, loss_fn, opt, steps=steps, device=dev, scheduler=sched,
        report_every=report_every, validate=validate, validate_every=validate_every, clip_grad_norm=1.0,
    )
    last_val: dict = {}
    while True:
        try:
            snap = next(loop)
        except StopIteration as stop:
            summary = stop.value
            break
        if snap.validation:
            last_val = dict(snap.validation)
        yield snap
        if checkpoint_every and snap.step % checkpoint_every == 0 and snap.step < steps:
            model.eval()
            ckpt = out_path.with_name(f"{out_path.stem}_step{snap.step}")
            save_weights(ckpt, model.state_dict(), metadata(snap.step, {"final_loss": snap.loss, "validation": last_val}),
                         overwrite=True)
            model.train()
    if calibrate_mask:
        yield TrainingSnapshot(stage="calibrating", progress=1.0, message="calibrating the cell mask level",
                               step=steps, total_steps=steps)
        cal_imgs, cal_labs = (imgs[:n_real], labs[:n_real]) if n_real else (imgs, labs)
        mask_fraction, _ = calibrate_mask_fraction(model, cal_imgs, cal_labs, patch_size=patch_size, seed=seed)
    extra: dict = {}
    if before_save is not None:
        model.eval()
        extra = (yield from before_save(model)) or {}
    model.freeze_codebook(False)
    meta = metadata(steps, summary)
    meta["training"].update(extra)
    path = save_weights(out_path, model.state_dict(), meta, overwrite=overwrite)
    yield TrainingSnapshot(
        stage="done", progress=1.0, message=f"wrote {path}", step=steps, total_steps=steps,
        loss=float(summary.get("final_loss", math.nan)), validation=dict(summary.get("validation") or {}),
        weights_path=path, done=True,
    )
    return path


def finetune(
    images: Any,
    labels: Any,
    *,
    model: Any = None,
    regions: Any = None,
    steps: int = 150,
    learning_rate: float = 2e-4,
    device: Any = "auto",
    output: str | Path | None = None,
    overwrite: bool = False,
    description: str | None = None,
    batch_size: int = 16,
    seed: int = 0,
    report_every: int = 10,
    reproduce: str | None = None,
) -> Generator[TrainingSnapshot, None, Path]:
    """Fine-tune a Kaizen VQ-VAE on corrected labels: centre-cell patches of the corrected image(s).

    The engine contract's ``finetune`` (the same call for every learned engine). The
    starting model is copied (the one passed in is left as it was), its codebook is
    frozen (the encoder and decoder adapt to the new cells around the codes the model
    has), the images are brought to the model's object diameter, and patches are cut
    as in training: centred on corrected cells (target: that cell only) and on
    background (target: nothing). Then the fine-tuned model decomposes the corrected
    image(s) and an outline rule is fitted to the corrected outlines and saved with
    the weights (:func:`learn_from_corrections`):
    the VQ-VAE decides which cells are found, the rule where their outlines run.

    Parameters
    ----------
    images, labels : ndarray or sequence of ndarray
        The image(s) and their corrected instance labels.
    model : str, path or KaizenModel, optional
        Starting point (default: the engine's ``DEFAULT_MODEL``).
    regions : ndarray or sequence of (ndarray or None), optional
        Where the labels are complete (nonzero), one mask per image: patches are drawn
        only there (a partial correction). ``None``: everywhere.
    steps, learning_rate, batch_size : int, float, int
        Adam steps (short warm-up, cosine decay), peak learning rate, patches per step.
    device : str
    output : path
        Weights to write (``.safetensors`` + ``.json``); refused up front if they exist
        and ``overwrite`` is False.
    overwrite : bool
    description : str, optional
        What the corrected data are (e.g. which napari layers), for the metadata.
    seed, report_every : int
    reproduce : str, optional

    Yields
    ------
    TrainingSnapshot
        Progress; the last has ``done=True`` and ``weights_path``.
    """
    import copy

    from .._common.training import check_output, check_regions, training_pairs
    from .model import KaizenModel, load_model

    check_output(output, overwrite)
    base = model if isinstance(model, KaizenModel) else load_model(model, "cpu")
    start = KaizenModel(copy.deepcopy(base.net).cpu(), base.metadata, base.source)
    imgs, labs = training_pairs(images, labels, require_objects=False)
    masks = check_regions(regions, [i.shape for i in imgs]) if regions is not None else None

    def outline_rule(net):
        return (yield from learn_from_corrections(net, base.metadata, imgs, labs, masks, seed=seed))

    return (yield from train(
        images, labels, output=output, steps=int(steps), batch_size=int(batch_size),
        learning_rate=float(learning_rate), warmup_steps=max(1, min(20, int(steps) // 5)), device=device,
        seed=seed, report_every=report_every, validate_every=0, overwrite=overwrite, reproduce=reproduce,
        init=start, regions=regions, freeze_codebook=True, calibrate_mask=False, before_save=outline_rule,
        data_description={"description": description or "corrected labels", "finetuned_from": base.source},
    ))


def learn_from_corrections(net, metadata: dict, images: Sequence[np.ndarray], labels: Sequence[np.ndarray],
                           regions: Sequence[np.ndarray | None] | None = None, *, seed: int = 0):
    """Fit an outline rule for ``net`` on corrected images and attach it; a generator.

    Each corrected image is decomposed by ``net`` (the outlines of its own masks, as
    the image-outline step receives them), the :func:`~.outlines.outline_features`
    of the pixels near the cells found are paired with whether the corrected labels
    put them inside a cell, and only checked pixels count (``regions``). Progress is
    yielded as :class:`~napari_kaizen.engines._common.snapshots.TrainingSnapshot`.

    Parameters
    ----------
    net : KaizenVQVAE
        The (fine-tuned) network; the rule is attached to it
        (:meth:`~napari_kaizen.engines.kaizen.model.KaizenVQVAE.attach_outline_rule`).
    metadata : dict
        Its metadata (the cell mask level of the decomposition).
    images : sequence of ndarray
        Normalised images (:func:`~napari_kaizen.engines._common.normalize.prepare_image`).
    labels : sequence of ndarray of int
        Their corrected labels.
    regions : sequence of (ndarray of bool or None), optional
        Where each image's labels are complete; ``None``: everywhere.
    seed : int

    Returns
    -------
    dict
        ``{'outline_rule': ...}`` for the weights' training record: pixels and cells
        used and the final loss, or why no rule was learned.
    """
    from .._common.snapshots import run_to_end
    from .model import KaizenModel
    from .outline_rule import LEARNING_RATE, MIN_CELLS, STEPS, fit_outline_rule
    from .outlines import FEATURES, outline_features
    from .params import KaizenParams
    from .segment import segment

    model = KaizenModel(net, metadata, source="<fine-tuning>")
    feats, inside, cells = [], [], 0
    regions = list(regions) if regions is not None else [None] * len(images)
    for k, (img, lab, region) in enumerate(zip(images, labels, regions)):
        yield TrainingSnapshot(stage="calibrating", progress=1.0,
                               message=f"learning the outlines: decomposing corrected image {k + 1}/{len(images)}")
        img, lab, region = np.asarray(img), np.asarray(lab), None if region is None else np.asarray(region, bool)
        if region is not None and not region.any():
            continue
        if region is not None:
            # Only around the checked region: a person who checked a corner of a large
            # field should not wait for the whole field's decomposition.
            sl = region_window(region, lab)
            img, lab, region = img[sl], lab[sl], region[sl]
        found = run_to_end(segment(img, KaizenParams(outline="model"), model=model, device="auto")).labels
        f, where = outline_features(found, img)
        checked = where if region is None else where & region
        feats.append(f[checked[where]])
        inside.append(lab[checked] > 0)
        cells += len(np.unique(lab[checked & (lab > 0)]))
    if not feats:
        feats, inside = [np.zeros((0, len(FEATURES)), np.float32)], [np.zeros(0, bool)]
    reason = None
    if 0 < cells < MIN_CELLS:
        # (No cell at all means no edge either: fit_outline_rule says so below.)
        reason = f"the checked labels hold {cells} cell(s) near the cells found; a rule needs at least {MIN_CELLS}"
    else:
        try:
            rule, loss = fit_outline_rule(feats, inside, seed=seed)
        except ValueError as exc:
            reason = str(exc)
    if reason is not None:
        kept = "; the starting model's rule is kept" if getattr(net, "outline_rule", None) is not None else ""
        yield TrainingSnapshot(stage="calibrating", progress=1.0, message=f"no outline rule learned: {reason}{kept}")
        return {"outline_rule": f"not learned: {reason}{kept}"}
    net.attach_outline_rule(rule)
    return {"outline_rule": {"pixels": int(sum(len(t) for t in inside)), "cells": int(cells),
                             "final_loss": round(loss, 4), "steps": STEPS, "learning_rate": LEARNING_RATE,
                             "features": list(FEATURES)}}


def region_window(region: np.ndarray, labels: np.ndarray) -> tuple[slice, slice]:
    """The part of an image to decompose for a checked ``region``: its bounding box
    grown by four typical cell diameters (at least 64 pixels), so every cell in it is
    decomposed with its neighbours around it as in the whole image."""
    from .._common.scale import median_diameter

    ys, xs = np.nonzero(region)
    near = np.unique(labels[region])
    d = median_diameter(np.where(np.isin(labels, near[near > 0]), labels, 0))
    pad = int(max(64, 4 * d)) if np.isfinite(d) else 64
    return (slice(max(0, int(ys.min()) - pad), int(ys.max()) + pad + 1),
            slice(max(0, int(xs.min()) - pad), int(xs.max()) + pad + 1))


def calibrate_mask_fraction(
    net,
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    *,
    patch_size: int,
    n_patches: int = 512,
    seed: int = 0,
    fractions: Sequence[float] = tuple(np.round(np.arange(0.05, 0.625, 0.025), 3)),
) -> tuple[float, dict[float, float]]:
    """The fraction of a reconstructed cell's peak that best outlines annotated cells.

    Patches centred on annotated cells (no augmentation) are reconstructed; for every
    candidate fraction ``f`` the mask ``cell > f * max(cell)`` is compared with the
    annotated mask of the centre cell, and the fraction with the highest mean IoU wins.
    This is the level the ``'cell'`` mask rule of the decomposition uses, so a model
    draws outlines where its annotators drew them.

    Returns
    -------
    fraction : float
    mean_iou : dict
        Mean IoU for every candidate fraction.
    """
    import torch

    sampler = PatchSampler(images, labels, patch_size=patch_size, rng=np.random.default_rng(seed + 7),
                           positive_fraction=1.0, residual_prob=0.0, flips=False, gain_range=(1.0, 1.0))
    xs, masks = [], []
    for _ in range(int(n_patches)):
        x, _, m = sampler.sample_with_mask()
        xs.append(x)
        masks.append(m)
    dev = next(net.parameters()).device
    was_training = net.training
    net.eval()
    with torch.no_grad():
        rec = net.predict(torch.from_numpy(np.stack(xs)[:, None]).to(dev)).clamp_min(0.0).cpu().numpy()[:, 0]
    net.train(was_training)
    gt = np.stack(masks)
    peak = rec.reshape(len(rec), -1).max(1)[:, None, None]
    scores = {}
    for f in fractions:
        pred = rec > float(f) * peak
        inter = (pred & gt).sum((1, 2))
        union = (pred | gt).sum((1, 2))
        scores[float(f)] = float(np.mean(np.where(union > 0, inter / np.maximum(union, 1), 1.0)))
    best = max(scores, key=scores.get)
    return float(best), scores
