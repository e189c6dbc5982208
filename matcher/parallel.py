"""One photo's per-object work (GrabCut, matting) spread over the machine's cores with threads.

OpenCV and pymatting's numba kernels release the GIL, so threads are enough; processes would pay
for copying the photo.  numba's parallel kernels may only be entered from two threads at once with a
thread-safe threading layer (tbb or omp): the fallback "workqueue" layer aborts the process instead.
"""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def thread_map(fn: Callable[[T], R], items: Iterable[T], workers: int) -> list[R]:
    """``[fn(x) for x in items]``, on up to ``workers`` threads; results in input order, the first error raised."""
    items = list(items)
    if workers <= 1 or len(items) <= 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(max_workers=min(workers, len(items)), thread_name_prefix="matcher-object") as pool:
        return list(pool.map(fn, items))


def numba_threads_safe() -> bool:
    """Whether numba kernels may run on several threads at once: the threading layer in use is tbb or omp.

    Before any parallel kernel has run numba has not chosen its layer yet: then False (one photo runs
    sequentially, and the next ones may use threads)."""
    try:
        import numba

        return numba.threading_layer() in ("tbb", "omp")
    except (ImportError, ValueError):
        return False


# Native thread pools a process may start: OpenMP (numba's omp layer, torch, scikit-learn), BLAS, numba.
ONE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "OPENBLAS_NUM_THREADS": "1",
                  "MKL_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}


def one_thread_per_process() -> None:
    """For a pool worker that shares the cores with its siblings: every native thread pool gets one thread.

    Two indexing workers that each started a two-thread OpenMP team, next to the parent's embedder, kept
    four spinning threads on two cores (measured: 2 workers indexed only 1.4x as fast as one).  Libraries
    loaded later read the environment; those already loaded are limited through their own APIs."""
    import os

    os.environ.update(ONE_THREAD_ENV)
    import cv2
    from threadpoolctl import threadpool_limits

    cv2.setNumThreads(1)
    threadpool_limits(1)  # not as a context manager: for the rest of the process


@contextmanager
def one_thread_here() -> Iterator[None]:
    """For the duration, this process's native thread pools (torch's, OpenMP, BLAS) get one thread each.

    For the parent of a process pool that keeps every core busy: its embedder's second thread only
    spins and fights the workers (measured while indexing with 2 workers on 2 cores: the parent's CPU
    per product fell from 0.11-0.14 s to 0.07 s, the workers' by 4-8 %)."""
    from threadpoolctl import threadpool_limits

    torch = sys.modules.get("torch")  # only if some backend already uses it
    previous = torch.get_num_threads() if torch is not None else None
    with threadpool_limits(1):
        if torch is not None:
            torch.set_num_threads(1)
        try:
            yield
        finally:
            if torch is not None:
                torch.set_num_threads(previous)
