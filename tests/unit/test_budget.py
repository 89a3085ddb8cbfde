"""The prototype budget's stratified rule (goggles.budget)."""

from __future__ import annotations

import numpy as np

from goggles.budget import prototype_ranks, select_within_budget


def test_ranks_count_within_each_image_in_extraction_order() -> None:
    assert prototype_ranks(np.array([0, 0, 0, 1, 2, 2])).tolist() == [0, 1, 2, 0, 0, 1]
    assert prototype_ranks(np.array([3, 1, 3, 1])).tolist() == [0, 0, 1, 1]


def test_no_budget_keeps_everything() -> None:
    ids = np.repeat(np.arange(10), 3)
    assert select_within_budget(ids, 0).tolist() == list(range(30))
    assert select_within_budget(ids, 30).tolist() == list(range(30))


def test_whole_ranks_first_then_a_seeded_sample_of_the_next() -> None:
    ids = np.repeat(np.arange(10), 3)  # 10 images, 3 prototypes each
    kept = select_within_budget(ids, 15, seed=1)
    assert len(kept) == 15 and len(set(kept.tolist())) == 15
    ranks = prototype_ranks(ids)[kept]
    assert (ranks == 0).sum() == 10  # every image keeps its strongest prototype
    assert (ranks == 1).sum() == 5 and (ranks == 2).sum() == 0
    np.testing.assert_array_equal(kept, select_within_budget(ids, 15, seed=1))
    assert not np.array_equal(kept, select_within_budget(ids, 15, seed=2))


def test_budget_below_the_image_count_samples_strongest_prototypes() -> None:
    ids = np.repeat(np.arange(100), 2)
    kept = select_within_budget(ids, 40, seed=0)
    assert len(kept) == 40
    assert (prototype_ranks(ids)[kept] == 0).all()
    assert len(np.unique(ids[kept])) == 40


def test_classes_keep_proportional_shares() -> None:
    rng = np.random.default_rng(0)
    counts = rng.integers(1, 6, size=300)
    ids = np.repeat(np.arange(300), counts)
    cls = (np.arange(300) < 100).astype(int)  # class 1: the first 100 images
    kept = select_within_budget(ids, 450, seed=3)
    share = cls[ids[kept]].mean()
    assert abs(share - 1 / 3) < 0.05
