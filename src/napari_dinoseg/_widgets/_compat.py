"""Work-arounds for conflicts between napari's environment and the compute libraries."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

logger = logging.getLogger(__name__)


def block_triton_if_llvm_is_loaded() -> bool:
    """Keep triton from loading into a process where a system LLVM is already loaded.

    napari's canvas on Mesa (llvmpipe: VMs, remote desktops, Xvfb) loads the system
    ``libLLVM``; importing triton afterwards, which CUDA builds of torch pull in through
    torchvision / timm, crashes the process (triton ships its own LLVM). napari-dinoseg never
    needs triton (no ``torch.compile``), so when this conflict is present and triton is not
    loaded yet, ``import triton`` is made to fail cleanly; torch then treats it as absent.
    Returns whether triton was blocked.
    """
    if "triton" in sys.modules:
        return False
    maps = Path("/proc/self/maps")
    try:
        loaded = maps.read_text() if maps.exists() else ""
    except OSError:
        return False
    if "libLLVM" not in loaded:
        return False
    sys.modules["triton"] = None  # makes `import triton` raise ImportError
    logger.info("napari-dinoseg: system LLVM loaded (Mesa); triton disabled to avoid an LLVM clash")
    return True
