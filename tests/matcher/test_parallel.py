"""Per-object work on threads: same results, same order, errors surface."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from matcher.parallel import numba_threads_safe, thread_map


def test_results_keep_the_input_order_and_use_several_threads():
    names = set()

    def slow_square(x):
        names.add(threading.current_thread().name)
        time.sleep(0.02 * (5 - x))  # later items finish first
        return x * x

    assert thread_map(slow_square, range(5), workers=2) == [0, 1, 4, 9, 16]
    assert len(names) == 2


def test_one_worker_or_one_item_runs_in_the_calling_thread():
    here = threading.current_thread().name
    assert thread_map(lambda _: threading.current_thread().name, [1, 2, 3], workers=1) == [here] * 3
    assert thread_map(lambda _: threading.current_thread().name, [1], workers=4) == [here]
    assert thread_map(lambda x: x, [], workers=4) == []


def test_an_error_in_one_item_is_raised():
    def fail_on_two(x):
        if x == 2:
            raise ValueError("item 2 is broken")
        return x

    with pytest.raises(ValueError, match="item 2"):
        thread_map(fail_on_two, [1, 2, 3], workers=2)


def test_numba_threading_layer_is_known_after_a_matting_kernel_ran():
    import pymatting

    pymatting.estimate_foreground_ml(np.random.default_rng(0).random((16, 16, 3)), np.full((16, 16), 0.5))
    import numba

    assert numba_threads_safe() == (numba.threading_layer() in ("tbb", "omp"))


def _threads_after_limiting() -> tuple[int, str, list[int]]:
    import os

    import cv2
    import numpy  # noqa: F401 - its BLAS is loaded before the limit, as in a pool worker
    from threadpoolctl import threadpool_info

    from matcher.parallel import one_thread_per_process

    one_thread_per_process()
    return cv2.getNumThreads(), os.environ["OMP_NUM_THREADS"], [p["num_threads"] for p in threadpool_info()]


def test_a_pool_worker_keeps_one_native_thread():
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        cv_threads, omp, pools = pool.submit(_threads_after_limiting).result(timeout=120)
    assert cv_threads == 1 and omp == "1" and pools and set(pools) == {1}


def test_one_thread_here_limits_torch_for_the_duration_and_restores_it():
    import torch

    from matcher.parallel import one_thread_here

    torch.set_num_threads(2)
    with one_thread_here():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    try:
        with one_thread_here():
            raise RuntimeError("the run failed")
    except RuntimeError:
        pass
    assert torch.get_num_threads() == 2
