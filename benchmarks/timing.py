"""Shared timing helpers of the benchmarks (imported as `timing`: each script's
directory is on sys.path when run as `python benchmarks/<name>.py`).

Speed is reported as ratios against a baseline timed in the same process, never
as absolute thresholds; `machine()` records where a figure came from.
"""
from __future__ import annotations

import os
import platform
import time
from typing import Callable

import numpy as np


def median_time(fn: Callable[[], object], repeats: int = 5) -> float:
    """Median wall seconds of `fn()` over `repeats` calls after one warm-up call.

    The warm-up absorbs jit compilation; `fn` must block until its result is
    ready (e.g. `jax.block_until_ready`).
    """
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def interleaved_medians(fns: dict, repeats: int) -> dict:
    """{name: median wall seconds of fn()} with the calls taken round-robin (one warm-up call each).

    On a shared machine the load moves within a run; taking the
    implementations in turn gives each the same load, so their ratio is
    fair even where the absolute times are not.
    """
    for fn in fns.values():
        fn()
    return {name: float(np.median(t)) for name, t in interleaved_times(fns, repeats).items()}


def interleaved_times(fns: dict, repeats: int) -> dict:
    """{name: [wall seconds of each of `repeats` calls of fn()]}, the calls taken round-robin (no warm-up: the
    caller's); the spread behind `interleaved_medians`."""
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def machine() -> str:
    """One line naming the CPU, its cores, the load, and the jax backend."""
    import jax

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"load {load:.1f}, jax {jax.__version__} on {jax.devices()[0].platform}")
