"""Exceptions that carry a one-line message a person can act on.

Every engine validates its input at the door and raises one of these, so the CLI can
print ``error: <message>`` and the widgets can show the message, instead of a traceback
from deep inside torch or scikit-image.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator


class KaizenError(Exception):
    """Base class of every error napari-kaizen raises on purpose."""


class InputError(KaizenError, ValueError):
    """The image (or labels) handed to an engine cannot be used as given.

    The message names what was wrong and what is accepted, in one line.
    """


class WeightsError(KaizenError, OSError):
    """A weights file is missing, unreadable, or does not match what the engine expects."""


class DeviceError(KaizenError, RuntimeError):
    """The requested compute device is not available on this machine."""


class OverwriteError(KaizenError, FileExistsError):
    """A writer refused to replace a file that already exists."""


class EngineNotAvailableError(KaizenError, NotImplementedError):
    """The engine was asked for but is not part of this build."""


@contextlib.contextmanager
def quiet_loggers(*names: str, level: int = logging.CRITICAL) -> Iterator[None]:
    """Raise these libraries' loggers to ``level`` for the duration, then restore them.

    A library's own log lines (tifffile's complaints about a damaged file, ome-zarr-py's
    version notes, dask.distributed's reconnect attempts) would reach the terminal beside
    the one line in our words that says what happened; the caller says it once instead.

    Examples
    --------
    >>> log = logging.getLogger("some.library")
    >>> with quiet_loggers("some.library", level=logging.ERROR):
    ...     log.level == logging.ERROR
    True
    >>> log.level == logging.NOTSET
    True
    """
    logs = [logging.getLogger(n) for n in names]
    levels = [log.level for log in logs]
    for log in logs:
        log.setLevel(level)
    try:
        yield
    finally:
        for log, old in zip(logs, levels):
            log.setLevel(old)
