"""Synthetic micrographs with paired channels and instance labels.

One field of cells is drawn once and imaged three ways, so every channel shows the
*same* cells:

* ``nuclei``: a DAPI-like fluorescent nucleus channel (textured chromatin, dark
  nucleoli, dim nuclei beside bright ones, small bright mitotic nuclei);
* ``membrane``: a CellMask-like channel (bright plasma membrane, dim cytoplasm);
* ``label_free``: a bright-field / phase / DIC-like channel: weak, textured contrast
  from the optical thickness of the cells, with halos where cells (and nuclei) are;

plus ``nucleus_labels`` and ``cell_labels``. The microscope is modelled too: optical
blur, out-of-focus haze and out-of-focus nuclei, uneven illumination, Poisson shot
noise, camera read noise, offset and bit depth. Real fields also hold things that are
not nuclei: micronuclei beside their nucleus and debris; they are drawn but never
labelled.

Nucleus labels follow the *visible* edge, as a person outlines a nucleus: the level
where the nucleus's own blurred profile falls to ``edge_level`` of its peak above the
background. On the real annotated nuclei of ``scripts/real_nuclei.py`` (7 dataset
folders) the annotators' first pixel inside an outline sits at 0.26-0.38 of the
nucleus's own peak above the local background and the first pixel outside at
0.10-0.15 (medians per folder), so the drawn edge lies near 0.23. Synthetic labels,
measured the same way on noisy, textured fields, match that at ``edge_level=0.2``
(0.25 gives 0.26, 0.16 gives 0.19). Half-maximum labels (0.5) would be far tighter
than what people draw.

This is the training and test data of every engine, and the napari sample data. It is
meant to be hard: clustered, touching, irregular nuclei with a wide brightness range.
:func:`random_params` draws widely varied fields for training so models do not learn one
look. Everything is seeded and reproducible.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Literal

import numpy as np
from scipy import ndimage as ndi

LabelFreeMode = Literal["phase", "brightfield", "dic"]


@dataclass(frozen=True)
class SynthParams:
    """Controls of the synthetic field and of the simulated microscope.

    Attributes
    ----------
    shape : (int, int)
        Image size in pixels.
    nucleus_diameter : float
        Median nucleus diameter (pixels, equivalent circle).
    diameter_spread : float
        Relative SD (log-normal) of nucleus size.
    density : float
        Fraction of the field that nuclei would cover (0.05 sparse .. 0.5 very dense).
    clustering : float
        0 places nuclei uniformly; 1 puts almost all of them in tight colonies.
    touching : float
        0 keeps nuclei apart; 1 lets them press into each other (up to about a third of
        a nucleus' area is shared before the contact flattens).
    irregularity : float
        Amplitude of random bumps on the outline (0 = ellipses).
    elongation : float
        Spread of the aspect ratio (0 = round).
    brightness_spread : float
        SD of log brightness between nuclei.
    dim_fraction : float
        Fraction of nuclei 3-6 times dimmer than the rest (G1 / out of focus / weakly
        stained), the usual failure of a global threshold.
    mitotic_fraction : float
        Fraction of small, compact, very bright (condensed) nuclei, some rod-shaped.
    texture : float
        Strength of chromatin texture inside nuclei.
    nucleoli : float
        Visibility (0..1) of dark nucleoli in the DAPI channel.
    boundary_gap : float
        Darkening (0..1) where two nuclei touch; 0 leaves no visible seam.
    blur_sigma : float
        Optical blur (Gaussian PSF sigma, pixels).
    haze : float
        Out-of-focus light, as a fraction of the in-focus signal.
    background : float
        Background level relative to a typical nucleus.
    background_unevenness : float
        Relative amplitude of smooth illumination changes across the field.
    photons : float
        Photo-electrons collected at the brightness of a typical nucleus (lower is noisier).
    read_noise : float
        Camera read noise (electrons RMS).
    dtype : {'uint8', 'uint16', 'float32'}
        Pixel type of the fluorescence channels.
    cell_size_ratio : float
        Whole-cell diameter over nucleus diameter.
    confluence : float
        0 leaves gaps between cells; 1 fills the field up to neighbouring cells.
    label_free : {'phase', 'brightfield', 'dic'}
        Which label-free contrast to simulate.
    label_free_contrast : float
        Strength of the label-free contrast (it is weak in real images).
    edge_level : float or None
        Nucleus labels end where the nucleus's own blurred intensity profile falls to
        this fraction of its peak (see the module docstring); ``None`` labels the
        geometric outline before blur.
    defocus_fraction : float
        Fraction of nuclei lying out of the focal plane: blurred by a further
        ``defocus_sigma`` and dimmer. They are labelled (at their own visible edge).
    defocus_sigma : float
        Extra blur (pixels) of out-of-focus nuclei.
    micronuclei : float
        Expected micronuclei per nucleus: small (0.15-0.35 of a nucleus diameter) bright
        bodies just outside a nucleus. Not labelled: they are not nuclei.
    debris : float
        Debris particles per 10,000 pixels: specks and blobs of any brightness, some out
        of focus. Not labelled.
    """

    shape: tuple[int, int] = (256, 256)
    nucleus_diameter: float = 18.0
    diameter_spread: float = 0.18
    density: float = 0.3
    clustering: float = 0.4
    touching: float = 0.5
    irregularity: float = 0.1
    elongation: float = 0.25
    brightness_spread: float = 0.3
    dim_fraction: float = 0.1
    mitotic_fraction: float = 0.04
    texture: float = 0.3
    nucleoli: float = 0.5
    boundary_gap: float = 0.2
    blur_sigma: float = 1.0
    haze: float = 0.05
    background: float = 0.06
    background_unevenness: float = 0.4
    photons: float = 400.0
    read_noise: float = 3.0
    dtype: str = "uint16"
    cell_size_ratio: float = 2.2
    confluence: float = 0.5
    label_free: LabelFreeMode = "phase"
    label_free_contrast: float = 0.15
    edge_level: float | None = 0.2
    defocus_fraction: float = 0.0
    defocus_sigma: float = 2.5
    micronuclei: float = 0.0
    debris: float = 0.0

    def __post_init__(self) -> None:
        if len(self.shape) != 2 or min(self.shape) < 16:
            raise ValueError(f"shape must be (H, W) with both at least 16, got {self.shape}")
        if self.nucleus_diameter < 3:
            raise ValueError(f"nucleus_diameter must be at least 3 pixels, got {self.nucleus_diameter}")
        if self.dtype not in ("uint8", "uint16", "float32"):
            raise ValueError(f"dtype must be 'uint8', 'uint16' or 'float32', got {self.dtype!r}")
        if self.label_free not in ("phase", "brightfield", "dic"):
            raise ValueError(f"label_free must be 'phase', 'brightfield' or 'dic', got {self.label_free!r}")
        if self.edge_level is not None and not 0.0 < self.edge_level < 1.0:
            raise ValueError(f"edge_level must be a fraction in (0, 1) or None, got {self.edge_level}")
        for name in ("defocus_fraction",):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("defocus_sigma", "micronuclei", "debris"):
            if not getattr(self, name) >= 0.0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class Nucleus:
    """Geometry and appearance of one nucleus (positions in pixels)."""

    y: float
    x: float
    radius: float
    aspect: float
    angle: float
    harmonics: tuple[tuple[int, float, float], ...]
    brightness: float
    texture: float
    mitotic: bool
    nucleoli: tuple[tuple[float, float, float, float], ...]  # (dy, dx, radius, depth) relative units
    thickness: float = 1.0
    defocused: bool = False

    def extent(self) -> float:
        bumps = sum(abs(a) for _, a, _ in self.harmonics)
        return self.radius * np.sqrt(self.aspect) * (1.0 + bumps) + 2.0


@dataclass(frozen=True)
class SyntheticField:
    """One synthetic field: three paired channels and two label images.

    Attributes
    ----------
    nuclei, membrane, label_free : ndarray, shape (H, W)
        DAPI-like, CellMask-like and label-free channels (``params.dtype`` for the
        fluorescence channels, float32 for the label-free one).
    nucleus_labels, cell_labels : ndarray of int32, shape (H, W)
        Instance labels; a cell has the same id as its nucleus.
    params : SynthParams
    seed : int
    """

    nuclei: np.ndarray
    membrane: np.ndarray
    label_free: np.ndarray
    nucleus_labels: np.ndarray
    cell_labels: np.ndarray
    params: SynthParams
    seed: int
    nuclei_clean: np.ndarray = field(repr=False, default=None)  # noise-free DAPI, [0, ~1]
    membrane_clean: np.ndarray = field(repr=False, default=None)

    @property
    def n_nuclei(self) -> int:
        return int(len(np.unique(self.nucleus_labels)) - 1)


# --------------------------------------------------------------------------- geometry


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise with unit SD (sigma in pixels)."""
    if sigma > 8:
        # Smooth fields are made small and upsampled: same look, a fraction of the cost.
        f = int(sigma // 4)
        small = (max(2, shape[0] // f + 2), max(2, shape[1] // f + 2))
        n = ndi.gaussian_filter(rng.standard_normal(small).astype(np.float32), sigma / f, mode="wrap")
        n = ndi.zoom(n, f, order=1)[: shape[0], : shape[1]]
    else:
        n = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma, mode="wrap")
    sd = float(n.std()) or 1.0
    return (n - n.mean()) / sd


def _draw_nucleus(rng: np.random.Generator, y: float, x: float, p: SynthParams) -> Nucleus:
    mitotic = rng.random() < p.mitotic_fraction
    r = 0.5 * p.nucleus_diameter * float(np.exp(rng.normal(0.0, p.diameter_spread)))
    aspect = 1.0 + abs(rng.normal(0.0, p.elongation))
    brightness = float(np.exp(rng.normal(0.0, p.brightness_spread)))
    if rng.random() < p.dim_fraction:
        brightness /= rng.uniform(3.0, 6.0)
    texture = p.texture * rng.uniform(0.5, 1.5)
    defocused = bool(p.defocus_fraction and rng.random() < p.defocus_fraction)
    if defocused:
        brightness *= rng.uniform(0.4, 0.8)
    n_harm = 4
    harmonics = tuple(
        (k, float(p.irregularity * rng.uniform(0, 1) / (k - 1)), float(rng.uniform(0, 2 * np.pi)))
        for k in range(2, 2 + n_harm)
    )
    nucleoli: list[tuple[float, float, float, float]] = []
    if mitotic:
        r *= rng.uniform(0.5, 0.75)
        brightness *= rng.uniform(2.0, 3.5)
        texture = p.texture * 1.8
        if rng.random() < 0.4:  # metaphase plate seen side-on: a bright rod
            aspect = rng.uniform(2.0, 3.0)
    else:
        for _ in range(int(rng.integers(0, 4))):
            rad = rng.uniform(0.0, 0.55)
            ang = rng.uniform(0, 2 * np.pi)
            nucleoli.append(
                (rad * np.sin(ang), rad * np.cos(ang), rng.uniform(0.12, 0.22), p.nucleoli * rng.uniform(0.4, 0.8))
            )
    return Nucleus(
        y=y, x=x, radius=r, aspect=aspect, angle=float(rng.uniform(0, np.pi)), harmonics=harmonics,
        brightness=brightness, texture=texture, mitotic=mitotic, nucleoli=tuple(nucleoli),
        thickness=float(rng.uniform(0.8, 1.2)), defocused=defocused,
    )


def _rho(nuc: Nucleus, yy: np.ndarray, xx: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """Normalised radius: < 1 inside the nucleus outline, 1 on it."""
    dy, dx = yy - nuc.y, xx - nuc.x
    c, s = np.cos(nuc.angle), np.sin(nuc.angle)
    u = (c * dx + s * dy) / (nuc.radius * scale * np.sqrt(nuc.aspect))
    v = (-s * dx + c * dy) / (nuc.radius * scale / np.sqrt(nuc.aspect))
    phi = np.arctan2(v, u)
    bump = np.ones_like(phi)
    for k, a, ph in nuc.harmonics:
        bump += a * np.cos(k * phi + ph)
    return np.sqrt(u * u + v * v) / np.maximum(bump, 0.3)


def _rho_in_box(nuc: Nucleus, shape: tuple[int, int]):
    """``(box, rho)``: the nucleus's bounding box in the field and its normalised radius there.

    ``None`` when the box lies outside the field.
    """
    box = _bbox(nuc, shape)
    if box is None:
        return None
    y0, y1, x0, x1 = box
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    return box, _rho(nuc, yy, xx)


def _bbox(nuc: Nucleus, shape: tuple[int, int], scale: float = 1.0):
    e = nuc.extent() * scale
    y0, y1 = int(np.floor(nuc.y - e)), int(np.ceil(nuc.y + e)) + 1
    x0, x1 = int(np.floor(nuc.x - e)), int(np.ceil(nuc.x + e)) + 1
    y0, x0 = max(y0, 0), max(x0, 0)
    y1, x1 = min(y1, shape[0]), min(x1, shape[1])
    if y1 <= y0 or x1 <= x0:
        return None
    return y0, y1, x0, x1


def place_nuclei(rng: np.random.Generator, p: SynthParams) -> list[Nucleus]:
    """Draw nuclei positions (clustered, touching as asked) and shapes.

    Candidates are accepted when the part of their area already covered by earlier
    nuclei stays below a limit set by ``touching``; colonies come from a Poisson
    cluster process whose tightness is set by ``clustering``.
    """
    h, w = p.shape
    r = p.nucleus_diameter / 2.0
    target = int(round(p.density * h * w / (np.pi * r * r)))
    if target == 0:
        return []
    allowed = 0.02 + 0.33 * p.touching
    n_clusters = max(1, int(round(target / rng.uniform(6, 18))))
    margin = r
    centres = np.column_stack(
        [rng.uniform(-margin, h + margin, n_clusters), rng.uniform(-margin, w + margin, n_clusters)]
    )
    spread = r * (1.5 + 6.0 * (1.0 - p.clustering)) * np.sqrt(max(1.0, target / n_clusters) / 6.0)
    min_rho = np.full((h, w), np.inf, np.float32)
    nuclei: list[Nucleus] = []
    attempts = 0
    while len(nuclei) < target and attempts < 8 * target + 50:
        attempts += 1
        if rng.random() < p.clustering:
            cy, cx = centres[rng.integers(n_clusters)]
            y, x = rng.normal(cy, spread), rng.normal(cx, spread)
        else:
            y, x = rng.uniform(-margin, h + margin), rng.uniform(-margin, w + margin)
        nuc = _draw_nucleus(rng, float(y), float(x), p)
        found = _rho_in_box(nuc, (h, w))
        if found is None:
            continue
        (y0, y1, x0, x1), rho = found
        inside = rho < 1.0
        n_in = int(inside.sum())
        if n_in < 0.25 * np.pi * nuc.radius**2 / nuc.aspect:
            continue  # mostly outside the field
        covered = float((min_rho[y0:y1, x0:x1][inside] < 1.0).mean())
        if covered > allowed:
            continue
        np.minimum(min_rho[y0:y1, x0:x1], rho, out=min_rho[y0:y1, x0:x1])
        nuclei.append(nuc)
    return nuclei


def render_nucleus_labels(
    nuclei: list[Nucleus], shape: tuple[int, int], scales: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Label image and normalised-radius map; where outlines overlap the nearer centre wins.

    Returns ``(labels, rho)``; ids are 1..N in the order of ``nuclei`` (0 where absent),
    so contacts between pressed nuclei become flat, as in real tissue.
    """
    labels = np.zeros(shape, np.int32)
    best = np.full(shape, np.inf, np.float32)
    for i, nuc in enumerate(nuclei, start=1):
        s = 1.0 if scales is None else float(scales[i - 1])
        if s <= 0:
            continue
        box = _bbox(nuc, shape, s)
        if box is None:
            continue
        y0, y1, x0, x1 = box
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        rho = _rho(nuc, yy, xx, s)
        sub_best, sub_lab = best[y0:y1, x0:x1], labels[y0:y1, x0:x1]
        win = (rho < 1.0) & (rho < sub_best)
        sub_best[win] = rho[win]
        sub_lab[win] = i
    return labels, best


def _clean_labels(labels: np.ndarray, min_area: int) -> np.ndarray:
    """Drop slivers (under ``min_area`` pixels, or a disconnected piece) of each label."""
    from skimage.measure import label as cc_label

    comps = cc_label(labels, background=0, connectivity=1)
    sizes = np.bincount(comps.ravel())
    # Per original id keep its largest component.
    ids = labels.ravel()
    comp = comps.ravel()
    order = np.lexsort((-sizes[comp], ids))
    keep = np.zeros(sizes.size, bool)
    first = np.r_[True, ids[order][1:] != ids[order][:-1]]
    keep[comp[order][first]] = True
    keep[0] = False
    keep &= sizes >= min_area
    out = np.where(keep[comps], labels, 0).astype(np.int32)
    return out


# --------------------------------------------------------------------------- imaging


def _profile(r: np.ndarray) -> np.ndarray:
    """Intensity across a nucleus at normalised radius ``r`` (0 centre, 1 outline).

    Flat top with a soft shoulder: a projected, slightly flattened sphere.
    """
    r = np.clip(r, 0.0, 1.0)
    return np.sqrt(np.clip(1.0 - r**4, 0.0, 1.0)) * (0.75 + 0.25 * np.sqrt(np.clip(1.0 - r * r, 0.0, 1.0)))


def _nucleus_blur(nuc: Nucleus, p: SynthParams) -> float:
    """Gaussian blur (pixels) of one nucleus: the PSF, plus defocus when it is out of focus."""
    return float(np.hypot(p.blur_sigma, p.defocus_sigma)) if nuc.defocused else float(p.blur_sigma)


def visible_edge_labels(
    nuclei: list[Nucleus], geometric: np.ndarray, rho: np.ndarray, p: SynthParams
) -> np.ndarray:
    """Nucleus labels at the visible edge (see the module docstring).

    Each nucleus's own smooth profile (no texture, no nucleoli, so the outline does not
    depend on chromatin) is blurred like the image, and the nucleus owns the pixels
    where it reaches ``p.edge_level`` of its own peak. Where two such regions meet, the
    pixel goes to the nucleus at the higher fraction of its own peak, so a contact
    between a dim and a bright nucleus stays where the nuclei press together.

    Parameters
    ----------
    nuclei : list of Nucleus
    geometric : ndarray of int32
        Geometric labels (ids index ``nuclei`` from 1), from :func:`render_nucleus_labels`.
    rho : ndarray
        Normalised radius of the owning nucleus at each pixel.
    p : SynthParams
    """
    level = float(p.edge_level)
    shape = geometric.shape
    out = np.zeros(shape, np.int32)
    best = np.zeros(shape, np.float32)
    for i, sl in enumerate(ndi.find_objects(geometric), start=1):
        if sl is None:
            continue
        sigma = _nucleus_blur(nuclei[i - 1], p)
        pad = int(np.ceil(3.0 * sigma)) + 1
        box = tuple(slice(max(0, s.start - pad), min(n, s.stop + pad)) for s, n in zip(sl, shape))
        own = geometric[box] == i
        prof = np.where(own, _profile(rho[box]), 0.0).astype(np.float32)
        if sigma > 0:
            prof = ndi.gaussian_filter(prof, sigma, mode="constant")
        peak = float(prof.max())
        if peak <= 0:
            continue
        frac = prof / peak
        win = (frac >= level) & (frac > best[box])
        out[box][win] = i
        best[box][win] = frac[win]
    return out


def _blob_signal(
    rng: np.random.Generator, shape: tuple[int, int], p: SynthParams, nuclei: list[Nucleus], occupied: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Micronuclei and debris (unlabelled): in-focus and out-of-focus signal images.

    Nothing is drawn over a nucleus (``occupied``): a speck on a nucleus is part of it
    for anyone outlining it.
    """
    focus = np.zeros(shape, np.float32)
    blurred = np.zeros(shape, np.float32)
    h, w = shape
    free = ~ndi.binary_dilation(occupied, iterations=2)

    def draw(target: np.ndarray, blob: Nucleus) -> None:
        found = _rho_in_box(blob, shape)
        if found is None:
            return
        (y0, y1, x0, x1), r = found
        inside = r < 1.0
        if not inside.any() or not free[y0:y1, x0:x1][inside].all():
            return
        target[y0:y1, x0:x1] += np.where(inside, blob.brightness * _profile(r), 0.0).astype(np.float32)

    def blob(y: float, x: float, radius: float, brightness: float, irregular: float) -> Nucleus:
        return Nucleus(
            y=y, x=x, radius=max(0.7, radius), aspect=1.0 + abs(rng.normal(0.0, 0.3)), angle=float(rng.uniform(0, np.pi)),
            harmonics=tuple((k, float(irregular * rng.uniform(0, 1) / (k - 1)), float(rng.uniform(0, 2 * np.pi)))
                            for k in range(2, 5)),
            brightness=brightness, texture=0.0, mitotic=False, nucleoli=(),
        )

    if p.micronuclei > 0 and nuclei:
        for _ in range(int(rng.poisson(p.micronuclei * len(nuclei)))):
            parent = nuclei[int(rng.integers(len(nuclei)))]
            ang = rng.uniform(0, 2 * np.pi)
            dist = parent.extent() * rng.uniform(0.9, 1.4)
            r = parent.radius * rng.uniform(0.15, 0.35)
            draw(focus, blob(parent.y + dist * np.sin(ang), parent.x + dist * np.cos(ang), r,
                             parent.brightness * rng.uniform(0.6, 1.4), 0.05))
    if p.debris > 0:
        for _ in range(int(rng.poisson(p.debris * h * w / 1e4))):
            r = 0.5 * p.nucleus_diameter * float(np.exp(rng.uniform(np.log(0.05), np.log(0.5))))
            target = blurred if rng.random() < 0.3 else focus
            draw(target, blob(rng.uniform(0, h), rng.uniform(0, w), r, float(np.exp(rng.uniform(np.log(0.15), np.log(3.0)))),
                              0.3))
    return focus, blurred


def _nucleus_signal(
    nuclei: list[Nucleus], labels: np.ndarray, rho: np.ndarray, chromatin: np.ndarray, p: SynthParams
) -> np.ndarray:
    """Noise-free DAPI-like intensity (1 = a typical nucleus)."""
    img = np.zeros(labels.shape, np.float32)
    inside = labels > 0
    if not inside.any():
        return img
    ids = labels[inside] - 1
    r = np.clip(rho[inside], 0.0, 1.0)
    bright = np.array([n.brightness for n in nuclei], np.float32)[ids]
    tex = np.array([n.texture for n in nuclei], np.float32)[ids]
    img[inside] = bright * _profile(r) * np.clip(1.0 + tex * chromatin[inside], 0.15, None)
    # Nucleoli: dark, soft spots.
    for i, nuc in enumerate(nuclei, start=1):
        if not nuc.nucleoli:
            continue
        for dy, dx, rad, depth in nuc.nucleoli:
            cy, cx = nuc.y + dy * nuc.radius, nuc.x + dx * nuc.radius
            rr = rad * nuc.radius
            e = int(np.ceil(3 * rr)) + 1
            y0, y1 = max(0, int(cy) - e), min(labels.shape[0], int(cy) + e + 1)
            x0, x1 = max(0, int(cx) - e), min(labels.shape[1], int(cx) + e + 1)
            if y1 <= y0 or x1 <= x0:
                continue
            yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
            spot = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * rr * rr))
            own = labels[y0:y1, x0:x1] == i
            img[y0:y1, x0:x1][own] *= 1.0 - depth * spot[own]
    if p.boundary_gap > 0:
        # Seams: pixels of a nucleus with a different nucleus among their 8 neighbours.
        big = np.where(labels > 0, labels, np.iinfo(np.int32).max)
        seams = (labels > 0) & (
            (ndi.grey_dilation(labels, size=3) > labels) | (ndi.grey_erosion(big, size=3) < labels)
        )
        img[seams] *= 1.0 - 0.6 * p.boundary_gap
    return img


def _cell_labels(
    rng: np.random.Generator, nuclei: list[Nucleus], nucleus_labels: np.ndarray, p: SynthParams
) -> np.ndarray:
    """Whole cells grown from the nuclei: nearest-nucleus territories of limited, wobbly reach."""
    if nucleus_labels.max() == 0:
        return nucleus_labels.copy()
    dist, (iy, ix) = ndi.distance_transform_edt(nucleus_labels == 0, return_indices=True)
    owner = nucleus_labels[iy, ix]
    reach = np.zeros(len(nuclei) + 1, np.float32)
    for i, nuc in enumerate(nuclei, start=1):
        ratio = 1.3 if nuc.mitotic else p.cell_size_ratio * float(np.exp(rng.normal(0.0, 0.15)))
        reach[i] = nuc.radius * max(ratio - 1.0, 0.2)
    wobble = 1.0 + 0.35 * _smooth_noise(rng, nucleus_labels.shape, p.nucleus_diameter * 0.8)
    limit = reach[owner] * wobble * (0.6 + 0.8 * p.confluence)
    cells = np.where((dist <= limit) | (nucleus_labels > 0), owner, 0).astype(np.int32)
    return _clean_labels(cells, min_area=4)


def _background(rng: np.random.Generator, shape: tuple[int, int], level: float, uneven: float) -> np.ndarray:
    h, w = shape
    field_ = _smooth_noise(rng, shape, max(h, w) / 4.0)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    gy, gx = rng.normal(0, 1, 2)
    ramp = (gy * (yy / h - 0.5) + gx * (xx / w - 0.5))
    vignette = 1.0 - 0.3 * (((yy / h - 0.5) ** 2 + (xx / w - 0.5) ** 2) * 2)
    return np.clip(level * (1.0 + uneven * (0.5 * field_ + 0.5 * ramp)) * vignette, 0.0, None).astype(np.float32)


def _camera(rng: np.random.Generator, clean: np.ndarray, p: SynthParams) -> np.ndarray:
    """Shot noise, read noise, gain, offset and bit depth."""
    electrons = rng.poisson(np.clip(clean, 0, None) * p.photons).astype(np.float32)
    electrons += rng.normal(0.0, p.read_noise, clean.shape).astype(np.float32)
    if p.dtype == "float32":
        return (electrons / p.photons).astype(np.float32)
    if p.dtype == "uint16":
        offset, gain = 100.0, 1.0
        hi = 65535
    else:
        offset = 5.0
        # Fill about two thirds of 8 bits with a typical bright nucleus.
        peak = float(np.percentile(clean, 99.5)) * p.photons or 1.0
        gain, hi = 170.0 / peak, 255
    adu = np.round(electrons * gain + offset)
    return np.clip(adu, 0, hi).astype(p.dtype)


def _label_free(
    rng: np.random.Generator, cell_labels: np.ndarray, nuclei_clean: np.ndarray, p: SynthParams
) -> np.ndarray:
    """Label-free image from the optical thickness (phase) of cells and nuclei."""
    from skimage.segmentation import find_boundaries

    d = p.nucleus_diameter
    cells = (cell_labels > 0).astype(np.float32)
    # Cell body: thin at the edge, thicker toward the middle; nuclei bulge (and denser
    # chromatin retards more light, so the DAPI signal shows through weakly).
    body = ndi.gaussian_filter(cells, d * 0.15)
    edges = find_boundaries(cell_labels, mode="inner").astype(np.float32)
    granules = np.clip(_smooth_noise(rng, cells.shape, 1.0), 0, None) * cells * 0.15
    phase = 0.5 * body + 0.8 * ndi.gaussian_filter(nuclei_clean, 1.0) + granules + 0.1 * edges
    phase = ndi.gaussian_filter(phase, 0.7)
    if p.label_free == "phase":
        # Positive phase contrast: thick regions dark, bright halo just outside.
        halo = phase - ndi.gaussian_filter(phase, d * 0.35)
        img = 1.0 - p.label_free_contrast * 2.5 * halo
    elif p.label_free == "brightfield":
        # Slightly defocused bright field: intensity follows the Laplacian of the phase.
        img = 1.0 + p.label_free_contrast * 6.0 * ndi.gaussian_laplace(phase, 1.5)
    else:
        # DIC: shear-derivative relief along a random direction.
        ang = rng.uniform(0, 2 * np.pi)
        gy, gx = ndi.sobel(phase, 0), ndi.sobel(phase, 1)
        img = 1.0 + p.label_free_contrast * 1.2 * (np.cos(ang) * gx + np.sin(ang) * gy)
    illum = 1.0 + 0.5 * p.background_unevenness * 0.3 * _smooth_noise(rng, cells.shape, max(cells.shape) / 3.0)
    img = img * illum
    img = ndi.gaussian_filter(img, max(0.5, 0.6 * p.blur_sigma))
    # Transmitted light is bright: shot noise is low relative to the signal.
    photons = 3000.0
    noisy = rng.poisson(np.clip(img, 0, None) * photons).astype(np.float32) / photons
    noisy += rng.normal(0.0, 0.004, img.shape).astype(np.float32)
    return noisy.astype(np.float32)


def render_field(
    rng: np.random.Generator,
    nuclei: list[Nucleus],
    p: SynthParams,
    *,
    scales: np.ndarray | None = None,
    seed: int = 0,
) -> SyntheticField:
    """Image a list of nuclei (and the cells grown from them) with the simulated microscope."""
    h, w = p.shape
    geometric, rho = render_nucleus_labels(nuclei, p.shape, scales)
    min_area = max(6, int(0.06 * np.pi * (p.nucleus_diameter / 2) ** 2))
    geometric = _clean_labels(geometric, min_area)
    chromatin = 0.6 * _smooth_noise(rng, p.shape, max(0.7, p.nucleus_diameter / 14.0)) + 0.4 * _smooth_noise(
        rng, p.shape, max(1.2, p.nucleus_diameter / 6.0)
    )
    signal = _nucleus_signal(nuclei, geometric, rho, chromatin, p)
    labels = geometric
    if p.edge_level is not None:
        labels = _clean_labels(visible_edge_labels(nuclei, geometric, rho, p), min_area)
    cells = _cell_labels(rng, nuclei, labels, p)
    # Relabel so ids are 1..N and a cell keeps its nucleus' id.
    ids = np.unique(labels)
    ids = ids[ids > 0]
    lut = np.zeros(len(nuclei) + 2, np.int32)
    lut[ids] = np.arange(1, len(ids) + 1)
    labels = lut[labels]
    cells = np.where(np.isin(cells, ids), lut[np.minimum(cells, len(nuclei) + 1)], 0).astype(np.int32)

    defocused = np.array([False] + [n.defocused for n in nuclei])[geometric]
    sharp = np.where(defocused, 0.0, signal).astype(np.float32)
    soft = np.where(defocused, signal, 0.0).astype(np.float32)
    if p.micronuclei > 0 or p.debris > 0:
        extra_sharp, extra_soft = _blob_signal(rng, p.shape, p, nuclei, geometric > 0)
        sharp += extra_sharp
        soft += extra_soft
        signal = sharp + soft
    clean = ndi.gaussian_filter(sharp, p.blur_sigma) if p.blur_sigma > 0 else sharp
    if soft.any():
        clean = clean + ndi.gaussian_filter(soft, float(np.hypot(p.blur_sigma, p.defocus_sigma)))
    if p.haze > 0:
        clean = clean + p.haze * ndi.gaussian_filter(signal, p.nucleus_diameter)
    clean = clean + _background(rng, p.shape, p.background, p.background_unevenness)
    nuclei_img = _camera(rng, clean, p)

    # CellMask-like: bright membrane rim, dim cytoplasm, dimmer over the nucleus.
    from skimage.segmentation import find_boundaries

    cell_ids = np.unique(cells)
    per_cell = np.exp(rng.normal(0.0, 0.35, cells.max() + 1)).astype(np.float32)
    rim = find_boundaries(cells, mode="inner").astype(np.float32)
    rim = ndi.gaussian_filter(rim, 0.8) * 2.0
    cyto = (cells > 0) * (0.35 + 0.12 * _smooth_noise(rng, p.shape, 1.5))
    cyto = cyto * np.where(labels > 0, 0.6, 1.0)
    mem_signal = per_cell[cells] * (cyto + rim) * (cells > 0)
    mem_clean = ndi.gaussian_filter(mem_signal.astype(np.float32), p.blur_sigma) if p.blur_sigma > 0 else mem_signal
    mem_clean = mem_clean + 0.5 * p.haze * ndi.gaussian_filter(mem_signal.astype(np.float32), p.nucleus_diameter)
    mem_clean = mem_clean + _background(rng, p.shape, p.background, p.background_unevenness)
    membrane_img = _camera(rng, mem_clean.astype(np.float32), p)
    del cell_ids

    label_free = _label_free(rng, cells, signal, p)
    return SyntheticField(
        nuclei=nuclei_img,
        membrane=membrane_img,
        label_free=label_free,
        nucleus_labels=labels,
        cell_labels=cells,
        params=p,
        seed=seed,
        nuclei_clean=clean.astype(np.float32),
        membrane_clean=mem_clean.astype(np.float32),
    )


def synthesize(params: SynthParams | None = None, seed: int = 0, **overrides) -> SyntheticField:
    """Make one synthetic field.

    Parameters
    ----------
    params : SynthParams, optional
        Defaults to ``SynthParams()``.
    seed : int
        Same seed and params, same field, on every machine.
    **overrides
        Fields of :class:`SynthParams` to change, e.g. ``shape=(512, 512)``.

    Returns
    -------
    SyntheticField

    Examples
    --------
    >>> f = synthesize(seed=1, shape=(128, 128), density=0.2)
    >>> f.nuclei.dtype, f.nucleus_labels.shape
    (dtype('uint16'), (128, 128))
    """
    p = replace(params or SynthParams(), **overrides)
    rng = np.random.default_rng(seed)
    nuclei = place_nuclei(rng, p)
    return render_field(rng, nuclei, p, seed=seed)


@dataclass(frozen=True)
class SyntheticStack:
    """A z-stack or time series of a synthetic field, shape ``(N, H, W)`` per channel."""

    nuclei: np.ndarray
    membrane: np.ndarray
    label_free: np.ndarray
    nucleus_labels: np.ndarray
    cell_labels: np.ndarray
    axis: str
    params: SynthParams
    seed: int


def synthesize_stack(
    params: SynthParams | None = None, seed: int = 0, *, n_planes: int = 5, axis: Literal["z", "t"] = "t", **overrides
) -> SyntheticStack:
    """A 3-D (``axis='z'``) or time (``axis='t'``) stack of one field.

    For ``'z'`` every nucleus is an ellipsoid with its own height: planes cut smaller
    sections near its top and bottom, and planes beyond it show only haze. For ``'t'``
    nuclei drift and flicker between frames but keep their ids (tracking ground truth).
    """
    p = replace(params or SynthParams(), **overrides)
    rng = np.random.default_rng(seed)
    nuclei = place_nuclei(rng, p)
    frames = []
    if axis == "z":
        zc = rng.normal(0.0, 0.6, len(nuclei))
        half = rng.uniform(0.9, 1.4, len(nuclei))
        zs = np.linspace(-1.5, 1.5, n_planes)
        for k, z in enumerate(zs):
            dz = (z - zc) / half
            scales = np.sqrt(np.clip(1.0 - dz**2, 0.0, None))
            scales[scales < 0.35] = 0.0  # caps too thin to annotate
            prm = replace(p, blur_sigma=p.blur_sigma * (1.0 + 0.4 * abs(z)), haze=p.haze * (1.0 + abs(z)))
            frames.append(render_field(np.random.default_rng([seed, k]), nuclei, prm, scales=scales, seed=seed))
    elif axis == "t":
        state = list(nuclei)
        for k in range(n_planes):
            frames.append(render_field(np.random.default_rng([seed, k]), state, p, seed=seed))
            step = p.nucleus_diameter * 0.06
            state = [
                replace(
                    n,
                    y=n.y + rng.normal(0, step),
                    x=n.x + rng.normal(0, step),
                    angle=n.angle + rng.normal(0, 0.05),
                    brightness=n.brightness * float(np.exp(rng.normal(0, 0.05))),
                )
                for n in state
            ]
    else:
        raise ValueError(f"axis must be 'z' or 't', got {axis!r}")
    return SyntheticStack(
        nuclei=np.stack([f.nuclei for f in frames]),
        membrane=np.stack([f.membrane for f in frames]),
        label_free=np.stack([f.label_free for f in frames]),
        nucleus_labels=np.stack([f.nucleus_labels for f in frames]),
        cell_labels=np.stack([f.cell_labels for f in frames]),
        axis=axis,
        params=p,
        seed=seed,
    )


def random_params(
    rng: np.random.Generator,
    *,
    shape: tuple[int, int] = (256, 256),
    nucleus_diameter: float = 18.0,
    diameter_jitter: float = 0.15,
    hard: float = 0.5,
    real_world: bool = True,
) -> SynthParams:
    """Draw widely varied :class:`SynthParams` for training and validation sets.

    Everything a microscope and a sample can change is randomised (density, clustering,
    contact, shape, brightness range, texture, blur, background, noise, bit depth,
    label-free modality), so models learn cells, not one rendering of them.

    Parameters
    ----------
    rng : numpy.random.Generator
    shape : (int, int)
    nucleus_diameter : float
        Nominal diameter; each field jitters it by ``diameter_jitter`` (relative), so a
        model tolerates imperfect diameter estimates.
    hard : float
        0..1: how far toward dense, touching, noisy fields to draw.

    real_world : bool
        Every field also gets what real fields hold: out-of-focus nuclei, micronuclei,
        debris, a visible-edge level between 0.15 and 0.25, and about one in eight is
        very sparse. ``False`` draws the fields of napari-kaizen 0.1.0 (geometric
        labels, none of these), on which the bundled U-Net models were trained and are
        tested.
    """
    u = rng.uniform
    p = SynthParams(
        shape=shape,
        nucleus_diameter=float(nucleus_diameter * np.exp(rng.normal(0, diameter_jitter))),
        diameter_spread=u(0.08, 0.28),
        density=u(0.08, 0.25 + 0.3 * hard),
        clustering=u(0.0, 0.5 + 0.5 * hard),
        touching=u(0.1, 0.4 + 0.6 * hard),
        irregularity=u(0.02, 0.2),
        elongation=u(0.05, 0.45),
        brightness_spread=u(0.1, 0.5),
        dim_fraction=u(0.0, 0.25),
        mitotic_fraction=u(0.0, 0.08),
        texture=u(0.05, 0.55),
        nucleoli=u(0.0, 0.9),
        boundary_gap=u(0.0, 0.6),
        blur_sigma=u(0.5, 2.0),
        haze=u(0.0, 0.2),
        background=u(0.01, 0.2),
        background_unevenness=u(0.0, 1.0),
        photons=float(np.exp(u(np.log(30), np.log(3000)))),
        read_noise=u(1.0, 8.0),
        dtype=str(rng.choice(["uint8", "uint16", "float32"], p=[0.3, 0.5, 0.2])),
        cell_size_ratio=u(1.6, 3.0),
        confluence=u(0.2, 1.0),
        label_free=str(rng.choice(["phase", "brightfield", "dic"])),
        label_free_contrast=u(0.08, 0.3),
    )
    if not real_world:
        return replace(p, edge_level=None)
    # Drawn after the settings above so that a seed keeps giving the same field layout.
    p = replace(
        p,
        edge_level=u(0.15, 0.25),  # annotators differ a little (see the module docstring)
        defocus_fraction=u(0.0, 0.15),
        defocus_sigma=u(1.0, 4.0),
        micronuclei=u(0.0, 0.15),
        debris=float(np.exp(u(np.log(0.05), np.log(3.0)))),
    )
    if rng.random() < 0.12:  # very sparse fields: a few nuclei, mostly background and debris
        p = replace(p, density=u(0.005, 0.04))
    return p


def params_to_dict(p: SynthParams) -> dict:
    """JSON-friendly dict of a :class:`SynthParams` (for weights metadata)."""
    d = asdict(p)
    d["shape"] = list(d["shape"])
    return d
