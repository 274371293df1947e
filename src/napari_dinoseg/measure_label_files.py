"""Label image files made anywhere, measured (:func:`measure_files`, ``dinoseg measure``): the
files found, read as label values, with their images for intensities and their pixel size, and
their tables and plots written to a folder of the caller's choice."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

from .atomic import check_writable
from .inputs import find_inputs
from .measure_options import GIVEN, NO_PIXEL_SIZE, MeasureOptions
from .measure_records import _tables_of, image_record, measure_plane
from .measure_tables import Report, _tables, _write_report
from .outputs import PROBA_SUFFIX


def measure_files(label_files, out_dir: Union[str, os.PathLike], *, images: Optional[Sequence] = None,
                  pixel_size: Optional[float] = None, min_size: int = 0, split: bool = False,
                  classes: Optional[Sequence[int]] = None,
                  progress: Optional[Callable[[int, int, str], None]] = None) -> Report:
    """Measure label image files and write the tables and plots to ``out_dir``.

    Parameters
    ----------
    label_files
        A folder (its ``.tif`` / ``.tiff`` / ``.png`` files but ``*_proba.tif``), a glob
        pattern, a file, or a list of files and folders. Each is read as label values
        (:func:`napari_dinoseg.label_files.read_label_file`: greyscale, palette, integer TIFF; every
        page or plane of a stack a field, measured in 2-D); colour (RGB) label files are
        refused (their colours would be numbered file by file).
    out_dir
        Where :data:`~napari_dinoseg.measure_tables.REPORT_FILES` are written (made if missing);
        not a folder of the label files (its PNG plots would be read as label files by the next
        run), a sub-folder is fine.
    images
        The images the labels were made from, one per label file in the same order, for the
        objects' ``mean_intensity``; the same number of planes of the same height and width.
    pixel_size
        µm per pixel of every file; ``None``: each label file's metadata (an output of
        ``dinoseg apply`` records the one its run used; OME, ImageJ, TIFF resolution, PNG
        pHYs, see :func:`napari_dinoseg.pixel_size.pixel_size_of`), else its image's, else none.
    min_size, split
        As in :class:`~napari_dinoseg.measure_options.MeasureOptions`.
    classes
        The label values measured as objects (default: every value but 0).
    progress
        ``progress(done, total, file name)`` after each file (and ``(0, total, "")`` first).

    Returns
    -------
    Report
        ``image`` in the tables is each label file's name (its path as given where two share
        a name).

    Raises
    ------
    ValueError
        Bad options, no label files, a file that cannot be read as labels (named), images not
        one per label file or of other sizes, an output folder that cannot be written or holds
        the label files; nothing is written then.
    """
    import pandas as pd

    from .label_files import read_label_file
    from .pixel_size import pixel_size_of
    from .reading import read_image

    options = MeasureOptions(min_size=min_size, split=split, pixel_size=pixel_size)
    files = _label_paths(label_files)
    image_files = None if images is None else [Path(p) for p in ([images] if isinstance(images, (str, os.PathLike))
                                                                  else images)]
    if image_files is not None and len(image_files) != len(files):
        raise ValueError(f"{len(image_files)} image(s) for {len(files)} label files: give one image per label file, in "
                         "the same order, or none")
    out = Path(out_dir)
    _check_out(out, files)
    names = [p.name for p in files]
    if len(set(names)) < len(names):
        names = [str(p) for p in files]
    report = Report(folder=out)
    gathered = []
    if progress is not None:
        progress(0, len(files), "")
    for n, path in enumerate(files):
        try:
            labels = read_label_file(path)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None
        if labels.colours is not None:
            raise ValueError(f"{path}: an RGB colour image, not label values: measure label images whose pixel values "
                             "are the classes (greyscale, palette or integer TIFF)")
        report.notes += [(str(path), note) for note in labels.notes]
        image_planes = None
        if image_files is not None:
            try:
                image_planes = read_image(image_files[n]).planes
            except ValueError as err:
                raise ValueError(f"{image_files[n]}: {err}") from None
            if len(image_planes) != len(labels.planes) or image_planes[0].shape[:2] != labels.planes[0].shape:
                raise ValueError(f"{image_files[n]} has {len(image_planes)} plane(s) of {image_planes[0].shape[:2]} px "
                                 f"but its label file {path} has {len(labels.planes)} of {labels.planes[0].shape} "
                                 "px: give each label file the image it was made from")
        size, size_from = _file_pixel_size(options, path, None if image_files is None else image_files[n],
                                           pixel_size_of, report)
        measured = [_tables_of(measure_plane(plane, options, image=None if image_planes is None else image_planes[i],
                                             classes=classes, pixel_size=size))
                    for i, plane in enumerate(labels.planes)]
        gathered.append(image_record(measured, image=names[n], labels=path.name, data_sha256=None, options=options,
                                     pixel_size=size, pixel_size_from=size_from))
        if progress is not None:
            progress(n + 1, len(files), path.name)
    fractions, objects = _tables(gathered, pd)
    _write_report(report, fractions, objects)
    return report


def _label_paths(label_files) -> list[Path]:
    """The label files of a folder, glob, file or list (folders expanded, ``*_proba.tif`` left out)."""
    from .label_files import LABEL_SUFFIXES

    given = [label_files] if isinstance(label_files, (str, os.PathLike)) else list(label_files)
    if not given:
        raise ValueError("no label files given")
    files: list = []
    for item in given:
        if Path(item).is_dir() or not os.path.lexists(item):  # a folder or a glob pattern: its label files
            found, _ = find_inputs(item)
            files += [p for p in found if p.suffix.lower() in LABEL_SUFFIXES and not p.name.endswith(PROBA_SUFFIX)]
            continue
        found, unusable = find_inputs([item])
        for path, reason in unusable:
            if "listed twice" not in reason:
                raise ValueError(f"{path}: {reason}")
        files += found
    files = list(dict.fromkeys(files))
    if not files:
        raise ValueError(f"no label files (.tif, .tiff, .png) in {', '.join(map(str, given))}")
    return files


def _check_out(out: Path, files: Sequence[Path]) -> None:
    """Refuse an output folder that holds label files, or that cannot be written."""
    for path in files:
        if out.is_dir() and os.path.samefile(out, path.parent):
            raise ValueError(f"the output folder {str(out)!r} holds the label file {path.name}: its plots would be "
                             "read as label files by the next run; choose another folder (a sub-folder is fine)")
    check_writable(out)


def _file_pixel_size(options: MeasureOptions, labels: Path, image: Optional[Path], pixel_size_of,
                     report: Report) -> tuple[Optional[float], str]:
    """``(µm per pixel or None, where from)``: given > the label file's metadata > the image's."""
    if options.pixel_size is not None:
        return options.pixel_size, GIVEN
    for what, path in (("labels", labels), ("image", image)):
        found = None if path is None else pixel_size_of(path)
        if found is not None:
            if found.note:
                report.notes.append((str(path), found.note))
            return found.um, f"{what}: {found.source}"
    return None, NO_PIXEL_SIZE
