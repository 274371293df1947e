"""Atomic file writes that lose nothing: a temporary file beside the target, then a rename.

Temporary files are named ``.<target name>.dinoseg-<host>-<pid>-<random>.tmp`` (the target's
name cut short where the whole would pass the file system's name limit), so a later run can tell
its own leftovers (a killed run's) from a running process's: :func:`clean_stale` removes those
whose process on this host is gone, or, written elsewhere, untouched for ``STALE_AFTER`` seconds,
and nothing else. A temporary file is flushed to the disk (``fsync``) before it is renamed, so a
file under its final name holds all its bytes even after a crash of the machine. Finished files
get the permissions of the user's umask (``0644`` under ``022``), not the ``0600`` of a temporary
file. A full disk raises :class:`NoSpaceError` saying so, with the space left.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import shutil
import socket
import time
from pathlib import Path
from typing import Callable, Optional

#: Temporary files of another host (or an older version) older than this (s) are leftovers.
STALE_AFTER = 3600.0
_TEMP = re.compile(r"^\..+\.dinoseg-(?P<host>.+)-(?P<pid>\d+)-[0-9a-f]{8}\.tmp$")
#: Older versions' temporaries: ``.<name>_labels.tif.<8 random>.tmp`` and ``.bundle-<8 random>``.
_LEGACY = re.compile(r"^\..+_(labels|proba)\.tif\.[A-Za-z0-9_]{8}\.tmp$|^\.bundle-[A-Za-z0-9_]{8}$")
_NO_SPACE = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


class NoSpaceError(OSError):
    """The output folder's file system is full (or over quota)."""


def host_name() -> str:
    """This machine's name, as temporary files and the folder lock record it ("host" when unknown)."""
    return socket.gethostname().replace("/", "_") or "host"


def temp_path(target: Path) -> Path:
    """A fresh temporary name beside ``target`` that :func:`clean_stale` recognises, within the
    file system's name limit (the target's name is cut short where needed)."""
    host = host_name()
    tail = f".dinoseg-{host}-{os.getpid()}-{secrets.token_hex(4)}.tmp"
    room = name_max(target.parent) - len(os.fsencode("." + tail))
    return target.parent / f".{shorten(target.name, max(room, 1))}{tail}"


def name_max(folder) -> int:
    """The longest file name (bytes) the file system of ``folder`` takes (255 if it does not say)."""
    try:
        limit = os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        return 255
    return limit if limit and limit > 0 else 255


def shorten(name: str, room: int) -> str:
    """The longest start of ``name`` whose file-system encoding takes at most ``room`` bytes
    (whole characters only)."""
    while len(os.fsencode(name)) > room:
        name = name[:-1]
    return name


def write_atomic(target, write: Callable[[Path], None], size_hint: int = 0,
                 check: Optional[Callable[[Path], None]] = None) -> Path:
    """Call ``write(temporary path)``, flush the file to the disk, then rename it to ``target``.

    Parameters
    ----------
    target
        The final path; it appears complete or not at all.
    write
        Writes the whole file at the path it is given.
    size_hint
        Bytes the file will take about; refused up front when the disk has less free.
    check
        Called with ``target`` once the file is written, just before it replaces ``target``;
        raises to keep ``target`` as it is (the temporary file is then removed).

    Raises
    ------
    NoSpaceError
        No space left (before or while writing); the temporary file is removed.
    """
    target = Path(target)
    if size_hint:
        _check_free(target.parent, size_hint)
    tmp = temp_path(target)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~umask())
        _fsync(tmp)
        if check is not None:
            check(target)
        os.replace(tmp, target)
        _fsync(target.parent, folder=True)
    except OSError as err:
        if err.errno in _NO_SPACE or "requested and" in str(err):  # tifffile / numpy short writes
            raise NoSpaceError(errno.ENOSPC, no_space_message(target.parent)) from None
        raise
    finally:
        if tmp.exists():
            tmp.unlink()
    return target


def _fsync(path: Path, folder: bool = False) -> None:
    """Flush a file (or a folder's entries: best effort, not every system can) to the disk."""
    try:
        fd = os.open(path, os.O_RDONLY if folder else os.O_RDWR)
    except OSError:
        if folder:
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not folder:
            raise
    finally:
        os.close(fd)


def check_writable(folder: Path) -> None:
    """Create ``folder`` (and its parents) if needed and write a file in it; ValueError naming the
    folder and why when that fails (read-only, a file where the folder should be, permissions)."""
    import tempfile

    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as err:
        raise ValueError(f"output folder {str(folder)!r} cannot be written: {err.strerror or err}") from None


def no_space_message(folder: Path) -> str:
    free = shutil.disk_usage(folder).free
    return f"no space left in {str(folder)!r} ({format_bytes(free)} free); free some space and run again"


def _check_free(folder: Path, size: int) -> None:
    free = shutil.disk_usage(folder).free
    if free < size:
        raise NoSpaceError(errno.ENOSPC, f"no space left in {str(folder)!r}: {format_bytes(free)} free, the next output "
                                         f"needs about {format_bytes(size)}; free some space and run again")


def format_bytes(n: float) -> str:
    """Bytes for people: ``512 bytes``, ``36.0 KiB``, ``7.0 TiB``."""
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def clean_stale(folder) -> list[Path]:
    """Remove leftover temporary files of killed writes in ``folder``; returns those removed.

    Touches only names of this project's temporary pattern (and of its older versions'), and
    leaves those a live process on this host (or a recent one elsewhere) may still be writing.
    """
    folder = Path(folder)
    removed = []
    host = host_name()
    now = time.time()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = _TEMP.match(entry.name)
        if not (match or _LEGACY.match(entry.name)) or not entry.is_file(follow_symlinks=False):
            continue
        try:
            age = now - entry.stat(follow_symlinks=False).st_mtime
            same_host = match is not None and match["host"] == host
            if not process_alive(int(match["pid"])) if same_host else age > STALE_AFTER:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:
            continue
    return removed


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host runs (``True`` where that cannot be told)."""
    if pid == os.getpid():
        return True
    if os.name == "nt":  # os.kill(pid, 0) would send CTRL_C_EVENT there
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def umask() -> int:
    """The process's umask, read without changing it where the OS allows (Linux)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        mask = os.umask(0o022)
        os.umask(mask)
        return mask
