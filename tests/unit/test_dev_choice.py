"""Dev labels: graph EM seeded by them, or a classifier of the labeled images, whichever predicts
held-out dev labels better (goggles.inference.dev_choice), on data whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from goggles.inference.base import DegenerateDataWarning
from goggles.inference.dev_choice import (
    SeedClassifier,
    brier,
    choose,
    fit_temperature,
    named_by,
    seed_folds,
    tempered,
    uneven_message,
)
from goggles.inference.graph_em import GraphEM
from goggles.inference.seeds import Seeds


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def nuisance(n: int = 160, seed: int = 0, shift: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    """Two strong groups that are not the classes; the class is a weaker, linear direction
    (CIFAR's and TrashNet's situation: neighbours share the group more than the class)."""
    rng = np.random.default_rng(seed)
    group = rng.integers(0, 2, n)
    truth = rng.permutation(np.repeat([0, 1], n // 2))
    x = rng.normal(0, 0.35, (n, 16))
    x[:, 0] += 3.0 * (2 * group - 1)
    x[:, 1] += shift * (2 * truth - 1)
    return _unit(x), truth


def moons(n: int = 160, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two interleaved half-circles: the graph follows them, no straight line separates them."""
    rng = np.random.default_rng(seed)
    truth = np.repeat([0, 1], n // 2)
    t = rng.uniform(0, np.pi, n)
    x = rng.normal(0, 0.02, (n, 16))
    x[:, 0] += np.where(truth == 0, np.cos(t), 1 - np.cos(t)) + rng.normal(0, 0.06, n)
    x[:, 1] += np.where(truth == 0, np.sin(t), 0.5 - np.sin(t)) + rng.normal(0, 0.06, n)
    x[:, 2] += 3
    return _unit(x), truth


def five_per_class(truth: np.ndarray, per: int = 5) -> Seeds:
    rng = np.random.default_rng(1)
    rows = np.sort(np.concatenate([rng.choice(np.flatnonzero(truth == c), per, replace=False)
                                   for c in np.unique(truth)]))
    return Seeds(rows, truth[rows])


def fitted(x: np.ndarray, seeds: Seeds) -> tuple[GraphEM, GraphEM]:
    """(graph EM with its dev-label choice, graph EM's seeded fit alone)."""
    model = GraphEM(2, random_state=0).fit(x, np.arange(x.shape[1]), descriptors=[x],
                                           seeds=seeds)
    alone = GraphEM(2, random_state=0)
    alone._fit_graph(x, [x], seeds)
    return model, alone


def test_folds_leave_every_class_a_seed() -> None:
    seeds = Seeds(np.arange(13), np.array([0] * 7 + [1] * 3 + [2] * 3))
    folds = seed_folds(seeds, 3)
    assert folds is not None and folds.max() == 2  # F = the smallest class's 3 seeds
    for fold in range(3):
        assert set(seeds.classes[folds != fold]) == {0, 1, 2}
    many = seed_folds(Seeds(np.arange(40), np.repeat([0, 1], 20)), 2)
    assert many is not None and many.max() == 4  # at most 5 folds
    assert seed_folds(Seeds(np.arange(5), np.array([0, 0, 0, 0, 1])), 2) is None  # one seed
    assert seed_folds(Seeds(np.arange(4), np.array([0, 0, 1, 1])), 3) is None  # class 2 none


def test_named_by_renames_clusters_as_their_seeds_classes() -> None:
    posteriors = np.array([[0.9, 0.1, 0.0], [0.2, 0.8, 0.0], [0.0, 0.3, 0.7], [0.6, 0.4, 0.0]])
    named = named_by(posteriors, Seeds(np.array([0, 1]), np.array([2, 0])))
    np.testing.assert_array_equal(named[:, 2], posteriors[:, 0])  # cluster 0 holds class 2's
    np.testing.assert_array_equal(named[:, 0], posteriors[:, 1])
    np.testing.assert_array_equal(named[:, 1], posteriors[:, 2])  # the one left over


def test_the_fit_without_labels_is_kept_where_the_labels_predict_worse() -> None:
    """The guard: held-out labels that the unlabeled fit (named by the other folds) predicts
    better than the seeded fit and the classifier keep the unlabeled fit's labels."""
    truth = np.repeat([0, 1], 10)
    seeds = Seeds(np.arange(20), truth)
    unlabeled = np.eye(2)[1 - truth]  # right, under the other cluster numbers
    features = np.random.default_rng(0).standard_normal((20, 3))  # nothing to learn from
    record = choose(lambda subset: np.full((20, 2), 0.5), features, seeds, 2,
                    unlabeled=unlabeled)
    assert record is not None and record["chosen"] == "unlabeled"
    assert record["held_out_brier"]["unlabeled"] == 0.0
    assert record["held_out_brier"]["graph-em"] == pytest.approx(0.5)
    without = choose(lambda subset: np.full((20, 2), 0.5), features, seeds, 2)
    assert without is not None and without["chosen"] != "unlabeled"


def test_brier_and_the_classifier_columns() -> None:
    p = np.array([[1.0, 0.0], [0.75, 0.25], [0.0, 1.0]])
    assert brier(p, np.array([0, 0, 0])) == pytest.approx(0 + 2 * 0.25 ** 2 + 2)
    x = np.array([[0.0, 1.0], [0.1, 0.9], [1.0, 0.0], [0.9, 0.1]])
    classifier = SeedClassifier(3).fit(x, np.array([0, 0, 2, 2]))  # class 1 has no seed
    proba = classifier.predict_proba(x)
    assert proba.shape == (4, 3) and (proba[:, 1] == 0).all()
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert list(proba.argmax(axis=1)) == [0, 0, 2, 2]


def test_a_classifier_of_the_seeds_takes_over_where_the_clusters_follow_something_else(
        ) -> None:
    x, truth = nuisance()
    seeds = five_per_class(truth)
    model, alone = fitted(x, seeds)
    assert (alone.posteriors_.argmax(axis=1) == truth).mean() < 0.65  # the groups, not classes
    assert model.dev_choice_ is not None and model.dev_choice_["chosen"] == "classifier"
    brier_of = model.dev_choice_["held_out_brier"]
    assert brier_of["classifier"] < brier_of["graph-em"] and model.dev_choice_["folds"] == 5
    labels = model.posteriors_.argmax(axis=1)
    assert (labels == truth).mean() >= 0.95
    np.testing.assert_array_equal(model.posteriors_[seeds.rows],  # seeds keep their class
                                  np.eye(2)[seeds.classes])
    np.testing.assert_allclose(model.confidence_, model.posteriors_.max(axis=1))
    assert 0.01 <= model.dev_choice_["temperature"] <= 100


def test_graph_em_stays_where_its_clusters_are_the_classes() -> None:
    x, truth = moons()
    seeds = five_per_class(truth)
    model, alone = fitted(x, seeds)
    assert model.dev_choice_ is not None and model.dev_choice_["chosen"] == "graph-em"
    np.testing.assert_array_equal(model.posteriors_, alone.posteriors_)
    classifier = SeedClassifier(2).fit(x[seeds.rows], seeds.classes)
    line = (classifier.predict_proba(x).argmax(axis=1) == truth).mean()
    assert (model.posteriors_.argmax(axis=1) == truth).mean() >= max(0.9, line + 0.05)


def test_too_few_seeds_to_split_keep_graph_ems_seeded_labels() -> None:
    x, truth = nuisance()
    rows = np.array([np.flatnonzero(truth == 0)[0], *np.flatnonzero(truth == 1)[:3]])
    seeds = Seeds(rows, truth[rows], ("cat", "dog"))  # one seed of class 0
    with pytest.warns(DegenerateDataWarning, match="until every class has at least 2"):
        model, alone = fitted(x, seeds)
    assert model.dev_choice_ is None
    np.testing.assert_array_equal(model.posteriors_, alone.posteriors_)
    assert model.warnings_ == ["the dev labels give 1 of the 2 classes fewer than 2 images "
                               "('cat': 1), so they only seed graph EM and neither a "
                               "classifier of them nor the fit without labels is tried; ask "
                               "for more images (goggles suggest, the report's list) until "
                               "every class has at least 2"]
    named_one = Seeds(rows[1:], truth[rows[1:]] * 0, ("dog",))  # a second class never named
    assert "('class 1': 0)" in uneven_message(named_one, 2)


def test_temperature_softens_the_overconfident_and_sharpens_the_unsure() -> None:
    rng = np.random.default_rng(0)
    classes = rng.integers(0, 2, 200)
    right = rng.random(200) < 0.7  # right 70% of the time
    predicted = np.where(right, classes, 1 - classes)
    for top, softer in ((0.99, True), (0.55, False)):  # sure, or nearly undecided
        proba = np.full((200, 2), 1 - top)
        proba[np.arange(200), predicted] = top
        temperature = fit_temperature(np.log(proba), classes)
        assert (temperature > 1) == softer
        calibrated = tempered(np.log(proba), temperature)
        np.testing.assert_allclose(calibrated.sum(axis=1), 1.0)
        assert calibrated.max(axis=1).mean() == pytest.approx(right.mean(), abs=0.02)


def test_a_graph_is_never_shared_beyond_one_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    """The folds share the main fit's graph; a later fit of the same object on other images of
    the same count and seeds (even after a fit that failed half-way) builds its own."""
    x1, t1 = moons(seed=0)
    x2, t2 = moons(seed=3)
    rows = five_per_class(t1).rows
    model = GraphEM(2, random_state=0)

    def interrupted(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(GraphEM, "_choose_dev", interrupted)
    with pytest.raises(KeyboardInterrupt):
        model.fit(x1, np.arange(16), descriptors=[x1], seeds=Seeds(rows, t1[rows]))
    monkeypatch.undo()
    model.fit(x2, np.arange(16), descriptors=[x2], seeds=Seeds(rows, t2[rows]))
    fresh = GraphEM(2, random_state=0).fit(x2, np.arange(16), descriptors=[x2],
                                           seeds=Seeds(rows, t2[rows]))
    np.testing.assert_array_equal(model.posteriors_, fresh.posteriors_)
    np.testing.assert_array_equal(model.initial_labels_, fresh.initial_labels_)
    assert model.dev_choice_ == fresh.dev_choice_  # the folds' graph EM scored on x2's graph
    assert model._graph_cache is None


def test_new_images_get_the_classifier_the_run_chose() -> None:
    """`goggles label` on new images (the fitted labeler) applies the classifier the run's dev
    labels chose, so it gives the run's own images the run's posteriors (a vote of their nearest
    images, as for graph EM's own labels, does not)."""
    from goggles.training.labeler import AffinityLabeler

    x, truth = nuisance(shift=1.0)  # posteriors not saturated: the vote would differ
    new, new_truth = nuisance(n=200, seed=1, shift=1.0)
    seeds = five_per_class(truth)
    model, _ = fitted(x, seeds)
    assert model.dev_choice_ is not None and model.dev_choice_["chosen"] == "classifier"
    assert model.posteriors_ is not None

    def labeler(choice: dict | None) -> AffinityLabeler:
        return AffinityLabeler.from_fit(
            method="graph-em", classes=["a", "b"], prototypes=np.zeros((x.shape[1], 3)),
            source_index=np.arange(x.shape[1]), affinity=x, posteriors=model.posteriors_,
            descriptors=[x], networks=[("vgg16", "")], seeds=seeds, dev_choice=choice)

    chosen = labeler(model.dev_choice_)
    own = np.setdiff1d(np.arange(len(x)), seeds.rows)  # the run clamps its seeds
    np.testing.assert_allclose(chosen.predict_proba(x[own], [x[own]]), model.posteriors_[own],
                               atol=1e-6)
    voted = labeler(None).predict_proba(x[own], [x[own]])
    assert np.abs(voted - model.posteriors_[own]).max() > 0.1
    assert (chosen.predict_proba(new, [new]).argmax(axis=1) == new_truth).mean() >= 0.9
