"""The four layers the Kaizen widget draws a snapshot into.

"Kaizen internal image" and "Kaizen error image" (the engine's images, rebuilt for
the drawn snapshot only), "Kaizen proposals" (points, green where the proposed cell
was accepted, red where it was rejected) and "Kaizen cells" (labels, with a
``features`` table of ``index`` and ``score`` per cell, so the Export widget's CSV
gets a ``score`` column).

The cells layer of a run is chosen once, at its first draw, through
:func:`._layers.set_labels`: the previous run's layer is updated in place only if
nobody edited it, otherwise a new "Kaizen cells [2]" is made. A person who paints in
the layer while the run goes on keeps that edit too: the next draw moves on to a new
layer. The layer is always handed a copy of the snapshot's labels, because painting
changes a layer's array in place and the history must keep what the engine yielded.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _layers

OWNER = "kaizen-widget"
INTERNAL_LAYER = "Kaizen internal image"
ERROR_LAYER = "Kaizen error image"
PROPOSALS_LAYER = "Kaizen proposals"
CELLS_LAYER = "Kaizen cells"

ACCEPTED_COLOR = (0.15, 0.9, 0.25, 1.0)
REJECTED_COLOR = (1.0, 0.2, 0.2, 1.0)

#: Images are drawn on the engine's normalised scale (1st / 99.8th percentile -> 0 / 1).
#: Fixed limits keep one colour scale across iterations, so scrubbing compares like
#: with like (and no per-frame statistics run on the GUI thread).
INTERNAL_LIMITS = (0.0, 1.0)
ERROR_LIMITS = (0.0, 1.0)


def scores_table(scores: dict[int, float] | Any):
    """``features`` for a labels layer: one row per label, ``index`` and ``score``."""
    import pandas as pd

    ids = sorted(int(k) for k in scores)
    return pd.DataFrame(
        {"index": np.asarray(ids, dtype=np.int64),
         "score": np.asarray([float(scores[i]) for i in ids], dtype=np.float64)}
    )


class KaizenLayers:
    """Draws snapshots of one run into the viewer's Kaizen layers.

    Parameters
    ----------
    viewer : napari.Viewer
    """

    def __init__(self, viewer) -> None:
        self.viewer = viewer
        self.cells_layer = None
        self._source = None
        self._mode = "2d"  # '2d', 'plane' (current plane of a stack) or 'stack' (every plane)
        self.target: _layers.PlaneTarget | None = None
        self._drawn: dict[str, object] = {}

    # ------------------------------------------------------------------ a run
    def begin(self, source, mode: str, plane: tuple[int, ...] = ()) -> None:
        """Start drawing a new run of ``source`` (an image layer).

        Parameters
        ----------
        mode : {'2d', 'plane', 'stack'}
            A 2-D layer; one plane (``plane``) of a stack, drawn into a stack-shaped
            labels layer whose other planes stay empty; or every plane.
        """
        self._source = source
        self._mode = mode
        self.cells_layer = None
        self.target = _layers.PlaneTarget(source, mode, plane)

    @property
    def source(self):
        return self._source

    def placement(self, ndim: int = 2) -> dict[str, Any]:
        """Scale / translate of the source's last ``ndim`` axes."""
        src = self._source
        if src is None:
            return {}
        return {"scale": tuple(src.scale)[-ndim:], "translate": tuple(src.translate)[-ndim:]}

    # ------------------------------------------------------------------ drawing
    def draw(self, snap, *, labels: bool = True, features=None) -> None:
        """Draw ``snap`` into all four layers (only the labels if it carries no images).

        Parameters
        ----------
        labels : bool
            Also draw the labels (False leaves the cells layer as it is, e.g. when the
            person edited it and scrubs back).
        features : DataFrame, optional
            The cells layer's features; default from ``snap.scores`` (2-D runs).
        """
        has_images = getattr(snap, "trace", None) is not None
        if has_images:
            self.draw_images(snap)
        # Labels before points on the first draw, so the points end up on top.
        if labels and snap.labels is not None:
            self.draw_labels(snap, features=features)
        if has_images:
            self.draw_proposals(snap)

    def draw_images(self, snap) -> None:
        where = self.placement(2)
        # Each property rebuilds its image from the trace: read each once per frame.
        internal, error = snap.internal, snap.error
        self._track(INTERNAL_LAYER, _layers.set_image(
            self.viewer, self._name(INTERNAL_LAYER), internal, owner=OWNER, colormap="green",
            contrast_limits=INTERNAL_LIMITS, blending="additive", visible=False, **where))
        self._track(ERROR_LAYER, _layers.set_image(
            self.viewer, self._name(ERROR_LAYER), error, owner=OWNER, colormap="magma",
            contrast_limits=ERROR_LIMITS, visible=True, **where))

    def point_size(self, snap) -> float:
        """A quarter of a patch on the input grid: visible, yet smaller than a nucleus."""
        trace = getattr(snap, "trace", None)
        if trace is None:
            return 8.0
        h_in = trace.input_image.shape[0]
        h_work = max(1, trace.work_shape[0])
        return max(3.0, trace.patch_size * (h_in / h_work) / 4.0)

    def draw_proposals(self, snap) -> None:
        import pandas as pd

        coords = np.asarray(snap.proposals, dtype=float).reshape(-1, 2)
        accepted = np.asarray(snap.accepted, dtype=bool).reshape(-1)
        gains = np.asarray(snap.gains, dtype=float).reshape(-1)
        features = pd.DataFrame({"accepted": accepted, "gain": gains})
        cell_ids = np.asarray(getattr(snap, "cell_ids", ()), dtype=np.int64).reshape(-1)
        if len(cell_ids) == len(coords):  # the label each kept proposal went to (0: rejected)
            features["cell"] = cell_ids
        colors = np.array([ACCEPTED_COLOR if a else REJECTED_COLOR for a in accepted], dtype=float).reshape(-1, 4)
        kwargs: dict[str, Any] = {"face_color": colors} if len(coords) else {}
        name = self._name(PROPOSALS_LAYER)
        if name in self.viewer.layers and _layers.owned_by(self.viewer.layers[name], OWNER):
            # Ours already: its styling (point size included) stays as the person left it;
            # every property set here costs napari a refresh, so set only what changes.
            layer = _layers.set_points(self.viewer, name, coords, owner=OWNER, features=features, **kwargs)
        else:
            layer = _layers.set_points(self.viewer, name, coords, owner=OWNER, features=features,
                                       size=self.point_size(snap), border_color="black", border_width=0.1,
                                       opacity=0.9, **kwargs, **self.placement(2))
        self._track(PROPOSALS_LAYER, layer)

    def draw_labels(self, snap, *, features=None) -> None:
        plane = getattr(snap, "plane", None)
        if self._alive(self.cells_layer) and _layers.is_edited(self.cells_layer):
            self.target.detach()
        data = self.target.place(snap.labels, plane, final=plane is None)
        if features is None:
            # Every-plane runs get their table (ids offset per plane) with the final stack.
            features = scores_table({} if self._mode == "stack" else (getattr(snap, "scores", None) or {}))
        name = self.cells_layer.name if self._alive(self.cells_layer) else CELLS_LAYER
        # Translucent, so the error image under it shows what is still unexplained.
        self.cells_layer = _layers.set_labels(self.viewer, name, data, owner=OWNER, features=features,
                                              opacity=0.6, **self.placement(data.ndim))

    def _name(self, base: str) -> str:
        """The name to draw ``base`` under: the layer used before, if it is still ours.

        A layer of the same name that a person made is left alone (the helpers in
        :mod:`._layers` then add ``'base [2]'``); remembering that layer keeps every
        later draw going to it instead of adding ``[3]``, ``[4]``, ...
        """
        layer = self._drawn.get(base)
        if self._alive(layer) and _layers.owned_by(layer, OWNER):
            return layer.name
        return base

    def _track(self, base: str, layer) -> None:
        self._drawn[base] = layer

    def _alive(self, layer) -> bool:
        return layer is not None and layer in self.viewer.layers
