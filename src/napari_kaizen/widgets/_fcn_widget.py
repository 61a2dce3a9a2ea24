"""The "GoogLeNet FCN" dock widget: segment nuclei or whole cells, fine-tune on a correction.

*Run* shows "FCN probability" (interior probability), "FCN edge probability" (hidden at
first) and "FCN cells" (threshold + connected components grown back over the edge band).
Fine-tuning on a corrected labels layer uses the same panel as the U-Net widget.
"""

from __future__ import annotations

from ._finetune import engine_finetune
from ._segment_widget import SegmentWidget

PROBABILITY_LAYER = "FCN probability"
EDGE_LAYER = "FCN edge probability"
CELLS_LAYER = "FCN cells"

#: Bundled weights offered in the model list.
BUNDLED_CHOICES = (
    ("nuclei, DAPI-like (bundled)", "bundled:fcn_nuclei"),
    ("whole cells, membrane stain (bundled)", "bundled:fcn_cells"),
)


class FCNWidget(SegmentWidget):
    """Dock widget of the GoogLeNet FCN engine."""

    ENGINE = "fcn"
    PREFIX = "FCN"
    MODELS = BUNDLED_CHOICES
    MAPS = {
        "probability": ("probability", {"colormap": "inferno", "blending": "additive", "visible": True}),
        "edge": ("edge probability", {"colormap": "green", "blending": "additive", "visible": False}),
    }
    HIDDEN_PARAMS = ("batch_size", "edge_weight")
    FINETUNE = staticmethod(engine_finetune("fcn"))
    FINETUNE_DEFAULTS = {"name_prefix": "fcn_finetuned", "steps": 100, "learning_rate": 2e-4}
