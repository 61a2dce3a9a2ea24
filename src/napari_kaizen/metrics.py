"""Accuracy of segmentations: instance AP / mAP, error types (merges, splits, misses, false
positives), Dice, IoU (Jaccard), PCC.

Average precision follows the Kaizen paper and the 2018 Data Science Bowl: at an IoU
threshold ``t``, predicted and true objects are matched one-to-one (a pair may match
only if its IoU exceeds ``t``; among candidates the matching maximises the total IoU),
and

    AP(t) = TP / (TP + FP + FN)

for one image. The dataset figure is the mean of the per-image values, and mAP is the
mean of AP over ``t = 0.50, 0.55, ..., 0.95``. Labels need not be consecutive (gaps
are fine); 0 is background. An image with no objects in either labelling scores 1 (there
is nothing to get wrong).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from .errors import InputError

#: The IoU thresholds of mAP: 0.50, 0.55, ..., 0.95.
IOU_THRESHOLDS: tuple[float, ...] = tuple(float(t) for t in np.round(np.arange(0.5, 0.951, 0.05), 2))


def check_labels(arr: np.ndarray, name: str = "labels") -> np.ndarray:
    """``arr`` as int64 labels, or one line saying why it is not a label image.

    Raises
    ------
    InputError
        Negative values, fractional / NaN / infinite values, or a non-numeric dtype.
    """
    arr = np.asarray(arr)
    if arr.dtype.kind == "f":
        finite = np.isfinite(arr)
        if not finite.all() or not np.all(np.mod(arr, 1) == 0):
            bad = arr[~finite] if not finite.all() else arr[np.mod(arr, 1) != 0]
            raise InputError(f"{name} holds non-integer values (e.g. {float(bad.flat[0])!r}): labels must be integers "
                             "(whole numbers, 0 for background); is it an intensity or probability image?")
    elif arr.dtype.kind not in "biu":
        raise InputError(f"{name} labels must be integers, got dtype {arr.dtype}")
    if arr.size and arr.min() < 0:
        raise InputError(f"{name} holds negative values (minimum {arr.min()!s}): labels are 0 for background and "
                         "positive ids for objects")
    return arr.astype(np.int64, copy=False)


def looks_like_intensity(labels: np.ndarray) -> str | None:
    """Why an integer image looks like a micrograph rather than labels (None: it looks like labels).

    Labels have background (0) and objects of many pixels each; a micrograph has almost
    no exact zeros and nearly as many distinct values as pixels in a region.
    """
    arr = np.asarray(labels)
    if arr.size < 64:
        return None
    ids, counts = np.unique(arr[arr > 0], return_counts=True)
    if ids.size < 2:
        return None
    background = 1.0 - counts.sum() / arr.size
    mean_area = counts.sum() / ids.size
    if background < 0.01 and ids.size > 255:
        return f"it has no background (0) and {ids.size} distinct values"
    if mean_area < 4:
        return f"its {ids.size} 'objects' average {mean_area:.1f} pixels"
    return None


def _check_pair(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    gt, pred = np.asarray(gt), np.asarray(pred)
    if gt.shape != pred.shape:
        raise InputError(f"ground truth and prediction differ in shape: {gt.shape} vs {pred.shape}")
    return check_labels(gt, "ground truth"), check_labels(pred, "prediction")


def iou_matrix(gt: np.ndarray, pred: np.ndarray):
    """IoU of every overlapping (true, predicted) object pair, as a sparse matrix.

    Memory is proportional to the objects and their overlapping pairs, not to
    ``n_true x n_pred`` (a field of 50 000 nuclei would need 20 GB dense).

    Returns
    -------
    iou : scipy.sparse.csr_matrix, shape (n_true, n_pred)
        Pairs that do not overlap are absent (IoU 0).
    gt_ids, pred_ids : ndarray
        The label values of the rows and columns.
    """
    from scipy import sparse

    ov = _overlaps(gt, pred)
    return (sparse.csr_matrix((ov.iou, (ov.rows, ov.cols)), shape=(ov.gt_ids.size, ov.pred_ids.size)),
            ov.gt_ids, ov.pred_ids)


@dataclass(frozen=True)
class Matching:
    """Result of one-to-one matching at one IoU threshold.

    Attributes
    ----------
    threshold : float
    tp, fp, fn : int
    pairs : ndarray, shape (tp, 2)
        Matched ``(true_id, pred_id)`` label values.
    mean_matched_iou : float
        Mean IoU of the matched pairs (NaN when there are none).
    """

    threshold: float
    tp: int
    fp: int
    fn: int
    pairs: np.ndarray
    mean_matched_iou: float

    @property
    def ap(self) -> float:
        """``TP / (TP + FP + FN)``; 1.0 when both labellings are empty."""
        denom = self.tp + self.fp + self.fn
        return 1.0 if denom == 0 else self.tp / denom

    @property
    def precision(self) -> float:
        return 1.0 if self.tp + self.fp == 0 else self.tp / (self.tp + self.fp)

    @property
    def recall(self) -> float:
        return 1.0 if self.tp + self.fn == 0 else self.tp / (self.tp + self.fn)


def _match_from_iou(iou, gt_ids: np.ndarray, pr_ids: np.ndarray, threshold: float) -> Matching:
    """One-to-one matching at ``threshold`` from the sparse IoU of :func:`iou_matrix`."""
    from scipy import sparse
    from scipy.optimize import linear_sum_assignment

    n_gt, n_pr = iou.shape
    if n_gt == 0 or n_pr == 0:
        return Matching(threshold, 0, n_pr, n_gt, np.zeros((0, 2), np.int64), float("nan"))
    coo = sparse.coo_matrix(iou)
    ok = coo.data > threshold
    r_all, c_all, v_all = coo.row[ok], coo.col[ok], coo.data[ok]
    if threshold >= 0.5 or r_all.size == 0:
        # IoU > 0.5 makes a match unique both ways: no assignment problem to solve.
        rows, cols, vals = r_all, c_all, v_all
    else:
        # The candidates fall into small groups of objects that touch each other: solve
        # each group's assignment on its own (a dense block of that group only).
        graph = sparse.coo_matrix((np.ones(r_all.size), (r_all, n_gt + c_all)), shape=(n_gt + n_pr,) * 2)
        _, comp = sparse.csgraph.connected_components(graph, directed=False)
        group = comp[r_all]
        order = np.argsort(group, kind="stable")
        bounds = np.flatnonzero(np.diff(group[order])) + 1
        rows_l, cols_l, vals_l = [], [], []
        for idx in np.split(order, bounds):
            ur, ri = np.unique(r_all[idx], return_inverse=True)
            uc, ci = np.unique(c_all[idx], return_inverse=True)
            cost = np.zeros((ur.size, uc.size))
            cost[ri, ci] = -v_all[idx]
            r, c = linear_sum_assignment(cost)
            good = cost[r, c] < 0
            rows_l.append(ur[r[good]])
            cols_l.append(uc[c[good]])
            vals_l.append(-cost[r[good], c[good]])
        rows, cols, vals = (np.concatenate(x) for x in (rows_l, cols_l, vals_l))
    tp = int(rows.size)
    pairs = np.column_stack([gt_ids[rows], pr_ids[cols]]) if tp else np.zeros((0, 2), np.int64)
    mean_iou = float(vals.mean()) if tp else float("nan")
    return Matching(threshold, tp, n_pr - tp, n_gt - tp, pairs, mean_iou)


def match(gt: np.ndarray, pred: np.ndarray, threshold: float = 0.5) -> Matching:
    """Match true and predicted objects one-to-one at an IoU threshold.

    Parameters
    ----------
    gt, pred : ndarray of int
        Label images of the same shape (0 = background; ids need not be consecutive).
    threshold : float
        A pair can match only if its IoU is strictly greater than this.

    Returns
    -------
    Matching
    """
    iou, gi, pi = iou_matrix(gt, pred)
    return _match_from_iou(iou, gi, pi, threshold)


def average_precision(
    gt: np.ndarray, pred: np.ndarray, thresholds: Sequence[float] = IOU_THRESHOLDS
) -> dict[float, float]:
    """AP = TP / (TP + FP + FN) of one image at each IoU threshold.

    Examples
    --------
    >>> import numpy as np
    >>> gt = np.zeros((4, 4), int); gt[:2, :2] = 1; gt[2:, 2:] = 7
    >>> average_precision(gt, gt, thresholds=[0.5])
    {0.5: 1.0}
    """
    iou, gi, pi = iou_matrix(gt, pred)
    return {float(t): _match_from_iou(iou, gi, pi, float(t)).ap for t in thresholds}


def mean_average_precision(gt: np.ndarray, pred: np.ndarray) -> float:
    """Mean of :func:`average_precision` over IoU 0.50:0.05:0.95 for one image."""
    return float(np.mean(list(average_precision(gt, pred).values())))


@dataclass(frozen=True)
class Evaluation:
    """Dataset-level scores: per-threshold AP averaged over images, and mAP."""

    ap: dict[float, float]
    n_images: int
    n_true: int
    n_pred: int

    @property
    def map(self) -> float:
        return float(np.mean([self.ap[t] for t in IOU_THRESHOLDS if t in self.ap]))

    @property
    def ap50(self) -> float:
        return self.ap[0.5]

    @property
    def ap75(self) -> float:
        return self.ap[0.75]

    def table(self) -> str:
        """Plain-text table: one line per threshold, then mAP."""
        lines = [f"images {self.n_images}  true objects {self.n_true}  predicted {self.n_pred}"]
        lines += [f"AP@{t:.2f}  {v:.4f}" for t, v in sorted(self.ap.items())]
        lines.append(f"mAP      {self.map:.4f}")
        return "\n".join(lines)


def evaluate(
    gts: Iterable[np.ndarray], preds: Iterable[np.ndarray], thresholds: Sequence[float] = IOU_THRESHOLDS
) -> Evaluation:
    """Mean over images of the per-image AP at each threshold (the paper's protocol)."""
    per_image: list[dict[float, float]] = []
    n_true = n_pred = 0
    for gt, pred in zip(gts, preds, strict=True):
        per_image.append(average_precision(gt, pred, thresholds))
        n_true += int(np.count_nonzero(np.unique(gt)))
        n_pred += int(np.count_nonzero(np.unique(pred)))
    if not per_image:
        raise ValueError("no images to evaluate")
    ap = {float(t): float(np.mean([d[float(t)] for d in per_image])) for t in thresholds}
    return Evaluation(ap=ap, n_images=len(per_image), n_true=n_true, n_pred=n_pred)


class _Overlaps(NamedTuple):
    """Every object of both labellings and every overlapping pair, as arrays."""

    gt_ids: np.ndarray  # (n_true,) sorted
    gt_area: np.ndarray  # (n_true,) pixels
    pred_ids: np.ndarray
    pred_area: np.ndarray
    pairs: np.ndarray  # (k, 2) of (true id, pred id)
    rows: np.ndarray  # (k,) index of each pair's true object in gt_ids
    cols: np.ndarray  # (k,) index of its predicted object in pred_ids
    inter: np.ndarray  # (k,) pixels in common
    iou: np.ndarray  # (k,)


def _overlaps(gt: np.ndarray, pred: np.ndarray) -> _Overlaps:
    """Sparse overlaps of two labellings (:class:`_Overlaps`).

    Memory is proportional to the overlapping pixels and pairs, not to the product of
    the object counts, so fields of tens of thousands of objects are fine.
    """
    gt, pred = _check_pair(gt, pred)
    g_ids, g_area = np.unique(gt[gt > 0], return_counts=True)
    p_ids, p_area = np.unique(pred[pred > 0], return_counts=True)
    fg = (gt > 0) & (pred > 0)
    if fg.any():
        pairs, counts = np.unique(np.column_stack([gt[fg], pred[fg]]), axis=0, return_counts=True)
    else:
        pairs, counts = np.zeros((0, 2), np.int64), np.zeros(0, np.int64)
    rows, cols = np.searchsorted(g_ids, pairs[:, 0]), np.searchsorted(p_ids, pairs[:, 1])
    inter = counts.astype(np.float64)
    iou = inter / (g_area[rows] + p_area[cols] - inter)
    return _Overlaps(g_ids.astype(np.int64), g_area, p_ids.astype(np.int64), p_area, pairs, rows, cols, inter, iou)


def count_merges(gt: np.ndarray, pred: np.ndarray, coverage: float = 0.5) -> int:
    """Predicted objects that swallowed two or more true objects.

    A true object counts as swallowed by a predicted one when at least ``coverage`` of
    its area lies inside it.
    """
    return error_types(gt, pred, coverage=coverage).merges


@dataclass(frozen=True)
class ErrorTypes:
    """What went wrong in one segmentation, by kind of error.

    Attributes
    ----------
    n_true, n_pred : int
        Objects in the ground truth and in the prediction.
    matched : int
        One-to-one matches at IoU > 0.5.
    merges : int
        Predicted objects that cover ``coverage`` or more of the area of two or more true
        objects (touching nuclei drawn as one).
    merged_true : int
        True objects swallowed by those merges.
    splits : int
        True objects of which two or more predicted objects each lie mostly
        (``coverage`` of their own area) inside (one nucleus drawn as several).
    misses : int
        Unmatched true objects that are part of no merge or split (nothing, or too
        little, was drawn there).
    false_positives : int
        Unmatched predicted objects that are part of no merge or split (drawn where
        there is no nucleus: background, debris, fragments).
    mean_iou : float
        Mean IoU of the matched pairs (NaN when there are none).
    """

    n_true: int
    n_pred: int
    matched: int
    merges: int
    merged_true: int
    splits: int
    misses: int
    false_positives: int
    mean_iou: float

    def __add__(self, other: ErrorTypes) -> ErrorTypes:
        """Totals over images; ``mean_iou`` weighted by the matches."""
        m = self.matched + other.matched
        ious = [(x.mean_iou, x.matched) for x in (self, other) if x.matched]
        mean = float(sum(v * n for v, n in ious) / m) if m else float("nan")
        counts = {f: getattr(self, f) + getattr(other, f) for f in
                  ("n_true", "n_pred", "matched", "merges", "merged_true", "splits", "misses", "false_positives")}
        return ErrorTypes(**counts, mean_iou=mean)

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    def line(self) -> str:
        """One line a person reads."""
        return (f"true {self.n_true}  predicted {self.n_pred}  matched@0.5 {self.matched}  merges {self.merges} "
                f"(swallowing {self.merged_true})  splits {self.splits}  misses {self.misses}  "
                f"false positives {self.false_positives}  mean matched IoU {self.mean_iou:.3f}")


def error_types(gt: np.ndarray, pred: np.ndarray, *, coverage: float = 0.5) -> ErrorTypes:
    """Count matches, merges, splits, misses and false positives of one segmentation.

    Parameters
    ----------
    gt, pred : ndarray of int
        Label images of the same shape (0 = background).
    coverage : float
        Share of an object's area that must lie inside another for it to count as
        swallowed by it (merges) or as a piece of it (splits).

    Returns
    -------
    ErrorTypes

    Examples
    --------
    >>> import numpy as np
    >>> gt = np.zeros((6, 12), int); gt[1:5, 1:5] = 1; gt[1:5, 5:9] = 2; gt[1:3, 10:12] = 3
    >>> pred = np.zeros_like(gt); pred[1:5, 1:9] = 4; pred[4:6, 10:12] = 5
    >>> e = error_types(gt, pred)
    >>> e.matched, e.merges, e.merged_true, e.misses, e.false_positives
    (0, 1, 2, 1, 1)
    """
    ov = _overlaps(gt, pred)
    pairs, counts, iou = ov.pairs, ov.inter, ov.iou
    g_a, p_a = ov.gt_area[ov.rows], ov.pred_area[ov.cols]
    good = iou > 0.5  # unique both ways: a one-to-one matching without an assignment problem
    matched_g, matched_p = set(pairs[good, 0].tolist()), set(pairs[good, 1].tolist())
    swallowed = pairs[counts >= coverage * g_a]  # (true, pred): the true object lies mostly in pred
    merge_preds, merged_true = set(), set()
    if swallowed.size:
        preds, per_pred = np.unique(swallowed[:, 1], return_counts=True)
        merge_preds = set(preds[per_pred >= 2].tolist())
        merged_true = {int(g) for g, p in swallowed if int(p) in merge_preds}
    pieces = pairs[counts >= coverage * p_a]  # (true, pred): the prediction lies mostly in true
    split_true, split_preds = set(), set()
    if pieces.size:
        trues, per_true = np.unique(pieces[:, 0], return_counts=True)
        split_true = set(trues[per_true >= 2].tolist())
        split_preds = {int(p) for g, p in pieces if int(g) in split_true}
    misses = set(ov.gt_ids.tolist()) - matched_g - merged_true - split_true
    fps = set(ov.pred_ids.tolist()) - matched_p - merge_preds - split_preds
    return ErrorTypes(n_true=ov.gt_ids.size, n_pred=ov.pred_ids.size, matched=int(good.sum()), merges=len(merge_preds),
                      merged_true=len(merged_true), splits=len(split_true), misses=len(misses),
                      false_positives=len(fps), mean_iou=float(iou[good].mean()) if good.any() else float("nan"))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice coefficient of two binary masks (non-zero = foreground); 1 when both are empty."""
    a, b = np.asarray(a) != 0, np.asarray(b) != 0
    if a.shape != b.shape:
        raise ValueError(f"masks differ in shape: {a.shape} vs {b.shape}")
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2.0 * np.logical_and(a, b).sum() / total)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union (Jaccard index) of two binary masks; 1 when both are empty."""
    a, b = np.asarray(a) != 0, np.asarray(b) != 0
    if a.shape != b.shape:
        raise ValueError(f"masks differ in shape: {a.shape} vs {b.shape}")
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


jaccard = iou


def pcc(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation coefficient of two images (NaN if either is constant)."""
    x = np.asarray(a, dtype=np.float64).ravel()
    y = np.asarray(b, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"images differ in size: {np.shape(a)} vs {np.shape(b)}")
    x = x - x.mean()
    y = y - y.mean()
    denom = np.sqrt((x * x).sum() * (y * y).sum())
    return float("nan") if denom == 0 else float((x * y).sum() / denom)
