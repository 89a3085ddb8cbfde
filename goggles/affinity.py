"""The affinity matrix (paper §3.2): ``A[i, j] = max over (h, w) of cos(prototype_j, v_i(h, w))``.

Computed as one GEMM of unit-normalised position vectors against unit-normalised prototypes
followed by a max over positions, in blocks sized to a memory budget, for any row range — the
unit of sharding.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

logger = logging.getLogger(__name__)

_EPS = 1e-12
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


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


def affinity_block(
    maps: np.ndarray | torch.Tensor,
    prototypes: np.ndarray | torch.Tensor,
    *,
    memory_mb: int = 256,
    dtype: str = "float32",
    device: torch.device | None = None,
) -> np.ndarray:
    """Affinity of a block of images to every prototype.

    Parameters
    ----------
    maps : [n, C, H, W] non-negative filter maps of n images.
    prototypes : [M, C] prototype vectors.
    memory_mb : bound on one similarity block's scratch memory ([r*H*W, m] products).
    dtype : GEMM arithmetic (``float32``, ``float16``, ``bfloat16``); the result is float32.

    Returns
    -------
    [n, M] float32 affinities in [0, 1].
    """
    device = device or torch.device("cpu")
    compute = _DTYPES[dtype]
    if device.type == "cpu" and compute == torch.float16:
        compute = torch.bfloat16  # CPU GEMMs have no fast float16 path
    if isinstance(maps, torch.Tensor):
        maps_t = maps
    else:
        array = np.asarray(maps, dtype=np.float32)
        maps_t = torch.from_numpy(array if array.flags.writeable else array.copy())
    n, channels, height, width = maps_t.shape
    positions = height * width
    protos = normalise(torch.tensor(np.asarray(prototypes), dtype=torch.float32, device=device))
    protos = protos.to(compute)
    count = protos.shape[0]
    out = torch.empty((n, count), dtype=torch.float32)
    if n == 0 or count == 0:
        return out.numpy()
    element = torch.tensor([], dtype=compute).element_size()
    budget = max(1, memory_mb * 2**20 // element)
    cols = int(min(count, max(1, budget // positions)))
    rows = int(max(1, min(n, budget // (positions * cols))))
    for r0 in range(0, n, rows):
        block = maps_t[r0:r0 + rows].to(device=device, dtype=torch.float32)
        vectors = block.flatten(2).transpose(1, 2)  # [r, HW, C]
        vectors = normalise(vectors).to(compute).reshape(-1, channels)  # [r*HW, C]
        r = block.shape[0]
        for c0 in range(0, count, cols):
            sims = vectors @ protos[c0:c0 + cols].T  # [r*HW, m]
            best = sims.view(r, positions, -1).amax(dim=1)
            out[r0:r0 + r, c0:c0 + cols] = best.float().cpu()
    return out.clamp_(0.0, 1.0).numpy()
