"""Parameters of the Kaizen engine (defaults from the paper, section 3.6)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from ...errors import InputError
from .._common.polarity import check_objects

# The engine's constants live here, beside its Params, at the bottom of the package:
# the network (model.py), segment.py and the package's __init__ all read them, and
# none of those may import another just for a name.

#: Weights used when none are given.
DEFAULT_MODEL = "bundled:kaizen_nuclei"
#: ``architecture`` of this engine's weights files.
ARCHITECTURE = "kaizen-vqvae"
#: What the default model expects.
INPUT_KIND = "nuclei"

#: The ``'cell'`` mask rule's level for a model whose metadata does not calibrate one.
DEFAULT_MASK_FRACTION = 0.25
#: The ``'image'`` outline's constants for a model whose metadata does not calibrate them.
DEFAULT_OUTLINES = {"edge_level": 0.2, "valley": 0.9, "min_area_fraction": 0.25, "min_contrast": 0.0,
                    "min_foreground": 0.0}
#: The outline constants that 0 turns off (filters), not constants that must be positive.
ZERO_OFF_OUTLINES = ("min_contrast", "min_foreground")


@dataclass(frozen=True)
class KaizenParams:
    """Parameters of :func:`~napari_kaizen.engines.kaizen.segment` and
    :func:`~napari_kaizen.engines.kaizen.decompose`.

    Window sizes the paper's text lost in extraction (the box of ones and the
    suppressed region) default to fractions of the patch size, so one set of
    defaults serves any model; ``None`` means "derive from the patch size".

    Attributes
    ----------
    patch_size : int or None
        Side of the VQ-VAE's square input (paper: 40 for nuclei). It must equal the
        model's patch size (a mismatch is an error, not a silent resize); ``None``
        takes the model's.
    points_per_iteration : int
        ``N`` of the paper's Algorithm 1: points proposed per iteration when
        ``batched`` is False (paper: 10 for nuclei, 1 for neuroblastoma cells).
    max_iterations : int
        Iterations of one pass (the paper's repeat loop, capped at 30); a pass also
        ends at the first iteration that accepts nothing.
    max_passes : int
        Passes at most (each later pass predicts on the error image left by the
        previous ones); the run also ends at the first pass that accepts nothing.
    mask_rule : {'cell', 'image'}
        How a predicted cell image becomes a mask. ``'cell'`` (default): where the
        cell is brighter than ``mask_fraction`` of its own peak, a level calibrated on
        the model's annotated training cells, so each outline follows its own cell
        whatever the rest of the field holds. ``'image'``: the paper's rule, brighter
        than ``mask_threshold`` times the mean of the whole input image; on sparse
        fields the mean is low and masks grow past the nuclei.
    mask_fraction : float or None
        The ``'cell'`` rule's level; ``None`` takes the model's calibrated value
        (its metadata's ``mask_fraction``; 0.25 for a model without one).
    mask_threshold : float
        The ``'image'`` rule's fraction of the input's mean (paper: 10 %). Under the
        ``'cell'`` rule it is a floor, so an almost empty prediction stays empty.
    outline : {'image', 'model'}
        Where the final outlines come from. ``'image'`` (default): each cell found is
        redrawn where its own brightness in the input falls to ``edge_level`` of its
        peak above the local background, touching cells without a dark valley
        between them are one cell, and pieces under ``min_area_fraction`` of the
        median cell are dropped (:mod:`~napari_kaizen.engines.kaizen.outlines`);
        the model's reconstruction is smooth and coarse, people outline the visible
        edge. ``'model'``: the masks of the reconstructions (the paper's). Live
        snapshots always show the model's masks.
    edge_level, valley, min_area_fraction, min_contrast, min_foreground : float or None
        The ``'image'`` outline's constants; ``None`` (default) takes the model's
        calibrated values (its metadata's ``outlines``, chosen on annotated training
        images), else 0.2, 0.9, 0.25, 0 and 0 (``min_contrast``: cells dimmer than this
        fraction of the typical cell are dropped; ``min_foreground``: cells with less
        than this fraction of their pixels in the field's stained foreground are
        dropped, noise or haze explained as a cell; 0 keeps all).
    learned_outline : bool
        Under ``outline='image'``, use the outline rule a fine-tuned model learned
        from the person's corrections (:mod:`~napari_kaizen.engines.kaizen.outline_rule`)
        to move the outlines near ``edge_level``, when the model has one (default True;
        :func:`~napari_kaizen.engines.kaizen.outlines.rule_near_level`). A model without
        one, or False, draws at the calibrated level.
    min_size : int
        Masks with fewer pixels (on the model's grid) are dropped (paper: 20).
    mirror_pad : int
        Pixels of mirror padding at the image border; zero padding follows up to half
        the patch (paper: 8 mirror + 12 zero for 40-pixel patches).
    diameter : float or 'auto' or None
        Typical object diameter in the input image (pixels). The image is rescaled
        so objects have the diameter the model was trained on; ``'auto'`` (the
        default: the model knows one nucleus size, a microscope's images may have any)
        estimates it from the image; ``None`` runs at the input scale. Differences
        under 20 % are not resampled (the model was trained on that spread).
    objects : {'auto', 'bright', 'dark'}
        Nuclei brighter than their field (a fluorescence stain) or darker (bright-field,
        a stained section: the image is turned round first); ``'auto'`` tells by
        :func:`~napari_kaizen.engines._common.polarity.dark_objects` and says so.
    batched : bool
        True: each iteration proposes every point whose patch does not overlap
        another proposal's, predicts them in one forward pass and judges them
        together (exactly what judging them one by one would give, because they do
        not overlap). False: the paper's loop, ``points_per_iteration`` points per
        iteration with the paper's suppression window, judged one after the other.
    batch_points : int or None
        With ``batched``, at most this many proposals per iteration (``None``: all).
    box_size : int or None
        Side of the box of ones the error image is convolved with to rank points;
        ``None``: a quarter of the patch (about half a nucleus at the paper's scale).
        A box smaller than an object peaks inside the brightest single object; a box
        as large as an object often peaks between two touching ones, where the
        VQ-VAE cannot tell which cell it is asked for and reconstructs both.
    suppression_radius : int or None
        Half-side of the square suppressed around each chosen point in the paper's
        loop; ``None``: a quarter of the patch (points about one object apart). The
        batched loop always suppresses ``patch_size - 1`` so patches never overlap.
    tabu_radius : int or None
        Points within this (Chebyshev) distance of a point already tried in this
        pass are not proposed again (a neighbouring pixel would predict the same
        cell); ``None``: an eighth of the patch (one latent cell of the VQ-VAE).
    batch_size : int
        Patches per forward pass (bounds memory on huge images).
    proposal_threshold : float
        A point is proposed only where the box mean of the error exceeds this
        fraction of the input's mean (a box that dim cannot hold a cell; the same
        level as the mask threshold by default).
    peak_radius : int or None
        Proposals must be maxima of the box-filtered error within this radius;
        ``None``: half the box. Without it the greedy choice takes points on the
        flank of a cell whose peak was just suppressed, so the patch is off-centre.
    min_unexplained : float
        A point is proposed only where at least this share of the input's
        brightness in its box is still unexplained (box mean of the error over box
        mean of the input). Where a cell was already explained, the error holds only
        its faint remainder (10-30 %); reconstructing that wastes a forward pass and
        at best yields a correction. Not in the paper; 0 turns it off.
    merge_overlap : float
        A kept cell whose mask lies, for at least this share of its pixels, on
        earlier cells (or within ``patch_size // 20`` pixels of them) is a
        correction, not a new cell: it stays in the internal image but adds no
        label. Later passes predict on the error image, where explained cells leave
        faint remainders that the VQ-VAE reconstructs as if they were cells. Not in
        the paper; a value above 1 turns it off.
    """

    patch_size: int | None = 40
    points_per_iteration: int = 10
    max_iterations: int = 30
    max_passes: int = 10
    mask_rule: str = "cell"
    mask_fraction: float | None = None
    mask_threshold: float = 0.1
    outline: str = "image"
    edge_level: float | None = None
    valley: float | None = None
    min_area_fraction: float | None = None
    min_contrast: float | None = None
    min_foreground: float | None = None
    learned_outline: bool = True
    min_size: int = 20
    mirror_pad: int = 8
    diameter: float | str | None = "auto"
    objects: Literal["auto", "bright", "dark"] = "auto"
    batched: bool = True
    batch_points: int | None = None
    box_size: int | None = None
    suppression_radius: int | None = None
    tabu_radius: int | None = None
    batch_size: int = 256
    merge_overlap: float = 0.8
    min_unexplained: float = 0.5
    proposal_threshold: float = 0.1
    peak_radius: int | None = None

    def __post_init__(self) -> None:
        def positive(name: str, allow_none: bool = False, minimum: int = 1) -> None:
            value = getattr(self, name)
            if value is None and allow_none:
                return
            if isinstance(value, bool) or not isinstance(value, (int,)) or value < minimum:
                raise InputError(f"KaizenParams.{name} must be an integer >= {minimum}, got {value!r}")

        check_objects(self.objects, "KaizenParams")
        positive("patch_size", allow_none=True, minimum=8)
        if self.patch_size is not None and self.patch_size % 8:
            raise InputError(f"KaizenParams.patch_size must be a multiple of 8 (the VQ-VAE halves it 3 times), got {self.patch_size}")
        positive("points_per_iteration")
        positive("max_iterations")
        positive("max_passes")
        positive("min_size", minimum=0)
        positive("mirror_pad", minimum=0)
        positive("batch_points", allow_none=True)
        positive("box_size", allow_none=True)
        positive("suppression_radius", allow_none=True, minimum=0)
        positive("tabu_radius", allow_none=True, minimum=0)
        positive("batch_size")
        positive("peak_radius", allow_none=True, minimum=0)
        if not (isinstance(self.proposal_threshold, (int, float)) and float(self.proposal_threshold) >= 0.0):
            raise InputError(f"KaizenParams.proposal_threshold must be >= 0, got {self.proposal_threshold!r}")
        if not (isinstance(self.mask_threshold, (int, float)) and 0.0 <= float(self.mask_threshold) < 10.0):
            raise InputError(f"KaizenParams.mask_threshold must be a fraction of the image mean in [0, 10), got {self.mask_threshold!r}")
        if self.mask_rule not in ("cell", "image"):
            raise InputError(f"KaizenParams.mask_rule must be 'cell' or 'image', got {self.mask_rule!r}")
        if self.mask_fraction is not None and not (
            isinstance(self.mask_fraction, (int, float)) and 0.0 < float(self.mask_fraction) < 1.0
        ):
            raise InputError(f"KaizenParams.mask_fraction must be a fraction in (0, 1) or None, got {self.mask_fraction!r}")
        if not isinstance(self.learned_outline, bool):
            raise InputError(f"KaizenParams.learned_outline must be True or False, got {self.learned_outline!r}")
        if self.outline not in ("image", "model"):
            raise InputError(f"KaizenParams.outline must be 'image' or 'model', got {self.outline!r}")
        for name, hi in (("edge_level", 1.0), ("valley", 2.0), ("min_area_fraction", 1.0), ("min_contrast", 1.0),
                         ("min_foreground", 1.0)):
            v = getattr(self, name)
            zero_ok = name in ZERO_OFF_OUTLINES  # 0 turns a filter off
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))
                                  or not (0.0 < float(v) or (zero_ok and float(v) == 0.0)) or not float(v) < hi):
                interval = f"[0, {hi:g})" if zero_ok else f"(0, {hi:g})"
                raise InputError(f"KaizenParams.{name} must be a number in {interval} or None, got {v!r}")
        if not (isinstance(self.min_unexplained, (int, float)) and 0.0 <= float(self.min_unexplained) <= 1.0):
            raise InputError(f"KaizenParams.min_unexplained must be a fraction in [0, 1], got {self.min_unexplained!r}")
        if not (isinstance(self.merge_overlap, (int, float)) and float(self.merge_overlap) > 0.0):
            raise InputError(f"KaizenParams.merge_overlap must be a positive fraction (above 1 disables it), got {self.merge_overlap!r}")

    def cell_mask_fraction(self, metadata: dict | None) -> float | None:
        """The per-cell mask level to use (``None`` under the paper's ``'image'`` rule)."""
        if self.mask_rule == "image":
            return None
        if self.mask_fraction is not None:
            return float(self.mask_fraction)
        value = (metadata or {}).get("mask_fraction")
        try:
            value = float(value)
        except (TypeError, ValueError):
            return DEFAULT_MASK_FRACTION
        return value if 0.0 < value < 1.0 else DEFAULT_MASK_FRACTION

    def outline_constants(self, metadata: dict | None) -> dict[str, float] | None:
        """The ``'image'`` outline's constants, :data:`DEFAULT_OUTLINES`' keys (None: ``'model'``)."""
        if self.outline == "model":
            return None
        calibrated = (metadata or {}).get("outlines") or {}
        out = {}
        for name, default in DEFAULT_OUTLINES.items():
            value = getattr(self, name)
            if value is None:
                value = calibrated.get(name, default)
                try:
                    value = float(value)
                except (TypeError, ValueError):
                    value = default
                if not (math.isfinite(value) and (value > 0 or (name in ZERO_OFF_OUTLINES and value == 0))):
                    value = default
            out[name] = float(value)
        return out

    def windows(self, patch: int) -> tuple[int, int, int]:
        """``(box_size, suppression_radius, tabu_radius)`` for a model's patch size."""
        box = self.box_size or max(1, patch // 4)
        supp = self.suppression_radius if self.suppression_radius is not None else max(1, patch // 4)
        tabu = self.tabu_radius if self.tabu_radius is not None else max(1, patch // 8)
        return int(box), int(supp), int(tabu)
