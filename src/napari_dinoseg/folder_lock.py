"""One run at a time in an output folder: a lock file that names the run holding it.

A run of :func:`napari_dinoseg.apply_bundle` holds ``dinoseg.lock`` in its output folder from
before it looks at the folder's outputs until it returns. The file says who holds it (host, pid,
classifier and its fingerprint, start time), so a second run is refused with a message naming
the first. The hold itself is an OS lock (``flock``) on the open file: the kernel drops it when
the holder dies, ``kill -9`` included, so a lock never outlives its run on this host; the next
run takes the folder over and says whose lock it found. A lock written by another host (a
shared file system) is trusted while its run touches it (every ``HEARTBEAT`` seconds) and taken
over once untouched for ``STALE_AFTER`` seconds. Where the file system refuses ``flock``, the
file alone is the lock (created exclusively; a stale one, whose pid is gone on this host, is
replaced), which leaves a narrow race between two runs that take over one stale lock at once.
"""

from __future__ import annotations

import errno
import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .atomic import host_name, process_alive

LOCK_NAME = "dinoseg.lock"
#: Seconds between two touches of the lock file by the run that holds it.
HEARTBEAT = 30.0
#: A lock of another host untouched this long (s) is a killed run's.
STALE_AFTER = 600.0
#: errno values of a file system that does not do ``flock`` (the file alone is then the lock).
_NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP), errno.ENOSYS, errno.EINVAL}
_BUSY = {errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES}
_FLAGS = getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)


class FolderBusyError(ValueError):
    """The output folder is held by another run (a refusal: the CLI exits with status 2).

    Attributes
    ----------
    holder : Holder or None
        The run that holds it, as its lock file says (``None`` when the file says nothing yet).
    """

    def __init__(self, message: str, holder: Optional["Holder"] = None) -> None:
        super().__init__(message)
        self.holder = holder


@dataclass(frozen=True)
class Holder:
    """A run, as a lock file names it."""

    host: str
    pid: int
    classifier: str
    fingerprint: str
    started: str

    def __str__(self) -> str:
        return (f"host {self.host}, pid {self.pid}, classifier {self.classifier!r} (fingerprint {self.fingerprint}), "
                f"started {self.started}")

    @property
    def here(self) -> bool:
        """Whether it ran on this host."""
        return self.host == host_name()

    def to_json(self) -> bytes:
        return (json.dumps({"host": self.host, "pid": self.pid, "classifier": self.classifier,
                            "fingerprint": self.fingerprint, "started": self.started}) + "\n").encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Optional["Holder"]:
        try:
            data = json.loads(raw.decode())
            return cls(str(data["host"]), int(data["pid"]), str(data["classifier"]), str(data["fingerprint"]),
                       str(data["started"]))
        except (ValueError, KeyError, TypeError, AttributeError):
            return None


class FolderLock:
    """Hold ``folder/dinoseg.lock`` for one run (a context manager).

    Parameters
    ----------
    folder
        The output folder (it exists).
    classifier
        The bundle's path, and ``fingerprint`` its content's: what the lock file names.

    Attributes
    ----------
    note : str
        After :meth:`acquire`: what was taken over (a killed run's lock), or ``""``.

    Raises
    ------
    FolderBusyError
        On :meth:`acquire` (or entering), when another live run holds the folder.
    ValueError
        When the lock file cannot be made (a folder of that name, a file system error).
    """

    def __init__(self, folder, classifier, fingerprint: str) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.me = Holder(host_name(), os.getpid(), os.path.abspath(classifier), fingerprint,
                         time.strftime("%Y-%m-%d %H:%M:%S %z"))
        self.note = ""
        self._fd: Optional[int] = None
        self._flock = True
        self._found: Optional[Holder] = None  # a gone run's lock, removed to make our own
        self._stop = threading.Event()
        self._beat: Optional[threading.Thread] = None

    def __enter__(self) -> "FolderLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    # ---- taking and giving back ---------------------------------------------------------

    def acquire(self) -> "FolderLock":
        try:
            for _ in range(20):  # another run may remove the file between our open and our lock
                if self._try_flock():
                    break
            else:
                raise FolderBusyError(f"cannot lock the output folder {str(self.folder)!r}: its lock file "
                                      f"{LOCK_NAME} keeps being replaced by other runs; try again")
        except OSError as err:
            raise ValueError(f"cannot lock the output folder {str(self.folder)!r} for this run "
                             f"({LOCK_NAME}: {err.strerror or err})") from None
        self._beat = threading.Thread(target=self._heartbeat, name="dinoseg-lock-heartbeat", daemon=True)
        self._beat.start()
        return self

    def release(self) -> None:
        """Remove the lock file (if it is still this run's) and drop the lock; idempotent."""
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=5)
            self._beat = None
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if self._flock:
                if _same_file(fd, self.path):
                    os.unlink(self.path)
            elif Holder.from_json(_read(self.path)) == self.me:
                os.unlink(self.path)
        except OSError:
            pass
        finally:
            os.close(fd)

    def _try_flock(self) -> bool:
        """One try: ``True`` when this run holds the lock (``False``: the file was replaced under
        us, try again)."""
        try:
            import fcntl
        except ImportError:  # Windows: no flock
            self._flock = False
            return self._try_exclusive()
        writable = True
        try:
            fd, created = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | _FLAGS, 0o666), True
        except FileExistsError:
            created = False
            try:
                fd = os.open(self.path, os.O_RDWR | _FLAGS)
            except FileNotFoundError:  # removed meanwhile by the run that held it
                return False
            except PermissionError:  # another user's leftover in a shared folder: it can still be locked
                fd, writable = os.open(self.path, os.O_RDONLY | _FLAGS), False
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                if err.errno in _BUSY:
                    raise self._busy(_wait_for_content(self.path)) from None
                if err.errno in _NO_FLOCK:
                    os.close(fd)
                    fd = None
                    if created:
                        os.unlink(self.path)
                    self._flock = False
                    return self._try_exclusive()
                raise
            if not _same_file(fd, self.path):  # removed by the run that held it, after our open
                return False
            previous = Holder.from_json(_pread(fd))
            if previous is not None and previous != self.me and not previous.here:
                age = _age(self.path)
                if age < STALE_AFTER:  # its host may not see our flock (a shared file system)
                    raise self._busy(previous, age)
            previous = previous or self._found
            if not writable:  # ours now, and its run is gone: make a file of our own
                self._found = previous
                os.unlink(self.path)
                return False
            os.ftruncate(fd, 0)
            os.pwrite(fd, self.me.to_json(), 0)
            self._fd, fd = fd, None
            self.note = "" if previous is None or previous == self.me else self._takeover(previous)
            return True
        finally:
            if fd is not None:
                os.close(fd)

    def _try_exclusive(self) -> bool:
        """Where ``flock`` is refused: the lock file alone, created exclusively."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | _FLAGS, 0o666)
        except FileExistsError:
            previous = _wait_for_content(self.path)
            if previous is not None:
                age = _age(self.path)
                if (process_alive(previous.pid) if previous.here else age < STALE_AFTER):
                    raise self._busy(previous, None if previous.here else age) from None
            elif _age(self.path) < HEARTBEAT:  # being written by a run that just made it
                raise self._busy(None) from None
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | _FLAGS, 0o666)
            except FileExistsError:  # another run took it over first
                raise self._busy(_wait_for_content(self.path)) from None
            self.note = "" if previous is None else self._takeover(previous)
        os.write(fd, self.me.to_json())
        self._fd = fd
        return True

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT):
            fd = self._fd
            try:
                os.utime(fd if fd is not None and os.utime in os.supports_fd else self.path)
            except (OSError, TypeError):
                pass

    # ---- what is said ------------------------------------------------------------------------

    def _busy(self, holder: Optional[Holder], age: Optional[float] = None) -> FolderBusyError:
        where = repr(str(self.folder))
        if holder is None:
            return FolderBusyError(f"output folder {where} is in use by another dinoseg run (it is starting; its "
                                   f"lock file {LOCK_NAME} names no run yet): this run is refused, not waiting; "
                                   "run again when that run has ended, or choose another output folder")
        same = holder.fingerprint == self.me.fingerprint
        why = ("with the same classifier: this run is refused, not waiting; run again when that run has ended to "
               "do what it leaves" if same else
               "with another classifier: this run is refused, not waiting, as the folder would end with outputs of "
               "two classifiers; choose another output folder, or run again when that run has ended")
        text = f"output folder {where} is in use by another dinoseg run ({holder}) {why}"
        if age is not None:
            text += (f". That run is on another host and touched its lock {age:.0f} s ago; if it is gone, its lock "
                     f"is taken over {STALE_AFTER:.0f} s after that, or remove {str(self.path)!r}")
        return FolderBusyError(text, holder)

    def _takeover(self, previous: Holder) -> str:
        where = "its process is gone" if previous.here else "its host has not touched it for a while"
        return (f"took over the folder's lock from a run that ended without giving it back ({where}; killed?): "
                f"{previous}")


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path, follow_symlinks=False)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _pread(fd: int) -> bytes:
    return os.pread(fd, 1 << 16, 0)


def _read(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(1 << 16)
    except OSError:
        return b""


def _wait_for_content(path: Path, seconds: float = 2.0) -> Optional[Holder]:
    """The holder a lock file names, waiting briefly for a run that has just taken it to say so."""
    end = time.monotonic() + seconds
    while True:
        holder = Holder.from_json(_read(path))
        if holder is not None or time.monotonic() > end:
            return holder
        time.sleep(0.05)


def _age(path: Path) -> float:
    try:
        return max(0.0, time.time() - os.stat(path, follow_symlinks=False).st_mtime)
    except OSError:
        return float("inf")
