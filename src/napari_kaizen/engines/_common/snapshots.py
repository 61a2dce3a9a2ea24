"""What long computations yield: small, typed, immutable snapshots.

Engines yield, front ends draw. Every long computation in :mod:`napari_kaizen.engines`
is a generator of these dataclasses; the napari widgets update layers from them on the
GUI thread, the CLI turns ``progress`` into a progress bar, and tests drive the
generators directly. Closing the generator cancels the work.

Engine-specific snapshots (e.g. the Kaizen decomposition's) subclass :class:`Snapshot`,
so a front end can always read ``stage``, ``progress`` and ``message``.
"""

from __future__ import annotations

import math
from collections.abc import Generator, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np


@dataclass(frozen=True)
class Snapshot:
    """Base of every yielded value.

    Attributes
    ----------
    stage : str
        What is running, e.g. ``'tiles'``, ``'seeds'``, ``'labels'``, ``'iteration'``,
        ``'training'``.
    progress : float
        Fraction of the whole run done, in ``[0, 1]``.
    message : str
        One line for a status bar.
    """

    stage: str
    progress: float
    message: str = ""


@dataclass(frozen=True)
class SegmentationSnapshot(Snapshot):
    """A step of a segmentation run.

    Attributes
    ----------
    labels : ndarray of int, optional
        Instance labels found so far, on the input grid; ``None`` until there are any.
    maps : mapping of str to ndarray
        Named intermediate images on the input grid (``'probability'``,
        ``'distance'``, ``'fluorescence'``, ...), for a front end to show.
    changed : tuple of int
        Label values added or changed since the previous snapshot.
    done : bool
        True on the last snapshot, whose ``labels`` is the result.
    plane : tuple of int, optional
        Index of the plane of a stack this snapshot belongs to (``None`` for 2-D input,
        and for the final snapshot of a stack run, whose labels are the whole stack).
    """

    labels: np.ndarray | None = None
    maps: Mapping[str, np.ndarray] = field(default_factory=dict)
    changed: tuple[int, ...] = ()
    done: bool = False
    plane: tuple[int, ...] | None = None


@dataclass(frozen=True)
class TrainingSnapshot(Snapshot):
    """A step of a training or fine-tuning run.

    Attributes
    ----------
    step, total_steps : int
        Optimiser steps done and planned.
    loss : float
        Training loss of this step (smoothed over the last few steps).
    components : mapping of str to float
        Named parts of the loss (e.g. ``{'mse': ..., 'bce': ...}``).
    validation : mapping of str to float
        Validation figures, when this step ran a validation.
    weights_path : Path, optional
        Where the weights were written (last snapshot only).
    done : bool
        True on the last snapshot.
    """

    step: int = 0
    total_steps: int = 0
    loss: float = math.nan
    components: Mapping[str, float] = field(default_factory=dict)
    validation: Mapping[str, float] = field(default_factory=dict)
    weights_path: Path | None = None
    done: bool = False


S = TypeVar("S", bound=Snapshot)


def empty_field_snapshot(image: np.ndarray, cls: type = SegmentationSnapshot, *, fluorescence: bool = True):
    """The final snapshot (no objects, with the reason) if ``image`` is an empty field, else None.

    Every image is checked for structure
    (:func:`~napari_kaizen.engines._common.normalize.noise_field_message`); images of
    engines that find bright objects (``fluorescence``) also for contrast
    (:func:`~napari_kaizen.engines._common.normalize.empty_field_message`). ``cls`` is
    the engine's snapshot class (a :class:`SegmentationSnapshot` subclass).
    """
    from .normalize import field_message

    message = field_message(image, fluorescence=fluorescence)
    if message is None:
        return None
    return cls(stage="labels", progress=1.0, message=message, labels=np.zeros(np.shape(image), np.int32), done=True)


def run_to_end(snapshots: Iterable[S]) -> S:
    """Drive a snapshot generator to its end and return the last snapshot.

    Raises
    ------
    RuntimeError
        If the generator yielded nothing.
    """
    last: S | None = None
    for last in snapshots:  # noqa: B007 (keeping the loop variable is the point)
        pass
    if last is None:
        raise RuntimeError("the computation yielded no snapshot")
    return last


def relay(inner: Generator[Any, None, Any], lo: float, hi: float) -> Generator[Snapshot, None, Any]:
    """Re-yield ``inner``'s snapshots with ``progress`` mapped into ``[lo, hi]``.

    Lets an engine compose stages (tiles, then seeds, then labels) into one progress
    scale; returns ``inner``'s return value, so ``result = yield from relay(...)`` works.
    """
    from dataclasses import replace

    gen = iter(inner)
    try:
        while True:
            try:
                snap = next(gen)
            except StopIteration as stop:
                return stop.value
            yield replace(snap, progress=lo + (hi - lo) * float(snap.progress))
    finally:
        # Closing the outer generator (cancel) must close the inner one at once.
        close = getattr(gen, "close", None)
        if close is not None:
            close()
