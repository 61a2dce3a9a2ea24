"""Augmentation for small microscopy training sets (flips, rotations, elastic, noise).

Training sets here are tiny (one to ten annotated images), so the training practice of
the U-Net paper applies: the network must be shown that cells look the same flipped,
rotated and gently deformed, and under other noise and gain. Geometry is applied once,
identically, to the image and to every target; labels are resampled with nearest
neighbour so instance ids survive. Photometric changes touch the image only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi


@dataclass(frozen=True)
class AugmentParams:
    """How hard to augment. Defaults follow the U-Net paper's practice.

    Attributes
    ----------
    flip : bool
        Random horizontal / vertical flips and 90-degree rotations (exact, lossless).
    rotate : bool
        Random rotation by any angle (bilinear for images, nearest for labels).
    elastic_prob : float
        Probability of a smooth elastic deformation.
    elastic_alpha : float
        Typical displacement of the deformation, in pixels.
    elastic_sigma : float
        Smoothness (Gaussian sigma, pixels) of the displacement field.
    scale_range : (float, float)
        Random zoom; 1 keeps the object size the model is trained at.
    gain_range : (float, float)
        Multiplicative intensity change.
    gamma_range : (float, float)
        Random gamma on the [0, 1]-normalised image.
    offset_sd : float
        Additive background offset (in normalised units).
    noise_sd_range : (float, float)
        Gaussian noise SD (normalised units), drawn per sample.
    blur_prob, blur_sigma_max : float
        Probability and maximum sigma of an extra Gaussian blur (focus changes).
    roll : bool
        Random circular shifts ("rolls"), as the GoogLeNet FCN post used.
    poisson_prob : float
        Probability of re-imaging the sample with Poisson (shot) noise at a photon count
        drawn log-uniformly from ``photons_range`` (counts at the normalised level 1):
        dim, grainy acquisitions.
    photons_range : (float, float)
    quantize_prob : float
        Probability of quantising the image to a number of grey levels drawn from
        ``levels_range`` over its normalised range: 8-bit files, or a 12-bit camera
        that used a fraction of its range.
    levels_range : (int, int)
    scale_spread : float
        With a ``scale_range`` other than (1, 1), zooms are drawn log-normally with this
        spread and truncated to the range (:func:`draw_zoom`), so most samples stay near
        the model's scale while the tails cover the whole range. 0 draws log-uniformly.
    """

    flip: bool = True
    rotate: bool = True
    elastic_prob: float = 0.5
    elastic_alpha: float = 6.0
    elastic_sigma: float = 10.0
    scale_range: tuple[float, float] = (1.0, 1.0)
    gain_range: tuple[float, float] = (0.7, 1.4)
    gamma_range: tuple[float, float] = (0.8, 1.25)
    offset_sd: float = 0.03
    noise_sd_range: tuple[float, float] = (0.0, 0.05)
    blur_prob: float = 0.2
    blur_sigma_max: float = 1.2
    roll: bool = False
    poisson_prob: float = 0.0
    photons_range: tuple[float, float] = (5.0, 500.0)
    quantize_prob: float = 0.0
    levels_range: tuple[int, int] = (24, 255)
    scale_spread: float = 0.0


def trained_augment(metadata, default: AugmentParams) -> AugmentParams:
    """The augmentation a model was trained with (its metadata's ``training.augment``).

    A fine-tune continues with it: a model trained to be robust to zoom, contrast and
    noise and then fine-tuned on one corrected frame without them forgets that
    robustness, and segments the session's other frames worse than before. ``default``
    when the metadata records none (or one this version cannot read).

    Examples
    --------
    >>> trained_augment({"training": {"augment": {"scale_range": [0.5, 2.0]}}}, AugmentParams()).scale_range
    (0.5, 2.0)
    >>> trained_augment({}, AugmentParams(roll=True)).roll
    True
    """
    from dataclasses import fields

    recorded = ((metadata or {}).get("training") or {}).get("augment")
    if not isinstance(recorded, dict):
        return default
    known = {f.name: f for f in fields(AugmentParams)}
    if not set(recorded) <= set(known):
        return default
    # JSON writes the tuples as lists.
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in recorded.items()}
    try:
        return AugmentParams(**values)
    except TypeError:
        return default


#: Augmentation for models of real micrographs: what changes between microscopes, labs
#: and stainings. Zoom 0.5-2x (mostly within +-30 %: the object size is estimated at
#: inference and the image rescaled, so the tails are for estimates that miss), gamma and
#: contrast, focus, shot and read noise, 8-bit quantisation, flips, rotations, elastic.
REAL_WORLD = AugmentParams(
    elastic_prob=0.3,
    elastic_alpha=3.0,
    scale_range=(0.5, 2.0),
    scale_spread=0.25,
    gain_range=(0.6, 1.6),
    gamma_range=(0.6, 1.6),
    offset_sd=0.04,
    noise_sd_range=(0.0, 0.06),
    blur_prob=0.3,
    blur_sigma_max=2.0,
    poisson_prob=0.3,
    quantize_prob=0.2,
)


def draw_zoom(rng: np.random.Generator, params: AugmentParams) -> float:
    """A random zoom factor within ``params.scale_range`` (1.0 when the range is (1, 1))."""
    lo, hi = params.scale_range
    if (lo, hi) == (1.0, 1.0):
        return 1.0
    llo, lhi = np.log(lo), np.log(hi)
    if params.scale_spread <= 0:
        return float(np.exp(rng.uniform(llo, lhi)))
    for _ in range(100):
        z = rng.normal(0.0, params.scale_spread)
        if llo <= z <= lhi:
            return float(np.exp(z))
    return 1.0


def zoom_window(
    image: np.ndarray,
    labels: np.ndarray,
    centre: tuple[int, int],
    size: int,
    zoom: float,
    *,
    wrap: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """A ``size x size`` window centred on ``centre`` (at index ``size // 2``), zoomed.

    ``zoom > 1`` enlarges objects (a smaller region is spread over the window). The
    image is sampled bilinearly, the labels by nearest neighbour (ids survive). Outside
    the image, ``wrap`` wraps around (the FCN post's rolls), else the border is repeated.
    """
    img = np.asarray(image, np.float32)
    h, w = img.shape
    offs = (np.arange(size, dtype=np.float64) - size // 2) / float(zoom)
    ys, xs = centre[0] + offs, centre[1] + offs
    # Nearest pixels (the labels'; at zoom 1 the image's too, exactly).
    yi, xi = np.rint(ys).astype(np.intp), np.rint(xs).astype(np.intp)
    yi, xi = (yi % h, xi % w) if wrap else (np.clip(yi, 0, h - 1), np.clip(xi, 0, w - 1))
    lab = np.asarray(labels)[np.ix_(yi, xi)]
    if zoom == 1.0:
        return img[np.ix_(yi, xi)], lab
    grid = np.meshgrid(ys, xs, indexing="ij")
    out = ndi.map_coordinates(img, grid, order=1, mode="grid-wrap" if wrap else "nearest", prefilter=False)
    return out.astype(np.float32), lab


def _coordinates(shape: tuple[int, int], rng: np.random.Generator, p: AugmentParams) -> np.ndarray | None:
    """Sampling coordinates for rotation + zoom + elastic deformation (or None: identity)."""
    h, w = shape
    angle = rng.uniform(0, 2 * np.pi) if p.rotate else 0.0
    zoom = draw_zoom(rng, p) if p.scale_spread > 0 else (rng.uniform(*p.scale_range) if p.scale_range != (1.0, 1.0) else 1.0)
    elastic = rng.random() < p.elastic_prob and p.elastic_alpha > 0
    if angle == 0.0 and zoom == 1.0 and not elastic:
        return None
    yy, xx = np.meshgrid(np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32), indexing="ij")
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    dy, dx = yy - cy, xx - cx
    c, s = np.cos(angle) / zoom, np.sin(angle) / zoom
    ys = cy + c * dy - s * dx
    xs = cx + s * dy + c * dx
    if elastic:
        # Coarse random field, smoothed, scaled so its RMS is about alpha pixels.
        for arr in (ys, xs):
            field = ndi.gaussian_filter(rng.standard_normal((h, w)).astype(np.float32), p.elastic_sigma)
            rms = float(np.sqrt(np.mean(field**2))) or 1.0
            arr += field * (p.elastic_alpha / rms)
    return np.stack([ys, xs])


def _warp(plane: np.ndarray, coords: np.ndarray, order: int) -> np.ndarray:
    return ndi.map_coordinates(plane, coords, order=order, mode="mirror", prefilter=False).astype(plane.dtype)


def augment(
    image: np.ndarray,
    targets: list[np.ndarray] | tuple[np.ndarray, ...] = (),
    *,
    rng: np.random.Generator,
    params: AugmentParams = AugmentParams(),
    label_targets: tuple[bool, ...] | None = None,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Augment an image and its targets with one random geometric transform.

    Parameters
    ----------
    image : ndarray, shape (H, W) or (C, H, W)
        Normalised float image.
    targets : sequence of ndarray, each (H, W) or (K, H, W)
        Label images (integers: nearest-neighbour) or float maps (bilinear).
    rng : numpy.random.Generator
    params : AugmentParams
    label_targets : tuple of bool, optional
        Which targets are labels; default: integer dtype means labels.

    Returns
    -------
    image : ndarray, same shape and dtype
    targets : list of ndarray, same shapes and dtypes
    """
    img = np.asarray(image, dtype=np.float32)
    squeeze = img.ndim == 2
    if squeeze:
        img = img[None]
    tgts = [np.asarray(t) for t in targets]
    is_label = label_targets or tuple(t.dtype.kind in "biu" for t in tgts)
    h, w = img.shape[-2:]

    def apply(fn):
        nonlocal img, tgts
        img = np.ascontiguousarray(fn(img))
        tgts = [np.ascontiguousarray(fn(t)) for t in tgts]

    if params.flip:
        if rng.random() < 0.5:
            apply(lambda a: a[..., ::-1, :])
        if rng.random() < 0.5:
            apply(lambda a: a[..., :, ::-1])
        k = int(rng.integers(4)) if h == w else 2 * int(rng.integers(2))
        if k:
            apply(lambda a: np.rot90(a, k, axes=(-2, -1)))
    if params.roll:
        sy, sx = int(rng.integers(h)), int(rng.integers(w))
        apply(lambda a: np.roll(a, (sy, sx), axis=(-2, -1)))
    coords = _coordinates((h, w), rng, params)
    if coords is not None:
        img = np.stack([_warp(c, coords, 1) for c in img])
        new = []
        for t, lab in zip(tgts, is_label):
            order = 0 if lab else 1
            new.append(_warp(t, coords, order) if t.ndim == 2 else np.stack([_warp(c, coords, order) for c in t]))
        tgts = new
    img = photometric(img, rng, params)
    return (img[0] if squeeze else img), tgts


def photometric(
    image: np.ndarray, rng: np.random.Generator, params: AugmentParams = AugmentParams(), *, with_noise: bool = True
) -> np.ndarray:
    """Random blur, gamma, gain and offset, then (``with_noise``) :func:`noise`, on a normalised image."""
    img = np.asarray(image, dtype=np.float32)
    if params.blur_prob and rng.random() < params.blur_prob:
        sigma = rng.uniform(0.3, params.blur_sigma_max)
        axes = (img.ndim - 2, img.ndim - 1)
        img = ndi.gaussian_filter(img, sigma=[sigma if i in axes else 0 for i in range(img.ndim)])
    lo, hi = params.gamma_range
    if (lo, hi) != (1.0, 1.0):
        gamma = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
        img = np.sign(img) * np.abs(img) ** gamma
    img = img * rng.uniform(*params.gain_range)
    if params.offset_sd:
        img = img + rng.normal(0.0, params.offset_sd)
    return noise(img, rng, params) if with_noise else img.astype(np.float32, copy=False)


def noise(image: np.ndarray, rng: np.random.Generator, params: AugmentParams = AugmentParams()) -> np.ndarray:
    """Shot noise, Gaussian (read) noise and quantisation: what a camera adds last.

    Split from :func:`photometric` so a target made from the clean image (the Kaizen
    VQ-VAE's) can be cut before the noise.
    """
    img = np.asarray(image, dtype=np.float32)
    if params.poisson_prob and rng.random() < params.poisson_prob:
        lo, hi = params.photons_range
        k = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
        img = np.where(img > 0, rng.poisson(np.clip(img, 0, None) * k) / k, img).astype(np.float32)
    sd = rng.uniform(*params.noise_sd_range)
    if sd > 0:
        img = img + rng.normal(0.0, sd, size=img.shape).astype(np.float32)
    if params.quantize_prob and rng.random() < params.quantize_prob:
        levels = int(rng.integers(params.levels_range[0], params.levels_range[1] + 1))
        lo = float(np.min(img))
        span = float(np.max(img)) - lo
        if span > 0:
            img = (np.round((img - lo) / span * levels) / levels * span + lo).astype(np.float32)
    return img.astype(np.float32, copy=False)
