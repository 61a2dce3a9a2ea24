"""The Kaizen engine's scale rule: what its ``diameter`` means for one image."""

from __future__ import annotations

from typing import Any

import numpy as np

from .._common.scale_rule import Scale, given_or_estimated
from .params import KaizenParams


def scale_for(image: np.ndarray, params: KaizenParams | None = None, *, model: Any = None,
              prepared: np.ndarray | None = None) -> Scale:
    """The object diameter the Kaizen engine segments ``image`` at.

    A number is used as given, ``None`` is the model's own scale, and ``'auto'`` is
    estimated from the image
    (:func:`~napari_kaizen.engines._common.scale.estimate_diameter`); an image whose
    objects cannot be measured runs at the model's own scale with a warning.

    Parameters
    ----------
    image : ndarray, shape (H, W)
        The plane as :func:`~napari_kaizen.engines.kaizen.segment` receives it.
    params : KaizenParams, optional
    model : KaizenModel, optional
        Not needed by this rule (the estimate reads the image alone).
    prepared : ndarray, optional
        ``image`` already normalised by ``prepare_image`` (saves doing it twice).

    Returns
    -------
    Scale

    Examples
    --------
    >>> from napari_kaizen.data import synthesize
    >>> field = synthesize(seed=0, shape=(128, 128))
    >>> scale_for(field.nuclei, KaizenParams(diameter=None)).diameter is None
    True
    """
    p = params or KaizenParams()
    return given_or_estimated(prepared, p.diameter, source=image)
