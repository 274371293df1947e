"""Progress reporting and cancellation shared by every long-running core function.

A long function takes ``progress: ProgressCallback | None``. It calls
``progress(done, total, message)`` after each step; the callback may raise
:class:`Cancelled` to stop the computation at that point (the GUI does this when the
user clicks Cancel). Core code never prints progress.
"""

from __future__ import annotations

from typing import Callable, Optional

ProgressCallback = Callable[[int, int, str], None]


class Cancelled(Exception):
    """Raised by a progress callback to abort a computation; nothing is returned."""


def report(progress: Optional[ProgressCallback], done: int, total: int, message: str) -> None:
    """Call ``progress`` if given (a no-op otherwise)."""
    if progress is not None:
        progress(done, total, message)


def within(progress: Optional[ProgressCallback], start: float, stop: float, scale: int = 1000) -> Optional[ProgressCallback]:
    """A callback mapping a sub-task's ``(done, total)`` onto ``[start, stop]`` (fractions of the
    whole) of ``progress``, reported on a ``0..scale`` scale; ``None`` when ``progress`` is."""
    if progress is None:
        return None

    def sub(done: int, total: int, message: str) -> None:
        progress(int(scale * (start + (stop - start) * done / max(total, 1))), scale, message)

    return sub
