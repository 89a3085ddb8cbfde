"""Bilinear descriptors: the buffered, gather-first computation gives the very bytes of the plain
formula (stored features and labels must not change when it is made faster)."""

from __future__ import annotations

import numpy as np
import pytest

from goggles.features import descriptors


def plain_descriptors(maps: np.ndarray, chunk: int = 32) -> np.ndarray:
    """The formula as first written (goggles 0.x up to issue 27): whole gram, divided,
    fancy-indexed, sign times root, 32 images at a time."""
    n, channels, height, width = maps.shape
    upper = np.triu_indices(channels)
    weight = np.where(upper[0] == upper[1], 1.0, np.sqrt(2.0)).astype(np.float32)
    sketch = descriptors._sketch_matrix(channels)
    out = np.empty((n, descriptors.SKETCH_DIM), dtype=np.float32)
    for start in range(0, n, chunk):
        x = np.asarray(maps[start:start + chunk], dtype=np.float32).reshape(-1, channels,
                                                                            height * width)
        gram = np.matmul(x, x.transpose(0, 2, 1)) / np.float32(height * width)
        values = gram[:, upper[0], upper[1]]
        values = np.sign(values) * np.sqrt(np.abs(values)) * weight
        out[start:start + len(x)] = np.asarray((sketch.T @ values.T).T)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.maximum(norms, 1e-12)


def maps_of(kind: str, n: int, channels: int, side: int) -> np.ndarray:
    rng = np.random.default_rng(7)
    maps = rng.standard_normal((n, channels, side, side), dtype=np.float32)
    if kind == "relu":  # a CNN's maps: non-negative, many exact zeros
        maps = np.maximum(maps, 0) * rng.gamma(2.0, size=(n, channels, 1, 1)).astype(np.float32)
    else:  # a transformer's patch tokens: signed, with zero and negative-zero channels
        maps[:, :3] = 0.0
        maps[0, 5] = -0.0
    return maps


@pytest.mark.parametrize("kind", ["relu", "signed"])
@pytest.mark.parametrize("chunk", [1, 3, 8, 32])
def test_same_bytes_as_the_plain_formula(kind: str, chunk: int) -> None:
    maps = maps_of(kind, 37, 96, 5)
    got = descriptors.bilinear_descriptors(maps, chunk=chunk)
    assert got.dtype == np.float32 and got.shape == (37, descriptors.SKETCH_DIM)
    assert got.tobytes() == plain_descriptors(maps).tobytes()


def test_same_bytes_for_mobilenet_sized_maps() -> None:
    maps = maps_of("relu", 3, 1280, 7)
    assert descriptors.bilinear_descriptors(maps).tobytes() == plain_descriptors(maps).tobytes()


def test_unit_length_and_all_zero_maps() -> None:
    maps = maps_of("relu", 4, 32, 4)
    maps[2] = 0.0
    got = descriptors.bilinear_descriptors(maps)
    norms = np.linalg.norm(got, axis=1)
    np.testing.assert_allclose(norms[[0, 1, 3]], 1.0, rtol=1e-5)
    assert not got[2].any()
