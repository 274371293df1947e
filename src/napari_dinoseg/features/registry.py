"""The registry of ViT backbones: friendly names, timm names, geometry, released weight files.

Torch-free, so that configs can be validated without importing torch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

#: Environment variable naming a folder of weight files (see :func:`weights_dir`).
WEIGHTS_ENV = "DINOSEG_WEIGHTS_DIR"


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
    """The registry entry of ``name``; a ``ValueError`` listing the valid names otherwise."""
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(sorted(MODELS))}") from None


def weights_dir() -> Path:
    """Folder searched for weight files: ``$DINOSEG_WEIGHTS_DIR``, else ``~/.cache/napari-dinoseg/weights``."""
    env = os.environ.get(WEIGHTS_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "napari-dinoseg" / "weights"


#: Seconds to wait for the model hub to answer before calling the machine offline.
HUB_TIMEOUT = 1.0
HUB_HOST = ("huggingface.co", 443)


def find_weights(name: str, weights: Optional[str] = None, hint: str = "or pass the checkpoint file as weights") -> str:
    """Where the weights of model ``name`` will come from, found in about a second at most.

    Parameters
    ----------
    name
        A key of :data:`MODELS`.
    weights
        ``None`` (look in :func:`weights_dir`, then the Hugging Face cache, then the hub), a
        checkpoint path, or ``"random"``.
    hint
        The last words of the offline message: how to give a checkpoint file where the caller is.

    Returns
    -------
    ``"random"``, the path of a checkpoint file (given, in the weights folder, or in the
    Hugging Face cache), or ``"download"`` when the hub answers and will supply them.

    Raises
    ------
    ValueError
        No weights anywhere and the hub unreachable (offline, ``HF_HUB_OFFLINE``): says where
        to put the released file. A given path that does not exist.
    """
    spec = model_spec(name)
    if weights == "random":
        return weights
    if weights:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise ValueError(f"weights file {str(path)!r} does not exist")
        return str(path)
    local = [weights_dir() / f for f in spec.files if (weights_dir() / f).is_file()]
    if local:
        return str(local[0])
    cached = hub_cache(spec)
    if cached:
        return cached
    if _hub_reachable():
        return "download"
    raise ValueError(
        f"no weights for {name!r} on this machine, and the model hub cannot be reached (offline). Put the released "
        f"file {spec.files[0]} in {weights_dir()} (or set {WEIGHTS_ENV} to its folder), {hint}"
    )


def hub_cache(spec: ModelSpec) -> Optional[str]:
    """timm's weights for ``spec`` in the local Hugging Face cache, if there."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    repo = "timm/" + spec.timm_name
    for filename in ("model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(repo, filename)
        if isinstance(found, str) and os.path.isfile(found):
            return found
    return None


def _hub_reachable() -> bool:
    """The hub answers a TCP connection within ``HUB_TIMEOUT`` s (name lookup included)."""
    import socket
    import threading

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    answered = []

    def probe() -> None:
        try:
            socket.create_connection(HUB_HOST, timeout=HUB_TIMEOUT).close()
            answered.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(HUB_TIMEOUT)
    return bool(answered)
