"""Kaizen engine: a VQ-VAE that reconstructs the one cell at the centre of a patch,
applied iteratively where the internal image still differs from the input.

After Kaizen: Decomposing cellular images with VQ-VAE (PLOS ONE, 2024). The network
and ``load_model`` are in :mod:`.model`, training patches in :mod:`.dataset`, training
and fine-tuning in :mod:`.training`, the decomposition loop in :mod:`.decompose`, what it
yields in :mod:`.snapshots`, outlines in :mod:`.outlines` and the entry point in
:mod:`.segment`.

Importing this package does not import torch (only :mod:`.model` does, on first use),
so building a parameter form stays light.
"""

from .. import lazy_exports
from .dataset import PatchSampler
from .decompose import decompose
from .params import ARCHITECTURE, DEFAULT_MODEL, INPUT_KIND, KaizenParams
from .scale_rule import scale_for
from .segment import segment
from .snapshots import DecompositionSnapshot, DecompositionTrace

TITLE = "Kaizen (VQ-VAE decomposition)"
Params = KaizenParams

__getattr__ = lazy_exports(__name__, {
    "KaizenModel": ".model", "KaizenVQVAE": ".model", "VQVAEConfig": ".model", "load_model": ".model",
    "finetune": ".training", "train": ".training",
    "add_train_arguments": ".cli", "run_train": ".cli",
})

__all__ = [
    "ARCHITECTURE", "DEFAULT_MODEL", "INPUT_KIND", "TITLE", "DecompositionSnapshot", "DecompositionTrace",
    "KaizenModel", "KaizenParams", "KaizenVQVAE", "Params", "PatchSampler", "VQVAEConfig", "add_train_arguments",
    "decompose", "finetune", "load_model", "run_train", "scale_for", "segment", "train",
]
