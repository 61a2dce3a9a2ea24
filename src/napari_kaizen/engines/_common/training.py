"""What every engine's training shares: set-up checks and the loop.

Each engine supplies what differs (a batch source and a loss); this module owns what is
the same: refusing an output that exists before any work (:func:`check_output`),
reading the checked regions of partial corrections (:func:`check_regions`), and the
loop (:func:`train_loop`): device moves, optimiser steps, a smoothed loss, periodic
validation and cancellation by closing the generator.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Generator, Iterator, Mapping
from typing import Any

import numpy as np

from ...errors import InputError, OverwriteError
from .snapshots import TrainingSnapshot


def check_output(output: Any, overwrite: bool, *, required: bool = True):
    """The ``.safetensors`` path to write, checked before any training.

    Raises
    ------
    InputError
        No path (when ``required``), ``'bundled:NAME'``, or a folder that does not exist.
    OverwriteError
        The ``.safetensors`` or ``.json`` exists and ``overwrite`` is False.
    """
    from .weights import weights_paths

    if output is None or str(output).strip() == "":
        if not required:
            return None
        raise InputError("no output path was given: name the weights file to write (e.g. my_model.safetensors)")
    if str(output).startswith("bundled:"):
        raise InputError("output must be a file path, not 'bundled:NAME' (bundled weights are never replaced)")
    tensor_path, json_path = weights_paths(output)
    if not tensor_path.parent.is_dir():
        raise InputError(f"folder {tensor_path.parent} does not exist: create it or choose another output path")
    if not overwrite:
        for path in (tensor_path, json_path):
            if path.exists():
                raise OverwriteError(f"{path} already exists; not overwriting it (choose another output, "
                                     "or overwrite=True / --overwrite)")
    return tensor_path


def check_labels(labels: Any, shape: tuple[int, ...] | None = None, *, name: str = "labels") -> np.ndarray:
    """An instance label image (2-D, non-negative integer ids) as int32, or a one-line InputError.

    Parameters
    ----------
    labels : array_like
    shape : tuple, optional
        The image's shape, which the labels must have.
    name : str
        How the message names the labels (e.g. ``'labels 2'``).
    """
    arr = np.asarray(labels)
    if arr.ndim != 2:
        raise InputError(f"{name} must be a 2-D instance label image (H, W), got shape {tuple(arr.shape)}")
    if arr.dtype.kind == "b":
        raise InputError(f"{name} is a boolean mask: instance labels (0 background, 1..N objects) are needed")
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.all(np.mod(arr, 1) == 0):
            raise InputError(f"{name} has non-integer values (dtype {arr.dtype}): expected integer object ids")
    elif arr.dtype.kind not in "iu":
        raise InputError(f"{name} has dtype {arr.dtype}: expected integer object ids (0 = background)")
    if arr.size and arr.min() < 0:
        raise InputError(f"{name} has negative values: expected object ids >= 0 (0 = background)")
    if arr.size and arr.max() > np.iinfo(np.int32).max:
        raise InputError(f"{name} has ids above {np.iinfo(np.int32).max}: relabel the objects 1..N")
    if shape is not None and tuple(arr.shape) != tuple(shape):
        raise InputError(f"{name} has shape {tuple(arr.shape)} but its image has {tuple(shape)}: they must match")
    return arr.astype(np.int32, copy=False)


def as_list(items: Any, what: str) -> list[np.ndarray]:
    """One 2-D array, a stack, a sequence of arrays, or files / folders, as a list of arrays."""
    from pathlib import Path

    if items is None:
        return []
    if isinstance(items, np.ndarray) or (hasattr(items, "__array__") and not isinstance(items, (list, tuple))):
        arr = np.asarray(items)
        return [arr] if arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] in (3, 4)) else list(arr)
    items = list(items)
    if items and all(isinstance(i, (str, Path)) for i in items):
        from ...io.images import find_images, read_image

        try:
            files = find_images(items)
        except FileNotFoundError as exc:
            raise InputError(f"{what}: {exc}") from None
        return [read_image(f) for f in files]
    return [np.asarray(i) for i in items]


def training_pairs(images: Any, labels: Any, *, percentiles: tuple[float, float] | None = None,
                   require_objects: bool = True, by_objects: bool = True) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Normalised images and checked labels, paired one to one (every engine's training set-up).

    Parameters
    ----------
    images, labels : array, sequence of arrays, or files / folders
    percentiles : (float, float), optional
        Normalisation percentiles (the model's); default the package's.
    require_objects : bool
        Refuse label images that hold no object at all.
    by_objects : bool
        Nucleus images: a bright-field one is turned round
        (:func:`~.normalize.bright_objects`) and a sparse field normalised by its
        bright objects (:func:`~.normalize.normalize_percentile`); False for
        label-free images, as the engine reads them when it segments.

    Raises
    ------
    InputError
        Different numbers of images and label images, a bad image or label image (its
        own one-line reason, with its number), or no object anywhere.
    """
    from .normalize import DEFAULT_PERCENTILES, bright_objects, prepare_image

    imgs, labs = as_list(images, "images"), as_list(labels, "labels")
    if len(imgs) != len(labs):
        raise InputError(f"{len(imgs)} image(s) but {len(labs)} label image(s): give one label image per image")
    out_i, out_l = [], []
    for k, (img, lab) in enumerate(zip(imgs, labs)):
        try:
            # A nucleus model learns bright nuclei: a corrected bright-field image is
            # turned round as its segmentation was.
            x = prepare_image(bright_objects(img) if by_objects else img,
                              percentiles=tuple(percentiles or DEFAULT_PERCENTILES), by_objects=by_objects)
        except InputError as exc:
            raise InputError(f"training image {k + 1}: {exc}") from None
        out_i.append(x)
        out_l.append(check_labels(lab, x.shape, name=f"labels {k + 1}"))
    if require_objects and imgs and not any(lab.any() for lab in out_l):
        raise InputError("the label images hold no objects: annotate at least one object to train on")
    if require_objects and not imgs:
        raise InputError("no training images were given: give at least one image with its labels")
    return out_i, out_l


def check_regions(regions: Any, shapes: list[tuple[int, ...]]) -> list[np.ndarray | None]:
    """One boolean "checked" mask (or None: all checked) per training image.

    A person who corrected part of an image marks where the labels are now complete:
    only those pixels teach anything; the rest of the image is context.

    Parameters
    ----------
    regions : None, array or sequence of (array or None)
        ``None``: every image is checked everywhere. Otherwise one mask per image
        (nonzero = checked), of that image's shape.
    shapes : list of tuple
        The images' shapes.

    Raises
    ------
    InputError
        A different number of masks and images, a shape mismatch, or an empty mask.
    """
    if regions is None:
        return [None] * len(shapes)
    items = [regions] if isinstance(regions, np.ndarray) and regions.ndim == 2 else list(regions)
    if len(items) != len(shapes):
        raise InputError(f"{len(items)} region mask(s) for {len(shapes)} image(s): give one per image (or None)")
    out: list[np.ndarray | None] = []
    for k, (region, shape) in enumerate(zip(items, shapes)):
        if region is None:
            out.append(None)
            continue
        mask = np.asarray(region)
        if mask.shape != tuple(shape):
            raise InputError(f"region {k} has shape {mask.shape} but its image has {tuple(shape)}: they must match")
        mask = mask.astype(bool) if mask.dtype.kind in "biuf" else None
        if mask is None or not mask.any():
            raise InputError(f"region {k} marks no pixel as checked: paint the corrected area (nonzero) or leave "
                             "the region out")
        out.append(mask)
    return out


def read_training_files(images: list[str] | None, labels: list[str] | None, regions: list[str] | None = None
                        ) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray] | None]:
    """Read ``--images`` / ``--labels`` / ``--regions`` files of ``kaizen train ENGINE`` (paired in order).

    Raises
    ------
    InputError
        Missing lists, lists of different lengths, or unreadable files.
    """
    from ...io.images import read_image
    from ...io.labels import read_labels

    if not images or not labels:
        raise InputError("give --images and --labels (one labels file per image, in the same order)")
    if len(images) != len(labels):
        raise InputError(f"--images has {len(images)} file(s) but --labels has {len(labels)}: give one labels "
                         "file per image, in the same order")
    if regions and len(regions) != len(images):
        raise InputError(f"--regions has {len(regions)} file(s) for {len(images)} image(s): give one mask per image")
    try:
        imgs = [read_image(p) for p in images]
        labs = [read_labels(p) for p in labels]
        masks = [read_labels(p) for p in regions] if regions else None
    except FileNotFoundError as exc:
        raise InputError(str(exc)) from None
    return imgs, labs, masks


def add_finetune_arguments(parser, *, init_default: str | None = None) -> None:
    """``--init`` and ``--regions``, the same for every ``kaizen train ENGINE``."""
    if not any(a.dest == "init" for a in parser._actions):
        parser.add_argument("--init", default=init_default, metavar="bundled:NAME|PATH",
                            help="fine-tune these weights on --images/--labels instead of training from scratch "
                                 "(e.g. bundled:NAME from `kaizen engines`, or a .safetensors file)")
    parser.add_argument("--regions", nargs="+", default=None, metavar="MASK",
                        help="one mask per image (nonzero = the labels there are complete): only those pixels "
                             "teach (partial corrections)")


def resample_mask(mask: np.ndarray | None, shape: tuple[int, int]) -> np.ndarray | None:
    """Nearest-neighbour resampling of a region mask or of labels to ``shape`` (ids unchanged)."""
    if mask is None or mask.shape == tuple(shape):
        return mask
    h, w = shape
    mh, mw = mask.shape
    yi = np.minimum(((np.arange(h) + 0.5) * mh / h).astype(np.intp), mh - 1)
    xi = np.minimum(((np.arange(w) + 0.5) * mw / w).astype(np.intp), mw - 1)
    return mask[np.ix_(yi, xi)]


def average_with_start(net, start_state: Mapping[str, Any], start_share: float) -> None:
    """Move a fine-tuned ``net``'s weights ``start_share`` of the way back to where it started.

    Every floating-point tensor of its state becomes ``(1 - start_share) * fine-tuned +
    start_share * start``, in place; counters (batch norm's ``num_batches_tracked``) are
    left as they are. Averaging fine-tuned with starting weights keeps most of what a
    few corrected images taught and much of what the model knew about everything else
    (WiSE-FT: Wortsman et al. 2022, "Robust fine-tuning of zero-shot models", CVPR).

    Parameters
    ----------
    net : torch.nn.Module
        The fine-tuned network (changed in place).
    start_state : mapping of str to tensor
        ``state_dict()`` of the network it was fine-tuned from (same architecture).
    start_share : float
        In [0, 1): 0 keeps the fine-tuned weights.
    """
    import torch

    if not start_share:
        return
    with torch.no_grad():
        for name, value in net.state_dict().items():
            if value.is_floating_point():
                value.mul_(1.0 - start_share).add_(start_state[name].to(value.device, value.dtype), alpha=start_share)


def seed_everything(seed: int) -> np.random.Generator:
    """Seed Python, numpy and torch; return a numpy Generator for data sampling."""
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def train_loop(
    model,
    batches: Iterator[tuple[Any, ...]],
    loss_fn: Callable[[Any, tuple[Any, ...]], tuple[Any, Mapping[str, float]]],
    optimizer,
    *,
    steps: int,
    device,
    scheduler=None,
    report_every: int = 10,
    validate: Callable[[Any], Mapping[str, float]] | None = None,
    validate_every: int = 0,
    clip_grad_norm: float | None = None,
) -> Generator[TrainingSnapshot, None, dict[str, Any]]:
    """Run ``steps`` optimiser steps, yielding progress.

    Parameters
    ----------
    model : torch.nn.Module
        Already on ``device``.
    batches : iterator of tuple
        Endless source of batches (numpy arrays or tensors); each is moved to
        ``device`` as float32 tensors (integer arrays keep an integer dtype).
    loss_fn : callable
        ``loss_fn(model, batch) -> (loss_tensor, {name: float})``.
    optimizer : torch.optim.Optimizer
    steps : int
    device : torch.device
    scheduler : optional
        Stepped once per optimiser step.
    report_every : int
        Yield a snapshot every this many steps (and at the end).
    validate : callable, optional
        ``validate(model) -> {name: value}``, run every ``validate_every`` steps and at
        the end, in eval mode under ``torch.no_grad``.
    clip_grad_norm : float, optional

    Yields
    ------
    TrainingSnapshot

    Returns
    -------
    dict
        ``{'steps': ..., 'final_loss': ..., 'seconds': ..., 'validation': {...}}``.
    """
    import torch

    def to_device(x):
        if isinstance(x, torch.Tensor):
            return x.to(device, non_blocking=True)
        arr = np.asarray(x)
        t = torch.from_numpy(np.ascontiguousarray(arr))
        if arr.dtype.kind == "f":
            t = t.float()
        return t.to(device, non_blocking=True)

    ema = math.nan
    start = time.perf_counter()
    last_val: Mapping[str, float] = {}
    model.train()
    for step in range(1, steps + 1):
        batch = tuple(to_device(x) for x in next(batches))
        loss, parts = loss_fn(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip_grad_norm:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(f"training diverged at step {step} (loss {value}); lower the learning rate")
        ema = value if math.isnan(ema) else 0.9 * ema + 0.1 * value
        val: Mapping[str, float] = {}
        if validate is not None and ((validate_every and step % validate_every == 0) or step == steps):
            model.eval()
            with torch.no_grad():
                val = dict(validate(model))
            model.train()
            last_val = val
        if step % report_every == 0 or step == steps or val:
            yield TrainingSnapshot(
                stage="training",
                progress=step / steps,
                message=f"step {step}/{steps}  loss {ema:.4g}",
                step=step,
                total_steps=steps,
                loss=ema,
                components=dict(parts),
                validation=val,
            )
    model.eval()
    return {"steps": steps, "final_loss": ema, "seconds": time.perf_counter() - start, "validation": dict(last_val)}
