"""Images larger than memory (issue 27): a 16384² uint16 OME-Zarr segmented window by window.

Usage::

    .venv/bin/python benchmarks/large_images.py [--side 16384] [--chunk 1024] [--work /tmp/dinoseg_large]
        [--steps segment,apply] [--out benchmarks/results/large_images]

Steps, each timed; the segmentations run in fresh processes so that each peak resident memory
(``ru_maxrss``, the whole process: Python, torch, the libraries) is its own:

1. **make**: a synthetic three-phase micrograph of ``side``² uint16 written as an OME-Zarr
   (NGFF 0.5, chunks of ``chunk``², pixel size 0.02 µm), a chunk at a time: smooth phases from a
   sum of sinusoids across the whole plane, each phase its own mean and texture (noise level),
   so that classical features tell them apart; the truth is known at every pixel.
2. **train**: a classifier (default classical features) fitted on a 2048² crop read into memory
   with sparse strokes from the truth; saved as a bundle.
3. **segment**: ``Segmenter.segment(zarr_array, out=zarr_array)`` in a fresh process: seconds,
   megapixels per second, peak RSS; the labels' accuracy against the truth on a sample of chunks.
4. **crop**: labels compared with an in-memory ``segment()`` of a 3072² crop (what a user would
   get cropping the image), away from the crop's border (256 px): the share of equal labels.
5. **apply**: ``dinoseg apply`` (``apply_bundle``) on the OME-Zarr (OME-Zarr labels out)
   and on the same pixels cut into 4096² TIFF tiles (today's path), each in a fresh process:
   seconds, peak RSS, their ratio.

Writes ``<out>.json`` and ``<out>.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
PIXEL_UM = 0.02
MEANS, NOISE = (0.30, 0.50, 0.70), (0.02, 0.10, 0.04)


def truth_of(rows: slice, cols: slice) -> np.ndarray:
    """``(h, w)`` uint8 phases 1..3 of a region of the plane: thresholds of a smooth field (a sum
    of sinusoids over the whole plane, so regions agree at their borders)."""
    y, x = np.meshgrid(np.arange(rows.start, rows.stop, dtype=np.float32),
                       np.arange(cols.start, cols.stop, dtype=np.float32), indexing="ij")
    field = (np.sin(y / 97.0 + 0.3) + np.sin(x / 131.0 + 1.1) + np.sin((x + y) / 211.0 + 2.0)
             + 0.7 * np.sin((x - 2 * y) / 59.0))
    return (1 + (field > -0.6) + (field > 0.9)).astype(np.uint8)


def image_of(rows: slice, cols: slice, seed: int) -> np.ndarray:
    """``(h, w)`` uint16 pixels of a region: each phase's mean plus its own noise."""
    truth = truth_of(rows, cols)
    rng = np.random.default_rng(seed)
    means, noise = np.asarray(MEANS, np.float32), np.asarray(NOISE, np.float32)
    value = means[truth - 1] + noise[truth - 1] * rng.standard_normal(truth.shape, np.float32)
    return (np.clip(value, 0, 1) * 65535).astype(np.uint16)


def make(path: Path, side: int, chunk: int) -> dict:
    from napari_dinoseg.ngff_write import create_ngff, mark_complete

    start = time.perf_counter()
    made = create_ngff(path, (side, side), np.uint16, chunks=chunk, pixel_size_um=PIXEL_UM, levels=1,
                       name="synthetic three-phase micrograph", kind="intensity", overwrite=True)
    level0 = made.levels[0]
    n = 0
    for r0 in range(0, side, chunk):
        for c0 in range(0, side, chunk):
            rows, cols = slice(r0, min(side, r0 + chunk)), slice(c0, min(side, c0 + chunk))
            level0[rows, cols] = image_of(rows, cols, seed=n)
            n += 1
    mark_complete(made)
    return {"seconds": time.perf_counter() - start, "chunks": n}


def strokes(truth: np.ndarray, every: int = 48) -> np.ndarray:
    """Sparse strokes: every ``every``-th row, the pixels 6 px inside their phase, one in 4 kept."""
    from scipy.ndimage import binary_erosion

    labels = np.zeros_like(truth)
    for k in (1, 2, 3):
        inside = binary_erosion(truth == k, iterations=6)
        labels[inside] = k
    keep = np.zeros(truth.shape, bool)
    keep[::every, ::4] = True
    return np.where(keep, labels, 0).astype(np.uint8)


def train(image_path: Path, bundle: Path) -> dict:
    import zarr

    from napari_dinoseg import Segmenter

    z = zarr.open_group(str(image_path), mode="r")["0"]
    side = z.shape[0]
    crop = (slice(side // 4, side // 4 + 2048),) * 2
    image, truth = np.asarray(z[crop]), truth_of(*crop)
    labels = strokes(truth)
    start = time.perf_counter()
    seg = Segmenter().fit(image, labels, pixel_size=PIXEL_UM)
    seconds = time.perf_counter() - start
    seg.save(bundle)
    return {"seconds": seconds, "painted_pixels": int((labels > 0).sum()), "crop": "2048²"}


SEGMENT = r"""
import json, resource, sys, time
import numpy as np, zarr
sys.path.insert(0, sys.argv[4])
from large_images import truth_of
from napari_dinoseg import Segmenter

bundle, image_path, out_path = sys.argv[1:4]
seg = Segmenter.load(bundle)
image = zarr.open_group(image_path, mode="r")["0"]
out = zarr.create_array(store=out_path, shape=image.shape, dtype=np.uint8, chunks=image.chunks, overwrite=True)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
start = time.perf_counter()
seg.segment(image, out=out)
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
warnings = seg.check(image, out)
side, chunk = image.shape[0], image.chunks[0]
rng = np.random.default_rng(1)
correct = total = 0
for i in rng.choice((side // chunk) ** 2, 16, replace=False):
    r0, c0 = (i // (side // chunk)) * chunk, (i % (side // chunk)) * chunk
    rows, cols = slice(r0, r0 + chunk), slice(c0, c0 + chunk)
    correct += int((out[rows, cols] == truth_of(rows, cols)).sum()); total += chunk * chunk
print(json.dumps({"seconds": seconds, "megapixels_per_s": image.size / seconds / 1e6, "peak_rss_gib": peak / 2**30,
                  "rss_before_gib": base / 2**30, "accuracy_on_16_chunks": correct / total, "warnings": warnings}))
"""

CROP = r"""
import json, sys
import numpy as np, zarr
from napari_dinoseg import Segmenter

bundle, image_path, out_path = sys.argv[1:4]
seg = Segmenter.load(bundle)
image, labels = zarr.open_group(image_path, mode="r")["0"], zarr.open_array(out_path, mode="r")
side, n = image.shape[0], min(3072, image.shape[0] // 2)
crop, border = (slice(side // 2, side // 2 + n), slice(side // 8, side // 8 + n)), 256
mine = seg.segment(np.asarray(image[crop]))
inner = tuple(slice(s.start + border, s.stop - border) for s in crop)
equal = float((mine[border:-border, border:-border] == labels[inner]).mean())
print(json.dumps({"crop": f"{n}²", "border_px": border, "equal_labels": equal}))
"""


APPLY = r"""
import json, resource, sys, time
from napari_dinoseg.batch import apply_bundle

bundle, inputs, out = sys.argv[1:4]
start = time.perf_counter()
summary = apply_bundle(bundle, inputs, out, overwrite=True)
seconds = time.perf_counter() - start
assert summary.done and not summary.failed, summary.failed
print(json.dumps({"seconds": seconds, "outputs": len(summary.done),
                  "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                  "warnings": [w for _, w in summary.warnings]}))
"""


def tiff_tiles(image_path: Path, folder: Path, tile: int = 4096) -> int:
    """The plane as TIFF tiles of ``tile``² (the same pixels), as a user of today's apply cuts it."""
    import tifffile
    import zarr

    z = zarr.open_group(str(image_path), mode="r")["0"]
    folder.mkdir(parents=True, exist_ok=True)
    n = 0
    for r0 in range(0, z.shape[0], tile):
        for c0 in range(0, z.shape[1], tile):
            target = folder / f"tile_{r0:05d}_{c0:05d}.tif"
            if not target.exists():
                tifffile.imwrite(target, np.asarray(z[r0:r0 + tile, c0:c0 + tile]),
                                 resolution=(1e4 / PIXEL_UM, 1e4 / PIXEL_UM), resolutionunit="CENTIMETER")
            n += 1
    return n


def child(script: str, *args: str) -> dict:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([sys.executable, "-c", script, *args, str(HERE)], capture_output=True, text=True, env=env)
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    from machine import cpu_name

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=16384)
    parser.add_argument("--chunk", type=int, default=1024)
    parser.add_argument("--work", type=Path, default=Path("/tmp/dinoseg_large"))
    parser.add_argument("--out", type=Path, default=HERE / "results" / "large_images")
    parser.add_argument("--steps", default="segment,apply",
                        help="segment: Segmenter.segment(zarr, out=zarr) and the crop comparison; apply: dinoseg "
                             "apply on the OME-Zarr and on the same pixels as 4096² TIFF tiles")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    image, bundle, labels = args.work / "zarr_in" / "image.ome.zarr", args.work / "model.dinoseg", args.work / "labels.zarr"
    image.parent.mkdir(exist_ok=True)
    results = {"machine": f"{cpu_name()}, {os.cpu_count()} CPUs", "side": args.side, "chunk": args.chunk}
    if not (image / "zarr.json").exists():
        results["make"] = make(image, args.side, args.chunk)
    results["train"] = train(image, bundle)
    if "segment" in args.steps:
        results["segment"] = child(SEGMENT, str(bundle), str(image), str(labels))
        results["crop"] = child(CROP, str(bundle), str(image), str(labels))
    if "apply" in args.steps:
        zarr_in, tiff_in = image.parent, args.work / "tiff_in"
        results["apply_zarr"] = child(APPLY, str(bundle), str(zarr_in), str(args.work / "zarr_out"))
        results["tiff_tiles"] = tiff_tiles(image, tiff_in)
        results["apply_tiff"] = child(APPLY, str(bundle), str(tiff_in), str(args.work / "tiff_out"))
        from napari_dinoseg.pixel_size import pixel_size_of

        results["apply_zarr"]["pixel_size_kept_um"] = pixel_size_of(
            args.work / "zarr_out" / "image_labels.ome.zarr").um
    print(json.dumps(results, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(args.out.with_suffix(".json").read_text()) if args.out.with_suffix(".json").exists() else {}
    for step in ("make", "segment", "crop", "apply_zarr", "apply_tiff", "tiff_tiles"):  # steps not run: kept
        if step not in results and step in previous:
            results[step] = previous[step]
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    seg = results["segment"]
    args.out.with_suffix(".md").write_text(
        f"Segmenting a {args.side}² uint16 OME-Zarr (chunks {args.chunk}²) window by window into a zarr array on "
        f"disk, classical features; {results['machine']}.\n\n"
        "| what | seconds | Mpx/s | peak RSS GiB | check |\n|---|---|---|---|---|\n"
        f"| `Segmenter.segment(zarr, out=zarr)` | {seg['seconds']:.0f} | {seg['megapixels_per_s']:.2f} | "
        f"{seg['peak_rss_gib']:.2f} | accuracy {seg['accuracy_on_16_chunks']:.4f} on 16 chunks; labels equal to an "
        f"in-memory segment() of a {results['crop']['crop']} crop (256 px from its border): {results['crop']['equal_labels']:.5f} |\n"
        + _apply_rows(results, args.side))


def _apply_rows(results: dict, side: int) -> str:
    if "apply_zarr" not in results:
        return ""
    z, t = results["apply_zarr"], results["apply_tiff"]
    mpx = side * side / 1e6
    return (f"| `dinoseg apply` on the OME-Zarr (OME-Zarr labels, pyramid, pixel size "
            f"{z['pixel_size_kept_um']} µm kept) | {z['seconds']:.0f} | {mpx / z['seconds']:.2f} | "
            f"{z['peak_rss_gib']:.2f} | |\n"
            f"| `dinoseg apply` on the same pixels as {results['tiff_tiles']} TIFF tiles (today's path) | "
            f"{t['seconds']:.0f} | {mpx / t['seconds']:.2f} | {t['peak_rss_gib']:.2f} | OME-Zarr / TIFF time "
            f"{z['seconds'] / t['seconds']:.2f} |\n")


if __name__ == "__main__":
    main()
