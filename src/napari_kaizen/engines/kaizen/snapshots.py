"""What the Kaizen decomposition yields: one :class:`DecompositionSnapshot` per iteration.

A front end draws, every iteration, the internal image (all cells predicted so far),
the error image (input minus internal), the proposed points coloured by accepted /
rejected, and the labels so far, and lets a person scrub back through iterations.
To keep that cheap, a snapshot does **not** carry the internal and error images:
all snapshots of one run share one append-only :class:`DecompositionTrace` (the
normalised input once, plus each accepted cell's ``P x P`` patch once, about 6 kB
per cell at ``P = 40``), and :attr:`DecompositionSnapshot.internal` /
:attr:`DecompositionSnapshot.error` rebuild the images of *that* iteration on demand
in ``O(H*W + cells * P*P)``. A snapshot itself holds its labels (4 bytes per pixel)
and ``O(N)`` numbers about its proposals.

This dataclass is a stable interface (the napari widget is built against it):
fields are only ever added, with defaults.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np

from .._common.snapshots import SegmentationSnapshot


class DecompositionTrace:
    """Append-only record of the cells accepted in one decomposition run.

    Shared by every snapshot of the run; snapshot ``k`` reads only the first
    ``n_accepted`` entries, which never change afterwards, so old snapshots stay valid
    while the run goes on.

    Parameters
    ----------
    work_shape : (int, int)
        Shape of the image the model works on (after rescaling).
    half : int
        Padding on each side of the work image (half the patch).
    patch_size : int
    input_image : ndarray, shape (H, W)
        The normalised image on the grid snapshots report (the input grid).
    rescale : Rescale, optional
        Model grid -> input grid mapping (``None``: the same grid).
    """

    def __init__(self, work_shape, half: int, patch_size: int, input_image: np.ndarray, rescale=None) -> None:
        self.work_shape = tuple(int(s) for s in work_shape)
        self.half = int(half)
        self.patch_size = int(patch_size)
        self.input_image = np.asarray(input_image, dtype=np.float32)
        self.rescale = rescale
        self._lock = threading.Lock()
        self._y: list[int] = []
        self._x: list[int] = []
        self._patches: list[np.ndarray] = []

    def __len__(self) -> int:
        return len(self._patches)

    def add(self, tops: np.ndarray, lefts: np.ndarray, patches: np.ndarray) -> None:
        """Append accepted cells: patch top-left corners on the padded canvas, and patches."""
        with self._lock:
            for y, x, p in zip(np.asarray(tops).tolist(), np.asarray(lefts).tolist(), np.asarray(patches)):
                self._y.append(int(y))
                self._x.append(int(x))
                self._patches.append(np.asarray(p, dtype=np.float32))

    def cell(self, k: int) -> tuple[int, int, np.ndarray]:
        """``(top, left, patch)`` of the ``k``-th accepted cell (0-based; canvas coords)."""
        return self._y[k], self._x[k], self._patches[k]

    def internal_work(self, n_accepted: int) -> np.ndarray:
        """Internal image after the first ``n_accepted`` kept predictions, on the model's grid."""
        h, w = self.work_shape
        p, half = self.patch_size, self.half
        canvas = np.zeros((h + 2 * half, w + 2 * half), np.float32)
        for k in range(min(int(n_accepted), len(self._patches))):
            y, x = self._y[k], self._x[k]
            canvas[y : y + p, x : x + p] += self._patches[k]
        return canvas[half : half + h, half : half + w]

    def internal(self, n_accepted: int) -> np.ndarray:
        """Internal image after the first ``n_accepted`` kept predictions, on the input grid (float32)."""
        work = self.internal_work(n_accepted)
        if self.rescale is None or self.rescale.identity:
            return np.ascontiguousarray(work)
        return self.rescale.to_input(work)

    def error(self, n_accepted: int) -> np.ndarray:
        """Input minus internal image after ``n_accepted`` kept predictions (input grid)."""
        return self.input_image - self.internal(n_accepted)


class _LazyMaps(Mapping):
    """``{'internal': ..., 'error': ...}`` computed when read (see :class:`DecompositionTrace`)."""

    _KEYS = ("internal", "error")

    def __init__(self, trace: DecompositionTrace | None, n_cells: int) -> None:
        self._trace = trace
        self._n = n_cells

    def __getitem__(self, key: str) -> np.ndarray:
        if self._trace is None or key not in self._KEYS:
            raise KeyError(key)
        return getattr(self._trace, key)(self._n)

    def __iter__(self) -> Iterator[str]:
        return iter(self._KEYS if self._trace is not None else ())

    def __len__(self) -> int:
        return len(self._KEYS) if self._trace is not None else 0

    def __repr__(self) -> str:
        return f"<lazy maps {list(self)} at {self._n} cells>"


def lazy_maps(trace: DecompositionTrace | None, n_cells: int) -> Mapping[str, np.ndarray]:
    """The ``maps`` of a snapshot: internal and error images, rebuilt when read."""
    return _LazyMaps(trace, n_cells)


_EMPTY_POINTS = np.zeros((0, 2), np.float64)
_EMPTY_FLAGS = np.zeros(0, bool)
_EMPTY_GAINS = np.zeros(0, np.float32)
_EMPTY_IDS = np.zeros(0, np.int32)


@dataclass(frozen=True)
class DecompositionSnapshot(SegmentationSnapshot):
    """One iteration of the Kaizen decomposition (or its final result).

    Everything is on the **input grid** (the image given to ``segment``), even when
    the model ran on a rescaled copy.

    Attributes
    ----------
    stage : str
        ``'iteration'`` for every iteration, ``'labels'`` for the final snapshot.
    progress : float
        Share of the input's brightness explained so far, ``1 - |error|_1 / |input|_1``
        (a run ends when no proposal helps, not at a known step count), capped at
        0.99 until the final snapshot, which has 1.0.
    message : str
        One line, e.g. ``'pass 1, iteration 3: 27 of 31 accepted, 88 cells'``.
    labels : ndarray of int32, shape (H, W)
        Labels so far. While running, a cell's id is its acceptance number (1, 2,
        ... in the order cells were accepted) and never changes, so colours are
        stable; ids of cells that lost all but ``min_size`` pixels to later
        neighbours are absent (gaps). The final snapshot renumbers them 1..N in the
        same order.
    maps : mapping
        ``{'internal': ..., 'error': ...}``, the same arrays as :attr:`internal` and
        :attr:`error`, computed when read.
    changed : tuple of int
        Same as ``new_labels`` (the generic field every segmentation snapshot has).
    done : bool
        True on the final snapshot only.
    iteration : int
        Iterations run so far over all passes, 1-based (0 on the final snapshot means
        no iteration ran).
    pass_index : int
        Pass of this iteration, 0-based. Pass 0 predicts on the input; pass ``k > 0``
        predicts on the error image left when pass ``k - 1`` ended.
    iteration_in_pass : int
        Iteration within the pass, 1-based.
    proposals : ndarray of float64, shape (N, 2)
        ``(y, x)`` of the points proposed in this iteration (input-grid pixel
        coordinates; may be fractional when the model ran rescaled), in proposal
        order (highest box-filtered error first).
    accepted : ndarray of bool, shape (N,)
        Whether the cell predicted at each proposal was kept.
    gains : ndarray of float32, shape (N,)
        Relative change of the L1 error each proposal's cell would make /made:
        ``(|E|_1 - |E - cell|_1) / |cell|_1`` over its patch. Positive = the error
        went down; accepted proposals have ``gain > 0``.
    cell_ids : ndarray of int32, shape (N,)
        For each proposal, the label id its kept cell belongs to: a new id, or the id
        of the earlier cell it corrected (see ``KaizenParams.merge_overlap``); 0 for
        rejected proposals. Ids are those of ``labels`` while running (the final
        snapshot has no proposals).
    new_labels : tuple of int
        Ids of the cells created in this iteration that are present in ``labels``.
    scores : mapping of int to float
        For every id in ``labels``: the gain with which that cell was accepted, in
        (0, 1]; 1 means its predicted image explained exactly as much error as its
        own brightness. Low scores are the least certain cells: review them first.
    n_cells : int
        Label ids created so far (cells later dropped as too small included); on
        the final snapshot, the number of cells in ``labels``.
    n_accepted : int
        Predictions kept so far (new cells and corrections): how many entries of
        ``trace`` the internal image of this iteration sums.
    error_l1 : float
        Mean absolute error ``|input - internal|`` over the image on the model grid.
    trace : DecompositionTrace
        Shared record the images are rebuilt from (not compared, not printed).

    Notes
    -----
    Memory per snapshot: ``labels`` (4 bytes per input pixel) plus ``O(N)``. The
    shared trace adds ``4 * P * P`` bytes per kept prediction once per run. Reading
    :attr:`internal` or :attr:`error` costs ``O(H*W + n_accepted * P*P)``; read
    each once per drawn frame.
    """

    iteration: int = 0
    pass_index: int = 0
    iteration_in_pass: int = 0
    proposals: np.ndarray = field(default_factory=lambda: _EMPTY_POINTS.copy())
    accepted: np.ndarray = field(default_factory=lambda: _EMPTY_FLAGS.copy())
    gains: np.ndarray = field(default_factory=lambda: _EMPTY_GAINS.copy())
    cell_ids: np.ndarray = field(default_factory=lambda: _EMPTY_IDS.copy())
    new_labels: tuple[int, ...] = ()
    scores: Mapping[int, float] = field(default_factory=lambda: MappingProxyType({}))
    n_cells: int = 0
    n_accepted: int = 0
    error_l1: float = math.nan
    trace: DecompositionTrace | None = field(default=None, repr=False, compare=False)

    @property
    def internal(self) -> np.ndarray | None:
        """Internal image (sum of the accepted cells' predictions), float32 (H, W)."""
        return None if self.trace is None else self.trace.internal(self.n_accepted)

    @property
    def error(self) -> np.ndarray | None:
        """Error image, normalised input minus :attr:`internal`, float32 (H, W)."""
        return None if self.trace is None else self.trace.error(self.n_accepted)

    def least_certain(self, k: int | None = None) -> list[int]:
        """Label ids sorted by score, lowest (least certain) first; the first ``k``."""
        ids = sorted(self.scores, key=lambda i: (self.scores[i], i))
        return ids if k is None else ids[: int(k)]


def freeze_scores(scores: Mapping[Any, float]) -> Mapping[int, float]:
    """A read-only copy of ``{id: score}`` with plain ``int`` / ``float`` items."""
    return MappingProxyType({int(k): float(v) for k, v in scores.items()})
