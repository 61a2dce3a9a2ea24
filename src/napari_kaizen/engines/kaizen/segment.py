"""The Kaizen engine's ``segment`` entry point: the decomposition loop, then outlines."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import numpy as np

from ...errors import InputError
from .._common.allocator import keep_freed_memory
from .params import DEFAULT_MODEL, KaizenParams
from .snapshots import DecompositionSnapshot

__all__ = ["DEFAULT_MODEL", "segment"]


def segment(
    image: np.ndarray,
    params: KaizenParams | None = None,
    *,
    model: Any = None,
    device: Any = "auto",
) -> Generator[DecompositionSnapshot, None, None]:
    """Segment cells by Kaizen decomposition; yield every iteration.

    Parameters
    ----------
    image : array_like, shape (H, W)
        Any real dtype; normalised by
        :func:`~napari_kaizen.engines._common.normalize.prepare_image` (RGB, stacks,
        constant and all-NaN images are refused with a one-line message). Images
        smaller than a patch are padded; large ones work in bounded memory
        (``O(H*W)`` state, forward passes in chunks of ``params.batch_size``).
    params : KaizenParams, optional
    model : str, path or KaizenModel, optional
        Default :data:`DEFAULT_MODEL`. Load once with :func:`~.model.load_model` to reuse.
    device : str or torch.device
        ``'auto'``, ``'cpu'``, ``'cuda'``, ``'mps'``.

    Yields
    ------
    DecompositionSnapshot
        One per iteration, on the input grid, then the final snapshot with
        ``done=True`` and labels (int32, ids 1..N) on the input grid.

    Examples
    --------
    >>> from napari_kaizen.data import synthesize
    >>> from napari_kaizen.engines._common import run_to_end
    >>> field = synthesize(seed=10_001, shape=(96, 96))
    >>> labels = run_to_end(segment(field.nuclei, device="cpu")).labels
    >>> labels.shape, labels.dtype
    ((96, 96), dtype('int32'))
    """
    from .._common.normalize import prepare_image
    from .._common.snapshots import empty_field_snapshot
    from .decompose import check_patch_size, decompose
    from .model import load_model
    from .scale_rule import scale_for

    keep_freed_memory()  # reuse big blocks across calls (allocator.py)
    p = params if params is not None else KaizenParams()
    if not isinstance(p, KaizenParams):
        raise InputError(f"params must be KaizenParams, got {type(p).__name__}")
    img = prepare_image(image)
    km = load_model(model, device)
    check_patch_size(km.net, p)
    # An empty field: percentile normalisation has stretched its noise to full range,
    # and the model would reconstruct hundreds of "cells" from it.
    empty = empty_field_snapshot(img, DecompositionSnapshot)
    if empty is not None:
        yield empty
        return
    rs = scale_for(image, p, model=km, prepared=img).rescale(img.shape, km.object_diameter)
    work = rs.to_model(img)
    yield from decompose(work, km, p, rescale=rs, input_image=img)
