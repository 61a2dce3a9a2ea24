"""Run a 2-D engine over every plane of a z-stack or time series.

3-D stacks are treated as sequences of planes (the U-Net paper's practice for
anisotropic stacks); each plane is segmented on its own and label ids are offset so
they are unique in the whole stack (a measurements table then has one row per object).
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import replace

import numpy as np

from ...errors import InputError
from .normalize import iter_planes
from .snapshots import SegmentationSnapshot, Snapshot


def _resolve_stack_diameter(params, planes):
    """Estimate an ``'auto'`` diameter once for the whole stack.

    Objects have one size throughout a stack, but the planes near its top and bottom
    cut few of them; measuring on the planes with the most contrast first gives one
    reliable figure for every plane.
    """
    if params is None or getattr(params, "diameter", None) != "auto":
        return params
    from dataclasses import replace as _replace

    from .normalize import prepare_image
    from .scale import estimate_diameter

    order = sorted(range(len(planes)), key=lambda k: -float(np.std(planes[k][1])))
    for k in order[:5]:
        try:
            return _replace(params, diameter=estimate_diameter(prepare_image(planes[k][1])))
        except InputError:
            continue
    return params


def segment_planes(
    segment: Callable[..., Generator[Snapshot, None, None]],
    stack: np.ndarray,
    params=None,
    *,
    model=None,
    device="auto",
    skip_constant: bool = True,
) -> Generator[Snapshot, None, None]:
    """Segment every 2-D plane of ``stack`` (shape ``(..., H, W)``) with one engine.

    Parameters
    ----------
    segment : callable
        An engine's ``segment`` generator function.
    stack : ndarray
    params, model, device
        Passed to ``segment`` for every plane (load the model once beforehand).
    skip_constant : bool
        Leave constant planes (blank frames) empty instead of failing the whole run.

    Yields
    ------
    Snapshot
        The engine's snapshots with ``plane`` set and progress spread over the planes;
        the last one has ``done=True`` and the labels of the whole stack (uint32 ids,
        unique across planes).
    """
    arr = np.asarray(stack)
    planes = list(iter_planes(arr))
    params = _resolve_stack_diameter(params, planes)
    out = np.zeros(arr.shape, np.uint32) if not planes else None
    n = len(planes)
    offset = 0
    result = None
    for k, (index, plane) in enumerate(planes):
        try:
            last = None
            for snap in segment(plane, params, model=model, device=device):
                frac = (k + float(snap.progress)) / n
                msg = f"plane {k + 1}/{n}: {snap.message}"
                if isinstance(snap, SegmentationSnapshot) and snap.done:
                    last = snap
                    snap = replace(snap, done=False)
                yield replace(snap, progress=frac, message=msg, plane=index) if isinstance(
                    snap, SegmentationSnapshot
                ) else replace(snap, progress=frac, message=msg)
            labels = np.zeros(plane.shape, np.uint32) if last is None or last.labels is None else last.labels
        except InputError as exc:
            if not (skip_constant and "constant" in str(exc)):
                raise InputError(f"plane {index}: {exc}") from None
            labels = np.zeros(plane.shape, np.uint32)
        if result is None:
            result = np.zeros(arr.shape, np.uint32)
        lab = labels.astype(np.uint32)
        result[index] = np.where(lab > 0, lab + offset, 0)
        offset += int(lab.max())
    if result is None:
        result = out
    yield SegmentationSnapshot(
        stage="labels", progress=1.0, message=f"{n} planes, {offset} objects", labels=result, done=True
    )
