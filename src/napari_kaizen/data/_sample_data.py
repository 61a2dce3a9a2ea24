"""napari sample data (File > Open Sample > napari-kaizen).

The nuclei sample is the bundled TIFF the README's command segments, so what a person
opens in napari is exactly what the command line runs on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SAMPLES_DIR = Path(__file__).resolve().parent / "samples"

#: The bundled sample micrograph and its ground truth.
NUCLEI_SAMPLE = SAMPLES_DIR / "nuclei.tif"
NUCLEI_SAMPLE_LABELS = SAMPLES_DIR / "nuclei_labels.tif"


def _ground_truth(labels: np.ndarray, name: str) -> tuple:
    return (labels, {"name": name, "visible": False, "opacity": 0.4}, "labels")


def sample_nuclei() -> list[tuple]:
    """The bundled synthetic DAPI-like nuclei image and its ground truth labels."""
    import tifffile

    image = tifffile.imread(NUCLEI_SAMPLE)
    labels = tifffile.imread(NUCLEI_SAMPLE_LABELS)
    return [
        (image, {"name": "Synthetic nuclei (DAPI-like)", "colormap": "gray"}, "image"),
        _ground_truth(labels, "Synthetic nuclei ground truth"),
    ]


def sample_dense_nuclei() -> list[tuple]:
    """A dense field of clustered, touching nuclei (hard for a threshold pipeline)."""
    from .synthetic import SynthParams, synthesize

    f = synthesize(
        SynthParams(shape=(384, 384), density=0.5, touching=0.9, clustering=0.85, dim_fraction=0.15), seed=2024
    )
    return [
        (f.nuclei, {"name": "Dense nuclei (DAPI-like)", "colormap": "gray"}, "image"),
        _ground_truth(f.nucleus_labels, "Dense nuclei ground truth"),
    ]


def sample_cells() -> list[tuple]:
    """Paired channels of one field: label-free, DAPI-like nuclei, CellMask-like membrane."""
    from .synthetic import SynthParams, synthesize

    f = synthesize(SynthParams(shape=(384, 384), density=0.25, confluence=0.7), seed=7)
    return [
        (f.label_free, {"name": "Label-free (phase-like)", "colormap": "gray"}, "image"),
        (f.nuclei, {"name": "Nuclei (DAPI-like)", "colormap": "blue", "blending": "additive", "visible": False}, "image"),
        (f.membrane, {"name": "Membrane (CellMask-like)", "colormap": "magenta", "blending": "additive",
                      "visible": False}, "image"),
        _ground_truth(f.nucleus_labels, "Nuclei ground truth"),
        _ground_truth(f.cell_labels, "Cells ground truth"),
    ]


def sample_stack() -> list[tuple]:
    """A 5-plane z-stack of nuclei (each nucleus an ellipsoid) with 3-D ground truth."""
    from .synthetic import SynthParams, synthesize_stack

    s = synthesize_stack(SynthParams(shape=(256, 256), density=0.3), seed=11, n_planes=5, axis="z")
    return [
        (s.nuclei, {"name": "Nuclei z-stack (DAPI-like)", "colormap": "gray"}, "image"),
        _ground_truth(s.nucleus_labels, "Nuclei z-stack ground truth"),
    ]
