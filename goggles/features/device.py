"""Where the torch stages run, in which precision, and how big their chunks are.

Every torch stage (extract, affinity, the likelihood of infer) goes through these helpers, so the
GPU path is one code path with the CPU one, and its choices are testable without a GPU:

* :func:`resolve_device` — ``auto`` is CUDA when visible, else CPU.
* :func:`autocast_dtype` — the reduced precision a CNN forward runs in: bfloat16 on GPUs that
  support it (Ampere and later: no overflow, no loss scaling needed for inference), float16 on
  older GPUs, none (float32) on CPU, where autocast would change the filter maps for a speed-up
  that depends on the CPU's bf16 support.
* :func:`memory_budget_bytes` and :func:`chunk_count` — chunk sizes from the memory actually
  free on the device (``torch.cuda.mem_get_info``) or in the machine (``MemAvailable``), capped
  by what the caller allows.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# torch is imported inside the functions that need it: cpu_threads() serves numpy-only code
# (the likelihood on a CPU) without paying for the import.

logger = logging.getLogger(__name__)

# Share of the free memory one stage's scratch buffers may take; the rest is left for the
# allocator's fragmentation, the model, and other processes on the machine.
FREE_MEMORY_SHARE = 0.5


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` → CUDA when available, else CPU; ``cuda`` without a visible GPU is an error."""
    import torch

    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device={device!r} was asked for but no CUDA device is visible; "
                           "use device='auto' or 'cpu'")
    return torch.device(device)


def bf16_supported(device: torch.device) -> bool:
    """Whether ``device`` has fast bfloat16 arithmetic (CUDA compute capability 8.0+)."""
    import torch

    if device.type != "cuda":
        return False
    return bool(torch.cuda.is_bf16_supported())


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype of a forward pass on ``device``, or None for float32.

    ``precision`` is ``auto`` (bfloat16 on GPUs that support it, float16 on other GPUs,
    float32 on CPU), ``float32``, ``float16`` or ``bfloat16``.
    """
    import torch

    if precision == "float32":
        return None
    if precision == "bfloat16":
        return torch.bfloat16
    if precision == "float16":
        # CPU kernels have no fast float16 path; bfloat16 has the same size and more range
        return torch.float16 if device.type == "cuda" else torch.bfloat16
    if precision != "auto":
        raise ValueError(f"unknown precision {precision!r}; choose auto, float32, float16 or "
                         "bfloat16")
    if device.type != "cuda":
        return None
    return torch.bfloat16 if bf16_supported(device) else torch.float16


def gemm_dtype(device: torch.device, dtype: str) -> torch.dtype:
    """The arithmetic of a similarity GEMM: ``float16`` on CPU becomes bfloat16 (same size, CPU
    GEMMs have no fast float16 path)."""
    import torch

    compute = {"float32": torch.float32, "float16": torch.float16,
               "bfloat16": torch.bfloat16}.get(dtype)
    if compute is None:
        raise ValueError(f"unknown dtype {dtype!r}; choose float32, float16 or bfloat16")
    if device.type != "cuda" and compute == torch.float16:
        return torch.bfloat16
    return compute


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def free_memory_bytes(device: torch.device,
                      cuda_mem_get_info: Callable[[torch.device], tuple[int, int]] | None = None,
                      ) -> int | None:
    """Bytes free on ``device`` now (GPU memory for CUDA, available RAM for CPU), or None when
    the platform does not say."""
    import torch

    if device.type == "cuda":
        query = cuda_mem_get_info or torch.cuda.mem_get_info
        free, _total = query(device)
        return int(free)
    available = _meminfo_available()
    if available is None and hasattr(os, "sysconf"):
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError):
            available = None
    return available


def memory_budget_bytes(device: torch.device, requested_mb: int, *,
                        free_bytes: int | None = None) -> int:
    """Scratch bytes a stage may use on ``device``.

    ``requested_mb > 0`` is a bound the caller sets; it is lowered to ``FREE_MEMORY_SHARE`` of
    the free memory when less is free. ``requested_mb == 0`` (auto) takes that share of the free
    memory on a GPU, where big chunks keep the device busy, and 256 MiB on a CPU, where chunks
    beyond a few MiB gain nothing.
    """
    if requested_mb < 0:
        raise ValueError(f"requested_mb must be 0 (auto) or positive, got {requested_mb}")
    free = free_bytes if free_bytes is not None else free_memory_bytes(device)
    share = int(free * FREE_MEMORY_SHARE) if free is not None else None
    if requested_mb:
        wanted = requested_mb * 2**20
    elif device.type == "cuda" and share is not None:
        wanted = share
    else:
        wanted = 256 * 2**20
    if share is not None and share < wanted:
        logger.info("memory budget lowered from %d MiB to %d MiB: only %d MiB free on %s",
                    wanted >> 20, share >> 20, free >> 20 if free else 0, device)
        wanted = share
    return max(1, wanted)


def chunk_count(budget_bytes: int, bytes_per_item: int, total: int) -> int:
    """Items per chunk so that a chunk's scratch fits ``budget_bytes`` (at least 1, at most
    ``total``)."""
    if bytes_per_item <= 0:
        raise ValueError(f"bytes_per_item must be positive, got {bytes_per_item}")
    return int(max(1, min(max(total, 1), budget_bytes // bytes_per_item)))


def extract_batch_size(device: torch.device, requested: int, *, bytes_per_image: int,
                       free_bytes: int | None = None) -> int:
    """Images per forward pass: ``requested``, lowered so the activations of one batch fit the
    device's free memory (a GPU shared with other work, or a small one)."""
    if requested < 1:
        raise ValueError(f"batch size must be at least 1, got {requested}")
    if device.type != "cuda":
        return requested
    budget = memory_budget_bytes(device, 0, free_bytes=free_bytes)
    fitted = chunk_count(budget, bytes_per_image, requested)
    if fitted < requested:
        logger.warning("batch_size lowered from %d to %d to fit the free GPU memory",
                       requested, fitted)
    return fitted


def cpu_threads() -> int:
    """Cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)
