"""Parameters of the classical engine."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from ...errors import InputError
from .._common.polarity import check_objects

#: Accepted range of each fraction / scale parameter (inclusive low, exclusive high).
_RANGES = {
    "smoothing": (0.0, 1.0),
    "background_radius": (0.0, 20.0),
    "threshold_scale": (1e-3, 100.0),
    "h": (0.0, 10.0),
    "min_size": (0.0, 10.0),
}


@dataclass(frozen=True)
class ClassicalParams:
    """Parameters of :func:`napari_kaizen.engines.classical.segment`.

    Sizes are relative to the object diameter so one set of defaults serves any
    magnification.

    Attributes
    ----------
    diameter : float or 'auto' or None
        Typical object diameter in pixels; ``'auto'`` estimates it from the image
        (scale-space LoG), and an image it cannot measure runs at 18 px with a warning
        (:data:`~napari_kaizen.engines.classical.scale_rule.UNMEASURED_DIAMETER`).
        ``None`` means ``'auto'`` here: this engine has no model's scale.
    objects : {'auto', 'bright', 'dark'}
        Nuclei brighter than their field (a fluorescence stain) or darker (bright-field,
        a stained section: the image is turned round first); ``'auto'`` tells by
        :func:`~napari_kaizen.engines._common.polarity.dark_objects` and says so.
    smoothing : float
        Gaussian sigma before thresholding, as a fraction of the diameter.
    background_radius : float
        Radius (in diameters) of the smooth background removed before thresholding
        (uneven illumination); 0 disables it.
    threshold_scale : float
        Multiplier on Otsu's threshold (below 1 keeps dimmer objects).
    h : float
        h of the h-maxima seeds on the distance map, as a fraction of the radius:
        maxima less prominent than this merge into their neighbour.
    min_size : float
        Objects smaller than this fraction of a typical object's area are removed.
    """

    diameter: float | str | None = "auto"
    objects: Literal["auto", "bright", "dark"] = "auto"
    smoothing: float = 0.04
    background_radius: float = 2.0
    threshold_scale: float = 1.0
    h: float = 0.1
    min_size: float = 0.15

    def __post_init__(self) -> None:
        # Checked here, not in segment(): a NaN h made the grey reconstruction loop
        # forever, a huge background radius allocated gigabytes.
        check_objects(self.objects, "ClassicalParams")
        for name, (lo, hi) in _RANGES.items():
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not lo <= v < hi:
                raise InputError(f"ClassicalParams.{name} must be a finite number in [{lo:g}, {hi:g}), got {v!r}")
