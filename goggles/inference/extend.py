"""Graph EM's pass over the images beyond its sample, shard by shard.

Above ``max_rows`` images graph EM (:mod:`goggles.inference.graph_em`) fits on a seeded sample;
every other image takes the mean posterior of its ``neighbours`` nearest sampled images (by the
sum of the cosines of its parts: its row of A and its descriptors). What that pass needs of the
fit is small and fixed, :class:`SampleFit`: the sample's parts, posteriors, initial labels and
confidence (at 20,000 sampled images and 20,000 prototypes, about 1 GB: the parts are kept in
half precision). Each row's labels
depend on that state and on the row alone, so the rows can be labelled in any blocks, by any
number of tasks, each reading only its own rows of A and their descriptors
(:func:`label_block`), and the labels are the same however the rows are split.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from goggles.inference.views import nearest_references
from goggles.io import storage
from goggles.io.blocks import RowBlocks, sub_blocks


@dataclass
class SampleFit:
    """The fit's compact state, all the beyond-sample pass reads of it.

    Attributes
    ----------
    sample : [S] sorted indices of the sampled images among all N.
    parts : the sample's unit-length parts: [S, M] rows of A (quantised and normalised as in
        the fit, :func:`goggles.inference.graph_em.reference_parts`) and one [S, D] array per
        descriptor network, rounded to float16 (stored so; float32 in memory).
    posteriors : [S, K] the sample's posteriors.
    labels : [S] the sample's initial (k-means) labels.
    confidence : [S] the sample's confidence.
    neighbours : how many sampled neighbours each other image averages.
    """

    sample: np.ndarray
    parts: list[np.ndarray]
    posteriors: np.ndarray
    labels: np.ndarray
    confidence: np.ndarray
    neighbours: int

    def __post_init__(self) -> None:
        # the parts as half floats (held as float32): the state a shard task reads stays small
        # (20,000 x 20,000 entries: 0.8 GB), and every runner labels from the same values.
        # A float32 part is rounded in place, a block of rows at a time: no second copy.
        self.parts = [_half_rounded(part) for part in self.parts]

    @property
    def num_classes(self) -> int:
        return int(self.posteriors.shape[1])

    def save(self, uri: str) -> None:
        """Write the state as ``.npy`` files and a ``meta.json`` under folder ``uri``."""
        for name in ("sample", "posteriors", "labels", "confidence"):
            storage.write_npy(getattr(self, name), storage.join(uri, f"{name}.npy"))
        for i, part in enumerate(self.parts):
            storage.write_npy(part, storage.join(uri, f"part-{i}.npy"), dtype=np.float16)
        storage.write_json({"parts": len(self.parts), "neighbours": self.neighbours},
                           storage.join(uri, "meta.json"))

    @classmethod
    def load(cls, uri: str) -> SampleFit:
        """The state :meth:`save` wrote under ``uri``."""
        meta = storage.read_json(storage.join(uri, "meta.json"))
        arrays = {name: storage.read_npy(storage.join(uri, f"{name}.npy"))
                  for name in ("sample", "posteriors", "labels", "confidence")}
        parts = [storage.read_npy(storage.join(uri, f"part-{i}.npy"), dtype=np.float32)
                 for i in range(int(meta["parts"]))]
        return cls(parts=parts, neighbours=int(meta["neighbours"]), **arrays)


def _half_rounded(part: np.ndarray) -> np.ndarray:
    """``part`` rounded to float16 and held as float32 (in place when it is a writable float32
    array)."""
    if part.dtype != np.float32 or not part.flags.writeable or not part.flags.c_contiguous:
        return np.asarray(part, dtype=np.float16).astype(np.float32, order="C")
    for first in range(0, len(part), 1024):
        block = part[first:first + 1024]
        block[...] = block.astype(np.float16)
    return part


def label_block(fit: SampleFit, start: int, rows: np.ndarray,
                described: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Posteriors [n, K], initial labels [n] and confidence [n] of the images ``start`` ..
    ``start + n``: ``rows`` [n, M] their rows of A (raw), ``described`` their descriptors
    ([n, D] each). Sampled images keep the fit's; each other image takes the mean posterior
    of its nearest sampled images (whose top entry is its confidence: a neighbour vote) and the
    majority of their initial labels."""
    n = rows.shape[0]
    if any(len(d) != n for d in described):
        raise ValueError(f"the block has {n} rows of A but descriptors of "
                         f"{[len(d) for d in described]} images; pass the same images' rows")
    inside = np.flatnonzero((fit.sample >= start) & (fit.sample < start + n))
    local = fit.sample[inside] - start
    others = np.setdiff1d(np.arange(n), local)
    posteriors = np.empty((n, fit.num_classes))
    initial = np.empty(n, dtype=np.int64)
    if len(others):
        near = nearest_references(np.asarray(rows), [np.asarray(d) for d in described],
                                  fit.parts, fit.neighbours, index=others)
        posteriors[others] = fit.posteriors[near].mean(axis=1)
        votes = np.eye(fit.num_classes)[fit.labels][near].mean(axis=1)
        initial[others] = votes.argmax(axis=1)
    posteriors[local] = fit.posteriors[inside]
    initial[local] = fit.labels[inside]
    confidence = posteriors.max(axis=1)
    confidence[local] = fit.confidence[inside]
    return posteriors, initial, confidence


def label_all(fit: SampleFit, rows: RowBlocks, described: Sequence[np.ndarray],
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`label_block` over every block of ``rows`` (A's shards, streamed) and the images'
    descriptors [N, D]: posteriors [N, K], initial labels [N], confidence [N]."""
    n = rows.shape[0]
    posteriors = np.empty((n, fit.num_classes))
    initial = np.empty(n, dtype=np.int64)
    confidence = np.empty(n)
    for start, block in sub_blocks(rows):
        stop = start + block.shape[0]
        (posteriors[start:stop], initial[start:stop],
         confidence[start:stop]) = label_block(fit, start, block,
                                               [d[start:stop] for d in described])
    return posteriors, initial, confidence
