"""Transforms, their inverses and the upsampler's gather, with no model involved."""

import pytest
import torch

from napari_dinoseg.config import FeatureConfig, preset
from napari_dinoseg.features.tiling import axis_windows, tiles
from napari_dinoseg.features.upsample import Transform, make_transforms, token_index, upsample_views

PRESET_TRANSFORMS = [
    t for device in ("cpu", "cuda") for model in ("dinov2_vits14", "dino_vits8", "dinov3_vits16")
    for t in make_transforms(preset(model, device)["shifts"], preset(model, device)["flips"])
]


def test_transform_counts():
    assert len(make_transforms((1, 2), True)) == 68
    assert len(make_transforms((1, 2), False)) == 17
    assert len(make_transforms((), False)) == 1 and make_transforms()[0] == Transform()
    assert len(set(make_transforms((1, 2), True))) == 68


@pytest.mark.parametrize("t", sorted(set(PRESET_TRANSFORMS), key=repr), ids=repr)
def test_transform_then_inverse_is_identity(t):
    x = torch.randn(2, 3, 23, 31)  # odd, non-square: flips and rolls do not commute here
    torch.testing.assert_close(t.invert(t.apply(x)), x, rtol=0, atol=0)


def test_composite_inverse_is_taken_in_reverse_order():
    """Undoing flip-then-shift in forward order (unflip, then unshift) misplaces by twice the shift."""
    t = Transform("h", (0, 2))
    x = torch.arange(10.0).reshape(1, 10)
    wrong = torch.roll(torch.flip(t.apply(x), [-1]), -2, dims=-1)
    assert not torch.equal(wrong, x)
    assert torch.equal(t.invert(t.apply(x)), x)


@pytest.mark.parametrize("t", [Transform(), Transform("hv", (2, -1)), Transform("v", (-2, 2)), Transform("h", (1, 1))], ids=repr)
def test_gather_indices_equal_the_explicit_inverse(t):
    view = torch.randn(13, 17)
    rows, cols = t.source_rows_cols(13, 17)
    torch.testing.assert_close(view[rows][:, cols], t.invert(view), rtol=0, atol=0)


@pytest.mark.parametrize("resize", ["nearest", "stretch"])
@pytest.mark.parametrize("t", [Transform(), Transform("hv", (4, -7)), Transform("v", (-7, 7)), Transform("h", (0, 4))], ids=repr)
def test_gather_equals_plain_indexing(t, resize):
    """The run-by-run gather writes, then adds, exactly ``grid[ry][:, cx]`` (plain indexing)."""
    from napari_dinoseg.features.upsample import _gather_rows

    grid = torch.randn(7, 6, 5)  # (gh, gw, C): a 98 x 84 image at patch = stride = 14
    rows, cols = t.source_rows_cols(101, 90)
    ry, cx = token_index(101, 7, 14, 14, resize)[rows], token_index(90, 6, 14, 14, resize)[cols]
    reference = grid[ry][:, cx]
    out = torch.full((101, 90, 5), float("nan"))
    _gather_rows(grid, ry, cx, out, accumulate=False)
    torch.testing.assert_close(out, reference, rtol=0, atol=0)
    _gather_rows(grid, ry, cx, out, accumulate=True)
    torch.testing.assert_close(out, reference + reference, rtol=0, atol=0)
    strided = grid.permute(1, 0, 2).contiguous().permute(1, 0, 2)  # as the attention maps come: not contiguous
    _gather_rows(strided, ry, cx, out, accumulate=False)
    torch.testing.assert_close(out, reference, rtol=0, atol=0)


def reference_upsample(run, image, transforms, patch, stride):
    """The upsampler as written in the design: for every view, resize its token grid to the image
    (nearest receptive-field centre), undo the transform, and average. Plain, slow indexing."""
    total = 0
    for t in transforms:
        tokens, attention = run(t.apply(image)[None])
        grid = torch.cat([tokens[0], attention[0].permute(1, 2, 0)], -1)  # (gh, gw, D + heads)
        iy = token_index(image.shape[1], grid.shape[0], patch, stride)
        ix = token_index(image.shape[2], grid.shape[1], patch, stride)
        total = total + t.invert(grid[iy][:, ix].permute(2, 0, 1)).permute(1, 2, 0)
    return total / len(transforms)


@pytest.mark.parametrize("stride, flips, classes", [
    (14, False, (17, 13)),  # the CPU preset: rows and columns grouped into classes, summed per class
    (7, True, (61, 50)),  # with flips, too many classes: summed per pixel, into the output
])
@pytest.mark.parametrize("into_out", [False, True])
def test_upsampler_equals_the_reference_for_a_patch_model(stride, flips, classes, into_out):
    """A model with real 14 px patches (each pixel between several tokens) and the CPU preset's
    shifts: the per-class sums spread to the pixels equal resize-then-invert of every view, bit
    for bit (the same additions in the same order), written into given outputs or new ones."""
    from napari_dinoseg.features.upsample import pixel_classes

    weight = torch.randn(5, 3, 14, 14)

    def patch_model(views):  # one view at a time: batched kernels may round differently
        tokens = [torch.nn.functional.conv2d(v[None], weight, stride=stride) for v in views]  # (1, 5, gh, gw)
        attention = [t[:, :2].softmax(1) for t in tokens]
        return torch.cat(tokens).permute(0, 2, 3, 1), torch.cat(attention)  # (B, gh, gw, 5), (B, 2, gh, gw)

    image = torch.randn(3, 61, 50)
    transforms = make_transforms((4, 7), flips)
    grid = tuple(1 + (n - 14) // stride for n in image.shape[1:])
    (rows, _), (cols, _) = pixel_classes(transforms, image.shape[1:], grid, 14, stride)
    assert (rows.shape[1], cols.shape[1]) == classes
    out = (torch.full((61, 50, 5), float("nan")), torch.full((61, 50, 2), float("nan"))) if into_out else None
    feats, attn = upsample_views(patch_model, image, transforms, patch=14, stride=stride, chunk=5, out=out)
    expected = reference_upsample(patch_model, image, transforms, 14, stride)
    torch.testing.assert_close(torch.cat([feats, attn], -1), expected, rtol=0, atol=0)
    if into_out:
        assert feats is out[0] and attn is out[1]


def test_token_index_nearest_receptive_field_centre_and_stretch():
    # patch 14, stride 7 on 42 px: tokens at 0, 7, 14, 21, 28 with centres 6.5, 13.5, ...
    idx = token_index(42, 5, 14, 7, "nearest")
    assert idx[:10].tolist() == [0] * 10 and idx[11:17].tolist() == [1] * 6 and idx[-1] == 4
    assert token_index(42, 3, 14, 14, "stretch").tolist() == [0] * 14 + [1] * 14 + [2] * 14
    with pytest.raises(ValueError, match="resize"):
        token_index(10, 2, 4, 4, "bilinear")


def test_upsampler_averages_inverse_transformed_views_of_a_pixel_exact_model():
    """With a 'model' that returns the pixels themselves (patch = stride = 1), the average of
    the inverse-transformed views of an image is the image: every view is put back in place."""

    def identity_model(views):
        return views.permute(0, 2, 3, 1), views[:, :2]  # tokens (B, H, W, 3); attention (B, 2, H, W)

    image = torch.randn(3, 12, 9)
    transforms = make_transforms((1, 2), True)
    feats, attn = upsample_views(identity_model, image, transforms, patch=1, stride=1, chunk=7)
    torch.testing.assert_close(feats, image.permute(1, 2, 0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(attn, image[:2].permute(1, 2, 0), rtol=1e-5, atol=1e-6)


def test_progress_and_cancellation_per_chunk():
    calls = []

    def step(done, total):
        calls.append((done, total))
        if done >= 10:
            raise KeyboardInterrupt  # any exception stops the loop

    model = lambda v: (v.permute(0, 2, 3, 1), v[:, :1])  # noqa: E731
    with pytest.raises(KeyboardInterrupt):
        upsample_views(model, torch.randn(3, 8, 8), make_transforms((1, 2), True), 1, 1, chunk=5, step=step)
    assert calls == [(5, 68), (10, 68)]


@pytest.mark.parametrize("n, tile, margin, align", [(1000, 518, 40, 14), (2072, 518, 39, 4), (600, 518, 30, 7), (519, 518, 30, 1)])
def test_tile_cores_partition_the_axis_and_stay_inside_windows(n, tile, margin, align):
    windows = axis_windows(n, tile, margin, align)
    assert windows[0][2] == 0 and windows[-1][3] == n
    for (start, stop, core_start, core_stop), nxt in zip(windows, windows[1:] + [None]):
        assert start % align == 0 and stop - start < tile + align and start <= core_start < core_stop <= stop
        if nxt is not None:
            assert nxt[2] == core_stop  # contiguous cores
            assert stop - core_stop >= margin and nxt[2] - nxt[0] >= margin
    assert axis_windows(300, 518, 40, 14) == [(0, 300, 0, 300)]
    assert len(tiles((1000, 600), 518, 40, 14)) == len(axis_windows(1000, 518, 40, 14)) * len(axis_windows(600, 518, 40, 14))


def test_presets():
    cpu = FeatureConfig(kind="vit").resolved("cpu")
    assert (cpu.stride, cpu.shifts, cpu.flips) == (14, (4, 7), False)
    gpu = FeatureConfig(kind="vit").resolved("cuda")
    assert (gpu.stride, gpu.shifts, gpu.flips) == (4, (1, 2), True)
    own = FeatureConfig(kind="vit", stride=7, shifts=(), flips=True).resolved("cpu")
    assert (own.stride, own.shifts, own.flips) == (7, (), True)


@pytest.mark.parametrize("kwargs, match", [
    ({"model": "dinov9"}, "unknown model 'dinov9'; choose one of"),
    ({"stride": 15}, r"stride must be an integer in 1..14"),
    ({"shifts": (0,)}, "shifts"),
    ({"tile": 20}, "tile"),
    ({"resize": "bilinear"}, "resize"),
])
def test_vit_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FeatureConfig(kind="vit", **kwargs)


@pytest.mark.parametrize("flips", [False, True])
def test_gathering_at_pixels_equals_the_upsampled_features_there(flips):
    """gather_views at N pixels gives the rows of upsample_views' output at those pixels (the
    same tokens averaged in the same order), without the (H, W, D) output."""
    from napari_dinoseg.features.upsample import gather_views

    weight = torch.randn(5, 3, 14, 14)

    def patch_model(views):
        tokens = torch.nn.functional.conv2d(views, weight, stride=7)
        return tokens.permute(0, 2, 3, 1), tokens[:, :2].softmax(1)

    image = torch.randn(3, 61, 50)
    transforms = make_transforms((4, 7), flips)
    feats, attn = upsample_views(patch_model, image, transforms, patch=14, stride=7, chunk=5)
    rows, cols = torch.randint(0, 61, (300,)), torch.randint(0, 50, (300,))
    steps = []
    f, a = gather_views(patch_model, image, transforms, 14, 7, chunk=5, step=lambda d, t: steps.append(d),
                        pixels=(rows, cols))
    assert f.shape == (300, 5) and a.shape == (300, 2) and steps[-1] == len(transforms)
    torch.testing.assert_close(f, feats[rows, cols], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(a, attn[rows, cols], rtol=1e-6, atol=1e-6)
