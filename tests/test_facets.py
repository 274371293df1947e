"""ViT facets and layers (Amir et al.), and the settings that reproduce the papers' features:
``resize="stretch"`` as torch's nearest-exact, ``pos_embed="scale"`` as DINO's bicubic resampling."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_dinoseg import FeatureConfig, Segmenter, featurise
from napari_dinoseg.features.backbones import StridedViT, load_model, scaled_pos_embed
from napari_dinoseg.features.upsample import token_index
from napari_dinoseg.features.vit import view_flops


@pytest.fixture(scope="module")
def vit():
    return StridedViT(load_model("dinov2_vits14", "random", "cpu"))


@pytest.fixture(scope="module")
def images():
    return torch.randn(2, 3, 56, 70, generator=torch.Generator().manual_seed(0))


def hooked(vit, images, layer):
    """timm's own forward at stride = patch size, with block ``layer``'s qkv output and block output
    captured by hooks: ``(qkv (B, N, 3 D), block output (B, N, D), final features (B, N, D))``."""
    seen = {}
    block = vit.model.blocks[layer]
    hooks = [block.attn.qkv.register_forward_hook(lambda m, i, o: seen.__setitem__("qkv", o)),
             block.register_forward_hook(lambda m, i, o: seen.__setitem__("block", o))]
    try:
        with torch.inference_mode():
            final = vit.model.forward_features(images)
    finally:
        for h in hooks:
            h.remove()
    return seen["qkv"], seen["block"], final


@pytest.mark.parametrize("layer", [-1, 5, 0])
def test_facets_are_the_blocks_queries_keys_values_and_tokens(vit, images, layer):
    """Each facet equals what timm's own forward computes in that block (hooks on its qkv
    projection and its output): q, k, v are the thirds of the qkv output, heads concatenated;
    the token facet is the block's output, after the final norm for the last block."""
    qkv, block_out, final = hooked(vit, images, layer)
    d, prefix = vit.embed_dim, vit.num_prefix
    grid = (4, 5)  # 56 x 70 px at stride 14
    for i, facet in enumerate(("query", "key", "value")):
        with torch.inference_mode():
            got, attention = vit(images, 14, facet=facet, layer=layer)
        expected = qkv[:, prefix:, i * d:(i + 1) * d].reshape(2, *grid, d)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
        assert attention.shape == (2, vit.num_heads, *grid)
        torch.testing.assert_close(attention.sum(dim=(-2, -1)), torch.ones(2, vit.num_heads))
    with torch.inference_mode():
        tokens, _ = vit(images, 14, facet="token", layer=layer)
    expected = (final if layer == -1 else block_out)[:, prefix:].reshape(2, *grid, d)
    torch.testing.assert_close(tokens, expected, atol=1e-4, rtol=1e-4)
    with torch.inference_mode():
        keys, _ = vit(images, 14, facet="key", layer=layer)
    assert not torch.allclose(keys, tokens, atol=1e-2)  # a different descriptor


def test_a_facet_config_featurises_and_stops_at_its_block():
    image = (np.random.default_rng(0).random((56, 84)) * 255).astype(np.uint8)
    base = dict(kind="vit", weights="random", stride=14, shifts=(), flips=False, device="cpu", precision="float32")
    keys = featurise(image, FeatureConfig(**base, facet="key", layer=6))
    tokens = featurise(image, FeatureConfig(**base))
    assert keys.data.shape == tokens.data.shape == (56, 84, 384) and np.isfinite(keys.data).all()
    assert not np.allclose(keys.data, tokens.data, atol=1e-2)
    early = FeatureConfig(**base, facet="key", layer=2)
    assert view_flops(early, (518, 518)) < view_flops(FeatureConfig(**base), (518, 518)) / 4
    for bad in (dict(layer=12), dict(layer=-13), dict(layer=1.0), dict(facet="attn"), dict(pos_embed="bilinear")):
        with pytest.raises(ValueError):
            FeatureConfig(**{**base, **bad})


@pytest.mark.parametrize("n_pixels, n_tokens", [(56, 4), (70, 5), (100, 7), (126, 33), (518, 127), (13, 13)])
def test_stretch_is_torch_nearest_exact_and_stretch_floor_its_legacy_nearest(n_pixels, n_tokens):
    """The token each pixel takes equals what torch's resize of the token grid gives."""
    grid = torch.arange(n_tokens, dtype=torch.float32).reshape(1, 1, n_tokens)
    for resize, mode in (("stretch", "nearest-exact"), ("stretch-floor", "nearest")):
        expected = F.interpolate(grid, size=n_pixels, mode=mode).reshape(-1).long()
        torch.testing.assert_close(token_index(n_pixels, n_tokens, 14, 4, resize), expected)


def keys_cubic(x: np.ndarray, a: float = -0.75) -> np.ndarray:
    """Keys' cubic convolution kernel (torch's bicubic uses a = -0.75)."""
    x = np.abs(x)
    return np.where(x <= 1, (a + 2) * x**3 - (a + 3) * x**2 + 1,
                    np.where(x < 2, a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a, 0.0))


def bicubic_by_scale(values: np.ndarray, out: int, scale: float) -> np.ndarray:
    """Resample ``(n, ...)`` along axis 0 to ``out`` samples, written out: sample ``j`` reads the
    source position ``(j + 1/2) / scale - 1/2`` (half-pixel centres, from the scale factor), four
    taps of Keys' kernel, indices clamped at the borders."""
    n = len(values)
    result = []
    for j in range(out):
        x = (j + 0.5) / scale - 0.5
        base = int(np.floor(x))
        taps = [base - 1, base, base + 1, base + 2]
        weights = keys_cubic(x - np.array(taps, float))
        result.append(sum(w * values[min(max(t, 0), n - 1)] for w, t in zip(weights, taps)))
    return np.stack(result)


@pytest.mark.parametrize("grid", [(9, 12), (16, 16), (33, 20)])
def test_scaled_positional_embeddings_are_dino_bicubic_by_scale_factor(grid):
    """``pos_embed="scale"``: bicubic resampling with scale factor ``(g + 0.1) / n`` per axis, as
    written out above (no torch resize in the reference)."""
    n, d = 7, 5
    pos = torch.randn(1, n * n, d, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    got = scaled_pos_embed(pos, grid).reshape(*grid, d).numpy()
    square = pos.reshape(n, n, d).numpy()
    rows = bicubic_by_scale(square, grid[0], (grid[0] + 0.1) / n)
    expected = np.moveaxis(bicubic_by_scale(np.moveaxis(rows, 1, 0), grid[1], (grid[1] + 0.1) / n), 0, 1)
    np.testing.assert_allclose(got, expected, atol=1e-5)  # computed in float32
    assert scaled_pos_embed(pos, (n, n)) is pos  # the training grid: unchanged


def test_the_scale_rule_changes_features_only_off_the_training_grid(vit):
    """At the model's own grid both rules give timm's features; at another grid they differ."""
    side = vit.model.patch_embed.grid_size[0] * 14  # 37 patches for DINOv2: 518 px
    own = torch.randn(1, 3, side, side, generator=torch.Generator().manual_seed(2))
    other = own[..., :126, :154]
    with torch.inference_mode():
        torch.testing.assert_close(vit(own, 14, pos_embed="scale")[0], vit(own, 14)[0], atol=1e-5, rtol=1e-5)
        a, b = vit(other, 14, pos_embed="scale")[0], vit(other, 14)[0]
    assert a.shape == b.shape and not torch.allclose(a, b, atol=1e-3)


def test_bundles_before_format_7_keep_the_stretch_rule_they_were_trained_with(tmp_path, two_textures):
    image, _, scribbles = two_textures
    config = FeatureConfig(kind="vit", weights="random", stride=7, shifts=(), flips=False, device="cpu",
                           precision="float32", resize="stretch", facet="key", layer=6, pos_embed="scale")
    seg = Segmenter(config).fit(image, scribbles)
    path = seg.save(tmp_path / "model.dinoseg")
    back = Segmenter.load(path)  # format 7 keeps every ViT choice, and predicts as the trained one
    assert (back.features.resize, back.features.facet, back.features.layer, back.features.pos_embed) == (
        "stretch", "key", 6, "scale")
    np.testing.assert_array_equal(back.segment(image), seg.segment(image))
    with zipfile.ZipFile(path) as zf:
        meta, raw = json.loads(zf.read("bundle.json")), zf.read("arrays.npz")
    meta["format_version"] = 6
    for key in ("facet", "layer", "pos_embed"):
        meta["feature_config"].pop(key)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("bundle.json", json.dumps(meta))
        zf.writestr("arrays.npz", raw)
    old = Segmenter.load(path)
    assert old.features.resize == "stretch-floor" and old.features.facet == "token" and old.features.layer == -1


@pytest.mark.parametrize("model", ["dino_vits16", "dinov2_vits14_reg", "dinov3_vits16"])
def test_every_family_gives_every_facet(model):
    """DINO v1, DINOv2 with registers and DINOv3 (rotary embeddings): each facet at two blocks has
    the token grid's shape and differs from the others; DINOv3 refuses DINO's positional rule."""
    vit = StridedViT(load_model(model, "random", "cpu"))
    x = torch.randn(1, 3, 64, 80, generator=torch.Generator().manual_seed(3))
    grid = vit.grid(64, 80, 8)
    out = {}
    with torch.inference_mode():
        for facet in ("token", "key", "query", "value"):
            for layer in (-1, 3):
                tokens, attention = vit(x, 8, facet=facet, layer=layer)
                assert tokens.shape == (1, *grid, vit.embed_dim) and torch.isfinite(tokens).all()
                assert attention.shape == (1, vit.num_heads, *grid)
                out[facet, layer] = tokens
    assert not torch.allclose(out["key", -1], out["value", -1], atol=1e-3)
    assert not torch.allclose(out["key", -1], out["key", 3], atol=1e-3)
    if vit.uses_rope:
        with pytest.raises(ValueError, match="rotary"):
            vit(x, 8, pos_embed="scale")
    else:
        with torch.inference_mode():
            assert vit(x, 8, pos_embed="scale")[0].shape == (1, *grid, vit.embed_dim)
