"""Segment a huge (dask / zarr, multiscale) image layer tile by tile, drawing tiles as they finish.

The dock widgets call :func:`tiled_job` and run ``make()`` in a worker like any engine
run::

    make, draw = tiled_job(viewer, layer, engine_name, params, model_spec, device)
    self.runner.start(make, draw=draw)    # the widgets' SnapshotRunner (throttled draws)

The labels layer is a multiscale pyramid of zarr arrays (in a temporary folder unless
a ``store`` is given): napari loads only what is on screen, so no array of the image's
size is ever made, and a finished tile costs a refresh of the visible part only when
it is on screen. Arithmetic stays in :mod:`napari_kaizen.tiled`; this module only
hands arrays over and refreshes the layer.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from typing import Any


def _visible_box(layer: Any) -> tuple[int, int, int, int] | None:
    """The level-0 (y0, y1, x0, x1) box a layer shows now; None if napari cannot say."""
    try:
        corners = layer.corner_pixels
        level = int(getattr(layer, "data_level", 0) or 0)
        factors = getattr(layer, "downsample_factors", None)
        f = factors[level][-2:] if factors is not None else (1, 1)
        (y0, x0), (y1, x1) = corners[0][-2:], corners[1][-2:]
        return int(y0 * f[0]), int((y1 + 1) * f[0]), int(x0 * f[1]), int((x1 + 1) * f[1])
    except (AttributeError, IndexError, TypeError, ValueError):
        return None


def _overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int] | None) -> bool:
    if b is None:
        return True
    return a[0] < b[1] and b[0] < a[1] and a[2] < b[3] and b[2] < a[3]


def tiled_job(
    viewer: Any,
    layer: Any,
    engine_name: str,
    params: Any = None,
    model_spec: Any = None,
    device: str = "auto",
    *,
    tile: int | None = None,
    halo: int | None = None,
    store: Any = None,
    name: str | None = None,
) -> tuple[Callable[[], Any], Callable[[Any], None]]:
    """Prepare a tiled segmentation of an image layer for a worker thread.

    Parameters
    ----------
    viewer : napari.Viewer
    layer : napari.layers.Image
        A 2-D image layer: numpy, dask or zarr data, single- or multiscale (level 0
        is segmented); a colour one is read as its grey plane, when it has one
        (:func:`napari_kaizen.tiled.as_2d_source`).
    engine_name : str
        ``'classical'``, ``'kaizen'``, ``'unet'`` or ``'fcn'``.
    params : engine params, optional
    model_spec : str or loaded model, optional
        Weights path or ``'bundled:NAME'`` (default: the engine's default model).
    device : str
    tile, halo : int, optional
        Tile core side and halo in pixels (defaults as :func:`napari_kaizen.tiled.segment_tiled`).
    store : path or zarr store, optional
        Where the labels pyramid lives (default: a new temporary folder).
    name : str, optional
        The labels layer's name (default ``'<layer> labels'``).

    Returns
    -------
    make : callable
        ``make()`` returns the snapshot generator; run it in a worker thread.
    draw : callable
        ``draw(snapshot)`` on the GUI thread: adds the labels layer on the first call,
        then refreshes it when a tile in view has finished (or when tiles were
        skipped by a throttled runner). Works with every snapshot or only some.
    """
    from ..engines import get_engine
    from ..io.zarr import create_label_levels
    from ..tiled import as_2d_source, segment_tiled

    data = list(layer.data) if getattr(layer, "multiscale", False) else layer.data
    src = as_2d_source(data, name=f"layer '{layer.name}'")
    engine = get_engine(engine_name)
    shape = tuple(int(s) for s in src.shape)
    levels = create_label_levels(store if store is not None else tempfile.mkdtemp(prefix="kaizen_labels_", suffix=".zarr"),
                                 shape, name=name or f"{layer.name} labels")
    state: dict[str, Any] = {"labels": None, "last_tile": -1}
    title = name or f"{layer.name} labels"

    def make():
        return segment_tiled(engine, src, params, model=model_spec, device=device, tile=tile,
                             halo=halo, out=levels)

    def draw(snapshot: Any) -> None:
        labels = state["labels"]
        if labels is None:
            scale = tuple(layer.scale)[-2:]
            translate = tuple(layer.translate)[-2:]
            data = levels if len(levels) > 1 else levels[0]
            labels = viewer.add_labels(data, name=title, multiscale=len(levels) > 1, scale=scale, translate=translate)
            state["labels"] = labels
            return
        region = getattr(snapshot, "region", None)
        index = int(getattr(snapshot, "tile_index", -1))
        # A throttled runner draws only the newest snapshot: if tiles were skipped, one
        # of them may be on screen, so refresh (napari reloads only the visible part).
        skipped = index > state["last_tile"] + 1
        if index >= 0:
            state["last_tile"] = index
        if getattr(snapshot, "done", False):
            labels.refresh()
        elif region is not None and (skipped or _overlaps(region, _visible_box(labels))):
            labels.refresh(thumbnail=False, extent=False)

    make.levels = levels  # type: ignore[attr-defined]  (for tests and callers that want the arrays)
    return make, draw
