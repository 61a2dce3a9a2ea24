"""Classical engine: smoothing, Otsu, distance transform, h-maxima seeds, watershed.

The baseline every learned engine is measured against, and the one that needs no
weights (no ``DEFAULT_MODEL``, ``load_model`` or ``finetune``).
"""

from .params import ClassicalParams
from .scale_rule import scale_for
from .segment import segment

TITLE = "Classical (Otsu + watershed)"
Params = ClassicalParams
DEFAULT_MODEL = None
#: What the engine expects: a fluorescent channel (bright objects on a dark background).
INPUT_KIND = "nuclei"
#: A tiled run measures the Otsu threshold on sample crops of the whole image first (seconds).
CALIBRATE_ON_CROPS = True

__all__ = ["DEFAULT_MODEL", "INPUT_KIND", "TITLE", "ClassicalParams", "Params", "scale_for", "segment"]
