"""Parameters of the GoogLeNet FCN engine."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ...errors import InputError
from .._common.polarity import check_objects

# The engine's constants live here, beside its Params, at the bottom of the package:
# the network (model.py), segment.py and the package's __init__ all read them, and
# none of those may import another just for a name.

#: The bundled nucleus model, used when no model is given.
DEFAULT_MODEL = "bundled:fcn_nuclei"
#: Bundled model for whole cells from a membrane (CellMask-like) channel.
CELLS_MODEL = "bundled:fcn_cells"
#: ``architecture`` of this engine's weights files.
ARCHITECTURE = "googlenet-fcn"
#: What the default model expects.
INPUT_KIND = "nuclei"


@dataclass(frozen=True)
class FCNParams:
    """Parameters of :func:`napari_kaizen.engines.fcn.segment` (and training defaults).

    Attributes
    ----------
    diameter : float or 'auto' or None
        Typical object diameter in the image, pixels. The image is rescaled so objects
        have the diameter the model was trained at (its metadata's
        ``object_diameter``). ``'auto'`` (default) estimates it from a nucleus image;
        a membrane model cannot read cell size from its stain and runs at the image's
        own scale then. ``None`` always runs at the image's own scale (the post's
        practice: train and segment at one magnification).
    objects : {'auto', 'bright', 'dark'}
        Nuclei brighter than their field (a fluorescence stain) or darker (bright-field,
        a stained section: the image is turned round first); ``'auto'`` tells by
        :func:`~napari_kaizen.engines._common.polarity.dark_objects` and says so.
    threshold : float or None
        Interior probability above which a pixel seeds a cell. The post found plain
        thresholding of the class probability a good classifier. ``None`` (default):
        the model's calibrated value (metadata ``thresholds.threshold``), else 0.5,
        the class boundary of a calibrated softmax.
    foreground : float or None
        Interior + edge probability above which a pixel belongs to some cell; seeds
        grow over these pixels (their edge band) so cells are not shrunk. ``None``
        (default): the model's calibrated value (metadata ``thresholds.foreground``,
        chosen on its training images), else 0.5.
    h : float or None
        Seed contrast of a model with a distance output (ours, not the post's): a
        maximum of the predicted distance map (1 at a nucleus' centre) seeds an object
        only if it stands this far above the saddle to a higher one. ``None``
        (default): the model's calibrated value (metadata ``thresholds.h``), else 0.1.
        Models without a distance output use ``threshold`` instead.
    min_size : float or None
        Objects smaller than this fraction of a typical object's area (from the
        model's ``object_diameter``) are removed. ``None`` (default): the model's
        calibrated value, else 0.1.
    min_contrast : float or None
        Objects whose brightness above the background is under this fraction of the
        field's typical object are removed (faint cytoplasm taken for a nucleus on a
        dark, sparse field). ``None`` (default): the model's calibrated value, else 0
        (off).
    window : int
        Side of the network's window (pixels, model grid). Larger images are cut into
        overlapping windows whose outputs are averaged (weighted to their centres);
        2048 keeps a 1024 x 1024 image of small nuclei, enlarged to the model's scale,
        in one pass (10 % faster than four windows of 1024 on the CPU; about 0.4 GB of
        activations). Not the stitching tile of huge images (``kaizen segment --tile``).
    overlap : int
        Pixels shared by neighbouring windows.
    batch_size : int
        Windows per forward pass.
    edge_weight : float
        Loss weight of edge pixels relative to others (training and fine-tuning only;
        the post's over-weighting of edge errors).
    flip_average : bool
        Average the probabilities of the image and its left-right mirror image
        (test-time augmentation, twice the network's time). Off by default since the
        image is brought to the model's own object size (2026-12-07): leave one source
        out, over seven sources, mean mAP 0.535 without it, 0.544 with it, against
        0.532 for the earlier default (the size band, with the mirror); see
        ``docs/real_nuclei.md``. ``True`` for the last 0.01 at twice the network's time.
    """

    diameter: float | str | None = "auto"
    objects: Literal["auto", "bright", "dark"] = "auto"
    threshold: float | None = None
    foreground: float | None = None
    h: float | None = None
    min_size: float | None = None
    min_contrast: float | None = None
    window: int = 2048
    overlap: int = 64
    batch_size: int = 1
    edge_weight: float = 5.0
    flip_average: bool = False

    def check(self) -> FCNParams:
        """Raise a one-line :class:`InputError` for out-of-range values; return self."""
        check_objects(self.objects, "FCNParams")
        for name in ("threshold", "foreground", "h"):
            v = getattr(self, name)
            if v is None:
                continue
            if not isinstance(v, (int, float)) or not 0.0 < float(v) < 1.0:
                raise InputError(f"{name} must be a probability strictly between 0 and 1, got {v!r}")
        if self.min_size is not None and (not isinstance(self.min_size, (int, float))
                                          or not 0.0 <= self.min_size < 10):
            raise InputError(f"min_size must be a fraction of a typical object's area in [0, 10), got {self.min_size!r}")
        if self.min_contrast is not None and (not isinstance(self.min_contrast, (int, float))
                                              or not 0.0 <= self.min_contrast < 1.0):
            raise InputError(f"min_contrast must be a fraction in [0, 1), got {self.min_contrast!r}")
        if not isinstance(self.window, int) or self.window < 32:
            raise InputError(f"window must be an integer of at least 32 pixels, got {self.window!r}")
        if not isinstance(self.overlap, int) or not 0 <= self.overlap < self.window // 2 + 1:
            raise InputError(f"overlap must be an integer in [0, window/2], got {self.overlap!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise InputError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        if not isinstance(self.edge_weight, (int, float)) or not float(self.edge_weight) > 0:
            raise InputError(f"edge_weight must be a positive number, got {self.edge_weight!r}")
        return self
