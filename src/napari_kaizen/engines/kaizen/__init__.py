"""Kaizen engine: a VQ-VAE that reconstructs the one cell at the centre of a patch,
applied iteratively where the internal image still differs from the input.

After Kaizen: Decomposing cellular images with VQ-VAE (PLOS ONE, 2024). The model is
in :mod:`.model`, training patches in :mod:`.dataset`, training in :mod:`.train`, the
decomposition loop in :mod:`.decompose` and what it yields in :mod:`.snapshots`.

Importing this package does not import torch (only :mod:`.model` does, on first use),
so building a parameter form stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

from .dataset import PatchSampler
from .decompose import decompose
from .inference import KaizenModel, load_model, segment
from .params import KaizenParams
from .snapshots import DecompositionSnapshot, DecompositionTrace
from .train import add_train_arguments, run_train, train

TITLE = "Kaizen (VQ-VAE decomposition)"
Params = KaizenParams
DEFAULT_MODEL = "bundled:kaizen_nuclei"

# Bound eagerly above, so that importing the submodules ``decompose`` or ``train``
# later cannot replace the functions of the same name in this namespace.
_LAZY = {
    "KaizenVQVAE": ".model",
    "VQVAEConfig": ".model",
}

__all__ = [
    "DEFAULT_MODEL",
    "TITLE",
    "DecompositionSnapshot",
    "DecompositionTrace",
    "KaizenModel",
    "KaizenParams",
    "KaizenVQVAE",
    "Params",
    "PatchSampler",
    "VQVAEConfig",
    "add_train_arguments",
    "decompose",
    "load_model",
    "run_train",
    "segment",
    "train",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
