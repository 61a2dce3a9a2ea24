"""Atomic, no-clobber file writing shared by every writer in the package.

A writer first writes a temporary file in the destination folder, then moves it into
place in one step, so a crash or a full disk never leaves half a file under the
user's name. Without ``overwrite=True`` the move is a hard link, which fails if the
name exists: no check-then-write race can replace a file the person made meanwhile.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from .errors import OverwriteError


def _default_mode() -> int:
    """Permissions a plain ``open(..., 'w')`` would give: 0o666 minus the umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


_MODE = _default_mode()


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
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=f".tmp{dest.suffix}", dir=folder)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
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
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return dest
