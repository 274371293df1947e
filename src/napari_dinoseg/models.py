"""The table of ViT backbones: friendly names, timm names, geometry, released weight files.

Plain data with no imports from the package, so that :mod:`napari_dinoseg.config` can validate
a model name, stride or layer without reaching up into ``features/`` (and without torch).
:mod:`napari_dinoseg.features.registry` re-exports it beside the weight look-up.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelSpec:
    """A backbone: timm name, patch size, width, heads, and the file names of its released weights."""

    timm_name: str
    patch_size: int
    embed_dim: int
    num_heads: int
    depth: int
    files: tuple[str, ...]


#: size letter -> (embed_dim, num_heads, depth)
_WIDTH = {"s": (384, 6, 12), "b": (768, 12, 12), "l": (1024, 16, 24), "g": (1536, 24, 40)}


def _dinov2(size: str, long: str, reg: bool) -> ModelSpec:
    reg_part = "_reg4" if reg else ""
    return ModelSpec(
        f"vit_{long}_patch14{reg_part}_dinov2.lvd142m", 14, *_WIDTH[size],
        (f"dinov2_vit{size}14{reg_part}_pretrain.pth", f"vit_{long}_patch14{reg_part}_dinov2.lvd142m.safetensors"),
    )


#: Friendly name -> model. DINOv2 (official release file names), DINO v1, DINOv3.
MODELS: dict[str, ModelSpec] = {
    **{f"dinov2_vit{s}14": _dinov2(s, long, False) for s, long in
       (("s", "small"), ("b", "base"), ("l", "large"), ("g", "giant"))},
    **{f"dinov2_vit{s}14_reg": _dinov2(s, long, True) for s, long in
       (("s", "small"), ("b", "base"), ("l", "large"), ("g", "giant"))},
    "dino_vits8": ModelSpec("vit_small_patch8_224.dino", 8, *_WIDTH["s"], ("dino_deitsmall8_pretrain.pth",)),
    "dino_vits16": ModelSpec("vit_small_patch16_224.dino", 16, *_WIDTH["s"], ("dino_deitsmall16_pretrain.pth",)),
    "dino_vitb8": ModelSpec("vit_base_patch8_224.dino", 8, *_WIDTH["b"], ("dino_vitbase8_pretrain.pth",)),
    "dino_vitb16": ModelSpec("vit_base_patch16_224.dino", 16, *_WIDTH["b"], ("dino_vitbase16_pretrain.pth",)),
    "dinov3_vits16": ModelSpec("vit_small_patch16_dinov3.lvd1689m", 16, *_WIDTH["s"],
                               ("dinov3_vits16_pretrain_lvd1689m.pth", "vit_small_patch16_dinov3.lvd1689m.safetensors")),
    "dinov3_vitb16": ModelSpec("vit_base_patch16_dinov3.lvd1689m", 16, *_WIDTH["b"],
                               ("dinov3_vitb16_pretrain_lvd1689m.pth", "vit_base_patch16_dinov3.lvd1689m.safetensors")),
}


def model_spec(name: str) -> ModelSpec:
    """The table's entry of ``name``; a ``ValueError`` listing the valid names otherwise."""
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(sorted(MODELS))}") from None
