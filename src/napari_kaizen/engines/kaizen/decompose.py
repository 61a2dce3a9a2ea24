"""The Kaizen decomposition (paper, sections 3.2, 3.3 and 3.6) as a generator.

State, all on the compute device: the padded input ``X``, the error image
``E = X - internal`` (the internal image is ``X - E``; it is never stored twice), the
input of the current pass, the label owner map and, per pass, the points already
tried. One iteration:

1. **Rank points.** Convolve the error image (inside the image) with a box of ones
   and keep points whose box holds a mean unexplained brightness above the mask
   threshold, that were not tried in this pass.
2. **Choose distant points, greedily.** The highest point first, then suppress a
   square around it, and repeat: ``points_per_iteration`` times in the paper's loop;
   until none is left in the batched loop, whose square is ``2P - 1`` wide so no two
   patches overlap (computed in parallel: rounds of max-pooling over priorities
   give exactly the greedy choice).
3. **Predict** one cell per point: the VQ-VAE sees the ``P x P`` patch of the pass
   input centred on the point (one batched forward pass, in chunks).
4. **Judge.** A cell is kept when adding it to the internal image lowers the L1
   error, ``|E - cell|_1 < |E|_1`` over its patch, and its mask holds at least
   ``min_size`` pixels (an empty prediction would "win" by a rounding error and be
   proposed for ever). The paper's loop judges its points one after the other, each
   against the error left by the ones kept before it; the batched loop judges all at
   once, which is the same because its patches do not overlap.
5. **Update** the error image, the labels (a pixel belongs to the kept cell that is
   brightest there; ties go to the earlier cell) and the points tried.

A pass ends at the first iteration that keeps nothing (or after ``max_iterations``);
the next pass predicts on the error image left by all previous ones; the run ends at
the first pass that keeps nothing (or after ``max_passes``).

Border: the image is padded by half a patch, ``mirror_pad`` pixels of mirror then
zeros (paper: 8 + 12). Only points inside the image are proposed; the error is
measured over the padded canvas, so a cell that spills into the zero band pays for it.
"""

from __future__ import annotations

import math
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._common.errors import InputError, WeightsError
from .params import KaizenParams
from .snapshots import DecompositionSnapshot, DecompositionTrace, freeze_scores, lazy_maps


# --------------------------------------------------------------------------- pieces


def box_mean(error, box: int):
    """Mean of ``error`` (H, W) over a ``box x box`` window at every pixel (zeros outside).

    Separable (two 1-D passes), so it costs ``O(H*W*box)``, not ``O(H*W*box^2)``.
    """
    import torch.nn.functional as F

    h, w = error.shape
    x = error[None, None]
    x = F.avg_pool2d(x, (box, 1), stride=1, padding=(box // 2, 0), count_include_pad=True)
    x = F.avg_pool2d(x, (1, box), stride=1, padding=(0, box // 2), count_include_pad=True)
    return x[0, 0, :h, :w]


def _max_filter(x, radius: int):
    """Maximum over a ``(2r+1)`` square window (separable, ``-inf`` / 0 outside)."""
    import torch.nn.functional as F

    k = 2 * radius + 1
    y = F.max_pool2d(x[None, None], (k, 1), stride=1, padding=(radius, 0))
    y = F.max_pool2d(y, (1, k), stride=1, padding=(0, radius))
    return y[0, 0]


def greedy_points(score, radius: int, limit: int | None, *, parallel: bool | None = None):
    """Greedy non-maximum suppression: the paper's way of choosing distant points.

    Take the highest finite value, suppress the ``(2r+1)`` square around it, repeat.
    Ties go to the lower flat index (``torch.argmax``'s rule).

    Parameters
    ----------
    score : Tensor, shape (H, W)
        ``-inf`` where no point may be chosen.
    radius : int
        Half-side of the suppressed square (Chebyshev distance; chosen points are
        more than ``radius`` apart).
    limit : int or None
        At most this many points (the first ones greedy picks); ``None``: all.
    parallel : bool, optional
        Force the sequential loop (``False``: ``limit`` argmax passes, the paper's
        procedure) or the parallel one (``True``: rounds of max-pooling over unique
        priorities, which select exactly the same set). Default: sequential for
        small limits.

    Returns
    -------
    Tensor of int64, shape (K, 2)
        ``(y, x)`` in greedy order (highest first), on ``score``'s device.
    """
    import torch

    h, w = score.shape
    dev = score.device
    if parallel is None:
        parallel = limit is None or limit > 32
    if not parallel:
        s = score.clone()
        out = []
        for _ in range(int(limit if limit is not None else h * w)):
            flat = int(torch.argmax(s))
            y, x = divmod(flat, w)
            if not math.isfinite(float(s[y, x])):
                break
            out.append((y, x))
            s[max(0, y - radius) : y + radius + 1, max(0, x - radius) : x + radius + 1] = -math.inf
        return torch.tensor(out, dtype=torch.int64, device=dev).reshape(-1, 2)
    flat = score.reshape(-1)
    cand = torch.nonzero(torch.isfinite(flat)).squeeze(1)
    if cand.numel() == 0:
        return torch.zeros((0, 2), dtype=torch.int64, device=dev)
    # Unique priorities: value descending, then flat index ascending (a stable sort).
    order = torch.sort(flat[cand], descending=True, stable=True).indices
    k = cand.numel()
    prio = torch.zeros(h * w, dtype=torch.float64 if k >= 2**24 else torch.float32, device=dev)
    prio[cand[order]] = torch.arange(k, 0, -1, device=dev, dtype=prio.dtype)
    prio = prio.view(h, w)
    active = prio > 0
    selected = torch.zeros_like(active)
    while True:
        pm = torch.where(active, prio, torch.zeros((), dtype=prio.dtype, device=dev))
        new = active & (pm == _max_filter(pm, radius))
        if not bool(new.any()):
            break
        selected |= new
        active &= ~(_max_filter(new.to(prio.dtype), radius) > 0)
        active &= ~new
    pts = torch.nonzero(selected)
    order = torch.argsort(prio[pts[:, 0], pts[:, 1]], descending=True)
    pts = pts[order]
    if limit is not None:
        pts = pts[: int(limit)]
    return pts


def patch_index(points, patch: int, width: int):
    """Flat canvas indices ``(K, P, P)`` of the patches whose top-left corners are ``points``."""
    import torch

    ar = torch.arange(patch, device=points.device)
    rows = points[:, 0, None, None] + ar[None, :, None]
    cols = points[:, 1, None, None] + ar[None, None, :]
    return rows * width + cols


def judge(error_patches, cells, threshold: float, min_size: int, *, sequential: bool, index=None, error=None):
    """Decide which predicted cells lower the L1 error.

    Parameters
    ----------
    error_patches : Tensor, shape (K, P, P)
        The error image under each patch (before this iteration's cells).
    cells : Tensor, shape (K, P, P)
        Predicted cell images (non-negative).
    threshold : float
        Mask threshold: a cell's mask is ``cell > threshold``.
    min_size : int
        A cell needs at least this many mask pixels.
    sequential : bool
        Judge one after the other, each against the error left by the cells kept
        before it (needs ``index`` and ``error``: the flat canvas indices of the
        patches and the flat error canvas, which is updated in place). Otherwise all
        at once against ``error_patches``.

    Returns
    -------
    accepted : Tensor of bool, shape (K,)
    gains : Tensor of float32, shape (K,)
        ``(|E|_1 - |E - cell|_1) / |cell|_1`` for each cell.
    """
    import torch

    mass = cells.flatten(1).sum(1).clamp_min(1e-12)
    big = (cells > threshold).flatten(1).sum(1) >= int(min_size)
    if not sequential:
        delta = ((error_patches - cells).abs() - error_patches.abs()).flatten(1).sum(1)
        return (delta < 0) & big, (-delta / mass).float()
    k = cells.shape[0]
    accepted = torch.zeros(k, dtype=torch.bool, device=cells.device)
    gains = torch.zeros(k, dtype=torch.float32, device=cells.device)
    for i in range(k):
        e = error[index[i]]
        delta = ((e - cells[i]).abs() - e.abs()).sum()
        ok = (delta < 0) & big[i]
        # Branch-free: no host round trip per proposal.
        error[index[i]] = e - cells[i] * ok.to(cells.dtype)
        accepted[i] = ok
        gains[i] = -delta / mass[i]
    return accepted, gains


# --------------------------------------------------------------------------- model


def resolve_net(model):
    """The ``torch.nn.Module`` inside ``model`` (a loaded model, a bare network)."""
    from torch import nn

    net = getattr(model, "net", model)
    if not isinstance(net, nn.Module) or not hasattr(net, "predict"):
        raise WeightsError(
            f"model must be a Kaizen VQ-VAE (from load_model), a weights path or 'bundled:NAME'; got {type(model).__name__}"
        )
    return net


@dataclass
class _State:
    """Device tensors of one run (see the module docstring)."""

    x: Any  # padded input, flat view available
    error: Any
    pass_input: Any
    best: Any
    owner: Any
    tabu: Any
    h: int
    w: int
    half: int
    wc: int


def _labels_now(state: _State, min_size: int):
    """Current labels inside the image (device), small ones removed."""
    import torch

    lab = state.owner[state.half : state.half + state.h, state.half : state.half + state.w]
    if min_size > 1 and bool((lab > 0).any()):
        counts = torch.bincount(lab.reshape(-1))
        small = counts < int(min_size)
        small[0] = False
        lab = torch.where(small[lab.long()], torch.zeros((), dtype=lab.dtype, device=lab.device), lab)
    return lab


def finalize_labels(labels: np.ndarray, scores: dict, min_size: int) -> tuple[np.ndarray, dict]:
    """Renumber 1..N in acceptance order, keep each cell's largest piece, drop small ones.

    A cell can own disconnected slivers where a brighter neighbour cut through its
    mask; they are not part of the object a person would outline.
    """
    from scipy import ndimage as ndi

    lab = np.asarray(labels)
    out = np.zeros(lab.shape, np.int32)
    new_scores: dict[int, float] = {}
    objects = ndi.find_objects(lab)
    next_id = 1
    for old, sl in enumerate(objects, start=1):
        if sl is None:
            continue
        own = lab[sl] == old
        comps, n = ndi.label(own)
        if n > 1:
            sizes = np.bincount(comps.ravel())
            sizes[0] = 0
            own = comps == int(np.argmax(sizes))
        if int(own.sum()) < int(min_size):
            continue
        out[sl][own] = next_id
        new_scores[next_id] = float(scores.get(old, math.nan))
        next_id += 1
    return out, new_scores


# --------------------------------------------------------------------------- the loop


def decompose(
    image: np.ndarray,
    model,
    params: KaizenParams | None = None,
    *,
    device=None,
    rescale=None,
    input_image: np.ndarray | None = None,
    progress_range: tuple[float, float] = (0.0, 1.0),
) -> Generator[DecompositionSnapshot, None, DecompositionSnapshot]:
    """Decompose a normalised image into cells with a Kaizen VQ-VAE; yield every iteration.

    Parameters
    ----------
    image : ndarray, shape (H, W)
        Normalised image (``prepare_image``) at the model's object scale.
        :func:`~napari_kaizen.engines.kaizen.segment` does the normalising and
        rescaling; call this directly to work on the model's grid.
    model : KaizenModel or KaizenVQVAE
        A loaded model (:func:`~napari_kaizen.engines.kaizen.load_model`) or a bare
        network; it runs on its own device unless ``device`` is given.
    params : KaizenParams, optional
    device : str or torch.device, optional
        Move the network here (``'auto'``, ``'cpu'``, ``'cuda'``...).
    rescale : Rescale, optional
        Work grid -> input grid mapping; snapshots are reported on the input grid.
    input_image : ndarray, optional
        The normalised image on the input grid (for the error maps); default
        ``image``.
    progress_range : (float, float)
        Where this run's progress is mapped.

    Yields
    ------
    DecompositionSnapshot
        One per iteration (``stage='iteration'``), then the final one
        (``stage='labels'``, ``done=True``, labels renumbered 1..N).

    Returns
    -------
    DecompositionSnapshot
        The final snapshot.

    Notes
    -----
    Closing the generator stops the run at once (nothing runs between yields).
    """
    import torch

    p = params or KaizenParams()
    net = resolve_net(model)
    if device is not None:
        from .._common.device import choose_device

        net = net.to(choose_device(device))
    dev = next(net.parameters()).device
    net.eval()
    patch = int(net.config.patch_size)
    if p.patch_size is not None and int(p.patch_size) != patch:
        raise InputError(
            f"KaizenParams.patch_size is {p.patch_size} but the model was trained on {patch}-pixel patches: "
            f"set patch_size={patch} or None"
        )
    img = np.asarray(image, dtype=np.float32)
    if img.ndim != 2 or min(img.shape) < 1:
        raise InputError(f"decompose needs a 2-D image, got shape {img.shape}")
    if not np.isfinite(img).all():
        raise InputError("decompose needs a finite image (no NaN / inf): normalise it with prepare_image first")
    from .dataset import pad_like_inference

    h, w = img.shape
    half = patch // 2
    box, supp, tabu_r = p.windows(patch)
    radius = patch - 1 if p.batched else supp
    limit = p.batch_points if p.batched else p.points_per_iteration
    threshold = float(p.mask_threshold) * max(float(img.mean()), 0.0)
    min_size = int(p.min_size)
    lo, hi = progress_range

    canvas = torch.from_numpy(np.ascontiguousarray(pad_like_inference(img, patch, p.mirror_pad))).to(dev)
    hc, wc = canvas.shape
    st = _State(
        x=canvas, error=canvas.clone(), pass_input=canvas, best=torch.zeros_like(canvas),
        owner=torch.zeros((hc, wc), dtype=torch.int32, device=dev), tabu=torch.zeros((h, w), dtype=torch.bool, device=dev),
        h=h, w=w, half=half, wc=wc,
    )
    inside = (slice(half, half + h), slice(half, half + w))
    total = float(canvas[inside].abs().sum().clamp_min(1e-12))
    in_img = input_image if input_image is not None else img
    trace = DecompositionTrace((h, w), half, patch, in_img, rescale)
    scores: dict[int, float] = {}
    if rescale is not None and not rescale.identity:
        sy, sx = rescale.input_shape[0] / h, rescale.input_shape[1] / w
    else:
        sy = sx = 1.0

    def to_input_labels(lab: np.ndarray) -> np.ndarray:
        return lab if rescale is None or rescale.identity else rescale.labels_to_input(lab)

    tabu_ar = torch.arange(-tabu_r, tabu_r + 1, device=dev)

    def iteration() -> dict:
        """One iteration, entirely under inference mode (nothing here yields)."""
        with torch.inference_mode():
            err_in = st.error[inside]
            score = box_mean(err_in, box)
            score = torch.where((score > threshold) & ~st.tabu, score, torch.full_like(score, -math.inf))
            pts = greedy_points(score, radius, limit)
            k = int(pts.shape[0])
            if k == 0:
                return {"points": np.zeros((0, 2), np.int64), "accepted": np.zeros(0, bool),
                        "gains": np.zeros(0, np.float32), "ids": [], "cells": None, "tops": None}
            # Patch top-left on the canvas == the point's image coordinates.
            index = patch_index(pts, patch, wc).reshape(k, -1)
            flat_err = st.error.view(-1)
            flat_in = st.pass_input.reshape(-1)
            inputs = flat_in[index].view(k, 1, patch, patch)
            cells = torch.cat(
                [net.predict(inputs[i : i + p.batch_size]) for i in range(0, k, p.batch_size)]
            ).view(k, -1).clamp_min_(0.0)
            if p.batched:
                accepted, gains = judge(flat_err[index], cells, threshold, min_size, sequential=False)
                sel = index[accepted]
                flat_err.index_put_((sel.reshape(-1),), -cells[accepted].reshape(-1), accumulate=True)
            else:
                accepted, gains = judge(None, cells, threshold, min_size, sequential=True, index=index, error=flat_err)
            # Labels: each pixel goes to the brightest kept cell (ties: the earlier one).
            acc_idx = torch.nonzero(accepted).squeeze(1)
            n_acc = int(acc_idx.numel())
            first_id = len(trace) + 1
            flat_best = st.best.view(-1)
            flat_owner = st.owner.view(-1)
            ids = list(range(first_id, first_id + n_acc))
            if n_acc:
                ids_t = torch.arange(first_id, first_id + n_acc, device=dev, dtype=torch.int32)
                if p.batched:  # patches do not overlap: one scatter
                    ix = index[acc_idx]
                    c = cells[acc_idx]
                    win = (c > threshold) & (c > flat_best[ix])
                    flat_best[ix[win]] = c[win]
                    flat_owner[ix[win]] = ids_t[:, None].expand_as(c)[win]
                else:
                    for j, i in enumerate(acc_idx.tolist()):
                        ix, c = index[i], cells[i]
                        win = (c > threshold) & (c > flat_best[ix])
                        flat_best[ix[win]] = c[win]
                        flat_owner[ix[win]] = ids_t[j]
            # Every point tried in this pass becomes tabu, with its neighbourhood.
            ty = (pts[:, 0, None, None] + tabu_ar[None, :, None]).clamp(0, h - 1)
            tx = (pts[:, 1, None, None] + tabu_ar[None, None, :]).clamp(0, w - 1)
            st.tabu[ty.expand(-1, -1, tx.shape[2]), tx.expand(-1, ty.shape[1], -1)] = True
            lab = _labels_now(st, min_size)
            return {
                "points": pts.cpu().numpy(),
                "accepted": accepted.cpu().numpy(),
                "gains": gains.cpu().numpy(),
                "ids": ids,
                "cells": cells[acc_idx].view(-1, patch, patch).cpu().numpy() if n_acc else None,
                "tops": pts[acc_idx].cpu().numpy() if n_acc else None,
                "labels": lab.cpu().numpy(),
                "l1": float(st.error[inside].abs().sum()),
            }

    n_iter = 0
    labels_np = np.zeros((h, w), np.int32)
    l1 = total
    for pass_index in range(p.max_passes):
        if pass_index:
            with torch.inference_mode():
                st.pass_input = st.error.clone()
                st.tabu.zero_()
        kept_in_pass = 0
        for it in range(1, p.max_iterations + 1):
            r = iteration()
            n_iter += 1
            k = len(r["points"])
            acc = r["accepted"]
            if r["cells"] is not None:
                trace.add(r["tops"][:, 0], r["tops"][:, 1], r["cells"])
                for i, cid in zip(np.flatnonzero(acc), r["ids"]):
                    scores[cid] = float(r["gains"][i])
            if "labels" in r:
                labels_np = r["labels"].astype(np.int32, copy=False)
                l1 = r["l1"]
            present = set(np.unique(labels_np).tolist()) - {0}
            n_acc = int(acc.sum())
            kept_in_pass += n_acc
            frac = min(0.99, max(0.0, 1.0 - l1 / total))
            pts_in = np.column_stack([(r["points"][:, 0] + 0.5) * sy - 0.5, (r["points"][:, 1] + 0.5) * sx - 0.5]) if k else np.zeros((0, 2))
            new = tuple(i for i in r["ids"] if i in present)
            yield DecompositionSnapshot(
                stage="iteration",
                progress=lo + (hi - lo) * frac,
                message=f"pass {pass_index + 1}, iteration {it}: {n_acc} of {k} accepted, {len(present)} cells",
                labels=to_input_labels(labels_np),
                maps=lazy_maps(trace, len(trace)),
                changed=new,
                iteration=n_iter,
                pass_index=pass_index,
                iteration_in_pass=it,
                proposals=pts_in.astype(np.float64),
                accepted=acc.astype(bool),
                gains=r["gains"].astype(np.float32),
                new_labels=new,
                scores=freeze_scores({i: scores[i] for i in present if i in scores}),
                n_cells=len(trace),
                error_l1=l1 / (h * w),
                trace=trace,
            )
            if n_acc == 0:
                break
        if kept_in_pass == 0:
            break
    final, final_scores = finalize_labels(labels_np, scores, min_size)
    snap = DecompositionSnapshot(
        stage="labels",
        progress=hi,
        message=f"{int(final.max())} cells in {n_iter} iterations",
        labels=to_input_labels(final),
        maps=lazy_maps(trace, len(trace)),
        changed=tuple(range(1, int(final.max()) + 1)),
        done=True,
        iteration=n_iter,
        pass_index=max(0, pass_index),
        n_cells=len(trace),
        scores=freeze_scores(final_scores),
        error_l1=l1 / (h * w),
        trace=trace,
    )
    yield snap
    return snap
