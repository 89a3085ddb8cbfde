"""The prototype budget: at most ``max_prototypes`` columns of A, a seeded uniform sample.

A is N x M with M ≤ top_k·N, so its cost grows with N². Past a few ten thousand images the number
of prototypes is capped by keeping a uniform random sample of them (seeded, in their original
order). Each class keeps, in expectation, a share of the columns proportional to its prototypes,
and the cost is O(M), unlike farthest-point or k-means++ seeding (O(M·budget·C)).

Measured on cub-dev (``benchmarks/budget.py``, README) against a stratified rule that keeps every
image's strongest prototype first: the strongest prototypes are the most generic ones (the same
high-activation channels fire on every bird), and the stratified rule lost 6-9 points of EM
accuracy on 3-5-class tasks where the uniform sample lost 0-3.

The cap is on by default (``max_prototypes=-1``, :data:`AUTO`) and chosen from the number of
images N and of classes K by :func:`prototype_budget`; ``0`` asks for no cap and a positive value
for that cap.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

AUTO = -1
"""``max_prototypes`` value that asks :func:`prototype_budget` to choose the cap (the default)."""
AUTO_FLOOR = 10_000
"""The automatic cap is never below this: top_k·N ≤ 10,000 prototypes for N ≤ 2,000 images at
the default top_k=5, so the cap never binds on such tasks (every cub-dev task: their accuracy is
that of no cap)."""
AUTO_PER_CLASS = 2_000
"""... nor below this many prototypes per class, so each class keeps about 2,000 columns in
expectation however many classes there are."""
AUTO_CEILING = 20_000
"""Above the floors the cap is N (one column per image: docs/scale.md's budget curve, column
``N``, matches all the columns: binary 1.0000 vs 1.0000, 3-5 classes 0.9865 vs 0.9839, same-family
pairs 0.8766 vs 0.8858), up to this ceiling: docs/scale.md's 1M-image projection, A at 1M images
is 80 GB in all but 625 MB per shard over 128 shards (``goggles plan``)."""


@dataclass(frozen=True)
class Budget:
    """The prototype cap a run uses and why (``metrics.json``'s ``prototype_budget``).

    Attributes
    ----------
    requested : ``max_prototypes`` as given (:data:`AUTO`, 0 or a cap).
    cap : the cap applied (0: none).
    rule : why, in words.
    """

    requested: int
    cap: int
    rule: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def auto_cap(n_images: int, num_classes: int) -> int:
    """The default cap: ``max(AUTO_FLOOR, AUTO_PER_CLASS·K, min(N, AUTO_CEILING))``."""
    return max(AUTO_FLOOR, AUTO_PER_CLASS * num_classes, min(n_images, AUTO_CEILING))


def prototype_budget(requested: int, n_images: int, num_classes: int) -> Budget:
    """The cap for ``max_prototypes=requested`` at ``n_images`` images and ``num_classes``
    classes: ``requested`` itself unless it is :data:`AUTO`, then :func:`auto_cap`."""
    if requested == 0:
        return Budget(0, 0, "max_prototypes=0: no cap, every prototype found is a column of A")
    if requested > 0:
        return Budget(requested, requested, f"max_prototypes={requested} as given")
    if requested != AUTO:
        raise ValueError(f"max_prototypes must be {AUTO} (automatic), 0 (no cap) or a cap, got "
                         f"{requested}")
    cap = auto_cap(n_images, num_classes)
    floor = max(AUTO_FLOOR, AUTO_PER_CLASS * num_classes)
    why = (f"N={n_images:,} images (one prototype per image), at most {AUTO_CEILING:,}"
           if cap > floor else
           f"the floor max({AUTO_FLOOR:,}, {AUTO_PER_CLASS:,} per class x K={num_classes})")
    return Budget(AUTO, cap, f"automatic (max_prototypes={AUTO}): {cap:,} from {why}; "
                             "docs/scale.md, 'Large datasets'")


OVERSAMPLE = 4.0
"""A part keeps about this many times its share of the cap (:func:`part_share`), so the gather
has enough candidates to choose the cap from while reading a few times the cap, not every
candidate of every image."""


def candidate_keys(image_id: np.ndarray, h: np.ndarray, w: np.ndarray, *,
                   seed: int = 0) -> np.ndarray:
    """[P] a uniform key in [0, 1) per candidate prototype, a hash of its image, its position
    and ``seed`` (splitmix64): the same candidate gets the same key whichever part or task
    holds it, so choosing by key does not depend on how the images are sharded."""
    with np.errstate(over="ignore"):
        x: np.ndarray = ((np.asarray(image_id, dtype=np.uint64) << np.uint64(20))
             ^ (np.asarray(h, dtype=np.uint64) << np.uint64(10))
             ^ np.asarray(w, dtype=np.uint64))
        x = x + np.uint64(0x9E3779B97F4A7C15) * np.uint64(seed + 1)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) / float(2 ** 53)


def part_share(cap: int, n_images: int, top_k: int) -> float:
    """The key below which an extraction part keeps a candidate: 1 (all) without a cap or
    when ``OVERSAMPLE·cap`` covers ``top_k`` candidates per image, else that share of them."""
    if cap <= 0:
        return 1.0
    return min(1.0, OVERSAMPLE * cap / (max(top_k, 1) * max(n_images, 1)))


def select_within_budget(keys: np.ndarray, max_prototypes: int) -> np.ndarray:
    """Sorted indices of the prototypes kept under ``max_prototypes`` (0 keeps all): those of
    the smallest :func:`candidate_keys`, a uniform sample that does not depend on the order or
    the sharding of the candidates.

    Parameters
    ----------
    keys : [M] the candidates' keys.
    max_prototypes : the budget (a resolved cap, :func:`prototype_budget`); ``0`` or less
        means no budget.
    """
    keys = np.asarray(keys, dtype=np.float64)
    if max_prototypes <= 0 or len(keys) <= max_prototypes:
        return np.arange(len(keys), dtype=np.int64)
    # ties (equal keys: never for distinct candidates) are broken by index, stably
    chosen = np.argsort(keys, kind="stable")[:max_prototypes]
    return np.sort(chosen).astype(np.int64)
