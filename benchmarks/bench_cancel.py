"""How late a cancel takes effect in a ViT featurisation (DINOv2-S/14, random weights, CPU preset).

Usage::

    .venv/bin/python benchmarks/bench_cancel.py [--sizes 512 1024] [--after 5]
        [--batch-seconds 1.0] [--out benchmarks/results/cancel_cpu.json]

For each size: ``featurise`` runs in this process (model loaded beforehand); ``--after`` seconds
after its first progress call a timer "clicks Cancel" (sets a flag), and the progress callback
raises :class:`napari_dinoseg.Cancelled` at its next call. Reported: the seconds from the click
to the exception reaching the caller, the views finished after the click, and the longest gap
between two progress calls. ``--batch-seconds inf`` sizes forward passes by memory alone (the
rule before per-view progress), for comparison.
"""

from __future__ import annotations

import argparse
import json
import math
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def cancel_once(size: int, after: float) -> dict:
    """Featurise a ``size``-square noise image and cancel it ``after`` seconds in; the figures."""
    from napari_dinoseg import Cancelled, FeatureConfig, featurise

    cfg = FeatureConfig(kind="vit", weights="random", device="cpu")
    img = (np.random.default_rng(0).random((size, size)) * 255).astype(np.uint8)
    clicked = threading.Event()
    calls: list[tuple[float, int, int]] = []  # (time, done, total)
    timer: list[threading.Timer] = []
    click_time: list[float] = []

    def click() -> None:
        click_time.append(time.perf_counter())
        clicked.set()

    def progress(done: int, total: int, message: str) -> None:
        calls.append((time.perf_counter(), done, total))
        if not timer:
            timer.append(threading.Timer(after, click))
            timer[0].start()
        if clicked.is_set():
            raise Cancelled()

    try:
        featurise(img, cfg, progress)
        stopped = None
    except Cancelled:
        stopped = time.perf_counter()
    finally:
        timer[0].cancel()
    views_at_click = max((d for t, d, _ in calls if click_time and t <= click_time[0]), default=0)
    gaps = [b[0] - a[0] for a, b in zip(calls, calls[1:])]
    return {"size": size, "views": calls[0][2], "click_after_s": after,
            "latency_s": None if stopped is None else stopped - click_time[0],
            "views_after_click": calls[-1][1] - views_at_click, "longest_gap_s": max(gaps, default=0.0)}


def main() -> None:
    import torch

    from napari_dinoseg.features import vit
    from napari_dinoseg.features.backbones import load_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", type=int, default=[512, 1024])
    parser.add_argument("--after", type=float, default=5.0, help="seconds from the first progress call to the click")
    parser.add_argument("--batch-seconds", type=float, default=vit.BATCH_SECONDS)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "cancel_cpu.json")
    args = parser.parse_args()
    vit.BATCH_SECONDS = args.batch_seconds
    load_model("dinov2_vits14", "random", torch.device("cpu"))

    print("| image | views | batch seconds | click after s | latency s | views after click | longest gap s |\n"
          "|---|---|---|---|---|---|---|", flush=True)
    rows = []
    for size in args.sizes:
        limit = args.batch_seconds if math.isfinite(args.batch_seconds) else None  # None: by memory alone
        row = {"batch_seconds": limit, **cancel_once(size, args.after)}
        rows.append(row)
        latency = "finished first" if row["latency_s"] is None else f"{row['latency_s']:.2f}"
        print(f"| {size}² | {row['views']} | {args.batch_seconds:g} | {args.after:g} | {latency} | "
              f"{row['views_after_click']} | {row['longest_gap_s']:.2f} |", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    old = json.loads(args.out.read_text())["rows"] if args.out.exists() else []
    key = lambda r: (r["size"], r["batch_seconds"] or math.inf)  # noqa: E731
    merged = [r for r in old if key(r) not in {key(n) for n in rows}] + rows
    args.out.write_text(json.dumps({"throughput_tflops": vit.throughput(torch.device("cpu")) / 1e12,
                                    "rows": sorted(merged, key=key)}, indent=2))


if __name__ == "__main__":
    main()
