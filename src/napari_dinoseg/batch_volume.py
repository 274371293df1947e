"""``dinoseg apply`` with a 3-D classifier (``FeatureConfig(dims=3)``): each input is one ``(Z, Y, X)``
volume, segmented in 3-D at its voxel spacing (:func:`process_volume`).

An input is a TIFF holding one volume (one leading axis, ``Z`` or unnamed, and one channel: read
whole, :func:`read_volume`), or an OME-Zarr with a ``z`` axis (its other axes of size 1; read
lazily, a block at a time, by the :class:`~napari_dinoseg.Segmenter`). Its spacing is the one
given (``--spacing``), else its metadata's (:func:`~napari_dinoseg.voxel_spacing.voxel_spacing_of`),
else unknown (segmented as isotropic voxels, with a warning when the classifier learnt anisotropic
ones).

The outputs follow the plane outputs' rules (:mod:`napari_dinoseg.batch_outputs`,
:mod:`napari_dinoseg.batch_zarr`): the same record (fingerprint, input identity, classes, warnings,
pixel size, and here ``spacing_um``, ``spacing_from``, ``dims: 3``), written atomically, never over
another classifier's output, skipped by a rerun when finished.

- A TIFF's labels: ``<stem>_labels.tif``, ``(Z, Y, X)``, written as a plane output is
  (:func:`~napari_dinoseg.batch_outputs._write_tiff`): the record in tifffile's JSON description
  (with the spacing), the in-plane pixel size in the resolution tags; probabilities
  ``<stem>_proba.tif``, ``(Z, Y, X, K)``. The z spacing is in the record only: ImageJ keeps it in
  its own description, which would be a second one in the file (TIFF allows one); Fiji opens the
  labels with their in-plane scale.
- An OME-Zarr's (or any input's with ``--format zarr``): ``<stem>_labels.ome.zarr``, axes
  ``zyx``, chunked by the prediction's blocks, with a pyramid and the voxel sizes; probabilities
  ``<stem>_proba.ome.zarr``, ``czyx``. Made in a partial store (``.<name>.partial``), renamed once
  complete; a partial store left by a killed run is started again.

Memory: a TIFF volume's pixels and its labels (``Z * Y * X`` bytes; its probabilities when
asked); never its features, which the Segmenter computes a block at a time. An OME-Zarr's
outputs are written block by block: only a block is held.
"""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path
from typing import Callable, NamedTuple, Optional, Sequence

import numpy as np

from .batch_outputs import _refuse_foreign, _remove_if_foreign, _write_tiff
from .inputs import file_identity, input_stat, source_record
from .ngff import is_zarr_image
from .outputs import LABEL_SUFFIX, PROBA_SUFFIX
from .volume import Spacing, checked_spacing


class Volume(NamedTuple):
    """An input read as one volume: ``data`` ``(Z, Y, X)`` (numpy, or a lazy view of a zarr
    array), what the reading noted, the µm per pixel its metadata gives (``None``: none) and
    where from (``"none"``)."""

    data: object
    notes: tuple
    pixel_size_um: Optional[float]
    pixel_size_from: str


def spacing_option(seg, spacing: Optional[Sequence[float]]) -> Optional[Spacing]:
    """A spacing given to a run (``apply_bundle(spacing=...)``) checked against its classifier.

    Raises
    ------
    ValueError
        Not three positive numbers, or given for a classifier of planes.
    """
    spacing = checked_spacing(spacing, "the voxel spacing")
    if spacing is not None and seg.features.dims != 3:
        raise ValueError("a voxel spacing (--spacing) is for a 3-D classifier, and this one segments planes "
                         "(trained with 2-D features); leave --spacing out, or train one with dinoseg train --dims 3")
    return spacing


def process_volume(seg, source: Path, out_dir: Path, probabilities: bool, stem: Optional[str],
                   axes: Optional[str], bundle_id: str, overwrite: bool, spacing: Optional[Sequence[float]] = None,
                   level: int = 0, output_format: str = "auto", pixel_size: Optional[float] = None,
                   measure: bool = False, resample: bool = False) -> tuple[str, str, str, list]:
    """:func:`~napari_dinoseg.batch.process_file` of a 3-D classifier: ``(input, "done", labels
    output, warnings)``; raises for the caller to report (a bad input, a full disk, an input that
    changed while it was segmented).

    Parameters
    ----------
    seg : Segmenter
        Fitted with ``FeatureConfig(dims=3)``.
    source
        A TIFF holding one ``(Z, Y, X)`` volume, or an OME-Zarr with a ``z`` axis.
    out_dir, probabilities, stem, axes, bundle_id, overwrite
        As for :func:`~napari_dinoseg.batch.process_file`.
    spacing : (dz, dy, dx), optional
        µm per voxel, replacing the input's metadata (see the module docstring).
    level, output_format
        As for :func:`~napari_dinoseg.batch.apply_bundle`.
    pixel_size
        µm per pixel recorded when the spacing is unknown (it does not scale the 3-D filters).
    measure, resample
        Asked of the run: volumes are neither measured one by one nor resampled (a warning says so).
    """
    source, out_dir = Path(source), Path(out_dir)
    store = output_format == "zarr" or is_zarr_image(source)
    before = input_stat(source)
    volume = open_volume(seg, source, axes, level, probabilities)
    used, used_from, notes = volume_spacing(seg, source, spacing, level)
    size, size_from = ((used[2], used_from) if used is not None else (pixel_size, "given") if pixel_size is not None
                       else (volume.pixel_size_um, volume.pixel_size_from))
    meta = {"dinoseg_bundle": bundle_id, **source_record(source, before), "classes": seg.classes.tolist(),
            "axes_given": axes, "channels": seg.n_channels, "dims": 3, "level": level,
            "pixel_size_um": size, "pixel_size_from": size_from,
            "spacing_um": None if used is None else list(used), "spacing_from": used_from}
    notes += list(volume.notes) + _not_done(measure, resample)
    unchanged = partial(_check_unchanged, source, before)
    if store:
        from .batch_zarr import ZARR_LABEL_SUFFIX, refuse_foreign_store, store_stem

        target = out_dir / ((stem or store_stem(source)) + ZARR_LABEL_SUFFIX)
        check = partial(refuse_foreign_store, bundle_id=bundle_id, overwrite=overwrite)
        warnings = segment_volume_store(seg, volume.data, target, meta, probabilities, used, check, notes, unchanged)
    else:
        target = out_dir / ((stem or source.stem) + LABEL_SUFFIX)
        check = partial(_refuse_foreign, bundle_id=bundle_id, overwrite=overwrite)
        warnings = segment_volume_tiff(seg, volume.data, target, meta, probabilities, used, check,
                                       notes, unchanged, bundle_id)
    return str(source), "done", str(target), warnings


def open_volume(seg, source: Path, axes: Optional[str], level: int = 0, probabilities: bool = False) -> Volume:
    """An input as one :class:`Volume`: an OME-Zarr (or plain zarr) image lazily, of ``level``; a
    TIFF read whole (:func:`read_volume`), refused first when it and its outputs would not fit."""
    if is_zarr_image(source):
        return _store_volume(source, axes, level)
    from .pixel_size import pixel_size_of

    data, notes = read_volume(source, axes, memory=_output_memory(seg, probabilities))
    found = pixel_size_of(source)
    if found is None:
        return Volume(data, notes, None, "none")
    return Volume(data, notes, found.um, f"input: {found.source}")


def read_volume(path: Path, axes: Optional[str] = None,
                memory: Optional[Callable[[tuple, int], int]] = None) -> tuple[np.ndarray, tuple]:
    """``((Z, Y, X) array, notes)`` of a TIFF holding one single-channel volume.

    ``axes``, ``memory``: as for :func:`~napari_dinoseg.reading.read_image`. A file of one leading
    axis, ``Z`` or unnamed (``Q``), and one channel is a volume.

    Raises
    ------
    ValueError
        What :func:`~napari_dinoseg.reading.read_image` refuses; a single plane; a file of other
        leading axes (a time series, several of them) or channels, naming its axes and shape.
    """
    from .reading import read_image

    image = read_image(path, 1, axes=axes, memory=memory)
    lead = image.lead_axes
    if not lead:
        raise ValueError(f"it is a single plane (shape {image.data.shape}), not a volume: a 3-D classifier segments "
                         "(Z, Y, X) volumes; segment it with a classifier trained on planes (dims=2)")
    if len(lead) != 1 or lead not in "ZQ":
        raise ValueError(f"its axes are {lead}YX (shape {image.data.shape}): a 3-D classifier segments one (Z, Y, X) "
                         "volume per file; split it into volumes (e.g. one file per time point), or give its axes "
                         "if they are misread (--axes, e.g. ZYX)")
    return image.data, tuple(image.notes)


def volume_spacing(seg, source: Path, given: Optional[Sequence[float]],
                   level: int = 0) -> tuple[Optional[Spacing], str, list[str]]:
    """``(spacing in µm or None, where from, warnings)`` of an input: the one given, else its
    metadata's; a warning when it is unknown and the classifier learnt anisotropic voxels."""
    from .pixel_scale import MISMATCH_TOLERANCE
    from .voxel_spacing import voxel_spacing_of

    if given is not None:
        return checked_spacing(given), "given", []
    found = voxel_spacing_of(source, level)
    if found is not None:
        return found.zyx_um, f"input: {found.source}", []
    trained = seg.spacing
    if trained is None or max(trained) <= (1 + MISMATCH_TOLERANCE) * min(trained):
        return None, "none", []
    shown = ", ".join(f"{v:.3g}" for v in trained)
    return None, "none", [f"segmented as isotropic voxels: this volume's spacing is unknown (its metadata gives none) "
                          f"but the classifier was trained on voxels of ({shown}) (dz, dy, dx); give it "
                          "(--spacing DZ,DY,DX in µm)"]


def segment_volume_tiff(seg, volume, target: Path, meta: dict, probabilities: bool, spacing: Optional[Spacing],
                        check: Callable[[Path], None], notes: Sequence[str], unchanged: Callable[[], None],
                        bundle_id: str) -> list[str]:
    """Segment a volume held in memory and write its TIFF outputs (the probabilities first, the
    labels last: a volume is finished when its labels are there). Returns its warnings."""
    proba = None
    if probabilities:
        proba = seg.predict_proba(volume, spacing=spacing)
        labels = seg.to_labels(proba)
    else:
        labels = seg.segment(volume, spacing=spacing)
    warnings = seg.check(volume, labels if proba is None else proba, spacing=spacing) + list(notes)
    unchanged()
    meta = {**meta, "warnings": [str(w) for w in warnings]}  # reported again by a rerun that skips it
    proba_target = target.with_name(target.name[: -len(LABEL_SUFFIX)] + PROBA_SUFFIX)
    if proba is not None:
        _write_tiff(proba_target, proba, {**meta, "axes": "ZYXC"}, check, pixel_size=meta["pixel_size_um"])
    else:  # never leave another classifier's probabilities beside these labels
        _remove_if_foreign(proba_target, bundle_id)
    _write_tiff(target, labels, {**meta, "axes": "ZYX"}, check, pixel_size=meta["pixel_size_um"])
    return warnings


def segment_volume_store(seg, volume, target: Path, meta: dict, probabilities: bool, spacing: Optional[Spacing],
                         check: Callable[[Path], None], notes: Sequence[str],
                         unchanged: Callable[[], None]) -> list[str]:
    """Segment a volume block by block into OME-Zarr outputs (``zyx`` labels, ``czyx``
    probabilities) made in partial stores, finished (pyramid, record, ``complete``) and renamed
    (:func:`napari_dinoseg.batch_zarr._finish`). Returns the volume's warnings."""
    import shutil

    from .batch_zarr import ZARR_LABEL_SUFFIX, ZARR_PROBA_SUFFIX, _finish, partial_path
    from .ngff_write import create_ngff
    from .planes import label_dtype

    shape = tuple(int(n) for n in volume.shape)
    chunks = tuple(min(b, n) for b, n in zip(seg.featuriser.volume_block(), shape))
    sizes = None if spacing is None else dict(zip("zyx", spacing))
    sizes = sizes if sizes is not None or meta["pixel_size_um"] is None else meta["pixel_size_um"]
    finals = [target, target.with_name(target.name.replace(ZARR_LABEL_SUFFIX, ZARR_PROBA_SUFFIX))
              if probabilities else None]
    k = seg.classifier.n_classes
    kinds = (((shape, label_dtype(seg.classes), "zyx", chunks), "labels"),
             (((k, *shape), np.float32, "czyx", (1, *chunks)), "intensity"))
    stores = []
    for final, ((shape_, dtype, axes, chunk), kind) in zip(finals, kinds):
        if final is None:
            stores.append(None)
            continue
        stores.append(partial_path(final))
        shutil.rmtree(stores[-1], ignore_errors=True)  # a killed run's: started again
        create_ngff(stores[-1], shape_, dtype, axes=axes, chunks=chunk, pixel_size_um=sizes, name=final.name,
                    metadata={"run": meta}, kind=kind)
    labels = _level0(stores[0])
    if probabilities:
        out = seg.predict_proba(volume, spacing=spacing, out=LabelsAndProba(seg, labels, _level0(stores[1])))
    else:
        out = seg.segment(volume, spacing=spacing, out=labels)
    warnings = seg.check(volume, out, spacing=spacing) + list(notes)
    unchanged()
    _finish(stores, finals, {**meta, "warnings": [str(w) for w in warnings]}, check)
    return warnings


class LabelsAndProba:
    """The ``(Z, Y, X, K)`` float32 ``out`` of :meth:`~napari_dinoseg.Segmenter.predict_proba` that
    writes each block's labels into ``labels`` (``(Z, Y, X)``) and its probabilities into
    ``proba``, classes first (``(K, Z, Y, X)``, as NGFF stores channels)."""

    def __init__(self, segmenter, labels, proba) -> None:
        self.segmenter, self.labels, self.proba = segmenter, labels, proba
        self.shape = (*labels.shape, segmenter.classifier.n_classes)
        self.dtype = np.dtype(np.float32)

    def __setitem__(self, region: tuple, proba: np.ndarray) -> None:
        self.labels[region] = self.segmenter.to_labels(proba)
        self.proba[(slice(None), *region)] = np.moveaxis(proba, -1, 0)


class SingletonsDropped:
    """A zarr array whose axes other than ``z``, ``y``, ``x`` are of size 1 (``tczyx``, ``czyx``)
    seen as ``(Z, Y, X)``, read lazily: ``view[key]`` indexes the array at 0 on those axes."""

    def __init__(self, array, axes: str) -> None:
        self.array, self.keep = array, [axes.index(a) for a in "zyx"]
        self.shape = tuple(int(array.shape[i]) for i in self.keep)
        self.dtype, self.ndim = np.dtype(array.dtype), 3

    def __getitem__(self, key) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        full: list = [0] * len(self.array.shape)
        for i, k in zip(self.keep, key + (slice(None),) * (3 - len(key))):
            full[i] = k
        return np.asarray(self.array[tuple(full)])


def _store_volume(source: Path, axes: Optional[str], level: int) -> Volume:
    """An OME-Zarr (or plain zarr) image of a ``z`` axis as a lazy :class:`Volume` of ``level``."""
    from .ngff import open_ngff

    image = open_ngff(source, level, axes.lower() if axes else None)
    others = [a for a in image.axes if a not in "zyx"]
    shape = tuple(int(n) for n in image.data.shape)
    if "z" not in image.axes or any(shape[image.axes.index(a)] != 1 for a in others):
        raise ValueError(f"its axes are {image.axes!r} (shape {shape}): a 3-D classifier segments (Z, Y, X) "
                         "volumes, an OME-Zarr with a z axis (its other axes of size 1); segment it with a "
                         "classifier trained on planes (dims=2), or split it into volumes")
    from .pixel_size import FROM_NGFF

    data = image.data if image.axes == "zyx" else SingletonsDropped(image.data, image.axes)
    size = image.pixel_size_um
    where = "none" if size is None else f"input: {FROM_NGFF}" + (f", level {level}" if level else "")
    return Volume(data, (), size, where)


def _level0(store: Path):
    from .ngff import open_ngff

    return open_ngff(store, 0, writable=True).levels[0]


def _output_memory(seg, probabilities: bool) -> Callable[[tuple, int], int]:
    """``memory(plane shape, planes)`` of :func:`~napari_dinoseg.reading.read_image` for a volume:
    its labels (and probabilities) held whole, and one block's features."""
    from .planes import label_dtype

    block_voxels = math.prod(seg.featuriser.volume_block())

    def memory(plane_shape: tuple, n_planes: int) -> int:
        voxels = n_planes * math.prod(plane_shape[:2])
        k = seg.classifier.n_classes
        block = min(voxels, block_voxels) * seg.classifier.n_features * 4
        return voxels * (label_dtype(seg.classes).itemsize + (4 * k if probabilities else 0)) + block

    return memory


def _check_unchanged(source: Path, before) -> None:
    """Raise when the input changed since ``before`` (its :func:`~napari_dinoseg.inputs.input_stat`)."""
    if file_identity(input_stat(source)) != file_identity(before):
        raise ValueError("the input changed while it was segmented: it is being written; run again once it is")


def _not_done(measure: bool, resample: bool) -> list[str]:
    """Warnings for what a run asked and volumes do not have yet."""
    notes = []
    if resample:
        notes.append("not resampled to the training pixel size: volumes are segmented at their own spacing, the "
                     "3-D filters scaled by it")
    if measure:
        notes.append("not measured as a volume: 3-D measurements are not made yet (the folder's tables read "
                     "its label output as a stack of planes)")
    return notes
