"""Tiled prediction: overlapping windows, each predicted once, averaged where they overlap.

Large micrographs do not fit a network in one piece (or fit, but slowly and at the cost
of all memory); predictions near a window's edge are also worse than in its middle.
So the image is cut into overlapping tiles, each tile's output is weighted by a window
that is high in the middle and low at the edges, and the weighted outputs are summed
and divided by the summed weights (a weighted average over overlapping windows, as the
U-Net paper's overlap-tile strategy does).
"""

from __future__ import annotations

from collections.abc import Callable, Generator

import numpy as np

from .snapshots import Snapshot


def tile_starts(length: int, tile: int, step: int) -> list[int]:
    """Start offsets of tiles of size ``tile`` covering ``[0, length)`` with stride ``step``.

    The last tile is flush with the end, so every pixel is covered and no tile leaves
    the image.
    """
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, max(1, step)))
    starts.append(length - tile)
    return sorted(set(starts))


def balanced_tile(length: int, tile: int, overlap: int, multiple_of: int = 1) -> int:
    """The side of the fewest, equal tiles of at most ``tile`` px that cover ``length`` px.

    Tiles of the full ``tile`` side waste work when the image is a little larger than
    one: 1365 px in tiles of 1024 overlapping by 64 is two tiles of 1024 sharing 683 px,
    1.5x the pixels needed. The same two tiles cut to 716 px each share only the overlap.

    Examples
    --------
    >>> balanced_tile(1365, 1024, 64, 4), balanced_tile(900, 1024, 64, 4), balanced_tile(4000, 1024, 64, 4)
    (716, 900, 852)
    """
    m = max(1, int(multiple_of))
    tile = int(np.ceil(max(tile, m) / m) * m)
    if length <= tile:
        return int(np.ceil(length / m) * m)
    overlap = min(int(overlap), tile // 2)
    n = int(np.ceil((length - overlap) / (tile - overlap)))
    side = int(np.ceil((length + (n - 1) * overlap) / n))
    return min(tile, int(np.ceil(side / m) * m))


def blend_window(shape: tuple[int, int], margin: int) -> np.ndarray:
    """A weight that ramps linearly from near 0 to 1 over ``margin`` pixels at each edge.

    Never exactly zero, so a pixel covered by a single tile (image borders) keeps its
    prediction.
    """
    def ramp(n: int) -> np.ndarray:
        if margin <= 0:
            return np.ones(n, np.float32)
        idx = np.arange(n, dtype=np.float32)
        r = np.minimum(idx + 1, n - idx) / float(margin + 1)
        return np.clip(r, 1e-3, 1.0).astype(np.float32)

    return np.outer(ramp(shape[0]), ramp(shape[1]))


def _pad_to(image: np.ndarray, height: int, width: int) -> np.ndarray:
    ph, pw = max(0, height - image.shape[-2]), max(0, width - image.shape[-1])
    if ph == 0 and pw == 0:
        return image
    pad = [(0, 0)] * (image.ndim - 2) + [(0, ph), (0, pw)]
    return np.pad(image, pad, mode="reflect" if min(image.shape[-2:]) > 1 else "edge")


def iter_tiled_predict(
    predict: Callable,
    image: np.ndarray,
    *,
    tile: int = 256,
    overlap: int = 32,
    batch_size: int = 4,
    multiple_of: int = 1,
    device=None,
) -> Generator[Snapshot, None, np.ndarray]:
    """Predict ``image`` tile by tile; yield progress, return the averaged output.

    Use as ``output = yield from iter_tiled_predict(...)`` inside an engine generator.

    Parameters
    ----------
    predict : callable
        ``predict(batch) -> output`` on torch tensors: ``(B, C, h, w)`` float32 on
        ``device`` in, ``(B, K, h, w)`` out (same ``h, w``). Called under
        ``torch.inference_mode()``.
    image : ndarray, shape (H, W) or (C, H, W)
        Normalised input.
    tile : int
        Largest tile side in pixels (rounded up to ``multiple_of``); tiles are cut as
        equal as that allows (:func:`balanced_tile`).
    overlap : int
        Pixels shared by neighbouring tiles; also the width of the blending ramp.
    batch_size : int
        Tiles per forward pass.
    multiple_of : int
        The network's total stride: tiles and padded images are multiples of it.
    device : torch.device, optional
        Where ``predict`` runs; default CPU.

    Yields
    ------
    Snapshot
        ``stage='tiles'`` with the fraction of tiles done.

    Returns
    -------
    ndarray of float32, shape (K, H, W)
    """
    import torch

    device = device or torch.device("cpu")
    arr = np.asarray(image, dtype=np.float32)
    if arr.ndim == 2:
        arr = arr[None]
    _, height, width = arr.shape
    m = max(1, int(multiple_of))
    # Small images: one tile exactly the (padded) image size; larger ones the fewest
    # equal tiles, not full-size tiles that overlap by more than ``overlap``.
    th, tw = balanced_tile(height, tile, overlap, m), balanced_tile(width, tile, overlap, m)
    padded = _pad_to(arr, max(th, height), max(tw, width))
    ph, pw = padded.shape[-2:]
    overlap = int(min(overlap, th // 2, tw // 2))
    ys = tile_starts(ph, th, th - overlap)
    xs = tile_starts(pw, tw, tw - overlap)
    boxes = [(y, x) for y in ys for x in xs]
    window = blend_window((th, tw), overlap)
    acc: np.ndarray | None = None
    weight = np.zeros((ph, pw), np.float32)
    total = len(boxes)
    for start in range(0, total, max(1, batch_size)):
        chunk = boxes[start : start + batch_size]
        batch = np.stack([padded[:, y : y + th, x : x + tw] for y, x in chunk])
        with torch.inference_mode():
            out = predict(torch.from_numpy(batch).to(device))
            out = out.float().cpu().numpy()
        if acc is None:
            acc = np.zeros((out.shape[1], ph, pw), np.float32)
        for (y, x), o in zip(chunk, out):
            acc[:, y : y + th, x : x + tw] += o * window
            weight[y : y + th, x : x + tw] += window
        done = min(total, start + len(chunk))
        yield Snapshot(stage="tiles", progress=done / total, message=f"tile {done}/{total}")
    assert acc is not None
    acc /= np.maximum(weight, 1e-6)
    return acc[:, :height, :width]


def tiled_predict(predict: Callable, image: np.ndarray, **kwargs) -> np.ndarray:
    """Run :func:`iter_tiled_predict` to the end and return its output."""
    gen = iter_tiled_predict(predict, image, **kwargs)
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value
