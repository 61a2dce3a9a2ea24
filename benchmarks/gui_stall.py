"""How long the napari event loop stalls while each engine widget runs.

A person notices a frozen window from about 100 ms. This docks every engine's widget
in a real viewer (under a virtual X server when there is no display), runs it on a
512 x 512 synthetic field, and measures the gaps between ticks of a 5 ms Qt timer from
*Run* to the end of the run: the longest gap is the longest time the window could not
respond. First runs (layers created) and second runs (layers updated) are reported
separately.

Each stall is also given as a ratio to napari's own cost of showing a result of that
size: the longest gap while ``viewer.add_labels`` adds a labels layer of the same shape
(the field's true labels), timed the same way in the same process and viewer just
before the runs. A ratio near 1 means the widget stalls the window no longer than
napari itself does to show the labels at all.

The canvas repaint itself (vispy's ``paintGL``) is timed apart: under Xvfb it runs on
a software OpenGL rasteriser and one repaint of a 1920 x 1080 window takes 100-300 ms
on 2 CPU cores, which a workstation's GPU does in milliseconds. The table gives the
longest stall as measured and the longest stall *outside* canvas painting (the
widget's and napari's Python work, which does not depend on the OpenGL driver).

    python benchmarks/gui_stall.py [--size 512] [--engines classical kaizen unet fcn]

Writes ``benchmarks/results/gui_stall.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _display():
    if os.environ.get("DISPLAY"):
        return None
    from pyvirtualdisplay import Display

    display = Display(visible=False, size=(1920, 1080), color_depth=24)
    display.start()
    return display


PAINTS: list[tuple[float, float]] = []


def _time_paints() -> None:
    """Record the (start, end) of every canvas repaint."""
    _qt = sys.modules.get("vispy.app.backends._qt")  # imported by napari's canvas; not importable directly
    if _qt is None:
        return
    for cls in (getattr(_qt, "CanvasBackendDesktop", None), getattr(_qt, "CanvasBackendEgl", None)):
        if cls is None or not hasattr(cls, "paintGL") or getattr(cls.paintGL, "_timed", False):
            continue
        original = cls.paintGL

        def paintGL(self, _original=original):  # noqa: N802 - Qt's name
            t0 = time.perf_counter()
            try:
                return _original(self)
            finally:
                PAINTS.append((t0, time.perf_counter()))

        paintGL._timed = True
        cls.paintGL = paintGL


def _outside_paint(stamps) -> list[float]:
    """Each gap between ticks minus the canvas painting inside it (ms)."""
    out = []
    for a, b in zip(stamps[:-1], stamps[1:]):
        painted = sum(max(0.0, min(b, e) - max(a, s)) for s, e in PAINTS)
        out.append(1000.0 * (b - a - painted))
    return out


def _longest_gap(app, start, busy=lambda: False, settle: int = 50) -> tuple[float, float]:
    """Longest gap (ms) between 5-ms timer ticks, and the same outside canvas painting,
    from ``start()`` until ``busy()`` is false and ``settle`` more event-loop turns."""
    import numpy as np
    from qtpy.QtCore import QTimer

    ticks: list[float] = []
    timer = QTimer()
    timer.setInterval(5)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    t0 = time.perf_counter()
    timer.start()
    start()
    while busy():
        app.processEvents()
        time.sleep(0.002)
    for _ in range(settle):
        app.processEvents()
        time.sleep(0.002)
    timer.stop()
    stamps = np.array([t0, *ticks, time.perf_counter()])
    return float(np.diff(stamps).max() * 1000), float(max(_outside_paint(stamps)))


def measure(engine: str, size: int, runs: int = 2) -> list[dict]:
    import napari
    import numpy as np
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    from napari_kaizen.data import synthesize
    from napari_kaizen.widgets._engine_widget import ClassicalWidget
    from napari_kaizen.widgets._fcn_widget import FCNWidget
    from napari_kaizen.widgets._kaizen_widget import KaizenWidget
    from napari_kaizen.widgets._unet_widget import UNetWidget

    cls = {"classical": ClassicalWidget, "kaizen": KaizenWidget, "unet": UNetWidget, "fcn": FCNWidget}[engine]
    field = synthesize(seed=10_500, shape=(size, size), density=0.3)
    viewer = napari.Viewer(show=True)
    _time_paints()
    viewer.window._qt_window.resize(1920, 1080)
    viewer.add_image(field.label_free if engine == "unet" else field.nuclei, name="input")
    widget = cls(viewer)
    viewer.window.add_dock_widget(widget, name=engine)
    app = QApplication.instance()
    for _ in range(20):
        app.processEvents()
        time.sleep(0.01)
    # napari's own cost of showing labels of this size, in this process and viewer.
    reference, reference_own = _longest_gap(
        app, lambda: viewer.add_labels(field.nucleus_labels.astype(np.int32), name="napari add_labels reference"))
    viewer.layers.remove("napari add_labels reference")
    out = []
    for k in range(runs):
        ticks: list[float] = []
        timer = QTimer()
        timer.setInterval(5)
        timer.timeout.connect(lambda ticks=ticks: ticks.append(time.perf_counter()))
        start = time.perf_counter()
        timer.start()
        widget.run()
        while widget.runner.running:
            app.processEvents()
            time.sleep(0.002)
        for _ in range(50):  # what the last snapshot's drawing costs, after the worker ended
            app.processEvents()
            time.sleep(0.002)
        timer.stop()
        end = time.perf_counter()
        stamps = np.array([start, *ticks, end])
        gaps = np.diff(stamps) * 1000
        own = np.array(_outside_paint(stamps))
        paints = [1000 * (e - s) for s, e in PAINTS if s >= start and e <= end]
        out.append({"engine": engine, "run": k + 1, "seconds": round(end - start, 2),
                    "longest_stall_ms": round(float(gaps.max()), 1),
                    "add_labels_stall_ms": round(reference, 1),
                    "stall_ratio": round(float(gaps.max()) / reference, 2),
                    "add_labels_stall_outside_paint_ms": round(reference_own, 1),
                    "stall_ratio_outside_paint": round(float(own.max()) / max(reference_own, 1e-3), 2),
                    "p99_gap_ms": round(float(np.percentile(gaps, 99)), 1),
                    "stalls_over_100ms": int((gaps > 100).sum()),
                    "longest_stall_outside_paint_ms": round(float(own.max()), 1),
                    "stalls_outside_paint_over_100ms": int((own > 100).sum()),
                    "repaints": len(paints), "median_repaint_ms": round(float(np.median(paints)), 1) if paints else 0.0,
                    "status": widget.status.text()[:80]})
    viewer.close()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--engines", nargs="+", default=["classical", "kaizen", "unet", "fcn"])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gui_stall.json"))
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    display = _display()
    rows = []
    try:
        for engine in args.engines:
            rows += measure(engine, args.size)
    finally:
        if display is not None:
            display.stop()
    result = {"what": f"longest event-loop gap (5 ms timer) from Run to the end, {args.size}x{args.size} field",
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch 1 thread, "
                         "Xvfb (software OpenGL)",
              "python": sys.version.split()[0], "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print("| engine | run | seconds | longest stall (ms) | napari add_labels (ms) | ratio | stalls > 100 ms "
          "| repaints (median ms) | longest stall outside painting (ms) | ratio outside painting | of those > 100 ms |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['engine']} | {r['run']} | {r['seconds']} | {r['longest_stall_ms']} | {r['add_labels_stall_ms']} | "
              f"{r['stall_ratio']} | {r['stalls_over_100ms']} | {r['repaints']} ({r['median_repaint_ms']}) | "
              f"{r['longest_stall_outside_paint_ms']} | {r['stall_ratio_outside_paint']} | "
              f"{r['stalls_outside_paint_over_100ms']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
