"""The dev-label choice's parts (goggles.inference.dev_choice) on inputs whose answer is known
by hand: the folds, the Brier score and the cross-validated choice."""

from __future__ import annotations

import numpy as np

from goggles.inference.dev_choice import brier, choose, seed_folds
from goggles.inference.seeds import Seeds


def test_two_seeds_per_class_make_two_folds_in_row_order() -> None:
    seeds = Seeds(np.array([9, 2, 7, 4]), np.array([0, 0, 1, 1]), ("a", "b"))
    folds = seed_folds(seeds, 2)
    assert folds is not None
    # within a class, folds follow the rows' order, not the order the seeds were given in
    assert folds.tolist() == [1, 0, 1, 0]
    assert seed_folds(Seeds(np.array([1, 2, 3]), np.array([0, 0, 1]), ("a", "b")), 2) is None


def test_brier_takes_lists() -> None:
    assert brier([[1.0, 0.0], [0.5, 0.5]], np.array([0, 1])) == 0.5  # type: ignore[arg-type]


def test_choose_holds_out_every_fold_and_prefers_the_better_predictor() -> None:
    """Features that separate the classes perfectly against a graph EM that is unsure of
    every image: the classifier wins, on every one of the folds."""
    rows = np.arange(12)
    classes = np.repeat([0, 1], 6)
    seeds = Seeds(rows, classes, ("a", "b"))
    features = np.c_[np.where(classes == 0, -3.0, 3.0), np.linspace(-1, 1, 12)]
    calls = []

    def unsure(subset: Seeds) -> np.ndarray:
        calls.append(len(subset.rows))
        return np.full((12, 2), 0.5)

    record = choose(unsure, features, seeds, 2)
    assert record is not None and record["chosen"] == "classifier"
    assert record["folds"] == 5 and len(calls) == 5  # MAX_FOLDS: each fold held out once
    assert sum(12 - c for c in calls) == 12  # every seed held out exactly once
    scores = record["held_out_brier"]
    assert scores["graph-em"] == 0.5
    assert scores["classifier"] < 0.1
    assert all(round(v, 6) == v for v in scores.values())
    assert "temperature" in record
