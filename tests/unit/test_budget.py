"""The prototype budget (goggles.features.budget)."""

from __future__ import annotations

import numpy as np
import pytest

from goggles.features.budget import (
    AUTO,
    AUTO_CEILING,
    Budget,
    auto_cap,
    candidate_keys,
    part_share,
    prototype_budget,
    select_within_budget,
)
from goggles.parameters import default


def _keys(count: int, seed: int = 0) -> np.ndarray:
    """Keys of ``count`` candidates: 5 positions in each of count/5 images."""
    image = np.arange(count) // 5
    return candidate_keys(image, np.arange(count) % 5, np.zeros(count, int), seed=seed)


def test_no_budget_keeps_everything() -> None:
    assert select_within_budget(_keys(30), 0).tolist() == list(range(30))
    assert select_within_budget(_keys(30), 30).tolist() == list(range(30))
    assert select_within_budget(_keys(30), 100).tolist() == list(range(30))


def test_a_seeded_sorted_sample_of_the_budget_size() -> None:
    kept = select_within_budget(_keys(1000, seed=1), 150)
    assert len(kept) == 150 and len(np.unique(kept)) == 150
    assert (np.diff(kept) > 0).all() and kept.min() >= 0 and kept.max() < 1000
    np.testing.assert_array_equal(kept, select_within_budget(_keys(1000, seed=1), 150))
    assert not np.array_equal(kept, select_within_budget(_keys(1000, seed=2), 150))


def test_keys_are_uniform_and_do_not_depend_on_the_sharding() -> None:
    """A candidate's key is a hash of its image and position: the same in any part; the keys
    are uniform in [0, 1), so the smallest ones are a uniform sample."""
    keys = _keys(20000)
    assert keys.min() >= 0 and keys.max() < 1 and len(np.unique(keys)) == 20000
    assert abs(keys.mean() - 0.5) < 0.01 and abs((keys < 0.25).mean() - 0.25) < 0.01
    image = np.arange(20000) // 5
    part = candidate_keys(image[7000:9000], np.arange(7000, 9000) % 5, np.zeros(2000, int))
    np.testing.assert_array_equal(part, keys[7000:9000])
    # the cap chosen from the parts' kept candidates is the cap chosen from all of them
    cap, share = 600, part_share(600, 4000, 5)
    kept = np.flatnonzero(keys < share)
    assert share < 1 and len(kept) >= cap
    np.testing.assert_array_equal(kept[select_within_budget(keys[kept], cap)],
                                  select_within_budget(keys, cap))
    assert part_share(0, 4000, 5) == 1.0 and part_share(10_000, 1000, 5) == 1.0


def test_classes_keep_proportional_shares() -> None:
    cls = np.r_[np.ones(3000, int), np.zeros(6000, int)]  # a third of the prototypes are class 1
    share = cls[select_within_budget(_keys(len(cls), seed=3), 900)].mean()
    assert abs(share - 1 / 3) < 0.05


def test_the_default_cap_never_binds_up_to_2000_images() -> None:
    """At the default top_k=5 a task of N ≤ 2,000 images finds at most 5·N ≤ 10,000
    prototypes: the automatic cap keeps them all (every cub-dev task keeps its accuracy)."""
    assert default("max_prototypes") == AUTO
    for n in (10, 300, 2000):
        for k in (2, 5, 50):
            budget = prototype_budget(AUTO, n, k)
            assert budget.cap >= 5 * n, (n, k)
            assert len(select_within_budget(_keys(5 * n), budget.cap)) == 5 * n


def test_the_default_cap_follows_n_up_to_its_ceiling_and_grows_with_k() -> None:
    assert prototype_budget(AUTO, 15_000, 2).cap == 15_000  # one per image
    assert prototype_budget(AUTO, 1_000_000, 2).cap == AUTO_CEILING == 20_000
    assert prototype_budget(AUTO, 1_000_000, 20).cap == 40_000  # 2,000 per class
    assert prototype_budget(AUTO, 100, 8).cap == 16_000
    assert auto_cap(3_000, 2) == 10_000
    assert "N=15,000" in prototype_budget(AUTO, 15_000, 2).rule
    assert "floor" in prototype_budget(AUTO, 100, 2).rule


def test_an_explicit_cap_or_none_overrides_the_rule() -> None:
    assert prototype_budget(0, 1_000_000, 2) == Budget(0, 0, prototype_budget(0, 1, 2).rule)
    assert prototype_budget(500, 1_000_000, 2).cap == 500
    assert prototype_budget(500, 10, 2).requested == 500
    with pytest.raises(ValueError, match="max_prototypes must be"):
        prototype_budget(-2, 10, 2)
