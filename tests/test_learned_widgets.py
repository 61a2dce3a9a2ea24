"""The learned engines' dock widgets ("U-Net (ISL)", "GoogLeNet FCN") and the shared
fine-tune panel, in a real napari viewer. Every test runs for both widgets: they are one
class (:class:`~napari_kaizen.widgets._engine_widget.EngineWidget`) configured twice."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch")

from napari_kaizen import metrics  # noqa: E402
from napari_kaizen.widgets import _fcn_widget, _unet_widget  # noqa: E402
from napari_kaizen.widgets._finetune import fresh_weights_path  # noqa: E402

pytestmark = pytest.mark.gui

#: What differs between the two widgets: class, input channel, map layers, weights architecture.
SPECS = {
    "unet": dict(cls=_unet_widget.UNetWidget, channel="label_free", maps=(_unet_widget.FLUORESCENCE_LAYER,
                 _unet_widget.DISTANCE_LAYER), cells=_unet_widget.CELLS_LAYER, architecture="unet_isl",
                 default="bundled:unet_nuclei", name="U-Net (ISL)", prefix="U-Net"),
    "fcn": dict(cls=_fcn_widget.FCNWidget, channel="nuclei", maps=(_fcn_widget.PROBABILITY_LAYER,
                _fcn_widget.EDGE_LAYER), cells=_fcn_widget.CELLS_LAYER, architecture="googlenet-fcn",
                default="bundled:fcn_nuclei", name="GoogLeNet FCN", prefix="FCN"),
}


@pytest.fixture(params=sorted(SPECS))
def spec(request):
    return SPECS[request.param]


@pytest.fixture(scope="module")
def field():
    from napari_kaizen.data import random_params, synthesize

    # Held-out style field (evaluation seeds >= 10 000), label-free phase contrast.
    p = random_params(np.random.default_rng(10_700), shape=(160, 160), hard=0.3, real_world=False)  # U-Net: 0.1.0 fields
    return synthesize(p, seed=10_700)


def _widget(make_napari_viewer, field, spec):
    viewer = make_napari_viewer()
    layer = viewer.add_image(getattr(field, spec["channel"]), name="input")
    widget = spec["cls"](viewer)
    viewer.window.add_dock_widget(widget, name=spec["name"])
    widget.image.value = layer
    return viewer, widget, layer


def _run(widget, qtbot):
    worker = widget.run()
    assert worker is not None, widget.status.text()
    qtbot.waitUntil(lambda: not widget.runner.running, timeout=60_000)


def test_run_shows_maps_and_cells(make_napari_viewer, qtbot, field, spec):
    viewer, widget, _ = _widget(make_napari_viewer, field, spec)
    assert widget.model.value == spec["default"]
    _run(widget, qtbot)
    for name in (*spec["maps"], spec["cells"]):
        assert name in viewer.layers, widget.status.text()
        assert viewer.layers[name].data.shape == field.label_free.shape
    cells = np.asarray(viewer.layers[spec["cells"]].data)
    assert viewer.layers[spec["cells"]].__class__.__name__ == "Labels"
    assert metrics.average_precision(field.nucleus_labels, cells)[0.5] > 0.5
    assert widget.progress.value() == 1000
    # A second run updates the same (unedited) layers instead of piling up new ones.
    _run(widget, qtbot)
    assert sum(layer.name.startswith(spec["prefix"]) for layer in viewer.layers) == 3



def test_run_layers_hold_the_last_snapshot_as_napari_would_show_it(make_napari_viewer, qtbot, field, spec):
    """Layers are built and shown in separate event-loop turns; once the run is over they
    are exactly what one ``add_image`` / ``add_labels`` per map would have made."""
    from napari.layers import Image

    viewer, widget, _ = _widget(make_napari_viewer, field, spec)
    _run(widget, qtbot)
    snap = widget.runner.last_snapshot
    assert snap.done
    for key, (suffix, style) in widget.MAPS.items():
        layer = viewer.layers[f"{spec['prefix']} {suffix}"]
        np.testing.assert_array_equal(layer.data, snap.maps[key])
        assert layer.visible == style["visible"]
        assert layer.colormap.name == style["colormap"] and layer.blending == style["blending"]
        plain = Image(snap.maps[key], **style)
        assert tuple(layer.contrast_limits) == tuple(plain.contrast_limits)
        assert tuple(layer.contrast_limits_range) == tuple(plain.contrast_limits_range)
    cells = viewer.layers[spec["cells"]]
    assert cells.visible
    np.testing.assert_array_equal(cells.data, snap.labels)
    assert cells.data.dtype == np.int32
    assert cells.metadata["napari_kaizen"] == {"owner": widget.owner, "edited": False}


def test_finetune_on_a_corrected_labels_layer(make_napari_viewer, qtbot, field, tmp_path, spec):
    viewer, widget, image_layer = _widget(make_napari_viewer, field, spec)
    _run(widget, qtbot)
    cells = viewer.layers[spec["cells"]]
    # The person corrects the result: here, the true labels, then a brush stroke (a real
    # edit, which marks the layer as edited).
    cells.data = field.nucleus_labels.astype(cells.data.dtype)
    cells.brush_size = 3
    cells.paint((2, 2), int(field.nucleus_labels.max()) + 1, refresh=True)
    corrected = np.array(cells.data, copy=True)
    # Weights of an earlier fine-tune exist under the chosen name and must survive.
    (tmp_path / "mine.safetensors").write_bytes(b"earlier weights")
    (tmp_path / "mine.json").write_text("{}")
    panel = widget.finetune
    panel.image.value = image_layer
    panel.labels.value = cells
    panel.steps.value = 4
    panel.output.value = str(tmp_path / "mine")
    worker = panel.start()
    assert worker is not None, panel.status.text()
    qtbot.waitUntil(lambda: not panel.runner.running, timeout=120_000)
    # Re-segmentation starts on its own once the weights are written.
    qtbot.waitUntil(lambda: not widget.runner.running and widget.model.value.endswith("mine_2.safetensors"),
                    timeout=60_000)
    qtbot.waitUntil(lambda: f"{spec['cells']} [2]" in viewer.layers, timeout=60_000)
    assert (tmp_path / "mine.safetensors").read_bytes() == b"earlier weights"
    assert (tmp_path / "mine.json").read_text() == "{}"
    assert (tmp_path / "mine_2.safetensors").exists()
    meta = json.loads((tmp_path / "mine_2.json").read_text())
    assert meta["architecture"] == spec["architecture"]
    assert "input" in json.dumps(meta["training"])  # the layers the data came from
    assert spec["default"] in json.dumps(meta)  # what it was fine-tuned from
    if spec is SPECS["fcn"]:
        # The panel's fine-tune rehearsed synthetic nuclei beside the correction (the
        # engine's default: one corrected frame must not overwrite the model).
        assert meta["training"]["rehearsal"]["share"] == 0.5 and meta["training"]["n_images"] == 1
    assert len(panel.history_loss) >= 1 and panel.progress.value() == 1000
    # The corrected layer is untouched; the new result went to a new layer.
    np.testing.assert_array_equal(np.asarray(viewer.layers[spec["cells"]].data), corrected)
    assert viewer.layers[f"{spec['cells']} [2]"].data.shape == field.label_free.shape
    assert fresh_weights_path(tmp_path / "mine") == tmp_path / "mine_3"


def test_finetune_can_be_cancelled(make_napari_viewer, qtbot, field, tmp_path, spec):
    viewer, widget, image_layer = _widget(make_napari_viewer, field, spec)
    labels = viewer.add_labels(field.nucleus_labels, name="my labels")
    panel = widget.finetune
    panel.image.value = image_layer
    panel.labels.value = labels
    panel.steps.value = 5000
    panel.output.value = str(tmp_path / "never")
    assert panel.start() is not None
    qtbot.waitUntil(lambda: len(panel.history_loss) >= 1, timeout=60_000)
    panel.cancel()
    qtbot.waitUntil(lambda: not panel.runner.running, timeout=60_000)
    assert "cancelled" in panel.status.text().lower()
    assert not list(tmp_path.glob("never*"))
    assert panel.start_button.enabled


def test_bad_layers_give_messages_not_tracebacks(make_napari_viewer, qtbot, field, spec):
    viewer = make_napari_viewer()
    widget = spec["cls"](viewer)
    viewer.window.add_dock_widget(widget, name=spec["name"])
    # No image at all.
    assert widget.run() is None and "No image layer" in widget.status.text()
    assert widget.finetune.start() is None and "No image layer" in widget.finetune.status.text()
    # A constant image: the engine's one-line message reaches the status line.
    flat = viewer.add_image(np.full((64, 64), 3.0, np.float32), name="flat")
    widget.image.value = flat
    _run(widget, qtbot)
    assert widget.status.text().startswith("Error: image is constant")
    # RGB.
    rgb = viewer.add_image(np.zeros((64, 64, 3), np.uint8) + np.arange(3, dtype=np.uint8), name="rgb", rgb=True)
    widget.image.value = rgb
    assert widget.run() is None and "RGB" in widget.status.text()
    # Fine-tune: no labels layer, then labels of another shape, then empty labels.
    image = viewer.add_image(getattr(field, spec["channel"]), name="input")
    panel = widget.finetune
    panel.image.value = image
    assert panel.start() is None and "No labels layer" in panel.status.text()
    wrong = viewer.add_labels(np.ones((50, 50), np.int32), name="wrong shape")
    panel.labels.value = wrong
    assert panel.start() is None and "shape" in panel.status.text()
    empty = viewer.add_labels(np.zeros(field.label_free.shape, np.int32), name="empty")
    panel.labels.value = empty
    assert panel.start() is None and "no objects" in panel.status.text()
    # Weights that do not exist.
    widget.image.value = image
    widget.add_model("/no/such/weights.safetensors")
    assert widget.run() is None and "not found" in widget.status.text()  # refused before any work
