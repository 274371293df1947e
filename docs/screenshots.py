"""Regenerate the screenshots in docs/images from a real napari session (needs a display or xvfb-run).

    xvfb-run -a -s "-screen 0 1920x1080x24" .venv/bin/python docs/screenshots.py
"""

from __future__ import annotations

import time
from pathlib import Path

from napari.qt import get_qapp
from qtpy.QtCore import QEventLoop

from napari_dinoseg._widgets.demo import build_viewer

OUT = Path(__file__).resolve().parent / "images"


def click_and_wait(widget) -> None:
    worker = widget.run()
    loop = QEventLoop()
    worker.finished.connect(loop.quit)
    if widget.worker is not None:
        loop.exec()
    for _ in range(10):
        get_qapp().processEvents()
        time.sleep(0.05)


def main() -> None:
    OUT.mkdir(exist_ok=True)
    viewer, widget = build_viewer(show=True)
    viewer.reset_view()
    get_qapp().processEvents()
    viewer.screenshot(str(OUT / "before_train_ihc.png"), canvas_only=False)

    click_and_wait(widget)
    viewer.reset_view()
    viewer.screenshot(str(OUT / "train_widget_ihc.png"), canvas_only=False)

    widget._want_uncertainty.value = True
    click_and_wait(widget)
    viewer.layers["predictions"].visible = False
    viewer.screenshot(str(OUT / "uncertainty_ihc.png"), canvas_only=False)

    # DINOv2 mode. No weights can be downloaded on the machine that makes these pictures, so
    # this one runs with RANDOM weights: it shows the controls and the mechanics, not DINOv2's quality.
    widget._want_uncertainty.value = False
    viewer.layers.remove("uncertainty")
    viewer.layers["predictions"].visible = True
    widget.features.use("vit", weights="random")
    click_and_wait(widget)
    viewer.screenshot(str(OUT / "dinov2_mode_random_weights.png"), canvas_only=False)
    viewer.close()
    unsupervised()


def unsupervised() -> None:
    """The unsupervised widget on the sample with classical features (no weights needed)."""
    import napari

    from napari_dinoseg._sample_data import ihc_image
    from napari_dinoseg._widgets.unsupervised_widget import UnsupervisedWidget

    viewer = napari.Viewer(show=True)
    viewer.add_image(ihc_image(), name="ihc micrograph", rgb=True)
    widget = UnsupervisedWidget(viewer)
    viewer.window.add_dock_widget(widget, name="dinoseg: unsupervised", area="right")
    viewer.window.resize(1500, 950)
    widget.features.kind.value = "classical"
    widget._k.value = 20
    click_and_wait(widget)
    viewer.layers["foreground"].visible = False
    viewer.reset_view()
    viewer.screenshot(str(OUT / "unsupervised_classical_ihc.png"), canvas_only=False)
    viewer.close()
    print(f"wrote screenshots to {OUT}")


if __name__ == "__main__":
    main()
