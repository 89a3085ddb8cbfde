"""Dev labels as seeds of inference (goggles.inference.seeds): graph EM and the paper's EM keep
the seeds at their class and number the clusters as the seeds' classes."""

from __future__ import annotations

import numpy as np
import pytest

from goggles.features.descriptors import bilinear_descriptors
from goggles.inference.graph_em import GraphEM
from goggles.inference.paper_em import AffinityEM, KMeansStart
from goggles.inference.seeds import Seeds
from tests.unit.test_graph import planted_maps
from tests.unit.test_inference import planted


def test_align_renumbers_clusters_to_the_seeds_classes_and_sets_the_seeds() -> None:
    labels = np.array([2, 2, 0, 0, 1, 1, 1])
    seeds = Seeds(np.array([0, 2, 4, 5]), np.array([0, 1, 2, 0]))
    # cluster 2 -> class 0, cluster 0 -> class 1, cluster 1 -> class 2 (one seed disagrees)
    np.testing.assert_array_equal(seeds.align(labels, 3), [0, 0, 1, 1, 2, 0, 2])


def test_from_names_sorted_and_refused_beyond_num_classes() -> None:
    seeds = Seeds.from_names([4, 1, 7], ["wren", "crow", "wren"], 3)
    assert seeds is not None and seeds.names == ("crow", "wren")
    np.testing.assert_array_equal(seeds.classes, [1, 0, 1])
    assert Seeds.from_names([0, 1, 2], ["a", "b", "c"], 2) is None


def test_within_keeps_the_seeds_in_a_sample_as_positions() -> None:
    seeds = Seeds(np.array([3, 8, 10]), np.array([0, 1, 1]))
    inside = seeds.within(np.array([1, 3, 5, 10]))
    np.testing.assert_array_equal(inside.rows, [1, 3])
    np.testing.assert_array_equal(inside.classes, [0, 1])


def test_clamp_and_centroid_labels() -> None:
    seeds = Seeds(np.array([0, 3]), np.array([1, 0]))
    clamped = seeds.clamp(np.full((4, 2), 0.5))
    np.testing.assert_array_equal(clamped, [[0, 1], [0.5, 0.5], [0.5, 0.5], [1, 0]])
    x = np.array([[10.0], [9.0], [1.0], [0.0]])
    np.testing.assert_array_equal(seeds.centroid_labels(x, 2), [1, 1, 0, 0])
    assert Seeds(np.array([0]), np.array([1])).centroid_labels(x, 2) is None


def fits(method: str, seeds: Seeds | None):  # type: ignore[no-untyped-def]
    a, source, truth = planted(3, 20, noise=0.12, seed=4)
    if method == "graph-em":
        d = bilinear_descriptors(planted_maps(truth, seed=4))
        return GraphEM(3, random_state=0).fit(a, source, descriptors=d, seeds=seeds), truth
    cls = AffinityEM if method == "em" else KMeansStart
    return cls(3, random_state=0).fit(a, source, seeds=seeds), truth


@pytest.mark.parametrize("method", ["graph-em", "em", "kmeans"])
def test_seeded_clusters_are_the_seeds_classes(method: str) -> None:
    truth = np.repeat(np.arange(3), 20)
    # the classes renamed: true class t is seed class (t + 1) % 3, two seeds per class
    rows = np.array([0, 1, 20, 21, 40, 41])
    seeds = Seeds(rows, (truth[rows] + 1) % 3)
    model, truth = fits(method, seeds)
    labels = model.posteriors_.argmax(axis=1)
    assert (labels == (truth + 1) % 3).mean() == 1.0  # no mapping: cluster k is seed class k
    np.testing.assert_array_equal(model.initial_labels_[rows], seeds.classes)


@pytest.mark.parametrize("method", ["graph-em", "em"])
def test_a_seed_keeps_its_given_class_against_its_features(method: str) -> None:
    rows = np.array([0, 1, 20, 21, 40, 41, 5])
    classes = np.array([0, 0, 1, 1, 2, 2, 1])  # image 5 is of class 0 by its features
    model, _ = fits(method, Seeds(rows, classes))
    np.testing.assert_array_equal(model.posteriors_[rows].argmax(axis=1), classes)
    unseeded, truth = fits(method, None)
    labels = unseeded.posteriors_.argmax(axis=1)
    assert labels[5] == labels[0]  # without the seed it sits with its class
