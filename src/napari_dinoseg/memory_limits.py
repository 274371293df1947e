"""What this process may still allocate: the memory headroom every refusal compares against.

The low-level half of :mod:`napari_dinoseg.memory`, importing nothing of the package, so that
the features (:func:`napari_dinoseg.features.featurise.check_memory`) can refuse work that would
not fit without importing the plane estimates built on them; :mod:`napari_dinoseg.memory`
re-exports these names.
"""

from __future__ import annotations

import os
from typing import Optional


class NotEnoughMemory(ValueError, MemoryError):
    """Work refused before it started because its estimated peak would not fit in the memory
    available: a ``ValueError`` (a refused input, as the callers of this package catch them) and a
    ``MemoryError``."""


def available_memory() -> int:
    """Bytes this process can still allocate: the least of the system's available memory
    (``psutil``), the headroom of the cgroup's memory limit (containers, batch schedulers: a
    limit ``psutil`` does not see, past which the kernel kills the process), and the headroom of
    the address-space and data limits (``ulimit -v``, ``RLIMIT_AS`` / ``RLIMIT_DATA``)."""
    import psutil

    candidates = [int(psutil.virtual_memory().available)]
    cgroup = _cgroup_headroom()
    if cgroup is not None:
        candidates.append(cgroup)
    candidates += _rlimit_headroom()
    return max(0, min(candidates))


def _rlimit_headroom() -> list[int]:
    """Headroom of ``RLIMIT_AS`` (over the virtual size) and ``RLIMIT_DATA`` (over the data size)."""
    try:
        import resource
    except ImportError:  # Windows
        return []
    out = []
    for name, status_key in (("RLIMIT_AS", "VmSize"), ("RLIMIT_DATA", "VmData")):
        limit = getattr(resource, name, None)
        if limit is None:
            continue
        soft = resource.getrlimit(limit)[0]
        if soft == resource.RLIM_INFINITY or soft < 0:
            continue
        used = _proc_status(status_key)
        if used is None and name == "RLIMIT_AS":
            import psutil

            used = psutil.Process().memory_info().vms
        if used is not None:
            out.append(soft - used)
    return out


def _proc_status(key: str) -> Optional[int]:
    """A ``kB`` field of ``/proc/self/status`` in bytes (``None`` elsewhere)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_headroom() -> Optional[int]:
    """Bytes left under the tightest cgroup memory limit of this process and its ancestors (v2, or
    v1 / hybrid), counting reclaimable page cache as free; ``None`` without a limit (or off Linux)."""
    base = "/sys/fs/cgroup"
    try:
        with open("/proc/self/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    found = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        path = parts[2].lstrip("/")
        if parts[0] == "0" and parts[1] == "":  # v2 ("0::/path"), or the unified part of a hybrid
            for root in (base, os.path.join(base, "unified")):
                found += [_headroom(folder, "memory.max", "memory.current", "inactive_file")
                          for folder in _ancestors(os.path.join(root, path), root)]
        elif "memory" in parts[1].split(","):  # v1 ("4:memory:/path")
            root = os.path.join(base, "memory")
            found += [_headroom(folder, "memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")
                      for folder in _ancestors(os.path.join(root, path), root)]
    found = [n for n in found if n is not None]
    return min(found) if found else None


def _ancestors(folder: str, root: str) -> list[str]:
    """``folder`` and its parents up to ``root`` (a limit set on any of them applies)."""
    out = [folder]
    while os.path.normpath(folder) != os.path.normpath(root) and len(out) < 64:
        folder = os.path.dirname(folder)
        out.append(folder)
    return out


def _headroom(folder: str, limit_file: str, usage_file: str, inactive_key: str) -> Optional[int]:
    try:
        with open(os.path.join(folder, limit_file)) as f:
            text = f.read().strip()
        if text == "max":
            return None
        limit = int(text)
        if limit >= 1 << 60:  # v1's "no limit"
            return None
        with open(os.path.join(folder, usage_file)) as f:
            usage = int(f.read().strip())
    except (OSError, ValueError):
        return None
    inactive = 0
    try:
        with open(os.path.join(folder, "memory.stat")) as f:
            for line in f:
                key, _, value = line.partition(" ")
                if key == inactive_key:
                    inactive = int(value)
                    break
    except (OSError, ValueError):
        pass
    return limit - usage + inactive


def gib(n: float) -> str:
    """``"4.4 GiB"`` (two decimals below 1 GiB, so that small amounts are not shown as 0.0)."""
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**30:.2f} GiB"
