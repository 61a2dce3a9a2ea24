"""Keep freed memory in the process, so each segmentation does not fault it in afresh.

Every engine allocates and frees feature maps and label images of tens of megabytes
per call. glibc's ``malloc`` serves each block larger than its mmap threshold (a few
MiB, raised dynamically only up to 32 MiB) with a fresh ``mmap`` and returns it to the
kernel on ``free``; it also trims the top of the heap as soon as 128 KiB there are
free. The next block of that size is then fresh pages again, and the kernel zeroes
every one of them on first touch. On this project's 2-core machine that is 1.8 million
page faults for four FCN calls on a 1024 x 1024 field (about 1.8 GB of new pages per
call); keeping the blocks cut them to 0.2 million and the process CPU time of a call
from about 4.3 s to 3.4 s (``docs/speed.md``). It is what PyTorch's CPU performance
guide gets by preloading jemalloc or tcmalloc, done in the process with two
``mallopt`` settings.

The cost: up to :data:`KEEP_BYTES` of freed memory stays in the process between
calls instead of going back to the system (the peak is not raised). Set the
environment variable ``NAPARI_KAIZEN_SYSTEM_MALLOC=1`` to leave ``malloc`` as it is.
Only glibc (Linux) is touched; elsewhere this does nothing.
"""

from __future__ import annotations

import os
import platform

#: Blocks up to this size come from the heap and are reused; this much freed memory at
#: the top of the heap is kept (glibc's ``M_MMAP_THRESHOLD`` and ``M_TRIM_THRESHOLD``).
#: 1 GiB holds every block of a 2048 x 2048 network window; 256 MiB kept a third of the
#: page faults (0.54 million for four FCN calls against 0.20 million).
KEEP_BYTES = 1 << 30

#: Setting this environment variable to ``1`` leaves glibc's defaults alone.
OPT_OUT = "NAPARI_KAIZEN_SYSTEM_MALLOC"

# glibc's mallopt parameter numbers (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Tell glibc to keep freed blocks up to :data:`KEEP_BYTES` for reuse; once per process.

    Returns
    -------
    bool
        Whether the settings are in force (``False`` off glibc, when
        :data:`OPT_OUT` is set, or when ``mallopt`` refused them).
    """
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get(OPT_OUT, "").strip() not in ("", "0") or platform.system() != "Linux":
        return _applied
    if platform.libc_ver()[0] != "glibc":
        return _applied
    import ctypes

    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return _applied
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # Both or neither: a high mmap threshold with the default trim would move the churn
    # to the heap's top instead of removing it.
    _applied = bool(mallopt(_M_MMAP_THRESHOLD, KEEP_BYTES)) and bool(mallopt(_M_TRIM_THRESHOLD, KEEP_BYTES))
    return _applied
