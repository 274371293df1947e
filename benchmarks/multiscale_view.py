"""Train / Predict and the live update on a multiscale 16384² image in the train dock (issue 27, part 2).

Usage (a real napari viewer, so under a display; on a headless machine under Xvfb)::

    xvfb-run -a -s "-screen 0 1920x1080x24" .venv/bin/python benchmarks/multiscale_view.py \
        [--side 16384] [--work /tmp/dinoseg_multiscale] [--out benchmarks/results/multiscale_view.json]

1. A 4-level synthetic three-phase uint16 OME-Zarr of ``side``² (``large_images.image_of``, chunks
   1024², 0.02 µm/px), written a chunk at a time, then its pyramid (never held in memory); reused
   when already complete.
2. A viewer whose canvas is about 1500 × 1000 px, the pyramid as a multiscale image layer (its zarr
   levels), the train dock, its strokes layer (zarr on disk, level 0), dots of the true phases painted
   in the view (zoom 1: one level-0 pixel per canvas pixel, napari shows level 0).
3. **click**: seconds from the Train / Predict click to the predictions layer refreshed (the job's
   result handled on the GUI thread): the first click and the next ones (the same strokes:
   features from the cache), at zoom 1 (level 0 shown) and zoom 0.5 (level 1 shown: a 4× larger
   region of level 0, within the dock's 16 Mpx budget). At zoom 1 the dock prepares the view's
   features in the background once the view settles (``prepare``: seconds from the view set to
   them ready), before the dots are painted, as while a user paints; ``--cold`` turns that off
   (the click computes everything). At zoom 0.5 the click comes as soon as the view is set,
   before any preparation: the features of the new view are computed by the click.
4. **live**: with live update on, a stroke (``Labels.paint`` in a history block, whose end emits the
   ``paint`` event a mouse stroke emits) to the predictions layer refreshed.
5. The process's peak resident memory (psutil, sampled every 20 ms in a thread) throughout.

Writes ``<out>`` (JSON) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
PIXEL_UM = 0.02


class PeakRSS:
    """The process's peak resident memory, sampled in a thread."""

    def __init__(self, every: float = 0.02) -> None:
        import psutil

        self.process, self.every, self.peak, self.running = psutil.Process(), every, 0, True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while self.running:
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(self.every)

    def stop(self) -> float:
        self.running = False
        self.thread.join()
        return self.peak / 2 ** 30


def build(path: Path, side: int, chunk: int = 1024) -> float:
    """The synthetic pyramid at ``path`` (made unless complete); seconds spent."""
    from large_images import image_of
    from napari_dinoseg.ngff import is_complete
    from napari_dinoseg.ngff_write import create_ngff, mark_complete, write_pyramid

    if is_complete(path):
        return 0.0
    start = time.perf_counter()
    made = create_ngff(path, (side, side), np.uint16, chunks=chunk, pixel_size_um=PIXEL_UM, levels=4,
                       kind="intensity", overwrite=True)
    n = 0
    for r0 in range(0, side, chunk):
        for c0 in range(0, side, chunk):
            rows, cols = slice(r0, min(side, r0 + chunk)), slice(c0, min(side, c0 + chunk))
            made.levels[0][rows, cols] = image_of(rows, cols, seed=n)
            n += 1
    write_pyramid(made)
    mark_complete(made)
    return time.perf_counter() - start


def wait(app, until, timeout: float = 600.0) -> float:
    """Process events until ``until()``; seconds waited."""
    start = time.perf_counter()
    while not until():
        app.processEvents()
        time.sleep(0.002)
        if time.perf_counter() - start > timeout:
            raise TimeoutError("the dock did not finish in time")
    return time.perf_counter() - start


def paint_dots(labels, region, every: int = 64) -> int:
    """Dots of the true phase on a grid over ``region`` (away from phase boundaries); how many."""
    from large_images import truth_of

    rows, cols = region
    truth = truth_of(rows, cols)
    labels.brush_size = 7
    n = 0
    for r in range(10, truth.shape[0] - 10, every):
        for c in range(10, truth.shape[1] - 10, every):
            patch = truth[r - 8:r + 9, c - 8:c + 9]
            if patch.min() == patch.max():
                labels.paint((rows.start + r, cols.start + c), int(patch[0, 0]), refresh=False)
                n += 1
    labels.refresh()
    return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=16384)
    parser.add_argument("--work", type=Path, default=Path("/tmp/dinoseg_multiscale"))
    parser.add_argument("--clicks", type=int, default=3)
    parser.add_argument("--strokes", type=int, default=3)
    parser.add_argument("--cold", action="store_true",
                        help="no preparation of the view's features before the first click")
    parser.add_argument("--out", type=Path, default=None,
                        help="default: results/multiscale_view.json (multiscale_view_cold.json with --cold)")
    args = parser.parse_args()
    args.out = args.out or HERE / "results" / f"multiscale_view{'_cold' if args.cold else ''}.json"
    args.work.mkdir(parents=True, exist_ok=True)
    image_path = args.work / "mosaic.ome.zarr"
    built = build(image_path, args.side)
    peak = PeakRSS()

    import napari
    from qtpy.QtWidgets import QApplication

    from napari_dinoseg.ngff import open_ngff
    from napari_dinoseg._widgets._train_pyramid import READY
    from napari_dinoseg._widgets.train_widget import TrainWidget

    app = QApplication.instance() or QApplication([])
    viewer = napari.Viewer(show=True)
    widget = TrainWidget(viewer)
    viewer.window.add_dock_widget(widget, name="dinoseg: train")
    viewer.window.resize(1900, 1080)
    wait(app, lambda: True)
    canvas = tuple(int(n) for n in viewer.window._qt_viewer.canvas.size)  # (height, width) in napari 0.6+
    levels = list(open_ngff(image_path).levels)
    image = viewer.add_image(levels, multiscale=True, name="mosaic", scale=(PIXEL_UM, PIXEL_UM), units="µm",
                             contrast_limits=(0, 65535))
    labels = widget.new_labels_layer()
    centre = args.side / 2 * PIXEL_UM
    rows: list[dict] = []

    def look(zoom: float) -> None:
        viewer.scene.camera.center = (centre, centre)
        viewer.scene.camera.zoom = zoom / PIXEL_UM  # canvas px per level-0 pixel
        for _ in range(20):
            app.processEvents()
            time.sleep(0.01)

    def click(what: str) -> None:
        done = widget.last_result
        start = time.perf_counter()
        widget._run.native.click()
        wait(app, lambda: widget.worker is None and widget.last_result is not done)
        seconds = time.perf_counter() - start
        view = widget.last_result.region
        mpx = (view[0].stop - view[0].start) * (view[1].stop - view[1].start) / 1e6
        rows.append({"what": what, "seconds": round(seconds, 2), "fit, predict (s)": widget.last_result.seconds,
                     "shown level": int(image.data_level),
                     "view Mpx (level 0)": round(mpx, 2), "status": widget._status.value[:160]})
        print(rows[-1], flush=True)

    if args.cold:
        widget._prefetch_timer.timeout.disconnect()  # the dock as it was: nothing computed before a click
    start = time.perf_counter()
    look(1.0)
    prepared = None
    if not args.cold:
        wait(app, lambda: READY in widget._status.value and widget.worker is None)
        prepared = round(time.perf_counter() - start, 2)
        print(f"view prepared {prepared} s after it was set: {widget._status.value[-120:]}", flush=True)
    painted = paint_dots(labels, widget.view_in_level())
    for n in range(args.clicks):
        click("Train / Predict, zoom 1" + (" (first click)" if n == 0 else ""))
    look(0.5)
    for n in range(args.clicks):
        click("Train / Predict, zoom 0.5" + (" (new view)" if n == 0 else ""))
    look(1.0)
    widget._live.value = True
    view = widget.view_in_level()
    for n in range(args.strokes):
        done = widget.last_result
        r = view[0].start + 40 + 30 * n
        with labels.block_history():  # its end emits the paint event a mouse stroke ends with
            from large_images import truth_of

            phase = int(truth_of(slice(r, r + 1), slice(view[1].start + 40, view[1].start + 41))[0, 0])
            labels.paint((r, view[1].start + 40), phase, refresh=True)
        start = time.perf_counter()
        wait(app, lambda: widget.worker is None and widget.last_result is not done)
        rows.append({"what": "live update after a stroke, zoom 1", "seconds": round(time.perf_counter() - start, 2),
                     "fit, predict (s)": widget.last_result.seconds,
                     "shown level": int(image.data_level), "view Mpx (level 0)": None,
                     "status": widget._status.value[:160]})
        print(rows[-1], flush=True)
        for _ in range(10):
            app.processEvents()
            time.sleep(0.02)
    gib = peak.stop()
    result = {"machine": f"{platform.processor() or platform.machine()}", "side": args.side, "canvas (h, w)": canvas,
              "pyramid built (s)": round(built, 1), "dots painted": painted, "peak RSS (GiB)": round(gib, 2),
              "view prepared before the first click": not args.cold,
              "preparation (s from the view set to its features ready)": prepared,
              "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"\ncanvas {canvas}, peak RSS {gib:.2f} GiB, view prepared: {not args.cold} ({prepared} s)")
    print("| step | s | fit, predict (s) | level shown | view Mpx (level 0) |\n|---|---|---|---|---|")
    for row in rows:
        fit, predict = row["fit, predict (s)"]
        print(f"| {row['what']} | {row['seconds']} | {fit:.1f}, {predict:.1f} | {row['shown level']} | "
              f"{row['view Mpx (level 0)']} |")
    viewer.close()


if __name__ == "__main__":
    main()
