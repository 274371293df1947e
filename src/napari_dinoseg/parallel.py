"""Threads for the per-pixel work: compiled code that releases the GIL (scikit-learn's tree
traversal, scipy's filters, torch) runs on every core the process may use."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def cpu_threads() -> int:
    """Cores this process may run on (its CPU affinity where the OS tells it)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def map_threads(fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """``[fn(item) for item in items]``, on ``cpu_threads()`` threads when there are several items."""
    items = list(items)
    if len(items) <= 1 or cpu_threads() == 1:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(cpu_threads(), len(items))) as pool:
        return list(pool.map(fn, items))
