"""The prototype budget: at most ``max_prototypes`` columns of A, chosen by a stratified rule.

A is N x M with M ≤ top_k·N, so its cost grows with N². Past a few ten thousand images the number
of prototypes is capped. The rule, stratified by source image and by rank:

1. every image's prototypes are ranked as extracted (rank 0 comes from the channel with the highest
   global max, rank 1 from the next distinct position, ...);
2. whole ranks are kept while they fit: all rank-0 prototypes, then all rank-1, ...;
3. the first rank that does not fit is sampled uniformly at random (seeded) to fill the budget.

So every image keeps its strongest prototype whenever the budget is at least N, and each class
keeps a share of the columns proportional to its number of images: no class can lose its
prototypes to another. It costs O(M), unlike farthest-point or k-means++ seeding (O(M·budget·C)).
The accuracy cost on cub-dev is measured by ``benchmarks/budget.py`` (see README).
"""

from __future__ import annotations

import numpy as np


def prototype_ranks(image_id: np.ndarray) -> np.ndarray:
    """Rank of each prototype within its image, in extraction order ([M] int)."""
    image_id = np.asarray(image_id, dtype=np.int64)
    if len(image_id) == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(image_id, kind="stable")
    sorted_ids = image_id[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_ids)) + 1]
    position = np.arange(len(sorted_ids)) - np.repeat(starts, np.diff(np.r_[starts,
                                                                           len(sorted_ids)]))
    ranks = np.empty_like(position)
    ranks[order] = position
    return ranks


def select_within_budget(image_id: np.ndarray, max_prototypes: int, *, seed: int = 0,
                         ) -> np.ndarray:
    """Indices (sorted) of the prototypes kept under ``max_prototypes`` (0 keeps all).

    Parameters
    ----------
    image_id : [M] source image of each prototype, prototypes of one image in rank order.
    max_prototypes : the budget; ``0`` means no budget.
    seed : seed of the sampling within the last, partially kept rank.
    """
    m = len(image_id)
    if max_prototypes <= 0 or m <= max_prototypes:
        return np.arange(m, dtype=np.int64)
    ranks = prototype_ranks(image_id)
    per_rank = np.bincount(ranks)
    cumulative = np.cumsum(per_rank)
    full = int(np.searchsorted(cumulative, max_prototypes, side="right"))  # ranks kept whole
    kept = np.flatnonzero(ranks < full)
    room = max_prototypes - len(kept)
    if room > 0:
        candidates = np.flatnonzero(ranks == full)
        chosen = np.random.default_rng(seed).choice(candidates, size=room, replace=False)
        kept = np.concatenate([kept, chosen])
    return np.sort(kept)
