"""The worked example of docs/measure.md: γ′ fractions of the NASA superalloy images, painted on two.

    .venv/bin/python docs/measure_example.py [--data ../shared/evaldata] [--keep DIR]

A user paints two of the 18 superalloy SEM images (one of each brightness: strokes simulated
from the ground truth as ``benchmarks/quality.py`` does, 1 % of one image's pixels, seed 0),
trains the shipped classifier (classical features), and applies it to the other 16 with
``dinoseg apply ... --measure`` (:func:`napari_dinoseg.batch.apply_bundle` with
``measure=MeasureOptions(min_size=20)``); the ground truth's masks of the same 16 images are
measured with ``dinoseg measure`` (:func:`napari_dinoseg.measure_report.measure_files`).
Prints both summaries side by side (per phase: mean fraction, 95 % interval over the 16 fields,
objects, median equivalent diameter) and copies the run's two plots to
``docs/images/measure_example_{fractions,sizes}.png``. The images carry no pixel size, so sizes
are in pixels. About a minute on a 2-core machine.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import quality as Q  # noqa: E402  (the benchmarks' stroke simulator and readers)

PAINTED = ("super_spot3_0d_3", "super_spot3_180d_2")
NAMES = {1: "γ matrix", 2: "secondary γ′", 3: "tertiary γ′"}
#: Objects of fewer pixels are left out of the objects (a tertiary γ′ precipitate is ~50 px; the
#: prediction also has specks of a few pixels at phase boundaries).
MIN_SIZE = 20


def main() -> None:
    import tifffile

    from napari_dinoseg import Segmenter
    from napari_dinoseg.batch import apply_bundle
    from napari_dinoseg.measure_report import MeasureOptions, measure_files

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "evaldata"))
    parser.add_argument("--keep", default=None, help="write the run's folders here instead of a temporary folder")
    args = parser.parse_args()
    data = Path(args.data) / "nasa_micronet"
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="dinoseg_example_"))
    work.mkdir(parents=True, exist_ok=True)

    names = sorted(p.stem for p in (data / "images").glob("super_*.tif"))
    images, strokes = [], []
    for name in PAINTED:
        image, truth = Q._read(data, name)
        images.append(image)
        strokes.append(Q.simulate_scribbles(truth, 0.01 * truth.size / len(PAINTED), seed=0))
    bundle = Segmenter().fit(images, strokes).save(work / "superalloy.dinoseg")

    inputs, truths = work / "images", work / "truth"
    for folder in (inputs, truths):
        folder.mkdir(exist_ok=True)
    scored = [n for n in names if n not in PAINTED]
    for name in scored:
        image, truth = Q._read(data, name)
        tifffile.imwrite(inputs / f"{name}.tif", image)
        tifffile.imwrite(truths / f"{name}.tif", (truth + 1).astype(np.uint8))  # classes 1..3, as predicted
    run = apply_bundle(bundle, inputs, work / "segmented", measure=MeasureOptions(min_size=MIN_SIZE))
    truth = measure_files(sorted(truths.glob("*.tif")), work / "truth_measured", min_size=MIN_SIZE)
    predicted = run.measurements

    print(f"{len(scored)} images segmented by a classifier painted on {', '.join(PAINTED)}; {work}")
    print(f"{'phase':14s} {'truth: mean [95 % interval]':30s} {'predicted: mean [95 % interval]':33s} "
          f"{'objects (truth / pred.)':24s} median diameter px (truth / pred.)")
    for label, name in NAMES.items():
        t = truth.summary.set_index("label").loc[label]
        p = predicted.summary.set_index("label").loc[label]
        print(f"{name:14s} {t.mean_fraction:.3f} [{t.ci95_low:.3f}, {t.ci95_high:.3f}]{'':10s} "
              f"{p.mean_fraction:.3f} [{p.ci95_low:.3f}, {p.ci95_high:.3f}]{'':13s} "
              f"{int(t.objects):5d} / {int(p.objects):5d}{'':13s} "
              f"{t.median_equivalent_diameter_px:.1f} / {p.median_equivalent_diameter_px:.1f}")
    error = np.mean([abs(a - b) for a, b in zip(
        truth.fractions.sort_values(["image", "label"])["fraction"],
        predicted.fractions.sort_values(["image", "label"])["fraction"])])
    print(f"mean absolute error of the fractions over images and phases: {error:.3f}")
    for plot in ("fractions", "sizes"):
        shutil.copyfile(predicted.folder / f"{plot}.png", ROOT / "docs" / "images" / f"measure_example_{plot}.png")


if __name__ == "__main__":
    main()
