"""The "Kaizen" dock widget: watch the decomposition live, step through it, review, correct.

*Run* starts the Kaizen engine's snapshot generator in a worker thread (the model is
loaded there too); the GUI thread only draws what it yields, at most every
``DRAW_INTERVAL_MS``, into four layers (see :mod:`._kaizen_view`): "Kaizen internal
image", "Kaizen error image", "Kaizen proposals" and "Kaizen cells".

*Pause*, *Step* (exactly one iteration; from idle it starts a run paused), *Resume*
and *Cancel* act between two iterations in the worker thread (:class:`._worker.Gate`).
Every snapshot is kept (:mod:`._kaizen_history`); the slider redraws all four layers
for any iteration, during or after the run, and follows the run while it sits at its
right end. When the run ends (or is cancelled) the review panel
(:mod:`._kaizen_review`) walks through the cells from the least to the most certain.

Stacks: by default the plane on screen is segmented into a stack-shaped labels
layer; with *every plane*, all planes are, one after the other (the live images show
the plane being computed, and the slider scrubs through that plane's iterations).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np
from magicgui import widgets as mw
from qtpy.QtWidgets import QApplication, QLabel, QVBoxLayout, QWidget

if TYPE_CHECKING:  # napari injects the viewer by this annotation
    import napari.viewer

from . import _layers
from ._controls import Section
from ._engine_widget import EngineWidget
from ._kaizen_history import IterationScrubber, SnapshotHistory, keepable
from ._kaizen_review import ReviewPanel
from ._kaizen_view import ACCEPTED_COLOR, REJECTED_COLOR, KaizenLayers, scores_table

#: At most one redraw of the four layers per this many milliseconds while running ...
DRAW_INTERVAL_MS = 150
#: ... and drawing takes at most this share of the GUI thread (slow machines draw less often).
DRAW_BUSY = 0.33

#: Parameters shown without "show all parameters" (the rest keep the paper's defaults).
MAIN_PARAMS = ("diameter", "max_iterations", "max_passes", "mask_threshold", "min_size",
               "batched", "points_per_iteration")


def _hex(rgba) -> str:
    return "#" + "".join(f"{int(round(255 * c)):02x}" for c in rgba[:3])


#: The proposals' colours, for the legend (the layer draws them; see :mod:`._kaizen_view`).
LEGEND = (
    f"<span style='color:{_hex(ACCEPTED_COLOR)}'>&#9679;</span> accepted proposal (a cell kept) &nbsp; "
    f"<span style='color:{_hex(REJECTED_COLOR)}'>&#9679;</span> rejected (did not lower the error)"
)


class KaizenWidget(EngineWidget):
    """Dock widget of the Kaizen engine (VQ-VAE decomposition).

    The :class:`~._engine_widget.EngineWidget` with three additions: *Pause* / *Step* /
    *Resume* under *Run*, an "Iterations" panel (slider, legend, what the shown
    iteration did) and a "Review and correct" panel.

    Parameters
    ----------
    viewer : napari.Viewer
    """

    ENGINE = "kaizen"
    PREFIX = "Kaizen"
    MAIN_PARAMS = MAIN_PARAMS
    RUNNER_OPTIONS = {"min_interval_ms": DRAW_INTERVAL_MS, "max_busy": DRAW_BUSY}
    FINETUNE_DEFAULTS = {"steps": 150, "learning_rate": 2e-4}

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(viewer)
        self.history = SnapshotHistory()
        self.view = KaizenLayers(viewer)
        self.runner.paused_changed.connect(lambda paused: self._update_buttons())
        self.scrubber.requested.connect(self.show_iteration)
        self.pause_button.changed.connect(self.pause)
        self.step_button.changed.connect(self.step)
        self.resume_button.changed.connect(self.resume)

        # A paused worker waits for ever: when the widget goes away or napari quits, cancel
        # its run. The hook holds only this list (not the widget), so it is safe to call
        # after the widget is deleted.
        gates: list = []
        self._live_gates = gates

        def cancel_all(*_):
            for gate in gates:
                gate.cancel()

        self.destroyed.connect(cancel_all)
        app = QApplication.instance()
        if app is not None:
            app.aboutToQuit.connect(cancel_all)

        self._started = 0.0
        self._n_planes = 1
        self._plane_results: list[tuple[tuple[int, ...], dict[int, float], int]] = []
        self._stack_features = None
        self._followed_plane: tuple[int, ...] | None = None
        self._start_paused = False
        self.readout.setText("Choose an image and press Run.")
        self._update_buttons()

    # ------------------------------------------------------------------ panels
    def _control_rows(self) -> list[QWidget]:
        self.pause_button = mw.PushButton(text="Pause", tooltip="Stop after the iteration being computed")
        self.step_button = mw.PushButton(
            text="Step", tooltip="Compute exactly one more iteration (when idle: start a run paused after its first)")
        self.resume_button = mw.PushButton(text="Resume", tooltip="Run on to the end")
        row = mw.Container(widgets=[self.pause_button, self.step_button, self.resume_button],
                           layout="horizontal", labels=False)
        row.margins = (0, 0, 0, 0)
        self.paused_label = QLabel("Paused")
        self.paused_label.setStyleSheet("font-weight: bold; color: #f0c040;")
        self.paused_label.setVisible(False)
        return [row.native, self.paused_label]

    def _sections(self) -> list[QWidget]:
        self.readout = QLabel("")
        self.readout.setWordWrap(True)
        self.scrubber = IterationScrubber(self)
        self.legend = QLabel(LEGEND)
        self.legend.setWordWrap(True)
        iterations = QWidget()
        box = QVBoxLayout(iterations)
        box.setContentsMargins(0, 0, 0, 0)
        box.addWidget(self.readout)
        box.addWidget(self.scrubber)
        box.addWidget(self.legend)
        self.review = ReviewPanel(self.viewer)
        self.iterations_section = Section("Iterations", iterations, expanded=True)
        self.review_section = Section("Review and correct", self.review, expanded=True)
        return [self.iterations_section, self.review_section]

    # ------------------------------------------------------------------ helpers
    @property
    def cells_layer(self):
        """The labels layer of the latest run (None before the first draw)."""
        return self.view.cells_layer

    @property
    def models(self):
        """Older name of :attr:`model`."""
        return self.model

    def _update_buttons(self) -> None:
        running = self.runner.running
        paused = running and self.runner.paused
        self.run_button.enabled = not running
        self.cancel_button.enabled = running
        if not hasattr(self, "pause_button"):
            return
        self.pause_button.enabled = running and not paused
        self.step_button.enabled = True
        self.resume_button.enabled = paused
        self.paused_label.setVisible(paused)
        if paused and hasattr(self, "history"):
            shown = self._describe(self.history.last) if len(self.history) else "before the first iteration"
            self.paused_label.setText(f"Paused — {shown}. Step: one more iteration; Resume: run on.")

    # ------------------------------------------------------------------ actions
    def run(self, event=None, *, start_paused: bool = False):
        """Start a run; returns the worker, or None (with a message in the status line)."""
        if self.runner.running:
            self.set_status("A run is already in progress: pause, step, resume or cancel it.")
            return None
        self._start_paused = start_paused
        worker = super().run(start_paused=start_paused)
        if worker is not None and self.runner.gate is not None:
            self._live_gates[:] = [self.runner.gate]
            self._update_buttons()
        return worker

    def _wrap(self, snapshots):
        return keepable(snapshots)

    def _begin(self, layer, mode: str, plane: tuple[int, ...]) -> None:
        self._n_planes = int(np.prod(np.shape(layer.data)[:-2])) if mode == "stack" else 1
        self.history.clear()
        self.scrubber.reset()
        self.view.begin(layer, mode, plane)
        self.target = self.view.target  # one placement: the view's (show_progress reads its mode)
        self.review.clear("Review: available when the run ends or is cancelled.")
        self._plane_results = []
        self._stack_features = None
        self._followed_plane = None
        self._started = time.monotonic()
        self.readout.setText("Paused before the first iteration." if self._start_paused else "Loading the model…")

    def pause(self, event=None) -> None:
        self.runner.pause()
        self._update_buttons()

    def resume(self, event=None) -> None:
        self.runner.resume()
        self._update_buttons()

    def step(self, event=None) -> None:
        """One more iteration; from idle, start a run that pauses after its first."""
        if not self.runner.running and self.run(start_paused=True) is None:
            return
        self.runner.step()
        self._update_buttons()

    # ------------------------------------------------------------------ snapshots
    def _received(self, snap) -> None:
        """Every snapshot, on the GUI thread: keep it (cheap; nothing is drawn here)."""
        new_plane = self.history.append(snap)
        if getattr(snap, "stage", "") == "labels" and getattr(snap, "plane", None) is not None:
            # The end of one plane of an every-plane run: its scores, and the id offset
            # the next plane gets (segment_planes adds each plane's largest id).
            self._plane_results.append((snap.plane, dict(snap.scores), int(np.max(snap.labels, initial=0))))
        if new_plane:
            # A new plane starts a new history: scrubbing the old one is over.
            self.scrubber.set_index(self.scrubber.slider.maximum())
        self.scrubber.set_count(len(self.history))

    def draw(self, snap) -> None:
        """The newest snapshot, throttled: progress always, the layers if following."""
        self.show_progress(snap)
        if self.scrubber.following:
            self._draw(len(self.history) - 1)
        else:
            self.set_status(snap.message)
            shown = self.history[self.scrubber.index] if len(self.history) else None
            self.readout.setText(
                f"Showing {self._describe(shown)} — live: {self._describe(snap)}. "
                "Move the slider to the right end to follow the run."
            )

    def show_iteration(self, index: int) -> None:
        """Draw the ``index``-th snapshot of the history (negative: from the end)."""
        n = len(self.history)
        if n == 0:
            return
        index = int(index) % n if index < 0 else min(int(index), n - 1)
        self.scrubber.set_index(index)
        self._draw(index)

    def _draw(self, index: int) -> None:
        snap = self.history[index]
        labels = True
        note = ""
        layer = self.view.cells_layer
        if not self.runner.running and layer is not None and layer in self.viewer.layers and _layers.is_edited(layer):
            # After a run the cells layer is the person's to correct: scrubbing must not
            # replace (or multiply) it.
            labels = False
            note = f" ('{layer.name}' was edited, so it keeps your corrections)"
        features = None
        if getattr(snap, "done", False) and getattr(snap, "plane", None) is None and self._plane_results:
            features = self._stack_features_table()
        if getattr(snap, "plane", None) is not None and index == len(self.history) - 1 and self.runner.running:
            self._follow_plane(snap.plane)
        self.view.draw(snap, labels=labels, features=features)
        self.scrubber.label.setText(self._slider_text(index))
        self.readout.setText(self._describe(snap, full=True) + note)
        self.set_status(snap.message if not self._error else f"Error: {self._error}")

    def _stack_features_table(self):
        if self._stack_features is None:
            rows: dict[int, float] = {}
            offset = 0
            for _, scores, top in self._plane_results:
                rows.update({int(i) + offset: float(s) for i, s in scores.items()})
                offset += top
            self._stack_features = scores_table(rows)
        return self._stack_features

    def _follow_plane(self, plane: tuple[int, ...]) -> None:
        """During an every-plane run, show the plane being computed."""
        if self._followed_plane == plane:
            return
        self._followed_plane = plane
        src = self.view.source
        if src is None or src not in self.viewer.layers:
            return
        point = np.zeros(src.ndim)
        point[: len(plane)] = plane
        world = np.asarray(src.data_to_world(point), float)
        first = self.viewer.dims.ndim - src.ndim
        self.viewer.dims.set_point(list(range(first, first + len(plane))), [float(w) for w in world[: len(plane)]])

    # ------------------------------------------------------------------ text
    def _describe(self, snap, *, full: bool = False) -> str:
        if snap is None:
            return "nothing yet"
        plane = getattr(snap, "plane", None)
        prefix = ""
        if plane is not None and self._n_planes > 1:
            done = len(self._plane_results)
            prefix = f"plane {min(done + 1, self._n_planes)}/{self._n_planes} · "
        if getattr(snap, "done", False) and plane is None:
            if self._plane_results or not hasattr(snap, "scores"):
                n = len(self._stack_features_table()) if self._plane_results else int(np.max(snap.labels, initial=0))
                return f"Done: {n} cells in {self._n_planes} planes"
            passes = snap.pass_index + 1 if snap.iteration else 0
            return f"Done: {len(snap.scores)} cells · {snap.iteration} iterations in {passes} passes"
        if getattr(snap, "stage", "") == "labels":
            return prefix + f"plane done: {len(snap.scores)} cells"
        if not hasattr(snap, "iteration"):
            return prefix + snap.message
        text = (f"{prefix}pass {snap.pass_index + 1} · iteration {snap.iteration_in_pass} "
                f"({snap.iteration} in all) · {len(snap.scores)} cells found")
        if full:
            n = len(snap.accepted)
            text += f" · {int(np.count_nonzero(snap.accepted))} of {n} proposals accepted"
        return text

    def _slider_text(self, index: int) -> str:
        snap = self.history[index]
        if getattr(snap, "done", False) or getattr(snap, "stage", "") == "labels":
            return "result"
        return f"iteration {getattr(snap, 'iteration', index + 1)}"

    # ------------------------------------------------------------------ the end
    def _finished(self, cancelled: bool) -> None:
        if getattr(self, "_tiled", False):
            # A tile-by-tile run of a huge layer: no iterations were kept to review.
            self._live_gates.clear()
            EngineWidget._finished(self, cancelled)
            return
        self._live_gates.clear()
        self._update_buttons()
        self._next_in_queue(cancelled)
        last = self.history.last
        elapsed = time.monotonic() - self._started
        if self._error:
            self.set_status(f"Error: {self._error}")
            self.readout.setText("The run stopped with an error; the layers show its last iteration.")
        elif last is None:
            self.set_status("Cancelled before the first iteration." if cancelled else "The engine yielded nothing.")
        elif cancelled:
            self.set_status(f"Cancelled after {self._describe(last)} ({elapsed:.1f} s). The layers show that "
                            "iteration; the slider still scrubs through the iterations run.")
        else:
            shown = "" if self.scrubber.following else (
                " The view stays on the iteration you chose: move the slider to the right end for the result.")
            self.set_status(f"{last.message} ({elapsed:.1f} s).{shown}")
        self._start_review(last, cancelled)

    def _start_review(self, last, cancelled: bool) -> None:
        layer = self.view.cells_layer
        if last is None or layer is None:
            self.review.clear("Review: nothing to review.")
            return
        if self._plane_results and getattr(last, "done", False) and getattr(last, "plane", None) is None:
            table = self._stack_features_table()
            scores = dict(zip(table["index"].tolist(), table["score"].tolist()))
            order = sorted(scores, key=lambda i: (scores[i], i))
            self.review.set_cells(layer, order, scores)
        elif getattr(last, "plane", None) is not None and self._n_planes > 1:
            self.review.clear("Review: the every-plane run did not finish; run it again to review the stack.")
        elif hasattr(last, "least_certain"):
            note = " (of the cells found before the run stopped)" if not getattr(last, "done", False) else ""
            self.review.set_cells(layer, last.least_certain(), dict(last.scores), note)
        else:
            self.review.clear("Review: nothing to review.")

    def _errored(self, message: str) -> None:
        self._error = message
        self.set_status(f"Error: {message}")
