"""The "dinoseg: apply to folder" widget (Plugins menu and Layers › Segment menu).

Bundle file, input folder, output folder and options; runs :func:`apply_bundle` in a
worker with a progress bar, reports done / skipped / failed at the end, and can open the
first result in the viewer.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np
from magicgui.widgets import CheckBox, FileEdit, Label
from napari.utils.notifications import show_warning

from ..batch import BatchSummary, apply_bundle
from ._worker_widget import WorkerWidget

if TYPE_CHECKING:
    import napari


def run_batch_job(bundle: str, inputs: str, out_dir: str, probabilities: bool, overwrite: bool,
                  progress=None, announce=None) -> BatchSummary:
    """Apply a bundle to a folder (pure; runs in a worker)."""
    if announce is not None:
        announce(f"applying {Path(bundle).name} to {inputs}")
    return apply_bundle(bundle, inputs, out_dir, probabilities=probabilities, overwrite=overwrite, progress=progress)


class BatchWidget(WorkerWidget):
    """Apply a saved classifier to a folder of images."""

    def __init__(self, napari_viewer: "napari.viewer.Viewer") -> None:
        super().__init__(napari_viewer, "Apply", "Choose a classifier bundle, an input folder and an output folder.")
        self.summary: Optional[BatchSummary] = None
        self._bundle = FileEdit(mode="r", filter="*.dinoseg", label="classifier")
        self._inputs = FileEdit(mode="d", label="input folder")
        self._out = FileEdit(mode="d", label="output folder")
        self._probabilities = CheckBox(value=False, text="also write probabilities")
        self._overwrite = CheckBox(value=False, text="overwrite existing outputs")
        self._open_first = CheckBox(value=True, text="open the first result")
        self._report = Label(value="")
        self._report.native.setWordWrap(True)
        self.extend([self._bundle, self._inputs, self._out, self._probabilities, self._overwrite,
                     self._open_first, *self.run_controls, self._report])

    def _prepare(self):
        values = [str(w.value) for w in (self._bundle, self._inputs, self._out)]
        if any(v in ("", ".") for v in values):
            raise ValueError("choose the classifier file, the input folder and the output folder")
        return run_batch_job, (*values, bool(self._probabilities.value), bool(self._overwrite.value))

    def _on_result(self, summary: BatchSummary) -> None:
        self.summary = summary
        self._status.value = str(summary).splitlines()[0]
        self._report.value = str(summary)
        doubtful = sorted({Path(path).name for path, _ in summary.warnings})
        if doubtful:
            show_warning(f"dinoseg: {len(doubtful)} image(s) look unlike the training images or collapsed to one "
                         f"class: {', '.join(doubtful[:5])}{' …' if len(doubtful) > 5 else ''}; see the report")
        if self._open_first.value and summary.done:
            import tifffile

            first = Path(summary.done[0])
            self._viewer.add_labels(np.asarray(tifffile.imread(first)), name=first.stem)
