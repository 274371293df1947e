"""OME-Zarr outputs of ``dinoseg apply``: an image's labels (and probabilities) written tile by
tile into chunked NGFF 0.5 stores with a pyramid, finished by a rerun after a crash, and the
tiles of one large image spread over a dask cluster.

An output is made in a partial store beside its final name (``.<name>.partial``, hidden: never
listed as an input) and renamed to ``<stem>_labels.ome.zarr`` only once every tile is written,
its pyramid built and its metadata (fingerprint, warnings, pixel size, ``complete``) recorded:
an output under its final name is always whole. Each tile is a block of the tile grid
(:func:`~napari_dinoseg.planes.grid_windows`), the chunks of the store are that block, so every
chunk is written whole by one window, by whichever process. After each tile a record of it
(``tiles/<plane>_<tile>.npz``: what the shift report needs of it) is written in the partial
store; a run stopped by kill -9, a full disk or a lost worker leaves the partial store, and the
next run with the same classifier and input predicts only the tiles not recorded.

Memory: one window's features per process, never the plane (the image is read window by window,
:class:`~napari_dinoseg.lazy_plane.LazyPlane`).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from .ngff import PlaneView
from .window_prediction import TileFindings, plane_findings, plane_tiles, predict_windows

ZARR_LABEL_SUFFIX = "_labels.ome.zarr"
ZARR_PROBA_SUFFIX = "_proba.ome.zarr"
#: Tiles of one image per dask task, where the image's tiles are spread over a cluster.
TILES_PER_TASK = 4
TILE_RECORDS = "tiles"


def partial_path(target: Path) -> Path:
    """The hidden store an output is made in before it takes its final name."""
    return target.parent / f".{target.name}.partial"


class PlaneOut:
    """One plane of an output store as :func:`~napari_dinoseg.window_prediction.predict_windows`
    writes it: ``out[rows, cols] = proba`` (``(h, w, K)`` float32) writes the plane's labels (and,
    with a probability store, the probabilities, classes first as NGFF stores channels)."""

    def __init__(self, segmenter, labels, index: tuple, proba=None) -> None:
        self.segmenter, self.labels, self.proba, self.index = segmenter, labels, proba, index
        self.shape = (*labels.shape[-2:], segmenter.classifier.n_classes)
        self.dtype = np.dtype(np.float32)

    def __setitem__(self, region, proba: np.ndarray) -> None:
        self.labels[(*self.index, *region)] = self.segmenter.to_labels(proba)
        if self.proba is not None:
            self.proba[(*self.index, slice(None), *region)] = np.moveaxis(proba, -1, 0)


def _record(folder: Path, plane: int, tile: int) -> Path:
    return folder / TILE_RECORDS / f"{plane}_{tile}.npz"


def _write_record(folder: Path, plane: int, tile: int, found: TileFindings) -> None:
    """Record that a tile is written (after its chunks), with its findings, atomically."""
    target = _record(folder, plane, tile)
    temp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    with open(temp, "wb") as f:
        np.savez(f, **found.to_arrays())
    os.replace(temp, target)


def _read_record(path: Path) -> Optional[TileFindings]:
    try:
        with np.load(path) as data:
            return TileFindings(data["rows"], data["signals"], data["counts"])
    except Exception:  # cut short by a crash: the tile is predicted again
        return None


class StoreInput:
    """An input of a run writing OME-Zarr outputs, as planes: an OME-Zarr (or plain zarr) image
    read lazily (its resolution ``level``), or another image file (TIFF, PNG) read into memory by
    :func:`~napari_dinoseg.reading.read_image` (``dinoseg apply --format zarr``).

    Attributes
    ----------
    lead_shape : tuple of int
    lead_axes : str
        NGFF axis names of the leading axes (``"t"``, ``"z"``, ``"tz"``, ``""``).
    planes : list of (index, (H, W) or (H, W, C) array-like)
    notes : list of str
        What the reading left out (an alpha channel, ...).
    """

    def __init__(self, source: Path, axes: Optional[str], n_channels: Optional[int], level: int = 0) -> None:
        from .ngff import is_zarr_image, open_ngff, planes

        self.notes: list[str] = []
        if is_zarr_image(source):
            image = open_ngff(source, level, axes.lower() if axes else None)
            self.lead_shape, self.lead_axes, self.planes = image.lead_shape, image.lead_axes, list(planes(image))
            self.axes = image.axes
            return
        from .reading import read_image

        image = read_image(source, n_channels, axes=axes)
        lead = image.lead_axes.lower()
        if any(a not in "tz" for a in lead) or len(set(lead)) != len(lead):
            raise ValueError(f"its leading axes {image.lead_axes!r} have no OME-Zarr name (t or z): write TIFF outputs "
                             "for it (leave out --format zarr), or give its axes (--axes, e.g. ZYX)")
        self.lead_shape, self.lead_axes = image.lead_shape, lead
        self.planes = [(tuple(int(i) for i in index), plane)
                       for index, plane in zip(np.ndindex(*image.lead_shape), image.planes)]
        self.axes, self.notes = lead + "yx" + ("c" if image.channels > 1 else ""), list(image.notes)

    @property
    def plane_shape(self) -> tuple[int, int]:
        return tuple(int(n) for n in self.planes[0][1].shape[:2])


def run_tiles(bundle: str, bundle_id: str, source: str, axes: Optional[str], level: int, index: tuple,
              plane_number: int, partial: str, proba_partial: Optional[str], scalings: list, tile: int,
              tiles: list) -> int:
    """Predict some tiles of one plane into the partial stores (in this process or on a dask
    worker: the classifier loaded once per process), recording each. Returns how many."""
    from .batch_classifier import _classifier
    from .lazy_plane import LazyPlane
    from .ngff import open_ngff

    seg, _ = _classifier(bundle, bundle_id)
    view = dict(StoreInput(Path(source), axes, seg.n_channels, level).planes)[index]
    plane = LazyPlane.from_scalings(view, scalings)
    labels = open_ngff(partial, 0, writable=True).levels[0]
    proba = None if proba_partial is None else open_ngff(proba_partial, 0, writable=True).levels[0]
    folder = Path(partial)
    predict_windows(seg, view, PlaneOut(seg, labels, index, proba), plane=plane, grid=True, tiles=tiles, tile=tile,
                    on_tile=lambda n, found: _write_record(folder, plane_number, n, found))
    return len(tiles)


def segment_store(seg, bundle: str, bundle_id: str, source: Path, target: Path, meta: dict,
                  probabilities: bool, axes: Optional[str] = None, level: int = 0,
                  pixel_size_um: Optional[float] = None, check: Optional[Callable[[Path], None]] = None,
                  client=None, progress=None, notes: Sequence[str] = ()) -> list[str]:
    """Segment an input (:class:`StoreInput`: an OME-Zarr image read lazily, or a TIFF / PNG read
    into memory) tile by tile into ``target`` (labels) and, with
    ``probabilities``, ``<stem>_proba.ome.zarr`` beside it; finish a partial output of the same
    run where one is there. Returns the image's warnings (the shift report of each plane).

    ``meta``: the output's metadata (fingerprint, source record, ...), stored under
    ``attrs["dinoseg"]``; a partial store whose metadata differs is started again. ``check``:
    called with each final path before it is replaced (refuses another classifier's output).
    ``client``: a dask client whose workers predict the tiles (``TILES_PER_TASK`` per task).
    ``notes``: warnings about the image found before (recorded and returned with the others)."""
    from .lazy_plane import LazyPlane

    image = StoreInput(source, axes, seg.n_channels, level)
    proba_target = target.with_name(target.name.replace(ZARR_LABEL_SUFFIX, ZARR_PROBA_SUFFIX)) \
        if probabilities else None
    stores = _partial_stores(seg, image, target, proba_target, meta, pixel_size_um)
    warnings = []
    all_planes = image.planes
    for number, (index, view) in enumerate(all_planes):
        plane = LazyPlane(view, seg.features, seg.n_channels)
        tiles = plane_tiles(seg, plane.shape, grid=True)
        todo = [n for n in range(len(tiles)) if _read_record(_record(stores[0], number, n)) is None]
        args = (bundle, bundle_id, str(source), axes, level, index, number, str(stores[0]),
                None if stores[1] is None else str(stores[1]), plane.scalings, seg.tile)
        if client is not None and len(todo) > TILES_PER_TASK and isinstance(view, PlaneView):  # a file read
            # into memory is segmented where it was read
            groups = [todo[i:i + TILES_PER_TASK] for i in range(0, len(todo), TILES_PER_TASK)]
            client.gather(client.map(run_tiles, *zip(*[(*args, group) for group in groups]), pure=False))
        elif todo:
            run_tiles(*args, todo)
        found = [_read_record(_record(stores[0], number, n)) for n in range(len(tiles))]
        if any(f is None for f in found):
            raise RuntimeError(f"tiles of plane {number} were not recorded: run again to finish them")
        where = f"plane {number}: " if len(all_planes) > 1 else ""
        findings = plane_findings(seg, found, plane.n_channels)
        warnings += [where + w for w in seg._window_warnings(findings)]
        if progress is not None:
            progress(number + 1, len(all_planes), f"plane {number + 1} of {len(all_planes)}")
    warnings += list(notes) + image.notes
    _finish(stores, (target, proba_target), {**meta, "warnings": warnings}, check)
    return warnings


def _partial_stores(seg, image, target: Path, proba_target: Optional[Path], meta: dict,
                    pixel_size_um: Optional[float]) -> tuple[Path, Optional[Path]]:
    """The partial stores of a run: those there of this run (same metadata) kept, else made."""
    from .ngff_write import create_ngff
    from .planes import label_dtype

    stores = []
    for final, kind in ((target, "labels"), (proba_target, "intensity")):
        if final is None:
            stores.append(None)
            continue
        partial = partial_path(final)
        if _run_of(partial) != _jsonable(meta):
            shutil.rmtree(partial, ignore_errors=True)
            shape = (*image.lead_shape, *image.plane_shape)
            if kind == "labels":
                dtype, axes = label_dtype(seg.classes), image.lead_axes + "yx"
            else:
                shape = (*image.lead_shape, seg.classifier.n_classes, *image.plane_shape)
                dtype, axes = np.float32, image.lead_axes + "cyx"
            create_ngff(partial, shape, dtype, axes=axes, chunks=seg.tile, pixel_size_um=pixel_size_um,
                        name=final.name, metadata={"run": meta}, kind=kind)
            (partial / TILE_RECORDS).mkdir()
        stores.append(partial)
    return stores[0], stores[1]


def _run_of(partial: Path) -> Optional[dict]:
    """The run metadata a partial store was started with (``None``: none there, or unreadable)."""
    try:
        attrs = json.loads((partial / "zarr.json").read_text())["attributes"]
        return attrs["dinoseg"]["run"]
    except Exception:
        return None


def _jsonable(meta: dict) -> dict:
    return json.loads(json.dumps(meta))


def _finish(stores, finals, meta: dict, check) -> None:
    """Build the pyramids, record the metadata (``complete``), drop the tile records, and give
    each partial store its final name (the probabilities first, the labels last: an image is
    finished when its labels are there)."""
    from .ngff_write import mark_complete, set_metadata, write_pyramid

    for partial, final in reversed(list(zip(stores, finals))):
        if partial is None:
            continue
        write_pyramid(partial)
        set_metadata(partial, meta)
        mark_complete(partial)
        shutil.rmtree(partial / TILE_RECORDS, ignore_errors=True)
        if check is not None:
            check(final)
        replace_store(partial, final)


def replace_store(partial: Path, final: Path) -> None:
    """Give a finished store its final name, replacing what is there (renamed aside first, then
    removed: the final name never holds a half-removed store)."""
    if final.exists():
        aside = final.with_name(f".{final.name}.old")  # the folder is this run's (its lock): one at a time
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(final, aside)
        os.replace(partial, final)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.replace(partial, final)


def store_targets(out: Path, stem: str, probabilities: bool) -> list[Path]:
    """The outputs of a zarr input: its labels, then (with ``probabilities``) its probabilities."""
    return [out / (stem + ZARR_LABEL_SUFFIX)] + ([out / (stem + ZARR_PROBA_SUFFIX)] if probabilities else [])


def finished_store(path: Path, out: Path, stem: str, probabilities: bool, bundle_id: str,
                   axes: Optional[str] = None, level: int = 0) -> tuple[str, list, str]:
    """:func:`~napari_dinoseg.batch_outputs._finished` of a zarr input's OME-Zarr outputs:
    ``"done"`` when each is complete (:func:`~napari_dinoseg.ngff.is_complete`), of this
    classifier, of the input as it is now and read with these axes; ``"foreign"`` for another
    classifier's; ``"redo"`` otherwise (with why, where an output was there)."""
    from .inputs import SOURCE_KEYS, source_record
    from .ngff import is_complete, metadata_of

    recorded = None
    for target in store_targets(out, stem, probabilities):
        if not target.exists():
            return "redo", [], ""
        meta = metadata_of(target)
        if meta.get("dinoseg_bundle") != bundle_id:
            return "foreign", [], ""
        if not is_complete(target):
            return "redo", [], f"its output {target.name} is not complete: written again"
        if {k: meta.get(k) for k in SOURCE_KEYS} != source_record(path):
            return "redo", [], "its input changed since its output was written: recomputed"
        if meta.get("axes_given") != axes:
            return "redo", [], "its output was read with other axes: recomputed"
        if meta.get("level", 0) != level:
            return "redo", [], f"its output is of level {meta.get('level')}, not {level}: recomputed"
        warnings = meta.get("warnings")
        recorded = warnings if recorded is None and isinstance(warnings, list) else recorded
    return "done", [str(w) for w in recorded or []], ""


def refuse_foreign_store(target: Path, bundle_id: str, overwrite: bool) -> None:
    """Raise :class:`~napari_dinoseg.batch_outputs.ForeignOutputError` when ``target`` is now
    another classifier's output (written since the run looked), unless ``overwrite``."""
    from .batch_outputs import ForeignOutputError
    from .ngff import metadata_of

    if overwrite or not target.exists():
        return
    found = metadata_of(target).get("dinoseg_bundle")
    if found != bundle_id:
        raise ForeignOutputError(f"{target.name} was written meanwhile by another classifier (fingerprint {found}), "
                                 "by a run that did not hold the folder's lock; it was not replaced")


def process_store(seg, bundle: str, bundle_id: str, source: Path, out: Path, probabilities: bool,
                  stem: Optional[str], axes: Optional[str], overwrite: bool, pixel_size: tuple,
                  measure: bool = False, resample: bool = False, level: int = 0) -> tuple[str, str, str, list]:
    """:func:`~napari_dinoseg.batch.process_file` of an input written as OME-Zarr (an OME-Zarr or
    plain zarr input, or any with ``--format zarr``): ``(input, "done", labels store, warnings)``;
    raises for the caller to report. An OME-Zarr's resolution ``level`` is
    segmented; on a dask worker its tiles are spread over the cluster (``worker_client``).
    ``pixel_size``: ``(µm or None, where from)``; a mismatch with the classifier's is a warning
    (``resample`` is not done for OME-Zarr inputs yet: said in a warning; nor ``measure``)."""
    from functools import partial

    from .inputs import input_stat, source_record
    from .pixel_scale import pixel_size_warning

    size_um, size_from = pixel_size
    before = input_stat(source)
    meta = {"dinoseg_bundle": bundle_id, **source_record(source, before), "classes": seg.classes.tolist(),
            "axes_given": axes, "channels": seg.n_channels, "level": level,
            "pixel_size_um": size_um, "pixel_size_from": size_from}
    notes = pixel_size_warning(seg.pixel_size, size_um)
    if resample:
        notes.append("not resampled to the training pixel size: images written as OME-Zarr are segmented at their "
                     "own pixel size (resampling is for TIFF outputs)")
    if measure:
        notes.append("not measured: measurements are made of TIFF label outputs, not yet of OME-Zarr ones")
    target = store_targets(out, stem or store_stem(source), probabilities)[0]
    with _cluster() as client:
        warnings = segment_store(seg, bundle, bundle_id, source, target, meta, probabilities, axes, level, size_um,
                                 partial(refuse_foreign_store, bundle_id=bundle_id, overwrite=overwrite), client,
                                 notes=notes)
    return str(source), "done", str(target), warnings


def store_stem(source: Path) -> str:
    """An OME-Zarr input's name without ``.ome.zarr`` / ``.zarr``: its outputs' stem."""
    name = source.name
    for suffix in (".ome.zarr", ".zarr"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return source.stem


class _cluster:
    """A dask client of the cluster this runs on (a task's ``worker_client``, which leaves the
    worker's thread pool while the tiles run), or ``None`` outside a dask worker."""

    def __enter__(self):
        self.context = None
        try:
            from distributed import get_worker, worker_client

            get_worker()
        except (ImportError, ValueError):
            return None
        self.context = worker_client()
        return self.context.__enter__()

    def __exit__(self, *exc) -> None:
        if self.context is not None:
            self.context.__exit__(*exc)
