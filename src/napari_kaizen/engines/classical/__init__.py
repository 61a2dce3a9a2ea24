"""Classical engine: smoothing, Otsu, distance transform, h-maxima seeds, watershed.

The baseline every learned engine is measured against, and the one that needs no
weights.
"""

from .params import ClassicalParams
from .segment import segment

TITLE = "Classical (Otsu + watershed)"
Params = ClassicalParams
DEFAULT_MODEL = None

__all__ = ["DEFAULT_MODEL", "TITLE", "ClassicalParams", "Params", "segment"]
