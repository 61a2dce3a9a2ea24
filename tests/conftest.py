"""Shared fixtures. Tests run on the CPU with small images."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """One torch thread for the whole run.

    Engines run in a worker thread beside Qt's; with two OpenMP threads on a 2-core
    machine they spin-wait for each other and small convolutions ran up to 100x slower.
    """
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True, scope="session")
def _private_model_folder(tmp_path_factory):
    """Fine-tuned models of the tests go to a temporary folder, never the user's own."""
    import os

    folder = tmp_path_factory.mktemp("user-models")
    before = os.environ.get("NAPARI_KAIZEN_MODELS")
    os.environ["NAPARI_KAIZEN_MODELS"] = str(folder)
    yield folder
    if before is None:
        os.environ.pop("NAPARI_KAIZEN_MODELS", None)
    else:
        os.environ["NAPARI_KAIZEN_MODELS"] = before


@pytest.fixture(scope="session")
def small_field():
    """A 128x128 synthetic field (nuclei, membrane, label-free, labels)."""
    from napari_kaizen.data import synthesize

    return synthesize(seed=3, shape=(128, 128), density=0.3)


@pytest.fixture
def rng():
    return np.random.default_rng(0)
