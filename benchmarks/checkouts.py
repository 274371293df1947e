"""Shared by the benchmarks that measure this checkout against an older one in the same run
(``--baseline-src``): the synthetic three-phase image with strokes, a measurement in a fresh
process per checkout, the pixel-by-pixel comparison of their labels, and the results files."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, Optional

import numpy as np

HERE = Path(__file__).resolve().parent

#: Code for a child process: ``image`` (uint8 (size, size), three phases of blurred noise) and
#: ``labels`` (horizontal 3-px strokes every 48 rows, kept inside each phase, ~1 % of the pixels).
SYNTHETIC = r"""
from scipy import ndimage
rng = np.random.default_rng(0)
phases = np.digitize(ndimage.gaussian_filter(rng.normal(size=(size, size)), 12), [-0.01, 0.01]) + 1
image = (phases * 60 + rng.normal(0, 25, phases.shape)).clip(0, 255).astype(np.uint8)
labels = np.zeros(phases.shape, np.uint8)
for row in range(24, size, 48):  # horizontal 3-px strokes every 48 rows, kept inside each phase
    stroke = np.zeros_like(labels, bool)
    stroke[row:row + 3, 16:size - 16] = True
    inner = ndimage.binary_erosion(phases == 1 + (row // 48) % 3, iterations=4)
    labels[stroke & inner] = 1 + (row // 48) % 3
"""


def run_child(code: str, src: Path, *args) -> tuple[dict, np.ndarray]:
    """Run ``code`` in a fresh process importing the package from ``src``, with ``sys.argv[1:]``
    = ``args`` then a path to ``np.save`` labels to; its last stdout line (JSON) and those labels."""
    with tempfile.TemporaryDirectory() as tmp:
        labels = Path(tmp) / "labels.npy"
        env = dict(os.environ, PYTHONPATH=str(src))
        out = subprocess.run([sys.executable, "-c", code, *map(str, args), str(labels)],
                             check=True, capture_output=True, text=True, env=env)
        return json.loads(out.stdout.strip().splitlines()[-1]), np.load(labels)


def compare(sizes: list[int], baseline_src: Optional[Path],
            measure: Callable[[Path, int], tuple[dict, np.ndarray]],
            row: Callable[[int, str, Path, dict], dict]) -> list[dict]:
    """For each size, ``measure(src, size)`` of the baseline (when given) then of this checkout;
    ``row(size, version, src, raw)`` of each, the second's with ``labels_agree_with_baseline``."""
    versions = {"this checkout": HERE.parent / "src"}
    if baseline_src is not None:
        versions = {"baseline": baseline_src, **versions}
    rows = []
    for size in sizes:
        labels = {}
        for name, src in versions.items():
            raw, labels[name] = measure(src, size)
            rows.append(row(size, name, src, raw))
        if len(labels) == 2:
            a, b = labels.values()
            rows[-1]["labels_agree_with_baseline"] = float((a == b).mean())
    return rows


def write(out: Path, table: str, rows: list[dict], **machine) -> None:
    """Print ``table``; write ``out`` (JSON: the machine and the rows) and the table beside it."""
    print(table)
    out.parent.mkdir(parents=True, exist_ok=True)
    machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
               "python": platform.python_version(), **machine}
    out.write_text(json.dumps({"machine": machine, "rows": rows}, indent=2))
    out.with_suffix(".md").write_text(table + "\n")
    print(f"\nwrote {out}")
