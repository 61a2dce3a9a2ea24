"""Atomic, no-clobber file writing shared by every writer in the package.

A writer first writes a temporary file in the destination folder, then moves it into
place in one step, so a crash or a full disk never leaves half a file under the
user's name. Without ``overwrite=True`` the move is a hard link, which fails if the
name exists: no check-then-write race can replace a file the person made meanwhile.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from .errors import OverwriteError


def _default_mode() -> int:
    """Permissions a plain ``open(..., 'w')`` would give: 0o666 minus the umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


_MODE = _default_mode()

#: Every temporary file or folder this package makes beside an output begins with this,
#: then the writing process's id: ``.kaizen-tmp-<pid>-<name>.<random><suffix>``.
TMP_PREFIX = ".kaizen-tmp-"
_TMP_PID = re.compile(r"^\.kaizen-tmp-(\d+)-")
# Names older versions used (``.lab.tif.ab12cd34.tmp.tif``, ``.lab.zarr.ab12cd34.tmp.zarr``,
# ``.lab.zarr.ab12cd34.old``): they carry no process id, so only old ones are removed.
_LEGACY_TMP = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.(tmp(\.[A-Za-z0-9]+)?|old)$")
LEGACY_TMP_AGE_S = 3600.0


def temp_prefix(name: str) -> str:
    """The prefix of a temporary file or folder made for the output ``name`` by this process."""
    return f"{TMP_PREFIX}{os.getpid()}-{name}."


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return pid > 0  # a live process of another user (or a number no process has)
    return True


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove this package's temporary files and folders left in ``folder`` by a killed run.

    A temporary whose writing process still runs (another run into the same folder) is
    left alone; one of older versions (no process id in its name) only when it is over
    an hour old.

    Returns
    -------
    list of Path
        What was removed.
    """
    removed: list[Path] = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        name = entry.name
        match = _TMP_PID.match(name)
        if match:
            if _pid_alive(int(match.group(1))):
                continue
        elif _LEGACY_TMP.match(name):
            try:
                if now - entry.lstat().st_mtime < LEGACY_TMP_AGE_S:
                    continue
            except OSError:
                continue
        else:
            continue
        try:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        except OSError:
            continue
        removed.append(entry)
    return removed


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None], *, overwrite: bool = False) -> Path:
    """Write ``path`` atomically by calling ``write(tmp_path)``.

    Parameters
    ----------
    path : path-like
        Destination. Its folder must exist.
    write : callable
        Writes the complete file to the temporary path it is given. The temporary
        name keeps ``path``'s suffix, so format-by-extension writers still work.
    overwrite : bool
        Replace an existing file. Without it an existing file raises.

    Returns
    -------
    Path
        The destination.

    Raises
    ------
    OverwriteError
        If ``path`` exists and ``overwrite`` is False.
    FileNotFoundError
        If the destination folder does not exist.
    """
    dest = Path(path)
    if not overwrite and dest.exists():
        raise OverwriteError(f"{dest} already exists; not overwriting it (pass overwrite=True, CLI --overwrite)")
    folder = dest.parent if str(dest.parent) else Path(".")
    if not folder.is_dir():
        raise FileNotFoundError(f"folder {folder} does not exist: create it first or choose another output path")
    tmp: Path | None = None
    try:
        # Made inside the try: a signal arriving right after it still removes it.
        fd, tmp_name = tempfile.mkstemp(prefix=temp_prefix(dest.name), suffix=f".tmp{dest.suffix}", dir=folder)
        tmp = Path(tmp_name)
        os.close(fd)
        write(tmp)
        # mkstemp makes the file private (0o600); give it the permissions any other
        # program's output would have.
        os.chmod(tmp, _MODE)
        if overwrite:
            os.replace(tmp, dest)
        else:
            try:
                os.link(tmp, dest)
            except FileExistsError:
                raise OverwriteError(f"{dest} appeared while writing; not overwriting it") from None
            except OSError:
                # File systems without hard links (some network / FAT mounts): fall back
                # to an exclusive rename check, which is still safe against our own runs.
                if dest.exists():
                    raise OverwriteError(f"{dest} already exists; not overwriting it") from None
                os.replace(tmp, dest)
    finally:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
    return dest
