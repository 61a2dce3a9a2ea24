"""Adding and updating layers by name without ever destroying a person's work.

A layer this package made carries ``metadata['napari_kaizen'] = {'owner': ..., 'edited': bool}``.
When a person paints, fills or erases in such a labels layer, ``edited`` becomes True.
A new run updates its own unedited layer in place, and otherwise adds a new layer
("Kaizen cells [2]") so a corrected result is never overwritten.
"""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np

from ..engines import colour_plane_kind, grey_plane_of_colour

META_KEY = "napari_kaizen"


def _find(viewer, name: str):
    return viewer.layers[name] if name in viewer.layers else None


def owned_by(layer, owner: str) -> bool:
    """Whether ``layer`` was made by ``owner`` (a widget's id)."""
    meta = layer.metadata.get(META_KEY) if hasattr(layer, "metadata") else None
    return bool(meta) and meta.get("owner") == owner


def is_edited(layer) -> bool:
    """Whether a person edited this layer since this package wrote it."""
    meta = layer.metadata.get(META_KEY) or {}
    return bool(meta.get("edited"))


def fresh_name(viewer, base: str) -> str:
    """``base`` if unused, else ``'base [2]'``, ``'base [3]'``, ..."""
    if base not in viewer.layers:
        return base
    k = 2
    while f"{base} [{k}]" in viewer.layers:
        k += 1
    return f"{base} [{k}]"


#: What this package last wrote into each labels layer (weakly held): the engine's
#: result, against which a person's corrections are found (:func:`changed_region`).
_WRITTEN: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def written(layer) -> np.ndarray | None:
    """The labels this package last wrote into ``layer`` (None if none)."""
    return _WRITTEN.get(layer)


def changed_region(layer, plane: tuple[int, ...] = (), margin: int = 8) -> np.ndarray | None:
    """The cells a person changed in ``layer`` (the plane ``plane``), plus ``margin`` pixels.

    Every cell that has a changed pixel, as it was before and as it is now, counts as
    checked: the person looked at it. Returns a boolean mask of the plane, or None when
    the layer holds no result of this package (nothing to compare with) or nothing
    changed.
    """
    from scipy import ndimage as ndi

    before = written(layer)
    if before is None or before.shape != np.shape(layer.data):
        return None
    now = np.asarray(layer.data)
    if plane:
        before, now = before[plane], now[plane]
    changed = before != now
    if not changed.any():
        return None
    touched = np.isin(before, np.unique(before[changed])) & (before > 0)
    touched |= np.isin(now, np.unique(now[changed])) & (now > 0)
    return ndi.binary_dilation(touched | changed, iterations=int(margin))


def shapes_region(shapes_layer, shape: tuple[int, int], like) -> np.ndarray | None:
    """The pixels of a 2-D plane of image layer ``like`` inside ``shapes_layer``'s shapes.

    Rectangles, polygons and ellipses count (lines and paths enclose nothing); their
    vertices are taken through world coordinates into ``like``'s pixel grid, so a
    shapes layer drawn with another scale still marks the right pixels. None when no
    shape covers a pixel.
    """
    from skimage.draw import ellipse, polygon

    if shapes_layer is None or not len(shapes_layer.data):
        return None
    scale_s = np.asarray(shapes_layer.scale, float)[-2:]
    trans_s = np.asarray(shapes_layer.translate, float)[-2:]
    scale_i = np.asarray(like.scale, float)[-2:]
    trans_i = np.asarray(like.translate, float)[-2:]
    out = np.zeros(shape, bool)
    for verts, kind in zip(shapes_layer.data, shapes_layer.shape_type):
        v = (np.asarray(verts, float)[:, -2:] * scale_s + trans_s - trans_i) / scale_i
        if kind in ("rectangle", "polygon"):
            rr, cc = polygon(v[:, 0], v[:, 1], shape=shape)
        elif kind == "ellipse":
            lo, hi = v.min(0), v.max(0)
            centre, radius = (lo + hi) / 2, np.maximum((hi - lo) / 2, 0.5)
            rr, cc = ellipse(centre[0], centre[1], radius[0], radius[1], shape=shape)
        else:
            continue
        out[rr, cc] = True
    return out if out.any() else None


def _track_edits(layer) -> None:
    def mark(event=None):
        meta = dict(layer.metadata.get(META_KEY) or {})
        if meta.get("_writing"):
            return
        meta["edited"] = True
        layer.metadata[META_KEY] = meta

    layer.events.paint.connect(mark)
    if hasattr(layer.events, "labels_update"):
        layer.events.labels_update.connect(mark)


def _writable(viewer, name: str, owner: str, kind: str, ndim: int | None = None):
    layer = _find(viewer, name)
    if layer is None:
        return None
    if layer.__class__.__name__.lower() != kind or not owned_by(layer, owner) or is_edited(layer):
        return False
    if ndim is not None and getattr(layer.data, "ndim", ndim) != ndim:
        # A 2-D result must not be forced into a stack-shaped layer (or back): its
        # scale and translate would no longer fit. Keep the old one, add a new one.
        return False
    return layer


def breathe() -> None:
    """Let the event loop take a turn (timers, repaints), without user input.

    Making a layer costs napari hundreds of milliseconds (visuals, first paint); a
    widget that adds three layers in one go freezes the window for all of them. Called
    after each new layer, the stall is one layer long (half of one with
    :func:`add_in_turns`). User input is held back, so no click can start something new
    in the middle of a draw.
    """
    from qtpy.QtCore import QEventLoop
    from qtpy.QtWidgets import QApplication

    app = QApplication.instance()
    if app is not None:
        app.processEvents(QEventLoop.ProcessEventsFlag.ExcludeUserInputEvents)


def add_in_turns(add, data, *, visible: bool = True, prepare=None, **kwargs: Any):
    """Add a layer with ``add(data, **kwargs)`` in two event-loop turns: made hidden, then shown.

    Adding a visible layer is napari's costliest single step: in one go it builds the
    layer's controls and visuals, slices the data, uploads the texture and repaints.
    Made hidden, the layer is only built; showing it after a turn (:func:`breathe`)
    does the rest. Each half stalls the window about as long as, or less than,
    napari's own ``add_labels`` of a visible labels layer; the layer ends up exactly
    as ``add(data, visible=visible, **kwargs)`` makes it.

    Parameters
    ----------
    add : callable
        ``viewer.add_image``, ``viewer.add_labels`` or ``viewer.add_points``.
    data : array-like
        The layer's data.
    visible : bool
        Whether the layer is shown in the end.
    prepare : callable, optional
        ``prepare(layer)`` right after it is made, before any other code (event-loop
        turns included) sees it.
    **kwargs
        The other keyword arguments of ``add``.

    Returns
    -------
    napari.layers.Layer
        The new layer.
    """
    layer = add(data, visible=False, **kwargs)
    if prepare is not None:
        prepare(layer)
    breathe()
    if visible:
        layer.visible = True
        breathe()
    return layer


def prewarm() -> None:
    """Import napari's layer visuals now (docking), not when the first result layer appears."""
    import importlib

    # pandas: napari imports it lazily for the first layer with features (~0.4 s).
    for module in ("pandas", "napari._vispy.layers.image", "napari._vispy.layers.labels",
                   "napari._vispy.layers.points", "napari._vispy.layers.shapes"):
        try:
            importlib.import_module(module)
        except ImportError:  # pragma: no cover - a napari that moved them: only a little slower
            pass


def set_image(viewer, name: str, data: np.ndarray, *, owner: str, **kwargs: Any):
    """Add image layer ``name`` or replace the data of this owner's layer of that name.

    Contrast limits are set when the layer is made and left to the person afterwards.
    A same-named layer the person made (or one of another type) is left alone and a
    fresh name is used.
    """
    layer = _writable(viewer, name, owner, "image", np.ndim(data))
    if layer:
        layer.data = data
        return layer
    if layer is False:
        name = fresh_name(viewer, name)
    return add_in_turns(viewer.add_image, data, name=name, metadata={META_KEY: {"owner": owner}}, **kwargs)


def set_labels(viewer, name: str, data: np.ndarray, *, owner: str, features: Any = None, **kwargs: Any):
    """Add labels layer ``name`` or update this owner's *unedited* layer of that name.

    If the existing layer was edited by a person (or is not ours), a new layer with a
    fresh name is added instead, so corrections are never lost.
    """
    layer = _writable(viewer, name, owner, "labels", np.ndim(data))
    if layer:
        meta = dict(layer.metadata.get(META_KEY) or {})
        meta["_writing"] = True
        layer.metadata[META_KEY] = meta
        try:
            layer.data = data
            _WRITTEN[layer] = np.array(data, copy=True)
            if features is not None:
                layer.features = features
        finally:
            meta = dict(layer.metadata.get(META_KEY) or {})
            meta.pop("_writing", None)
            layer.metadata[META_KEY] = meta
        return layer
    if layer is False:
        name = fresh_name(viewer, name)

    def prepare(layer) -> None:
        _WRITTEN[layer] = np.array(data, copy=True)
        if features is not None:
            layer.features = features
        _track_edits(layer)

    return add_in_turns(viewer.add_labels, data, name=name, metadata={META_KEY: {"owner": owner, "edited": False}},
                        prepare=prepare, **kwargs)


def set_points(viewer, name: str, coords: np.ndarray, *, owner: str, features: Any = None, **kwargs: Any):
    """Add or update a points layer (this owner's of that name)."""
    layer = _writable(viewer, name, owner, "points")
    coords = np.asarray(coords, dtype=float).reshape(-1, 2)
    if layer:
        layer.data = coords
        if features is not None:
            layer.features = features
        for key, value in kwargs.items():
            setattr(layer, key, value)
        return layer
    if layer is False:
        name = fresh_name(viewer, name)
    return add_in_turns(viewer.add_points, coords, name=name, metadata={META_KEY: {"owner": owner}},
                        features=features, **kwargs)


def image_layer_problem(layer, *, missing: str = "open an image (or File > Open Sample > napari-kaizen) and choose it above"
                        ) -> str | None:
    """Why ``layer`` cannot be segmented, in one line for the status bar; None if it can.

    ``missing`` finishes the message for no layer at all (what the person should do).
    """
    if layer is None:
        return f"No image layer: {missing}."
    multiscale = getattr(layer, "multiscale", False)
    base = layer.data[0] if multiscale else layer.data
    if 0 in np.shape(base):
        return f"'{layer.name}' is empty (shape {np.shape(base)}): choose an image with pixels."
    if getattr(layer, "rgb", False):
        from ..tiled import strided_sample

        # Colours are told apart on a regular sample, as a tiled run tells them (a
        # pyramid: on its coarsest level), so a huge lazy layer is not read whole here.
        data = layer.data[-1] if multiscale else layer.data
        sample = strided_sample(data) if len(data.shape) == 3 else np.asarray(data)
        if colour_plane_kind(sample, say=False) is None:
            return (f"'{layer.name}' is a colour RGB image on a dark field: split its channels (right-click > "
                    "Split RGB) and choose the nucleus (or cell) stain.")
    return None


def image_layers(viewer) -> list:
    """Image layers of the viewer, in order."""
    from napari.layers import Image

    return [layer for layer in viewer.layers if isinstance(layer, Image)]


def shapes_layers(viewer) -> list:
    """Shapes layers of the viewer, in order."""
    from napari.layers import Shapes

    return [layer for layer in viewer.layers if isinstance(layer, Shapes)]


def labels_layers(viewer) -> list:
    """Labels layers of the viewer, in order."""
    from napari.layers import Labels

    return [layer for layer in viewer.layers if isinstance(layer, Labels)]


def current_plane(viewer, layer, *, max_pixels: int | None = None) -> tuple[np.ndarray, tuple[int, ...]]:
    """The 2-D plane of ``layer`` the viewer is showing, and its index in the stack.

    An RGB(A) image gives its grey plane when it has one (a grey image stored as
    colour, a colour picture of a bright field: :func:`_grey`); another colour one keeps
    its colour axis (the engine's input check names the problem).
    With ``max_pixels``, a regular subsample of at most about that many pixels (a
    quick look at a huge or lazy plane, e.g. to guess its kind), read without loading
    the whole plane.
    """
    data = layer.data
    if hasattr(data, "__getitem__") and isinstance(data, list):  # multiscale
        data = data[-1] if max_pixels else data[0]
    n_lead = spatial_ndim(layer) - 2
    h, w = data.shape[max(n_lead, 0) : max(n_lead, 0) + 2]
    step = max(1, int(np.ceil(np.sqrt(h * w / max_pixels)))) if max_pixels else 1
    thin = (slice(None, None, step), slice(None, None, step))
    if n_lead <= 0:
        return _grey(layer, np.asarray(data[thin] if step > 1 else data)), ()
    # The viewer's current world point, in this layer's data coordinates.
    pos = np.asarray(layer.world_to_data(tuple(viewer.dims.point)[-layer.ndim :]), dtype=float)
    index = [int(np.clip(round(pos[axis]), 0, data.shape[axis] - 1)) for axis in range(n_lead)]
    return _grey(layer, np.asarray(data[(*index, *thin)] if step > 1 else data[tuple(index)])), tuple(index)


def _grey(layer, plane: np.ndarray) -> np.ndarray:
    """A plane of an RGB layer as its grey plane when it has one
    (:func:`~napari_kaizen.engines._common.normalize.grey_plane_of_colour`, as the
    engines read it), else as it is."""
    grey = grey_plane_of_colour(plane, say=False) if getattr(layer, "rgb", False) else None
    return plane if grey is None else grey


def spatial_ndim(layer) -> int:
    """How many axes of ``layer.data`` are space or planes (an RGB layer's colour axis is not)."""
    return int(np.ndim(layer.data[0] if isinstance(layer.data, list) else layer.data)) - (
        1 if getattr(layer, "rgb", False) else 0)


class PlaneTarget:
    """Where one run's labels go: a 2-D layer, one plane of a stack-shaped layer, or every plane.

    Every widget places results the same way (int32 ids, the dtype engines yield): a
    2-D result is copied (painting edits a layer's array in place, and the engine's
    array may be kept, e.g. in Kaizen's history); a plane of a stack is written into a
    stack-shaped array whose other planes stay as they were; an every-plane run fills
    its planes as they finish, then takes the final stack (ids unique across planes).

    Parameters
    ----------
    source : napari layer
        The image layer being segmented.
    mode : {'2d', 'plane', 'stack'}
    plane : tuple of int
        The plane's index for ``mode='plane'``.
    base : ndarray, optional
        For ``mode='plane'``: the stack to write into (e.g. the previous run's unedited
        layer data), else zeros.
    """

    def __init__(self, source, mode: str, plane: tuple[int, ...] = (), base: np.ndarray | None = None) -> None:
        self.source = source
        self.mode = mode
        self.plane = tuple(plane)
        self.stack: np.ndarray | None = None
        if mode in ("plane", "stack"):
            shape = np.shape(source.data)
            ok = base is not None and base.shape == shape
            self.stack = np.array(base, dtype=np.int32, copy=True) if ok else np.zeros(shape, np.int32)

    def place(self, labels: np.ndarray, plane: tuple[int, ...] | None = None, *, final: bool = False) -> np.ndarray:
        """The layer data after ``labels`` arrived (of ``plane`` in an every-plane run)."""
        if self.mode == "2d":
            return np.array(labels, dtype=np.int32, copy=True)
        if self.mode == "plane":
            self.stack[self.plane] = labels
        elif final or plane is None:
            self.stack = np.array(labels, dtype=np.int32, copy=True)
        else:
            self.stack[plane] = labels
        return self.stack

    def detach(self) -> None:
        """The person painted in the layer that holds our array: write to a new one.

        A one-plane run starts the new layer empty (it shows only this plane's result);
        an every-plane run copies what it has (its final stack replaces it all anyway).
        """
        if self.stack is not None:
            self.stack = np.zeros_like(self.stack) if self.mode == "plane" else np.array(self.stack, copy=True)

    def placement(self, ndim: int) -> dict[str, Any]:
        """Scale / translate of the source layer's last ``ndim`` axes."""
        if self.source is None:
            return {}
        return {"scale": tuple(self.source.scale)[-ndim:], "translate": tuple(self.source.translate)[-ndim:]}
