"""Row blocks of the affinity matrix A, in memory or streamed from stored shards.

Inference never needs all of A at once: every EM step is a pass over row blocks. A block source
yields ``(start_row, block)`` pairs, ``block`` an [n, M] float32 array of rows
``start_row .. start_row+n-1``, in row order, tiling all N rows: :class:`InMemoryRows` for an
array, :class:`goggles.io.artifacts.StoredShards` for the affinity stage's shards.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np

# Rows of one working block are chosen so that a [rows, M] float64 temporary stays near this.
WORKING_BYTES = 64 * 2**20


class RowBlocks(Protocol):
    """A source of the rows of A, one block at a time."""

    @property
    def shape(self) -> tuple[int, int]: ...

    def blocks(self) -> Iterator[tuple[int, np.ndarray]]: ...


def working_rows(num_columns: int, budget_bytes: int = WORKING_BYTES) -> int:
    """Rows per working block so that an [rows, M] float64 array fits ``budget_bytes``."""
    return max(1, budget_bytes // (8 * max(num_columns, 1)))


def sub_blocks(source: RowBlocks) -> Iterator[tuple[int, np.ndarray]]:
    """The blocks of ``source`` cut into working-size pieces (memory stays bounded whatever the
    shard size)."""
    step = working_rows(source.shape[1])
    for start, block in source.blocks():
        for offset in range(0, block.shape[0], step):
            yield start + offset, block[offset:offset + step]


@dataclass
class InMemoryRows:
    """An [N, M] array held in memory, served as blocks."""

    matrix: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.matrix.shape[0]), int(self.matrix.shape[1]))

    def blocks(self) -> Iterator[tuple[int, np.ndarray]]:
        yield 0, self.matrix


@dataclass
class SampleRows:
    """The rows ``index`` (sorted, distinct) of a block source, served as their own [S, M]
    matrix in that order and streamed: one pass over ``source`` per pass over them."""

    source: RowBlocks
    index: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.index), self.source.shape[1])

    def blocks(self) -> Iterator[tuple[int, np.ndarray]]:
        index = np.asarray(self.index, dtype=np.int64)
        done = 0
        for start, block in self.source.blocks():
            stop = int(np.searchsorted(index, start + block.shape[0]))
            if stop > done:
                yield done, np.asarray(block[index[done:stop] - start])
                done = stop
        if done != len(index):
            raise ValueError(f"rows {index[done:done + 3].tolist()}... are not among the "
                             f"{self.source.shape[0]} rows of the source")


def as_rows(affinity: np.ndarray | RowBlocks) -> RowBlocks:
    """A as row blocks: an [N, M] array is wrapped, a block source passes through."""
    if isinstance(affinity, np.ndarray) or not hasattr(affinity, "blocks"):
        matrix = np.asarray(affinity)
        if matrix.ndim != 2:
            raise ValueError(f"affinity must be a 2-D [N, M] matrix, got shape {matrix.shape}")
        return InMemoryRows(matrix)
    return affinity  # type: ignore[return-value]
