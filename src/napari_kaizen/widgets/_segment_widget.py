"""A dock widget that runs one engine on an image layer and draws its snapshots.

Used as is for the classical engine; the learned engines' widgets add their own
controls (models, live maps, fine-tuning) on the same pieces: :class:`ParamsForm`,
:class:`SnapshotRunner` and the layer helpers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui import widgets as mw
if TYPE_CHECKING:  # napari injects the viewer by this annotation
    import napari.viewer

from qtpy.QtWidgets import QLabel, QProgressBar, QVBoxLayout, QWidget

from ..engines import get_engine
from ..engines._common.device import DEVICE_CHOICES
from ..engines._common.snapshots import SegmentationSnapshot
from . import _layers
from ._params_form import ParamsForm
from ._worker import SnapshotRunner


class LayerChoice(mw.ComboBox):
    """A combo box of the viewer's layers of one kind, kept in sync with the layer list."""

    def __init__(self, viewer, kind: str = "image", label: str = "image", **kwargs: Any) -> None:
        self._viewer = viewer
        self._kind = kind
        super().__init__(label=label, choices=self._choices, nullable=False, **kwargs)
        for ev in (viewer.layers.events.inserted, viewer.layers.events.removed, viewer.layers.events.moved):
            ev.connect(lambda e=None: self.reset_choices())

    def _choices(self, widget=None):
        getter = _layers.image_layers if self._kind == "image" else _layers.labels_layers
        return [(layer.name, layer) for layer in getter(self._viewer)]

    @property
    def layer(self):
        """The chosen layer, or None."""
        try:
            return self.value
        except Exception:  # noqa: BLE001 - magicgui raises when there are no choices
            return None


class SegmentWidget(QWidget):
    """Run an engine on the chosen image layer: current plane, or every plane.

    Parameters
    ----------
    viewer : napari.Viewer
    engine : str
        Engine name (see :data:`napari_kaizen.engines.ENGINE_MODULES`).
    layer_prefix : str, optional
        Prefix of the output layer names; default the engine's title.
    """

    def __init__(self, viewer: napari.viewer.Viewer, engine: str = "classical", *, layer_prefix: str | None = None) -> None:
        super().__init__()
        self.viewer = viewer
        self.engine = get_engine(engine)
        self.owner = f"{engine}-widget"
        self.prefix = layer_prefix or engine.capitalize()
        self.runner = SnapshotRunner(self)

        self.image = LayerChoice(viewer, "image", label="image")
        self.all_planes = mw.CheckBox(value=False, label="every plane",
                                      tooltip="Segment every plane of a z-stack / time series, not only the one shown")
        self.device = mw.ComboBox(choices=list(DEVICE_CHOICES), value="auto", label="device")
        self.form = ParamsForm(self.engine.params_class)
        self.run_button = mw.PushButton(text="Run")
        self.cancel_button = mw.PushButton(text="Cancel", enabled=False)
        self.controls = mw.Container(widgets=[self.image, self.all_planes, self.device])
        buttons = mw.Container(widgets=[self.run_button, self.cancel_button], layout="horizontal", labels=False)

        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.addWidget(self.controls.native)
        layout.addWidget(self.form.native)
        layout.addWidget(buttons.native)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addStretch(1)

        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.runner.cancel)
        self.runner.finished.connect(self._finished)
        self.runner.errored.connect(self._errored)
        self.result_layer = None
        self._target: tuple[Any, tuple[int, ...] | None] = (None, None)

    # -------------------------------------------------------------- actions
    def reset_choices(self, event=None) -> None:
        self.image.reset_choices()

    def set_status(self, text: str) -> None:
        self.status.setText(text)

    def run(self, event=None):
        """Start segmenting; returns the worker, or None (with a message) if it cannot."""
        layer = self.image.layer
        if layer is None:
            self.set_status("No image layer: open an image (or File > Open Sample) and choose it above.")
            return None
        try:
            params = self.form.value()
        except ValueError as exc:
            self.set_status(str(exc))
            return None
        if getattr(layer, "rgb", False):
            self.set_status(f"'{layer.name}' is an RGB image: split its channels (right-click > Split RGB) and choose one.")
            return None
        device = self.device.value
        segment = self.engine.segment
        if self.all_planes.value and np.ndim(layer.data) > 2:
            data = np.asarray(layer.data)
            self._target = (layer, None)

            def make():
                from ..engines._common.planes import segment_planes

                return segment_planes(segment, data, params, model=None, device=device)
        else:
            data, index = _layers.current_plane(self.viewer, layer)
            self._target = (layer, index)

            def make():
                return segment(data, params, device=device)

        self.run_button.enabled = False
        self.cancel_button.enabled = True
        self.set_status(f"Running {self.engine.title} on '{layer.name}'…")
        return self.runner.start(make, draw=self.draw)

    # -------------------------------------------------------------- drawing
    def draw(self, snap) -> None:
        self.progress.setValue(int(1000 * float(snap.progress)))
        self.set_status(snap.message)
        if isinstance(snap, SegmentationSnapshot) and snap.done and snap.labels is not None:
            self._draw_labels(snap.labels)

    def _draw_labels(self, labels: np.ndarray) -> None:
        source, index = self._target
        name = f"{self.prefix} cells"
        if index:  # one plane of a stack: place it in a stack-shaped layer
            full_shape = np.shape(source.data)
            existing = self.viewer.layers[name] if name in self.viewer.layers else None
            if (
                existing is not None
                and _layers.owned_by(existing, self.owner)
                and not _layers.is_edited(existing)
                and existing.data.shape == full_shape
            ):
                data = np.array(existing.data, copy=True)
            else:
                data = np.zeros(full_shape, np.uint32)
            data[index] = labels
        else:
            data = labels
        self.result_layer = _layers.set_labels(
            self.viewer, name, data, owner=self.owner, scale=source.scale, translate=source.translate
        )

    def _finished(self, cancelled: bool) -> None:
        self.run_button.enabled = True
        self.cancel_button.enabled = False
        if cancelled:
            self.set_status("Cancelled.")

    def _errored(self, message: str) -> None:
        # napari's own notification shows the error too; the status line keeps it in view.
        self.set_status(f"Error: {message}")


class ClassicalWidget(SegmentWidget):
    """The "Classical" dock widget (Otsu + distance transform + h-maxima + watershed)."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(viewer, "classical", layer_prefix="Classical")
