"""Packaging: the manifest's entries import, the core stays free of napari / Qt, imports are cheap."""

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CORE_MODULES = [
    "napari_dinoseg",
    "napari_dinoseg.config",
    "napari_dinoseg.image",
    "napari_dinoseg.progress",
    "napari_dinoseg.classify",
    "napari_dinoseg.crf",
    "napari_dinoseg.bundle",
    "napari_dinoseg.batch",
    "napari_dinoseg.cluster",
    "napari_dinoseg.measure",
    "napari_dinoseg.regions",
    "napari_dinoseg.models",
    "napari_dinoseg.inputs",
    "napari_dinoseg.outputs",
    "napari_dinoseg.label_files",
    "napari_dinoseg.pixel_size",
    "napari_dinoseg.measure_report",
    "napari_dinoseg.measure_plots",
    "napari_dinoseg.unsupervised",
    "napari_dinoseg.similarity",
    "napari_dinoseg.descriptors",
    "napari_dinoseg.correspondence",
    "napari_dinoseg.parts",
    "napari_dinoseg.features.registry",
    "napari_dinoseg.features.backbones",
    "napari_dinoseg.features.upsample",
    "napari_dinoseg.features.tiling",
    "napari_dinoseg.features.vit",
    "napari_dinoseg.features",
    "napari_dinoseg.features.classical",
    "napari_dinoseg.features.featurise",
    "napari_dinoseg._sample_data",
    "napari_dinoseg._widgets._train_job",
    "napari_dinoseg._widgets._jobs",
    "napari_dinoseg._widgets._live",
    "napari_dinoseg.features.base",
    "napari_dinoseg.features.featurisers",
    "napari_dinoseg.segmenter",
    "napari_dinoseg.region_prediction",
]


def run_python(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout


def test_every_manifest_python_name_imports():
    import importlib

    manifest = yaml.safe_load((ROOT / "napari.yaml").read_text())
    names = [c["python_name"] for c in manifest["contributions"]["commands"]]
    assert names
    for name in names:
        module, attr = name.split(":")
        assert callable(getattr(importlib.import_module(module), attr)), name


def test_manifest_is_valid_and_registered():
    from npe2 import PluginManifest

    pm = PluginManifest.from_distribution("napari-dinoseg")
    assert pm.name == "napari-dinoseg"
    assert {w.display_name for w in pm.contributions.widgets} == {
        "dinoseg: train", "dinoseg: unsupervised", "dinoseg: apply to folder", "dinoseg: find similar (click)",
        "dinoseg: match two images", "dinoseg: measure"}
    assert [s.key for s in pm.contributions.sample_data] == ["ihc"]


def test_core_imports_neither_napari_nor_qt():
    code = (
        "import sys, importlib\n"
        f"for m in {CORE_MODULES!r}: importlib.import_module(m)\n"
        "import numpy as np; from napari_dinoseg import featurise, train, predict\n"
        "x = (np.random.default_rng(0).random((32, 32)) * 255).astype('uint8')\n"
        "lab = np.zeros((32, 32), 'uint8'); lab[2, :] = 1; lab[-3, :] = 2\n"
        "f = featurise(x); predict(train(f, lab), f)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('napari', 'qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', 'magicgui', 'superqt', 'vispy'))\n"
        "print(json.dumps(bad))\n"
    )
    assert json.loads(run_python("import json\n" + code)) == []


def test_importing_the_package_is_cheap():
    out = run_python("import sys, napari_dinoseg; print(sorted(m for m in ('torch', 'sklearn', 'napari', 'skimage') if m in sys.modules))")
    assert out.strip() == "[]"


def test_wheel_ships_the_manifest_and_entry_point(tmp_path):
    pytest.importorskip("hatchling")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True, capture_output=True,
    )
    (wheel,) = tmp_path.glob("napari_dinoseg-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        assert "napari_dinoseg/napari.yaml" in names
        manifest = yaml.safe_load(zf.read("napari_dinoseg/napari.yaml"))
        assert manifest["name"] == "napari-dinoseg"
        (ep,) = [n for n in names if n.endswith("entry_points.txt")]
        assert "napari_dinoseg:napari.yaml" in zf.read(ep).decode()
