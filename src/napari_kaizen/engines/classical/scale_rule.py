"""The classical engine's scale rule: what its ``diameter`` means for one image."""

from __future__ import annotations

from typing import Any

import numpy as np

from .._common.scale_rule import Scale, given_or_estimated
from .params import ClassicalParams


def scale_for(image: np.ndarray, params: ClassicalParams | None = None, *, model: Any = None,
              prepared: np.ndarray | None = None) -> Scale:
    """The object diameter the classical engine segments ``image`` at.

    A number is used as given; ``'auto'`` and ``None`` alike are estimated from the
    image (every length of the pipeline is a fraction of the diameter, so there is no
    "own scale" to fall back to), and an image whose objects cannot be measured is
    refused.

    Parameters
    ----------
    image : ndarray, shape (H, W)
        The plane as :func:`~napari_kaizen.engines.classical.segment` receives it.
    params : ClassicalParams, optional
    model : None
        Accepted so every engine's rule has the same call.
    prepared : ndarray, optional
        ``image`` already normalised by ``prepare_image`` (saves doing it twice).

    Returns
    -------
    Scale

    Raises
    ------
    InputError
        ``'auto'`` on an image with too few separate objects to measure.

    Examples
    --------
    >>> from napari_kaizen.data import synthesize
    >>> field = synthesize(seed=0, shape=(128, 128))
    >>> scale_for(field.nuclei, ClassicalParams(diameter=12.0)).diameter
    12.0
    >>> scale_for(field.nuclei).estimated
    True
    """
    p = params or ClassicalParams()
    diameter = "auto" if p.diameter is None else p.diameter
    return given_or_estimated(prepared, diameter, required=True, source=image)
