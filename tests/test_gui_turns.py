"""The GUI thread and the engine take turns: what keeps a run from stalling the window.

Speed is measured in ``benchmarks/gui_stall.py``; these tests check the mechanisms.
"""

from __future__ import annotations

import threading
import time

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
