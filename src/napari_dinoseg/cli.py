"""The ``dinoseg`` command line: ``dinoseg train`` (images + scribbles -> bundle; ``--dims 3``:
volumes), ``dinoseg apply`` (bundle + folder -> label images, with ``--measure`` their tables and
plots; a 3-D classifier's: volumes at their voxel spacing, ``--spacing``) and ``dinoseg
measure`` (label images made anywhere -> tables and plots); ``dinoseg --version``.

Everything is checked before work starts (bundle, inputs, output folder, weights), so a refused
run prints its error and nothing else: the progress bar appears only once images are segmented.

Exit status: 0 success (``--version``, ``--help`` included); 1 some images failed or the disk
filled (or, with ``--strict``, images drew warnings, this run's or those recorded with outputs a
rerun skipped, or label outputs could not be measured); 2 refused input (bad bundle, no inputs,
bad options or axes, no ViT weights, an output folder in use by another run or holding another
classifier's outputs, label files that cannot be read); 130 interrupted.
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
SPACING_HELP = "voxel size in µm, z first, of {}"


def main(argv: Optional[list] = None) -> int:
    """``dinoseg train | apply | measure ...`` / ``dinoseg --version``; see ``dinoseg COMMAND --help``.

    Returns the exit status (see the module docstring); argparse's own exits (``--help``,
    ``--version``, bad options) are returned too, not raised.
    """
    from . import __version__

    parser = argparse.ArgumentParser(prog="dinoseg", description="napari-dinoseg from the command line")
    parser.add_argument("--version", action="version", version=f"dinoseg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _apply_parser(sub.add_parser("apply", help="apply a saved classifier to a folder, a glob or files"))
    _train_parser(sub.add_parser("train", help="train a classifier on images and their brush labels"))
    _measure_parser(sub.add_parser("measure", help="measure label images: phase fractions, objects, sizes"))
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help, --version (0) or bad options (2), already printed
        return done.code if isinstance(done.code, int) else 2
    try:
        command = {"train": train_command, "apply": apply_command, "measure": measure_command}[args.command]
        return command(args)
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
    apply.add_argument("--probabilities", action="store_true",
                       help="also write <name>_proba.tif (<name>_proba.ome.zarr for OME-Zarr outputs)")
    apply.add_argument("--format", choices=("auto", "zarr"), default="auto",
                       help="auto: OME-Zarr outputs (<name>_labels.ome.zarr, NGFF 0.5, a pyramid, the pixel size) "
                            "for OME-Zarr inputs, TIFF for the others; zarr: OME-Zarr outputs for every input")
    apply.add_argument("--level", type=int, default=0,
                       help="resolution level of OME-Zarr inputs to segment (default 0, the finest)")
    apply.add_argument("--overwrite", action="store_true", help="recompute outputs that exist")
    apply.add_argument("--verify", action="store_true",
                       help="read the outputs already there whole and check their pixel data against the checksum "
                            "recorded when they were written (default: their size only)")
    apply.add_argument("--strict", action="store_true",
                       help="exit with status 1 when an image draws a warning (unlike the training images)")
    apply.add_argument("--axes", default=None, help=AXES_HELP)
    apply.add_argument("--measure", action="store_true",
                       help="measure every label output in the folder: OUT/measurements/ fractions.csv, objects.csv, "
                            "summary.csv, fractions.png, sizes.png")
    apply.add_argument("--resample", action="store_true",
                       help="segment images whose pixel size (--pixel-size, else their metadata's) is not the "
                            "training images' at the training pixel size: resampled to it, the outputs brought "
                            "back to the image's shape")
    apply.add_argument("--spacing", default=None, metavar="DZ,DY,DX", help=SPACING_HELP.format(
        "every input, replacing their metadata (a 3-D classifier only; default: each volume's metadata, else "
        "isotropic voxels)"))
    _measure_options(apply, " (with --measure)", " (with --measure or --resample)")


def _measure_options(parser: argparse.ArgumentParser, needs: str = "", size_needs: Optional[str] = None) -> None:
    parser.add_argument("--min-size", type=int, default=None, metavar="PX",
                        help=f"leave objects of fewer pixels out of objects.csv (default 0){needs}")
    parser.add_argument("--pixel-size", type=float, default=None, metavar="UM",
                        help="µm per pixel, replacing the images' metadata (default: their metadata's)"
                             f"{needs if size_needs is None else size_needs}")
    parser.add_argument("--split", action="store_true", help=f"separate touching round objects{needs}")


def _measure_parser(measure: argparse.ArgumentParser) -> None:
    measure.add_argument("labels", nargs="+",
                         help="label images (TIFF / PNG: greyscale, palette or integer values; every plane of a "
                              "stack a field), folders of them, or glob patterns")
    measure.add_argument("-o", "--out", required=True,
                         help="folder for fractions.csv, objects.csv, summary.csv, fractions.png, sizes.png")
    measure.add_argument("--images", nargs="+", default=None,
                         help="the images the labels were made from, one per label file in the same order (for the "
                              "objects' mean intensity)")
    _measure_options(measure)


def _train_parser(train: argparse.ArgumentParser) -> None:
    from typing import get_args

    from .config import FEATURE_KINDS, Normalisation

    train.add_argument("images", nargs="+", help="training image files (tif / png / jpg)")
    train.add_argument("--labels", nargs="+", required=True,
                       help="brush-label files (PNG / TIFF), one per image in the same order, one page per image "
                            "plane: greyscale or palette values (0 = unlabelled, 1..K = classes), or RGB colours "
                            "(each colour a class, black unlabelled)")
    train.add_argument("-o", "--out", required=True, help="bundle file to write (.dinoseg)")
    train.add_argument("--features", choices=FEATURE_KINDS, default="classical",
                       help="feature kind (default classical)")
    train.add_argument("--model", default="dinov2_vits14", help="ViT backbone for vit / hybrid features")
    train.add_argument("--weights", default=None, help="ViT checkpoint file (default: the weights folder or HF cache)")
    train.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    train.add_argument("--normalise", choices=get_args(Normalisation), default="percentile",
                       help="intensity normalisation (default percentile: per image, 5-95 %%)")
    train.add_argument("--percentiles", nargs=2, type=float, default=None, metavar=("LOW", "HIGH"),
                       help="the image percentiles --normalise percentile maps to 0 and 1 (default 5 95; 25 75 "
                            "keeps phase fractions steadier across images of different brightness)")
    train.add_argument("--intensity-range", nargs=2, type=float, default=None, metavar=("LOW", "HIGH"),
                       help="the range --normalise fixed maps to [0, 1] (default: the dtype's)")
    train.add_argument("--classifier", choices=("logistic+trees", "logistic"), default="logistic+trees")
    train.add_argument("--no-edge-smoothing", action="store_true", help="no guided filter on the probabilities")
    train.add_argument("--pca", type=int, default=None, help="PCA dimension of the ViT channels")
    train.add_argument("--crf", action="store_true", help="refine predictions with a dense CRF")
    train.add_argument("--axes", default=None, help=AXES_HELP + " (the images'; label files are read as planes)")
    train.add_argument("--dims", type=int, choices=(2, 3), default=2,
                       help="2 (default): a classifier of planes, every plane of a stack segmented on its own; 3: a "
                            "classifier of (Z, Y, X) volumes with 3-D features (the classical bank in 3-D; vit / "
                            "hybrid: ViT features of each z-slice), trained on volume TIFFs (one leading axis: Z) and "
                            "label TIFFs of their shape, one page per z-slice")
    train.add_argument("--volume-planes", choices=("xy", "triplanar"), default="xy",
                       help="with --dims 3 and vit / hybrid features: the slices the ViT sees, the z-slices (xy, "
                            "default) or the xy, xz and yz slices through each voxel averaged (triplanar)")
    train.add_argument("--spacing", default=None, metavar="DZ,DY,DX", help=SPACING_HELP.format(
        "the training volumes, replacing their metadata (with --dims 3; default: their metadata, else isotropic "
        "voxels); it scales the 3-D filters and is recorded in the bundle"))


def apply_command(args: argparse.Namespace) -> int:
    from .batch import apply_bundle
    from .voxel_spacing import parse_spacing

    inputs = args.inputs[0] if len(args.inputs) == 1 else args.inputs
    given = [flag for flag, value in (("--min-size", args.min_size),
                                      ("--pixel-size", None if args.resample else args.pixel_size),
                                      ("--split", args.split or None)) if value is not None]
    if given and not args.measure:
        raise ValueError(f"{', '.join(given)} without --measure: add --measure to measure the label outputs, "
                         f"or leave {'it' if len(given) == 1 else 'them'} out")
    measure = _options(args) if args.measure else None  # checked before anything is read
    spacing = None if args.spacing is None else parse_spacing(args.spacing)
    # the bar is made at the first report, once apply_bundle has checked everything and work starts
    tick, bars = _bar("dinoseg", "image")
    try:
        summary = apply_bundle(args.bundle, inputs, args.out, scheduler=args.scheduler,
                               probabilities=args.probabilities, overwrite=args.overwrite, progress=tick,
                               axes=args.axes, verify=args.verify, measure=measure, resample=args.resample,
                               pixel_size=args.pixel_size, output_format=args.format, level=args.level,
                               spacing=spacing)
    finally:
        for bar in bars:
            bar.close()
    print(summary)
    if summary.failed:
        return 1
    return 1 if args.strict and summary.warnings else 0


def _options(args: argparse.Namespace):
    """The measurement options of the command line, checked (ValueError naming the option)."""
    from .measure_report import MeasureOptions

    return MeasureOptions(min_size=0 if args.min_size is None else args.min_size, split=args.split,
                          pixel_size=args.pixel_size)


def _bar(desc: str, unit: str):
    """``(progress callback, bars)``: the callback makes a tqdm bar at its first report and
    moves it; ``bars`` holds it (none before), for the caller to close."""
    from tqdm import tqdm

    bars: list = []

    def tick(done: int, total: int, name: str) -> None:
        if not bars:
            bars.append(tqdm(total=total, unit=unit, desc=desc))
        bars[0].update(done - bars[0].n)
        if name:
            bars[0].set_postfix_str(name)

    return tick, bars


def measure_command(args: argparse.Namespace) -> int:
    from .measure_report import measure_files

    options = _options(args)  # refused before any file is read
    tick, bars = _bar("dinoseg measure", "file")
    try:
        report = measure_files(args.labels, args.out, images=args.images, pixel_size=options.pixel_size,
                               min_size=options.min_size, split=options.split, progress=tick)
    finally:
        for bar in bars:
            bar.close()
    print(report)
    return 0


def _check_volume_options(args: argparse.Namespace) -> None:
    """Refuse ``dinoseg train``'s volume options without ``--dims 3``."""
    if args.spacing is not None and args.dims != 3:
        raise ValueError("--spacing is the voxel size of training volumes: add --dims 3 to train a 3-D classifier, "
                         "or leave --spacing out")
    if args.volume_planes != "xy" and args.dims != 3:
        raise ValueError("--volume-planes is for volumes: add --dims 3 (with --features vit or hybrid)")


def train_command(args: argparse.Namespace) -> int:
    import numpy as np

    from .config import CRFConfig, FeatureConfig, TrainConfig
    from .reading import check_axes
    from .segmenter import Segmenter

    if len(args.images) != len(args.labels):
        raise ValueError(f"got {len(args.images)} images but {len(args.labels)} label files; give one per image")
    _check_volume_options(args)
    features = FeatureConfig(kind=args.features, model=args.model, weights=args.weights, device=args.device,
                             normalise=args.normalise, dims=args.dims, volume_planes=args.volume_planes,
                             **({"percentiles": tuple(args.percentiles)} if args.percentiles else {}),
                             intensity_range=tuple(args.intensity_range) if args.intensity_range else None)
    training = TrainConfig(classifier=args.classifier, pca_dim=args.pca,
                           guided_radius=0 if args.no_edge_smoothing else TrainConfig.guided_radius)
    _check_weights(features)
    axes = None if args.axes is None else check_axes(args.axes)
    path = Path(args.out)
    path = path if path.suffix == ".dinoseg" else path.with_suffix(".dinoseg")
    if not path.absolute().parent.is_dir():  # refused before any file is read, as Segmenter.save would after
        raise ValueError(f"cannot save the bundle: the folder {str(path.absolute().parent)!r} does not exist")
    if args.dims == 3:
        return _train_volumes(args, Segmenter(features, training, CRFConfig() if args.crf else None), axes, path)
    images, label_files, channels = [], [], {}
    for image_path, label_path in zip(args.images, args.labels):
        planes = _read(image_path, None, axes)
        label_file = _read_labels(label_path, len(planes))
        _check_pair(image_path, planes, label_path, label_file.planes)
        channels.setdefault(1 if planes[0].ndim == 2 else planes[0].shape[-1], image_path)
        if len(channels) > 1:
            (a, first), (b, other) = channels.items()
            raise ValueError(f"{first} has {_channels(a)} but {other} has {_channels(b)}; train on images of one "
                             "kind (one classifier segments images of one channel count)")
        images += planes
        label_files.append((label_path, label_file))
    labels = _label_values(label_files)
    painted = [i for i, lab in enumerate(labels) if lab.any()]
    if not painted:
        raise ValueError(f"no labelled pixels in the label files ({', '.join(args.labels)}): paint at least one "
                         "stroke for each of two classes (0 = unlabelled)")
    counts: dict = {}
    for i in painted:
        values, n = np.unique(labels[i][labels[i] > 0], return_counts=True)
        for v, c in zip(values.tolist(), n.tolist()):
            counts[v] = counts.get(v, 0) + c
    if len(counts) < 2:
        raise ValueError(f"only label {next(iter(counts))} is painted in the label files ({', '.join(args.labels)}); "
                         "paint strokes of at least two classes (e.g. foreground and background)")
    seg = Segmenter(features, training, CRFConfig() if args.crf else None)
    pixel_size, note = _training_pixel_size(args.images)
    if note:
        print(f"dinoseg train: {note}", file=sys.stderr)
    seg.fit([images[i] for i in painted], [labels[i] for i in painted], pixel_size=pixel_size)
    seg.save(path)
    summary = ", ".join(f"label {c}: {counts[int(c)]} px" for c in seg.classes)
    print(f"trained {seg!r} on {len(painted)} image plane(s) ({summary}); wrote {path}")
    return 0


def _training_pixel_size(paths: list) -> tuple[Optional[float], str]:
    """``(µm per pixel, note)`` of the training images, from their metadata: the first's when
    every one gives a size and they agree within 1 %, else ``None`` with a note when some give one."""
    from .pixel_scale import common_pixel_size
    from .pixel_size import read_pixel_size

    sizes = [read_pixel_size(p) for p in paths]
    known = [s for s in sizes if s is not None]
    size = common_pixel_size(sizes)
    if size is not None or not known:
        return size, ""
    if len(known) < len(sizes):
        return None, ("no training pixel size recorded: the metadata of "
                      f"{', '.join(str(p) for p, s in zip(paths, sizes) if s is None)} gives none")
    return None, (f"no training pixel size recorded: the training images' pixel sizes differ "
                  f"({min(known):.4g} to {max(known):.4g} µm); train on images of one pixel size")


def _train_volumes(args: argparse.Namespace, seg, axes: Optional[str], path: Path) -> int:
    """``dinoseg train --dims 3``: fit ``seg`` on (Z, Y, X) volume TIFFs and their label TIFFs of the
    same shape, at the spacing given (``--spacing``), else their metadata's; save it to ``path``."""
    import numpy as np

    from .voxel_spacing import parse_spacing, training_spacing

    given = None if args.spacing is None else parse_spacing(args.spacing)  # refused before any file is read
    volumes, label_files = [], []
    for image_path, label_path in zip(args.images, args.labels):
        volume = _read_volume(image_path, axes)
        label_file = _read_labels(label_path, len(volume))
        shape = (len(label_file.planes), *label_file.planes[0].shape)
        if shape != volume.shape:
            raise ValueError(f"{label_path} holds labels of shape {shape} but its volume {image_path} is of shape "
                             f"{volume.shape} (Z, Y, X); a label file has its volume's shape, one page per z-slice")
        volumes.append(volume)
        label_files.append((label_path, label_file))
    planes = iter(_label_values(label_files))
    labels = [np.stack([next(planes) for _ in range(len(volume))]) for volume in volumes]
    spacing, note = (given, "") if given is not None else training_spacing(args.images)
    if note:
        print(f"dinoseg train: {note}", file=sys.stderr)
    seg.fit(volumes, labels, spacing=spacing, pixel_size=None if spacing is None else spacing[2])
    seg.save(path)
    values, counts = np.unique(np.concatenate([lab[lab > 0] for lab in labels]), return_counts=True)
    painted = ", ".join(f"label {v}: {c} voxels" for v, c in zip(values.tolist(), counts.tolist()))
    shown = "unknown" if spacing is None else ", ".join(f"{v:g}" for v in spacing) + " µm"
    print(f"trained {seg!r} on {len(volumes)} volume(s) ({painted}; voxel spacing {shown}); wrote {path}")
    return 0


def _read_volume(path: str, axes: Optional[str] = None):
    """The ``(Z, Y, X)`` volume of a TIFF (:func:`~napari_dinoseg.batch_volume.read_volume`), with the
    file's name in any error; its notes are printed as warnings."""
    from .batch_volume import read_volume

    if not Path(path).is_file():
        raise ValueError(f"{path}: no such file")
    try:
        volume, notes = read_volume(Path(path), axes)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    for note in notes:
        print(f"dinoseg: warning: {path}: {note}", file=sys.stderr)
    return volume


def _channels(n: int) -> str:
    return "1 channel (greyscale)" if n == 1 else f"{n} channels"


def _check_pair(image_path: str, planes: list, label_path: str, label_planes: list) -> None:
    """Refuse a label file whose planes do not match its image's, naming both files."""
    if len(planes) != len(label_planes):
        raise ValueError(f"{image_path} has {len(planes)} plane(s) but its label file {label_path} has "
                         f"{len(label_planes)}: a label file holds one plane (page) per image plane, in the same "
                         "order")
    for n, (plane, lab) in enumerate(zip(planes, label_planes)):
        if plane.shape[:2] != lab.shape:
            which = f" (plane {n + 1} of {len(planes)})" if len(planes) > 1 else ""
            raise ValueError(f"{label_path} is {lab.shape[0]}x{lab.shape[1]} px (height x width) but its image "
                             f"{image_path} is {plane.shape[0]}x{plane.shape[1]} px{which}; a label file has its "
                             "image's height and width")


def _check_weights(features) -> None:
    """Refuse ViT / hybrid features without weights before any image is read (about a second at
    most), saying where to put the file or to pass ``--weights PATH``; nothing for kinds without weights."""
    from .features.registry import weights_for

    try:
        weights_for(features, hint=WEIGHTS_HINT)
    except ValueError as err:
        if features.weights:  # the file given does not exist
            raise ValueError(f"--weights {features.weights}: {err}; pass --weights PATH with the checkpoint "
                             "file's path, or leave it out to use the weights folder") from None
        raise


def _read(path: str, channels: Optional[int], axes: Optional[str] = None) -> list:
    """The planes of an image file, with the file's name in any error; its notes (an axis read
    as channels, an alpha channel left out) are printed as warnings."""
    from .reading import read_image

    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{path}: no such file")
    try:
        image = read_image(p, channels, axes=axes)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    for note in image.notes:
        print(f"dinoseg: warning: {path}: {note}", file=sys.stderr)
    return image.planes


def _read_labels(path: str, planes: Optional[int] = None):
    """A label file read as label values (:func:`~napari_dinoseg.label_files.read_label_file`), with
    the file's name in any error; its notes are printed."""
    from .label_files import read_label_file

    try:
        label_file = read_label_file(path, planes)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    for note in label_file.notes:
        print(f"dinoseg: note: {path}: {note}", file=sys.stderr)
    return label_file


def _label_values(label_files: list) -> list:
    """Every label plane of ``[(path, LabelFile), ...]``, colour files renumbered to one class per
    colour across all of them (ascending ``(r, g, b)`` order; the mapping is printed). Refused
    when colour files and files of label values are mixed: the classes would not match."""
    import numpy as np

    colour = [(p, f) for p, f in label_files if f.colours]
    values = [p for p, f in label_files if f.colours is None and any(lab.any() for lab in f.planes)]
    if not colour:
        return [lab for _, f in label_files for lab in f.planes]
    if values:
        raise ValueError(f"{colour[0][0]} is a colour label file (each colour a class) but {values[0]} holds label "
                         "values (greyscale or palette); save all label files one way, so that their classes match")
    table = sorted({c for _, f in colour for c in f.colours})
    print("label colours read as classes (black and transparent = unlabelled): "
          + ", ".join(f"#{r:02x}{g:02x}{b:02x} ({r}, {g}, {b}) -> {k}" if max(r, g, b) < 256
                      else f"({r}, {g}, {b}) -> {k}" for k, (r, g, b) in enumerate(table, 1)))
    labels = []
    for _, f in label_files:
        lut = np.array([0] + [table.index(c) + 1 for c in (f.colours or ())], np.uint8)
        labels += [lut[lab] for lab in f.planes]
    return labels


if __name__ == "__main__":
    sys.exit(main())
