"""Shared fixtures: the real cub-dev images (read in place, never copied)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

CUB_DEV = Path(os.environ.get("GOGGLES_CUB_DEV",
                              Path(__file__).resolve().parents[1].parent / "shared" / "data"
                              / "cub-dev"))


def cub_task(tmp_path: Path, *species_prefixes: str, limit: int | None = None) -> Path:
    """A source folder of symlinks to cub-dev species (ImageFolder layout), in ``tmp_path``.

    Skips the test when cub-dev is absent."""
    if not CUB_DEV.is_dir():
        pytest.skip(f"cub-dev not found at {CUB_DEV} (put ../shared beside the repository or "
                    "set GOGGLES_CUB_DEV)")
    source = tmp_path / "source"
    for prefix in species_prefixes:
        matches = sorted(p for p in CUB_DEV.iterdir() if p.name.startswith(prefix + "."))
        if not matches:
            pytest.skip(f"species {prefix} not in {CUB_DEV}")
        folder = source / matches[0].name
        folder.mkdir(parents=True)
        for image in sorted(matches[0].iterdir())[:limit]:
            (folder / image.name).symlink_to(image)
    return source


@pytest.fixture
def cub_pair(tmp_path: Path) -> Path:
    """Two well-separated species: Black-footed Albatross and Indigo Bunting (~120 images)."""
    return cub_task(tmp_path, "001", "014")


def dense_affinity(maps: np.ndarray, prototypes: np.ndarray) -> np.ndarray:
    """The affinity matrix straight from its definition (paper eqs. 4-5), vectorised in float64
    and independent of goggles: unit position vectors against unit prototypes, max over
    positions; a zero vector has cosine 0 with everything. [n, C, H, W], [M, C] -> [n, M]."""
    n, c, h, w = maps.shape
    vectors = maps.astype(np.float64).reshape(n, c, h * w).transpose(0, 2, 1)  # [n, HW, C]
    norms = np.linalg.norm(vectors, axis=2, keepdims=True)
    units = np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)
    protos = prototypes.astype(np.float64)
    lengths = np.linalg.norm(protos, axis=1, keepdims=True)
    protos = np.divide(protos, lengths, out=np.zeros_like(protos), where=lengths > 0)
    return (units @ protos.T).max(axis=1)  # type: ignore[no-any-return]
