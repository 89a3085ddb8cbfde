"""Second-order descriptors of filter maps, for graph EM (:mod:`goggles.inference.graph_em`).

Signed-sqrt bilinear pooling (Lin et al. 2015) of an image's filter map: the [C, C] mean outer
product of its position vectors, which sees which parts co-occur where the affinity matrix sees
only the best match of each prototype; count-sketched (Charikar et al. 2002) to
:data:`SKETCH_DIM` dimensions so inner products are kept in expectation. The extract stage
writes them beside the filter maps, one file per network.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache
from typing import Any

import numpy as np
import scipy.sparse
import torch

SKETCH_DIM = 2048
SKETCH_SEED = 20190814  # fixed: descriptors must not depend on the run's seed
_SKETCHES: dict[int, scipy.sparse.csr_matrix] = {}
_UPPER: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}


def sketch_tables(channels: int) -> tuple[np.ndarray, np.ndarray]:
    """The count sketch of a [C, C] matrix's upper triangle (``np.triu_indices(C)`` order):
    entry ``i`` goes to bucket ``bucket[i]`` (int64 in 0..SKETCH_DIM-1) with sign ``sign[i]``
    (float32 ±1). Drawn from :data:`SKETCH_SEED`, so it is the same on every machine; the end
    model's artifact stores it (:mod:`goggles.training.model`)."""
    length = channels * (channels + 1) // 2
    rng = np.random.default_rng(SKETCH_SEED)
    bucket = rng.integers(0, SKETCH_DIM, size=length)
    sign = rng.choice(np.array([-1.0, 1.0], dtype=np.float32), size=length)
    return bucket, sign


def _sketch_matrix(channels: int) -> scipy.sparse.csr_matrix:
    """Count sketch of the upper triangle of a [C, C] matrix into SKETCH_DIM buckets: every entry
    goes to one bucket with a random sign, so inner products are preserved in expectation."""
    if channels not in _SKETCHES:
        bucket, sign = sketch_tables(channels)
        length = len(bucket)
        _SKETCHES[channels] = scipy.sparse.csr_matrix(
            (sign, (np.arange(length), bucket)), shape=(length, SKETCH_DIM), dtype=np.float32)
    return _SKETCHES[channels]


@cache
def _blas() -> Any:
    """threadpoolctl's controller of the BLAS numpy loaded (made once: it inspects the loaded
    libraries)."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def _upper_tables(channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat positions in a [C, C] matrix of its upper triangle (``np.triu_indices(C)`` order),
    int64 [L], and their weights (1 on the diagonal, sqrt(2) off it), float32 [L]."""
    if channels not in _UPPER:
        rows, cols = np.triu_indices(channels)
        _UPPER[channels] = (
            torch.from_numpy(rows * channels + cols),
            torch.from_numpy(np.where(rows == cols, 1.0, np.sqrt(2.0)).astype(np.float32)))
    return _UPPER[channels]


def bilinear_descriptors(maps: np.ndarray, chunk: int = 8) -> np.ndarray:
    """[n, SKETCH_DIM] float32 unit-length descriptors of filter maps [n, C, H, W].

    The [C, C] mean outer product of the position vectors (bilinear pooling), signed square root,
    upper triangle with off-diagonal entries weighted by sqrt(2) (so its inner products equal the
    full matrix's), count-sketched and scaled to unit length.

    Computed ``chunk`` images at a time in buffers reused across chunks (for C = 1280 one image's
    upper triangle is 820k values: larger chunks spend their time faulting in fresh pages), with
    the triangle gathered before the element-wise steps, which then touch half the matrix. Every
    step is the same IEEE float32 operation on the same values as the plain formula
    ``sign(g) * sqrt(|g|) * w`` with ``g = gram / (H W)``, only spread over torch's threads
    (gather, division, sign, product) or numpy's (the gram, by BLAS as before; ``sqrt``, which is
    correctly rounded in numpy and not in torch's CPU kernels): ``copysign`` of the root equals
    the product with the sign but for the sign of a zero, which no bucket's sum keeps, and
    non-negative maps (a CNN's, after ReLU) have a non-negative gram, which needs neither. So the
    descriptors are the bytes the plain formula gives, whatever ``chunk`` is
    (tests/unit/test_descriptors.py).

    The gram runs on one BLAS thread: OpenBLAS's idle threads spin after each call and took a
    core from the next batch's forward pass (a torch convolution right after a two-thread
    matmul ran 57 ms against 37 ms on this 2-core machine); one thread is also faster here and
    gives the same bytes (the test compares)."""
    n, channels, height, width = maps.shape
    flat, weight = _upper_tables(channels)
    sketch = _sketch_matrix(channels).T  # [SKETCH_DIM, L], CSC: sums each bucket in L order
    out = np.empty((n, SKETCH_DIM), dtype=np.float32)
    size = max(1, min(chunk, n))
    gram = np.empty((size, channels, channels), dtype=np.float32)
    values = torch.empty((size, len(flat)), dtype=torch.float32)
    root = torch.empty_like(values)
    with torch.inference_mode(), _blas().limit(limits=1, user_api="blas"):
        for start in range(0, n, size):
            x = np.asarray(maps[start:start + size], dtype=np.float32).reshape(
                -1, channels, height * width)
            k = len(x)
            np.matmul(x, x.transpose(0, 2, 1), out=gram[:k])
            g = values[:k]
            torch.index_select(torch.from_numpy(gram[:k].reshape(k, -1)), 1, flat, out=g)
            g.div_(float(height * width))
            if bool((x >= 0).all()):  # the gram too: its root needs no sign
                r = g
                np.sqrt(r.numpy(), out=r.numpy())
            else:
                r = torch.abs(g, out=root[:k])
                np.sqrt(r.numpy(), out=r.numpy())
                r.copysign_(g)
            r.mul_(weight)
            out[start:start + k] = np.asarray((sketch @ r.numpy().T).T)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.maximum(norms, 1e-12)


def descriptors_of(blocks: Iterable[np.ndarray]) -> np.ndarray:
    """Descriptors of filter maps given block by block (e.g. the stored extract shards)."""
    return np.concatenate([bilinear_descriptors(block) for block in blocks])
