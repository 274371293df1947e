"""The ``dinoseg`` command line: ``dinoseg train`` (images + scribbles -> bundle) and
``dinoseg apply`` (bundle + folder -> label images); ``dinoseg --version``.

Everything is checked before work starts (bundle, inputs, output folder, weights), so a refused
run prints its error and nothing else: the progress bar appears only once images are segmented.

Exit status: 0 success (``--version``, ``--help`` included); 1 some images failed or the disk
filled (or, with ``--strict``, images drew warnings, this run's or those recorded with outputs a
rerun skipped); 2 refused input (bad bundle, no inputs, bad options or axes, no ViT weights);
130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

AXES_HELP = ("axes of the TIFFs with that many dimensions (and their image plane on the same axes), one letter "
             "each, replacing the files' own: ZYX (slices), CYX (channels first), TZCYX, ... (default: each "
             "file's metadata)")
#: How a user of the CLI gives a checkpoint file: the last words of a missing-weights message.
WEIGHTS_HINT = "or pass --weights PATH (the checkpoint file)"


def main(argv: Optional[list] = None) -> int:
    """``dinoseg train ...`` / ``dinoseg apply ...`` / ``dinoseg --version``; see ``dinoseg COMMAND --help``.

    Returns the exit status (see the module docstring); argparse's own exits (``--help``,
    ``--version``, bad options) are returned too, not raised.
    """
    from . import __version__

    parser = argparse.ArgumentParser(prog="dinoseg", description="napari-dinoseg from the command line")
    parser.add_argument("--version", action="version", version=f"dinoseg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _apply_parser(sub.add_parser("apply", help="apply a saved classifier to a folder, a glob or files"))
    _train_parser(sub.add_parser("train", help="train a classifier on images and their brush labels"))
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help, --version (0) or bad options (2), already printed
        return done.code if isinstance(done.code, int) else 2
    try:
        return train_command(args) if args.command == "train" else apply_command(args)
    except (ValueError, TypeError) as err:
        print(f"dinoseg: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # the file system failed us (full disk, permissions): not the input's fault
        print(f"dinoseg: error: {err.strerror or err}{f': {err.filename}' if err.filename else ''}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("dinoseg: interrupted; finished outputs are kept, a rerun goes on from there", file=sys.stderr)
        return 130


def _apply_parser(apply: argparse.ArgumentParser) -> None:
    apply.add_argument("bundle", help="classifier bundle saved from the widget, Segmenter.save or dinoseg train")
    apply.add_argument("inputs", nargs="+", help="input folder, glob pattern or files")
    apply.add_argument("-o", "--out", required=True, help="output folder (outside the input folder)")
    apply.add_argument("--scheduler", default=None, help="dask scheduler address, e.g. tcp://host:8786")
    apply.add_argument("--probabilities", action="store_true", help="also write <name>_proba.tif")
    apply.add_argument("--overwrite", action="store_true", help="recompute outputs that exist")
    apply.add_argument("--strict", action="store_true",
                       help="exit with status 1 when an image draws a warning (unlike the training images)")
    apply.add_argument("--axes", default=None, help=AXES_HELP)


def _train_parser(train: argparse.ArgumentParser) -> None:
    from typing import get_args

    from .config import FEATURE_KINDS, Normalisation

    train.add_argument("images", nargs="+", help="training image files (tif / png / jpg)")
    train.add_argument("--labels", nargs="+", required=True,
                       help="brush-label files, one per image in the same order (0 = unlabelled, 1..K = classes)")
    train.add_argument("-o", "--out", required=True, help="bundle file to write (.dinoseg)")
    train.add_argument("--features", choices=FEATURE_KINDS, default="classical", help="feature kind (default classical)")
    train.add_argument("--model", default="dinov2_vits14", help="ViT backbone for vit / hybrid features")
    train.add_argument("--weights", default=None, help="ViT checkpoint file (default: the weights folder or HF cache)")
    train.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    train.add_argument("--normalise", choices=get_args(Normalisation), default="percentile",
                       help="intensity normalisation (default percentile: per image, 5-95 %%)")
    train.add_argument("--intensity-range", nargs=2, type=float, default=None, metavar=("LOW", "HIGH"),
                       help="the range --normalise fixed maps to [0, 1] (default: the dtype's)")
    train.add_argument("--classifier", choices=("logistic+trees", "logistic"), default="logistic+trees")
    train.add_argument("--no-edge-smoothing", action="store_true", help="no guided filter on the probabilities")
    train.add_argument("--pca", type=int, default=None, help="PCA dimension of the ViT channels")
    train.add_argument("--crf", action="store_true", help="refine predictions with a dense CRF")
    train.add_argument("--axes", default=None, help=AXES_HELP + " (the images'; label files are read as planes)")


def apply_command(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .batch import apply_bundle

    inputs = args.inputs[0] if len(args.inputs) == 1 else args.inputs
    bars: list = []  # made at the first report, once apply_bundle has checked everything and work starts

    def tick(done: int, total: int, name: str) -> None:
        if not bars:
            bars.append(tqdm(total=total, unit="image", desc="dinoseg"))
        bars[0].update(done - bars[0].n)
        if name:
            bars[0].set_postfix_str(name)

    try:
        summary = apply_bundle(args.bundle, inputs, args.out, scheduler=args.scheduler,
                               probabilities=args.probabilities, overwrite=args.overwrite, progress=tick,
                               axes=args.axes)
    finally:
        for bar in bars:
            bar.close()
    print(summary)
    if summary.failed:
        return 1
    return 1 if args.strict and summary.warnings else 0


def train_command(args: argparse.Namespace) -> int:
    from .config import CRFConfig, FeatureConfig, TrainConfig
    from .reading import check_axes
    from .segmenter import Segmenter

    if len(args.images) != len(args.labels):
        raise ValueError(f"got {len(args.images)} images but {len(args.labels)} label files; give one per image")
    features = FeatureConfig(kind=args.features, model=args.model, weights=args.weights, device=args.device,
                             normalise=args.normalise,
                             intensity_range=tuple(args.intensity_range) if args.intensity_range else None)
    training = TrainConfig(classifier=args.classifier, pca_dim=args.pca,
                           guided_radius=0 if args.no_edge_smoothing else TrainConfig.guided_radius)
    _check_weights(features)
    axes = None if args.axes is None else check_axes(args.axes)
    images, labels = [], []
    for image_path, label_path in zip(args.images, args.labels):
        planes = _read(image_path, None, axes)
        label_planes = _read(label_path, 1)
        if len(planes) != len(label_planes):
            raise ValueError(f"{image_path} has {len(planes)} plane(s) but {label_path} has {len(label_planes)}")
        images += planes
        labels += label_planes
    painted = [i for i, lab in enumerate(labels) if lab.any()]
    if not painted:
        raise ValueError("no labelled pixels in the label files: paint at least one stroke for each of two classes")
    seg = Segmenter(features, training, CRFConfig() if args.crf else None)
    seg.fit([images[i] for i in painted], [labels[i] for i in painted])
    path = Path(args.out)
    path = path if path.suffix == ".dinoseg" else path.with_suffix(".dinoseg")
    seg.save(path)
    counts = ", ".join(f"label {c}: {int(sum((labels[i] == c).sum() for i in painted))} px" for c in seg.classes)
    print(f"trained {seg!r} on {len(painted)} image plane(s) ({counts}); wrote {path}")
    return 0


def _check_weights(features) -> None:
    """Refuse ViT / hybrid features without weights before any image is read (about a second at
    most), saying where to put the file or to pass ``--weights PATH``."""
    if not features.uses_vit:
        return
    from .features.registry import find_weights

    try:
        find_weights(features.model, features.weights, hint=WEIGHTS_HINT)
    except ValueError as err:
        if features.weights:  # the file given does not exist
            raise ValueError(f"--weights {features.weights}: {err}; pass --weights PATH with the checkpoint "
                             "file's path, or leave it out to use the weights folder") from None
        raise


def _read(path: str, channels: Optional[int], axes: Optional[str] = None) -> list:
    """The planes of an image or label file (``channels=1``), with the file's name in any error;
    an image file's notes (an axis read as channels, an alpha channel left out) are printed as
    warnings. Label files are read as planes, without notes."""
    from .reading import read_image

    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{path}: no such file")
    try:
        image = read_image(p, channels, axes=axes)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    planes = image.planes
    if channels != 1:
        for note in image.notes:
            print(f"dinoseg: warning: {path}: {note}", file=sys.stderr)
    if channels == 1:  # label files: whole numbers saved as floats (as some tools do) are label values
        planes = [_whole(plane, path) for plane in planes]
    return planes


def _whole(labels, path: str):
    import numpy as np

    if not np.issubdtype(labels.dtype, np.floating):
        return labels
    if not (np.isfinite(labels).all() and (labels == np.round(labels)).all()):
        raise ValueError(f"{path}: label files hold whole numbers (0 = unlabelled, 1..K = classes); this one holds "
                         "fractions, NaN or inf: save the brush labels as an integer image")
    return labels.astype(np.int64)


if __name__ == "__main__":
    sys.exit(main())
