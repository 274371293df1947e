"""The house's shape, measured from the code by ``scripts/house_metrics.py`` (issue 26): the
modules taken out of import cycles stay out, and the config does not reach up into ``features/``."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def house():
    spec = importlib.util.spec_from_file_location("house_metrics", ROOT / "scripts" / "house_metrics.py")
    metrics = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(metrics)
    return metrics


@pytest.mark.parametrize("module", ["batch", "cluster", "measure_report", "config", "models", "inputs", "outputs"])
def test_module_is_in_no_import_cycle(house, module):
    cycles = house.measure_house()["import_cycles"]
    assert all(f"napari_dinoseg.{module}" not in cycle for cycle in cycles), cycles


def test_the_package_has_no_import_cycle(house):
    assert house.measure_house()["import_cycles"] == []


def imports_of(house, module: str) -> set:
    path = ROOT / "src" / "napari_dinoseg" / f"{module}.py"
    return house.imports(house.ast.parse(path.read_text()), f"napari_dinoseg.{module}", False)


def test_config_takes_the_model_table_from_below_not_from_features(house):
    imported = imports_of(house, "config")
    assert "napari_dinoseg.models" in imported, imported  # the import is seen at all
    assert not any(name.startswith("napari_dinoseg.features") for name in imported), imported


def test_the_model_table_imports_nothing_of_the_package(house):
    assert imports_of(house, "models") == set()


def test_a_cycle_is_found_where_there_is_one(house):
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert house.cycles(graph) == [["a", "b", "c"]]


def test_the_memory_headroom_imports_nothing_of_the_package(house):
    assert imports_of(house, "memory_limits") == set()


def test_plane_windows_reach_down_to_the_features_only(house):
    imported = {name.split(".")[1] for name in imports_of(house, "planes")}
    assert imported == {"config", "features", "smoothing"}, imported
