"""The GUI thread and the engine take turns: what keeps a run from stalling the window.

Speed is measured in ``benchmarks/gui_stall.py``; these tests check the mechanisms.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

pytestmark = pytest.mark.gui


def _wait_for(condition, timeout=5.0):
    end = time.monotonic() + timeout
    while not condition() and time.monotonic() < end:
        time.sleep(0.01)
    return condition()


def test_the_worker_computes_the_next_snapshot_only_after_the_gui_took_the_last():
    from napari_kaizen.widgets._worker import Gate, gated

    gate = Gate()
    computed: list[int] = []
    out: list[int] = []

    def engine():
        for i in range(3):
            computed.append(i)
            yield i

    worker = threading.Thread(target=lambda: out.extend(gated(engine(), gate, hand_off=True)))
    worker.start()
    assert _wait_for(lambda: computed == [0])
    time.sleep(0.3)
    assert computed == [0]  # snapshot 0 is not taken yet: nothing else is computed meanwhile
    gate.taken()
    assert _wait_for(lambda: computed == [0, 1])
    gate.taken()
    gate.taken()
    worker.join(5)
    assert out == [0, 1, 2]


def test_a_cancel_releases_a_worker_that_waits_for_the_gui():
    from napari_kaizen.widgets._worker import Gate, gated

    gate = Gate()
    closed = []

    def engine():
        try:
            yield 1
            yield 2
        finally:
            closed.append(True)

    worker = threading.Thread(target=lambda: list(gated(engine(), gate, hand_off=True)))
    worker.start()
    time.sleep(0.1)
    gate.cancel()
    worker.join(1.0)
    assert not worker.is_alive() and closed == [True]


def test_the_runner_draws_a_due_snapshot_before_the_engine_goes_on(qtbot):
    """A draw (and its layer creation) never runs beside the engine's next step."""
    from napari_kaizen.widgets._worker import SnapshotRunner

    events: list[str] = []

    def engine():
        for i in range(3):
            events.append(f"compute {i}")
            yield i

    def draw(snap):
        events.append(f"draw {snap} start")
        time.sleep(0.05)
        events.append(f"draw {snap} end")

    runner = SnapshotRunner(min_interval_ms=0)
    runner.start(engine, draw=draw)
    qtbot.waitUntil(lambda: not runner.running, timeout=10_000)
    # Every snapshot was due (no throttle): each is drawn before the next is computed.
    assert events == ["compute 0", "draw 0 start", "draw 0 end", "compute 1", "draw 1 start", "draw 1 end",
                      "compute 2", "draw 2 start", "draw 2 end"]


@pytest.mark.parametrize("hold_ms, drawn", [(None, [0, 2]), (100, [0, 1, 2])])
def test_the_throttle_timer_does_not_draw_beside_a_computing_engine(qtbot, monkeypatch, hold_ms, drawn):
    """A snapshot that came too soon waits for the next one (drawn while the worker waits),
    unless the engine's next step is longer than ``MAX_HOLD_MS``."""
    from napari_kaizen.widgets import _worker

    if hold_ms is not None:
        monkeypatch.setattr(_worker, "MAX_HOLD_MS", hold_ms)
    computing = threading.Event()
    beside: list[int] = []

    def engine():
        yield 0
        yield 1  # too soon after 0: taken at once, not drawn yet
        computing.set()
        time.sleep(0.6)  # three ticks of the throttle
        computing.clear()
        yield 2

    def draw(snap):
        if computing.is_set():
            beside.append(snap)
        draws.append(snap)

    draws: list[int] = []
    runner = _worker.SnapshotRunner(min_interval_ms=200)
    runner.start(engine, draw=draw)
    qtbot.waitUntil(lambda: not runner.running, timeout=10_000)
    assert draws == drawn
    assert beside == ([] if hold_ms is None else [1])

@pytest.mark.parametrize("queued", [False, True])
def test_the_progress_bar_queues_its_repaint(qtbot, queued):
    """Qt's own bar repaints inside ``setValue`` (which composites the whole napari window); ours later."""
    from qtpy.QtWidgets import QProgressBar

    from napari_kaizen.widgets._controls import ProgressBar

    painted: list[int] = []

    class Bar(ProgressBar if queued else QProgressBar):
        def paintEvent(self, event):  # noqa: N802 - Qt's name
            painted.append(self.value())
            super().paintEvent(event)

    bar = Bar()
    qtbot.addWidget(bar)
    bar.setRange(0, 1000)
    bar.show()
    qtbot.waitExposed(bar)
    qtbot.wait(50)
    painted.clear()
    bar.setValue(500)
    assert bar.value() == 500 and bar.updatesEnabled()
    assert painted == ([] if queued else [500])
    qtbot.waitUntil(lambda: bool(painted) and painted[-1] == 500, timeout=5000)


def test_the_loss_plot_is_made_when_the_first_loss_arrives(qtbot):
    from napari_kaizen.widgets._finetune import LazyLossPlot

    plot = LazyLossPlot()
    qtbot.addWidget(plot)
    plot.set_history([], [])
    assert plot.canvas is None  # no matplotlib figure to redraw while segmentation runs resize the panel
    plot.set_history([1, 2], [0.5, 0.4])
    assert plot.canvas is not None


def test_a_new_layer_is_built_hidden_and_shown_a_turn_later_as_a_direct_add_makes_it(make_napari_viewer, qtbot):
    """Building a layer and showing it are two event-loop turns; the layers end up as napari makes them."""
    import pandas as pd
    from qtpy.QtCore import QTimer

    from napari_kaizen.widgets import _layers

    viewer = make_napari_viewer()
    rng = np.random.default_rng(0)
    image = rng.random((64, 48)).astype(np.float32) * 7 - 2
    labels = rng.integers(0, 5, (64, 48)).astype(np.int32)
    features = pd.DataFrame({"index": np.arange(5), "score": np.linspace(0, 1, 5)})
    # What a timer due at once sees: it runs between building and showing.
    seen: dict[str, bool] = {}
    viewer.layers.events.inserted.connect(
        lambda event: QTimer.singleShot(0, lambda layer=event.value: seen.setdefault(layer.name, layer.visible)))

    style = {"colormap": "magma", "blending": "additive", "scale": (2.0, 0.5), "translate": (3.0, 1.0)}
    ours = _layers.set_image(viewer, "ours", image, owner="test", **style)
    hidden = _layers.set_image(viewer, "ours hidden", image, owner="test", visible=False, **style)
    cells = _layers.set_labels(viewer, "cells", labels, owner="test", features=features, opacity=0.6)
    assert seen == {"ours": False, "ours hidden": False, "cells": False}

    direct = viewer.add_image(image, name="direct", **style)
    direct_cells = viewer.add_labels(labels, name="direct cells", features=features, opacity=0.6)
    assert ours.visible and not hidden.visible and cells.visible
    for layer in (ours, hidden):
        np.testing.assert_array_equal(layer.data, image)
        assert tuple(layer.contrast_limits) == tuple(direct.contrast_limits)
        assert tuple(layer.contrast_limits_range) == tuple(direct.contrast_limits_range)
        assert layer.colormap.name == direct.colormap.name and layer.blending == direct.blending
        np.testing.assert_allclose(layer.scale, direct.scale)
        np.testing.assert_allclose(layer.translate, direct.translate)
    np.testing.assert_array_equal(cells.data, labels)
    assert cells.opacity == direct_cells.opacity
    pd.testing.assert_frame_equal(cells.features, direct_cells.features)
    np.testing.assert_array_equal(_layers.written(cells), labels)
    assert _layers.owned_by(cells, "test") and not _layers.is_edited(cells)
    # Edits are tracked from the start.
    cells.paint((10, 10), 9, refresh=True)
    assert _layers.is_edited(cells)
