"""Small controls the panels share: a layer chooser and a section that folds away.

They live below every panel (the engine panel, fine-tuning, export, Kaizen's own) so
that no panel imports another just for a control.
"""

from __future__ import annotations

from typing import Any

from magicgui import widgets as mw
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QProgressBar, QToolButton, QVBoxLayout, QWidget

from . import _layers


class ProgressBar(QProgressBar):
    """A progress bar whose new value is painted with the window's next paint, not at once.

    Qt's ``QProgressBar.setValue`` repaints synchronously whenever the shown text or bar
    length changes; in a napari window (an OpenGL canvas beside the widgets, composited
    in software under a virtual display) that repaint composites the whole window on
    the spot, 60-80 ms per call, and lets any stale widget in it redraw too. Here the
    value changes with updates switched off and the repaint is queued, so it joins the
    canvas' own next paint.
    """

    def setValue(self, value: int) -> None:  # noqa: N802 - Qt's name
        enabled = self.updatesEnabled()
        self.setUpdatesEnabled(False)
        try:
            super().setValue(int(value))
        finally:
            self.setUpdatesEnabled(enabled)
        self.update()


class LayerChoice(mw.ComboBox):
    """A combo box of the viewer's layers of one kind, kept in sync with the layer list."""

    def __init__(self, viewer, kind: str = "image", label: str = "image", *, exclude_owner: str | None = None,
                 **kwargs: Any) -> None:
        self._viewer = viewer
        self._kind = kind
        self._exclude_owner = exclude_owner
        super().__init__(label=label, choices=self._choices, nullable=False, **kwargs)
        for ev in (viewer.layers.events.inserted, viewer.layers.events.removed, viewer.layers.events.moved):
            ev.connect(lambda e=None: self.reset_choices())

    def _choices(self, widget=None):
        getter = _layers.image_layers if self._kind == "image" else _layers.labels_layers
        return [(layer.name, layer) for layer in getter(self._viewer)
                if not (self._exclude_owner and _layers.owned_by(layer, self._exclude_owner))]

    @property
    def layer(self):
        """The chosen layer, or None."""
        try:
            return self.value
        except Exception:  # noqa: BLE001 - magicgui raises when there are no choices
            return None


class Section(QWidget):
    """A titled part of a panel that folds away (click the title)."""

    def __init__(self, title: str, content: QWidget, *, expanded: bool = True) -> None:
        super().__init__()
        self.toggle = QToolButton(text=title, checkable=True, checked=expanded)
        self.toggle.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.toggle.setStyleSheet("QToolButton { border: none; font-weight: bold; }")
        self.content = content
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 2, 0, 2)
        layout.setSpacing(2)
        layout.addWidget(self.toggle)
        layout.addWidget(content)
        self.toggle.toggled.connect(self.set_expanded)
        self.set_expanded(expanded)

    @property
    def expanded(self) -> bool:
        return self.toggle.isChecked()

    def set_expanded(self, expanded: bool) -> None:
        self.toggle.setChecked(expanded)
        self.toggle.setArrowType(Qt.ArrowType.DownArrow if expanded else Qt.ArrowType.RightArrow)
        self.content.setVisible(expanded)


#: The width every panel must fit (pixels): napari's dock area at a 1500-px-wide window.
DOCK_WIDTH = 420

#: Characters a combo box shows before it elides (its popup lists the whole names).
COMBO_CHARS = 12


def fit_width(panel: QWidget) -> None:
    """Let ``panel`` and everything in it shrink to a :data:`DOCK_WIDTH` dock.

    A combo box sizes itself to its longest entry (a model's full label is 600 px), a
    label without wrapping to its text, and either makes the panel wider than the
    dock, which cuts text and buttons at the right edge. Combo boxes keep a few
    characters and list the full names in their popup; labels wrap.
    """
    from qtpy.QtWidgets import QComboBox, QLabel, QSizePolicy

    for combo in panel.findChildren(QComboBox):
        combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        combo.setMinimumContentsLength(COMBO_CHARS)
        policy = combo.sizePolicy()
        policy.setHorizontalPolicy(QSizePolicy.Policy.Expanding)
        combo.setSizePolicy(policy)
    for label in panel.findChildren(QLabel):
        # A label given a width on purpose (a short counter beside a slider) keeps it.
        if (label.pixmap() is None or label.pixmap().isNull()) and label.minimumWidth() == 0:
            # Wrapped, and its width given by the panel, not asked by its text: a wrapped
            # label still asks for a wide minimum when its text is long (a status line).
            label.setWordWrap(True)
            policy = label.sizePolicy()
            policy.setHorizontalPolicy(QSizePolicy.Policy.Ignored)
            label.setSizePolicy(policy)
