"""The registry of ViT backbones: the model table (:mod:`napari_dinoseg.models`, re-exported here)
and where each model's released weight files are looked for.

Torch-free, so that the weights can be found without importing torch.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from ..models import MODELS, ModelSpec, model_spec  # noqa: F401  (re-exported: the registry's names)

#: Environment variable naming a folder of weight files (see :func:`weights_dir`).
WEIGHTS_ENV = "DINOSEG_WEIGHTS_DIR"


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


def weights_for(config, hint: str = "or pass the checkpoint file as weights") -> Optional[str]:
    """:func:`find_weights` of a feature config whose kind runs a ViT (its ``model`` and
    ``weights``), ``None`` for kinds without weights: what every caller that refuses early calls,
    whatever the kind."""
    from ..feature_kinds import KINDS

    if not KINDS[config.kind].vit:
        return None
    return find_weights(config.model, config.weights or None, hint)


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
