"""napari-kaizen: find every nucleus and cell in a micrograph.

The compute lives in :mod:`napari_kaizen.engines` (numpy, torch, scikit-image; no Qt),
the napari front end in :mod:`napari_kaizen.widgets`, and the command line in
:mod:`napari_kaizen.cli`. Importing this package imports neither torch nor napari.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
