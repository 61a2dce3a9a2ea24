"""Small controls the panels share: a layer chooser and a section that folds away.

They live below every panel (the engine panel, fine-tuning, export, Kaizen's own) so
that no panel imports another just for a control.
"""

from __future__ import annotations

from typing import Any

from magicgui import widgets as mw
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QToolButton, QVBoxLayout, QWidget

from . import _layers


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
