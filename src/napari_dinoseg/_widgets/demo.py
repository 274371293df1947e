"""The main job: napari with the sample micrograph, example strokes and the train widget.

``python -m napari_dinoseg._widgets.demo`` opens the viewer for interactive use.
``python -m napari_dinoseg._widgets.demo --headless --out DIR`` runs the same workflow
without a user (it still needs an X display, e.g. ``xvfb-run``, for napari's OpenGL
canvas): it clicks Train / Predict, waits for the worker and writes to ``DIR``:

- ``prediction.tif``: the predicted label image, uint8, one value per painted class;
- ``screenshot.png``: the napari window after the click;
- ``summary.json``: shapes, classes, class fractions and timings.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np


def build_viewer(show: bool = True):
    """A napari viewer with the IHC sample, its example strokes and the docked train widget."""
    import napari

    from .._sample_data import sample_ihc
    from .train_widget import TrainWidget

    viewer = napari.Viewer(title="napari-dinoseg demo", show=show)
    for data, kwargs, kind in sample_ihc():
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    widget = TrainWidget(viewer)
    viewer.window.add_dock_widget(widget, name="dinoseg: train", area="right")
    viewer.window.resize(1500, 950)
    return viewer, widget


def run_headless(out: Path, timeout: float = 600.0) -> dict:
    """Click Train / Predict in a real viewer, wait, and write the results to ``out``."""
    import tifffile
    from napari.qt import get_qapp
    from qtpy.QtCore import QEventLoop, QTimer

    out.mkdir(parents=True, exist_ok=True)
    viewer, widget = build_viewer(show=True)
    app = get_qapp()
    start = time.perf_counter()
    worker = widget.run()
    if worker is None:
        raise RuntimeError(f"Train / Predict refused to start: {widget._status.value}")
    loop = QEventLoop()
    worker.finished.connect(loop.quit)
    QTimer.singleShot(int(timeout * 1000), loop.quit)
    if widget.worker is not None:
        loop.exec()
    elapsed = time.perf_counter() - start
    if widget.last_result is None:
        raise RuntimeError(f"Train / Predict did not finish: {widget._status.value}")
    for _ in range(10):  # let the canvas draw the new layer
        app.processEvents()
        time.sleep(0.05)
    viewer.reset_view()
    app.processEvents()
    prediction = np.asarray(widget.predictions.data)
    tifffile.imwrite(out / "prediction.tif", prediction)
    viewer.screenshot(str(out / "screenshot.png"), canvas_only=False)
    classes, counts = np.unique(prediction, return_counts=True)
    summary = {
        "image_shape": list(viewer.layers[0].data.shape),
        "prediction_shape": list(prediction.shape),
        "classes": classes.tolist(),
        "class_fractions": (counts / counts.sum()).round(4).tolist(),
        "train_predict_seconds": round(elapsed, 3),
        "status": widget._status.value,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    viewer.close()
    return summary


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m napari_dinoseg._widgets.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--headless", action="store_true", help="run the workflow without a user and write results")
    parser.add_argument("--out", type=Path, default=Path("demo-output"), help="output folder for --headless")
    args = parser.parse_args(argv)
    if args.headless:
        summary = run_headless(args.out)
        print(json.dumps(summary, indent=2))
        print(f"wrote {args.out / 'prediction.tif'} and {args.out / 'screenshot.png'}")
        return 0
    import napari

    build_viewer(show=True)
    napari.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
