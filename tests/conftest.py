"""Shared fixtures. Tests run on the CPU with small images."""

from __future__ import annotations

import os

import numpy as np
import pytest

# Keep torch from oversubscribing the 2 CI cores when tests run beside Qt threads.
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def small_field():
    """A 128x128 synthetic field (nuclei, membrane, label-free, labels)."""
    from napari_kaizen.data import synthesize

    return synthesize(seed=3, shape=(128, 128), density=0.3)


@pytest.fixture
def rng():
    return np.random.default_rng(0)
