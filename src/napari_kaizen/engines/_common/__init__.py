"""What every engine shares: input normalisation, object scale, devices, tiling,
augmentation, losses, training loop, weights I/O and the snapshot dataclasses.

Nothing here imports Qt or napari; torch is imported only inside the functions that
need it, so numpy-only callers (the classical engine, the I/O) stay light.
"""

from ...errors import (
    DeviceError,
    EngineNotAvailableError,
    InputError,
    KaizenError,
    OverwriteError,
    WeightsError,
)
from .normalize import (
    DEFAULT_PERCENTILES,
    InputWarning,
    as_float,
    iter_planes,
    looks_rgb,
    normalize_percentile,
    prepare_image,
    to_plane,
)
from .scale import Rescale, estimate_diameter, median_diameter, rescale_for_model, resolve_diameter
from .snapshots import SegmentationSnapshot, Snapshot, TrainingSnapshot, relay, run_to_end

__all__ = [
    "DEFAULT_PERCENTILES",
    "DeviceError",
    "EngineNotAvailableError",
    "InputError",
    "InputWarning",
    "KaizenError",
    "OverwriteError",
    "Rescale",
    "SegmentationSnapshot",
    "Snapshot",
    "TrainingSnapshot",
    "WeightsError",
    "as_float",
    "estimate_diameter",
    "iter_planes",
    "looks_rgb",
    "median_diameter",
    "normalize_percentile",
    "prepare_image",
    "relay",
    "rescale_for_model",
    "resolve_diameter",
    "run_to_end",
    "to_plane",
]
