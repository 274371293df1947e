"""Shared fixtures: small seeded synthetic images with known answers."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def two_textures(rng):
    """(image uint8 (192, 192), truth int (192, 192) in {1, 2}, scribbles uint8 (192, 192)).

    A high-variance texture and a smooth one with the same mean intensity, split by a
    wavy boundary: only texture features can tell them apart. Scribbles are two thin
    strokes per class, ~2 % of the pixels, away from the boundary.
    """
    h = w = 192
    yy, xx = np.mgrid[:h, :w]
    truth = np.where(xx < 96 + 16 * np.sin(2 * np.pi * yy / 96), 1, 2)
    image = np.where(truth == 2, rng.normal(0.5, 0.2, (h, w)), rng.normal(0.5, 0.03, (h, w)))
    image = (np.clip(image, 0, 1) * 255).astype(np.uint8)
    scribbles = np.zeros((h, w), np.uint8)
    scribbles[20:172, 30:32] = 1
    scribbles[100:102, 10:60] = 1
    scribbles[20:172, 160:162] = 2
    scribbles[60:62, 140:180] = 2
    return image, truth, scribbles


def iou(pred: np.ndarray, truth: np.ndarray, cls: int) -> float:
    a, b = pred == cls, truth == cls
    return float((a & b).sum() / max(1, (a | b).sum()))
