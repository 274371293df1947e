"""Threads for the per-pixel work: compiled code that releases the GIL (scikit-learn's tree
traversal, scipy's filters, torch) runs on every core the process may use."""

from __future__ import annotations

import os
import threading
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
    """``[fn(item) for item in items]``, on ``cpu_threads()`` threads when there are several items.

    The threads are kept between calls (starting them cost about a millisecond each, many times
    per prediction); a call made from one of them runs its items in that thread.
    """
    items = list(items)
    if len(items) <= 1 or cpu_threads() == 1 or getattr(_inside, "pool", False):
        return [fn(item) for item in items]
    return list(_pool().map(_marked(fn), items))


_inside = threading.local()
_lock = threading.Lock()
_pools: dict[tuple[int, int], ThreadPoolExecutor] = {}


def _pool() -> ThreadPoolExecutor:
    """The process's worker threads (one per core; a new set after a fork or an affinity change)."""
    key = (os.getpid(), cpu_threads())
    with _lock:
        pool = _pools.get(key)
        if pool is None:
            pool = _pools[key] = ThreadPoolExecutor(max_workers=key[1], thread_name_prefix="dinoseg")
        return pool


def _marked(fn: Callable[[T], R]) -> Callable[[T], R]:
    def run(item: T) -> R:
        _inside.pool = True
        return fn(item)

    return run
