"""The README's main job (headless demo) and the sample-data contribution."""

import json
import subprocess
import sys

import numpy as np

from napari_dinoseg._sample_data import IHC_STROKES, sample_ihc


def test_sample_gives_an_rgb_micrograph_and_strokes_of_three_classes():
    (image, image_kwargs, image_kind), (strokes, _, strokes_kind) = sample_ihc()
    assert image.shape == (512, 512, 3) and image.dtype == np.uint8 and image_kwargs["rgb"]
    assert (image_kind, strokes_kind) == ("image", "labels")
    assert strokes.shape == (512, 512) and set(np.unique(strokes)) == {0, 1, 2, 3}
    assert 0.002 < (strokes > 0).mean() < 0.02  # a few strokes, not a dense annotation
    assert {s[0] for s in IHC_STROKES} == {1, 2, 3}


def test_headless_demo_writes_prediction_and_screenshot(tmp_path):
    """``scripts/demo.sh`` without a display runs this; here under the test's Xvfb display."""
    out = tmp_path / "demo"
    subprocess.run(
        [sys.executable, "-m", "napari_dinoseg._widgets.demo", "--headless", "--out", str(out)],
        check=True, capture_output=True, text=True, timeout=600,
    )
    import tifffile
    from skimage.io import imread

    pred = tifffile.imread(out / "prediction.tif")
    assert pred.shape == (512, 512) and set(np.unique(pred)) == {1, 2, 3}
    shot = imread(out / "screenshot.png")
    assert shot.ndim == 3 and shot.shape[0] > 400 and shot.shape[1] > 800
    assert shot[..., :3].std() > 10  # a drawn window, not a blank frame
    summary = json.loads((out / "summary.json").read_text())
    assert summary["classes"] == [1, 2, 3] and abs(sum(summary["class_fractions"]) - 1) < 1e-3
    # the stained epithelium (class 1, brown) dominates this image: a sanity check of the result
    image = sample_ihc()[0][0]
    brown = image[..., 0].astype(int) - image[..., 2].astype(int) > 40
    assert (pred[brown] == 1).mean() > 0.85
