"""Second-order descriptors of filter maps, for graph EM (:mod:`goggles.inference.graph_em`).

Signed-sqrt bilinear pooling (Lin et al. 2015) of an image's filter map: the [C, C] mean outer
product of its position vectors, which sees which parts co-occur where the affinity matrix sees
only the best match of each prototype; count-sketched (Charikar et al. 2002) to
:data:`SKETCH_DIM` dimensions so inner products are kept in expectation. The extract stage
writes them beside the filter maps, one file per network.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import scipy.sparse

SKETCH_DIM = 2048
SKETCH_SEED = 20190814  # fixed: descriptors must not depend on the run's seed
_SKETCHES: dict[int, scipy.sparse.csr_matrix] = {}


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


def bilinear_descriptors(maps: np.ndarray, chunk: int = 32) -> np.ndarray:
    """[n, SKETCH_DIM] float32 unit-length descriptors of filter maps [n, C, H, W].

    The [C, C] mean outer product of the position vectors (bilinear pooling), signed square root,
    upper triangle with off-diagonal entries weighted by sqrt(2) (so its inner products equal the
    full matrix's), count-sketched and scaled to unit length."""
    n, channels, height, width = maps.shape
    upper = np.triu_indices(channels)
    weight = np.where(upper[0] == upper[1], 1.0, np.sqrt(2.0)).astype(np.float32)
    sketch = _sketch_matrix(channels)
    out = np.empty((n, SKETCH_DIM), dtype=np.float32)
    for start in range(0, n, chunk):
        x = np.asarray(maps[start:start + chunk], dtype=np.float32).reshape(-1, channels,
                                                                            height * width)
        gram = np.matmul(x, x.transpose(0, 2, 1)) / np.float32(height * width)
        values = gram[:, upper[0], upper[1]]
        values = np.sign(values) * np.sqrt(np.abs(values)) * weight
        out[start:start + len(x)] = np.asarray((sketch.T @ values.T).T)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.maximum(norms, 1e-12)


def descriptors_of(blocks: Iterable[np.ndarray]) -> np.ndarray:
    """Descriptors of filter maps given block by block (e.g. the stored extract shards)."""
    return np.concatenate([bilinear_descriptors(block) for block in blocks])
