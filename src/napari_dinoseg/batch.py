"""Apply a saved classifier to files and folders, locally or on a dask cluster.

Every image is predicted by :meth:`napari_dinoseg.Segmenter.predict_proba` (as in the widget:
same normalisation, tiles, smoothing and CRF) and checked by :meth:`~napari_dinoseg.Segmenter.check`.
Every output is written atomically (a temporary file in the output folder, then a rename),
an unreadable input is reported and skipped while the run goes on, a rerun skips finished
outputs, and the summary says what was done, skipped and failed (with reasons), and which
images look unlike the training images (warnings).
"""

from __future__ import annotations

import glob
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence, Union

import numpy as np

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
LABEL_SUFFIX = "_labels.tif"
PROBA_SUFFIX = "_proba.tif"


@dataclass
class BatchSummary:
    """What :func:`apply_bundle` did: output paths, skipped inputs, failures with reasons, and
    warnings about images unlike the training images (their outputs are written, but doubtful)."""

    done: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    failed: list = field(default_factory=list)  # (input, reason)
    warnings: list = field(default_factory=list)  # (input, message)

    def __str__(self) -> str:
        doubtful = len({path for path, _ in self.warnings})
        lines = [f"done {len(self.done)}, skipped {len(self.skipped)} (already there), failed {len(self.failed)}"
                 + (f"; {doubtful} with warnings" if doubtful else "")]
        lines += [f"  failed: {path}: {reason}" for path, reason in self.failed]
        lines += [f"  warning: {path}: {message}" for path, message in self.warnings]
        return "\n".join(lines)


def find_inputs(inputs: Union[str, os.PathLike, Sequence]) -> list[Path]:
    """A folder (its image files), a glob pattern, a file, or a list of files -> sorted paths."""
    if isinstance(inputs, (list, tuple)):
        return [Path(p) for p in inputs]
    text = str(inputs)
    path = Path(text)
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    if path.is_file():
        return [path]
    matches = sorted(Path(p) for p in glob.glob(text) if Path(p).is_file())
    if not matches:
        raise ValueError(f"no input files: {text!r} is neither a folder, a file nor a glob pattern that matches")
    return matches


def check_output_folder(out_dir: Path, inputs: Iterable[Path]) -> None:
    """Refuse an output folder inside an input folder, or one that cannot be written."""
    out = out_dir.resolve()
    for parent in {p.resolve().parent for p in inputs}:
        if out == parent or parent in out.parents:
            raise ValueError(
                f"output folder {str(out_dir)!r} is inside the input folder {str(parent)!r}: outputs would be "
                "read as inputs by the next run; choose a folder outside it"
            )
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out_dir, prefix=".write-test-"):
            pass
    except OSError as err:
        raise ValueError(f"output folder {str(out_dir)!r} cannot be written: {err.strerror}") from None


def apply_bundle(
    bundle: Union[str, os.PathLike],
    inputs: Union[str, os.PathLike, Sequence],
    out_dir: Union[str, os.PathLike],
    scheduler=None,
    probabilities: bool = False,
    overwrite: bool = False,
    progress: Optional[Callable[[int, int, str], None]] = None,
) -> BatchSummary:
    """Segment every input image with a saved classifier and write a label image per input.

    Parameters
    ----------
    bundle
        Path of a bundle written by :func:`napari_dinoseg.save_bundle`.
    inputs
        A folder, a glob pattern, a file or a list of files (tif / png / jpg; multi-page
        tif stacks are segmented slice by slice).
    out_dir
        Output folder: ``<stem>_labels.tif`` (uint8 / uint16 labels), and with
        ``probabilities`` ``<stem>_proba.tif`` (float32, classes last).
    scheduler
        ``None``: this process. A dask ``Client`` or a scheduler address: the images are
        mapped over the dask.distributed cluster.
    overwrite
        Recompute outputs that already exist (otherwise they are skipped).
    progress
        ``progress(done, total, input name)`` after each input; may raise to stop.

    Returns
    -------
    BatchSummary
    """
    from .bundle import read_bundle

    read_bundle(bundle)  # fail early, here, on a bad bundle
    files = find_inputs(inputs)
    out = Path(out_dir)
    check_output_folder(out, files)
    summary = BatchSummary()
    todo = []
    for path in files:
        if not overwrite and (out / (path.stem + LABEL_SUFFIX)).exists():
            summary.skipped.append(str(path))
        else:
            todo.append(path)
    args = (str(bundle), str(out), probabilities)
    if scheduler is None:
        results = (process_file(str(p), *args) for p in todo)
    else:
        results = _on_dask(scheduler, [str(p) for p in todo], args)
    for n, (path, status, detail, warnings) in enumerate(results, 1):
        if status == "done":
            summary.done.append(detail)
        else:
            summary.failed.append((path, detail))
        summary.warnings += [(path, message) for message in warnings]
        if progress is not None:
            progress(n, len(todo), Path(path).name)
    return summary


def _on_dask(scheduler, paths: list, args: tuple):
    from dask.distributed import Client, as_completed

    client = scheduler if isinstance(scheduler, Client) else Client(scheduler)
    futures = client.map(process_file, paths, *[[a] * len(paths) for a in args], pure=False)
    try:
        for future in as_completed(futures):
            yield future.result()
    finally:
        if client is not scheduler:
            client.close()


_SEGMENTERS: dict = {}


def process_file(path: str, bundle: str, out_dir: str, probabilities: bool) -> tuple[str, str, str, list]:
    """Segment one file: ``(input, "done", output, warnings)`` or ``(input, "failed", reason, [])``.

    Runs anywhere (this process or a dask worker): it reads the bundle itself (cached per
    process) and never raises for a bad input.
    """
    from .segmenter import Segmenter

    try:
        if bundle not in _SEGMENTERS:
            _SEGMENTERS[bundle] = Segmenter.load(bundle)
        seg = _SEGMENTERS[bundle]
        planes = read_planes(Path(path), seg.n_channels)
        labels, probas, warnings = [], [], []
        for i, plane in enumerate(planes):
            proba = seg.predict_proba(plane)
            labels.append(seg.to_labels(proba))
            where = f"plane {i}: " if len(planes) > 1 else ""
            warnings += [where + message for message in seg.check(plane, proba)]
            if probabilities:
                probas.append(proba)
        stem = Path(path).stem
        target = Path(out_dir) / (stem + LABEL_SUFFIX)
        _write_atomic(target, _as_written(labels, labels[0].dtype))
        if probabilities:
            _write_atomic(Path(out_dir) / (stem + PROBA_SUFFIX), _as_written(probas, np.float32))
        return path, "done", str(target), warnings
    except Exception as err:  # a bad input is reported, never fatal for the run
        return path, "failed", f"{type(err).__name__}: {err}", []


def read_planes(path: Path, channels: int) -> list[np.ndarray]:
    """Read an image file as a list of ``(H, W)`` / ``(H, W, C)`` planes with the bundle's channel count."""
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise ValueError(f"not an image file (expected {', '.join(IMAGE_SUFFIXES)})")
    if path.stat().st_size == 0:
        raise ValueError("empty file")
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            data = tifffile.imread(path)
        else:
            from skimage.io import imread

            data = imread(path)
        data = np.asarray(data)
    except Exception as err:  # every reader error means the same to the user
        raise ValueError(f"cannot read the image (corrupt or not what its name says): {err}") from None
    if data.size == 0 or data.ndim < 2:
        raise ValueError("no image data in the file (corrupt or truncated)")
    if channels == 1:
        if data.ndim == 3 and data.shape[-1] in (3, 4) and path.suffix.lower() not in (".tif", ".tiff"):
            raise ValueError(f"image has {data.shape[-1]} colour channels but the classifier expects greyscale")
        planes = [data] if data.ndim == 2 else list(data.reshape(-1, *data.shape[-2:]))
    else:
        if data.ndim < 3 or data.shape[-1] < channels:
            raise ValueError(f"image of shape {data.shape} has no {channels} channels (channels last) as the classifier expects")
        data = data[..., :channels] if channels == 3 and data.shape[-1] == 4 else data
        if data.shape[-1] != channels:
            raise ValueError(f"image has {data.shape[-1]} channels but the classifier expects {channels}")
        planes = [data] if data.ndim == 3 else list(data.reshape(-1, *data.shape[-3:]))
    return planes


def _as_written(planes: list, dtype) -> np.ndarray:
    """One plane as it is, several as a stack (the shape of the input file)."""
    stack = np.stack(planes).astype(dtype)
    return stack[0] if len(planes) == 1 else stack


def _write_atomic(target: Path, array: np.ndarray) -> None:
    import tifffile

    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        tifffile.imwrite(tmp, array)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
