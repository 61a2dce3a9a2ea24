"""QuPath GeoJSON export (issue 26, E1): labels -> GeoJSON -> labels, the CLI's --geojson."""

import json

import numpy as np
import pytest

from napari_kaizen.cli import main
from napari_kaizen.data._sample_data import NUCLEI_SAMPLE
from napari_kaizen.errors import InputError, OverwriteError
from napari_kaizen.io import read_geojson, read_labels, write_geojson


def per_object_iou(truth: np.ndarray, back: np.ndarray) -> dict[int, float]:
    out = {}
    for i in np.unique(truth):
        if i == 0:
            continue
        a, b = truth == i, back == i
        out[int(i)] = float((a & b).sum() / (a | b).sum())
    return out


def test_geojson_round_trip_per_object(tmp_path, small_field):
    lab = small_field.nucleus_labels
    assert lab.max() > 5
    path = write_geojson(tmp_path / "cells.geojson", lab)
    doc = json.loads(path.read_text())
    assert doc["type"] == "FeatureCollection"
    ids = set(np.unique(lab)) - {0}
    assert len(doc["features"]) == len(ids)
    for f in doc["features"]:
        props = f["properties"]
        assert props["objectType"] == "detection"
        assert props["classification"] == {"name": "Nucleus"}
        assert props["measurements"]["label"] in ids
        assert f["geometry"]["type"] in ("Polygon", "MultiPolygon")
        rings = [f["geometry"]["coordinates"][0]] if f["geometry"]["type"] == "Polygon" else \
            [p[0] for p in f["geometry"]["coordinates"]]
        for ring in rings:
            assert ring[0] == ring[-1] and len(ring) >= 4  # closed rings
            xy = np.asarray(ring)
            # image pixel coordinates: x along columns, y along rows, within the image
            assert xy[:, 0].min() >= 0 and xy[:, 0].max() <= lab.shape[1]
            assert xy[:, 1].min() >= 0 and xy[:, 1].max() <= lab.shape[0]
    back = read_geojson(path, lab.shape)
    ious = per_object_iou(lab, back)
    assert set(ious) == ids
    assert min(ious.values()) > 0.9, {k: v for k, v in ious.items() if v <= 0.9}


def test_geojson_x_is_the_column():
    # A wide, flat object: its polygon spans more in x than in y.
    lab = np.zeros((20, 40), np.uint8)
    lab[2:5, 3:30] = 9
    from napari_kaizen.io import labels_to_features

    (f,) = labels_to_features(lab, object_type="annotation", classification=None)
    xy = np.asarray(f["geometry"]["coordinates"][0])
    assert np.ptp(xy[:, 0]) > 20 and np.ptp(xy[:, 1]) < 4
    assert f["properties"]["objectType"] == "annotation" and "classification" not in f["properties"]


def test_geojson_reads_qupath_forms(tmp_path):
    """A QuPath export without our label ids: a bare list, list-style measurements, a hole."""
    outer = [[2, 2], [18, 2], [18, 18], [2, 18], [2, 2]]
    hole = [[8, 8], [12, 8], [12, 12], [8, 12], [8, 8]]
    features = [
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [outer, hole]},
         "properties": {"objectType": "annotation"}},
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[22, 2], [28, 2], [28, 8], [22, 8],
                                                                              [22, 2]]]},
         "properties": {"measurements": [{"name": "label", "value": 7}]}},
    ]
    path = tmp_path / "q.geojson"
    path.write_text(json.dumps(features))
    lab = read_geojson(path, (30, 30))
    assert lab[5, 5] == 8 and lab[10, 10] == 0  # numbered after the largest id; hole cut out
    assert lab[5, 25] == 7


def test_geojson_errors(tmp_path, small_field):
    lab = small_field.nucleus_labels
    with pytest.raises(InputError, match="no labelled"):
        write_geojson(tmp_path / "e.geojson", np.zeros((8, 8), np.uint8))
    with pytest.raises(InputError, match="2-D"):
        write_geojson(tmp_path / "e.geojson", np.zeros((2, 8, 8), np.uint8))
    with pytest.raises(InputError, match=".geojson"):
        write_geojson(tmp_path / "e.zip", lab)
    write_geojson(tmp_path / "a.geojson", lab)
    with pytest.raises(OverwriteError):
        write_geojson(tmp_path / "a.geojson", lab)
    (tmp_path / "bad.geojson").write_text("{not json")
    with pytest.raises(InputError, match="cannot read"):
        read_geojson(tmp_path / "bad.geojson", lab.shape)


def test_cli_segment_geojson_follows_the_overwrite_rule(tmp_path, capsys):
    out = tmp_path / "labels.tif"
    assert main(["segment", str(NUCLEI_SAMPLE), "-o", str(out), "-q", "--geojson"]) == 0
    assert "labels.geojson" in capsys.readouterr().out
    labels = read_labels(out)
    back = read_geojson(tmp_path / "labels.geojson", labels.shape)
    ious = per_object_iou(labels, back)
    assert ious and min(ious.values()) > 0.9
    # Labels gone, GeoJSON still there: refused before any work, the GeoJSON kept.
    out.unlink()
    before = (tmp_path / "labels.geojson").read_bytes()
    assert main(["segment", str(NUCLEI_SAMPLE), "-o", str(out), "-q", "--geojson"]) == 1
    assert "labels.geojson already exists" in capsys.readouterr().err
    assert not out.exists() and (tmp_path / "labels.geojson").read_bytes() == before
    assert main(["segment", str(NUCLEI_SAMPLE), "-o", str(out), "-q", "--geojson", "--overwrite"]) == 0
    assert main(["segment", str(NUCLEI_SAMPLE), "-o", str(out), "-q", "--geojson", "--all-planes",
                 "--overwrite"]) == 1
    assert "--geojson" in capsys.readouterr().err
