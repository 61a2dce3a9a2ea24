"""Run a 2-D engine over every plane of a z-stack or time series.

3-D stacks are treated as sequences of planes (the U-Net paper's practice for
anisotropic stacks); each plane is segmented on its own and label ids are offset so
they are unique in the whole stack (a measurements table then has one row per object).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Generator
from dataclasses import replace

import numpy as np

from ...errors import InputError
from .normalize import InputWarning, iter_planes
from .snapshots import SegmentationSnapshot, Snapshot


def _resolve_stack_scale(params, planes, scale_for, model):
    """Read the params' diameter once for the whole stack, by the engine's scale rule.

    Objects have one size throughout a stack, but the planes near its top and bottom
    cut few of them; measuring on the planes with the most contrast first gives one
    figure for every plane. Without a rule, or when no plane can be measured, every
    plane reads the diameter itself.
    """
    if params is None or scale_for is None:
        return params
    order = sorted(range(len(planes)), key=lambda k: -float(np.std(planes[k][1])))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InputWarning)  # a plane that cannot be measured is not the stack's failure
        for k in order[:5]:
            try:
                scale = scale_for(planes[k][1], params, model=model)
            except InputError:
                continue
            if scale.failure is None:
                return replace(params, diameter=scale.param)
    return params


def segment_planes(
    segment: Callable[..., Generator[Snapshot, None, None]],
    stack: np.ndarray,
    params=None,
    *,
    model=None,
    device="auto",
    skip_constant: bool = True,
    scale_for: Callable | None = None,
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
    scale_for : callable, optional
        The engine's scale rule (``engine.scale_for``): the diameter is then read once,
        on the planes with the most contrast, and every plane is segmented at that scale.

    Yields
    ------
    Snapshot
        The engine's snapshots with ``plane`` set and progress spread over the planes;
        the last one has ``done=True`` and the labels of the whole stack (uint32 ids,
        unique across planes).
    """
    arr = np.asarray(stack)
    planes = list(iter_planes(arr))
    params = _resolve_stack_scale(params, planes, scale_for, model)
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
            # The planes' grid and one plane: a colour image's or colour stack's labels
            # have no colour axis.
            result = np.zeros(arr.shape[: len(index)] + labels.shape, np.uint32)
        lab = labels.astype(np.uint32)
        result[index] = np.where(lab > 0, lab + offset, 0)
        offset += int(lab.max())
    if result is None:
        result = out
    yield SegmentationSnapshot(
        stage="labels", progress=1.0, message=f"{n} planes, {offset} objects", labels=result, done=True
    )
