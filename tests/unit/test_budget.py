"""The prototype budget (goggles.features.budget)."""

from __future__ import annotations

import numpy as np

from goggles.features.budget import select_within_budget


def test_no_budget_keeps_everything() -> None:
    assert select_within_budget(30, 0).tolist() == list(range(30))
    assert select_within_budget(30, 30).tolist() == list(range(30))
    assert select_within_budget(30, 100).tolist() == list(range(30))


def test_a_seeded_sorted_sample_of_the_budget_size() -> None:
    kept = select_within_budget(1000, 150, seed=1)
    assert len(kept) == 150 and len(np.unique(kept)) == 150
    assert (np.diff(kept) > 0).all() and kept.min() >= 0 and kept.max() < 1000
    np.testing.assert_array_equal(kept, select_within_budget(1000, 150, seed=1))
    assert not np.array_equal(kept, select_within_budget(1000, 150, seed=2))


def test_classes_keep_proportional_shares() -> None:
    cls = np.r_[np.ones(3000, int), np.zeros(6000, int)]  # a third of the prototypes are class 1
    share = cls[select_within_budget(len(cls), 900, seed=3)].mean()
    assert abs(share - 1 / 3) < 0.05
