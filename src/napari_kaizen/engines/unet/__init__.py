"""ISL U-Net engine: In-Silico-Labelling pretraining, few-image fine-tuning, h-maxima watershed.

Seed 001 (Bonte et al., "Learning with minimal effort"): a U-Net is first trained to
predict a fluorescent channel (DAPI, CellMask) from a label-free one (bright field,
phase contrast, DIC), a pretext task that needs no annotation. Two conv layers are then
appended and the whole network is fine-tuned on one to ten annotated images to predict
a distance map and a mask; seeds are the h-maxima of the distance map, and a watershed
of the mask gives one object per seed. Training practice (augmentation, tiling with
averaged overlaps) follows seed 002.

Public names
------------
``Params`` (:class:`UNetParams`), ``segment``, ``load_model``, ``finetune``,
``pretrain``, ``DEFAULT_MODEL`` (the bundled fine-tuned nucleus model), ``TITLE``.
Everything that needs torch is imported on first use.
"""

from .. import lazy_exports
from .params import ARCHITECTURE, DEFAULT_MODEL, INPUT_KIND, PRETRAINED_MEMBRANE, PRETRAINED_NUCLEI, UNetParams
from .postprocess import instances
from .segment import scale_for, segment
from .targets import balance_lambda, distance_map, segmentation_targets

TITLE = "U-Net (ISL)"
Params = UNetParams

__getattr__ = lazy_exports(__name__, {
    "ISLUNet": ".model", "UNet": ".model", "UNetModel": ".model", "build_model": ".model", "load_model": ".model",
    "finetune": ".training", "pretrain": ".training",
    "add_train_arguments": ".cli", "run_train": ".cli",
})

__all__ = [
    "ARCHITECTURE", "DEFAULT_MODEL", "INPUT_KIND", "ISLUNet", "PRETRAINED_MEMBRANE", "PRETRAINED_NUCLEI",
    "Params", "TITLE", "UNet", "UNetModel", "UNetParams", "add_train_arguments", "balance_lambda", "build_model",
    "distance_map", "finetune", "instances", "load_model", "pretrain", "run_train", "scale_for", "segment",
    "segmentation_targets",
]
