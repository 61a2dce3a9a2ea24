"""Screenshot of the "Kaizen" dock widget mid-run on the bundled sample, taken headless.

Opens napari, the sample (File > Open Sample > napari-kaizen > Synthetic nuclei) and
the Kaizen widget; first runs the sample to the end and prints what the run looked
like (iterations, passes, cells, accuracy against the sample's ground truth, time),
then starts a second run with *Step*, steps to ``--iteration`` and saves a
screenshot of the whole window while that run is paused, mid-way.

Usage (no display needed; xvfb-run provides one)::

    xvfb-run -a -s "-screen 0 1600x1200x24" .venv/bin/python scripts/screenshot_kaizen.py
    xvfb-run -a .venv/bin/python scripts/screenshot_kaizen.py --weights runs/kaizen_pilot1.safetensors

Writes ``docs/img/kaizen_widget.png`` (``--output``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def wait_until(condition, timeout: float = 600.0) -> None:
    """Process Qt events until ``condition()`` holds (a test's ``qtbot.waitUntil``)."""
    from qtpy.QtWidgets import QApplication

    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise TimeoutError("the Kaizen run did not get there in time")
        QApplication.processEvents()
        time.sleep(0.01)


def settle(seconds: float = 0.5) -> None:
    """Let napari draw what it was given."""
    from qtpy.QtWidgets import QApplication

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        QApplication.processEvents()
        time.sleep(0.01)


class StallMeter:
    """How long the GUI thread goes without serving a 10 ms timer (its responsiveness)."""

    def __init__(self) -> None:
        from qtpy.QtCore import QTimer

        self.gaps: list[float] = []
        self._last = time.monotonic()
        self._timer = QTimer()
        self._timer.setInterval(10)
        self._timer.timeout.connect(self._tick)
        self._timer.start()

    def _tick(self) -> None:
        now = time.monotonic()
        self.gaps.append(now - self._last)
        self._last = now

    def stop(self) -> None:
        self._timer.stop()

    @property
    def worst(self) -> float:
        return max(self.gaps, default=0.0)

    @property
    def median(self) -> float:
        return sorted(self.gaps)[len(self.gaps) // 2] if self.gaps else 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default=None,
                        help="Kaizen weights (.safetensors); default: the bundled kaizen_nuclei")
    parser.add_argument("--iteration", type=int, default=3, help="iteration to stop at for the screenshot")
    parser.add_argument("--output", default=str(ROOT / "docs" / "img" / "kaizen_widget.png"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", default="1500x1000", help="window size, WIDTHxHEIGHT")
    parser.add_argument("--no-full-run", action="store_true", help="skip the timed run to the end")
    args = parser.parse_args(argv)

    import napari
    import numpy as np

    from napari_kaizen import metrics
    from napari_kaizen.data._sample_data import NUCLEI_SAMPLE_LABELS
    from napari_kaizen.engines._common.weights import bundled_dir
    from napari_kaizen.io import read_labels

    if args.weights is None and not (bundled_dir() / "kaizen_nuclei.safetensors").exists():
        print("The bundled Kaizen weights are not built yet: pass --weights PATH.safetensors", file=sys.stderr)
        return 2

    viewer = napari.Viewer(show=True)
    width, height = (int(v) for v in args.size.lower().split("x"))
    viewer.window.resize(width, height)
    viewer.open_sample("napari-kaizen", "nuclei")
    _, widget = viewer.window.add_plugin_dock_widget("napari-kaizen", "Kaizen")
    widget.image.value = viewer.layers["Synthetic nuclei (DAPI-like)"]
    widget.device.value = args.device
    if args.weights:
        widget.add_model(args.weights)
    settle()

    if not args.no_full_run:
        stall = StallMeter()
        t0 = time.monotonic()
        if widget.run() is None:
            print(widget.status.text(), file=sys.stderr)
            return 1
        wait_until(lambda: not widget.runner.running)
        elapsed = time.monotonic() - t0
        stall.stop()
        final = widget.history.last
        if not getattr(final, "done", False):
            print(widget.status.text(), file=sys.stderr)
            return 1
        for k in range(len(widget.history) - 1):
            print(f"  {widget.history[k].message}")
        truth = read_labels(NUCLEI_SAMPLE_LABELS)
        ap = metrics.average_precision(truth, np.asarray(widget.cells_layer.data))
        print(f"full run: {final.message}; {elapsed:.1f} s in the widget "
              f"({args.device}); ground truth {int(truth.max())} nuclei; AP@0.5 {ap[0.5]:.3f}, AP@0.75 {ap[0.75]:.3f}")
        print(f"GUI thread during the run: longest gap between 10 ms timer ticks {stall.worst * 1000:.0f} ms, "
              f"median {stall.median * 1000:.0f} ms ({widget.runner.count} snapshots)")

    # The screenshot run: step to the wanted iteration and leave it paused there.
    widget.step()
    wait_until(lambda: len(widget.history) >= 1)
    while len(widget.history) < args.iteration and widget.runner.running:
        n = len(widget.history)
        widget.step()
        wait_until(lambda n=n: len(widget.history) > n or not widget.runner.running)
    viewer.layers.selection.active = viewer.layers["Kaizen proposals"]
    viewer.reset_view()
    settle(1.0)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(str(out), canvas_only=False)
    print(f"screenshot: {out} at {widget.readout.text()}")
    widget.cancel()
    wait_until(lambda: not widget.runner.running)
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
