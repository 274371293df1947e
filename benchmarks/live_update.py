"""Live update latency: from a brush stroke's end to updated pixels in the predictions layer.

Usage (a real napari viewer, so under a display; on a headless machine under Xvfb)::

    xvfb-run -a .venv/bin/python benchmarks/live_update.py [--sizes 512 1024] [--strokes 10]
        [--clicks 5] [--no-breakdown] [--out benchmarks/results/live_update.json]

    # 4096^2 (issue 23 item 6: the feature cache keeps the plane as float16)
    xvfb-run -a .venv/bin/python benchmarks/live_update.py --sizes 4096 --strokes 5 --clicks 3 \
        --no-breakdown --out benchmarks/results/live_update_4096.json

For each size: a two-texture image (65 classical features), a viewer with the train widget
docked, strokes of two classes and one Train / Predict click (the features are cached from then
on). Then ``--clicks`` timed clicks (the plain Train / Predict: retrain, predict the slice),
the same clicks without napari's activity-dock progress bar (live updates show none; under Xvfb
its animation redraws the window in software GL, which takes CPU from the job), and, with
**live update** on, ``--strokes`` scripted strokes for each view, the whole image on
screen and the view zoomed on about a quarter of it: each stroke is ``Labels.paint`` calls in
a history block, whose end emits the ``paint`` event napari emits when a mouse stroke ends;
the clock starts just before that. Timed, on the predictions layer's ``set_data`` event (the
layer re-sliced with the new pixels; the GL draw that follows is not counted: under Xvfb it is
software rendering, unlike a desktop): **view** the first pass (the part on screen),
**slice** the whole-plane pass, **delay** the live update's start (``LIVE_DELAY_MS`` plus the
event loop's latency). The next stroke comes when everything is idle. Then, without a viewer,
where an update's time goes at each size (best of 3): the refit with cached features and, in
it, the parts that do not depend on the strokes (the feature scaling's fit and the training
statistics); the prediction of the central quarter and, in it, the signed-log scaling of its
features (``--no-breakdown``: not run; it holds the whole plane's float32 features and their
scaled copy, 11 GiB at 4096²). The plan line the dock showed (how the feature cache keeps the
plane) and the process's peak resident memory are recorded. Writes a markdown table next to the JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from machine import cpu_name

HERE = Path(__file__).resolve().parent
#: Width of the band kept free of strokes on either side of the class boundary (px).
BOUNDARY_GAP = 12
#: The viewer window's size (px): the canvas, and so the part of the image on screen, does not
#: depend on the geometry napari remembers from its last window.
WINDOW = (1400, 900)


def two_textures(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(image uint8 (n, n), boundary (n,) float)``: a rough texture left of a wavy vertical
    boundary (class 1), a smooth one of the same mean right of it (class 2)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:n, :n]
    boundary = n / 2 + n / 12 * np.sin(2 * np.pi * np.arange(n) / (n / 2))
    rough = xx < boundary[yy]
    image = np.where(rough, rng.normal(0.5, 0.2, (n, n)), rng.normal(0.5, 0.03, (n, n)))
    return (np.clip(image, 0, 1) * 255).astype(np.uint8), boundary


def random_stroke(rng, region, boundary, label: int, length: int):
    """``[(row, col), (row, col)]``: a horizontal stroke of class ``label`` inside ``region``, on its side of the boundary."""
    rows, cols = region
    for _ in range(1000):
        r = int(rng.integers(rows.start + 2, rows.stop - 2))
        lo, hi = (cols.start + 2, int(boundary[r]) - BOUNDARY_GAP) if label == 1 else \
                 (int(boundary[r]) + BOUNDARY_GAP, cols.stop - 2)
        lo, hi = max(lo, cols.start + 2), min(hi, cols.stop - 2)
        if hi - lo >= 8:
            c0 = int(rng.integers(lo, max(lo + 1, hi - length)))
            return [(r, c0), (r, min(hi, c0 + length))]
    raise RuntimeError(f"no room for a class {label} stroke in {region}")


def paint(layer, points, label: int) -> float:
    """One stroke in a history block; returns the time just before the block ends (its ``paint`` event)."""
    (r0, c0), (r1, c1) = points
    with layer.block_history():
        n = int(max(abs(r1 - r0), abs(c1 - c0))) + 1
        for r, c in zip(np.linspace(r0, r1, n), np.linspace(c0, c1, n)):
            layer.paint((round(r), round(c)), label, refresh=False)
        layer.refresh()
        start = time.perf_counter()
    return start


class Clock:
    """Timestamps of the predictions layer's updates after a start, split into the view pass
    (before the job's result arrives) and the whole-slice pass (its result)."""

    def __init__(self, app, widget) -> None:
        self.app, self.widget = app, widget
        self.layer = None
        self.marks: dict = {}
        widget._live_timer.timeout.connect(lambda: self.marks.setdefault("delay", time.perf_counter()))

    def watch(self, layer) -> None:
        if layer is not self.layer:
            self.layer = layer
            layer.events.set_data.connect(self._on_set_data)

    def _on_set_data(self, _event=None) -> None:
        kind = "slice" if self.widget.last_result is not self.before else "view"
        self.marks.setdefault(kind, time.perf_counter())

    def run(self, start_action, timeout: float = 300.0) -> dict:
        """Do ``start_action() -> t0``; wait until the widget is idle; seconds from t0 to each mark."""
        from qtpy.QtCore import QEventLoop, QTimer

        self.marks, self.before = {}, self.widget.last_result
        t0 = start_action()
        deadline = time.perf_counter() + timeout
        loop, tick = QEventLoop(), QTimer()
        tick.timeout.connect(lambda: loop.quit() if self._idle() or time.perf_counter() > deadline else None)
        tick.start(5)
        loop.exec()
        tick.stop()
        if self.widget.last_result is self.before:
            raise RuntimeError(f"no prediction within {timeout} s: {self.widget._status.value}")
        self.marks.setdefault("slice", time.perf_counter())  # a layer not watched yet: the widget's idle
        return {k: v - t0 for k, v in self.marks.items()}

    def _idle(self) -> bool:
        w = self.widget
        return w.worker is None and w._waiting is None and not w._live_timer.isActive() and \
            w.last_result is not self.before


def settle(app, seconds: float = 0.3) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        app.processEvents()
        time.sleep(0.01)


def zoom_to_fraction(app, viewer, layer, fraction: float) -> tuple:
    """Zoom on the image's centre until about ``fraction`` of its area is on screen; the region."""
    from napari_dinoseg._widgets._live import visible_region

    n = layer.data.shape[0]
    viewer.reset_view()
    settle(app)
    camera = viewer.scene.camera
    for _ in range(8):
        region = visible_region(layer.corner_pixels, layer.data.shape)
        shown = np.prod([s.stop - s.start for s in region]) / n**2
        if abs(shown - fraction) < 0.02:
            break
        camera.zoom *= float(np.sqrt(shown / fraction)) if shown < 0.999 else 1.6
        settle(app)
    return visible_region(layer.corner_pixels, layer.data.shape)


def best(f, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        f()
        times.append(time.perf_counter() - start)
    return min(times)


def breakdown(n: int, seed: int) -> dict:
    """Seconds of the parts of one live update at ``n``², features cached, view = the central quarter."""
    from napari_dinoseg import classify
    from napari_dinoseg._widgets._live import predict_region
    from napari_dinoseg.features.featurise import FeatureCache, cached_featurise
    from napari_dinoseg.image import as_float_image
    from napari_dinoseg.segmenter import Segmenter, plane_windows
    from napari_dinoseg.distribution_shift import TrainingStatistics, image_statistics

    image, boundary = two_textures(n, seed)
    rng = np.random.default_rng(seed)
    labels = np.zeros((n, n), np.uint8)
    for label in (1, 2, 1, 2):
        (r, c0), (_, c1) = random_stroke(rng, (slice(0, n), slice(0, n)), boundary, label, n // 4)
        labels[r - 2:r + 3, c0:c1] = label
    cache = FeatureCache()
    seg = Segmenter().fit(image, labels, cache=cache)
    norm = as_float_image(image, seg.features)
    stack = cached_featurise(norm, seg.features, None, cache, normalised=True)
    clf, q = seg.classifier, n // 4
    view = (slice(q, 3 * q), slice(q, 3 * q))
    windows = plane_windows((n, n), seg.features, seg.training, seg.tile)
    scaled = classify.scaled_features(clf, stack)
    return {
        "size": n,
        "refit": best(lambda: Segmenter().fit(image, labels, cache=cache)),
        "scaling fit": best(lambda: classify.fit_scaling(stack, "log")),
        "training statistics": best(lambda: TrainingStatistics.of([image_statistics(norm)], [labels], clf.classes)),
        "predict quarter": best(lambda: predict_region(clf, windows, lambda w: (stack, None), view)),
        "predict quarter, scaled features cached": best(lambda: predict_region(clf, windows, lambda w: (stack, scaled), view)),
    }


def stats(values: list[float]) -> dict:
    return {"median": float(np.median(values)), "p90": float(np.percentile(values, 90)), "n": len(values)}


def bench_size(n: int, strokes: int, clicks: int, seed: int) -> list[dict]:
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_dinoseg._widgets._feature_controls import SHARED_CACHE
    from napari_dinoseg._widgets.train_widget import TrainWidget

    SHARED_CACHE.clear()
    image, boundary = two_textures(n, seed)
    viewer = napari.Viewer(show=True)
    app = QApplication.instance()
    layer = viewer.add_image(image, name="img")
    widget = TrainWidget(viewer)
    viewer.window.add_dock_widget(widget, name="dinoseg: train")
    viewer.window.resize(*WINDOW)
    labels = widget.new_labels_layer()
    labels.brush_size = 5
    rng = np.random.default_rng(seed)
    whole = (slice(0, n), slice(0, n))
    for label in (1, 2, 1, 2):  # the strokes the first click trains on
        paint(labels, random_stroke(rng, whole, boundary, label, n // 4), label)
    settle(app, 3.0)  # the background import of torch and scikit-learn
    clock = Clock(app, widget)
    rows = []

    first = clock.run(lambda: _click(widget))  # makes the predictions layer: timed to the widget's idle
    clock.watch(widget.predictions if hasattr(widget, "predictions") else widget._predictions)  # renamed
    rows.append({"size": n, "mode": "first click (featurises)", "view": "-", "slice": stats([first["slice"]]),
                 "plan": widget.features.plan.value})

    for mode, bar in (("Train / Predict click", True), ("the click without the activity-dock bar", False)):
        times = []
        with _activity_bar(bar):
            for _ in range(clicks):
                settle(app, 0.2)
                times.append(clock.run(lambda: _click(widget))["slice"])
        rows.append({"size": n, "mode": mode, "view": "-", "slice": stats(times)})

    widget._live.value = True
    for name, fraction in (("whole image", 1.0), ("quarter", 0.25)):
        if fraction < 1:
            region = zoom_to_fraction(app, viewer, layer, fraction)
        else:
            viewer.reset_view()
            settle(app)
            region = whole
        shape = tuple(s.stop - s.start for s in region)
        marks = []
        for k in range(strokes):
            label = 1 + k % 2
            points = random_stroke(rng, region, boundary, label, max(16, n // 16))
            settle(app, 0.2)
            marks.append(clock.run(lambda: paint(labels, points, label)))
        views = [m["view"] for m in marks if "view" in m]
        rows.append({
            "size": n, "mode": "live update", "view": f"{name}: {shape[0]}×{shape[1]} px "
                                                     f"({np.prod(shape) / n**2:.0%})",
            "delay": stats([m["delay"] for m in marks]),
            "first": stats(views) if views else None,
            "slice": stats([m["slice"] for m in marks]),
        })
    widget._live.value = False
    viewer.close()
    return rows


@contextlib.contextmanager
def _activity_bar(shown: bool):
    """Clicks with napari's activity-dock progress bar (as the widget runs them), or without it
    (as live updates run): under Xvfb its animation redraws the window in software GL."""
    from napari_dinoseg._widgets import _worker_widget

    real = _worker_widget.cancelable_progress
    if not shown:
        _worker_widget.cancelable_progress = lambda **kwargs: None
    try:
        yield
    finally:
        _worker_widget.cancelable_progress = real


def _click(widget) -> float:
    start = time.perf_counter()
    if widget.run() is None:
        raise RuntimeError(f"Train / Predict refused: {widget._status.value}")
    return start


def to_markdown(rows: list[dict], meta: dict) -> str:
    def cell(s) -> str:
        return "–" if s is None else f"{s['median']:.2f} / {s['p90']:.2f}"

    lines = [
        f"Live update latency, classical features (65 channels), {meta['machine']}; "
        f"load average {meta['load_before']} before, {meta['load_after']} after. "
        "Seconds, median / 90th percentile.",
        f"Feature cache budget {meta['cache_budget_gib']:.1f} GiB; peak resident memory of the process "
        f"{meta['peak_rss_gib']:.1f} GiB.",
        "",
    ] + [f"- {size}²: the dock's plan line: \"{plan}\"" for size, plan in meta["plans"].items()] + [
        "",
        "| image | what | view on screen | start (delay) | view pass | whole slice | n |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        first = r.get("first") or (r["slice"] if r["mode"] == "live update" else None)
        lines.append(f"| {r['size']}² | {r['mode']} | {r['view']} | {cell(r.get('delay'))} | "
                     f"{cell(first) if r['mode'] == 'live update' else '–'} | {cell(r['slice'])} | {r['slice']['n']} |")
    return "\n".join(lines) + "\n"


def breakdown_markdown(parts: list[dict]) -> str:
    names = [k for k in parts[0] if k != "size"]
    lines = ["Where an update's time goes (seconds, best of 3, features cached, view = the central quarter):", "",
             "| step | " + " | ".join(f"{p['size']}²" for p in parts) + " |",
             "|---|" + "---|" * len(parts)]
    lines += [f"| {name} | " + " | ".join(f"{p[name]:.3f}" for p in parts) + " |" for name in names]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--strokes", type=int, default=10)
    parser.add_argument("--clicks", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-breakdown", action="store_true", help="skip the per-step breakdown (no viewer)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "live_update.json")
    args = parser.parse_args()

    import napari
    import psutil
    import torch

    from napari_dinoseg._widgets.train_widget import LIVE_DELAY_MS

    load_before = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    rows = [row for n in args.sizes for row in bench_size(n, args.strokes, args.clicks, args.seed)]
    parts = [] if args.no_breakdown else [breakdown(n, args.seed) for n in args.sizes]
    import resource

    from napari_dinoseg.features.featurise import FeatureCache
    meta = {
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "cache_budget_gib": FeatureCache().max_bytes / 2**30,
        "plans": {r["size"]: r["plan"] for r in rows if "plan" in r},
        "machine": f"{os.cpu_count()} CPU cores ({cpu_name()}, {platform.machine()}), "
                   f"{psutil.virtual_memory().total / 2**30:.0f} GiB, torch {torch.__version__} "
                   f"({torch.get_num_threads()} threads), napari {napari.__version__}",
        "load_before": load_before, "load_after": ", ".join(f"{x:.1f}" for x in os.getloadavg()),
        "live_delay_ms": LIVE_DELAY_MS, "strokes": args.strokes, "clicks": args.clicks,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "rows": rows, "breakdown": parts}, indent=1))
    table = to_markdown(rows, meta) + ("\n" + breakdown_markdown(parts) if parts else "")
    args.out.with_suffix(".md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
