"""The images as graph EM sees them: unit-length parts side by side (each image's row of A,
quantised and normalised, and each network's descriptor), so inner products are the graph's
summed cosines. Graph EM, its dev-label choice, the suggestions of images to label and the
labeler of new images read them here."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from goggles.inference.graph import top_k
from goggles.inference.likelihood import EXACT_SCALE, kmeans_rows
from goggles.io.blocks import RowBlocks, as_rows, sub_blocks

__all__ = ["EXTEND_ROWS", "as_described", "fit_sample", "graph_features", "graph_sample",
           "nearest_references", "reference_parts", "row_features"]

_NO_CELLS = np.zeros(0, dtype=np.int64)


def _unit_rows(block: np.ndarray) -> np.ndarray:
    # quantised like the k-means features, so the result does not depend on how A is sharded
    quantised = np.rint(block.astype(np.float64) * EXACT_SCALE) / EXACT_SCALE
    return kmeans_rows(quantised, None, _NO_CELLS, _NO_CELLS).astype(np.float32)


def as_described(descriptors: np.ndarray | Sequence[np.ndarray]) -> list[np.ndarray]:
    """The images' descriptors as graph EM reads them: a list of float32 [N, D] arrays."""
    return [np.asarray(d, dtype=np.float32) for d in (
        [descriptors] if isinstance(descriptors, np.ndarray) else descriptors)]


def _gather_rows(rows: RowBlocks, sample: np.ndarray) -> np.ndarray:
    out = np.empty((len(sample), rows.shape[1]), dtype=np.float32)
    for start, block in sub_blocks(rows):
        inside = np.flatnonzero((sample >= start) & (sample < start + block.shape[0]))
        if len(inside):
            out[inside] = _unit_rows(block[sample[inside] - start])
    return out


def graph_sample(n: int, max_rows: int, rng: np.random.Generator) -> np.ndarray:
    """The images graph EM builds its graph on: all ``n``, or above ``max_rows`` a sorted
    uniform sample drawn from ``rng`` (the fit's first draw, so ``default_rng(random_state)``
    gives it again)."""
    if n <= max_rows:
        return np.arange(n)
    return np.sort(rng.choice(n, size=max_rows, replace=False))


def fit_sample(n: int, max_rows: int, random_state: int,
               kept: np.ndarray | None = None) -> np.ndarray:
    """The images graph EM fits on: :func:`graph_sample` of ``default_rng(random_state)``, with
    the rows ``kept`` (the dev-labeled images) always in it. It depends on ``n`` and the dev rows
    alone, so a cluster run's plan task draws it before any row of A exists."""
    sample = graph_sample(n, max_rows, np.random.default_rng(random_state))
    return sample if kept is None else np.union1d(sample, np.asarray(kept, dtype=np.int64))


def reference_parts(rows: RowBlocks, described: Sequence[np.ndarray],
                    sample: np.ndarray) -> list[np.ndarray]:
    """The unit-length parts of the graph's images ``sample``: their rows of A (quantised and
    normalised as in the fit) and their descriptors."""
    return [_gather_rows(rows, sample)] + [np.asarray(d, dtype=np.float32)[sample]
                                           for d in described]


def graph_features(rows: RowBlocks, described: Sequence[np.ndarray],
                   index: np.ndarray) -> np.ndarray:
    """[len(index), D] the images ``index`` as graph EM sees them: their unit-length parts (row
    of A, each descriptor) side by side, so inner products are the graph's summed cosines."""
    return np.concatenate(reference_parts(rows, described, np.asarray(index)), axis=1)


def row_features(rows: RowBlocks, described: Sequence[np.ndarray]
                 ) -> Iterator[tuple[int, np.ndarray]]:
    """Every image's :func:`graph_features`, block by block (one pass over A)."""
    for start, block in sub_blocks(rows):
        stop = start + block.shape[0]
        yield start, graph_features(as_rows(block), [d[start:stop] for d in described],
                                    np.arange(stop - start))


EXTEND_ROWS = 1024


def nearest_references(rows: np.ndarray, described: Sequence[np.ndarray],
                       parts: Sequence[np.ndarray], neighbours: int,
                       index: np.ndarray | None = None) -> np.ndarray:
    """[n, k] indices into the graph's images of the ``neighbours`` most similar to each of
    ``n`` other images, by the sum of the parts' cosines: ``rows`` [n, M] are their rows of A
    (raw), ``described`` their descriptors, ``parts`` :func:`reference_parts`. With ``index``
    the images are those rows of ``rows`` and ``described`` alone (taken 1,024 at a time: no
    copy of them all)."""
    take = np.arange(rows.shape[0]) if index is None else np.asarray(index, dtype=np.int64)
    near = np.empty((len(take), min(neighbours, len(parts[0]))), dtype=np.int64)
    for first in range(0, len(take), EXTEND_ROWS):  # bounds the [rows, sample] sort
        chunk = take[first:first + EXTEND_ROWS]
        similarity = _unit_rows(np.asarray(rows[chunk])) @ parts[0].T
        for d, part in zip(described, parts[1:], strict=True):
            similarity += np.asarray(d[chunk], dtype=np.float32) @ part.T
        near[first:first + len(similarity)] = top_k(similarity, near.shape[1])[0]
    return near
