"""The FCN engine's scale rule: what its ``diameter`` means for one image."""

from __future__ import annotations

from typing import Any

import numpy as np

from .._common.scale_rule import Scale, given_or_estimated, is_auto
from .params import FCNParams


def scale_for(image: np.ndarray, params: FCNParams | None = None, *, model: Any = None,
              prepared: np.ndarray | None = None) -> Scale:
    """The object diameter the FCN segments ``image`` at.

    A number is used as given and ``None`` is the model's own scale. ``'auto'`` is
    estimated from the image for a nucleus model
    (:func:`~napari_kaizen.engines._common.scale.estimate_diameter` measures bright
    blobs); a membrane model's cells cannot be measured that way, so its ``'auto'`` is
    the model's own scale. An image whose nuclei cannot be measured runs at the model's
    own scale with a warning.

    Parameters
    ----------
    image : ndarray, shape (H, W)
        The plane as :func:`~napari_kaizen.engines.fcn.segment` receives it.
    params : FCNParams, optional
    model : FCNModel, optional
        The loaded model: its input kind (nuclei or membrane) and normalisation.
        ``None`` reads ``image`` as a nucleus image with the default percentiles.
    prepared : ndarray, optional
        ``image`` already normalised as the model expects (saves doing it twice).

    Returns
    -------
    Scale
    """
    p = params or FCNParams()
    if is_auto(p.diameter) and getattr(model, "input_kind", None) == "membrane":
        return Scale(None)
    return given_or_estimated(prepared, p.diameter, source=image,
                              percentiles=getattr(model, "percentiles", None))
