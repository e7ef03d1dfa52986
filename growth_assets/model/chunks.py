"""Chunks of a large numpy computation on the cores this process may use.

numpy's array operations run without the GIL, so threads that work on disjoint slices of the
same arrays add the cores a container or a CPU affinity allows (not the host's count).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

MAX_WORKERS = 4


def usable_cores() -> int:
    """The CPUs this process may run on (its affinity), at most MAX_WORKERS."""
    return max(1, min(MAX_WORKERS, len(os.sched_getaffinity(0))))


def each_chunk(work: Callable[[int], None], n_chunks: int, workers: int | None = None) -> None:
    """``work(j)`` for j in 0..n_chunks-1, on ``workers`` threads (default: usable_cores());
    one chunk or one worker runs in this thread. An error of the lowest-numbered chunk that
    fails is the one raised."""
    workers = usable_cores() if workers is None else int(workers)
    if workers <= 1 or n_chunks <= 1:
        for j in range(n_chunks):
            work(j)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="chunks") as pool:
        for _ in pool.map(work, range(n_chunks)):  # results in chunk order
            pass
