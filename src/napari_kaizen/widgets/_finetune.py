"""Fine-tune on a correction: the panel every learned engine's widget embeds.

A person segments an image, corrects the labels layer by hand, and presses
*Fine-tune*: the model is trained a little further on that image and its corrected
labels in a worker thread (live loss plot, progress bar, *Cancel*), the new weights are
written next to a JSON of how they were made (never over an existing file), and the
host widget re-segments with them.

The panel drives any learned engine through its ``finetune`` generator (the engine
contract, :mod:`napari_kaizen.engines`): ``finetune(images, labels, *, model, steps,
learning_rate, output, device, description)``. New weights go to the user model folder
(:func:`~napari_kaizen.engines.registry.user_model_dir`) under a name no file has yet,
and every widget's model list is refreshed (:func:`~._models.models_changed`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from magicgui import widgets as mw
from qtpy.QtWidgets import QGroupBox, QLabel, QVBoxLayout, QWidget

from . import _layers
from ._controls import ProgressBar
from ._worker import SnapshotRunner


def weights_exist(stem: Path) -> bool:
    """Whether either file of a weights pair (``.safetensors`` / ``.json``) exists."""
    return stem.with_suffix(".safetensors").exists() or stem.with_suffix(".json").exists()


def fresh_weights_path(path: str | Path) -> Path:
    """``path`` (suffix dropped) if neither weights file exists there, else ``path_2``, ``path_3``, ...

    Never returns a stem whose ``.safetensors`` or ``.json`` exists, so a new fine-tune
    cannot replace earlier weights.
    """
    p = Path(path).expanduser()
    stem = p.with_suffix("") if p.suffix in (".safetensors", ".json") else p
    if not weights_exist(stem):
        return stem
    k = 2
    while weights_exist(stem.with_name(f"{stem.name}_{k}")):
        k += 1
    return stem.with_name(f"{stem.name}_{k}")


class LossPlot(QLabel):
    """Fallback loss display when matplotlib is not installed: the latest loss as text."""

    def __init__(self) -> None:
        super().__init__("")

    def set_history(self, steps: list[int], losses: list[float]) -> None:
        self.setText(f"loss {losses[-1]:.4g} at step {steps[-1]}" if losses else "")


class LazyLossPlot(QWidget):
    """The loss plot, made when the first loss arrives.

    A matplotlib canvas redraws its whole figure (tight layout included: 0.3-0.7 s on
    a loaded 2-core machine) on every resize; made at docking, it redrew whenever a
    segmentation run's status line re-wrapped the panel, stalling the window in runs
    that never fine-tune. Until fine-tuning starts this is an empty widget.
    """

    def __init__(self) -> None:
        super().__init__()
        self._layout = QVBoxLayout(self)
        self._layout.setContentsMargins(0, 0, 0, 0)
        self.canvas = None

    def set_history(self, steps: list[int], losses: list[float]) -> None:
        if self.canvas is None:
            if not losses:
                return
            self.canvas = _make_loss_plot()
            self._layout.addWidget(self.canvas)
        self.canvas.set_history(steps, losses)


def _make_loss_plot():
    """A small matplotlib canvas with one line (loss vs step), or a text fallback."""
    try:
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure
    except ImportError:  # pragma: no cover - matplotlib is in the test environment
        return LossPlot()

    class _Canvas(FigureCanvasQTAgg):
        def __init__(self) -> None:
            fig = Figure(figsize=(3.2, 1.8), dpi=80, tight_layout=True)
            super().__init__(fig)
            self.ax = fig.add_subplot(111)
            self.ax.set_xlabel("step", fontsize=8)
            self.ax.set_ylabel("loss", fontsize=8)
            self.ax.tick_params(labelsize=7)
            (self.line,) = self.ax.plot([], [], lw=1.2, color="#d95f02")
            self.setMinimumHeight(120)

        def set_history(self, steps: list[int], losses: list[float]) -> None:
            good = [(s, v) for s, v in zip(steps, losses) if math.isfinite(v)]
            if not good:
                self.line.set_data([], [])
            else:
                xs, ys = zip(*good)
                self.line.set_data(xs, ys)
                self.ax.set_xlim(0, max(xs) * 1.05 + 1)
                lo, hi = min(ys), max(ys)
                pad = 0.05 * (hi - lo) or 0.05 * abs(hi) or 1.0
                self.ax.set_ylim(lo - pad, hi + pad)
            self.draw_idle()

    return _Canvas()


class FinetunePanel(QGroupBox):
    """Choose an image and a corrected labels layer, fine-tune in a worker, save, re-segment.

    Parameters
    ----------
    viewer : napari.Viewer
    engine : str
        The learned engine whose ``finetune`` runs.
    base_model : callable
        ``base_model() -> model`` to start from, read when *Fine-tune* is pressed.
    on_finished : callable, optional
        ``on_finished(weights_path, image_layer)`` after the weights were written.
    device : callable or str
        Device name, or a callable returning it (e.g. the host widget's device box).
    name_prefix : str
        File name of the new weights in the user model folder (``prefix``, ``prefix_2``,
        ... never overwritten); default ``'<engine>_finetuned'``.
    steps, learning_rate : int, float
        Defaults shown in the panel.
    title : str
        Group box title.
    """

    def __init__(
        self,
        viewer,
        engine: str,
        *,
        base_model: Callable[[], Any],
        on_finished: Callable[[Path, Any], None] | None = None,
        device: Callable[[], str] | str = "auto",
        name_prefix: str | None = None,
        steps: int = 100,
        learning_rate: float = 5e-4,
        title: str = "Fine-tune on a correction",
    ) -> None:
        super().__init__(title)
        from ..engines import get_engine
        from ._controls import LayerChoice

        self.viewer = viewer
        self.engine = get_engine(engine)
        self.base_model = base_model
        self.on_finished = on_finished
        self._device = device
        self.name_prefix = name_prefix or f"{engine}_finetuned"
        self.runner = SnapshotRunner(self, min_interval_ms=150)

        self.image = LayerChoice(viewer, "image", label="image")
        self.labels = LayerChoice(viewer, "labels", label="corrected labels")
        self.steps = mw.SpinBox(value=int(steps), min=1, max=100_000, label="steps",
                                tooltip="Optimiser steps (each a batch of augmented crops of this image)")
        self.learning_rate = mw.FloatSpinBox(value=float(learning_rate), min=1e-6, max=0.1, step=1e-4,
                                             label="learning rate", tooltip="Peak learning rate (Adam)")
        self.learning_rate.native.setDecimals(6)
        self.output = mw.FileEdit(mode="w", label="save as", value="",
                                  tooltip="Weights file to write (.safetensors + .json); empty: the user model "
                                  "folder, where every widget lists it. An existing name gets _2, _3, ...")
        self.region = mw.ComboBox(
            label="checked", choices=self._region_choices, value="all",
            tooltip="Where the labels are complete: only there the model learns. 'The cells I changed' "
                    "takes every cell you painted, erased or filled, plus a margin; a shapes layer marks "
                    "a corrected area")
        self.apply_to = mw.ComboBox(
            label="then apply to", value="image",
            choices=[("this image", "image"), ("every plane / frame of it", "planes"),
                     ("every open image", "all")],
            tooltip="What to re-segment with the fine-tuned model when it is saved")
        for ev in (viewer.layers.events.inserted, viewer.layers.events.removed):
            ev.connect(lambda e=None: self.region.reset_choices())
        self.start_button = mw.PushButton(text="Fine-tune")
        self.cancel_button = mw.PushButton(text="Cancel", enabled=False)
        form = mw.Container(widgets=[self.image, self.labels, self.region, self.steps, self.learning_rate,
                                     self.output, self.apply_to])
        buttons = mw.Container(widgets=[self.start_button, self.cancel_button], layout="horizontal", labels=False)
        self.progress = ProgressBar()
        self.progress.setRange(0, 1000)
        self.plot = LazyLossPlot()
        self.status = QLabel("")
        self.status.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.addWidget(form.native)
        layout.addWidget(buttons.native)
        layout.addWidget(self.progress)
        layout.addWidget(self.plot)
        layout.addWidget(self.status)

        self.start_button.changed.connect(self.start)
        self.cancel_button.changed.connect(self.cancel)
        self.runner.finished.connect(self._finished)
        self.runner.errored.connect(self._errored)
        self.history_steps: list[int] = []
        self.history_loss: list[float] = []
        self.last_weights: Path | None = None
        self._image_layer = None
        self._output: Path | None = None

    # -------------------------------------------------------------- helpers
    def device(self) -> str:
        return self._device() if callable(self._device) else str(self._device)

    def set_status(self, text: str) -> None:
        self.status.setText(text)

    def reset_choices(self, event=None) -> None:
        self.image.reset_choices()
        self.labels.reset_choices()
        self.region.reset_choices()

    def _region_choices(self, widget=None):
        return [("the whole image", "all"), ("the cells I changed (+ margin)", "changed"),
                *[(f"inside shapes '{layer.name}'", layer) for layer in _layers.shapes_layers(self.viewer)]]

    def _region(self, image_layer, labels_layer, shape, plane):
        """The checked mask of the plane (None: everywhere), or a message."""
        choice = self.region.value
        if choice == "all":
            return None
        if choice == "changed":
            mask = _layers.changed_region(labels_layer, plane)
            if mask is None:
                return (f"'{labels_layer.name}' has no change against the result written into it: correct some "
                        "cells first, or choose 'the whole image'")
            return mask
        mask = _layers.shapes_region(choice, shape, image_layer)
        if mask is None:
            return f"shapes layer '{choice.name}' covers no pixel of '{image_layer.name}': draw a rectangle or polygon"
        return mask

    def _output_stem(self, layer) -> Path:
        from ..engines.registry import new_model_path

        text = str(self.output.value or "").strip()
        if text in ("", "."):
            return new_model_path(self.name_prefix).with_suffix("")
        return fresh_weights_path(text)

    def _inputs(self):
        """``(image_plane, labels_plane, image_layer, labels_layer)`` or a message."""
        image_layer, labels_layer = self.image.layer, self.labels.layer
        problem = _layers.image_layer_problem(image_layer, missing="open the label-free image and choose it as 'image'")
        if problem:
            return problem
        if labels_layer is None:
            return "No labels layer: run a segmentation, correct its labels layer, and choose it as 'corrected labels'."
        image, _ = _layers.current_plane(self.viewer, image_layer)
        labels, plane = _layers.current_plane(self.viewer, labels_layer)
        if labels.shape != image.shape:
            return (f"'{labels_layer.name}' has shape {labels.shape} but '{image_layer.name}' has {image.shape}: "
                    "choose the labels drawn on this image")
        if not np.any(labels):
            return f"'{labels_layer.name}' has no objects: there is nothing to learn from"
        region = self._region(image_layer, labels_layer, labels.shape, plane)
        if isinstance(region, str):
            return region
        return image, np.asarray(labels), image_layer, labels_layer, region

    # -------------------------------------------------------------- actions
    def start(self, event=None):
        """Start fine-tuning; returns the worker, or None (with a message) if it cannot."""
        if self.runner.running:
            self.set_status("A fine-tune is already running.")
            return None
        got = self._inputs()
        if isinstance(got, str):
            self.set_status(got)
            return None
        image, labels, image_layer, labels_layer, region = got
        try:
            output = self._output_stem(image_layer)
            output.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            self.set_status(f"Cannot use that folder for the weights: {exc}")
            return None
        model = self.base_model()
        steps, lr, device = int(self.steps.value), float(self.learning_rate.value), self.device()
        where = "" if region is None else f", checked {100 * float(region.mean()):.0f} % of it"
        description = (f"napari: image layer '{image_layer.name}', labels layer '{labels_layer.name}' "
                       f"({int(np.count_nonzero(np.unique(labels)))} objects{where}), fine-tuned from {model}")
        self._image_layer = image_layer
        self._output = output
        self.last_weights = None
        self.history_steps, self.history_loss = [], []
        self.plot.set_history([], [])
        fn = self.engine.finetune

        def make():
            return fn(image, labels, model=model, regions=region, steps=steps, learning_rate=lr, output=output,
                      device=device, description=description)

        self.start_button.enabled = False
        self.cancel_button.enabled = True
        self.progress.setValue(0)
        self.set_status(f"Fine-tuning on '{image_layer.name}' + '{labels_layer.name}' ({steps} steps)…")
        return self.runner.start(make, draw=self._draw, on_snapshot=self._record)

    def cancel(self, event=None) -> None:
        self.runner.cancel()

    # -------------------------------------------------------------- drawing
    def _record(self, snap) -> None:
        step = getattr(snap, "step", 0)
        loss = getattr(snap, "loss", math.nan)
        if step and math.isfinite(loss):
            self.history_steps.append(int(step))
            self.history_loss.append(float(loss))
        path = getattr(snap, "weights_path", None)
        if getattr(snap, "done", False) and path is not None:
            self.last_weights = Path(path)

    def _draw(self, snap) -> None:
        self.progress.setValue(int(1000 * float(snap.progress)))
        self.set_status(snap.message)
        self.plot.set_history(self.history_steps, self.history_loss)

    def _finished(self, cancelled: bool) -> None:
        self.start_button.enabled = True
        self.cancel_button.enabled = False
        self.plot.set_history(self.history_steps, self.history_loss)
        if cancelled:
            self.set_status("Fine-tuning cancelled; no weights were written.")
            return
        if self.last_weights is None:
            if not self.status.text().startswith("Error"):
                self.set_status("Fine-tuning ended without writing weights.")
            return
        from ._models import models_changed

        models_changed()
        self.set_status(f"Saved {self.last_weights} (+ .json)" + ("; re-segmenting with it…" if self.on_finished else "."))
        if self.on_finished is not None:
            self.on_finished(self.last_weights, self._image_layer)

    def _errored(self, message: str) -> None:
        self.set_status(f"Error: {message}")
