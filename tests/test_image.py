import numpy as np
import pytest

from napari_dinoseg import FeatureConfig
from napari_dinoseg.image import MIN_SIDE, as_float_image, drop_alpha

LEGACY = FeatureConfig(normalise="legacy")


def test_legacy_uint8_is_divided_by_255_not_stretched():
    img = np.full((16, 16), 100, np.uint8)
    img[0, 0] = 200
    out = as_float_image(img, LEGACY)
    assert out.shape == (16, 16, 1) and out.dtype == np.float32
    assert out[1, 1, 0] == pytest.approx(100 / 255) and out[0, 0, 0] == pytest.approx(200 / 255)


@pytest.mark.parametrize("dtype", [np.uint16, np.int32, np.float32, np.float64])
def test_legacy_other_dtypes_are_scaled_by_their_own_range(dtype):
    img = np.linspace(100, 4000, 16 * 16).reshape(16, 16).astype(dtype)
    out = as_float_image(img, LEGACY)
    assert out.min() == 0.0 and out.max() == pytest.approx(1.0)


def test_multichannel_channels_are_normalised_independently():
    img = np.stack([np.arange(256).reshape(16, 16) * 1.0, np.arange(256).reshape(16, 16) * 100.0], -1)
    out = as_float_image(img, LEGACY)
    assert out.shape == (16, 16, 2)
    np.testing.assert_allclose(out[..., 0], out[..., 1], atol=1e-6)


def test_nan_and_inf_are_replaced_with_a_warning():
    img = np.linspace(0, 1, 256, dtype=np.float32).reshape(16, 16)
    img[0, 0], img[0, 1], img[0, 2] = np.nan, np.inf, -np.inf
    with pytest.warns(UserWarning, match="3 NaN/inf pixel"):
        out = as_float_image(img, LEGACY)
    assert np.isfinite(out).all()
    assert out[0, 1, 0] == pytest.approx(1.0)  # +inf -> finite max
    assert out[0, 0, 0] == 0.0 and out[0, 2, 0] == 0.0  # NaN, -inf -> finite min


def test_constant_image_gives_zeros_not_nan():
    out = as_float_image(np.full((16, 16), 7.0))
    assert np.all(out == 0)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_percentile_rule_cancels_brightness_and_contrast(dtype):
    """The default rule: percentiles 5 / 95 go to 0 / 1, linearly, not clipped."""
    img = np.linspace(20, 110, 64 * 64).reshape(64, 64)
    img[0, :5] = 5  # dark outliers, 0.1 % of the pixels: below the low percentile
    out = as_float_image(img.astype(dtype))
    lo, hi = np.percentile(img.astype(dtype), (5, 95))
    assert out[0, 0, 0] == pytest.approx((img[0, 0] - lo) / (hi - lo), abs=1e-4) and out[0, 0, 0] < 0
    assert out.max() > 1  # beyond the high percentile: kept, not clipped
    changed = as_float_image((img * 0.6 + 60).astype(dtype))  # another brightness and contrast
    np.testing.assert_allclose(changed, out, atol=1e-4 if dtype == np.float32 else 0.02)  # integer rounding


def test_fixed_rule_uses_the_dtype_range_or_the_given_one():
    img = np.full((16, 16), 1000, np.uint16)
    assert as_float_image(img, FeatureConfig(normalise="fixed"))[0, 0, 0] == pytest.approx(1000 / 65535)
    ct = np.full((16, 16), -500.0)
    out = as_float_image(ct, FeatureConfig(normalise="fixed", intensity_range=(-1000, 1000)))
    assert out[0, 0, 0] == pytest.approx(0.25)
    with pytest.raises(ValueError, match="intensity_range"):
        as_float_image(ct, FeatureConfig(normalise="fixed"))


@pytest.mark.parametrize("kwargs, match", [
    ({"normalise": "zscore"}, "normalise"), ({"percentiles": (99, 1)}, "percentiles"),
    ({"percentiles": (0, 101)}, "percentiles"), ({"intensity_range": (5, 5)}, "intensity_range"),
    ({"intensity_range": (0, float("nan"))}, "finite"), ({"percentiles": "ab"}, "pair of numbers"),
])
def test_bad_normalisation_options_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FeatureConfig(**kwargs)


def test_bool_image_is_accepted():
    img = np.zeros((16, 16), bool)
    img[4:8] = True
    out = as_float_image(img)
    assert set(np.unique(out)) == {0.0, 1.0}


@pytest.mark.parametrize(
    "image, exc, match",
    [
        (np.full((16, 16), np.nan), ValueError, "no finite value"),
        (np.zeros((16, 16), complex), TypeError, "complex"),
        (np.array([["a"] * 16] * 16), TypeError, "not numeric"),
        (np.zeros(16), ValueError, "2-D image"),
        (np.zeros((5, 64, 64)), ValueError, "stack of 2-D slices"),
        (np.zeros((2, 3, 64, 64)), ValueError, "stack of 2-D slices"),
        (np.zeros((MIN_SIDE - 1, 64)), ValueError, "too small"),
    ],
)
def test_bad_images_raise_clear_errors(image, exc, match):
    with pytest.raises(exc, match=match):
        as_float_image(image)


def test_drop_alpha():
    rgba = np.zeros((8, 8, 4), np.uint8)
    assert drop_alpha(rgba).shape == (8, 8, 3)
    assert drop_alpha(np.zeros((8, 8, 3))).shape == (8, 8, 3)
