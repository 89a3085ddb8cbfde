"""Hungarian cluster→class mapping, accuracy, recall, confusion, dev-set naming."""

from __future__ import annotations

import numpy as np
import pytest

from goggles.report.evaluation import best_mapping, evaluate, name_clusters


def test_permuted_clusters_score_perfectly() -> None:
    truth = ["a", "a", "b", "b", "c", "c"]
    predicted = np.array([2, 2, 0, 0, 1, 1])
    scores = evaluate(truth, predicted, 3, initial=np.array([0, 0, 1, 1, 2, 2]))
    assert scores["accuracy"] == 1.0
    assert scores["accuracy_kmeans"] == 1.0
    assert scores["cluster_to_class"] == {"cluster_0": "b", "cluster_1": "c", "cluster_2": "a"}
    assert scores["confusion"]["matrix"] == [[2, 0, 0], [0, 2, 0], [0, 0, 2]]


def test_errors_counted_after_mapping() -> None:
    truth = ["a"] * 4 + ["b"] * 4
    predicted = np.array([1, 1, 1, 0, 0, 0, 0, 1])
    scores = evaluate(truth, predicted, 2)
    assert scores["accuracy"] == 0.75
    assert scores["per_class_recall"] == {"a": 0.75, "b": 0.75}
    assert scores["confusion"]["matrix"] == [[3, 1], [1, 3]]


def test_more_clusters_than_classes_map_to_majority() -> None:
    mapping = best_mapping(np.array([0, 0, 1, 1, 1]), np.array([0, 0, 1, 2, 2]), 2, 3)
    assert mapping[0] == 0 and set(mapping) == {0, 1, 2}


def test_dev_set_names_clusters() -> None:
    names = name_clusters(["cat", "cat", "dog"], np.array([1, 1, 0]), 3)
    assert names == ["dog", "cat", "cluster_2"]


def test_calibration_of_perfect_confident_and_overconfident_labels() -> None:
    from goggles.report.evaluation import calibration

    truth = ["a", "a", "b", "b"]
    perfect = calibration(truth, np.array([[0.0, 1.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0]]))
    assert perfect == {"ece": 0.0, "brier": 0.0}  # clusters are matched to classes first
    # always 90% sure and right 3 times out of 4: ECE |0.9 - 0.75| = 0.15
    wrong = calibration(truth, np.array([[0.9, 0.1], [0.9, 0.1], [0.1, 0.9], [0.9, 0.1]]))
    assert wrong["ece"] == pytest.approx(0.15)
    assert wrong["brier"] == pytest.approx((3 * 0.02 + 2 * 0.81) / 4)
    # 75% sure and right 3 times out of 4: calibrated
    honest = calibration(truth, np.array([[0.75, 0.25], [0.75, 0.25], [0.25, 0.75],
                                          [0.75, 0.25]]))
    assert honest["ece"] == pytest.approx(0.0)
