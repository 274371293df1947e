"""ViT features on CPU with random weights: mechanics only, never quality."""

import dataclasses

import numpy as np
import pytest
import torch

from napari_dinoseg import Cancelled, FeatureConfig, featurise
from napari_dinoseg.features import backbones
from napari_dinoseg.features import vit as vit_module
from napari_dinoseg.features import vit_plan
from napari_dinoseg.features.backbones import StridedViT, load_model

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def vit_cfg(**kw):
    # float32 whatever the CPU ("auto" is bfloat16 on CPUs with native bfloat16): the tolerances below are float32's
    base = dict(kind="vit", weights="random", stride=14, shifts=(), flips=False, device="cpu", precision="float32")
    base.update(kw)
    return FeatureConfig(**base)


@pytest.fixture(scope="module")
def vits14():
    return StridedViT(load_model("dinov2_vits14", "random"))


@pytest.mark.parametrize("stride", [14, 7, 4])
@pytest.mark.parametrize("hw", [(70, 98), (99, 56)])
def test_token_grid_for_strides_and_non_square_images(vits14, stride, hw):
    x = torch.randn(1, 3, *hw)
    with torch.inference_mode():
        tokens, attention = vits14(x, stride)
    expected = (1 + (hw[0] - 14) // stride, 1 + (hw[1] - 14) // stride)
    assert vits14.grid(*hw, stride) == expected
    assert tokens.shape == (1, *expected, 384) and attention.shape == (1, 6, *expected)


@pytest.mark.parametrize("name", ["dinov2_vits14", "dinov2_vits14_reg", "dinov3_vits16"])
def test_cls_attention_sums_to_one_over_patch_tokens_per_head(name):
    vit = StridedViT(load_model(name, "random"))
    with torch.inference_mode():
        _, attention = vit(torch.randn(2, 3, 64, 80), 8)
    assert attention.shape[1] == vit.num_heads == load_model(name, "random").blocks[-1].attn.num_heads
    torch.testing.assert_close(attention.sum(dim=(-2, -1)), torch.ones(2, vit.num_heads))
    assert (attention >= 0).all()


def test_stride_equal_to_patch_reproduces_timm(vits14):
    x = torch.randn(1, 3, 56, 84)
    with torch.inference_mode():
        tokens, _ = vits14(x, 14)
        ref = vits14.model.forward_features(x)[:, vits14.num_prefix:]
    torch.testing.assert_close(tokens.reshape(1, -1, 384), ref)


def official_dinov2_state(model, registers: bool) -> dict:
    """The key layout of the official DINOv2 release, made from a timm model's weights."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["mask_token"] = torch.zeros(1, state["cls_token"].shape[-1])
    if registers:  # official: register_tokens, and pos_embed with a CLS entry
        state["register_tokens"] = state.pop("reg_token")
        cls_pos = torch.randn(1, 1, state["cls_token"].shape[-1]) * 0.02
        state["cls_token"] = state["cls_token"] - cls_pos
        state["pos_embed"] = torch.cat([cls_pos, state["pos_embed"]], dim=1)
    return state


@pytest.mark.parametrize("name, registers", [("dinov2_vits14", False), ("dinov2_vits14_reg", True)])
def test_official_dinov2_checkpoint_loads_with_identical_outputs(tmp_path, name, registers):
    import timm

    torch.manual_seed(1)
    source = timm.create_model(backbones.MODELS[name].timm_name, pretrained=False, dynamic_img_size=True,
                               num_classes=0).eval()
    path = tmp_path / f"{name}_pretrain.pth"
    torch.save(official_dinov2_state(source, registers), path)
    loaded = load_model(name, str(path))
    x = torch.randn(1, 3, 84, 70)
    with torch.inference_mode():
        torch.testing.assert_close(StridedViT(loaded)(x, 7)[0], StridedViT(source)(x, 7)[0], rtol=1e-5, atol=1e-5)


def test_dino_v1_training_checkpoint_and_safetensors(tmp_path):
    import timm
    from safetensors.torch import save_file

    source = timm.create_model("vit_small_patch16_224.dino", pretrained=False, dynamic_img_size=True,
                               num_classes=0).eval()
    state = source.state_dict()
    torch.save({"teacher": {f"module.backbone.{k}": v for k, v in state.items()}, "epoch": 100}, tmp_path / "ckpt.pth")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "w.safetensors"))
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        ref = StridedViT(source)(x, 8)[0]
        for f in ("ckpt.pth", "w.safetensors"):
            torch.testing.assert_close(StridedViT(load_model("dino_vits16", str(tmp_path / f)))(x, 8)[0], ref)


def test_weights_folder_is_searched_by_release_file_name(tmp_path, monkeypatch):
    import timm

    source = timm.create_model("vit_small_patch8_224.dino", pretrained=False, dynamic_img_size=True, num_classes=0)
    torch.save(source.state_dict(), tmp_path / "dino_deitsmall8_pretrain.pth")
    monkeypatch.setenv(backbones.WEIGHTS_ENV, str(tmp_path))
    loaded = load_model("dino_vits8", None)
    torch.testing.assert_close(loaded.pos_embed, source.pos_embed)


def test_missing_weights_offline_names_the_model_and_the_folder(tmp_path, monkeypatch):
    monkeypatch.setenv(backbones.WEIGHTS_ENV, str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ValueError) as err:
        load_model("dinov2_vitb14", None)
    message = str(err.value)
    assert "'dinov2_vitb14'" in message and "dinov2_vitb14_pretrain.pth" in message
    assert str(tmp_path) in message and backbones.WEIGHTS_ENV in message


def test_bad_weight_files(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_model("dinov2_vits14", str(tmp_path / "nope.pth"))
    (tmp_path / "corrupt.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="could not read weights file"):
        load_model("dinov2_vits14", str(tmp_path / "corrupt.pth"))
    torch.save(load_model("dino_vits16", "random").state_dict(), tmp_path / "other.pth")
    with pytest.raises(ValueError, match="does not fit this model"):
        load_model("dinov2_vitb14", str(tmp_path / "other.pth"))


def test_featurise_shapes_channels_and_attention():
    img = (np.random.default_rng(0).random((60, 76)) * 255).astype(np.uint8)
    stack = featurise(img, vit_cfg(stride=7, shifts=(2,)))
    assert stack.data.shape == (60, 76, 384) and stack.data.dtype == np.float32
    assert stack.attention.shape == (60, 76, 6) and np.isfinite(stack.data).all()
    assert stack.config.shifts == (2,) and stack.channel_names[0] == "vit_0"
    hybrid = featurise(img, vit_cfg(kind="hybrid", sigmas=(1, 2)))
    assert hybrid.n_features == 26 + 384 and hybrid.channel_names[0] == "intensity"
    np.testing.assert_array_equal(hybrid.data[..., 26:], featurise(img, vit_cfg()).data)
    two = featurise(np.stack([img, img[::-1]], -1), vit_cfg())
    assert two.n_features == 2 * 384 and two.channel_names[384] == "c1:vit_0"
    rgb = featurise(np.stack([img] * 3, -1), vit_cfg())
    assert rgb.n_features == 384


def test_flip_equivariance_with_the_full_flip_group():
    img = np.random.default_rng(3).random((56, 70)).astype(np.float32)
    cfg = vit_cfg(stride=7, shifts=(2,), flips=True)
    base = featurise(img, cfg)
    for axis in (1, 0):
        flipped = featurise(np.flip(img, axis), cfg)
        expected = np.flip(base.data, axis)
        rel = np.linalg.norm(flipped.data - expected) / np.linalg.norm(expected)
        assert rel < 1e-3, (axis, rel)
        np.testing.assert_allclose(flipped.attention, np.flip(base.attention, axis), atol=1e-5)


def boundary_error(cfg, edge: int) -> float:
    """Distance from the true edge of a two-halves image to where the features cross halfway."""
    img = np.zeros((84, 112), np.float32)
    img[:, edge:] = 1.0
    img += np.random.default_rng(0).normal(0, 0.02, img.shape).astype(np.float32)
    f = featurise(img, cfg).data[20:64].mean(axis=0)  # (W, D), averaged over rows
    left, right = f[5:15].mean(0), f[-15:-5].mean(0)
    t = ((f - left) @ (right - left)) / ((right - left) @ (right - left))  # 0 left .. 1 right
    crossing = np.argmax(t > 0.5)
    x0, x1 = crossing - 1, crossing  # interpolate the 0.5 crossing
    return abs(x0 + (0.5 - t[x0]) / (t[x1] - t[x0]) + 0.5 - edge)


def test_shift_averaging_places_a_boundary_closer_than_a_single_view():
    edge = 53  # 53 = 3 * 14 + 11: far from the single view's token borders
    single = boundary_error(vit_cfg(stride=14, shifts=()), edge)
    shifted = boundary_error(vit_cfg(stride=14, shifts=(4, 7)), edge)
    assert shifted < 4.0
    assert shifted < single - 1.0


@pytest.mark.parametrize("stride, shifts, tile", [
    (7, (2,), 112),  # many small tiles
    (14, (7,), 224),  # the CPU preset's margin (stride 14, shifts up to 7) at the chooser's smallest tile
])
def test_tiled_equals_untiled_away_from_the_image_border(local_weights, stride, shifts, tile):
    """Equal up to float rounding (1e-4: matrix products over a different number of tokens round
    differently, by about 1e-6 here; a token misplaced by the stitching moves features by O(1))."""
    img = np.random.default_rng(5).random((300, 260)).astype(np.float32)
    cfg = dict(kind="vit", weights=local_weights, stride=stride, shifts=shifts, flips=False, device="cpu",
               precision="float32")
    whole = featurise(img, FeatureConfig(tile=1036, **cfg))
    assert len(vit_module.choose_tiles(FeatureConfig(tile=tile, **cfg), img.shape)) > 1
    tiled = featurise(img, FeatureConfig(tile=tile, **cfg))
    border = vit_module.tile_margin(whole.config)  # where rolls wrap around the image: a patch, a shift, a stride
    inner = (slice(border, -border), slice(border, -border))
    np.testing.assert_allclose(tiled.data[inner], whole.data[inner], rtol=1e-4, atol=1e-4)


def test_tile_chooser_keeps_the_whole_image_up_to_the_native_size_then_cost_grows_linearly():
    cfg = FeatureConfig(kind="vit", weights="random", device="cpu").resolved("cpu")  # DINOv2-S, stride 14, 17 views
    for n in (512, 518, 600):
        assert len(vit_module.choose_tiles(cfg, (n, n))) == 1  # tiles would save < 10 %: the context wins
    windows = vit_module.choose_tiles(cfg, (1024, 1024))
    sides = {w[1] - w[0] for pair in windows for w in pair}
    assert len(windows) == 9 and min(sides) >= 322 and max(sides) < 392 + cfg.stride, sides
    flops = {n: vit_module.total_flops(cfg, (n, n)) for n in (512, 1024, 2048, 4096)}
    whole = vit_module.total_flops(dataclasses.replace(cfg, tile=1024), (1024, 1024))
    assert flops[1024] < 0.6 * whole  # the whole 1024^2 image: 8.7x a 512^2 one
    assert flops[1024] / flops[512] < 4.8 and flops[2048] / flops[1024] < 4.5 and flops[4096] / flops[2048] < 4.1
    assert len(vit_module.choose_tiles(dataclasses.replace(cfg, tile=1036), (1024, 1024))) == 1  # as asked
    gpu = FeatureConfig(kind="vit", weights="random").resolved("cuda")
    assert all(w[1] - w[0] >= 16 * 14 for pair in vit_module.choose_tiles(gpu, (2072, 2072)) for w in pair)


def test_precision_is_a_stored_choice():
    cfg = vit_cfg(precision="bfloat16")
    assert cfg.to_dict()["precision"] == "bfloat16" and FeatureConfig.from_dict(cfg.to_dict()) == cfg
    assert FeatureConfig().precision == "auto"
    legacy = {k: v for k, v in FeatureConfig().to_dict().items() if k != "precision"}  # bundles from before
    assert FeatureConfig.from_dict(legacy).precision == "auto"
    with pytest.raises(ValueError, match="precision='float16' is not valid"):
        vit_cfg(precision="float16")


def test_auto_precision_is_bfloat16_only_where_native(monkeypatch):
    cpu, cuda, auto = torch.device("cpu"), torch.device("cuda"), vit_cfg(precision="auto")
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx2": True, "avx512_bf16": False}, raising=False)
    assert not vit_module.native_bf16_cpu() and vit_module.compute_dtype(auto, cpu) == torch.float32
    assert vit_module.compute_dtype(vit_cfg(precision="bfloat16"), cpu) == torch.bfloat16
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx2": True, "amx_bf16": True}, raising=False)
    assert vit_module.compute_dtype(auto, cpu) == torch.bfloat16
    assert vit_module.compute_dtype(vit_cfg(precision="float32"), cpu) == torch.float32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    assert vit_module.compute_dtype(auto, cuda) == torch.float16
    assert vit_module.compute_dtype(auto, torch.device("mps")) == torch.float32
    monkeypatch.delattr(torch.cpu, "get_capabilities", raising=False)
    assert not vit_module.native_bf16_cpu()  # older torch cannot tell: float32


@pytest.fixture(scope="module")
def active_weights(tmp_path_factory):
    """Random DINOv2-S/14 weights with LayerScale 1: timm's 1e-5 all but silences every block of a
    random model, which would hide the blocks' rounding from any comparison of precisions."""
    state = {k: v.clone() for k, v in load_model("dinov2_vits14", "random").state_dict().items()}
    for k in state:
        if k.endswith((".ls1.gamma", ".ls2.gamma")):
            state[k].fill_(1.0)
    path = tmp_path_factory.mktemp("weights") / "active.pth"
    torch.save(state, path)
    return str(path)


def test_bfloat16_features_correlate_with_float32(active_weights):
    """bfloat16 keeps 8 significant bits (a relative rounding of 2^-9) and the products accumulate
    in float32, so 12 active blocks move features by tenths of a per cent (0.3 % of their norm in
    ``benchmarks/results/vit_precision_cpu.md``): a channel's correlation with float32 is about
    1 - error^2 / 2, measured here 0.99984 at the least and 0.999995 in the median. 0.998 / 0.9995 allow errors about 3x larger (other CPUs' kernels sum
    in other orders); a float16 overflow, a lost channel or misplaced tokens fall far below."""
    yy, xx = np.mgrid[:84, :98]
    img = (np.sin(xx / 6.0) * np.cos(yy / 9.0) + (xx > 50)).astype(np.float32)  # texture and an edge
    a, b = (featurise(img, vit_cfg(weights=active_weights, stride=7, shifts=(2,), precision=p))
            for p in ("float32", "bfloat16"))
    assert not np.array_equal(a.data, b.data), "bfloat16 autocast took effect"
    x, y = a.data.reshape(-1, 384), b.data.reshape(-1, 384)
    x, y = x - x.mean(0), y - y.mean(0)
    corr = (x * y).sum(0) / np.sqrt((x * x).sum(0) * (y * y).sum(0))
    assert corr.min() > 0.998 and np.median(corr) > 0.9995, (corr.min(), np.median(corr))
    np.testing.assert_allclose(b.attention, a.attention, atol=0.05 * a.attention.max())


def test_image_smaller_than_a_patch_is_refused():
    with pytest.raises(ValueError, match="smaller than one 14x14 patch"):
        featurise(np.zeros((12, 40), np.uint8), vit_cfg())


def test_progress_counts_views_and_cancels():
    seen = []

    def progress(done, total, message):
        seen.append((done, total))
        if done >= 9:
            raise Cancelled()

    with pytest.raises(Cancelled):
        featurise(np.zeros((40, 40), np.uint8), vit_cfg(shifts=(1, 2)), progress)
    assert seen[0] == (0, 17) and seen[-1][0] >= 9


@pytest.fixture
def slow_cpu(monkeypatch):
    """A CPU whose matmul throughput reads 1 MFLOP/s: every view is estimated to take longer
    than ``BATCH_SECONDS``, so each forward pass is one view."""
    monkeypatch.setitem(vit_plan._THROUGHPUT, ("cpu", "float32"), 1e6)


@pytest.fixture
def events(monkeypatch):
    """The log of forward passes ``("forward", views)``, in order with whatever tests append."""
    log = []
    forward = StridedViT.forward

    def counted(self, x, stride, between_blocks=None, **options):
        log.append(("forward", x.shape[0]))
        result = forward(self, x, stride, between_blocks, **options)
        log.append(("finished", x.shape[0]))
        return result

    monkeypatch.setattr(StridedViT, "forward", counted)
    return log


def test_progress_before_the_first_forward_pass_and_after_every_view(slow_cpu, events):
    def progress(done, total, message):
        events.append(("progress", done, total))

    featurise(np.zeros((56, 70), np.uint8), vit_cfg(shifts=(1, 2)), progress)
    forwards = [e for e in events if e[0] == "forward"]
    assert events[0] == ("progress", 0, 17) and forwards == [("forward", 1)] * 17
    assert all(a[0] != "forward" or b[0] == "progress" for a, b in zip(events, events[1:]))  # none back to back
    values = [e[1] for e in events if e[0] == "progress"]
    assert sorted(set(values)) == list(range(18)) and values == sorted(values) and events[-1] == ("progress", 17, 17)
    blocks = len(StridedViT(load_model("dinov2_vits14", "random")).model.blocks)
    assert len(values) >= 17 * (blocks - 1), "progress (and a chance to cancel) between transformer blocks"


def test_a_cancel_mid_view_stops_within_one_transformer_block(slow_cpu, events):
    """A whole-image view can take many seconds on a CPU: the cancel is honoured between blocks."""
    calls = []

    def progress(done, total, message):
        calls.append(done)
        if any(e[0] == "forward" for e in events) and len(calls) > 3:  # the user clicks during the first view
            raise Cancelled()

    with pytest.raises(Cancelled):
        featurise(np.zeros((56, 70), np.uint8), vit_cfg(shifts=(1, 2)), progress)
    assert [e[0] for e in events] == ["forward"], "the first view was stopped before it finished"


@pytest.mark.parametrize("kind", ["vit", "hybrid"])
def test_cancel_takes_effect_after_the_view_in_progress(slow_cpu, events, kind):
    requested_at = []

    def progress(done, total, message):  # the user clicks Cancel once two views are done
        views = sum(e[1] for e in events if e[0] == "forward")
        if views >= 2:
            requested_at.append(views)
            raise Cancelled()

    with pytest.raises(Cancelled):
        featurise(np.zeros((56, 70), np.uint8), vit_cfg(kind=kind, shifts=(1, 2), sigmas=(1.0,)), progress)
    computed = sum(e[1] for e in events if e[0] == "forward")
    assert requested_at[0] == 2 and computed == 2


def test_views_per_batch_bounded_by_estimated_time(monkeypatch):
    cfg, cpu = vit_cfg(shifts=(1, 2)), torch.device("cpu")
    per_view = vit_module.view_flops(cfg, (518, 518))

    def batch(shape, seconds_per_view):
        throughput = per_view / (seconds_per_view * vit_module.EFFICIENCY)
        monkeypatch.setitem(vit_plan._THROUGHPUT, ("cpu", "float32"), throughput)
        return vit_module.views_per_batch(cfg, shape, cpu)

    assert batch((518, 518), 0.3 * vit_module.BATCH_SECONDS) == 3
    assert batch((518, 518), 5 * vit_module.BATCH_SECONDS) == 1
    assert batch((56, 70), 1e-9) == 17  # fast: every view of the config (1 + 8 per shift) in one pass
    cfg = vit_cfg(shifts=(1, 2, 3, 4), flips=True)  # 132 views
    assert batch((56, 70), 1e-9) == vit_module.MAX_VIEWS_PER_BATCH  # as many as allowed


@pytest.mark.parametrize("kind, channels, tile", [
    ("vit", 1, None),  # one window: the projection added into the output
    ("hybrid", 2, 112),  # two channel groups, whose projections add up, in several tiles
])
def test_projected_features_equal_the_projection_of_the_features(kind, channels, tile):
    """The ViT channels projected on every view's token grid, then upsampled, equal the
    projection of the upsampled channels (the average over views is linear); classical
    channels are the very same."""
    from napari_dinoseg.features.featurise import featurise_projected

    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:126, :140]
    img = np.stack([np.sin(xx / (4.0 + c)) * np.cos(yy / 7.0) + (xx > 60) for c in range(channels)], -1)
    img = (img + 0.1 * rng.standard_normal(img.shape)).astype(np.float32).squeeze()
    cfg = vit_cfg(kind=kind, stride=14, shifts=(7,), tile=tile, sigmas=(1.0, 2.0), membrane=False)
    assert (len(vit_module.choose_tiles(cfg.resolved("cpu"), (126, 140))) > 1) == (tile is not None)
    full = featurise(img, cfg)
    vit = [i for i, name in enumerate(full.channel_names) if "vit_" in name]
    weights = rng.standard_normal((3, len(vit))).astype(np.float32) / np.sqrt(len(vit))
    bias = np.array([0.5, -1.0, 2.0], np.float32)
    projected = featurise_projected(img, cfg, (weights, bias))
    n_classical = full.n_features - len(vit)
    assert projected.data.shape == (126, 140, n_classical + 3)
    assert projected.channel_names == full.channel_names[:n_classical] + ("projected_0", "projected_1", "projected_2")
    np.testing.assert_array_equal(projected.data[..., :n_classical], full.data[..., :n_classical])
    expected = full.data[..., vit] @ weights.T + bias
    np.testing.assert_allclose(projected.data[..., n_classical:], expected, rtol=0, atol=1e-4 * np.abs(expected).max())
    np.testing.assert_allclose(projected.attention, full.attention, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"weights \(P, (384|768)\)"):
        featurise_projected(img, cfg, (weights[:, :10], bias))
    with pytest.raises(ValueError, match="needs ViT features"):
        featurise_projected(img, FeatureConfig(), (weights, bias))


@pytest.mark.parametrize("kind, channels, tile", [("vit", 1, None), ("hybrid", 2, 112)])
def test_features_at_pixels_equal_the_full_features_there(kind, channels, tile):
    """featurise_pixels (training's path without a cache) gathers the ViT channels at the asked
    pixels only, tile by tile (tiles without any are skipped), and equals the full features there."""
    from napari_dinoseg.features.featurise import featurise_pixels

    rng = np.random.default_rng(4)
    img = rng.random((126, 140, channels)).astype(np.float32).squeeze()
    cfg = vit_cfg(kind=kind, stride=14, shifts=(7,), tile=tile, sigmas=(1.0, 2.0), membrane=False)
    full = featurise(img, cfg)
    rows, cols = rng.integers(0, 126, 200), rng.integers(0, 140, 200)
    rows[:50], cols[:50] = rng.integers(0, 40, 50), rng.integers(0, 40, 50)  # crowd one corner
    data, names = featurise_pixels(img, cfg, (rows, cols))
    assert names == full.channel_names and data.shape == (200, full.n_features)
    np.testing.assert_allclose(data, full.data[rows, cols], rtol=1e-5, atol=1e-5)
    corner, _ = featurise_pixels(img, cfg, (rows[:50], cols[:50]))  # other tiles: no forward pass
    np.testing.assert_allclose(corner, full.data[rows[:50], cols[:50]], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="inside the 126x140 image"):
        featurise_pixels(img, cfg, (np.array([126]), np.array([0])))
