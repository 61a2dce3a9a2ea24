"""Run an engine's snapshot generator off the GUI thread, and draw at a bounded rate.

The engine generator runs in a napari ``thread_worker``. Between two snapshots it
passes a :class:`Gate`, which is where pause, single-step and cancel take effect: the
gate lives in the worker thread, so *Step* yields exactly one more snapshot (flags set
from the GUI thread would race with a worker that is already computing the next one).

Snapshots arrive on the GUI thread through Qt signals. Every one is handed to
``on_snapshot`` (cheap: e.g. append to a history), but drawing (updating layers, the
expensive part) happens at most every ``min_interval_ms``, and only for the newest
snapshot: a fast engine can never flood napari with redraws.

Computing and drawing take turns. After each snapshot the worker waits until the GUI
thread has received it (and drawn it, when it was due): a draw then never competes
with the engine for the interpreter and the CPU. On two cores, with the engine's
Python and numpy running beside napari's layer creation, the first draw of a run took
two to three times as long as the same layer creation alone; a snapshot that arrives
before the next draw is due is acknowledged at once, so the engine is not slowed by
the throttle; while the engine then computes, the throttle's timer does not draw it
(for up to ``MAX_HOLD_MS``): the next snapshot's arrival draws the newest one instead.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from qtpy.QtCore import QObject, QTimer, Signal

from ..errors import KaizenError

#: The longest wait between two draws that ``max_busy`` can impose.
MAX_ADAPTIVE_INTERVAL_MS = 1000

#: The longest a snapshot waits to be drawn while the engine computes the next one (ms).
MAX_HOLD_MS = 1000

#: The longest the worker waits for the GUI thread to take a snapshot (seconds): a GUI
#: thread that is blocked (a test, a modal dialog) must not stop the engine for good.
ACK_TIMEOUT_S = 2.0


class Gate:
    """Thread-safe run / pause / step / cancel control, consulted before each snapshot."""

    def __init__(self, paused: bool = False) -> None:
        self._cond = threading.Condition()
        self._paused = paused
        self._steps = 0
        self._cancelled = False
        self._sent = 0
        self._taken = 0

    def wait_turn(self) -> bool:
        """Block while paused (and no step is pending); False once cancelled."""
        with self._cond:
            while self._paused and self._steps == 0 and not self._cancelled:
                self._cond.wait(0.1)
            if self._cancelled:
                return False
            if self._paused and self._steps > 0:
                self._steps -= 1
            return True

    def pause(self) -> None:
        with self._cond:
            self._paused = True
            self._steps = 0
            self._cond.notify_all()

    def resume(self) -> None:
        with self._cond:
            self._paused = False
            self._steps = 0
            self._cond.notify_all()

    def step(self, n: int = 1) -> None:
        with self._cond:
            self._paused = True
            self._steps += n
            self._cond.notify_all()

    def cancel(self) -> None:
        with self._cond:
            self._cancelled = True
            self._cond.notify_all()

    def sent(self) -> None:
        """The worker hands over one more snapshot."""
        with self._cond:
            self._sent += 1

    def taken(self) -> None:
        """The GUI thread is done with a snapshot (received, and drawn if it was due)."""
        with self._cond:
            self._taken += 1
            self._cond.notify_all()

    def wait_taken(self, timeout: float = ACK_TIMEOUT_S) -> None:
        """Block the worker until every snapshot sent was taken (or cancel, or ``timeout``)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._taken < self._sent and not self._cancelled:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self._cond.wait(left)

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def computing(self) -> bool:
        """Whether the worker may be computing: every snapshot sent was taken, and it is
        neither cancelled nor paused with no step to take."""
        with self._cond:
            idle = self._cancelled or (self._paused and self._steps == 0)
            return self._taken >= self._sent and not idle

    @property
    def cancelled(self) -> bool:
        return self._cancelled


def gated(generator: Iterator[Any], gate: Gate, *, hand_off: bool = False) -> Iterator[Any]:
    """Yield from ``generator``, asking ``gate`` before producing each item.

    Cancelling closes ``generator`` (the engine's cleanup runs) and ends the iteration.
    With ``hand_off``, the next item is computed only once the GUI thread took the last
    one (:meth:`Gate.taken`).
    """
    try:
        while gate.wait_turn():
            try:
                item = next(generator)
            except StopIteration:
                return
            if hand_off:
                gate.sent()
            yield item
            if hand_off:
                gate.wait_taken()
    finally:
        close = getattr(generator, "close", None)
        if close is not None:
            close()


def error_message(exc: BaseException) -> str:
    """One line for a person: our own errors as they are, others with their type."""
    if isinstance(exc, KaizenError):
        return str(exc)
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{exc.__class__.__name__}: {text}" if text else exc.__class__.__name__


class SnapshotRunner(QObject):
    """Runs one snapshot generator at a time in a worker thread.

    Signals
    -------
    started()
    finished(bool)
        ``True`` if the run was cancelled.
    errored(str)
        A one-line message.
    paused_changed(bool)

    Parameters
    ----------
    min_interval_ms : int
        Minimum time between two draws.
    max_busy : float, optional
        Largest share of the GUI thread's time that drawing may take: after a draw
        that took ``d`` ms the next waits at least ``d * (1 / max_busy - 1)`` ms
        (never less than ``min_interval_ms``, never more than
        :data:`MAX_ADAPTIVE_INTERVAL_MS`). Draw cost depends on the machine
        (software OpenGL, a loaded CPU, image size), so a fixed interval alone can
        leave napari with no time for the person. ``None``: fixed interval.
    """

    started = Signal()
    finished = Signal(bool)
    errored = Signal(str)
    paused_changed = Signal(bool)

    def __init__(self, parent: QObject | None = None, *, min_interval_ms: int = 100,
                 max_busy: float | None = None) -> None:
        super().__init__(parent)
        self._min_interval = int(min_interval_ms)
        self._max_busy = max_busy
        self.worker = None
        self.gate: Gate | None = None
        self._pending: Any = None
        self._draw: Callable[[Any], None] | None = None
        self._on_snapshot: Callable[[Any], None] | None = None
        self._timer = QTimer(self)
        self._timer.setInterval(int(min_interval_ms))
        self._timer.timeout.connect(self._tick)
        self._pending_since = 0.0
        self.last_snapshot: Any = None
        self.count = 0
        self._last_draw = float("-inf")
        self._owed = 0

    # ------------------------------------------------------------------ control
    @property
    def running(self) -> bool:
        return self.worker is not None

    @property
    def paused(self) -> bool:
        return bool(self.gate and self.gate.paused)

    def start(
        self,
        make_generator: Callable[[], Iterator[Any]],
        *,
        draw: Callable[[Any], None],
        on_snapshot: Callable[[Any], None] | None = None,
        start_paused: bool = False,
    ):
        """Start ``make_generator()`` in a worker thread.

        Parameters
        ----------
        make_generator : callable
            Called in the worker thread; returns the engine's generator (so even the
            engine's input checks and model loading run off the GUI thread).
        draw : callable
            ``draw(snapshot)`` on the GUI thread for the newest snapshot, throttled.
        on_snapshot : callable, optional
            ``on_snapshot(snapshot)`` on the GUI thread for *every* snapshot.
        start_paused : bool
            Wait for :meth:`step` or :meth:`resume` before the first snapshot.

        Returns
        -------
        napari.qt.threading.GeneratorWorker
        """
        from napari.qt.threading import create_worker

        if self.running:
            raise RuntimeError("a run is already in progress")
        gate = Gate(paused=start_paused)
        self.gate = gate
        self._draw = draw
        self._on_snapshot = on_snapshot
        self._pending = None
        self.last_snapshot = None
        self.count = 0
        self._last_draw = float("-inf")
        self._owed = 0

        def work():
            yield from gated(iter(make_generator()), gate, hand_off=True)

        # Connecting "errored" here keeps superqt from re-raising the engine's error in
        # the GUI thread; napari still relays it to its notification area.
        worker = create_worker(work, _start_thread=False, _connect={"errored": self._failed})
        worker.yielded.connect(self._received)
        worker.finished.connect(self._finished)
        self.worker = worker
        self._timer.setInterval(self._min_interval)
        self._timer.start()
        worker.start()
        self.started.emit()
        return worker

    def pause(self) -> None:
        if self.gate:
            self.gate.pause()
            self.paused_changed.emit(True)

    def resume(self) -> None:
        if self.gate:
            self.gate.resume()
            self.paused_changed.emit(False)

    def step(self, n: int = 1) -> None:
        if self.gate:
            self.gate.step(n)
            self.paused_changed.emit(True)

    def cancel(self) -> None:
        """Stop after the snapshot being computed; the last received one is drawn."""
        if self.gate:
            self.gate.cancel()
        if self.worker is not None:
            self.worker.quit()

    # ------------------------------------------------------------------ plumbing
    def _received(self, snap: Any) -> None:
        self.count += 1
        self.last_snapshot = snap
        if self._on_snapshot is not None:
            self._on_snapshot(snap)
        self._pending = snap
        self._pending_since = time.perf_counter()
        due = 1000.0 * (time.perf_counter() - self._last_draw) >= self._timer.interval()
        if self.paused or due:
            # Stepping: the person waits for exactly this snapshot; otherwise a draw is
            # due: either way draw it now, while the worker waits for it.
            self._flush()
        self._take()

    def _take(self) -> None:
        """Let the worker compute on; inside a draw (its event-loop turns), once the draw is done."""
        if getattr(self, "_drawing", False):
            self._owed += 1
            return
        gate = self.gate
        if gate is not None:
            for _ in range(self._owed + 1):
                gate.taken()
        self._owed = 0

    def _tick(self) -> None:
        """The throttle timer: draw the pending snapshot, unless the engine is computing the next one.

        A draw beside a computing engine competes with it for the interpreter and the
        CPUs: the U-Net's first map layer took 300-350 ms to build that way instead of
        150-250 ms. The next snapshot's arrival draws instead (the newest, as always),
        while the worker waits. A snapshot waits at most :data:`MAX_HOLD_MS`, so a long
        engine step does not hide it for long.
        """
        if self._pending is not None and self.gate is not None and self.gate.computing:
            if 1000.0 * (time.perf_counter() - self._pending_since) < MAX_HOLD_MS:
                return
        self._flush()

    def _flush(self) -> None:
        if getattr(self, "_drawing", False):
            return  # a draw let the event loop run (see _layers.breathe); the next tick draws
        snap, self._pending = self._pending, None
        if snap is not None and self._draw is not None:
            t0 = time.perf_counter()
            self._drawing = True
            try:
                self._draw(snap)
            finally:
                self._drawing = False
                self._last_draw = time.perf_counter()
            if self._owed:
                owed, self._owed = self._owed, 0
                for _ in range(owed):
                    if self.gate is not None:
                        self.gate.taken()
            if self._max_busy:
                took_ms = 1000.0 * (time.perf_counter() - t0)
                # Capped, so one slow draw (the first adds the layers) cannot stall the view.
                wait = max(self._min_interval, min(MAX_ADAPTIVE_INTERVAL_MS,
                                                   int(took_ms * (1.0 / self._max_busy - 1.0))))
                self._timer.setInterval(wait)

    def _failed(self, exc: BaseException) -> None:
        self.errored.emit(error_message(exc))

    def _finished(self) -> None:
        if getattr(self, "_drawing", False):
            # The worker ended while a draw lets the event loop run: finish after it.
            QTimer.singleShot(10, self._finished)
            return
        self._timer.stop()
        self._flush()
        cancelled = bool(self.gate and self.gate.cancelled)
        self.worker = None
        self.finished.emit(cancelled)
