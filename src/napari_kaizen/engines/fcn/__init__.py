"""GoogLeNet FCN engine (seed 003): an inception backbone whose classifier is replaced
by one transposed convolution back to full size, three classes (background, cell
interior, cell edge), edge errors over-weighted in training; instances by thresholding
the interior probability, connected components, and growing each back over its edge
band.

Exports the engine protocol (``Params``, ``segment``, ``load_model``,
``DEFAULT_MODEL``, ``TITLE``) plus ``train`` and ``finetune`` generators.
"""

from .model import ARCHITECTURE, CLASSES, FCNModel, GoogLeNetFCN, load_model
from .params import FCNParams
from .segment import instances_from_probabilities, segment
from .targets import fcn_targets, pixel_weights
from .train import add_train_arguments, finetune, run_train, train

TITLE = "GoogLeNet FCN"
Params = FCNParams
DEFAULT_MODEL = "bundled:fcn_nuclei"
#: Bundled model for whole cells from a membrane (CellMask-like) channel.
CELLS_MODEL = "bundled:fcn_cells"

__all__ = [
    "ARCHITECTURE",
    "CELLS_MODEL",
    "CLASSES",
    "DEFAULT_MODEL",
    "FCNModel",
    "FCNParams",
    "GoogLeNetFCN",
    "Params",
    "TITLE",
    "add_train_arguments",
    "fcn_targets",
    "finetune",
    "instances_from_probabilities",
    "load_model",
    "pixel_weights",
    "run_train",
    "segment",
    "train",
]
