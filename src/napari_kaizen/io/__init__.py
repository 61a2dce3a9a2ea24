"""Reading and writing: label images, micrographs, measurements CSV, ImageJ ROI sets,
QuPath GeoJSON.

Every writer is atomic and refuses to replace an existing file unless called with
``overwrite=True``.
"""

from .geojson import labels_to_features, read_geojson, write_geojson
from .images import IMAGE_SUFFIXES, find_images, read_image
from .labels import LABEL_SUFFIXES, label_dtype, read_labels, write_labels
from .measurements import measurements_table, read_measurements_csv, write_measurements_csv
from .roi import labels_to_rois, read_roi_zip, write_roi_zip

__all__ = [
    "IMAGE_SUFFIXES",
    "LABEL_SUFFIXES",
    "find_images",
    "label_dtype",
    "labels_to_features",
    "labels_to_rois",
    "measurements_table",
    "read_geojson",
    "read_image",
    "read_labels",
    "read_measurements_csv",
    "read_roi_zip",
    "write_geojson",
    "write_labels",
    "write_measurements_csv",
    "write_roi_zip",
]
