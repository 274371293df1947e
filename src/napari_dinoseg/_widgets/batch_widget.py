"""The "dinoseg: apply to folder" widget (Plugins menu and Layers › Segment menu).

Bundle file, input folder, output folder and options; runs :func:`run_batch_job` in a worker
(the widget's progress bar and napari's activity dock, from the base class), then shows how
long the run took on the status line and the done / skipped / failed summary, once, in a
scrollable report. With "open the first result" the worker also reads back the first image
it segmented (its raw input, found from the ``source`` the labels file records, and its
labels); the widget then shows that pair on top of the other layers, which it hides. With
"measure" each image is measured as it is segmented and ``OUT/measurements/`` gets the tables
and plots of every label output in the folder (:mod:`napari_dinoseg.measure_report`); the
report ends with the summary table and the status line says where the files are. With
"resample to the training pixel size" an image whose pixel size (the pixel size field, else its
metadata's) is not the classifier's training pixel size is segmented resampled to it
(:func:`~napari_dinoseg.batch.apply_bundle` ``resample``).

The bundle, folders and options of the last run are remembered for the session: a widget
opened again starts from them.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Union

import numpy as np
from magicgui.widgets import CheckBox, FileEdit, LineEdit, SpinBox, TextEdit
from napari.layers import Image, Labels, Layer
from napari.utils.notifications import show_warning
from qtpy.QtGui import QTextOption
from qtpy.QtWidgets import QSizePolicy

from ..batch import BatchSummary, apply_bundle
from ..measure_report import MeasureOptions
from ..progress import Cancelled
from ..reading import ImageFile, read_image
from ..voxel_spacing import recorded_spacing
from ._sections import Section
from ._worker_widget import WorkerWidget

if TYPE_CHECKING:
    import napari

#: Lines of the summary the report shows; the rest are counted ("… and N more").
MAX_REPORT_LINES = 200
#: Height of the report box, in lines of text (it scrolls beyond).
REPORT_LINES_SHOWN = 8
#: Colour maps of the channels of an image that is neither grey nor RGB (one layer each).
CHANNEL_COLORMAPS = ("magenta", "green", "cyan", "yellow", "red", "blue")
#: Widgets whose values a new widget takes over from the last run of this session.
REMEMBERED = ("_bundle", "_inputs", "_out", "_probabilities", "_overwrite", "_open_first", "_measure",
              "_min_size", "_pixel_size", "_resample", "_zarr")
TOOLTIPS = {
    "_bundle": "the .dinoseg classifier file to apply (written by the train widget's Save classifier)",
    "_inputs": "the folder of images to segment (tif, png, jpg, and OME-Zarr images: *.ome.zarr folders, level 0; "
               "other sub-folders are not searched)",
    "_out": "where <name>_labels.tif (<name>_labels.ome.zarr for OME-Zarr) is written for each image; must lie "
            "outside the input folder",
    "_probabilities": "also write <name>_proba.tif: the class probabilities, float32, classes last",
    "_zarr": "write OME-Zarr outputs (<name>_labels.ome.zarr: NGFF 0.5, a pyramid, the pixel size) for every image; "
             "OME-Zarr inputs always get them",
    "_overwrite": "recompute images whose outputs are already there (otherwise they are skipped)",
    "_open_first": "when done, open the first image segmented by this run with its labels, hiding other layers",
    "_measure": "also measure every image: phase fractions with their 95 % interval over the images, objects and "
                "their sizes; CSV tables and plots in <output folder>/measurements",
    "_min_size": "objects of fewer pixels are left out of the objects table (not out of the fractions)",
    "_pixel_size": "µm per pixel of every image, recorded in the outputs, for the µm columns and resampling; "
                   "empty: each image's own metadata (OME, ImageJ, TIFF resolution), else pixels only",
    "_resample": "segment an image whose pixel size is not the classifier's training pixel size at the training "
                 "pixel size (resampled, the labels brought back to the image's shape); otherwise a mismatch is a "
                 "warning in the report",
    "_run": "segment every image of the input folder with the classifier",
    "_cancel": "stop after the image being segmented; finished outputs are kept, and Apply goes on from there",
    "_progress": "images segmented, of those to segment",
    "_status": "what the run is doing, or how long it took",
    "_report": "done / skipped / failed, with reasons (names relative to the input folder)",
}
#: The last run's values (see ``REMEMBERED``), kept for the session.
_LAST: dict = {}


@dataclass(frozen=True)
class FirstResult:
    """The first image a run segmented, read back for the viewer.

    Attributes
    ----------
    source : Path
        The input image file.
    output : Path
        Its labels file.
    image : ImageFile or None
        The input's pixels, ``(*lead, H, W)`` or ``(*lead, H, W, C)`` (``None`` for an OME-Zarr
        input: see ``layers``).
    labels : (*lead, H, W) integer array, or a list of them (an OME-Zarr output's levels, lazy)
    layers : list of (name, data, kwargs), optional
        The input's image layer(s) where they are not made from ``image``: an OME-Zarr input's
        levels (lazy), shown as a multiscale layer.
    spacing : (dz, dy, dx) or None
        µm per voxel of a volume's output (its record's ``spacing_um``): the layers' scale, so
        that anisotropic voxels are shown at their size; ``None`` for a plane or an unknown spacing.
    """

    source: Path
    output: Path
    image: Optional[ImageFile]
    labels: np.ndarray
    layers: Optional[list] = None
    spacing: Optional[tuple] = None


@dataclass(frozen=True)
class BatchResult:
    """What :func:`run_batch_job` hands to the widget: the summary, and the first result or
    why there is none to open (``note``)."""

    summary: BatchSummary
    first: Optional[FirstResult] = None
    note: str = ""


def run_batch_job(bundle: str, inputs: str, out_dir: str, probabilities: bool, overwrite: bool, open_first: bool,
                  measure: Optional[MeasureOptions] = None, resample: bool = False,
                  pixel_size: Optional[float] = None, output_format: str = "auto", progress=None,
                  announce=None) -> BatchResult:
    """Apply a bundle to a folder (and measure its outputs with ``measure``; ``resample`` and
    ``pixel_size`` and ``output_format`` as :func:`~napari_dinoseg.batch.apply_bundle`'s) and, with ``open_first``,
    read back its first result (runs in a worker; touches no layer)."""
    if announce is not None:
        announce(f"applying {Path(bundle).name} to {inputs}")
    summary = apply_bundle(bundle, inputs, out_dir, probabilities=probabilities, overwrite=overwrite, progress=progress,
                           measure=measure, resample=resample, pixel_size=pixel_size, output_format=output_format)
    if not open_first:
        return BatchResult(summary)
    if not summary.done:
        return BatchResult(summary, note="no image was segmented by this run, so none was opened")
    try:  # done is in input order: apply_bundle runs the images in turn, in the folder's order
        return BatchResult(summary, read_first_result(summary.done[0], inputs))
    except ValueError as err:
        return BatchResult(summary, note=f"the first result could not be opened: {err}")


def read_first_result(output: Union[str, os.PathLike], input_dir: Union[str, os.PathLike]) -> FirstResult:
    """Read a labels file and the input image it was made from.

    The input is the file in ``input_dir`` named by the labels file's ``source`` metadata
    (written by :func:`~napari_dinoseg.batch.apply_bundle`), so two inputs with one stem
    (``a.tif``, ``a.png``) are never confused.

    Raises
    ------
    ValueError
        An unreadable labels file, one that does not name its input, an input that is gone
        or unreadable, or shapes that do not match (the input changed since).
    """
    import tifffile

    output = Path(output)
    if output.is_dir():  # an OME-Zarr output
        return _read_first_store(output, Path(input_dir))
    try:
        with tifffile.TiffFile(output) as tif:
            meta = tif.shaped_metadata[0] if tif.shaped_metadata else {}
            labels = tif.asarray()
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read {output.name}: {err}") from None
    name = meta.get("source")
    if not isinstance(name, str) or not name:
        raise ValueError(f"{output.name} does not name the image it was made from")
    source = Path(input_dir) / name
    if not source.is_file():
        raise ValueError(f"its input {str(source)!r} is no longer there")
    image = read_image(source, meta.get("channels"), axes=meta.get("axes_given"))  # as the run read it
    plane_shape = image.data.shape if image.channels == 1 else image.data.shape[:-1]
    if labels.shape != plane_shape:
        raise ValueError(f"{output.name} has shape {labels.shape} but {name} has {image.data.shape}; "
                         "was the input changed since?")
    return FirstResult(source, output, image, labels, spacing=recorded_spacing(meta))


def _read_first_store(output: Path, input_dir: Path) -> FirstResult:
    """:func:`read_first_result` of an OME-Zarr output: its levels and its input's, opened lazily
    (nothing of the image read here but its metadata)."""
    from ..ngff import is_zarr_image, metadata_of, open_ngff

    meta = metadata_of(output)
    name = meta.get("source")
    if not isinstance(name, str) or not name:
        raise ValueError(f"{output.name} does not name the image it was made from")
    source = input_dir / name
    if not source.exists():
        raise ValueError(f"its input {str(source)!r} is no longer there")
    labels = list(open_ngff(output).levels)
    if not is_zarr_image(source):  # a TIFF / PNG written as OME-Zarr (--format zarr)
        image = read_image(source, meta.get("channels"), axes=meta.get("axes_given"))
        return FirstResult(source, output, image, labels[0], spacing=recorded_spacing(meta))
    found = open_ngff(source)
    levels = list(found.levels)
    stem = name[:-len(".ome.zarr")] if name.endswith(".ome.zarr") else Path(name).stem
    kwargs = {} if found.channel_axis is None else {"channel_axis": found.channel_axis}
    return FirstResult(source, output, None, labels if len(labels) > 1 else labels[0],
                       layers=[(stem, levels if len(levels) > 1 else levels[0], kwargs)],
                       spacing=recorded_spacing(meta))


def report_text(summary: BatchSummary, input_dir: Union[str, os.PathLike], max_lines: int = MAX_REPORT_LINES) -> str:
    """The summary with paths relative to ``input_dir``, cut to ``max_lines`` lines plus
    "… and N more"."""
    text = str(summary).replace(str(Path(input_dir)) + os.sep, "")
    lines = text.splitlines()
    if len(lines) > max_lines:
        lines = lines[:max_lines] + [f"… and {len(lines) - max_lines} more"]
    return "\n".join(lines)


def _seconds(seconds: float) -> str:
    """``"2.5 s"``, ``"12 s"``, ``"3 min 05 s"``."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest:02d} s"


class BatchWidget(WorkerWidget):
    """Apply a saved classifier to a folder of images."""

    def __init__(self, napari_viewer: "napari.viewer.Viewer") -> None:
        super().__init__(napari_viewer, "Apply", "Choose a classifier, an input folder and an output folder, "
                                                 "then click Apply.")
        self.summary: Optional[BatchSummary] = None
        self.opened: list[Layer] = []  # the layers showing the last run's first result
        self._input_dir = ""
        self._run_started = time.perf_counter()
        self._bundle = FileEdit(mode="r", filter="*.dinoseg", label="classifier")
        self._inputs = FileEdit(mode="d", label="input folder")
        self._out = FileEdit(mode="d", label="output folder")
        self._probabilities = CheckBox(value=False, text="also write probabilities")
        self._zarr = CheckBox(value=False, text="write OME-Zarr")
        self._overwrite = CheckBox(value=False, text="overwrite existing outputs")
        self._open_first = CheckBox(value=True, text="open the first result")
        self._measure = CheckBox(value=False, text="measure every image")  # where: the tooltip (a wide dock otherwise)
        self._min_size = SpinBox(value=0, min=0, max=10**9, label="min object size (px)")
        self._pixel_size = LineEdit(value="", label="pixel size (µm)")
        self._pixel_size.native.setPlaceholderText("from each image's metadata")
        self._resample = CheckBox(value=False, text="resample to the training pixel size")
        self._report = TextEdit(value="", label="report")
        self._report.read_only = True
        report = self._report.native
        report.setWordWrapMode(QTextOption.WrapMode.WrapAtWordBoundaryOrAnywhere)  # long paths wrap, never widen
        report.setMinimumHeight(REPORT_LINES_SHOWN * report.fontMetrics().lineSpacing() + 12)
        policy = report.sizePolicy()  # taller with the dock: the spare height is the report's
        policy.setVerticalPolicy(QSizePolicy.Policy.Expanding)
        report.setSizePolicy(policy)
        report.setPlaceholderText("after a run: done / skipped / failed, with reasons")
        for name, tip in TOOLTIPS.items():
            getattr(self, name).tooltip = tip
        for name in REMEMBERED:
            if name in _LAST:
                getattr(self, name).value = _LAST[name]
        self.option_section = Section("options", [self._probabilities, self._zarr, self._overwrite, self._open_first,
                                                  self._measure, self._min_size, self._pixel_size, self._resample],
                                      tooltip="probabilities, OME-Zarr, overwriting, opening the first result, "
                                              "measuring, pixel size")
        self.extend([self._bundle, self._inputs, self._out, self.option_section, *self.run_controls, self._report])
        self._fill_with_last()  # the report takes the dock's spare height

    def _prepare(self):
        values = [str(w.value) for w in (self._bundle, self._inputs, self._out)]
        if any(v in ("", ".") for v in values):
            raise ValueError("choose the classifier file, the input folder and the output folder")
        measure = self._measure_options()
        pixel_size = self._given_pixel_size()
        _LAST.update({name: getattr(self, name).value for name in REMEMBERED})
        self.summary, self._input_dir, self._run_started = None, values[1], time.perf_counter()
        self._set_report("")
        options = (bool(self._probabilities.value), bool(self._overwrite.value), bool(self._open_first.value))
        return run_batch_job, (*values, *options, measure, bool(self._resample.value), pixel_size,
                               "zarr" if self._zarr.value else "auto")

    def _measure_options(self) -> Optional[MeasureOptions]:
        """The measure options, or ``None`` unless "measure" is ticked; a pixel size that is not
        a positive number is refused here, before the run."""
        if not self._measure.value:
            return None
        return MeasureOptions(min_size=int(self._min_size.value), pixel_size=self._given_pixel_size())

    def _given_pixel_size(self) -> Optional[float]:
        """The pixel size field's µm per pixel, ``None`` when empty; refused (``ValueError``) when
        it is not a positive number."""
        from ..pixel_scale import checked_pixel_size

        text = self._pixel_size.value.strip()
        try:
            return checked_pixel_size(float(text)) if text else None
        except ValueError:
            raise ValueError(f"pixel size: {text!r} is not a positive number of µm per pixel (leave it empty to "
                             "read each image's metadata)") from None

    def _set_report(self, text: str) -> None:
        self._report.native.setPlainText(text)  # plain: a '<' in a file name is not markup

    def _on_result(self, result: BatchResult) -> None:
        summary = self.summary = result.summary
        took = _seconds(time.perf_counter() - self._run_started)
        self._set_report(report_text(summary, self._input_dir))
        opened = self._open(result.first) if result.first is not None else result.note
        head = f"stopped early after {took} (see the report)" if summary.stopped else f"finished in {took}"
        measured = f"measurements in {summary.measurements.folder}" if summary.measurements is not None else ""
        self._status.value = "; ".join(part for part in (head, measured, opened) if part)
        if summary.stopped:
            show_warning(f"dinoseg: stopped early: {summary.stopped}")
        doubtful = sorted({Path(path).name for path, _ in summary.warnings})
        if doubtful:
            # the names go to the report, where they wrap: a toast shows one clipped line
            show_warning(f"dinoseg: {len(doubtful)} image(s) unlike the training images; see the report")
        if result.first is None and result.note and summary.done:  # there was one, but it could not be read
            show_warning(f"dinoseg: {result.note}")

    def _on_errored(self, err: BaseException) -> None:
        super()._on_errored(err)
        if isinstance(err, Cancelled) and not self._closed:
            why = "stopped: the dock was hidden" if self._stop_reason else "cancelled"
            self._status.value = f"{why}; the images finished before are in the output folder; Apply goes on from there"

    # ---- the first result ------------------------------------------------------------

    def _open(self, first: FirstResult) -> str:
        """Show ``first``'s input and labels on top, hide every other layer, select the labels
        and fit the view to them; returns the status line's words for it."""
        scale = {} if first.spacing is None else {"scale": tuple(first.spacing)}  # a volume at its voxel size
        shown = [self._put(Image, name, data, {**kwargs, **scale}) for name, data, kwargs in _image_layers(first)]
        shown.append(self._put(Labels, _output_name(first.output), first.labels, scale))
        layers = self._viewer.layers
        for layer in shown:  # on top, in order: the labels last
            layers.move(layers.index(layer), len(layers))
        for layer in layers:
            layer.visible = any(layer is s for s in shown)
        layers.selection.active = shown[-1]
        self._viewer.reset_view()
        self.opened = shown
        return f"opened {first.source.name} with its labels"

    def _put(self, kind: type, name: str, data, kwargs: dict) -> Layer:
        """The layer of the last run named ``name`` with ``data`` in place, or a new one (a list of
        arrays: a multiscale layer, always new)."""
        for layer in self.opened:
            if (layer.name == name and type(layer) is kind and layer in self._viewer.layers
                    and "channel_axis" not in kwargs and not isinstance(data, list) and not layer.multiscale and layer.data.ndim == data.ndim
                    and getattr(layer, "rgb", False) == kwargs.get("rgb", False)):
                layer.data = data
                layer.scale = kwargs.get("scale", (1.0,) * layer.ndim)
                if kind is Image:
                    layer.reset_contrast_limits()
                return layer
        if "channel_axis" in kwargs:  # one layer per channel (an OME-Zarr input with channels): the first shown
            added = self._viewer.add_image(data, name=name, **kwargs)
            return added[0]
        layer = kind(data, name=name, multiscale=isinstance(data, list), **kwargs)
        self._viewer.add_layer(layer)
        return layer


def _image_layers(first: FirstResult) -> list[tuple[str, np.ndarray, dict]]:
    """``(name, data, kwargs)`` of the image layer(s) showing ``first``'s input: grey, RGB, or
    one additive layer per channel."""
    if first.layers is not None:
        return first.layers
    image, stem = first.image, first.source.stem
    if image.channels == 1:
        return [(stem, image.data, {})]
    if image.channels == 3:
        return [(stem, image.data, {"rgb": True})]
    return [(f"{stem} [channel {c}]", image.data[..., c],
             {"colormap": CHANNEL_COLORMAPS[c % len(CHANNEL_COLORMAPS)], "blending": "additive"})
            for c in range(image.channels)]


def _output_name(output: Path) -> str:
    """A labels output's layer name: its file name without ``.tif`` / ``.ome.zarr``."""
    return output.name[:-len(".ome.zarr")] if output.name.endswith(".ome.zarr") else output.stem
