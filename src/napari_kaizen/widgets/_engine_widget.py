"""The one dock widget every engine uses: choose, run, watch, correct, fine-tune.

:class:`EngineWidget` is built from an engine name (:func:`~napari_kaizen.engines.get_engine`):
the image chooser, the model list of the registry (learned engines), the device, a
parameter form made from the engine's ``Params`` dataclass, *Run* / *Cancel*, progress
and a status line, and the *Fine-tune on my corrections* panel for learned engines.
Subclasses only say what differs (class attributes: which maps become layers, which
parameters are shown first) and may add panels; the Kaizen widget adds its step
controls, iteration slider and review panel that way (:mod:`._kaizen_widget`).

Everything sits in collapsible sections inside a scroll area, so several engine
panels docked together still fit a 1080-pixel-high screen.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui import widgets as mw
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QFrame, QLabel, QScrollArea, QVBoxLayout, QWidget

if TYPE_CHECKING:  # napari injects the viewer by this annotation
    import napari.viewer

from ..engines import DEVICE_CHOICES, SegmentationSnapshot, get_engine
from ..errors import KaizenError, WeightsError
from . import _layers
from ._controls import LayerChoice, ProgressBar, Section, fit_width
from ._params_form import ParamsForm
from ._worker import SnapshotRunner


class EngineWidget(QWidget):
    """Run an engine on the chosen image layer (the plane shown, or every plane) and draw it.

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
    #: Snapshot map name -> (layer name suffix, ``add_image`` keyword arguments).
    MAPS: dict[str, tuple[str, dict[str, Any]]] = {}
    #: Params fields never shown in the form.
    HIDDEN_PARAMS: tuple[str, ...] = ()
    #: Params fields shown without "show all parameters" (None: all of them).
    MAIN_PARAMS: tuple[str, ...] | None = None
    #: Offer "every plane" (stacks segmented plane by plane).
    ALL_PLANES = True
    #: Default fine-tune steps and learning rate.
    FINETUNE_DEFAULTS: dict[str, Any] = {}
    #: Keyword arguments of the :class:`~._worker.SnapshotRunner` (redraw throttling).
    RUNNER_OPTIONS: dict[str, Any] = {}

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self.viewer = viewer
        self.engine = get_engine(self.ENGINE)
        self.owner = f"{self.engine.name}-widget"
        self.prefix = self.PREFIX
        self.runner = SnapshotRunner(self, **self.RUNNER_OPTIONS)
        self.result_layer = None
        self.target: _layers.PlaneTarget | None = None
        self._error: str | None = None

        # ------------------------------------------------------------ inputs
        self.image = LayerChoice(viewer, "image", label=self.IMAGE_LABEL, exclude_owner=self.owner)
        self.all_planes = mw.CheckBox(value=False, label="every plane", visible=self.ALL_PLANES,
                                      tooltip="Segment every plane of a z-stack / time series, not only the one shown")
        inputs: list[mw.Widget] = [self.image, self.all_planes]
        self.model = self.device = None
        if self.engine.learned:
            from ._models import ModelPicker

            self.model = ModelPicker(self.engine.name)
            self.device = mw.ComboBox(choices=list(DEVICE_CHOICES), value="auto", label="device",
                                      tooltip="auto: CUDA, then Apple MPS, then the CPU")
            inputs += [self.model, self.device]
        self.input_note = QLabel("")
        self.input_note.setWordWrap(True)
        self.input_note.setStyleSheet("color: #e0a030;")
        self.input_note.setVisible(False)

        # ------------------------------------------------------------ parameters
        self.form = ParamsForm(self.engine.Params, exclude=self.HIDDEN_PARAMS)
        self.show_all = mw.CheckBox(value=False, label="show all parameters", visible=self.MAIN_PARAMS is not None,
                                    tooltip="Also show the parameters most people leave at the paper's values")
        params_box = QWidget()
        params_layout = QVBoxLayout(params_box)
        params_layout.setContentsMargins(0, 0, 0, 0)
        params_layout.addWidget(self.form.native)
        params_layout.addWidget(self.show_all.native)

        # ------------------------------------------------------------ run
        self.run_button = mw.PushButton(text="Run", tooltip="Segment the chosen image with these settings")
        self.cancel_button = mw.PushButton(text="Cancel", enabled=False, tooltip="Stop the run")
        buttons = mw.Container(widgets=[self.run_button, self.cancel_button], layout="horizontal", labels=False)
        buttons.margins = (0, 0, 0, 0)
        self.progress = ProgressBar()
        self.progress.setRange(0, 1000)
        self.status = QLabel("")
        self.status.setWordWrap(True)

        # ------------------------------------------------------------ layout
        self.body = QWidget()
        self.body_layout = QVBoxLayout(self.body)
        self.body_layout.setContentsMargins(4, 4, 4, 4)
        self.body_layout.addWidget(mw.Container(widgets=inputs).native)
        self.body_layout.addWidget(self.input_note)
        self.params_section = Section("Parameters", params_box, expanded=True)
        self.body_layout.addWidget(self.params_section)
        self.body_layout.addWidget(buttons.native)
        for row in self._control_rows():
            self.body_layout.addWidget(row)
        self.body_layout.addWidget(self.progress)
        self.body_layout.addWidget(self.status)
        for section in self._sections():
            self.body_layout.addWidget(section)
        self.finetune = None
        if self.engine.learned:
            from ._finetune import FinetunePanel

            self.finetune = FinetunePanel(
                viewer, self.engine.name,
                base_model=lambda: self.model.value,
                on_finished=self._use_weights,
                device=lambda: self.device.value,
                **self.FINETUNE_DEFAULTS,
            )
            self.finetune_section = Section("Fine-tune on my corrections", self.finetune, expanded=False)
            self.body_layout.addWidget(self.finetune_section)
        self.body_layout.addStretch(1)
        # Before the scroll area measures the body (it keeps that first measure as its size hint).
        fit_width(self.body)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        scroll.setWidget(self.body)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(scroll)
        self.scroll = scroll

        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        self.show_all.changed.connect(self._show_params)
        self.image.changed.connect(self._check_input)
        if self.model is not None:
            self.model.combo.changed.connect(self._check_input)
        self.runner.finished.connect(self._finished)
        self.runner.errored.connect(self._errored)
        self._show_params()
        self._check_input()
        _layers.prewarm()

    # -------------------------------------------------------------- hooks for subclasses
    def _control_rows(self) -> list[QWidget]:
        """Extra rows of controls under Run / Cancel."""
        return []

    def _sections(self) -> list[QWidget]:
        """Extra panels under the status line (before fine-tuning)."""
        return []

    # -------------------------------------------------------------- models
    def add_model(self, path: Any, label: str | None = None, *, select: bool = True) -> None:
        """Add weights (a path or a loaded model) to the model list, once, and select them."""
        if self.model is None:
            raise RuntimeError(f"the {self.engine.name} engine takes no model")
        self.model.add_model(path, label, select=select)

    def _use_weights(self, path: Path, image_layer) -> None:
        """After a fine-tune: select the new weights and re-segment the image it was trained on."""
        self.model.refresh()
        self.add_model(path, f"{Path(path).stem} (fine-tuned)")
        if image_layer is not None and image_layer in self.viewer.layers:
            self.image.value = image_layer
        self._applying = Path(path)
        apply_to = self.finetune.apply_to.value
        if apply_to == "planes" and self.ALL_PLANES:
            self.all_planes.value = True
        elif apply_to == "all":
            others = [layer for layer in _layers.image_layers(self.viewer)
                      if layer is not image_layer and not _layers.owned_by(layer, self.owner)
                      and not any(_layers.owned_by(layer, o) for o in ("unet-widget", "fcn-widget", "kaizen-widget"))]
            self._queue = others
        if self.run() is None:
            self._applying = None
            self.finetune.set_status(f"Saved {path}; re-segmenting did not start: {self.status.text()}")

    def _report_finetune_applied(self, cancelled: bool) -> None:
        """When the re-segmentation a fine-tune started ends, say so in the fine-tune panel."""
        path, self._applying = getattr(self, "_applying", None), None
        if path is None or self.finetune is None:
            return
        if cancelled or self._error:
            self.finetune.set_status(f"Saved {path.name}; the re-segmentation with it was "
                                     f"{'cancelled' if cancelled else 'stopped by an error'}.")
        else:
            self.finetune.set_status(f"Saved {path.name} (now in every model list) and re-segmented with it.")

    def _check_input(self, event=None) -> None:
        """Warn (not refuse) when the image does not look like what the model expects."""
        note = None
        layer = self.image.layer
        if self.model is not None and layer is not None and not _layers.image_layer_problem(layer):
            entry = self.model.entry()
            if entry is not None:
                from ..engines.registry import input_warning

                # A subsample: the layer may be huge or lazy (dask / zarr), and this runs
                # on the GUI thread whenever the image or the model changes.
                data, _ = _layers.current_plane(self.viewer, layer, max_pixels=250_000)
                note = input_warning(entry, data) if np.ndim(data) == 2 else None
        self.input_note.setText(f"Note: {note}" if note else "")
        self.input_note.setVisible(bool(note))

    # -------------------------------------------------------------- actions
    def reset_choices(self, event=None) -> None:
        self.image.reset_choices()
        if self.finetune is not None:
            self.finetune.reset_choices()

    def set_status(self, text: str) -> None:
        self.status.setText(text)

    def _show_params(self, event=None) -> None:
        every = self.MAIN_PARAMS is None or bool(self.show_all.value)
        for name, widget in self.form._fields.items():
            widget.visible = every or name in self.MAIN_PARAMS

    def _update_buttons(self) -> None:
        self.run_button.enabled = not self.runner.running
        self.cancel_button.enabled = self.runner.running

    def run(self, event=None, *, start_paused: bool = False):
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
        except (ValueError, KaizenError) as exc:
            self.set_status(str(exc))
            return None
        try:
            spec = self.model.selected() if self.model is not None else None
        except WeightsError as exc:
            self.set_status(str(exc))
            return None
        device = self.device.value if self.device is not None else "cpu"
        if self._needs_tiles(layer):
            return self._run_tiled(layer, params, spec, device)
        load = self.model.loader(spec, device) if self.model is not None else (lambda: None)
        segment, scale_for = self.engine.segment, self.engine.scale_for
        stack = bool(self.all_planes.value) and _layers.spatial_ndim(layer) > 2
        if stack:
            # The whole stack is read in the worker (a lazy / dask stack is computed there).
            data, plane, mode = layer.data, (), "stack"
        else:
            data, plane = _layers.current_plane(self.viewer, layer)
            mode = "plane" if plane else "2d"
        wrap = self._wrap

        def make():
            # Runs in the worker thread: loading weights and checking the image too.
            model = load()
            if stack:
                from ..engines import segment_planes

                return wrap(segment_planes(segment, np.asarray(data), params, model=model, device=device,
                                           scale_for=scale_for))
            return wrap(segment(data, params, model=model, device=device))

        self._error = None
        self._begin(layer, mode, plane)
        self.progress.setValue(0)
        self.progress.setFormat("%p%")
        what = f" ({Path(str(spec)).stem})" if isinstance(spec, str) else ""
        where = f" (plane {plane})" if plane else (" (every plane)" if stack else "")
        self.set_status(f"Running {self.engine.title}{what} on '{layer.name}'{where}…")
        worker = self.runner.start(make, draw=self.draw, on_snapshot=self._received, start_paused=start_paused)
        self._update_buttons()
        return worker

    def cancel(self, event=None) -> None:
        self.runner.cancel()

    def _needs_tiles(self, layer) -> bool:
        """Whether ``layer`` is segmented tile by tile into a zarr-backed labels layer, never
        loaded whole: a multiscale layer, or a 2-D plane the command line would tile too
        (:func:`napari_kaizen.tiled.should_tile`, the one place that decides)."""
        from ..tiled import should_tile

        if getattr(layer, "multiscale", False):
            return True
        if np.ndim(layer.data) != 2 or getattr(layer, "rgb", False):
            return False
        return should_tile(np.shape(layer.data), lazy=not isinstance(layer.data, np.ndarray))

    def _run_tiled(self, layer, params, spec, device):
        """Segment a huge or lazy 2-D layer tile by tile; tiles appear as they finish."""
        from ._tiled_run import tiled_job

        try:
            make, draw_tile = tiled_job(self.viewer, layer, self.engine.name, params, spec, device,
                                        name=_layers.fresh_name(self.viewer, f"{self.prefix} cells"))
        except KaizenError as exc:
            self.set_status(str(exc))
            return None

        def draw(snap) -> None:
            self.show_progress(snap)
            self.set_status(snap.message)
            draw_tile(snap)

        self._error = None
        self._tiled = True
        self.target = None
        self.progress.setValue(0)
        self.progress.setFormat("%p%")
        self.set_status(f"Segmenting '{layer.name}' tile by tile ({self.engine.title})…")
        worker = self.runner.start(make, draw=draw)
        self._update_buttons()
        return worker

    def _wrap(self, snapshots):
        """What the worker iterates (Kaizen keeps every snapshot; others pass through)."""
        return snapshots

    def _begin(self, layer, mode: str, plane: tuple[int, ...]) -> None:
        """A run starts: choose where its labels go."""
        name = f"{self.prefix} cells"
        existing = self.viewer.layers[name] if name in self.viewer.layers else None
        base = None
        if (mode == "plane" and existing is not None and _layers.owned_by(existing, self.owner)
                and not _layers.is_edited(existing)):
            base = np.asarray(existing.data)  # keep the planes segmented before
        self.target = _layers.PlaneTarget(layer, mode, plane, base=base)

    def _received(self, snap) -> None:
        """Every snapshot, on the GUI thread, before any throttling (cheap work only)."""

    # -------------------------------------------------------------- drawing
    def show_progress(self, snap) -> None:
        """The progress bar; for a stack it also names the plane (30 planes: plane 1 is 0-3 %)."""
        self.progress.setValue(int(round(1000 * float(snap.progress))))
        plane = getattr(snap, "plane", None)
        layer = self.target.source if self.target is not None else None
        if plane is not None and self.target is not None and self.target.mode == "stack" and layer is not None:
            shape = np.shape(layer.data)[: len(plane)]
            k = int(np.ravel_multi_index(plane, shape)) + 1
            self.progress.setFormat(f"plane {k}/{int(np.prod(shape))} · %p%")
        else:
            self.progress.setFormat("%p%")

    def draw(self, snap) -> None:
        self.show_progress(snap)
        self.set_status(snap.message)
        if not isinstance(snap, SegmentationSnapshot):
            return
        maps = snap.maps or {}
        where = self.target.placement(2) if self.target is not None else {}
        for key, (suffix, style) in self.MAPS.items():
            if key in maps:
                _layers.set_image(self.viewer, f"{self.prefix} {suffix}", maps[key], owner=self.owner, **style, **where)
        if snap.labels is not None and (snap.done or snap.plane is not None):
            # Every-plane runs show each plane as soon as it is done.
            self._draw_labels(np.asarray(snap.labels), None if snap.done else snap.plane, final=snap.done)

    def _draw_labels(self, labels: np.ndarray, plane=None, *, final: bool = True) -> None:
        layer = self.result_layer
        if layer is not None and layer in self.viewer.layers and _layers.is_edited(layer):
            self.target.detach()
        data = self.target.place(labels, plane, final=final)
        self.result_layer = _layers.set_labels(
            self.viewer, f"{self.prefix} cells", data, owner=self.owner, **self.target.placement(data.ndim)
        )

    def _finished(self, cancelled: bool) -> None:
        self._tiled = False
        self._update_buttons()
        if cancelled:
            self.set_status("Cancelled.")
        self._next_in_queue(cancelled)

    def _next_in_queue(self, cancelled: bool) -> None:
        """After a run: the next image of an "apply to every open image", else report the fine-tune."""
        queue = getattr(self, "_queue", [])
        while queue and not cancelled and not self._error:
            layer = queue.pop(0)
            if layer in self.viewer.layers:
                self.image.value = layer
                if self.run() is not None:
                    return
        self._queue = []
        self._report_finetune_applied(cancelled)

    def _errored(self, message: str) -> None:
        # napari's own notification shows the error too; the status line keeps it in view.
        self._error = message
        self.set_status(f"Error: {message}")


#: Older name of :class:`EngineWidget`.
SegmentWidget = EngineWidget


class ClassicalWidget(EngineWidget):
    """The "Classical" dock widget (Otsu + distance transform + h-maxima + watershed)."""
