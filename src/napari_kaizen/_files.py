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
#: then the writing machine and process: ``.kaizen-tmp-<host>-<pid>-<name>.<random><suffix>``.
TMP_PREFIX = ".kaizen-tmp-"
_TMP_OWNER = re.compile(r"^\.kaizen-tmp-(?:([A-Za-z0-9]{1,24})-)?(\d+)-")
# Names older versions used (``.lab.tif.ab12cd34.tmp.tif``, ``.lab.zarr.ab12cd34.tmp.zarr``,
# ``.lab.zarr.ab12cd34.old``): they carry no process id, so only old ones are removed.
_LEGACY_TMP = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.(tmp\.(tif|tiff|png|npy|csv|zip|json|safetensors|zarr)|old)$")
#: Age after which a temporary whose writer cannot be checked (older versions, another
#: machine of a cluster writing to shared storage) counts as stale.
UNCHECKED_TMP_AGE_S = 24 * 3600.0


def _host() -> str:
    import socket

    return re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:24] or "host"


def temp_prefix(name: str) -> str:
    """The prefix of a temporary file or folder made for the output ``name`` by this process."""
    return f"{TMP_PREFIX}{_host()}-{os.getpid()}-{name}."


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
    left alone; one written on another machine (a cluster's worker) or by an older
    version (no process id in its name) only when it is a day old.

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
    now, host = time.time(), _host()

    def old(entry: Path) -> bool:
        try:
            return now - entry.lstat().st_mtime >= UNCHECKED_TMP_AGE_S
        except OSError:
            return False

    for entry in entries:
        name = entry.name
        match = _TMP_OWNER.match(name)
        if match:
            same_host = match.group(1) in (None, host)
            if (same_host and _pid_alive(int(match.group(2)))) or (not same_host and not old(entry)):
                continue
        elif not (_LEGACY_TMP.match(name) and old(entry)):
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
