"""Timing helpers shared by the speed benchmarks.

The machine these run on is often shared (other processes, builds), so a stage and the floor it
is compared with are measured in the same run, interleaved (floor, stage, floor, stage, ...), and
each is summarised by its fastest repeat: interference only ever adds time, so the minimum is the
best estimate of what the code itself costs, and interleaving exposes both to the same load.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable, Mapping

import numpy as np


def interleaved(functions: Mapping[str, Callable[[], object]], repeats: int,
                warmup: bool = True) -> dict[str, list[float]]:
    """Seconds of each call of each function, the functions taking turns ``repeats`` times."""
    if warmup:
        for function in functions.values():
            function()
    seconds: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            seconds[name].append(time.perf_counter() - start)
    return seconds


def best(samples: list[float]) -> float:
    return float(min(samples))


def spread(samples: list[float]) -> str:
    """``min / median`` of a list of seconds, for the printed tables."""
    return f"{min(samples):.3f} / {float(np.median(samples)):.3f}"


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def peak_rss_growth(function: Callable[[], object]) -> int | None:
    """Bytes the resident set grew to above its size before ``function`` ran (Linux: the peak is
    reset through /proc/self/clear_refs); None where that is not available."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        before = _status_kib("VmRSS")
    except OSError:
        return None
    function()
    return max(0, _status_kib("VmHWM") - before) * 1024


def traced_peak(function: Callable[[], object]) -> int:
    """Peak bytes of Python/numpy allocations alive at once while ``function`` runs, above what
    was allocated before (tracemalloc; numpy reports its buffers to it, torch does not)."""
    import tracemalloc

    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before, _ = tracemalloc.get_traced_memory()
        function()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return max(0, peak - before)


def machine() -> str:
    """One line describing this machine, for the tables."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{cpu}, {cores} cores, {gpu}; torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads; load average {load:.1f} at start")
