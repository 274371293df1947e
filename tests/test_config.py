import json

import pytest

from napari_dinoseg.config import CASConfig, CRFConfig, FeatureConfig, TrainConfig


def test_feature_config_defaults_and_json_round_trip():
    cfg = FeatureConfig(sigmas=[1, 2, 4])
    assert cfg.sigmas == (1.0, 2.0, 4.0)
    back = FeatureConfig.from_dict(json.loads(cfg.to_json()))
    assert back == cfg and hash(back) == hash(cfg)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"kind": "dinov9"}, "kind='dinov9' is not valid; choose one of 'classical', 'vit', 'hybrid'"),
        ({"sigmas": ()}, "at least one scale"),
        ({"sigmas": (2, 1)}, "strictly increasing"),
        ({"sigmas": (0, 1)}, "positive and finite"),
        ({"sigmas": (1, float("nan"))}, "positive and finite"),
        ({"membrane_size": 18}, "odd integer"),
        ({"device": "tpu"}, "device='tpu'"),
    ],
)
def test_feature_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FeatureConfig(**kwargs)


def test_from_dict_rejects_unknown_fields():
    with pytest.raises(ValueError, match="unknown FeatureConfig field"):
        FeatureConfig.from_dict({"kind": "classical", "patch": 4})


@pytest.mark.parametrize("kwargs", [{"C": 0}, {"C": -1.0}, {"class_weight": "auto"}, {"max_iter": 0},
                                    {"max_pixels_per_class": 0}, {"classifier": "svm"},
                                    {"scaling": "robust"}, {"smooth": -1}, {"smooth": float("nan")}, {"smooth": 40},
                                    {"guided_radius": -1}, {"guided_radius": 33}, {"guided_radius": 2.0},
                                    {"guided_radius": True}, {"predict_step": 0}, {"predict_step": 9},
                                    {"predict_step": 2.0}, {"predict_step": True}])
def test_train_config_rejects_bad_values(kwargs):
    with pytest.raises(ValueError):
        TrainConfig(**kwargs)


@pytest.mark.parametrize("make, match", [
    (lambda: TrainConfig(C=True), "C must be"),
    (lambda: TrainConfig(smooth=False), "smooth must be"),
    (lambda: TrainConfig(n_trees=True), "n_trees must be"),
    (lambda: TrainConfig(max_iter=10**9), "max_iter must be"),
    (lambda: CRFConfig(iterations=10**9), r"iterations must be an integer in \[1, 100\]"),  # a run that never ends
    (lambda: CRFConfig(bilateral_sxy=float("inf")), "bilateral_sxy must be"),
    (lambda: CRFConfig(gaussian_sxy=True), "gaussian_sxy must be"),
    (lambda: CASConfig(k=10**7), "k must be"),
])
def test_configs_refuse_bools_and_values_that_would_never_finish(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("data", ["classical", 3, [["kind", "classical"]], None])
def test_from_dict_of_a_non_dict_is_a_type_error(data):
    with pytest.raises(TypeError, match="FeatureConfig is read from a dict"):
        FeatureConfig.from_dict(data)
