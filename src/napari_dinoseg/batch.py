"""Apply a saved classifier to files and folders, locally or on a dask cluster; the ``dinoseg`` CLI.

Every output is written atomically (a temporary file in the output folder, then a rename),
an unreadable input is reported and skipped while the run goes on, a rerun skips finished
outputs, and the summary says what was done, skipped and failed (with reasons).
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence, Union

import numpy as np

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
#: Planes larger than this (pixels per side) are predicted tile by tile, in bounded memory.
TILE = 1024
LABEL_SUFFIX = "_labels.tif"
PROBA_SUFFIX = "_proba.tif"


@dataclass
class BatchSummary:
    """What :func:`apply_bundle` did: output paths, skipped inputs, and failures with reasons."""

    done: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    failed: list = field(default_factory=list)  # (input, reason)

    def __str__(self) -> str:
        lines = [f"done {len(self.done)}, skipped {len(self.skipped)} (already there), failed {len(self.failed)}"]
        lines += [f"  failed: {path}: {reason}" for path, reason in self.failed]
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
    from .bundle import load_bundle

    load_bundle(bundle)  # fail early, here, on a bad bundle
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
    for n, (path, status, detail) in enumerate(results, 1):
        if status == "done":
            summary.done.append(detail)
        else:
            summary.failed.append((path, detail))
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


_BUNDLES: dict = {}


def process_file(path: str, bundle: str, out_dir: str, probabilities: bool) -> tuple[str, str, str]:
    """Segment one file; returns ``(input, "done", output)`` or ``(input, "failed", reason)``.

    Runs anywhere (this process or a dask worker): it reads the bundle itself (cached per
    process) and never raises for a bad input.
    """
    from .bundle import bundle_channels, load_bundle

    try:
        if bundle not in _BUNDLES:
            _BUNDLES[bundle] = (*load_bundle(bundle), bundle_channels(bundle))
        clf, config, channels = _BUNDLES[bundle]
        planes = read_planes(Path(path), channels)
        labels, probas = [], []
        for plane in planes:
            proba = predict_tiled(clf, config, plane)
            labels.append(clf.to_labels(proba))
            if probabilities:
                probas.append(proba)
        dtype = np.uint8 if clf.classes.max() < 256 else np.uint16
        stem = Path(path).stem
        target = Path(out_dir) / (stem + LABEL_SUFFIX)
        _write_atomic(target, _as_written(labels, dtype))
        if probabilities:
            _write_atomic(Path(out_dir) / (stem + PROBA_SUFFIX), _as_written(probas, np.float32))
        return path, "done", str(target)
    except Exception as err:  # a bad input is reported, never fatal for the run
        return path, "failed", f"{type(err).__name__}: {err}"


def predict_tiled(clf, config, plane: np.ndarray, tile: int = TILE) -> np.ndarray:
    """Probabilities ``(H, W, K)`` of one plane, computed tile by tile when it is large.

    The plane is normalised as a whole (one intensity scale), then cut into windows of
    ``tile`` pixels plus the context margin of the features and of the probability
    smoothing on each side; each window is featurised and predicted and only its core kept.
    For classical features the result equals the whole-plane prediction; memory is bounded
    by one window's features.
    """
    from .classify import predict
    from .features.featurise import feature_margin, featurise, resolve_device
    from .features.tiling import tiles
    from .image import as_float_image

    if max(plane.shape[:2]) <= tile:
        return predict(clf, featurise(plane, config))
    config = config.resolved(resolve_device(config.device).type)
    img = as_float_image(plane)
    margin = feature_margin(config) + clf.margin
    align = config.stride if config.uses_vit else 1
    out = np.empty((*img.shape[:2], clf.n_classes), np.float32)
    for (r0, r1, cr0, cr1), (c0, c1, cc0, cc1) in tiles(img.shape[:2], tile + 2 * margin, margin, align):
        proba = predict(clf, featurise(img[r0:r1, c0:c1], config, normalised=True))
        out[cr0:cr1, cc0:cc1] = proba[cr0 - r0:cr1 - r0, cc0 - c0:cc1 - c0]
    return out


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


def main(argv: Optional[list] = None) -> int:
    """``dinoseg apply BUNDLE INPUT -o OUT_DIR [--scheduler ADDR] [--probabilities] [--overwrite]``."""
    parser = argparse.ArgumentParser(prog="dinoseg", description="napari-dinoseg from the command line")
    sub = parser.add_subparsers(dest="command", required=True)
    apply = sub.add_parser("apply", help="apply a saved classifier to a folder, a glob or files")
    apply.add_argument("bundle", help="classifier bundle saved from the widget or save_bundle()")
    apply.add_argument("inputs", nargs="+", help="input folder, glob pattern or files")
    apply.add_argument("-o", "--out", required=True, help="output folder (outside the input folder)")
    apply.add_argument("--scheduler", default=None, help="dask scheduler address, e.g. tcp://host:8786")
    apply.add_argument("--probabilities", action="store_true", help="also write <name>_proba.tif")
    apply.add_argument("--overwrite", action="store_true", help="recompute outputs that exist")
    args = parser.parse_args(argv)
    from tqdm import tqdm

    inputs = args.inputs[0] if len(args.inputs) == 1 else args.inputs
    bar = tqdm(unit="image", desc="dinoseg")

    def tick(done: int, total: int, name: str) -> None:
        bar.total = total
        bar.update(1)
        bar.set_postfix_str(name)

    try:
        summary = apply_bundle(args.bundle, inputs, args.out, scheduler=args.scheduler,
                               probabilities=args.probabilities, overwrite=args.overwrite, progress=tick)
    except ValueError as err:
        bar.close()
        print(f"dinoseg: error: {err}", file=sys.stderr)
        return 2
    bar.close()
    print(summary)
    return 1 if summary.failed else 0


if __name__ == "__main__":
    sys.exit(main())
