"""Object scale: estimate the typical object diameter, and rescale to a model's scale.

A network learns cells of the size it was trained on. Every engine therefore takes a
``diameter`` (pixels, or ``'auto'``), rescales the image so objects have the diameter
recorded in the model's metadata, runs there, and maps labels back to the input grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from .errors import InputError

#: Scale differences below this are left alone: every model is trained on objects whose
#: size varies by about +-15 % around its nominal diameter (and the ``'auto'`` estimate is
#: good to about 10-15 %), so resampling inside that range only adds interpolation blur.
SCALE_TOLERANCE = 0.2


def equivalent_diameters(labels: np.ndarray) -> np.ndarray:
    """Diameter of the circle of equal area, for every label > 0."""
    counts = np.bincount(np.asarray(labels).ravel())[1:]
    counts = counts[counts > 0]
    return 2.0 * np.sqrt(counts / np.pi)


def median_diameter(labels: np.ndarray) -> float:
    """Median equivalent diameter of the objects in ``labels`` (NaN if there are none)."""
    d = equivalent_diameters(labels)
    return float(np.median(d)) if d.size else float("nan")


def estimate_diameter(image: np.ndarray, *, max_side: int = 1024, min_objects: int = 3) -> float:
    """Estimate the typical diameter (pixels) of bright objects in a normalised image.

    Objects are found with Otsu's threshold on a lightly smoothed image; only convex
    ones (solidity > 0.9) are measured, because clumps of touching nuclei are not
    convex and would inflate the size. Each is re-outlined at half its own height above
    the background (full width at half maximum, which tracks the true edge of a blurred
    object whatever its brightness), and the area-weighted median of their
    equivalent diameters is returned, so dim fragments and debris count little.

    Parameters
    ----------
    image : ndarray, shape (H, W)
        Normalised image (background low, objects bright), e.g. from
        :func:`~napari_kaizen.engines._common.normalize.prepare_image`.
    max_side : int
        A larger image is measured on a central crop of this side (speed).
    min_objects : int
        Fewer measurable objects than this is an error.

    Returns
    -------
    float

    Raises
    ------
    InputError
        If too few separate, convex objects are found to measure.
    """
    from skimage.filters import threshold_otsu
    from skimage.measure import regionprops

    img = np.asarray(image, dtype=np.float32)
    h, w = img.shape
    if max(h, w) > max_side:
        y0, x0 = max(0, (h - max_side) // 2), max(0, (w - max_side) // 2)
        img = img[y0 : y0 + max_side, x0 : x0 + max_side]
    smooth = ndi.gaussian_filter(img, 1.0)
    if float(smooth.max() - smooth.min()) <= 1e-12:
        raise InputError("could not estimate the object diameter of a constant image: give the diameter in pixels")
    mask = ndi.binary_opening(ndi.binary_fill_holes(smooth > threshold_otsu(smooth)))
    background = float(np.median(smooth[~mask])) if (~mask).any() else float(smooth.min())
    comps, _ = ndi.label(mask)
    diameters, weights = [], []
    for prop in regionprops(comps):
        if prop.area < 12 or prop.solidity < 0.9:
            continue
        y0, x0, y1, x1 = prop.bbox
        pad = int(0.5 * np.sqrt(prop.area)) + 2
        Y0, X0 = max(0, y0 - pad), max(0, x0 - pad)
        Y1, X1 = min(smooth.shape[0], y1 + pad), min(smooth.shape[1], x1 + pad)
        seed = np.zeros((Y1 - Y0, X1 - X0), bool)
        seed[y0 - Y0 : y1 - Y0, x0 - X0 : x1 - X0] = prop.image
        sub = smooth[Y0:Y1, X0:X1]
        peak = float(np.percentile(sub[seed], 90))
        above = sub > background + 0.5 * (peak - background)
        cc, _ = ndi.label(above)
        ids = np.unique(cc[seed & above])
        region = np.isin(cc, ids[ids > 0])
        # A half-maximum region that runs off its box has merged with a neighbour.
        if not region.any() or region[[0, -1]].any() or region[:, [0, -1]].any():
            region = seed
        area = float(region.sum())
        diameters.append(2.0 * np.sqrt(area / np.pi))
        weights.append(area)
    if len(diameters) < min_objects:
        raise InputError(
            f"could not estimate the object diameter (found {len(diameters)} separate objects to measure, "
            f"need {min_objects}): give the diameter in pixels"
        )
    d, wts = np.asarray(diameters), np.asarray(weights)
    order = np.argsort(d)
    cdf = np.cumsum(wts[order])
    return float(d[order][np.searchsorted(cdf, cdf[-1] / 2.0)])


def resolve_diameter(image: np.ndarray, diameter: float | str | None, *, required: bool = True) -> float | None:
    """Turn a ``diameter`` argument into pixels (``'auto'`` estimates, ``None`` stays None).

    Parameters
    ----------
    image : ndarray
        Normalised image, for ``'auto'``.
    diameter : float, str or None
    required : bool
        If False, an ``'auto'`` estimate that fails (too few separate objects, e.g. in
        a tiny crop) gives None -- the model's own scale -- with an
        :class:`~.normalize.InputWarning`, instead of an error.
    """
    if diameter is None:
        return None
    if isinstance(diameter, str):
        if diameter.strip().lower() == "auto":
            try:
                return estimate_diameter(image)
            except InputError as exc:
                if required:
                    raise
                import warnings

                from .normalize import InputWarning

                warnings.warn(f"{exc}; running at the model's own scale", InputWarning, stacklevel=2)
                return None
        try:
            diameter = float(diameter)
        except ValueError:
            raise InputError(f"diameter '{diameter}' is not understood: give pixels (e.g. 17.5) or 'auto'") from None
    d = float(diameter)
    if not np.isfinite(d) or d <= 0:
        raise InputError(f"diameter must be a positive number of pixels or 'auto', got {diameter!r}")
    return d


@dataclass(frozen=True)
class Rescale:
    """Resampling between the input grid and the grid a model works on.

    Attributes
    ----------
    factor : float
        Model pixels per input pixel (``model_diameter / diameter``); 1 is identity.
    input_shape : (int, int)
        Shape of the input plane.
    """

    factor: float
    input_shape: tuple[int, int]

    @property
    def identity(self) -> bool:
        return self.factor == 1.0

    @property
    def model_shape(self) -> tuple[int, int]:
        return tuple(max(1, int(round(s * self.factor))) for s in self.input_shape)  # type: ignore[return-value]

    def to_model(self, image: np.ndarray) -> np.ndarray:
        """Resample an input-grid image to the model grid (anti-aliased when shrinking)."""
        if self.identity:
            return image
        from skimage.transform import resize

        return resize(
            image, self.model_shape, order=1, mode="reflect", anti_aliasing=self.factor < 1, preserve_range=True
        ).astype(np.float32)

    def to_input(self, image: np.ndarray) -> np.ndarray:
        """Resample a model-grid float map back to the input grid."""
        if self.identity:
            return image
        from skimage.transform import resize

        return resize(image, self.input_shape, order=1, mode="edge", anti_aliasing=False, preserve_range=True).astype(
            np.float32
        )

    def labels_to_input(self, labels: np.ndarray) -> np.ndarray:
        """Map model-grid labels to the input grid by nearest neighbour (ids unchanged)."""
        if self.identity:
            return labels
        h, w = self.input_shape
        mh, mw = labels.shape
        yi = np.minimum(((np.arange(h) + 0.5) * mh / h).astype(np.intp), mh - 1)
        xi = np.minimum(((np.arange(w) + 0.5) * mw / w).astype(np.intp), mw - 1)
        return labels[np.ix_(yi, xi)]


def rescale_for_model(
    input_shape: tuple[int, int],
    diameter: float | None,
    model_diameter: float | None,
    *,
    tolerance: float = SCALE_TOLERANCE,
) -> Rescale:
    """The :class:`Rescale` that brings objects of ``diameter`` to ``model_diameter``.

    No rescaling when either is unknown or the change is below ``tolerance``.
    """
    if not diameter or not model_diameter:
        return Rescale(1.0, tuple(input_shape))
    factor = float(model_diameter) / float(diameter)
    if abs(np.log(factor)) < np.log1p(tolerance):
        factor = 1.0
    return Rescale(factor, tuple(input_shape))
