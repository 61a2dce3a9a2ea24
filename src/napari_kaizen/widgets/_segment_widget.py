"""The dock widget that runs one engine on an image layer and draws its snapshots.

One class serves the classical engine as is and the learned engines through small
subclasses that say what differs: the model choices, which intermediate maps become
layers (and how they look), and the fine-tune function the shared
:class:`~._finetune.FinetunePanel` calls. The Kaizen widget, whose step-through needs
more, is built from the same pieces (:class:`ParamsForm`, :class:`SnapshotRunner`, the
layer helpers).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
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
    """Run an engine on the chosen image layer: the plane shown, or every plane.

    Subclasses set the class attributes below to add a model choice, map layers and a
    fine-tune panel; everything else (layer choice, parameters from the engine's params
    dataclass, device, run / cancel in a worker, progress, drawing, never overwriting
    an edited labels layer) is shared.

    Parameters
    ----------
    viewer : napari.Viewer
        Injected by napari (by this annotation) when the widget is docked.
    """

    #: Engine name (see :data:`napari_kaizen.engines.ENGINE_MODULES`).
    ENGINE = "classical"
    #: Prefix of output layer names ("<PREFIX> cells", "<PREFIX> <map>").
    PREFIX = "Classical"
    #: Label of the image chooser.
    IMAGE_LABEL = "image"
    #: ``(label, value)`` model choices; empty: no model chooser (the engine needs none).
    MODELS: tuple[tuple[str, str], ...] = ()
    #: Snapshot map name -> (layer name suffix, ``add_image`` keyword arguments).
    MAPS: dict[str, tuple[str, dict[str, Any]]] = {}
    #: Params fields not shown in the form.
    HIDDEN_PARAMS: tuple[str, ...] = ()
    #: Offer "every plane" (stacks segmented plane by plane).
    ALL_PLANES = True
    #: Fine-tune generator function (see :mod:`._finetune`), as a ``staticmethod``;
    #: None: no fine-tune panel.
    FINETUNE: Callable[..., Any] | None = None
    #: Default fine-tune steps and learning rate, and the prefix of new weight files.
    FINETUNE_DEFAULTS: dict[str, Any] = {}

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self.viewer = viewer
        self.engine = get_engine(self.ENGINE)
        self.owner = f"{self.engine.name}-widget"
        self.prefix = self.PREFIX
        self.runner = SnapshotRunner(self)
        self._source = None
        self._target: tuple[Any, tuple[int, ...] | None] = (None, None)
        self.result_layer = None

        self.image = LayerChoice(viewer, "image", label=self.IMAGE_LABEL)
        self.all_planes = mw.CheckBox(value=False, label="every plane", visible=self.ALL_PLANES,
                                      tooltip="Segment every plane of a z-stack / time series, not only the one shown")
        widgets: list[mw.Widget] = [self.image, self.all_planes]
        self.model = self.weights_file = None
        if self.MODELS:
            self._model_choices: list[tuple[str, str]] = list(self.MODELS)
            self.model = mw.ComboBox(choices=self._model_choices, value=self.MODELS[0][1], label="model",
                                     tooltip="Weights to segment with; fine-tuned weights are added here")
            self.weights_file = mw.FileEdit(mode="r", filter="*.safetensors", label="add weights", value="",
                                            tooltip="A .safetensors file (with its .json beside it) to add to the models")
            self.weights_file.changed.connect(self._add_weights_file)
            widgets += [self.model, self.weights_file]
        self.device = mw.ComboBox(choices=list(DEVICE_CHOICES), value="auto", label="device")
        widgets.append(self.device)
        self.form = ParamsForm(self.engine.params_class, exclude=self.HIDDEN_PARAMS)
        self.run_button = mw.PushButton(text="Run")
        self.cancel_button = mw.PushButton(text="Cancel", enabled=False)
        controls = mw.Container(widgets=widgets)
        buttons = mw.Container(widgets=[self.run_button, self.cancel_button], layout="horizontal", labels=False)

        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.addWidget(controls.native)
        layout.addWidget(self.form.native)
        layout.addWidget(buttons.native)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        self.finetune = None
        if self.FINETUNE is not None:
            from ._finetune import FinetunePanel

            self.finetune = FinetunePanel(
                viewer, self.FINETUNE,
                base_model=lambda: self.model.value if self.model is not None else None,
                on_finished=self._use_weights,
                device=lambda: self.device.value,
                **self.FINETUNE_DEFAULTS,
            )
            layout.addWidget(self.finetune)
        layout.addStretch(1)

        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.runner.cancel)
        self.runner.finished.connect(self._finished)
        self.runner.errored.connect(self._errored)

    # -------------------------------------------------------------- models
    def add_model(self, path: str | Path, label: str | None = None, *, select: bool = True) -> None:
        """Add a weights file to the model list (once) and optionally select it."""
        if self.model is None:
            raise RuntimeError(f"the {self.engine.name} engine takes no model")
        text = str(path)
        value = text if text.startswith("bundled:") else str(Path(text).with_suffix(".safetensors"))
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
        if self.finetune is not None:
            self.finetune.reset_choices()

    def set_status(self, text: str) -> None:
        self.status.setText(text)

    def run(self, event=None):
        """Start segmenting; returns the worker, or None (with a message) if it cannot."""
        if self.runner.running:
            self.set_status("A run is already in progress.")
            return None
        layer = self.image.layer
        problem = _layers.image_layer_problem(layer)
        if problem:
            self.set_status(problem)
            return None
        try:
            params = self.form.value()
        except ValueError as exc:
            self.set_status(str(exc))
            return None
        device = self.device.value
        model_spec = self.model.value if self.model is not None else None
        segment = self.engine.segment
        load = getattr(self.engine.module, "load_model", None) if model_spec is not None else None
        self._source = layer
        if self.all_planes.value and np.ndim(layer.data) > 2:
            data = np.asarray(layer.data)
            self._target = (layer, None)

            def make():
                from ..engines._common.planes import segment_planes

                # Load once, in the worker, for all planes.
                model = load(model_spec, device=device) if load is not None else None
                return segment_planes(segment, data, params, model=model, device=device)
        else:
            data, index = _layers.current_plane(self.viewer, layer)
            self._target = (layer, index)

            def make():
                return segment(data, params, model=model_spec, device=device)

        self.run_button.enabled = False
        self.cancel_button.enabled = True
        self.progress.setValue(0)
        what = f" ({Path(str(model_spec)).name})" if model_spec else ""
        self.set_status(f"Running {self.engine.title}{what} on '{layer.name}'…")
        return self.runner.start(make, draw=self.draw)

    # -------------------------------------------------------------- drawing
    def _placement(self) -> dict[str, Any]:
        """Scale / translate of the source layer's last two axes (maps are 2-D planes)."""
        src = self._source
        if src is None:
            return {}
        return {"scale": tuple(src.scale)[-2:], "translate": tuple(src.translate)[-2:]}

    def draw(self, snap) -> None:
        self.progress.setValue(int(1000 * float(snap.progress)))
        self.set_status(snap.message)
        if not isinstance(snap, SegmentationSnapshot):
            return
        maps = snap.maps or {}
        for key, (suffix, style) in self.MAPS.items():
            if key in maps:
                _layers.set_image(self.viewer, f"{self.prefix} {suffix}", maps[key], owner=self.owner,
                                  **style, **self._placement())
        if snap.done and snap.labels is not None:
            self._draw_labels(np.asarray(snap.labels))

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
