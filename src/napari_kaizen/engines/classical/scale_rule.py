"""The classical engine's scale rule: what its ``diameter`` means for one image."""

from __future__ import annotations

from typing import Any

import numpy as np

from .._common.scale_rule import Scale, given_or_estimated
from .params import ClassicalParams

#: The diameter (pixels) an image whose objects cannot be measured is segmented at: the
#: median annotated nucleus of the 566 images of the seven training sources
#: (``scripts/nuclei_sources.py``; 17.7 px; sources' medians 12-47 px). A guess, said
#: in a warning: a field is not refused for its size, and the person can give another.
UNMEASURED_DIAMETER = 18.0

def scale_for(image: np.ndarray, params: ClassicalParams | None = None, *, model: Any = None,
              prepared: np.ndarray | None = None) -> Scale:
    """The object diameter the classical engine segments ``image`` at.

    A number is used as given; ``'auto'`` and ``None`` alike are estimated from the
    image. Every length of the pipeline is a fraction of the diameter, so there is no
    model's scale to fall back to: an image whose objects cannot be measured (a
    stained frame of three nuclei in a corner) runs at :data:`UNMEASURED_DIAMETER`
    with one warning, as a learned engine runs at its model's scale.

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
    return given_or_estimated(prepared, diameter, fallback=UNMEASURED_DIAMETER, source=image)
