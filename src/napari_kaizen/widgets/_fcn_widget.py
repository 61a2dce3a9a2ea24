"""The "GoogLeNet FCN" dock widget: an :class:`~._engine_widget.EngineWidget` for the FCN engine."""

from __future__ import annotations

from ._engine_widget import EngineWidget

PROBABILITY_LAYER = "FCN probability"
EDGE_LAYER = "FCN edge probability"
CELLS_LAYER = "FCN cells"


class FCNWidget(EngineWidget):
    """The "GoogLeNet FCN" dock widget: segment nuclei or whole cells, fine-tune on a correction.

    *Run* shows "FCN probability" (interior probability), "FCN edge probability" (hidden
    at first) and "FCN cells" (threshold + connected components grown over the edge band).
    """

    ENGINE = "fcn"
    PREFIX = "FCN"
    MAPS = {
        "probability": ("probability", {"colormap": "inferno", "blending": "additive", "visible": True}),
        "edge": ("edge probability", {"colormap": "green", "blending": "additive", "visible": False}),
    }
    HIDDEN_PARAMS = ("batch_size", "edge_weight")
    FINETUNE_DEFAULTS = {"steps": 100, "learning_rate": 2e-4}
