"""The "U-Net (ISL)" dock widget: segment a label-free image, fine-tune on a correction.

*Run* segments the chosen label-free image layer with the chosen weights and shows
three layers: "U-Net fluorescence" (the ISL prediction, DAPI-like for the nucleus
models), "U-Net distance" (the predicted per-object distance map) and "U-Net cells"
(instances from h-maxima seeds + watershed). A labels layer the person edited is never
overwritten: a new run then adds "U-Net cells [2]".

The *Fine-tune on a correction* panel (:class:`~._finetune.FinetunePanel`) trains the
current model further on the image and a corrected labels layer, writes the weights
beside a JSON of how they were made, adds them to the model list and re-segments.
"""

from __future__ import annotations

from ._finetune import engine_finetune
from ._segment_widget import SegmentWidget

FLUORESCENCE_LAYER = "U-Net fluorescence"
DISTANCE_LAYER = "U-Net distance"
CELLS_LAYER = "U-Net cells"

#: Bundled weights offered in the model list, with what they are.
BUNDLED_CHOICES = (
    ("nuclei: fine-tuned (bundled)", "bundled:unet_nuclei"),
    ("nuclei: ISL pretrained only (bundled)", "bundled:unet_isl_nuclei"),
    ("membrane: ISL pretrained only (bundled)", "bundled:unet_isl_membrane"),
)


class UNetWidget(SegmentWidget):
    """Dock widget of the ISL U-Net engine."""

    ENGINE = "unet"
    PREFIX = "U-Net"
    IMAGE_LABEL = "label-free image"
    MODELS = BUNDLED_CHOICES
    MAPS = {
        "fluorescence": ("fluorescence", {"colormap": "cyan", "blending": "additive", "visible": True}),
        "distance": ("distance", {"colormap": "magma", "blending": "additive", "visible": False}),
    }
    HIDDEN_PARAMS = ("batch_size",)
    FINETUNE = staticmethod(engine_finetune("unet"))
    FINETUNE_DEFAULTS = {"name_prefix": "unet_finetuned", "steps": 100, "learning_rate": 5e-4}
