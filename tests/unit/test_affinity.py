"""Affinity matrix: the GEMM-and-max equals the definition, in any block size and row range."""

from __future__ import annotations

import numpy as np
import pytest

from goggles.features.affinity import affinity_block, block_shape, shard_bounds
from tests.conftest import dense_affinity


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


def blocked_data() -> tuple[np.ndarray, np.ndarray]:
    """64x64 maps: with a 1 MiB budget, one image per block and several prototype blocks."""
    rng = np.random.default_rng(3)
    maps = np.maximum(rng.normal(size=(4, 16, 64, 64)), 0).astype(np.float32)
    maps[1] = 0.0  # an all-zero image
    maps[2, :, :32] = 0.0  # zero positions
    prototypes = np.maximum(rng.normal(size=(150, 16)), 0).astype(np.float32)
    return maps, prototypes


def test_block_size_does_not_change_result() -> None:
    maps, prototypes = blocked_data()
    assert block_shape(4, 150, 64 * 64, 16, 4, 64 * 2**20) == (4, 150)  # one block
    whole = affinity_block(maps, prototypes, memory_mb=64)
    blocked = affinity_block(maps, prototypes, memory_mb=1)
    np.testing.assert_allclose(blocked, whole, atol=1e-6, rtol=0)


@pytest.mark.parametrize(("dtype", "atol"), [("float32", 1e-5), ("bfloat16", 2e-2)])
def test_many_row_and_column_blocks_match_a_dense_reference(dtype: str, atol: float) -> None:
    """A 1 MiB budget with 64x64 maps forces one image per block and several prototype blocks
    (the last one partial): every block must land at its own rows and columns."""
    maps, prototypes = blocked_data()
    element = 4 if dtype == "float32" else 2
    rows, cols = block_shape(4, 150, 64 * 64, 16, element, 2**20)
    assert rows < 4 and cols < 150 and 150 % cols, (rows, cols)  # several, uneven blocks
    got = affinity_block(maps, prototypes, memory_mb=1, dtype=dtype)
    expected = dense_affinity(maps, prototypes)
    assert got.shape == (4, 150)
    np.testing.assert_allclose(got, expected, atol=atol, rtol=0)
    assert (got[1] == 0).all()


@pytest.mark.parametrize(("n", "m"), [(1, 11), (7, 1), (1, 1)])
def test_one_image_or_one_prototype(data: tuple[np.ndarray, np.ndarray], n: int, m: int) -> None:
    maps, prototypes = data
    got = affinity_block(maps[:n], prototypes[:m])
    assert got.shape == (n, m)
    np.testing.assert_allclose(got, dense_affinity(maps[:n], prototypes[:m]), atol=1e-6)


def test_no_images_or_no_prototypes(data: tuple[np.ndarray, np.ndarray]) -> None:
    maps, prototypes = data
    assert affinity_block(maps[:0], prototypes).shape == (0, 11)
    assert affinity_block(maps, prototypes[:0]).shape == (7, 0)


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
    assert shard_bounds(3, 3) == [(0, 1), (1, 2), (2, 3)]
    assert shard_bounds(0, 1) == [(0, 0)]
    with pytest.raises(ValueError, match="exceeds"):
        shard_bounds(2, 3)
    with pytest.raises(ValueError, match="num_shards must be at least 1, got 0"):
        shard_bounds(5, 0)


def test_block_shape_under_a_budget_smaller_than_one_row_is_one_by_one() -> None:
    assert block_shape(10, 20, 49, 512, 4, 1024) == (1, 1)
    assert block_shape(10, 20, 49, 512, 4, 1) == (1, 1)
    assert block_shape(0, 0, 49, 512, 4, 2**30) == (1, 1)
    # columns first: the whole budget's columns, then as many rows as fit
    budget = 4 * 49 * (20 + 512) * 3
    assert block_shape(10, 20, 49, 512, 4, budget) == (3, 20)
    assert block_shape(10, 20, 49, 512, 4, budget - 4) == (2, 20)
