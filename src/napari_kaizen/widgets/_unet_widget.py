"""The "U-Net (ISL)" dock widget: an :class:`~._engine_widget.EngineWidget` for the U-Net engine."""

from __future__ import annotations

from ._engine_widget import EngineWidget

FLUORESCENCE_LAYER = "U-Net fluorescence"
DISTANCE_LAYER = "U-Net distance"
CELLS_LAYER = "U-Net cells"


class UNetWidget(EngineWidget):
    """The "U-Net (ISL)" dock widget: segment a label-free image, fine-tune on a correction.

    *Run* shows "U-Net fluorescence" (the ISL prediction), "U-Net distance" (the
    predicted distance map, hidden at first) and "U-Net cells" (h-maxima seeds +
    watershed).
    """

    ENGINE = "unet"
    PREFIX = "U-Net"
    IMAGE_LABEL = "label-free image"
    MAPS = {
        "fluorescence": ("fluorescence", {"colormap": "cyan", "blending": "additive", "visible": True}),
        "distance": ("distance", {"colormap": "magma", "blending": "additive", "visible": False}),
    }
    HIDDEN_PARAMS = ("batch_size",)
    FINETUNE_DEFAULTS = {"steps": 100, "learning_rate": 5e-4}
