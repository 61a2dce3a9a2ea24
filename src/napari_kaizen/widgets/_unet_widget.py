"""The "U-Net (ISL)" dock widget: segment a label-free image, fine-tune on a correction.

*Run* segments the chosen label-free image layer's current plane with the chosen
weights and shows three layers: "U-Net fluorescence" (the ISL prediction, DAPI-like for
the nucleus models), "U-Net distance" (the predicted per-object distance map) and
"U-Net cells" (the instances from h-maxima seeds + watershed). A labels layer the
person edited is never overwritten: a new run then adds "U-Net cells [2]".

The *Fine-tune on a correction* panel (:class:`~._finetune.FinetunePanel`) trains the
current model further on the image and a corrected labels layer, writes the weights
beside a JSON of how they were made, adds them to the model list and re-segments.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui import widgets as mw
from qtpy.QtWidgets import QLabel, QProgressBar, QVBoxLayout, QWidget

if TYPE_CHECKING:  # napari injects the viewer by this annotation
    import napari.viewer

from ..engines._common.device import DEVICE_CHOICES
from ..engines._common.snapshots import SegmentationSnapshot
from . import _layers
from ._finetune import FinetunePanel
from ._params_form import ParamsForm
from ._segment_widget import LayerChoice
from ._worker import SnapshotRunner

OWNER = "unet-widget"
FLUORESCENCE_LAYER = "U-Net fluorescence"
DISTANCE_LAYER = "U-Net distance"
CELLS_LAYER = "U-Net cells"

#: Bundled weights offered in the model list, with what they are.
BUNDLED_CHOICES = (
    ("nuclei: fine-tuned (bundled)", "bundled:unet_nuclei"),
    ("nuclei: ISL pretrained only (bundled)", "bundled:unet_isl_nuclei"),
    ("membrane: ISL pretrained only (bundled)", "bundled:unet_isl_membrane"),
)


def _unet_finetune(image, labels, *, model, steps, learning_rate, output, device, description):
    """The U-Net's fine-tune generator with the panel's call shape."""
    from ..engines.unet import finetune

    return finetune(image, labels, model=model, steps=steps, learning_rate=learning_rate, output=output,
                    device=device, description=description)


class UNetWidget(QWidget):
    """Dock widget of the ISL U-Net engine.

    Parameters
    ----------
    viewer : napari.Viewer
    """

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        from ..engines.unet import UNetParams

        self.viewer = viewer
        self.runner = SnapshotRunner(self)
        self.image = LayerChoice(viewer, "image", label="label-free image")
        self._model_choices: list[tuple[str, str]] = [(k, v) for k, v in BUNDLED_CHOICES]
        self.model = mw.ComboBox(choices=self._model_choices, value="bundled:unet_nuclei", label="model",
                                 tooltip="Weights to segment with; fine-tuned weights are added here")
        self.weights_file = mw.FileEdit(mode="r", filter="*.safetensors", label="add weights", value="",
                                        tooltip="A .safetensors file (with its .json beside it) to add to the models")
        self.device = mw.ComboBox(choices=list(DEVICE_CHOICES), value="auto", label="device")
        self.form = ParamsForm(UNetParams, exclude=("batch_size",))
        self.run_button = mw.PushButton(text="Run")
        self.cancel_button = mw.PushButton(text="Cancel", enabled=False)
        controls = mw.Container(widgets=[self.image, self.model, self.weights_file, self.device])
        buttons = mw.Container(widgets=[self.run_button, self.cancel_button], layout="horizontal", labels=False)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.finetune = FinetunePanel(
            viewer, _unet_finetune,
            base_model=lambda: self.model.value,
            on_finished=self._use_weights,
            device=lambda: self.device.value,
            name_prefix="unet_finetuned",
            steps=100,
            learning_rate=5e-4,
        )
        layout = QVBoxLayout(self)
        layout.addWidget(controls.native)
        layout.addWidget(self.form.native)
        layout.addWidget(buttons.native)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addWidget(self.finetune)
        layout.addStretch(1)

        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.runner.cancel)
        self.weights_file.changed.connect(self._add_weights_file)
        self.runner.finished.connect(self._finished)
        self.runner.errored.connect(self._errored)
        self._source = None
        self.cells_layer = None

    # -------------------------------------------------------------- models
    def add_model(self, path: str | Path, label: str | None = None, *, select: bool = True) -> None:
        """Add a weights file to the model list (once) and optionally select it."""
        value = str(Path(path).with_suffix(".safetensors")) if not str(path).startswith("bundled:") else str(path)
        if value not in [v for _, v in self._model_choices]:
            self._model_choices.append((label or Path(value).name, value))
            self.model.choices = self._model_choices
        if select:
            self.model.value = value

    def _add_weights_file(self, event=None) -> None:
        text = str(self.weights_file.value or "").strip()
        if text in ("", "."):
            return
        if not Path(text).is_file():
            self.set_status(f"Weights file {text} not found.")
            return
        self.add_model(text)

    def _use_weights(self, path: Path, image_layer) -> None:
        """After a fine-tune: select the new weights and re-segment the image it was trained on."""
        self.add_model(path, f"{Path(path).stem} (fine-tuned)")
        if image_layer is not None and image_layer in self.viewer.layers:
            self.image.value = image_layer
        self.run()

    # -------------------------------------------------------------- actions
    def reset_choices(self, event=None) -> None:
        self.image.reset_choices()
        self.finetune.reset_choices()

    def set_status(self, text: str) -> None:
        self.status.setText(text)

    def run(self, event=None):
        """Segment the chosen layer's current plane; returns the worker or None (with a message)."""
        from ..engines.unet import segment

        if self.runner.running:
            self.set_status("A run is already in progress.")
            return None
        layer = self.image.layer
        if layer is None:
            self.set_status("No image layer: open a label-free image (or File > Open Sample) and choose it above.")
            return None
        if getattr(layer, "rgb", False):
            self.set_status(f"'{layer.name}' is an RGB image: split its channels (right-click > Split RGB) and choose one.")
            return None
        try:
            params = self.form.value()
        except ValueError as exc:
            self.set_status(str(exc))
            return None
        data, index = _layers.current_plane(self.viewer, layer)
        model, device = self.model.value, self.device.value
        self._source = layer

        def make():
            return segment(data, params, model=model, device=device)

        self.run_button.enabled = False
        self.cancel_button.enabled = True
        self.progress.setValue(0)
        self.set_status(f"Running U-Net ({Path(str(model)).name}) on '{layer.name}'…")
        return self.runner.start(make, draw=self.draw)

    # -------------------------------------------------------------- drawing
    def _placement(self) -> dict[str, Any]:
        """Scale / translate of the last two axes of the source layer (maps are 2-D)."""
        src = self._source
        if src is None:
            return {}
        return {"scale": tuple(src.scale)[-2:], "translate": tuple(src.translate)[-2:]}

    def draw(self, snap) -> None:
        self.progress.setValue(int(1000 * float(snap.progress)))
        self.set_status(snap.message)
        if not isinstance(snap, SegmentationSnapshot):
            return
        where = self._placement()
        maps = snap.maps or {}
        if "fluorescence" in maps:
            _layers.set_image(self.viewer, FLUORESCENCE_LAYER, maps["fluorescence"], owner=OWNER,
                              colormap="cyan", blending="additive", visible=True, **where)
        if "distance" in maps:
            _layers.set_image(self.viewer, DISTANCE_LAYER, maps["distance"], owner=OWNER,
                              colormap="magma", blending="additive", visible=False, **where)
        if snap.done and snap.labels is not None:
            self.cells_layer = _layers.set_labels(self.viewer, CELLS_LAYER, np.asarray(snap.labels), owner=OWNER,
                                                  **where)

    def _finished(self, cancelled: bool) -> None:
        self.run_button.enabled = True
        self.cancel_button.enabled = False
        if cancelled:
            self.set_status("Cancelled.")

    def _errored(self, message: str) -> None:
        self.set_status(f"Error: {message}")
