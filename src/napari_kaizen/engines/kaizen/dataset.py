"""Training patches for the Kaizen VQ-VAE (paper, sections 3.1 and 4).

A patch is cut around a centre pixel. With probability ``positive_fraction`` (paper:
80 %) the centre lies on a cell and the target is the input patch times that cell's
mask; otherwise the centre lies on background and the target is empty, so the model
learns not to invent cells.

Beyond the paper, to learn in minutes of CPU instead of 500,000 steps on a GPU, the
sampler makes every patch count (all switchable, see :class:`PatchSampler`):

* cells are drawn uniformly (not pixels), so small and dim nuclei are seen as often
  as large bright ones; the centre is a uniform pixel of the chosen cell, because
  at inference proposals land anywhere on a cell, not only on its centre;
* half of the empty patches are centred on background close to a cell (gaps
  between touching nuclei, just outside an outline): the hard negatives;
* with probability ``residual_prob`` some neighbouring cells are subtracted from
  the input (blurred and with a random gain, like an imperfect reconstruction),
  because later passes of the decomposition predict on the error image, which looks
  like that;
* lossless flips and 90-degree rotations about the centre pixel, and a random gain
  applied to input and target alike (the target stays "input times mask");
* with ``augment`` (real micrographs): a random zoom about the centre pixel, and the
  changes of :data:`~napari_kaizen.engines._common.augment.REAL_WORLD` (blur, gamma,
  contrast, offset) applied before the target is cut, so the target is still "input
  times mask"; shot / read noise and quantisation follow on the input only, so the
  model reconstructs a cell, not its noise;
* a share of the empty patches is centred on bright pixels that no label claims
  (debris, micronuclei, out-of-focus blobs in real images), which the model must learn
  to leave empty.

The image is padded exactly as the decomposition pads it (mirror, then zeros, half a
patch in all), so cells cut by the border are learnt the way they are seen later.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from scipy import ndimage as ndi

from ...errors import InputError
from .._common.augment import draw_zoom, noise, photometric, zoom_window


def pad_like_inference(image: np.ndarray, patch_size: int, mirror_pad: int, *, labels: bool = False) -> np.ndarray:
    """Pad by half a patch: ``mirror_pad`` pixels of mirror, then zeros (paper, 3.6).

    Labels are mirrored the same way, so a cell cut by the border and its mirror
    image form one object, as the model sees them.
    """
    half = patch_size // 2
    mirror = int(min(mirror_pad, half))
    arr = np.asarray(image)
    if mirror:
        mode = "reflect" if min(arr.shape) > 1 else "edge"
        arr = np.pad(arr, mirror, mode=mode)
    return np.pad(arr, half - mirror, mode="constant", constant_values=0)


class PatchSampler:
    """Endless source of ``(input, target)`` patch batches from labelled images.

    Parameters
    ----------
    images : sequence of ndarray, each (H, W)
        Normalised images (e.g. from
        :func:`~napari_kaizen.engines._common.normalize.prepare_image`).
    labels : sequence of ndarray of int, each (H, W)
        Instance labels (0 = background), same shapes.
    patch_size : int
        Side of the patches (paper: 40).
    rng : numpy.random.Generator
    positive_fraction : float
        Fraction of patches whose centre lies on a cell (paper: 0.8).
    mirror_pad : int
        As the decomposition's border padding.
    near_fraction : float
        Fraction of the empty patches centred within half a diameter of a cell.
    residual_prob : float
        Probability of subtracting some neighbouring cells from the input.
    flips : bool
        Random flips and 90-degree rotations about the centre pixel.
    gain_range : (float, float)
        Random gain (log-uniform) applied to input and target.
    augment : AugmentParams, optional
        Zoom (``scale_range``) and photometric changes; see the module docstring.
    bright_fraction : float
        Fraction of the empty patches centred on bright unlabelled pixels (where there
        are any).
    image_weights : sequence of float, optional
        Relative weight of each image's cells (default: every cell equally likely),
        e.g. to balance a few real images against many synthetic ones.

    Raises
    ------
    InputError
        If images and labels do not pair up, or there is no cell at all.
    """

    def __init__(
        self,
        images: Sequence[np.ndarray],
        labels: Sequence[np.ndarray],
        *,
        patch_size: int = 40,
        rng: np.random.Generator | None = None,
        positive_fraction: float = 0.8,
        mirror_pad: int = 8,
        near_fraction: float = 0.5,
        residual_prob: float = 0.3,
        flips: bool = True,
        gain_range: tuple[float, float] = (0.75, 1.33),
        augment=None,
        bright_fraction: float = 0.0,
        image_weights: Sequence[float] | None = None,
        regions: Sequence[np.ndarray | None] | None = None,
    ) -> None:
        if len(images) != len(labels):
            raise InputError(f"{len(images)} images but {len(labels)} label images: they must pair up one to one")
        if not len(images):
            raise InputError("no training images were given")
        if patch_size < 8 or patch_size % 2:
            raise InputError(f"patch_size must be an even number >= 8, got {patch_size}")
        self.patch_size = int(patch_size)
        self.rng = rng if rng is not None else np.random.default_rng()
        self.positive_fraction = float(positive_fraction)
        self.near_fraction = float(near_fraction)
        self.residual_prob = float(residual_prob)
        self.flips = bool(flips)
        self.gain_range = gain_range
        self.augment = augment
        self.bright_fraction = float(bright_fraction)
        self._bright: list[np.ndarray] = []
        self._images: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []
        self._cells: list[list[np.ndarray]] = []  # per field, per cell: flat indices (image grid)
        self._background: list[np.ndarray] = []
        self._near: list[np.ndarray] = []
        self._shapes: list[tuple[int, int]] = []
        for k, (img, lab) in enumerate(zip(images, labels)):
            img = np.asarray(img, dtype=np.float32)
            lab = np.asarray(lab)
            if img.ndim != 2 or img.shape != lab.shape:
                raise InputError(
                    f"training pair {k}: image {img.shape} and labels {lab.shape} must be 2-D and of the same shape"
                )
            if lab.dtype.kind not in "biu":
                raise InputError(f"training pair {k}: labels have dtype {lab.dtype}, expected integers")
            lab = lab.astype(np.int32)
            flat = lab.ravel()
            order = np.argsort(flat, kind="stable")
            ids, starts = np.unique(flat[order], return_index=True)
            bounds = list(starts[1:]) + [flat.size]
            cells = [order[s:e] for i, s, e in zip(ids, starts, bounds) if i > 0]
            bg = order[: bounds[0]] if ids[0] == 0 else np.zeros(0, np.intp)
            region = None if regions is None else regions[k]
            if region is not None:
                # A partial correction: only cells mostly inside the checked region, and
                # background known to be background, teach anything.
                inside = np.asarray(region, bool).ravel()
                if inside.size != flat.size:
                    raise InputError(f"training pair {k}: region {np.shape(region)} does not match labels {lab.shape}")
                cells = [c for c in cells if inside[c].mean() >= 0.5]
                bg = bg[inside[bg]]
            if cells:
                d = np.median([2.0 * np.sqrt(c.size / np.pi) for c in cells])
                dist = ndi.distance_transform_edt(lab == 0).ravel()
                near = bg[dist[bg] <= max(2.0, 0.5 * d)]
            else:
                near = bg
            if self.bright_fraction > 0 and bg.size:
                # Bright and not within two pixels of a labelled object: not a cell, but
                # something a model could take for one.
                clear = ~ndi.binary_dilation(lab > 0, iterations=2).ravel()
                level = np.percentile(img, 50) + 0.3 * (np.percentile(img, 99.5) - np.percentile(img, 50))
                bright = bg[clear[bg] & (img.ravel()[bg] > level)]
            else:
                bright = np.zeros(0, np.intp)
            self._bright.append(bright)
            self._shapes.append(lab.shape)
            self._images.append(pad_like_inference(img, self.patch_size, mirror_pad))
            self._labels.append(pad_like_inference(lab, self.patch_size, mirror_pad, labels=True))
            self._cells.append(cells)
            self._background.append(bg)
            self._near.append(near if near.size else bg)
        counts = np.array([len(c) for c in self._cells], np.float64)
        if counts.sum() == 0:
            raise InputError("the training labels hold no cells: every label image is empty")
        if image_weights is not None:
            if len(image_weights) != len(counts):
                raise InputError(f"{len(image_weights)} image weights for {len(counts)} images")
            counts = counts * np.asarray(image_weights, np.float64)
        self._cell_weights = counts / counts.sum()
        bg_counts = np.array([b.size for b in self._background], np.float64)
        self._bg_weights = bg_counts / bg_counts.sum() if bg_counts.sum() else None

    def _centre(self, positive: bool) -> tuple[int, int, int, int]:
        """``(field, y, x, cell_id)`` of a patch centre (cell_id 0 for background)."""
        rng = self.rng
        if positive or self._bg_weights is None:
            f = int(rng.choice(len(self._cells), p=self._cell_weights))
            cell = self._cells[f][int(rng.integers(len(self._cells[f])))]
            flat = int(cell[int(rng.integers(cell.size))])
        else:
            f = int(rng.choice(len(self._background), p=self._bg_weights))
            # Drawn only when asked for, so a sampler without hard negatives keeps the
            # random stream (and the weights) of the training runs before them.
            if self.bright_fraction > 0 and rng.random() < self.bright_fraction and self._bright[f].size:
                pool = self._bright[f]
            else:
                pool = self._near[f] if rng.random() < self.near_fraction else self._background[f]
            flat = int(pool[int(rng.integers(pool.size))])
        h, w = self._shapes[f]
        y, x = divmod(flat, w)
        half = self.patch_size // 2
        cid = int(self._labels[f][y + half, x + half])
        return f, y, x, cid

    def sample(self) -> tuple[np.ndarray, np.ndarray, bool]:
        """One ``(input, target, has_cell)``; patches are ``(P, P)`` float32."""
        win, target, mask = self.sample_with_mask()
        return win, target, bool(mask.any())

    def sample_with_mask(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One ``(input, target, mask)``: the mask of the centre cell (empty if none)."""
        rng = self.rng
        p = self.patch_size
        positive = rng.random() < self.positive_fraction
        f, y, x, cid = self._centre(positive)
        # A (P+1)-window centred on the pixel, so flips keep the centre at index P/2.
        aug = self.augment
        zoom = draw_zoom(rng, aug) if aug is not None else 1.0
        if zoom != 1.0:
            half = p // 2
            win, lab = zoom_window(self._images[f], self._labels[f], (y + half, x + half), p + 1, zoom)
        else:
            win = self._images[f][y : y + p + 1, x : x + p + 1].copy()
            lab = self._labels[f][y : y + p + 1, x : x + p + 1]
        if self.residual_prob and rng.random() < self.residual_prob:
            others = np.unique(lab)
            others = others[(others > 0) & (others != cid)]
            if others.size:
                gone = others[rng.random(others.size) < 0.6]
                if gone.size:
                    remove = np.isin(lab, gone)
                    blur = float(rng.uniform(0.0, 1.5))
                    part = win * remove
                    if blur > 0.2:
                        part = ndi.gaussian_filter(part, blur)
                    win = win - part * float(rng.uniform(0.8, 1.1))
        if aug is not None:
            win = photometric(win, rng, aug, with_noise=False)
        mask = (lab == cid) if cid > 0 else np.zeros(lab.shape, bool)
        target = win * mask
        if aug is not None:
            win = noise(win, rng, aug)
        if self.flips:
            k = int(rng.integers(4))
            if rng.random() < 0.5:
                win, target, mask = win[::-1], target[::-1], mask[::-1]
            win, target, mask = np.rot90(win, k), np.rot90(target, k), np.rot90(mask, k)
        lo, hi = self.gain_range
        gain = float(np.exp(rng.uniform(np.log(lo), np.log(hi)))) if hi > lo else 1.0
        win = np.ascontiguousarray(win[:p, :p], dtype=np.float32) * gain
        target = np.ascontiguousarray(target[:p, :p], dtype=np.float32) * gain
        return win, target, np.ascontiguousarray(mask[:p, :p])

    def batch(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        """``(inputs, targets)``, each ``(size, 1, P, P)`` float32."""
        xs, ts = [], []
        for _ in range(int(size)):
            a, b, _ = self.sample()
            xs.append(a)
            ts.append(b)
        return np.stack(xs)[:, None], np.stack(ts)[:, None]

    def batches(self, size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Endless iterator of :meth:`batch`."""
        while True:
            yield self.batch(size)


def synthetic_training_set(
    n_fields: int,
    *,
    first_seed: int = 0,
    shape: tuple[int, int] = (256, 256),
    nucleus_diameter: float = 18.0,
    hard: Sequence[float] = (0.4, 0.6, 0.8, 1.0),
) -> tuple[list[np.ndarray], list[np.ndarray], list[dict]]:
    """Synthetic fluorescent nuclei fields for training (``nuclei`` channel + labels).

    Field ``k`` uses seed ``first_seed + k`` for both
    ``random_params(np.random.default_rng(seed), ...)`` and ``synthesize``; ``hard``
    cycles over the fields. Evaluation sets must use other seeds (>= 10,000) and
    settings.

    Returns
    -------
    images : list of ndarray
        Normalised with :func:`~napari_kaizen.engines._common.normalize.prepare_image`.
    labels : list of ndarray of int32
    params : list of dict
        The :class:`~napari_kaizen.data.synthetic.SynthParams` of every field.
    """
    from ...data.synthetic import params_to_dict, random_params, synthesize
    from .._common.normalize import prepare_image

    images, labels, params = [], [], []
    for k in range(int(n_fields)):
        seed = int(first_seed) + k
        prm = random_params(
            np.random.default_rng(seed), shape=tuple(shape), nucleus_diameter=nucleus_diameter, hard=hard[k % len(hard)]
        )
        field = synthesize(prm, seed=seed)
        images.append(prepare_image(field.nuclei))
        labels.append(field.nucleus_labels.astype(np.int32))
        params.append(params_to_dict(prm))
    return images, labels, params
