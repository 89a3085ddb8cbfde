"""The per-class log-likelihood of :mod:`goggles.inference.likelihood` on torch (a GPU if any).

The same float64 arithmetic as the numpy path — ``x = (a - mean) * scale``, ``log_ndtr(x)``, a
sum over each row — on chunks of rows. Every chunk has the same shape (the last one is padded
with zero rows), so every row goes through identical kernels, reductions included: a row's
value depends on that row alone, however A is blocked or sharded.
"""

from __future__ import annotations

import numpy as np
import torch

from goggles.features.device import resolve_device

# Elements of one chunk: 64 MiB per float64 temporary on a GPU (big kernels keep it busy, three
# temporaries stay far below any GPU's memory), 256 KiB on a CPU (a core's L2 cache). Fixed
# numbers rather than a function of free memory: the chunk shape must not change between calls.
GPU_CHUNK_ELEMENTS = 1 << 23
CPU_CHUNK_ELEMENTS = 1 << 15


def chunk_shape_rows(num_columns: int, device: torch.device) -> int:
    """Rows per chunk for an [n, num_columns] block on ``device``."""
    elements = GPU_CHUNK_ELEMENTS if device.type == "cuda" else CPU_CHUNK_ELEMENTS
    return max(1, elements // max(num_columns, 1))


@torch.inference_mode()
def torch_log_likelihood(affinity: np.ndarray, means: np.ndarray, scales: np.ndarray,
                         rows: np.ndarray, cols: np.ndarray, *, device: str | torch.device,
                         dtype: torch.dtype = torch.float64) -> tuple[np.ndarray, np.ndarray]:
    """Row sums of ``log_ndtr((a - means[k]) * scales[k])`` per class.

    Parameters
    ----------
    affinity : [n, M] block of A.
    means, scales : [K, M] standardisation per class (see ``likelihood._standardisation``).
    rows, cols : self entries, ordered by row.
    device : where to compute.
    dtype : arithmetic (float64 by default; float32 halves the work on a GPU).

    Returns
    -------
    ([n, K] row sums, [S, K] log_ndtr at the self entries), both float64 numpy arrays.
    """
    where = resolve_device(device)
    n, m = affinity.shape
    k_classes = means.shape[0]
    step = chunk_shape_rows(m, where)
    means_t = torch.as_tensor(means, device=where).to(dtype)
    scales_t = torch.as_tensor(scales, device=where).to(dtype)
    rows_t = torch.as_tensor(rows, device=where)
    cols_t = torch.as_tensor(cols, device=where)
    totals = torch.empty((n, k_classes), dtype=torch.float64, device=where)
    self_logp = torch.empty((len(rows), k_classes), dtype=torch.float64, device=where)
    chunk = torch.zeros((step, m), dtype=dtype, device=where)
    x = torch.empty_like(chunk)
    bounds = np.searchsorted(rows, np.arange(0, n + step, step).clip(max=n))
    for index, lo in enumerate(range(0, n, step)):
        hi = min(lo + step, n)
        block = torch.from_numpy(np.ascontiguousarray(affinity[lo:hi]))
        chunk[:hi - lo].copy_(block, non_blocking=True)
        if hi - lo < step:
            chunk[hi - lo:].zero_()
        first, last = int(bounds[index]), int(bounds[index + 1])
        local_rows, local_cols = rows_t[first:last] - lo, cols_t[first:last]
        for k in range(k_classes):
            torch.sub(chunk, means_t[k], out=x)
            x.mul_(scales_t[k])
            torch.special.log_ndtr(x, out=x)
            totals[lo:hi, k] = x.sum(dim=1, dtype=torch.float64)[:hi - lo]
            self_logp[first:last, k] = x[local_rows, local_cols].to(torch.float64)
    return totals.cpu().numpy(), self_logp.cpu().numpy()
