"""What a batch run did: :class:`BatchSummary`, the result of
:func:`napari_dinoseg.batch.apply_bundle`, and how it is told to people (its ``str``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from .measure_report import Report

ALREADY_THERE = "already there"


@dataclass
class BatchSummary:
    """What :func:`~napari_dinoseg.batch.apply_bundle` did.

    Attributes
    ----------
    done : list of str
        Label images written.
    skipped : list of (input, reason)
        Inputs not processed: outputs already there, or not image files (folders, broken links).
    failed : list of (input, reason)
        Inputs that gave no output, and why.
    warnings : list of (input, message)
        Images unlike the training images (their outputs are written, but doubtful); for
        outputs already there, the warnings recorded with them by the run that wrote them.
    cleaned : list of str
        Temporary files of an interrupted earlier run, removed.
    stopped : str
        Why the run stopped before the end ("" when it did not).
    notes : list of (path, message)
        What the run did that is neither a failure nor a warning: outputs found and recomputed
        (cut short, of an older version, of an input changed since), output names shortened,
        the folder's lock taken over from a killed run (the path is then the output folder).
    measurements : Report or None
        With ``measure``: the tables and plots written
        (:class:`~napari_dinoseg.measure_report.Report`); ``None`` without, or when the run
        stopped early.
    """

    done: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    failed: list = field(default_factory=list)
    warnings: list = field(default_factory=list)
    cleaned: list = field(default_factory=list)
    stopped: str = ""
    notes: list = field(default_factory=list)
    measurements: Optional["Report"] = None

    def __str__(self) -> str:
        doubtful = len({path for path, _ in self.warnings})
        there = sum(reason == ALREADY_THERE for _, reason in self.skipped)
        lines = [f"done {len(self.done)}, skipped {len(self.skipped)} ({there} already there), failed {len(self.failed)}"
                 + (f"; {doubtful} with warnings" if doubtful else "")]
        if self.stopped:
            lines.append(f"  stopped early: {self.stopped}")
        lines += [f"  skipped: {path}: {reason}" for path, reason in self.skipped if reason != ALREADY_THERE]
        lines += [f"  failed: {path}: {reason}" for path, reason in self.failed]
        kept = {path for path, reason in self.skipped if reason == ALREADY_THERE}
        lines += [f"  warning: {path}: {message}" + (" (recorded with its output by an earlier run)" * (path in kept))
                  for path, message in self.warnings]
        if self.cleaned:
            lines.append(f"  removed {len(self.cleaned)} temporary file(s) left by an interrupted run")
        by_message: dict = {}
        for path, message in self.notes:
            by_message.setdefault(message, []).append(path)
        for message, paths in by_message.items():  # one line for many alike (an older version's outputs)
            lines += ([f"  note: {path}: {message}" for path in paths] if len(paths) <= 3 else
                      [f"  note: {len(paths)} inputs ({paths[0]}, {paths[1]}, ...): {message}"])
        if self.measurements is not None:
            lines.append(str(self.measurements))
        return "\n".join(lines)
