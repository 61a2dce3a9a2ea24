"""Review the accepted cells from the least to the most certain.

The engine scores every cell (the relative drop of the L1 error its prediction made;
low means doubtful). The panel walks through the cells in that order: it selects the
cell's label in the cells layer (ready to paint over or erase), brings its plane into
view for stacks, centres the camera on it and zooms so that a few neighbours show.
The cell is found in the layer's *current* data, so a person's edits are respected.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from qtpy.QtWidgets import QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

#: The view spans this many cell widths (so the neighbours a cell competed with show) ...
VIEW_CELLS = 4.0
#: ... but at least this many data pixels.
MIN_VIEW = 48.0


def bounding_box(data: np.ndarray, label: int) -> tuple[np.ndarray, np.ndarray] | None:
    """``(lo, hi)`` inclusive data coordinates of ``label`` in ``data``, or None if absent."""
    where = np.nonzero(np.asarray(data) == label)
    if not where or where[0].size == 0:
        return None
    return np.array([w.min() for w in where], float), np.array([w.max() for w in where], float)


#: The layer that frames the cell under review.
MARK_LAYER = "Kaizen review"
MARK_OWNER = "kaizen-review"


def _camera(viewer):
    """The viewer's camera (``viewer.scene.camera`` from napari 0.9, ``viewer.camera`` before)."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None and hasattr(scene, "camera") else viewer.camera


def focus(viewer, layer, lo: np.ndarray, hi: np.ndarray) -> None:
    """Show the box ``lo..hi`` (data coordinates of ``layer``) in the middle of the canvas."""
    centre = (lo + hi) / 2.0
    world = np.asarray(layer.data_to_world(centre), float)
    n_lead = layer.ndim - 2
    if n_lead > 0:  # bring the cell's plane into view
        first = viewer.dims.ndim - layer.ndim
        viewer.dims.set_point(list(range(first, first + n_lead)), [float(w) for w in world[:n_lead]])
    camera = _camera(viewer)
    camera.center = tuple(float(w) for w in world[-2:])
    scale = float(np.max(np.abs(np.asarray(layer.scale, float)[-2:])))
    extent = float(np.max(hi[-2:] - lo[-2:] + 1.0))
    span = min(max(VIEW_CELLS * extent, MIN_VIEW), float(max(np.shape(layer.data)[-2:]))) * scale
    canvas = getattr(viewer, "canvas", None)
    size = getattr(canvas, "size", None)
    if size is not None and span > 0 and min(size) > 0:
        camera.zoom = 0.95 * float(min(size)) / span


class ReviewPanel(QWidget):
    """Buttons that step through a labels layer's cells, least certain first.

    Parameters
    ----------
    viewer : napari.Viewer
    """

    def __init__(self, viewer) -> None:
        super().__init__()
        self.viewer = viewer
        self.layer = None
        self.order: list[int] = []
        self.scores: dict[int, float] = {}
        self.rank = -1
        self.first_button = QPushButton("Review least certain")
        self.first_button.setToolTip("Show the cell the engine was least sure of; correct it in the cells layer")
        self.less_button = QPushButton("◀ less certain")
        self.more_button = QPushButton("more certain ▶")
        self.text = QLabel("Review: run Kaizen first.")
        self.text.setWordWrap(True)
        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.less_button)
        row.addWidget(self.more_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.first_button)
        layout.addLayout(row)
        layout.addWidget(self.text)
        self.first_button.clicked.connect(lambda: self.go(0))
        self.less_button.clicked.connect(self.less_certain)
        self.more_button.clicked.connect(self.more_certain)
        self._enable()

    def set_cells(self, layer, order: Sequence[int], scores: Mapping[int, float], note: str = "") -> None:
        """Review ``layer``'s cells in ``order`` (least certain first)."""
        self.layer = layer
        self.order = [int(i) for i in order]
        self.scores = {int(k): float(v) for k, v in scores.items()}
        self.rank = -1
        n = len(self.order)
        self.text.setText(f"Review: {n} cells, least certain first{note}." if n else "Review: no cells found.")
        self._enable()

    def clear(self, text: str = "Review: run Kaizen first.") -> None:
        self.layer = None
        self.order = []
        self.scores = {}
        self.rank = -1
        self.text.setText(text)
        self._enable()

    def _enable(self) -> None:
        n = len(self.order)
        self.first_button.setEnabled(n > 0)
        self.less_button.setEnabled(n > 0 and self.rank > 0)
        self.more_button.setEnabled(n > 0 and self.rank < n - 1)

    def less_certain(self) -> int | None:
        return self.go(max(0, self.rank - 1))

    def more_certain(self) -> int | None:
        return self.go(min(len(self.order) - 1, self.rank + 1))

    def go(self, rank: int) -> int | None:
        """Show the cell of ``rank`` (0 = least certain); returns its label, or None."""
        if not self.order:
            return None
        if self.layer is None or self.layer not in self.viewer.layers:
            self.clear("Review: the cells layer was removed; run Kaizen again.")
            return None
        self.rank = int(np.clip(rank, 0, len(self.order) - 1))
        label = self.order[self.rank]
        score = self.scores.get(label, float("nan"))
        where = f"{self.rank + 1} of {len(self.order)}, least certain first"
        self._enable()
        box = bounding_box(self.layer.data, label)
        if box is None:
            self.text.setText(f"Cell {label} (score {score:.3f}; {where}) is no longer in '{self.layer.name}'.")
            return label
        self.layer.selected_label = label
        self.mark(*box)
        self.viewer.layers.selection.active = self.layer
        focus(self.viewer, self.layer, *box)
        self.text.setText(f"Cell {label}: score {score:.3f} ({where}). Paint, fill or erase in "
                          f"'{self.layer.name}' to correct it.")
        return label

    def mark(self, lo: np.ndarray, hi: np.ndarray) -> None:
        """Frame the cell under review with a yellow rectangle (layer "Kaizen review")."""
        from . import _layers

        pad = max(2.0, 0.15 * float(np.max(hi[-2:] - lo[-2:] + 1.0)))
        (y0, x0), (y1, x1) = lo[-2:] - pad, hi[-2:] + pad
        lead = [float(v) for v in lo[:-2]]
        corners = np.array([[*lead, y0, x0], [*lead, y0, x1], [*lead, y1, x1], [*lead, y1, x0]], float)
        existing = self.viewer.layers[MARK_LAYER] if MARK_LAYER in self.viewer.layers else None
        if existing is not None and _layers.owned_by(existing, MARK_OWNER) and existing.ndim == corners.shape[1]:
            existing.data = [corners]
            existing.shape_type = ["rectangle"]
            return
        name = _layers.fresh_name(self.viewer, MARK_LAYER) if existing is not None else MARK_LAYER
        self.viewer.add_shapes(
            [corners], shape_type="rectangle", edge_color="yellow", face_color="transparent",
            edge_width=max(1.0, pad / 2), name=name, scale=self.layer.scale, translate=self.layer.translate,
            metadata={_layers.META_KEY: {"owner": MARK_OWNER}},
        )
