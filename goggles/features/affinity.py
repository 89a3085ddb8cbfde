"""The affinity matrix (paper §3.2): ``A[i, j] = max over (h, w) of cos(prototype_j, v_i(h, w))``.

Computed as one GEMM of unit-normalised position vectors against unit-normalised prototypes
followed by a max over positions, in blocks sized to a memory budget, for any row range — the
unit of sharding.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from goggles.features.device import gemm_dtype, memory_budget_bytes, resolve_device
from goggles.io.progress import Progress

logger = logging.getLogger(__name__)

_EPS = 1e-12
# On a CPU a similarity block beyond this gains nothing and loses cache: its products are written
# once and read once by the max (benchmarks/affinity.py: 0.72x the bare GEMM's FLOP rate with
# 256 MiB blocks, 0.8x with 64 MiB). Preallocated once, so no block pays for fresh pages.
CPU_BLOCK_BYTES = 64 * 2**20


def shard_bounds(num_rows: int, num_shards: int) -> list[tuple[int, int]]:
    """Split rows 0..num_rows-1 into ``num_shards`` contiguous ranges of near-equal size.

    Raises ValueError when there are more shards than rows (a shard would be empty).
    """
    if num_shards < 1:
        raise ValueError(f"num_shards must be at least 1, got {num_shards}")
    if num_shards > max(num_rows, 1):
        raise ValueError(f"num_shards={num_shards} exceeds the {num_rows} accepted images; "
                         f"use at most {max(num_rows, 1)} shards")
    edges = np.linspace(0, num_rows, num_shards + 1).round().astype(int)
    return [(int(edges[s]), int(edges[s + 1])) for s in range(num_shards)]


def normalise(vectors: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Scale vectors to unit L2 norm along ``dim``; zero vectors stay zero."""
    return vectors / vectors.norm(dim=dim, keepdim=True).clamp_min(_EPS)


def block_shape(num_images: int, num_prototypes: int, positions: int, channels: int,
                element_bytes: int, budget_bytes: int) -> tuple[int, int]:
    """(images, prototypes) per similarity block so that its scratch — the [r*H*W, m] products
    and the [r*H*W, C] unit position vectors — fits ``budget_bytes``.

    Columns first: one block spans every prototype when the budget allows, so the position
    vectors are normalised once and each GEMM is as large as possible (on a shared CPU many small
    GEMMs pay a thread fork-join each; measured 0.2-0.8x the FLOP rate of one large one).
    """
    budget = max(1, budget_bytes // element_bytes)
    cols = int(min(max(num_prototypes, 1), max(1, budget // positions - channels)))
    rows = int(max(1, min(max(num_images, 1), budget // (positions * (cols + channels)))))
    return rows, cols


def affinity_block(
    maps: np.ndarray | torch.Tensor,
    prototypes: np.ndarray | torch.Tensor,
    *,
    memory_mb: int = 256,
    dtype: str = "float32",
    device: torch.device | str | None = None,
) -> np.ndarray:
    """Affinity of a block of images to every prototype.

    Parameters
    ----------
    maps : [n, C, H, W] non-negative filter maps of n images.
    prototypes : [M, C] prototype vectors.
    memory_mb : bound on one similarity block's scratch memory ([r*H*W, m] products); 0 sizes
        blocks from the free memory of the device (half of it on a GPU; see
        :func:`goggles.features.device.memory_budget_bytes`). Lowered when less is free.
    dtype : GEMM arithmetic (``float32``, ``float16``, ``bfloat16``; float16 means bfloat16 on a
        CPU); the result is float32.
    device : where the GEMMs run (``cpu``, ``cuda``, ``auto``); default CPU.

    Returns
    -------
    [n, M] float32 affinities in [0, 1].
    """
    device = resolve_device(device or "cpu")
    compute = gemm_dtype(device, dtype)
    if isinstance(maps, torch.Tensor):
        maps_t = maps
    else:
        array = np.asarray(maps, dtype=np.float32)
        maps_t = torch.from_numpy(array if array.flags.writeable else array.copy())
    n, channels, height, width = maps_t.shape
    positions = height * width
    # a copy: the prototypes read from Parquet are a read-only view, which torch warns about
    protos = normalise((prototypes.to(torch.float32) if isinstance(prototypes, torch.Tensor)
                        else torch.from_numpy(np.array(prototypes, dtype=np.float32)))
                       .to(device))
    protos_t = protos.to(compute).T  # [C, M]
    count = protos.shape[0]
    out = torch.empty((n, count), dtype=torch.float32)
    if n == 0 or count == 0:
        return out.numpy()
    element = torch.tensor([], dtype=compute).element_size()
    budget = memory_budget_bytes(device, memory_mb)
    if device.type == "cpu":
        budget = min(budget, CPU_BLOCK_BYTES)
    rows, cols = block_shape(n, count, positions, channels, element, budget)
    scratch = torch.empty(rows * positions * cols, dtype=compute, device=device)
    units = torch.empty((rows, positions, channels), dtype=torch.float32, device=device)
    direct = device.type == "cpu" and compute == torch.float32  # the max lands in `out` itself
    best = None if direct else torch.empty((rows, cols), dtype=compute, device=device)
    bar = Progress(n, "affinity", "images")
    for r0 in range(0, n, rows):
        block = maps_t[r0:r0 + rows].to(device=device, dtype=torch.float32, non_blocking=True)
        r = block.shape[0]
        # unit position vectors [r*HW, C]: each position's C-vector divided by its norm, written
        # straight into position-as-row layout (one pass for the division and the transpose)
        block = block.flatten(2)  # [r, C, HW]
        norms = block.norm(dim=1, keepdim=True).clamp_min(_EPS)
        torch.div(block, norms, out=units[:r].permute(0, 2, 1))
        vectors = units[:r].view(r * positions, channels).to(compute)
        for c0 in range(0, count, cols):
            m = min(cols, count - c0)
            sims = scratch[:r * positions * m].view(r * positions, m)
            torch.matmul(vectors, protos_t[:, c0:c0 + m], out=sims)  # [r*HW, m]
            if best is None:
                torch.amax(sims.view(r, positions, m), dim=1, out=out[r0:r0 + r, c0:c0 + m])
            else:
                torch.amax(sims.view(r, positions, m), dim=1, out=best[:r, :m])
                out[r0:r0 + r, c0:c0 + m] = best[:r, :m]
        bar.update(r)
    bar.close()
    return out.clamp_(0.0, 1.0).numpy()
