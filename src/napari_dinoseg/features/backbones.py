"""ViT backbones: a registry of friendly names, weight loading, strided patch embedding, CLS attention.

Models are built by timm and loaded on demand (never at import). :class:`StridedViT`
wraps a timm model without changing it: it runs the patch-embedding convolution with a
stride below the patch size (overlapping patches), resamples the positional embeddings
(bicubic, through timm) to the new token grid ``1 + (H - p) // s`` per side, runs the
blocks with timm's fused attention, and computes the true softmax attention of the CLS
token over the patch tokens in the last block from that block's own q and k.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F

from .registry import MODELS, WEIGHTS_ENV, ModelSpec, find_weights, model_spec, weights_dir

__all__ = ["MODELS", "WEIGHTS_ENV", "ModelSpec", "StridedViT", "find_weights", "load_checkpoint", "load_model", "model_spec",
           "weights_dir"]

_LOADED: dict[tuple, torch.nn.Module] = {}
_MAX_LOADED = 2


#: Seed of the ``weights="random"`` initialisation.
RANDOM_WEIGHTS_SEED = 0


def load_model(name: str, weights: Optional[str] = None, device: Union[str, torch.device] = "cpu") -> torch.nn.Module:
    """Build a backbone by friendly name and load its weights (cached: two models at most).

    Parameters
    ----------
    name
        A key of :data:`MODELS`, e.g. ``"dinov2_vits14"``.
    weights
        ``None``: a file from :func:`weights_dir` named as released (e.g.
        ``dinov2_vits14_pretrain.pth``), else timm's pretrained weights from the Hugging Face
        cache (downloaded when online). A path: a checkpoint file, the official DINOv2 /
        DINO ``.pth`` or a timm / Hugging Face ``.safetensors``. ``"random"``: random
        initialisation (tests, speed benchmarks).
    device
        Where the model lives.

    Returns
    -------
    The timm model in eval mode, with ``dynamic_img_size`` enabled.
    """
    spec = model_spec(name)
    key = (name, weights, str(device))
    if key in _LOADED:
        return _LOADED[key]
    import timm

    source = find_weights(name, weights)  # fails within about a second when there are none
    with torch.random.fork_rng(devices=[]):
        # "random" weights are the same in every process (seeded), so a bundle trained on them
        # predicts elsewhere (batch workers, the CLI) from the features it was trained on
        torch.manual_seed(RANDOM_WEIGHTS_SEED)
        model = timm.create_model(spec.timm_name, pretrained=False, dynamic_img_size=True, num_classes=0)
    if source == "download":
        model = _from_hub(name, spec)
    elif source != "random":
        load_checkpoint(model, source)
    model = model.eval().requires_grad_(False).to(device)
    if len(_LOADED) >= _MAX_LOADED:
        _LOADED.pop(next(iter(_LOADED)))
    _LOADED[key] = model
    return model


def _from_hub(name: str, spec: ModelSpec) -> torch.nn.Module:
    import timm

    try:
        return timm.create_model(spec.timm_name, pretrained=True, dynamic_img_size=True, num_classes=0)
    except Exception as err:  # offline, no cache, hub errors: all end the same way for the user
        raise ValueError(
            f"no weights for model {name!r} (timm {spec.timm_name!r}): they are not in the Hugging Face cache "
            f"and could not be downloaded ({type(err).__name__}). Put the released file "
            f"({' or '.join(spec.files)}) in {weights_dir()} (or set {WEIGHTS_ENV} to its folder), "
            "or pass weights='/path/to/checkpoint'"
        ) from err


def load_checkpoint(model: torch.nn.Module, path: str) -> None:
    """Load a checkpoint file into a timm model, strictly, converting official layouts.

    Reads ``.safetensors`` with safetensors and ``.pth`` / ``.pt`` with
    ``torch.load(weights_only=True)`` (no code runs from the file). Training checkpoints
    (``teacher`` / ``model`` / ``state_dict`` entries, ``backbone.`` / ``module.`` prefixes)
    are unwrapped; official DINOv2 keys (``mask_token``, ``register_tokens``, SwiGLU
    ``w12`` / ``w3``) are converted by timm's own filter.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise ValueError(f"weights file {str(p)!r} does not exist")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(p))
        else:
            state = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"could not read weights file {str(p)!r}: {type(err).__name__}: {err}") from err
    state = _unwrap(state)
    from timm.models import vision_transformer

    if "mask_token" in state or "register_tokens" in state:
        state = vision_transformer.checkpoint_filter_fn(state, model)
    state = {k: v for k, v in state.items() if not k.startswith("head.") and k != "mask_token"}
    hint = "is it the checkpoint of another model?"
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches
        first = str(err).split("\n\t")[1:2]
        raise ValueError(f"weights file {str(p)!r} does not fit this model ({''.join(first).strip()}); {hint}") from None
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"weights file {str(p)!r} does not fit this model: missing {list(result.missing_keys)[:5]}, "
            f"unexpected {list(result.unexpected_keys)[:5]}; {hint}"
        )


def _unwrap(state) -> dict:
    if not isinstance(state, dict):
        raise ValueError("weights file holds no state dict")
    for key in ("teacher", "model", "state_dict"):
        if key in state and isinstance(state[key], dict):
            state = state[key]
    out = {}
    for k, v in state.items():
        if not isinstance(v, torch.Tensor):
            continue
        out[re.sub(r"^(module\.|backbone\.)+", "", k)] = v
    # block-chunked official checkpoints: blocks.<chunk>.<i>. -> blocks.<i>.
    if any(re.match(r"blocks\.\d+\.\d+\.", k) for k in out):
        out = {re.sub(r"^blocks\.\d+\.(\d+)\.", r"blocks.\1.", k): v for k, v in out.items()}
    return out


class StridedViT(torch.nn.Module):
    """Patch-token features and last-block CLS attention of a timm ViT at any stride.

    Wraps (does not modify) a timm ``VisionTransformer`` or ``Eva`` built with
    ``dynamic_img_size=True``.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        proj = model.patch_embed.proj
        self.patch_size = int(proj.kernel_size[0])
        self.embed_dim = int(proj.out_channels)
        self.num_heads = int(model.blocks[-1].attn.num_heads)
        self.num_prefix = int(model.num_prefix_tokens)
        self.uses_rope = getattr(model, "rope", None) is not None

    def grid(self, height: int, width: int, stride: int) -> tuple[int, int]:
        """Token grid ``(1 + (H - p) // s, 1 + (W - p) // s)`` of an ``H x W`` input."""
        p = self.patch_size
        if height < p or width < p:
            raise ValueError(f"the input of {height}x{width} px is smaller than one {p}x{p} patch")
        return 1 + (height - p) // stride, 1 + (width - p) // stride

    def forward(self, x: torch.Tensor, stride: int, between_blocks: Optional[Callable[[], None]] = None,
                facet: str = "token", layer: int = -1, pos_embed: str = "timm") -> tuple[torch.Tensor, torch.Tensor]:
        """Descriptors and CLS attention of a batch of normalised images.

        Parameters
        ----------
        x : (B, 3, H, W) float tensor, ImageNet-normalised.
        stride : patch-embedding stride, 1 <= stride <= patch size.
        between_blocks : called after every transformer block; may raise to stop (a cancel
            then takes effect within one block, not one whole forward pass).
        facet : ``"token"`` (the block's output; after the final norm for the last block), or the
            block's attention ``"key"``, ``"query"`` or ``"value"`` (after the q / k norms where
            the model has them, before rotary embeddings; heads concatenated).
        layer : the block (``-1``: the last); later blocks are not run.
        pos_embed : ``"timm"`` or ``"scale"`` (see :func:`scaled_pos_embed`).

        Returns
        -------
        tokens : (B, gh, gw, D) descriptors of the patch tokens.
        attention : (B, heads, gh, gw) CLS attention of block ``layer`` over the patch tokens,
            renormalised to sum to 1 per head.
        """
        m = self.model
        index = range(len(m.blocks))[layer]  # IndexError for a block the model does not have
        proj = m.patch_embed.proj
        t = F.conv2d(x, proj.weight, proj.bias, stride=stride)  # (B, D, gh, gw)
        gh, gw = t.shape[-2:]
        t = m.patch_embed.norm(t.permute(0, 2, 3, 1))  # NHWC, as timm's dynamic path expects
        if self.uses_rope:
            if pos_embed != "timm":
                raise ValueError(f"pos_embed={pos_embed!r} resamples absolute positional embeddings, and this "
                                 "model has rotary ones; use pos_embed='timm'")
            t, rope = m._pos_embed(t)
        else:
            t, rope = (m._pos_embed(t) if pos_embed == "timm" else self._scaled_pos_embed(t)), None
        t = m.norm_pre(m.patch_drop(t) if rope is None else t)
        for block in m.blocks[:index]:
            t = block(t) if rope is None else block(t, rope=rope)
            if between_blocks is not None:
                between_blocks()
        block = m.blocks[index]
        q, k, v = self._qkv(block, t)
        attention = self._cls_attention(block, q[:, :, :1], k, rope)
        if facet == "token":
            t = block(t) if rope is None else block(t, rope=rope)
            out = m.norm(t) if index == len(m.blocks) - 1 else t
        else:
            chosen = {"query": q, "key": k, "value": v}[facet]  # (B, heads, N, head_dim)
            out = chosen.transpose(1, 2).flatten(2)
        tokens = out[:, self.num_prefix:].reshape(out.shape[0], gh, gw, -1)
        return tokens, attention.reshape(out.shape[0], self.num_heads, gh, gw)

    def _scaled_pos_embed(self, t: torch.Tensor) -> torch.Tensor:
        """timm's ``_pos_embed`` of ``t`` (B, gh, gw, D) with the embeddings resampled by
        :func:`scaled_pos_embed`: prefix tokens prepended, embeddings added."""
        m = self.model
        b, gh, gw, d = t.shape
        prefix = 0 if getattr(m, "no_embed_class", False) else self.num_prefix
        pos = m.pos_embed
        pos = torch.cat([pos[:, :prefix], scaled_pos_embed(pos[:, prefix:], (gh, gw))], dim=1)
        t = t.reshape(b, gh * gw, d)
        tokens = [tok.expand(b, -1, -1) for tok in (getattr(m, "cls_token", None), getattr(m, "reg_token", None))
                  if tok is not None]
        if getattr(m, "no_embed_class", False):
            t = torch.cat([*tokens, t + pos], dim=1)
        else:
            t = torch.cat([*tokens, t], dim=1) + pos
        return m.pos_drop(t)

    def _qkv(self, block, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``block``'s queries, keys and values of tokens ``t`` (B, N, D): each (B, heads, N, head_dim),
        q and k after the model's q / k norms."""
        attn = block.attn
        h = block.norm1(t)
        b, n, _ = h.shape
        if getattr(attn, "q_bias", None) is not None:
            bias = torch.cat((attn.q_bias, attn.k_bias, attn.v_bias))
            qkv = F.linear(h, attn.qkv.weight, bias)
        else:
            qkv = attn.qkv(h)
        q, k, v = qkv.reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        return attn.q_norm(q), attn.k_norm(k), v

    def _cls_attention(self, block, q: torch.Tensor, k: torch.Tensor, rope) -> torch.Tensor:
        """(B, heads, N_patches) softmax attention of the CLS query ``q`` (B, heads, 1, hd) over the
        keys ``k`` (B, heads, N, hd) in ``block``."""
        attn = block.attn
        if rope is not None:
            from timm.layers import apply_rot_embed_cat

            npt = self.num_prefix
            half = getattr(attn, "rotate_half", False)
            k = torch.cat([k[:, :, :npt], apply_rot_embed_cat(k[:, :, npt:], rope, half=half)], dim=2)
        logits = (q.float() @ k.float().transpose(-2, -1))[:, :, 0] * attn.scale  # (B, heads, N)
        weights = logits.softmax(dim=-1)[:, :, self.num_prefix:]
        return weights / weights.sum(dim=-1, keepdim=True)


def scaled_pos_embed(pos: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Patch positional embeddings ``(1, n * n, D)`` of a square ``n x n`` grid resampled to
    ``grid = (gh, gw)`` as DINO and dino-vit-features do: bicubic, scale factors
    ``((gh + 0.1) / n, (gw + 0.1) / n)`` (the 0.1 keeps float rounding from losing a row),
    ``align_corners=False``, sampling positions from the scale factor (not the sizes).

    Returns ``(1, gh * gw, D)``.
    """
    n = int(round(pos.shape[1] ** 0.5))
    if n * n != pos.shape[1]:
        raise ValueError(f"positional embeddings of {pos.shape[1]} patches are not a square grid")
    if (n, n) == tuple(grid):
        return pos
    square = pos.reshape(1, n, n, -1).permute(0, 3, 1, 2)
    out = F.interpolate(square.float(), scale_factor=((grid[0] + 0.1) / n, (grid[1] + 0.1) / n), mode="bicubic",
                        align_corners=False, recompute_scale_factor=False)
    if tuple(out.shape[-2:]) != tuple(grid):
        raise ValueError(f"resampling positional embeddings gave a {tuple(out.shape[-2:])} grid, not {tuple(grid)}")
    return out.to(pos.dtype).permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], -1)
