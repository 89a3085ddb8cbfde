"""Graph EM's confidence and guard (goggles.inference.confidence), and the measures of a
confidence (goggles.report.evaluation.confidence_quality), on data whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from goggles.features.descriptors import bilinear_descriptors
from goggles.inference import graph_em
from goggles.inference.base import label_confidence
from goggles.inference.confidence import drifted, neighbour_confidence
from goggles.inference.graph_em import GraphEM, MixtureFit
from goggles.report.evaluation import (
    auroc,
    calibrated_ece_floor,
    confidence_quality,
    expected_calibration_error,
)
from tests.unit.test_graph import planted_maps
from tests.unit.test_inference import planted


def test_neighbour_confidence_pools_own_and_neighbours_posterior_of_the_label() -> None:
    posteriors = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    neighbours = np.array([[1, 3], [0, 3], [0, 1], [2, 2]])
    expected = [0.5 * (0.9 + (0.8 + 0.6) / 2), 0.5 * (0.8 + (0.9 + 0.6) / 2),
                0.5 * (0.7 + (0.1 + 0.2) / 2), 0.5 * (0.6 + 0.3)]
    np.testing.assert_allclose(neighbour_confidence(posteriors, neighbours), expected)


def test_neighbour_confidence_takes_lists_and_float32_alike() -> None:
    posteriors = np.array([[0.9, 0.1], [0.35, 0.65], [0.3, 0.7]], dtype=np.float32)
    neighbours = np.array([[1], [2], [0]])
    expected = neighbour_confidence(posteriors.astype(np.float64), neighbours)
    for given in (posteriors, posteriors.tolist()):
        got = neighbour_confidence(given, neighbours)  # type: ignore[arg-type]
        assert got.dtype == np.float64
        np.testing.assert_array_equal(got, expected)


def two_groups() -> tuple[np.ndarray, np.ndarray]:
    """Labels of two groups of 20 and each row's 5 neighbours, all in its own group."""
    start = np.repeat([0, 1], 20)
    rng = np.random.default_rng(0)
    neighbours = np.array([rng.choice(np.flatnonzero((start == start[i])
                                                      & (np.arange(40) != i)), 5, replace=False)
                           for i in range(40)])
    return start, neighbours


def test_guard_flags_labels_moved_against_their_neighbours() -> None:
    start, neighbours = two_groups()
    end = start.copy()
    end[:8] = 1  # eight images leave the group all their neighbours are in
    assert drifted(start, end, neighbours)[0]
    assert not drifted(start, start, neighbours)[0]
    # one or two moved images are no evidence either way
    few = start.copy()
    few[:2] = 1
    assert not drifted(start, few, neighbours)[0]


def test_guard_takes_label_lists() -> None:
    start, neighbours = two_groups()
    end = start.copy()
    end[:8] = 1
    assert drifted(start.tolist(), end.tolist(), neighbours) == drifted(start, end, neighbours)  # type: ignore[arg-type]
    assert drifted(start.tolist(), start, neighbours) == (False, 1.0)  # type: ignore[arg-type]


def test_guard_leaves_alone_moves_that_join_the_neighbours() -> None:
    truth, neighbours = two_groups()
    start = truth.copy()
    start[:8] = 1  # the start had eight images on the wrong side of the graph
    assert not drifted(start, truth, neighbours)[0]  # EM put them back


def test_graph_em_keeps_its_start_when_em_drifts(monkeypatch: pytest.MonkeyPatch) -> None:
    a, source, truth = planted(2, 30, noise=0.12, seed=4)
    descriptors = bilinear_descriptors(planted_maps(truth, seed=4))
    honest = GraphEM(2, random_state=0).fit(a, source, descriptors=descriptors)
    assert not honest.guarded_

    def drifting(x, labels, num_classes, **_):  # type: ignore[no-untyped-def]
        moved = labels.copy()
        moved[np.flatnonzero(labels == 0)[:12]] = 1  # EM walks 12 images out of their class
        return MixtureFit(np.eye(num_classes)[moved], 0.0, 3, True, [0.0], [1.0], False)

    monkeypatch.setattr(graph_em, "gaussian_mixture_em", drifting)
    guarded = GraphEM(2, random_state=0).fit(a, source, descriptors=descriptors)
    assert guarded.guarded_ and guarded.posteriors_ is not None
    np.testing.assert_array_equal(guarded.posteriors_.argmax(axis=1), guarded.initial_labels_)
    unguarded = GraphEM(2, random_state=0, guard=False).fit(a, source, descriptors=descriptors)
    assert unguarded.posteriors_ is not None and unguarded.initial_labels_ is not None
    assert (unguarded.posteriors_.argmax(axis=1) != unguarded.initial_labels_).sum() == 12


def test_graph_em_confidence_is_a_probability_and_lower_where_neighbours_disagree() -> None:
    a, source, truth = planted(2, 60, noise=0.3, seed=3, high=0.6, low=0.5)
    descriptors = bilinear_descriptors(planted_maps(truth, seed=3, noise=3.0))
    model = GraphEM(2, random_state=0).fit(a, source, descriptors=descriptors)
    assert model.posteriors_ is not None and model.confidence_ is not None
    confidence = label_confidence(model)
    assert confidence.shape == (120,) and (confidence >= 0).all() and (confidence <= 1).all()
    # the pool never exceeds the mixture's own posterior of the label by more than it can
    assert (confidence <= 0.5 * (model.posteriors_.max(axis=1) + 1) + 1e-12).all()
    quality = confidence_quality([str(t) for t in truth], model.posteriors_.argmax(axis=1),
                                 confidence, 2)
    assert quality["n_wrong"] >= 3 and quality["error_auroc"] > 0.7


def test_auroc_by_hand_with_ties() -> None:
    scores = np.array([0.9, 0.8, 0.8, 0.1])
    positive = np.array([True, False, True, False])
    # pairs (pos, neg): (0.9, 0.8) win, (0.9, 0.1) win, (0.8, 0.8) tie, (0.8, 0.1) win
    assert auroc(scores, positive) == pytest.approx(3.5 / 4)
    assert auroc(scores, np.zeros(4, bool)) == 0.5


def test_confidence_quality_by_hand() -> None:
    truth = ["a"] * 5 + ["b"] * 5
    predicted = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 1])  # clusters named b, a: two wrong
    confidence = np.array([0.95, 0.9, 0.9, 0.85, 0.4, 0.99, 0.97, 0.93, 0.88, 0.3])
    q = confidence_quality(truth, predicted, confidence, 2)
    assert q["n_wrong"] == 2
    assert q["error_auroc"] == 1.0  # the two wrong labels are the two least confident
    assert q["selective_accuracy"] == {"0.9": pytest.approx(8 / 9), "0.8": 1.0}
    correct = np.array([1, 1, 1, 1, 0, 1, 1, 1, 1, 0])
    assert q["confidence_brier"] == pytest.approx(((confidence - correct) ** 2).mean())
    # 15 bins of width 1/15: 0.3 | 0.4 | 0.85, 0.88 | 0.9, 0.9, 0.93 | 0.95, 0.97, 0.99
    gaps = [0.3, 0.4, 2 * (1 - (0.85 + 0.88) / 2), 3 * (1 - (0.9 + 0.9 + 0.93) / 3),
            3 * (1 - (0.95 + 0.97 + 0.99) / 3)]
    assert q["confidence_ece"] == pytest.approx(sum(gaps) / 10)
    flipped = confidence_quality(truth, predicted, 1 - confidence, 2)
    assert flipped["error_auroc"] == 0.0
    assert flipped["selective_accuracy"]["0.8"] == pytest.approx(6 / 8)


def test_review_lists_the_least_confident_unlabeled_images_of_each_cluster() -> None:
    from goggles.report.review import review_rows

    label = np.array([0, 0, 0, 0, 1, 1, 1])
    confidence = np.array([0.9, 0.2, 0.5, 0.2, 0.99, 0.4, 0.7])
    assert review_rows(label, confidence, 3, per_cluster=2) == {0: [1, 3], 1: [5, 6], 2: []}
    # an image that already has a dev label is not asked for again
    assert review_rows(label, confidence, 2, labeled=[1, 5], per_cluster=2) == {
        0: [3, 2], 1: [6, 4]}


def test_calibrated_ece_floor() -> None:
    """The ECE a calibrated confidence scores by chance: 0 when every label is surely right,
    shrinking like 1/sqrt(N) with more images, and what ECE measures on outcomes drawn with
    exactly those probabilities."""
    assert calibrated_ece_floor(np.ones(50)) == 0.0
    assert calibrated_ece_floor(np.zeros(0)) == 0.0
    spread = np.random.default_rng(3).uniform(0.5, 1.0, 120)
    small = calibrated_ece_floor(spread)
    large = calibrated_ece_floor(np.tile(spread, 100))
    assert 0.04 < small < 0.15  # 120 images: far from 0 though calibrated by construction
    assert large < small / 5  # 100x the images: about a tenth
    rng = np.random.default_rng(9)
    drawn = np.mean([expected_calibration_error(spread, rng.random(120) < spread)
                     for _ in range(300)])
    assert calibrated_ece_floor(spread, draws=300, seed=1) == pytest.approx(drawn, rel=0.15)
