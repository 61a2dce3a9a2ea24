"""What an engine's scale rule returns: the object diameter one image is segmented at.

Every engine owns one function, ``scale_for(image, params, *, model=None, prepared=None)``
(named by the engine contract, :mod:`napari_kaizen.engines`), that turns its params'
``diameter`` -- a number of pixels, ``'auto'`` or ``None`` -- into a :class:`Scale`
for one image. The engine's own ``segment`` calls it on the image it was given, and a
tiled run (:func:`napari_kaizen.tiled.plan_tiles`) or a stack run
(:func:`~napari_kaizen.engines._common.planes.segment_planes`) calls the very same
function once on a sample of the whole image and hands every tile or plane
:attr:`Scale.param`, which the rule then reads back as the same scale. So what
``'auto'`` means for an engine is written once, and a huge image split into tiles is
segmented at the scale its untiled run would use.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...errors import InputError
from .scale import EstimatedDiameter, Rescale, rescale_for_model, resolve_diameter


@dataclass(frozen=True)
class Scale:
    """The object diameter an engine segments one image at.

    Attributes
    ----------
    diameter : float or None
        Typical object diameter in the input image (pixels); ``None``: the model's own
        scale (no rescaling).
    estimated : bool
        True when the software measured the diameter (``'auto'``): a measurement the
        model cannot take is brought into its range with a warning instead of refusing
        the image (:func:`~napari_kaizen.engines._common.scale.rescale_for_model`).
    failure : str or None
        Why ``'auto'`` could not be measured on this image (the run then goes on at the
        engine's fallback: :attr:`diameter`, the model's own scale when that is
        ``None``); ``None`` when nothing failed. A tiled run tries its next sample crop
        on a failure.
    probe : object
        What the rule computed on the way (the U-Net's model-scale maps), for its own
        engine to reuse; never compared, never sent to tiles.

    Examples
    --------
    >>> Scale(17.0).param, type(Scale(17.0, estimated=True).param).__name__
    (17.0, 'EstimatedDiameter')
    >>> Scale(None).rescale((64, 64), 16.0).identity
    True
    """

    diameter: float | None = None
    estimated: bool = False
    failure: str | None = None
    probe: Any = field(default=None, compare=False, repr=False)

    @property
    def param(self) -> float | None:
        """The ``diameter`` a params object carries so that the rule reads this same scale back.

        An estimate stays marked as one (:class:`~.scale.EstimatedDiameter`, a float), so
        a tile clamps an out-of-range estimate exactly as the untiled run does.
        """
        if self.diameter is None:
            return None
        return EstimatedDiameter(self.diameter) if self.estimated else float(self.diameter)

    @property
    def running_at(self) -> str:
        """What the run goes on at, in words: said after an estimate that failed.

        >>> Scale(None).running_at, Scale(18.0, estimated=True).running_at
        ("the model's own scale", '18 px (a typical nucleus)')
        """
        return "the model's own scale" if self.diameter is None else f"{self.diameter:g} px (a typical nucleus)"

    def rescale(self, input_shape: tuple[int, int], model_diameter: float | None) -> Rescale:
        """The resampling that brings objects of this scale to ``model_diameter``:
        :func:`~napari_kaizen.engines._common.scale.rescale_for_model`."""
        return rescale_for_model(tuple(input_shape), self.param, model_diameter)


def is_auto(diameter: Any) -> bool:
    """Whether a params ``diameter`` asks for an estimate (``'auto'``, any case)."""
    return isinstance(diameter, str) and diameter.strip().lower() == "auto"


def given_or_estimated(image: np.ndarray | None, diameter: float | str | None, *,
                       fallback: float | None = None, source: np.ndarray | None = None,
                       percentiles: tuple[float, float] | None = None) -> Scale:
    """The :class:`Scale` of a diameter as given, ``'auto'`` measured on ``image``.

    The rule shared by the engines whose ``'auto'`` is the image-only estimate
    (:func:`~napari_kaizen.engines._common.scale.estimate_diameter`).

    Parameters
    ----------
    image : ndarray or None
        The image normalised as the engine normalises it; only read for ``'auto'``.
    source : ndarray, optional
        The plane as the engine received it, for when ``image`` is None: normalised
        here (:func:`~.normalize.prepare_image` with ``percentiles``, default its own)
        only if ``'auto'`` needs it, so a given diameter costs no normalisation.
    percentiles : (float, float), optional
        The normalisation of ``source``.
    diameter : float, str or None
        A number of pixels (an :class:`~.scale.EstimatedDiameter` stays an estimate),
        ``'auto'`` or ``None`` (the model's own scale).
    fallback : float, optional
        What an estimate that fails gives: ``Scale(fallback)`` (pixels, an engine
        without a model's scale), default ``Scale(None)`` (the model's own scale),
        with the reason in :attr:`Scale.failure` and one warning
        (:class:`~.normalize.InputWarning`). A field is never refused for its size.

    Examples
    --------
    >>> given_or_estimated(None, 60.0)
    Scale(diameter=60.0, estimated=False, failure=None)
    >>> given_or_estimated(None, None).diameter is None
    True
    """
    if diameter is None:
        return Scale(None)
    if not is_auto(diameter):
        d = resolve_diameter(image, diameter)
        return Scale(d, estimated=isinstance(diameter, EstimatedDiameter))
    if image is None and source is not None:
        from .normalize import DEFAULT_PERCENTILES, prepare_image

        image = prepare_image(source, percentiles=percentiles or DEFAULT_PERCENTILES)
    try:
        return Scale(float(resolve_diameter(image, "auto")), estimated=True)
    except InputError as exc:
        from .normalize import InputWarning

        scale = Scale(fallback, estimated=fallback is not None, failure=str(exc))
        warnings.warn(f"{exc}; running at {scale.running_at}", InputWarning, stacklevel=3)
        return scale
