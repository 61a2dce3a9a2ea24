"""Loading Kaizen models and the engine's ``segment`` entry point (named so that it does not
shadow the ``segment`` function in the package namespace)."""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._common.errors import InputError, WeightsError
from .params import KaizenParams
from .snapshots import DecompositionSnapshot

#: Weights used when none are given.
DEFAULT_MODEL = "bundled:kaizen_nuclei"


@dataclass(frozen=True)
class KaizenModel:
    """A loaded Kaizen VQ-VAE with its metadata.

    Attributes
    ----------
    net : KaizenVQVAE
        The network, in eval mode.
    metadata : dict
        The weights' JSON (``object_diameter``, ``patch_size``, ``training``, ...).
    source : str
        Where it was loaded from.
    """

    net: Any
    metadata: dict = field(default_factory=dict)
    source: str = ""

    @property
    def patch_size(self) -> int:
        return int(self.net.config.patch_size)

    @property
    def object_diameter(self) -> float | None:
        """Median object diameter (pixels) of the training data, if recorded."""
        d = self.metadata.get("object_diameter")
        try:
            d = float(d)
        except (TypeError, ValueError):
            return None
        return d if np.isfinite(d) and d > 0 else None

    @property
    def device(self):
        return next(self.net.parameters()).device

    def predict(self, x):
        """Reconstruct the central cell of each patch ``(B, 1, P, P)``."""
        return self.net.predict(x)


def load_model(model: Any = None, device: Any = "auto") -> KaizenModel:
    """Load Kaizen weights.

    Parameters
    ----------
    model : str, path, KaizenModel or KaizenVQVAE, optional
        ``'bundled:NAME'``, a ``.safetensors`` / ``.json`` path or stem, or an
        already loaded model (returned, moved to ``device`` unless that is
        ``'auto'``). ``None`` loads :data:`DEFAULT_MODEL`.
    device : str or torch.device
        ``'auto'`` (CUDA, then MPS, then CPU), ``'cpu'``, ``'cuda'``, ...

    Returns
    -------
    KaizenModel

    Raises
    ------
    WeightsError
        Missing file, a file for another architecture, a JSON that does not match
        its tensors, or tensors that do not fit the architecture.
    """
    from .._common.device import choose_device
    from .._common.weights import load_model as _load
    from .model import ARCHITECTURE, KaizenVQVAE

    if isinstance(model, KaizenModel):
        if device not in (None, "auto"):
            model.net.to(choose_device(device))
        return model
    if isinstance(model, KaizenVQVAE):
        if device not in (None, "auto"):
            model.to(choose_device(device))
        return KaizenModel(net=model.eval(), metadata={"patch_size": model.config.patch_size}, source="<in memory>")
    if model is None:
        model = DEFAULT_MODEL
    if not isinstance(model, (str, Path)):
        raise WeightsError(
            f"model must be 'bundled:NAME', a weights path or a loaded Kaizen model, not {type(model).__name__}"
        )
    dev = choose_device(device)
    net, meta = _load(model, lambda cfg: KaizenVQVAE(dict(cfg)), architecture=ARCHITECTURE, device=dev)
    return KaizenModel(net=net, metadata=meta, source=str(model))


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
        Default :data:`DEFAULT_MODEL`. Load once with :func:`load_model` to reuse.
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
    from .._common.scale import rescale_for_model, resolve_diameter
    from .._common.snapshots import empty_field_snapshot
    from .decompose import check_patch_size, decompose

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
    d = resolve_diameter(img, p.diameter, required=False)
    rs = rescale_for_model(img.shape, d, km.object_diameter)
    work = rs.to_model(img)
    yield from decompose(work, km, p, rescale=rs, input_image=img)
