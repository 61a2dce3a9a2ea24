"""Parameters of the ISL U-Net engine."""

from __future__ import annotations

from dataclasses import dataclass

# The engine's constants live here, beside its Params, at the bottom of the package:
# the network (model.py), segment.py and the package's __init__ all read them, and
# none of those may import another just for a name.

#: The bundled fine-tuned nucleus model (label-free -> nuclei instances).
DEFAULT_MODEL = "bundled:unet_nuclei"
#: The bundled ISL-pretrained models (label-free -> DAPI-like / CellMask-like).
PRETRAINED_NUCLEI = "bundled:unet_isl_nuclei"
PRETRAINED_MEMBRANE = "bundled:unet_isl_membrane"
#: ``architecture`` value of every U-Net weights file of this engine.
ARCHITECTURE = "unet_isl"
#: What the engine's models expect: the label-free channel.
INPUT_KIND = "label-free"


@dataclass(frozen=True)
class UNetParams:
    """Parameters of :func:`napari_kaizen.engines.unet.segment`.

    Attributes
    ----------
    diameter : float or 'auto' or None
        Typical object diameter in pixels in the input image. ``None`` runs the model
        at the image's own scale (right when the image has the magnification the model
        was trained at, ~16 px nuclei for the bundled models). ``'auto'`` runs once,
        measures the objects the model found, and runs again rescaled if they differ
        from the model's training diameter by more than 8 %. A number rescales
        directly.
    h : float
        Minimum contrast of a distance-map maximum to become a seed (the h of the
        h-maxima transform), on the per-object normalised distance map (0 background,
        1 at a centre). The authors' code applies an h-dome of 10 and h-maxima of 20 grey
        levels to 8-bit maps, an effective contrast of about 30/255 = 0.12; 0.12 is kept.
        Lower splits more, higher merges more.
    mask_threshold : float
        Probability above which a pixel belongs to the mask (the paper's sigmoid at 0.5).
    min_size : float
        Objects smaller than this fraction of a typical object's area (from the model's
        training diameter) are removed.
    smooth : float
        Gaussian sigma (pixels, model scale) applied to the predicted distance map before
        the h-maxima, against pixel noise.
    window : int
        Side of the square windows the network predicts a large image in (the paper
        trains on 512 x 512 crops); rounded up to a multiple of 16. Not the stitching
        tile of huge images (``kaizen segment --tile``, :mod:`napari_kaizen.tiled`).
    overlap : int
        Pixels shared by neighbouring windows; predictions are averaged there with a ramp.
    batch_size : int
        Windows per forward pass.
    """

    diameter: float | str | None = None
    h: float = 0.12
    mask_threshold: float = 0.5
    min_size: float = 0.1
    smooth: float = 1.0
    window: int = 512
    overlap: int = 64
    batch_size: int = 1

    def __post_init__(self) -> None:
        from ...errors import InputError

        if not 0.0 < float(self.h) < 1.0:
            raise InputError(f"h must be between 0 and 1 (a contrast on the normalised distance map), got {self.h}")
        if not 0.0 < float(self.mask_threshold) < 1.0:
            raise InputError(f"mask_threshold must be between 0 and 1, got {self.mask_threshold}")
        if float(self.min_size) < 0:
            raise InputError(f"min_size must be >= 0 (a fraction of a typical object's area), got {self.min_size}")
        if float(self.smooth) < 0:
            raise InputError(f"smooth must be >= 0 pixels, got {self.smooth}")
        if int(self.window) < 32:
            raise InputError(f"window must be at least 32 pixels, got {self.window}")
        if not 0 <= int(self.overlap) < int(self.window) // 2 + 1:
            raise InputError(f"overlap must be between 0 and half the window ({int(self.window) // 2}), got {self.overlap}")
        if int(self.batch_size) < 1:
            raise InputError(f"batch_size must be at least 1, got {self.batch_size}")
