"""The Kaizen decomposition (paper, sections 3.2, 3.3 and 3.6) as a generator.

State, all on the compute device: the padded input ``X``, the error image
``E = X - internal`` (the internal image is ``X - E``; it is never stored twice), the
input of the current pass, the label owner map and, per pass, the points already
tried. One iteration:

1. **Rank points.** Convolve the error image (inside the image) with a box of ones.
   A point may be proposed if its box mean exceeds ``proposal_threshold`` times the
   input's mean, at least ``min_unexplained`` of the input's brightness in its box is
   still unexplained, it is a maximum of the box map within ``peak_radius``, and it
   was not tried in this pass (nor within ``tabu_radius`` of a point that was).
2. **Choose distant points, greedily.** The highest point first, then suppress a
   square around it, and repeat: ``points_per_iteration`` times in the paper's loop
   (half-side ``suppression_radius``); until none is left in the batched loop, whose
   half-side is ``P - 1`` so that no two patches overlap (computed in parallel:
   rounds of max-filtering over unique priorities select exactly the greedy set).
3. **Predict** one cell per point: the VQ-VAE sees the ``P x P`` patch of the pass
   input centred on the point (one forward pass, in chunks of ``batch_size``).
4. **Judge.** A cell is kept when adding it to the internal image lowers the L1
   error, ``|E - cell|_1 < |E|_1`` over its patch, and its mask holds at least
   ``min_size`` pixels (an empty prediction would "win" by a rounding error and be
   proposed for ever). The paper's loop judges its points one after the other, each
   against the error left by the ones kept before it; the batched loop judges all at
   once, which is the same because its patches do not overlap.
5. **Update** the error image, the labels (a pixel belongs to the kept cell that is
   brightest there; ties go to the earlier cell; a kept cell lying mostly on earlier
   cells is a correction and adds no label, see :func:`assign_labels`) and the
   points tried.

A pass ends at the first iteration that keeps nothing, or after ``max_iterations``
iterations or ``max_iterations * points_per_iteration`` tried points (the paper: 30
iterations of N = 10). With more than N proposals per iteration it also ends when fewer
than one in N is kept: for N proposals that is exactly the paper's rule, and it is what
the paper's loop meets when it tries the same points N at a time. Ending passes early
matters: the next pass predicts on the error image, where explained neighbours are gone
and touching cells are reconstructed more cleanly (paper, 3.3). The next pass predicts on the
error image left by all previous ones; the run ends at the first pass that keeps
nothing (or after ``max_passes``).

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

from ...errors import InputError, WeightsError
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


def _running_max(x, k: int, dim: int):
    """Maximum over windows of ``k`` along ``dim`` (output ``k - 1`` shorter).

    Van Herk-style doubling: windows of 1, 2, 4, ... by ``log2(k)`` elementwise
    maxima, then two overlapping power-of-two windows cover ``k``; about 15 tensor
    operations whatever ``k`` is (a max-pool kernel of 79 costs 79 comparisons per
    pixel and dominated the batched loop).
    """
    import torch

    n = x.shape[dim] - k + 1
    m, size = x, 1
    while size * 2 <= k:
        m = torch.maximum(m.narrow(dim, 0, m.shape[dim] - size), m.narrow(dim, size, m.shape[dim] - size))
        size *= 2
    return torch.maximum(m.narrow(dim, 0, n), m.narrow(dim, k - size, n))


def _max_filter(x, radius: int):
    """Maximum over the ``(2r+1)`` square around each pixel of ``x`` (H, W).

    Outside the image counts as the lowest value of the dtype (float or integer).
    """
    import torch

    k = 2 * radius + 1
    low = -math.inf if x.is_floating_point() else int(torch.iinfo(x.dtype).min)
    xp = torch.full((x.shape[0] + 2 * radius, x.shape[1] + 2 * radius), low, dtype=x.dtype, device=x.device)
    xp[radius : radius + x.shape[0], radius : radius + x.shape[1]] = x
    return _running_max(_running_max(xp, k, 0), k, 1)


#: Candidates up to which :func:`greedy_points` walks them one by one on the host
#: (proposals are maxima of the box map: a few thousand on a 1024 x 1024 field).
SPARSE_GREEDY_MAX = 50_000


def _greedy_sparse(ranked, width: int, radius: int, limit: int | None):
    """Greedy suppression over candidates already in priority order (flat indices).

    A candidate is taken unless a taken one lies within ``radius`` (Chebyshev); taken
    points are kept in a grid of cells of side ``radius + 1``, so each test looks at
    nine cells. The same set, in the same order, as the image-wide rounds of max
    filters, at a fraction of their cost when the candidates are few.
    """
    import torch

    flat = ranked.cpu().numpy()
    ys, xs = np.divmod(flat, width)
    cell = radius + 1
    grid: dict[tuple[int, int], list[tuple[int, int]]] = {}
    out: list[tuple[int, int]] = []
    cap = len(flat) if limit is None else int(limit)
    for y, x in zip(ys.tolist(), xs.tolist()):
        if len(out) >= cap:
            break
        cy, cx = y // cell, x // cell
        if any(abs(y - py) <= radius and abs(x - px) <= radius
               for gy in (cy - 1, cy, cy + 1) for gx in (cx - 1, cx, cx + 1) for py, px in grid.get((gy, gx), ())):
            continue
        grid.setdefault((cy, cx), []).append((y, x))
        out.append((y, x))
    return torch.tensor(out, dtype=torch.int64).reshape(-1, 2)


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
    if k <= SPARSE_GREEDY_MAX:
        return _greedy_sparse(cand[order], w, radius, limit).to(dev)
    # Integer priorities: exact for any image size, and no float64 (absent on MPS).
    prio = torch.zeros(h * w, dtype=torch.int32, device=dev)
    prio[cand[order]] = torch.arange(k, 0, -1, device=dev, dtype=torch.int32)
    prio = prio.view(h, w)
    active = prio > 0
    selected = torch.zeros_like(active)
    zero = torch.zeros((), dtype=prio.dtype, device=dev)
    while True:
        pm = torch.where(active, prio, zero)
        new = active & (pm == _max_filter(pm, radius))
        if not bool(new.any()):
            break
        selected |= new
        active &= ~(_max_filter(new.to(torch.int32), radius) > 0)
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
    threshold : float or Tensor of shape (K, 1)
        Mask threshold: a cell's mask is ``cell > threshold`` (one for all, or per cell).
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


def check_patch_size(net, params: KaizenParams) -> int:
    """The model's patch size; ``params.patch_size`` must be None or equal to it."""
    patch = int(net.config.patch_size)
    if params.patch_size is not None and int(params.patch_size) != patch:
        raise InputError(
            f"KaizenParams.patch_size is {params.patch_size} but the model was trained on {patch}-pixel patches: "
            f"set patch_size={patch} or None"
        )
    return patch


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

    x: Any  # padded input
    error: Any  # X - internal
    pass_input: Any  # what the VQ-VAE sees in this pass
    best: Any  # brightness of the owning cell at each pixel
    owner: Any  # label id at each pixel (0: none)
    tabu: Any  # points tried in this pass (image grid)
    h: int
    w: int
    half: int
    wc: int
    next_id: int = 1
    x_box: Any = None  # box mean of the input (for the share of brightness unexplained)
    min_box: float = 0.0  # least box mean of unexplained brightness for a proposal
    peak_radius: int = 0  # proposals are maxima of the box map within this radius


def assign_labels(
    owner, best, index, cells, threshold: float, merge_overlap: float, next_id: int, near=None, *, near_values=None
):
    """Give kept cells label ids and paint them into the owner map (in place).

    A cell whose mask lies, for at least ``merge_overlap`` of its pixels, on earlier
    cells (or within ``near``'s reach of them) is a *correction*: later passes
    predict on the error image, where explained cells leave faint remainders (rims
    just outside a mask, leftovers in the gaps between cells) that the VQ-VAE
    reconstructs as if they were cells. A correction stays in the internal image
    (it did lower the error) but creates no label: it takes the id of the earlier
    cell it covers most and paints nothing. Any other cell gets a new id, in order,
    and takes every pixel of its mask where it is brighter than the current owner
    (ties stay with the earlier cell).

    Parameters
    ----------
    owner : Tensor of int32, flat canvas
    best : Tensor of float32, flat canvas
        Brightness of the owning cell at each pixel, over that cell's threshold.
    index : Tensor of int64, shape (A, P*P)
        Flat canvas indices of the kept cells' patches; **they must not overlap**
        (call once per cell otherwise).
    cells : Tensor, shape (A, P*P)
    threshold : float or Tensor of shape (A, 1)
        Mask threshold (one for all, or one per cell).
    merge_overlap : float
        Share of a cell's mask lying on (or near) earlier cells from which on it is
        a correction (> 1 disables corrections).
    next_id : int
        First free label id.
    near : Tensor of int32, flat canvas, optional
        The owner map grown by a few pixels into unowned background (what a
        correction is compared with); default ``owner``.
    near_values : Tensor of int32, shape (A, P*P), optional
        ``near`` already read at ``index`` (see :func:`grown_owner_patch`); wins over
        ``near``.

    Returns
    -------
    Tensor of int32, shape (A,)
        The id of each cell (new or merged into).
    """
    import torch

    a = cells.shape[0]
    dev = cells.device
    mask = cells > threshold
    own = owner[index]
    close = near_values if near_values is not None else (own if near is None else near[index])
    area = mask.sum(1)
    stride = int(owner.max()) + 1 if owner.numel() else 1
    rows = torch.arange(a, device=dev)[:, None].expand_as(own)
    hit = mask & (close > 0)
    target = torch.zeros(a, dtype=torch.int64, device=dev)
    top = torch.zeros(a, dtype=torch.int64, device=dev)
    covered = hit.sum(1)
    if bool(hit.any()):
        keys = rows[hit].to(torch.int64) * stride + close[hit].to(torch.int64)
        uniq, counts = torch.unique(keys, return_counts=True)
        cell_of, owner_of = uniq // stride, uniq % stride
        top.scatter_reduce_(0, cell_of, counts, reduce="amax")
        big = torch.full_like(owner_of, stride)
        pick = torch.where(counts == top[cell_of], owner_of, big)
        target = torch.full((a,), stride, dtype=torch.int64, device=dev).scatter_reduce_(0, cell_of, pick, reduce="amin")
    merged = (top > 0) & (covered.to(torch.float32) >= merge_overlap * area.to(torch.float32))
    new_ids = next_id + torch.cumsum((~merged).to(torch.int64), 0) - 1
    ids = torch.where(merged, target, new_ids).to(torch.int32)
    ids_px = ids[:, None].expand_as(own)
    # Corrections paint nothing: their pixels are faint rims and leftovers, and
    # painting them grew masks past the true outlines (mAP fell on the dev set).
    # Ownership compares brightness relative to each cell's own threshold: with per-cell
    # thresholds a bright cell's faint flank must not take a dim neighbour's pixels.
    level = cells / threshold.clamp_min(1e-12) if torch.is_tensor(threshold) else cells / max(float(threshold), 1e-12)
    paint = (~merged)[:, None] & mask & (level > best[index])
    owner[index[paint]] = ids_px[paint]
    best[index[paint]] = level[paint]
    return ids


def grown_owner_patch(owner, top: int, left: int, patch: int, radius: int):
    """:func:`grown_owner` read inside one ``patch x patch`` window, flat (P*P,).

    Computed on the window plus ``radius`` pixels around it, which gives exactly the
    values the whole-canvas map has there.
    """
    hc, wc = owner.shape
    y0, x0 = max(0, top - radius), max(0, left - radius)
    y1, x1 = min(hc, top + patch + radius), min(wc, left + patch + radius)
    grown = grown_owner(owner[y0:y1, x0:x1], radius)
    return grown[top - y0 : top - y0 + patch, left - x0 : left - x0 + patch].reshape(-1)


def grown_owner(owner, radius: int):
    """``owner`` with every label grown ``radius`` pixels into unowned pixels (for merging)."""
    import torch

    if radius <= 0:
        return owner
    grown = _max_filter(owner, radius)
    return torch.where(owner > 0, owner, grown)


def cell_thresholds(cells, floor: float, fraction: float | None):
    """Mask threshold of every predicted cell, shape ``(K, 1)``.

    ``fraction`` None: the paper's rule, one threshold (``floor``) for all. Otherwise
    each cell's own rule: ``fraction`` of its peak, never below ``floor`` (so an almost
    empty prediction keeps an almost empty mask and is rejected by ``min_size``).
    """
    import torch

    k = cells.shape[0]
    if fraction is None:
        return torch.full((k, 1), float(floor), dtype=cells.dtype, device=cells.device)
    return (cells.amax(1, keepdim=True) * float(fraction)).clamp_min(float(floor))


def _labels_now(state: _State, min_size: int):
    """Current labels inside the image and the ids present (device), small ones removed."""
    import torch

    lab = state.owner[state.half : state.half + state.h, state.half : state.half + state.w]
    counts = torch.bincount(lab.reshape(-1))
    small = counts < max(1, int(min_size))
    small[0] = False
    if bool(small[1:].any()):
        lab = torch.where(small[lab.long()], torch.zeros((), dtype=lab.dtype, device=lab.device), lab)
    present = torch.nonzero(~small).squeeze(1)
    return lab, present[present > 0]


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


def _renumber(labels: np.ndarray, scores: dict) -> tuple[np.ndarray, dict]:
    """Ids 1..N in their order (an object can vanish when labels are shrunk), scores kept."""
    ids = np.unique(labels)
    ids = ids[ids > 0]
    if ids.size == 0 or ids[-1] == ids.size:
        return labels, scores
    lut = np.zeros(int(ids[-1]) + 1, np.int32)
    lut[ids] = np.arange(1, ids.size + 1, dtype=np.int32)
    return lut[labels], {int(lut[i]): scores[int(i)] for i in ids if int(i) in scores}


# --------------------------------------------------------------------------- the loop


def _iteration(st: _State, net, p: KaizenParams, *, patch: int, box: int, radius: int, limit, tabu_r: int,
               threshold: float, mask_fraction: float | None) -> dict:
    """One iteration on the device; returns what the snapshot needs, on the host."""
    import torch

    from .._common.inference import as_inference_input

    dev = st.x.device
    h, w, half = st.h, st.w, st.half
    inside = (slice(half, half + h), slice(half, half + w))
    score = box_mean(st.error[inside], box)
    ok = (score > st.min_box) & ~st.tabu
    if st.peak_radius > 0:
        # Only maxima of the box map: the greedy choice would otherwise take points on
        # the flank of a cell whose peak was just suppressed (patches off-centre).
        ok &= score >= _max_filter(score, st.peak_radius)
    if p.min_unexplained > 0:
        ok &= score > p.min_unexplained * st.x_box
    score = torch.where(ok, score, torch.full_like(score, -math.inf))
    pts = greedy_points(score, radius, limit)
    k = int(pts.shape[0])
    if k == 0:
        return {"points": np.zeros((0, 2), np.int64), "accepted": np.zeros(0, bool),
                "gains": np.zeros(0, np.float32), "cell_ids": np.zeros(0, np.int32), "cells": None, "tops": None}
    # A point's patch on the padded canvas starts at the point's image coordinates.
    index = patch_index(pts, patch, st.wc).reshape(k, -1)
    flat_err = st.error.view(-1)
    inputs = st.pass_input.reshape(-1)[index].view(k, 1, patch, patch)
    cells = torch.cat([net.predict(as_inference_input(inputs[i : i + p.batch_size])) for i in range(0, k, p.batch_size)])
    cells = cells.reshape(k, -1).clamp_min_(0.0)  # a cell emits light; negative output is noise
    thr = cell_thresholds(cells, threshold, mask_fraction)
    if p.batched:
        accepted, gains = judge(flat_err[index], cells, thr, p.min_size, sequential=False)
        flat_err.index_put_((index[accepted].reshape(-1),), -cells[accepted].reshape(-1), accumulate=True)
    else:
        accepted, gains = judge(None, cells, thr, p.min_size, sequential=True, index=index, error=flat_err)
    acc_idx = torch.nonzero(accepted).squeeze(1)
    ids = torch.zeros(k, dtype=torch.int32, device=dev)
    if acc_idx.numel():
        flat_owner, flat_best = st.owner.view(-1), st.best.view(-1)
        grow = max(1, patch // 20)  # rims left by a slightly small reconstruction are 1-3 px wide
        if p.batched:  # disjoint patches: one call
            near = grown_owner(st.owner, grow).view(-1)
            got = assign_labels(flat_owner, flat_best, index[acc_idx], cells[acc_idx], thr[acc_idx],
                                p.merge_overlap, st.next_id, near)
            st.next_id = max(st.next_id, int(got.max()) + 1)
        else:  # patches may overlap: one cell after the other, in proposal order
            got_list = []
            for i in acc_idx.tolist():
                # The grown owner map is needed only inside this patch: compute it on
                # the patch's neighbourhood, not on the whole canvas for every cell.
                near = grown_owner_patch(st.owner, int(pts[i, 0]), int(pts[i, 1]), patch, grow)
                one = assign_labels(flat_owner, flat_best, index[i : i + 1], cells[i : i + 1], thr[i : i + 1],
                                    p.merge_overlap, st.next_id, near_values=near[None])
                st.next_id = max(st.next_id, int(one[0]) + 1)
                got_list.append(one)
            got = torch.cat(got_list)
        ids[acc_idx] = got
    # Every point tried in this pass becomes tabu, with its neighbourhood.
    ar = torch.arange(-tabu_r, tabu_r + 1, device=dev)
    ty = (pts[:, 0, None, None] + ar[None, :, None]).clamp(0, h - 1)
    tx = (pts[:, 1, None, None] + ar[None, None, :]).clamp(0, w - 1)
    st.tabu[ty.expand(-1, -1, tx.shape[2]), tx.expand(-1, ty.shape[1], -1)] = True
    lab, present = _labels_now(st, p.min_size)
    return {
        "points": pts.cpu().numpy(),
        "accepted": accepted.cpu().numpy(),
        "gains": gains.cpu().numpy(),
        "cell_ids": ids.cpu().numpy(),
        "cells": cells[acc_idx].view(-1, patch, patch).cpu().numpy() if acc_idx.numel() else None,
        "tops": pts[acc_idx].cpu().numpy() if acc_idx.numel() else None,
        # A copy: on the CPU ``.cpu()`` shares memory with the owner map, which the
        # next iteration updates in place, and a yielded snapshot must not change.
        "labels": lab.cpu().numpy().copy() if lab.device.type == "cpu" else lab.cpu().numpy(),
        "present": present.cpu().numpy(),
        "l1": float(st.error[inside].abs().sum()),
    }


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
    Closing the generator stops the run at once: all work happens between yields,
    and nothing of torch's inference mode leaks into the caller's code.
    """
    import torch

    from .._common.inference import inference_network

    p = params or KaizenParams()
    net = resolve_net(model)
    if device is not None:
        from .._common.device import choose_device

        net = net.to(choose_device(device))
    dev = next(net.parameters()).device
    net.eval()
    patch = check_patch_size(net, p)
    # Channels-last copy: the encoder's strided convolutions run 7x, the decoder's
    # transposed ones 2x faster on the CPU (docs/speed.md); the weights are the same.
    net = inference_network(net)
    img = np.asarray(image, dtype=np.float32)
    if img.ndim != 2 or min(img.shape) < 1:
        raise InputError(f"decompose needs a 2-D image, got shape {img.shape}")
    if not np.isfinite(img).all():
        raise InputError("decompose needs a finite image (no NaN / inf): normalise it with prepare_image first")
    from .dataset import pad_like_inference

    h, w = img.shape
    half = patch // 2
    box, supp, tabu_r = p.windows(patch)
    geometry = dict(
        patch=patch, box=box, radius=patch - 1 if p.batched else supp, tabu_r=tabu_r,
        limit=p.batch_points if p.batched else p.points_per_iteration,
        threshold=float(p.mask_threshold) * max(float(img.mean()), 0.0),
        mask_fraction=p.cell_mask_fraction(getattr(model, "metadata", None)),
    )
    lo, hi = progress_range
    canvas = torch.from_numpy(np.ascontiguousarray(pad_like_inference(img, patch, p.mirror_pad))).to(dev)
    st = _State(
        x=canvas, error=canvas.clone(), pass_input=canvas, best=torch.zeros_like(canvas),
        owner=torch.zeros(canvas.shape, dtype=torch.int32, device=dev),
        tabu=torch.zeros((h, w), dtype=torch.bool, device=dev), h=h, w=w, half=half, wc=int(canvas.shape[1]),
    )
    total = float(canvas[half : half + h, half : half + w].abs().sum().clamp_min(1e-12))
    st.x_box = box_mean(canvas[half : half + h, half : half + w], box)
    st.min_box = float(p.proposal_threshold) * max(float(img.mean()), 0.0)
    st.peak_radius = int(p.peak_radius if p.peak_radius is not None else box // 2)
    trace = DecompositionTrace((h, w), half, patch, input_image if input_image is not None else img, rescale)
    scores: dict[int, float] = {}
    if rescale is not None and not rescale.identity:
        sy, sx = rescale.input_shape[0] / h, rescale.input_shape[1] / w
    else:
        sy = sx = 1.0

    def to_input(lab: np.ndarray, smooth: bool = False) -> np.ndarray:
        # Live snapshots take the fast nearest-neighbour map; the final labels the
        # smooth one (outlines at the input's resolution, see Rescale.labels_to_input).
        return lab if rescale is None or rescale.identity else rescale.labels_to_input(lab, smooth=smooth)

    n_iter = 0
    pass_index = 0
    labels = np.zeros((h, w), np.int32)
    present: set[int] = set()
    l1 = total
    for pass_index in range(p.max_passes):
        if pass_index:
            st.pass_input = st.error.clone()  # later passes predict on the error image
            st.tabu.zero_()
        kept_in_pass = 0
        tried_in_pass = 0
        for it in range(1, p.max_iterations + 1):
            with torch.inference_mode():
                r = _iteration(st, net, p, **geometry)
            n_iter += 1
            k = len(r["points"])
            acc = r["accepted"]
            ids = r["cell_ids"]
            new_ids = [int(i) for i in ids[acc] if int(i) not in scores]
            for i in np.flatnonzero(acc):
                scores.setdefault(int(ids[i]), float(r["gains"][i]))
            if r["cells"] is not None:
                trace.add(r["tops"][:, 0], r["tops"][:, 1], r["cells"])
            if "labels" in r:
                labels = r["labels"]
                l1 = r["l1"]
                present = set(r["present"].tolist())
            n_acc = int(acc.sum())
            kept_in_pass += n_acc
            pts = r["points"].astype(np.float64)
            pts_in = np.column_stack([(pts[:, 0] + 0.5) * sy - 0.5, (pts[:, 1] + 0.5) * sx - 0.5]) if k else pts
            new = tuple(i for i in new_ids if i in present)
            yield DecompositionSnapshot(
                stage="iteration",
                progress=lo + (hi - lo) * min(0.99, max(0.0, 1.0 - l1 / total)),
                message=f"pass {pass_index + 1}, iteration {it}: {n_acc} of {k} accepted, {len(present)} cells",
                labels=to_input(labels),
                maps=lazy_maps(trace, len(trace)),
                changed=new,
                iteration=n_iter,
                pass_index=pass_index,
                iteration_in_pass=it,
                proposals=pts_in.reshape(-1, 2),
                accepted=acc.astype(bool),
                gains=r["gains"].astype(np.float32),
                cell_ids=ids.astype(np.int32),
                new_labels=new,
                scores=freeze_scores({i: scores[i] for i in present if i in scores}),
                n_cells=st.next_id - 1,
                n_accepted=len(trace),
                error_l1=l1 / (h * w),
                trace=trace,
            )
            # The paper ends a pass when its N best points are all rejected. Judged
            # on many points at once, the same rule is "fewer than one in N kept";
            # for k = N points it is exactly the paper's rule.
            if n_acc == 0 or n_acc * p.points_per_iteration < k:
                break
            # The paper caps a pass at max_iterations x N points; the batched loop tries
            # many more points per iteration, so it meets the same cap in fewer.
            tried_in_pass += k
            if tried_in_pass >= p.max_iterations * p.points_per_iteration:
                break
        if kept_in_pass == 0:
            break
    final, final_scores = finalize_labels(labels, scores, p.min_size)
    final, final_scores = _renumber(to_input(final, smooth=True), final_scores)
    outline = p.outline_constants(getattr(model, "metadata", None))
    if outline is not None and final.any():
        from .outlines import image_outlines

        seen = input_image if input_image is not None else img
        learned = getattr(getattr(model, "net", model), "outline_rule", None) if p.learned_outline else None
        final, lut = image_outlines(final, seen, **outline, rule=None if learned is None else learned.probability)
        merged: dict[int, float] = {}
        for old_id, new_id in enumerate(lut[1:], start=1):
            if new_id and int(new_id) not in merged and old_id in final_scores:
                merged[int(new_id)] = final_scores[old_id]  # a merged cell keeps its first part's score
        final_scores = merged
    snap = DecompositionSnapshot(
        stage="labels",
        progress=hi,
        message=f"{int(final.max())} cells in {n_iter} iterations, {pass_index + 1} passes",
        labels=final,
        maps=lazy_maps(trace, len(trace)),
        changed=tuple(range(1, int(final.max()) + 1)),
        done=True,
        iteration=n_iter,
        pass_index=pass_index,
        n_cells=int(final.max()),
        n_accepted=len(trace),
        scores=freeze_scores(final_scores),
        error_l1=l1 / (h * w),
        trace=trace,
    )
    yield snap
    return snap
