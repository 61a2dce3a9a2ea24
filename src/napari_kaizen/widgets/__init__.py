"""napari dock widgets: read layers, start workers, draw what engines yield.

No arithmetic on images happens here beyond handing arrays over.
"""
