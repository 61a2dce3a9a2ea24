"""Every snapshot of a Kaizen run, and the slider that scrubs through them.

Snapshots are small (labels plus ``O(proposals)`` numbers); the internal and error
images are rebuilt from the run's shared trace only for the snapshot being drawn. The
labels of every snapshot but the newest are kept zlib-compressed once they pass
:data:`PACK_MIN_BYTES` (19x on a dense 2048² field: 37 ms to pack, 18 ms to unpack),
so a long run on a large image keeps its whole history in memory (the paper loop
takes ~800 iterations on a dense 2048² field: 13.7 GB of raw labels, 0.7 GB packed);
a snapshot is unpacked only when it is drawn.

"Follow live": while the slider sits at its right end, each new snapshot moves it
along and the view shows the newest iteration; once a person drags it back, new
snapshots only extend its range and the view stays on the chosen iteration until the
slider is returned to the end.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator
from dataclasses import replace
from typing import Any

import numpy as np
from qtpy.QtCore import Qt, QTimer, Signal
from qtpy.QtWidgets import QHBoxLayout, QLabel, QSlider, QWidget


def keepable(snapshots: Iterable[Any]) -> Iterator[Any]:
    """Re-yield ``snapshots`` with labels that no later step can change.

    Run in the worker thread, between two steps of the engine. A snapshot whose
    ``labels`` is a view of something else (e.g. of the engine's working tensor, which
    the next iteration updates in place) gets its own copy before the engine
    continues; arrays that already own their memory are passed on as they are.
    """
    it = iter(snapshots)
    try:
        for snap in it:
            labels = getattr(snap, "labels", None)
            if isinstance(labels, np.ndarray) and labels.base is not None:
                snap = replace(snap, labels=np.array(labels, copy=True))
            yield snap
    finally:
        close = getattr(it, "close", None)
        if close is not None:  # cancelling closes the engine's generator at once
            close()


#: Labels arrays of at least this many bytes are compressed once a newer snapshot
#: arrives (smaller ones cost more to pack than they save).
PACK_MIN_BYTES = 1 << 20


class _Packed:
    """A snapshot whose labels are held zlib-compressed (level 1: fast, and label
    images are mostly long runs of one id)."""

    __slots__ = ("data", "dtype", "shape", "snap")

    def __init__(self, snap: Any) -> None:
        labels = np.ascontiguousarray(snap.labels)
        self.shape, self.dtype = labels.shape, labels.dtype
        self.data = zlib.compress(labels.tobytes(), 1)
        self.snap = replace(snap, labels=None)

    @property
    def nbytes(self) -> int:
        return len(self.data)

    def unpack(self) -> Any:
        labels = np.frombuffer(zlib.decompress(self.data), dtype=self.dtype).reshape(self.shape)
        return replace(self.snap, labels=labels.copy())  # writable, like the original


def _packable(snap: Any) -> bool:
    labels = getattr(snap, "labels", None)
    return isinstance(labels, np.ndarray) and labels.nbytes >= PACK_MIN_BYTES


class SnapshotHistory:
    """The snapshots of one run, in the order they were yielded.

    With ``every plane``, only the plane being computed (or the last one) is kept:
    a new plane starts a new history, and the final snapshot of the stack is added
    at its end. Indexing returns the snapshot as it was yielded (large labels are
    unpacked on access; the last one unpacked is cached, since drawing one iteration
    reads it several times).
    """

    def __init__(self) -> None:
        self._snaps: list[Any] = []
        self.plane: tuple[int, ...] | None = None
        self._cache: tuple[int, Any] | None = None

    def clear(self) -> None:
        self._snaps.clear()
        self.plane = None
        self._cache = None

    def append(self, snap: Any) -> bool:
        """Add ``snap``; True if it started a new plane (the history was reset)."""
        plane = getattr(snap, "plane", None)
        reset = plane is not None and plane != self.plane
        if reset:
            self.clear()
            self.plane = plane
        if self._snaps and not isinstance(self._snaps[-1], _Packed) and _packable(self._snaps[-1]):
            self._snaps[-1] = _Packed(self._snaps[-1])
        self._snaps.append(snap)
        return reset

    @property
    def nbytes(self) -> int:
        """Bytes held by the labels of all snapshots (compressed where packed)."""
        total = 0
        for s in self._snaps:
            if isinstance(s, _Packed):
                total += s.nbytes
            elif isinstance(getattr(s, "labels", None), np.ndarray):
                total += s.labels.nbytes
        return total

    def __len__(self) -> int:
        return len(self._snaps)

    def __getitem__(self, index: int) -> Any:
        index = range(len(self._snaps))[index]  # negative indices, IndexError
        item = self._snaps[index]
        if not isinstance(item, _Packed):
            return item
        if self._cache is None or self._cache[0] != index:
            self._cache = (index, item.unpack())
        return self._cache[1]

    @property
    def last(self) -> Any:
        return self[-1] if self._snaps else None


class IterationScrubber(QWidget):
    """A slider over the history's indices with a "follow live" right end.

    Signals
    -------
    requested(int)
        The person moved the slider to this index (coalesced: while dragging over a
        large image, only the position where the slider rests is drawn).
    """

    requested = Signal(int)

    def __init__(self, parent: QWidget | None = None, *, coalesce_ms: int = 40) -> None:
        super().__init__(parent)
        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.slider.setRange(0, 0)
        self.slider.setEnabled(False)
        self.slider.setToolTip(
            "Scrub through the iterations (during or after a run). At the right end the view "
            "follows the run live; anywhere else it stays on the chosen iteration."
        )
        self.label = QLabel("iteration –")
        self.label.setMinimumWidth(90)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.slider, 1)
        layout.addWidget(self.label)
        self._pending: int | None = None
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(int(coalesce_ms))
        self._timer.timeout.connect(self._emit)
        self.slider.valueChanged.connect(self._moved)

    @property
    def following(self) -> bool:
        """Whether the slider is at its right end (the view follows new snapshots)."""
        return self.slider.value() >= self.slider.maximum()

    @property
    def index(self) -> int:
        return int(self.slider.value())

    def reset(self) -> None:
        self._set(0, 0)
        self.slider.setEnabled(False)

    def set_count(self, n: int) -> None:
        """The history now holds ``n`` snapshots; keep following if we were."""
        follow = self.following
        top = max(0, int(n) - 1)
        self._set(top, top if follow else min(self.slider.value(), top))
        self.slider.setEnabled(n > 1)

    def set_index(self, index: int) -> None:
        """Move the slider without emitting :attr:`requested`."""
        self._set(self.slider.maximum(), int(index))

    def _set(self, maximum: int, value: int) -> None:
        blocked = self.slider.blockSignals(True)
        try:
            self.slider.setMaximum(maximum)
            self.slider.setValue(value)
        finally:
            self.slider.blockSignals(blocked)

    def _moved(self, value: int) -> None:
        self._pending = int(value)
        if not self._timer.isActive():
            self._timer.start()

    def _emit(self) -> None:
        value, self._pending = self._pending, None
        if value is not None:
            self.requested.emit(value)
