"""QuPath GeoJSON (``.geojson``) from label images, and back.

Each labelled object becomes one GeoJSON ``Feature`` whose geometry is its outer outline
(a ``Polygon``; a ``MultiPolygon`` for an object in several pieces) in image pixel
coordinates ``[x, y]``, rings closed, traced as for the ImageJ ROI set
(:func:`~napari_kaizen.io.roi.object_outlines`). The properties are the ones QuPath reads
on import (*File > Import objects from file*, or dragging the file onto the image)::

    {"objectType": "detection", "classification": {"name": "Nucleus"},
     "name": "label-00007", "measurements": {"label": 7, ...}}

Holes are not written (outer outlines only, as in the ROI set).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .._files import atomic_write
from ..errors import InputError
from .roi import object_outlines

GEOJSON_SUFFIXES = (".geojson", ".json")
OBJECT_TYPES = ("detection", "annotation")


def labels_to_features(
    labels: np.ndarray,
    *,
    object_type: str = "detection",
    classification: str | None = "Nucleus",
    extra: Mapping[str, Mapping[int, float]] | None = None,
) -> list[dict]:
    """GeoJSON features (as QuPath reads them) for every labelled object of a 2-D image.

    Parameters
    ----------
    labels : ndarray of int, shape (H, W)
    object_type : {'detection', 'annotation'}
        QuPath's object type: detections are light-weight (many nuclei), annotations
        can be edited as regions.
    classification : str or None
        QuPath class name of every object (None: unclassified).
    extra : mapping of column name to {label: value}, optional
        Per-object numbers added to ``measurements`` (e.g. Kaizen's score).

    Returns
    -------
    list of dict
        One ``Feature`` per label, in label order.

    Examples
    --------
    >>> lab = np.zeros((6, 6), np.uint8); lab[1:3, 1:4] = 5
    >>> f = labels_to_features(lab)[0]
    >>> f["geometry"]["type"], f["properties"]["measurements"]["label"]
    ('Polygon', 5)
    >>> ring = f["geometry"]["coordinates"][0]; ring[0] == ring[-1]
    True
    """
    if object_type not in OBJECT_TYPES:
        raise InputError(f"object_type must be one of {', '.join(OBJECT_TYPES)}; got {object_type!r}")
    lab = np.asarray(labels)
    if lab.dtype.kind not in "biu":
        raise InputError(f"labels must be integers, got dtype {lab.dtype}")
    if lab.ndim != 2:
        raise InputError(f"GeoJSON holds the objects of one 2-D plane; got labels of shape {lab.shape}")
    rings: dict[int, list[list[list[float]]]] = {}
    for idx, _piece, _n, xy in object_outlines(lab):
        if len(xy) < 3:
            continue
        ring = [[round(float(x), 3), round(float(y), 3)] for x, y in xy]
        ring.append(list(ring[0]))  # GeoJSON rings are closed
        rings.setdefault(int(idx), []).append(ring)
    features = []
    for idx, pieces in rings.items():
        if len(pieces) == 1:
            geometry = {"type": "Polygon", "coordinates": [pieces[0]]}
        else:
            geometry = {"type": "MultiPolygon", "coordinates": [[ring] for ring in pieces]}
        measurements: dict[str, float] = {"label": idx}
        for column, values in (extra or {}).items():
            if idx in values and math.isfinite(float(values[idx])):
                measurements[str(column)] = float(values[idx])
        props: dict = {"objectType": object_type, "name": f"label-{idx:05d}", "measurements": measurements}
        if classification:
            props["classification"] = {"name": classification}
        # No feature "id": QuPath reads one as its object's UUID; without it QuPath makes one.
        features.append({"type": "Feature", "geometry": geometry, "properties": props})
    return features


def write_geojson(
    path: str | os.PathLike,
    labels: np.ndarray,
    *,
    object_type: str = "detection",
    classification: str | None = "Nucleus",
    extra: Mapping[str, Mapping[int, float]] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a QuPath GeoJSON ``FeatureCollection`` with one polygon per object.

    Parameters
    ----------
    path : path-like
        A ``.geojson`` (or ``.json``) file.
    labels : ndarray of int, shape (H, W)
    object_type, classification, extra
        As :func:`labels_to_features`.
    overwrite : bool
        Replace an existing file (atomic either way).

    Returns
    -------
    Path
    """
    dest = Path(path)
    if dest.suffix.lower() not in GEOJSON_SUFFIXES:
        raise InputError(f"a GeoJSON file ends in .geojson; got '{dest.name}'")
    features = labels_to_features(labels, object_type=object_type, classification=classification, extra=extra)
    if not features:
        raise InputError("there are no labelled objects to write as GeoJSON")
    text = json.dumps({"type": "FeatureCollection", "features": features}, separators=(",", ":"))
    return atomic_write(dest, lambda tmp: tmp.write_text(text + "\n"), overwrite=overwrite)


def _label_of(props: Mapping) -> int | None:
    meas = props.get("measurements")
    if isinstance(meas, list):  # QuPath <= 0.3: [{"name": ..., "value": ...}]
        meas = {m.get("name"): m.get("value") for m in meas if isinstance(m, Mapping)}
    if isinstance(meas, Mapping):
        for key in ("label", "Label"):
            value = meas.get(key)
            if isinstance(value, (int, float)) and float(value).is_integer() and value > 0:
                return int(value)
    name = props.get("name")
    if isinstance(name, str) and name.startswith("label-"):
        digits = name.split("-")[1]
        if digits.isdigit():
            return int(digits)
    return None


def _polygons(geometry: Mapping, name: str) -> list:
    kind = geometry.get("type") if isinstance(geometry, Mapping) else None
    if kind == "Polygon":
        return [geometry["coordinates"]]
    if kind == "MultiPolygon":
        return list(geometry["coordinates"])
    raise InputError(f"{name}: only Polygon and MultiPolygon features can be made into labels; got {kind!r}")


def read_geojson(path: str | os.PathLike, shape: tuple[int, int]) -> np.ndarray:
    """Rasterise a (QuPath) GeoJSON file into labels of ``shape`` (pixel-centre rule).

    Features whose ``measurements`` hold ``label`` (or named ``label-<id>``) keep that id;
    others are numbered in file order after the largest id. Interior rings (holes) are
    cut out. A bare list of features (an older QuPath export) is read too.

    Parameters
    ----------
    path : path-like
    shape : (H, W)

    Returns
    -------
    ndarray of uint32
    """
    from skimage.draw import polygon

    src = Path(path)
    try:
        doc = json.loads(src.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"cannot read {src.name} as GeoJSON: {exc}") from None
    if isinstance(doc, Mapping) and doc.get("type") == "FeatureCollection":
        features = doc.get("features", [])
    elif isinstance(doc, Mapping) and doc.get("type") == "Feature":
        features = [doc]
    elif isinstance(doc, list):
        features = doc
    else:
        raise InputError(f"{src.name} is not a GeoJSON FeatureCollection, Feature or list of features")
    if len(shape) != 2:
        raise InputError(f"GeoJSON objects are rasterised into a 2-D image; got shape {tuple(shape)}")
    ids = [_label_of(f.get("properties") or {}) if isinstance(f, Mapping) else None for f in features]
    next_id = 1 + max((i for i in ids if i is not None), default=0)
    out = np.zeros(shape, np.uint32)
    for feature, value in zip(features, ids):
        if not isinstance(feature, Mapping):
            raise InputError(f"{src.name}: a feature is not a JSON object")
        if value is None:
            value, next_id = next_id, next_id + 1
        for rings in _polygons(feature.get("geometry"), src.name):
            mask = np.zeros(shape, bool)
            for i, ring in enumerate(rings):
                xy = np.asarray(ring, dtype=np.float64)
                if xy.ndim != 2 or xy.shape[1] < 2:
                    raise InputError(f"{src.name}: a ring is not a list of [x, y] points")
                rr, cc = polygon(xy[:, 1] - 0.5, xy[:, 0] - 0.5, shape=shape)
                mask[rr, cc] = i == 0  # the first ring is the outline, the others holes
            out[mask] = value
    return out
