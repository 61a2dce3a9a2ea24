"""Every dock widget fits a 420-px dock (napari's dock area at a 1500-px-wide window)."""

from __future__ import annotations

import importlib

import pytest

pytestmark = pytest.mark.gui

PANELS = [
    "napari_kaizen.widgets._engine_widget:ClassicalWidget",
    "napari_kaizen.widgets._unet_widget:UNetWidget",
    "napari_kaizen.widgets._fcn_widget:FCNWidget",
    "napari_kaizen.widgets._export_widget:ExportWidget",
    "napari_kaizen.widgets._kaizen_widget:KaizenWidget",
]


def _panel(path: str):
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


def _too_wide(panel) -> list[str]:
    """Visible children that want more width than they are shown at, or reach past the panel's right edge."""
    from qtpy.QtCore import QPoint
    from qtpy.QtWidgets import QAbstractSpinBox, QComboBox, QLabel, QWidget

    out = []
    for child in panel.findChildren(QWidget):
        if not child.isVisibleTo(panel) or isinstance(child.parent(), (QAbstractSpinBox, QComboBox)):
            continue  # a spin box's or combo box's own editor is laid out by it, beside its arrows
        right = child.mapTo(panel, QPoint(child.width(), 0)).x()
        # A wrapping label asks for its text's unwrapped width; it fits by wrapping.
        wants = 0 if isinstance(child, QLabel) and child.wordWrap() else child.sizeHint().width()
        if wants > child.width() + 1 or right > panel.width() + 1:
            text = child.text()[:40] if callable(getattr(child, "text", None)) else ""
            out.append(f"{type(child).__name__} {text!r}: wants {wants} px, shown {child.width()} px, right edge {right}")
    return out


@pytest.mark.parametrize("path", PANELS, ids=lambda p: p.split(":")[1])
def test_the_panel_fits_a_420_px_dock(make_napari_viewer, qtbot, path):
    from qtpy.QtWidgets import QApplication, QLabel

    from napari_kaizen.widgets._controls import DOCK_WIDTH

    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1500, 1000)
    panel = _panel(path)(viewer)
    dock = viewer.window.add_dock_widget(panel)
    # Open every folded section, and put the longest texts a run writes in the status lines.
    for toggle in [s for s in panel.findChildren(object) if hasattr(s, "set_expanded")]:
        toggle.set_expanded(True)
    for label in panel.findChildren(QLabel):
        if label.wordWrap():
            label.setText("a status line as long as the longest a run writes: " * 4)
    assert panel.minimumSizeHint().width() <= DOCK_WIDTH
    dock.setFixedWidth(DOCK_WIDTH)
    QApplication.processEvents()
    qtbot.wait(50)
    assert panel.width() <= DOCK_WIDTH
    assert not _too_wide(panel), "\n".join(_too_wide(panel))
