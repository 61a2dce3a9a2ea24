"""Labels / measurements / ROI I/O: exact round trips, no clobbering, atomic writes."""

import os

import numpy as np
import pytest

from napari_kaizen.errors import InputError, OverwriteError
from napari_kaizen.io import (
    label_dtype,
    measurements_table,
    read_labels,
    read_measurements_csv,
    read_roi_zip,
    write_labels,
    write_measurements_csv,
    write_roi_zip,
)


@pytest.mark.parametrize("suffix", [".tif", ".png", ".npy"])
@pytest.mark.parametrize("max_label", [5, 300, 70000])
def test_labels_round_trip_exactly(tmp_path, suffix, max_label, small_field):
    labels = small_field.nucleus_labels.astype(np.int64)
    labels[labels == labels.max()] = max_label  # a gap in the ids, and a large id
    path = tmp_path / f"labels{suffix}"
    if suffix == ".png" and max_label > 65535:
        with pytest.raises(InputError, match="65535"):
            write_labels(path, labels)
        return
    write_labels(path, labels)
    back = read_labels(path)
    np.testing.assert_array_equal(back, labels)
    assert back.dtype == label_dtype(labels)
    assert oct(path.stat().st_mode & 0o777) != oct(0o600)


def test_dtype_by_label_count():
    assert label_dtype(np.array([0, 255])) == np.uint8
    assert label_dtype(np.array([0, 256])) == np.uint16
    assert label_dtype(np.array([0, 70000])) == np.uint32
    with pytest.raises(InputError, match="negative"):
        label_dtype(np.array([-1, 2]))
    with pytest.raises(InputError, match="whole numbers"):
        label_dtype(np.array([0.5]))


def test_writers_never_overwrite_unless_asked(tmp_path, small_field):
    path = tmp_path / "l.tif"
    path.write_bytes(b"the person's file")
    with pytest.raises(OverwriteError, match="already exists"):
        write_labels(path, small_field.nucleus_labels)
    assert path.read_bytes() == b"the person's file"
    write_labels(path, small_field.nucleus_labels, overwrite=True)
    np.testing.assert_array_equal(read_labels(path), small_field.nucleus_labels)
    with pytest.raises(OverwriteError):
        write_measurements_csv(path, small_field.nucleus_labels)


def test_failed_write_leaves_no_partial_file(tmp_path):
    with pytest.raises(InputError):
        write_labels(tmp_path / "x.png", np.zeros((2, 4, 4), np.uint8))  # PNG cannot hold a stack
    assert os.listdir(tmp_path) == []


def test_stacks_in_tiff(tmp_path):
    stack = np.zeros((3, 16, 16), np.uint16)
    stack[1, 2:5, 2:5] = 9
    write_labels(tmp_path / "s.tif", stack)
    np.testing.assert_array_equal(read_labels(tmp_path / "s.tif"), stack)


def test_bad_suffix(tmp_path):
    with pytest.raises(InputError, match=".tif"):
        write_labels(tmp_path / "x.jpg", np.zeros((4, 4), np.uint8))


def test_measurements_csv(tmp_path, small_field):
    lab, img = small_field.nucleus_labels, small_field.nuclei
    table = measurements_table(lab, img, extra={"score": {1: 0.25}})
    n = lab.max()
    assert len(table["label"]) == n
    assert table["area"].sum() == (lab > 0).sum()
    assert table["score"][0] == 0.25 and np.isnan(table["score"][1])
    path = write_measurements_csv(tmp_path / "m.csv", lab, img)
    back = read_measurements_csv(path)
    np.testing.assert_array_equal(back["label"], table["label"])
    np.testing.assert_allclose(back["intensity_mean"], table["intensity_mean"])
    with pytest.raises(InputError, match="differs"):
        measurements_table(lab, img[:10])


def test_roi_zip_round_trip_exactly(tmp_path, small_field):
    lab = small_field.nucleus_labels
    path = write_roi_zip(tmp_path / "rois.zip", lab)
    back = read_roi_zip(path, lab.shape)
    np.testing.assert_array_equal(back, lab)
    import roifile

    rois = roifile.roiread(path)
    assert len(rois) >= lab.max() and rois[0].name.startswith("label-")


def test_roi_zip_stack_and_errors(tmp_path):
    stack = np.zeros((2, 20, 20), np.uint8)
    stack[0, 2:6, 2:6] = 1
    stack[1, 10:15, 3:9] = 2
    back = read_roi_zip(write_roi_zip(tmp_path / "s.zip", stack), stack.shape)
    np.testing.assert_array_equal(back, stack)
    with pytest.raises(InputError, match="no labelled"):
        write_roi_zip(tmp_path / "e.zip", np.zeros((5, 5), np.uint8))
    with pytest.raises(InputError, match=".zip"):
        write_roi_zip(tmp_path / "e.roi", stack[0])
