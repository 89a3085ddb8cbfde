"""Hungarian cluster→class mapping, accuracy, recall, confusion, dev-set naming."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from goggles.report.evaluation import (
    THRESHOLDS,
    best_mapping,
    cluster_classes,
    coverage_curve,
    dev_set_metrics,
    evaluate,
    name_clusters,
)


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


def contested() -> tuple[list[str], np.ndarray]:
    """Cluster 1 holds 4 a's and 3 b's: its majority is a, already cluster 0's class.

    confusion (rows a, b, c; columns clusters 0, 1, 2) = [[5, 4, 0], [0, 3, 1], [0, 0, 4]]
    """
    pairs = [("a", 0)] * 5 + [("a", 1)] * 4 + [("b", 1)] * 3 + [("b", 2)] + [("c", 2)] * 4
    return [t for t, _ in pairs], np.array([p for _, p in pairs])


def test_mapping_is_one_to_one_where_a_majority_vote_is_not() -> None:
    truth, predicted = contested()
    index = {"a": 0, "b": 1, "c": 2}
    mapping = best_mapping(np.array([index[t] for t in truth]), predicted, 3, 3)
    assert mapping == {0: 0, 1: 1, 2: 2}  # a majority vote would give {0: 0, 1: 0, 2: 2}
    scores = evaluate(truth, predicted, 3)
    assert scores["cluster_to_class"] == {"cluster_0": "a", "cluster_1": "b", "cluster_2": "c"}
    assert scores["accuracy"] == pytest.approx(12 / 17)  # 5 + 3 + 4; a majority vote: 13 / 17
    assert scores["per_class_recall"] == pytest.approx({"a": 5 / 9, "b": 3 / 4, "c": 1.0})
    assert scores["confusion"]["matrix"] == [[5, 4, 0], [0, 3, 1], [0, 0, 4]]


def test_hungarian_maximises_the_total_not_each_cluster_greedily() -> None:
    """Cluster 0 is mostly a (6 a, 5 b) but cluster 1 is all a (6): the best one-to-one mapping
    gives cluster 1 to a and cluster 0 to b (11 right), not cluster 0 to a (6 right)."""
    truth = np.array([0] * 6 + [1] * 5 + [0] * 6)
    predicted = np.array([0] * 11 + [1] * 6)
    assert best_mapping(truth, predicted, 2, 2) == {0: 1, 1: 0}
    scores = evaluate(["a"] * 6 + ["b"] * 5 + ["a"] * 6, predicted, 2)
    assert scores["accuracy"] == pytest.approx(11 / 17)


def test_more_clusters_than_classes_map_to_majority() -> None:
    mapping = best_mapping(np.array([0, 0, 1, 1, 1]), np.array([0, 0, 1, 2, 2]), 2, 3)
    # Hungarian pairs a with cluster 0 and b with cluster 2 (2 b's); cluster 1 is left over and
    # takes its majority, b
    assert mapping == {0: 0, 1: 1, 2: 1}
    assert evaluate(["a", "a", "b", "b", "b"], np.array([0, 0, 1, 2, 2]), 3)["accuracy"] == 1.0


def test_dev_set_names_clusters() -> None:
    names = name_clusters(["cat", "cat", "dog"], np.array([1, 1, 0]), 3)
    assert names == ["dog", "cat", "cluster_2"]


def test_calibration_matches_a_direct_computation_over_many_bins() -> None:
    """ECE over 15 equal bins (k/15, (k+1)/15] and the Brier score, computed here from their
    definitions, on probabilities spread over many bins (clusters already in class order)."""
    from goggles.report.evaluation import calibration

    rng = np.random.default_rng(5)
    n, k = 60, 3
    truth = rng.integers(0, k, n)
    probs = rng.dirichlet(np.ones(k) * 0.7, n)
    right = rng.random(n) < 0.7
    for i in np.flatnonzero(right):  # 70% right, so Hungarian keeps cluster j = class j
        probs[i] = np.roll(np.sort(probs[i]), truth[i] + 1)
    assert (probs.argmax(1) == truth).mean() > 0.6
    confidence, correct = probs.max(1), probs.argmax(1) == truth
    ece = 0.0
    for b in range(15):
        inside = (confidence > b / 15) & (confidence <= (b + 1) / 15)
        if inside.any():
            ece += inside.mean() * abs(confidence[inside].mean() - correct[inside].mean())
    assert len({int(np.ceil(c * 15)) for c in confidence}) >= 8  # many bins in use
    brier = ((probs - np.eye(k)[truth]) ** 2).sum(axis=1).mean()
    got = calibration([f"class_{t}" for t in truth], probs)
    assert got["ece"] == pytest.approx(ece, abs=1e-12)
    assert got["brier"] == pytest.approx(brier, abs=1e-12)
    assert calibration([], np.zeros((0, 2))) == {"ece": 0.0, "brier": 0.0}


def test_recall_of_a_class_with_one_image() -> None:
    scores = evaluate(["a", "a", "a", "b"], np.array([0, 0, 1, 1]), 2)
    assert scores["per_class_recall"] == {"a": pytest.approx(2 / 3), "b": 1.0}
    assert scores["accuracy"] == 0.75


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


def test_coverage_curve_by_hand() -> None:
    """Eight images, clusters matched to classes as metrics.json records it; at each threshold
    the kept share and the accuracy of what is kept."""
    truth = ["a", "a", "a", "a", "b", "b", "b", "b"]
    predicted = np.array([1, 1, 1, 0, 0, 0, 0, 1])
    confidence = np.array([0.99, 0.95, 0.6, 0.55, 0.9, 0.8, 0.7, 0.51])
    scores = evaluate(truth, predicted, 2)
    mapping = cluster_classes(scores["cluster_to_class"])  # type: ignore[arg-type]
    assert mapping == {0: "b", 1: "a"}
    curve = coverage_curve(truth, predicted, confidence, mapping, [0.0, 0.56, 0.85, 0.999])
    assert [c["kept"] for c in curve] == [8, 6, 3, 0]
    assert [c["coverage"] for c in curve] == [1.0, 0.75, 0.375, 0.0]
    # kept at 0.56: a a a (right) b b b (right) -> all right; at 0: the two errors count
    assert [c["accuracy"] for c in curve] == [0.75, 1.0, 1.0, None]
    assert curve[0]["accuracy"] == scores["accuracy"]  # threshold 0 is the run's accuracy
    assert [c["min_confidence"] for c in curve] == [0.0, 0.56, 0.85, 0.999]


def test_coverage_curve_default_thresholds_and_no_images() -> None:
    assert [c["min_confidence"] for c in coverage_curve([], np.zeros(0, int), np.zeros(0), {})] \
        == list(THRESHOLDS)
    assert all(c["kept"] == 0 and c["accuracy"] is None
               for c in coverage_curve([], np.zeros(0, int), np.zeros(0), {}))


def _dev_case(truth_classes: tuple[str, str], dev_names: tuple[str, str]
              ) -> tuple[list[int], list[str], list[str], list[str]]:
    """Ten images, every one labeled right: rows 0 and 5 are the dev set, named by
    ``dev_names``; the truth folders are ``truth_classes``."""
    truth = [truth_classes[0]] * 5 + [truth_classes[1]] * 5
    named = [dev_names[0]] * 5 + [dev_names[1]] * 5
    return [0, 5], [dev_names[0], dev_names[1]], named, truth


def test_dev_names_that_differ_from_the_folders_by_a_numeric_prefix_score_as_the_folders(
        caplog: pytest.LogCaptureFixture) -> None:
    rows, given, named, truth = _dev_case(("075.Green_Jay", "076.Tree_Swallow"),
                                          ("Green_Jay", "Tree_Swallow"))
    with caplog.at_level(logging.WARNING):
        dev = dev_set_metrics(rows, given, named, truth)
    assert dev["accuracy_unlabeled"] == 1.0
    assert dev["names_matched"] == "numeric prefix"
    assert "warning" not in dev and not caplog.records


def test_dev_names_unlike_the_folders_score_through_the_best_mapping_with_a_warning(
        caplog: pytest.LogCaptureFixture) -> None:
    rows, given, named, truth = _dev_case(("jays", "swallows"), ("blue", "fork_tail"))
    named[9] = "blue"  # one wrong label of the eight others
    with caplog.at_level(logging.WARNING):
        dev = dev_set_metrics(rows, given, named, truth)
    assert dev["accuracy_unlabeled"] == 7 / 8
    assert dev["names_matched"] == "best mapping"
    assert "blue → jays" in str(dev["warning"]) and caplog.records


def test_dev_names_equal_to_the_folders_score_without_a_mapping() -> None:
    rows, given, named, truth = _dev_case(("cat", "dog"), ("cat", "dog"))
    named[3] = "dog"
    dev = dev_set_metrics(rows, given, named, truth)
    assert dev["accuracy_unlabeled"] == 7 / 8 and dev["names_matched"] == "same"
