"""napari-kaizen: find every nucleus and cell in a micrograph.

The Python API is three functions (:mod:`napari_kaizen.api`)::

    labels = napari_kaizen.segment(image, engine="kaizen", diameter=17)
    for snapshot in napari_kaizen.iter_segment(image, engine="unet"): ...   # live
    for snapshot in napari_kaizen.finetune(images, labels, engine="fcn", output="mine.safetensors"): ...

The compute lives in :mod:`napari_kaizen.engines` (numpy, torch, scikit-image; no Qt),
the napari front end in :mod:`napari_kaizen.widgets`, and the command line in
:mod:`napari_kaizen.cli`. Importing this package imports neither torch nor napari.
"""

from ._version import __version__
from .api import finetune, iter_segment, run_to_end, segment

__all__ = ["__version__", "finetune", "iter_segment", "run_to_end", "segment"]
