"""GoogLeNet FCN engine (seed 003): an inception backbone whose classifier is replaced
by one transposed convolution back to full size, three classes (background, cell
interior, cell edge), edge errors over-weighted in training; instances by thresholding
the interior probability, connected components, and growing each back over its edge
band. Ours, not the post's: an optional distance-map output (the bundled nucleus
model has it) whose h-maxima seed a watershed, which splits touching nuclei.

The engine contract (see :mod:`napari_kaizen.engines`): ``Params``, ``segment``,
``load_model``, ``finetune``, ``DEFAULT_MODEL``, ``TITLE``; ``train`` and the network
are here too. Everything that needs torch is imported on first use.
"""

from .. import lazy_exports
from .params import ARCHITECTURE, CELLS_MODEL, DEFAULT_MODEL, INPUT_KIND, FCNParams
from .scale_rule import scale_for
from .segment import instances_from_distance, instances_from_probabilities, segment
from .targets import fcn_targets, pixel_weights

TITLE = "GoogLeNet FCN"
Params = FCNParams
#: A tiled run measures the whole image's thresholds on sample crops first (seconds).
CALIBRATE_ON_CROPS = True

__getattr__ = lazy_exports(__name__, {
    "CLASSES": ".model", "FCNModel": ".model", "GoogLeNetFCN": ".model", "load_model": ".model",
    "finetune": ".training", "train": ".training", "recalibrate": ".training",
    "add_train_arguments": ".cli", "run_train": ".cli",
})

__all__ = [
    "ARCHITECTURE", "CELLS_MODEL", "CLASSES", "DEFAULT_MODEL", "FCNModel", "FCNParams", "GoogLeNetFCN",
    "INPUT_KIND", "Params", "TITLE", "add_train_arguments", "fcn_targets", "finetune",
    "instances_from_distance", "instances_from_probabilities", "load_model", "pixel_weights", "recalibrate",
    "run_train", "scale_for", "segment", "train",
]
