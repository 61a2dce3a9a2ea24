"""The npe2 manifest, sample data, reader / writer and the classical + export widgets
in a real napari viewer."""

import json
from pathlib import Path

import numpy as np
import pytest

from napari_kaizen import metrics
from napari_kaizen.data._sample_data import NUCLEI_SAMPLE_LABELS
from napari_kaizen.io import read_labels, write_labels

pytestmark = pytest.mark.gui


def test_npe2_validate_passes():
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    exe = shutil.which("npe2") or str(Path(sys.executable).with_name("npe2"))
    result = subprocess.run([exe, "validate", "napari-kaizen"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "valid" in result.stdout


def test_manifest_validates():
    import npe2

    pm = npe2.PluginManager.instance()
    pm.discover()
    manifest = pm.get_manifest("napari-kaizen")
    assert manifest.name == "napari-kaizen"
    keys = {s.key for s in manifest.contributions.sample_data}
    assert {"nuclei", "dense_nuclei", "cells", "stack"} <= keys
    # Every command a contribution points at exists and its python_name imports.
    ids = {c.id for c in manifest.contributions.commands}
    for w in manifest.contributions.widgets:
        assert w.command in ids
    for c in manifest.contributions.commands:
        module, attr = c.python_name.split(":")
        import importlib

        assert hasattr(importlib.import_module(module), attr), c.python_name


@pytest.mark.parametrize("key", ["nuclei", "dense_nuclei", "cells", "stack"])
def test_sample_data_opens(make_napari_viewer, key):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-kaizen", key)
    kinds = {layer.__class__.__name__ for layer in viewer.layers}
    assert "Image" in kinds and "Labels" in kinds


def test_reader_and_writer(make_napari_viewer, tmp_path, small_field):
    path = tmp_path / "result_labels.tif"
    write_labels(path, small_field.nucleus_labels)
    viewer = make_napari_viewer()
    layers = viewer.open(str(path), plugin="napari-kaizen")
    assert layers[0].__class__.__name__ == "Labels"
    np.testing.assert_array_equal(layers[0].data, small_field.nucleus_labels)
    out = tmp_path / "saved.npy"
    written = layers[0].save(str(out), plugin="napari-kaizen")
    assert written and np.array_equal(read_labels(out), small_field.nucleus_labels)
    with pytest.raises(Exception, match="already exists"):
        layers[0].save(str(out), plugin="napari-kaizen")


def test_classical_widget_runs_on_the_sample(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-kaizen", "nuclei")
    _, widget = viewer.window.add_plugin_dock_widget("napari-kaizen", "Classical")
    widget.image.value = viewer.layers["Synthetic nuclei (DAPI-like)"]
    worker = widget.run()
    assert worker is not None
    qtbot.waitUntil(lambda: not widget.runner.running, timeout=30_000)
    layer = viewer.layers["Classical cells"]
    truth = read_labels(NUCLEI_SAMPLE_LABELS)
    assert metrics.average_precision(truth, np.asarray(layer.data))[0.5] > 0.7
    assert widget.progress.value() == 1000


def test_classical_widget_never_overwrites_edited_labels(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-kaizen", "nuclei")
    _, widget = viewer.window.add_plugin_dock_widget("napari-kaizen", "Classical")
    widget.image.value = viewer.layers["Synthetic nuclei (DAPI-like)"]
    widget.run()
    qtbot.waitUntil(lambda: not widget.runner.running, timeout=30_000)
    layer = viewer.layers["Classical cells"]
    # A person paints a correction.
    layer.paint((5, 5), 999, refresh=True)
    edited = np.array(layer.data, copy=True)
    widget.run()
    qtbot.waitUntil(lambda: not widget.runner.running, timeout=30_000)
    assert "Classical cells [2]" in viewer.layers
    np.testing.assert_array_equal(viewer.layers["Classical cells"].data, edited)


def test_classical_widget_current_plane_and_every_plane(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-kaizen", "stack")
    _, widget = viewer.window.add_plugin_dock_widget("napari-kaizen", "Classical")
    image = viewer.layers["Nuclei z-stack (DAPI-like)"]
    widget.image.value = image
    viewer.dims.set_current_step(0, 2)
    widget.run()
    qtbot.waitUntil(lambda: not widget.runner.running, timeout=30_000)
    labels = viewer.layers["Classical cells"].data
    assert labels.shape == image.data.shape
    assert labels[2].max() > 0 and labels[0].max() == 0 and labels[4].max() == 0
    widget.all_planes.value = True
    widget.run()
    qtbot.waitUntil(lambda: not widget.runner.running, timeout=60_000)
    labels = viewer.layers["Classical cells"].data
    assert sum(labels[k].max() > 0 for k in range(5)) >= 4


def test_classical_widget_segments_a_grey_layer_stored_as_rgba(make_napari_viewer, qtbot):
    """napari opens a DSB2018-style PNG (grey in RGBA) as an RGB layer: its grey plane is used."""
    from napari_kaizen import run_to_end
    from napari_kaizen.data import synthesize
    from napari_kaizen.engines.classical import segment

    field = synthesize(seed=4, shape=(128, 128))
    grey = (255 * field.nuclei / field.nuclei.max()).astype(np.uint8)
    viewer = make_napari_viewer()
    layer = viewer.add_image(np.dstack([grey] * 3 + [np.full_like(grey, 255)]), name="dapi.png")
    assert layer.rgb
    _, widget = viewer.window.add_plugin_dock_widget("napari-kaizen", "Classical")
    widget.image.value = layer
    widget.all_planes.value = True  # one plane: a grey RGBA image is no stack
    widget.run()
    qtbot.waitUntil(lambda: not widget.runner.running, timeout=30_000)
    labels = viewer.layers["Classical cells"].data
    assert labels.shape == grey.shape and labels.max() > 3, widget.status.text()
    np.testing.assert_array_equal(labels, run_to_end(segment(grey)).labels)


def test_widget_bad_layers_give_a_message(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-kaizen", "Classical")
    assert widget.run() is None
    assert "No image layer" in widget.status.text()
    viewer.add_image(np.zeros((40, 40, 3), np.uint8) + np.arange(3, dtype=np.uint8), name="rgb", rgb=True)
    widget.image.reset_choices()
    widget.image.value = viewer.layers["rgb"]
    assert widget.run() is None and "RGB" in widget.status.text()
    viewer.add_image(np.full((40, 40), 5.0), name="flat")
    widget.image.reset_choices()
    widget.image.value = viewer.layers["flat"]
    widget.run()
    qtbot.waitUntil(lambda: not widget.runner.running, timeout=30_000)
    assert "constant" in widget.status.text() and "Error" in widget.status.text()
    widget.form._fields["diameter"].value = "huge"
    assert widget.run() is None and "diameter" in widget.status.text()


def test_export_widget_round_trips_an_edited_layer(make_napari_viewer, tmp_path, small_field):
    viewer = make_napari_viewer()
    viewer.add_image(small_field.nuclei, name="nuclei")
    layer = viewer.add_labels(small_field.nucleus_labels.copy(), name="cells")
    layer.paint((10, 10), 4242, refresh=True)  # an edit
    _, widget = viewer.window.add_plugin_dock_widget("napari-kaizen", "Export")
    widget.reset_choices()
    widget.labels.value = layer
    widget.folder.value = str(tmp_path)
    written = widget.export()
    names = sorted(p.name for p in written)
    assert names == ["cells.tif", "cells_measurements.csv", "cells_rois.zip"]
    np.testing.assert_array_equal(read_labels(tmp_path / "cells.tif"), layer.data)
    from napari_kaizen.io import read_measurements_csv, read_roi_zip

    table = read_measurements_csv(tmp_path / "cells_measurements.csv")
    assert 4242 in table["label"] and "intensity_mean" in table
    rois = read_roi_zip(tmp_path / "cells_rois.zip", layer.data.shape)
    assert set(np.unique(rois)) == set(np.unique(layer.data))
    # A second export refuses, and leaves the files as they were.
    before = (tmp_path / "cells.tif").read_bytes()
    layer.paint((50, 50), 7, refresh=True)
    assert widget.export() == []
    assert "already exist" in widget.status.text()
    assert (tmp_path / "cells.tif").read_bytes() == before
    widget.overwrite.value = True
    assert len(widget.export()) == 3
    np.testing.assert_array_equal(read_labels(tmp_path / "cells.tif"), layer.data)


def test_export_widget_writes_qupath_geojson(make_napari_viewer, qtbot, tmp_path, small_field):
    from qtpy.QtCore import Qt

    from napari_kaizen.io import read_geojson

    viewer = make_napari_viewer()
    layer = viewer.add_labels(small_field.nucleus_labels.copy(), name="cells")
    layer.paint((10, 10), 4242, refresh=True)  # an edit
    _, widget = viewer.window.add_plugin_dock_widget("napari-kaizen", "Export")
    widget.reset_choices()
    widget.labels.value = layer
    widget.folder.value = str(tmp_path)
    widget.write_csv.value = False
    widget.write_rois.value = False
    widget.write_geojson.value = True
    widget.geojson_type.value = "annotation"
    qtbot.mouseClick(widget.export_button.native, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: (tmp_path / "cells.geojson").exists(), timeout=10_000)
    assert "cells.geojson" in widget.status.text()
    doc = json.loads((tmp_path / "cells.geojson").read_text())
    assert {f["properties"]["objectType"] for f in doc["features"]} == {"annotation"}
    back = read_geojson(tmp_path / "cells.geojson", layer.data.shape)
    for i in set(np.unique(layer.data)) - {0}:
        a, b = layer.data == i, back == i
        assert (a & b).sum() / (a | b).sum() > 0.9, i
    # The GeoJSON is one of the targets the no-clobber rule checks.
    (tmp_path / "cells.tif").unlink()
    assert widget.export() == [] and "cells.geojson" in widget.status.text()
    assert not (tmp_path / "cells.tif").exists()


def test_image_layer_problem_names_what_is_wrong():
    """The one check all dock widgets run before starting (napari itself cannot hold a
    zero-size image layer, so a stand-in layer covers that case)."""
    from types import SimpleNamespace

    from napari_kaizen.widgets._layers import image_layer_problem

    assert image_layer_problem(None).startswith("No image layer: open an image")
    assert image_layer_problem(None, missing="do this") == "No image layer: do this."
    rgb = SimpleNamespace(name="photo", rgb=True, data=np.zeros((8, 8, 3), np.uint8) + np.arange(3, dtype=np.uint8))
    assert "'photo' is a colour RGB image" in image_layer_problem(rgb)
    grey = SimpleNamespace(name="dapi.png", rgb=True, data=np.zeros((8, 8, 4), np.uint8) + np.uint8(9))
    assert image_layer_problem(grey) is None  # a grey image stored as RGBA: its grey plane is used
    import tifffile

    section = tifffile.imread(Path(__file__).parent / "data" / "dsb2018" / "stained_section_image.tif")
    assert image_layer_problem(SimpleNamespace(name="he", rgb=True, data=section)) is None  # read as its luminance
    # A stained slide's pyramid is told apart on its coarsest level and read as its luminance too;
    # a colour pyramid on a dark field still needs its channel.
    pyramid = SimpleNamespace(name="slide", rgb=True, multiscale=True, data=[section, section[::2, ::2]])
    assert image_layer_problem(pyramid) is None
    stains = SimpleNamespace(name="stains", rgb=True, multiscale=True, data=[rgb.data, rgb.data[::2, ::2]])
    assert "'stains' is a colour RGB image on a dark field" in image_layer_problem(stains)

    class Huge:
        """A lazy 30000 x 32000 colour slide (the section repeated) that must not be read whole."""

        shape, dtype, ndim = (30_000, 32_000, 3), section.dtype, 3

        def __getitem__(self, key):
            rows, cols = (np.arange(n)[k] % m for n, k, m in zip(self.shape[:2], key, section.shape[:2]))
            return section[np.ix_(rows, cols)]

        def __array__(self, *args, **kwargs):
            raise AssertionError("the whole slide was read")

    assert image_layer_problem(SimpleNamespace(name="slide", rgb=True, data=Huge())) is None
    empty = SimpleNamespace(name="crop", rgb=False, data=np.zeros((0, 40)))
    assert image_layer_problem(empty) == "'crop' is empty (shape (0, 40)): choose an image with pixels."
    no_colour = SimpleNamespace(name="crop", rgb=True, data=np.zeros((0, 40, 3), np.uint8))
    assert image_layer_problem(no_colour) == "'crop' is empty (shape (0, 40, 3)): choose an image with pixels."
    assert image_layer_problem(SimpleNamespace(name="ok", rgb=False, data=np.ones((8, 8)))) is None
