"""Affinity matrix: the GEMM-and-max equals the definition, in any block size and row range."""

from __future__ import annotations

import numpy as np
import pytest

from goggles.features.affinity import affinity_block, shard_bounds


def reference(maps: np.ndarray, prototypes: np.ndarray) -> np.ndarray:
    """A[i, j] = max_(h,w) cos(prototype_j, v_i(h, w)), straight from eq. 4-5."""
    n, c, h, w = maps.shape
    out = np.zeros((n, len(prototypes)))
    for i in range(n):
        vectors = maps[i].reshape(c, h * w).T
        for j, p in enumerate(prototypes):
            norms = np.linalg.norm(vectors, axis=1) * np.linalg.norm(p)
            cos = np.divide(vectors @ p, norms, out=np.zeros(len(vectors)), where=norms > 0)
            out[i, j] = cos.max()
    return out


@pytest.fixture
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    maps = np.maximum(rng.normal(size=(7, 16, 3, 4)), 0).astype(np.float32)
    maps[2] = 0.0  # an all-zero image
    prototypes = np.maximum(rng.normal(size=(11, 16)), 0).astype(np.float32)
    return maps, prototypes


def test_matches_definition(data: tuple[np.ndarray, np.ndarray]) -> None:
    maps, prototypes = data
    got = affinity_block(maps, prototypes)
    assert got.dtype == np.float32 and got.shape == (7, 11)
    np.testing.assert_allclose(got, reference(maps, prototypes), atol=1e-6)
    assert (got >= 0).all() and (got <= 1).all()
    assert (got[2] == 0).all()


def test_block_size_does_not_change_result(data: tuple[np.ndarray, np.ndarray]) -> None:
    maps, prototypes = data
    big = affinity_block(maps, prototypes, memory_mb=512)
    # a tiny budget forces one row and a few columns per block
    tiny = affinity_block(maps, prototypes, memory_mb=1)
    np.testing.assert_array_equal(big, tiny)


def test_row_ranges_tile_the_matrix(data: tuple[np.ndarray, np.ndarray]) -> None:
    maps, prototypes = data
    whole = affinity_block(maps, prototypes)
    parts = [affinity_block(maps[a:b], prototypes) for a, b in shard_bounds(len(maps), 3)]
    np.testing.assert_array_equal(np.concatenate(parts), whole)


def test_reduced_precision_is_close(data: tuple[np.ndarray, np.ndarray]) -> None:
    maps, prototypes = data
    exact = affinity_block(maps, prototypes)
    low = affinity_block(maps, prototypes, dtype="bfloat16")
    np.testing.assert_allclose(low, exact, atol=2e-2)


def test_shard_bounds() -> None:
    assert shard_bounds(10, 3) == [(0, 3), (3, 7), (7, 10)]
    assert shard_bounds(5, 1) == [(0, 5)]
    with pytest.raises(ValueError, match="exceeds"):
        shard_bounds(2, 3)
