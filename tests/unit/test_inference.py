"""EM class inference on planted affinity matrices whose answer is known."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from goggles.inference.base import DegenerateDataWarning
from goggles.inference.likelihood import (
    EXACT_SCALE,
    GaussianParameters,
    SufficientStatistics,
    class_log_likelihood,
    gaussians_from_statistics,
    hard_statistics,
    self_mask_positions,
    sufficient_statistics,
)
from goggles.inference.paper_em import AffinityEM
from goggles.io.blocks import as_rows
from goggles.report.evaluation import evaluate


def planted(num_classes: int, per_class: int, prototypes_per_image: int = 2, *, seed: int = 0,
            high: float = 0.75, low: float = 0.45, noise: float = 0.08,
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Affinity matrix [N, M] where prototypes score images of their own class higher.

    Returns (A, source_index, truth)."""
    rng = np.random.default_rng(seed)
    truth = np.repeat(np.arange(num_classes), per_class)
    n = len(truth)
    source = np.repeat(np.arange(n), prototypes_per_image)
    same = truth[:, None] == truth[source][None, :]
    a = np.where(same, high, low) + rng.normal(0, noise, (n, len(source)))
    a[source, np.arange(len(source))] = 1.0  # an image's own prototype matches it perfectly
    return np.clip(a, 0, 1).astype(np.float32), source, truth


@pytest.mark.parametrize("init", ["kmeans", "random"])
@pytest.mark.parametrize("num_classes", [2, 3])
@pytest.mark.parametrize("m_step", ["sampled", "soft"])
def test_em_recovers_planted_clusters(num_classes: int, m_step: str, init: str) -> None:
    """k-means alone already solves these matrices, so from its start EM only has to keep the
    answer; from a random start (about 1/K of the labels right) EM itself must find it."""
    a, source, truth = planted(num_classes, 30)
    names = [str(t) for t in truth]
    model = AffinityEM(num_classes, m_step=m_step, init=init, random_state=0).fit(a, source)
    predicted = model.predict(a, source)
    scores = evaluate(names, predicted, num_classes, initial=model.initial_labels_)
    assert scores["accuracy"] == 1.0
    assert model.converged_
    if init == "random":
        assert scores["accuracy_kmeans"] < 0.65  # (the initial labels' accuracy)
        moved = evaluate(names, model.initial_labels_, num_classes)["cluster_to_class"] != \
            scores["cluster_to_class"]
        changed = (predicted != model.initial_labels_).mean()
        assert moved or changed > 0.3, "EM never left its start"
        assert model.n_iter_ > 1
    else:
        assert scores["accuracy_kmeans"] == 1.0
    probs = model.predict_proba(a, source)
    assert probs.shape == (len(truth), num_classes)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    assert (probs.max(axis=1) > 0.99).all()  # well separated: confident
    # the final E-step is the fitted posteriors: fit then predict equals the fit's own labels
    np.testing.assert_array_equal(probs.argmax(1), model.posteriors_.argmax(1))


def test_em_improves_on_a_bad_start() -> None:
    """From a random start, EM must still find the planted split (it is not stuck at its init)."""
    a, source, truth = planted(2, 40, seed=3)
    model = AffinityEM(2, init="random", m_step="soft", random_state=1).fit(a, source)
    init_acc = evaluate([str(t) for t in truth], model.initial_labels_, 2)["accuracy"]
    final_acc = evaluate([str(t) for t in truth], model.predict(a, source), 2)["accuracy"]
    assert init_acc < 0.75
    assert final_acc == 1.0
    assert model.n_iter_ > 1


def test_same_seed_same_labels_and_different_seed_runs() -> None:
    a, source, _ = planted(3, 20, seed=5, noise=0.15)
    first = AffinityEM(3, random_state=7).fit(a, source).posteriors_
    second = AffinityEM(3, random_state=7).fit(a, source).posteriors_
    np.testing.assert_array_equal(first, second)


def test_constant_columns_give_finite_posteriors() -> None:
    a, source, truth = planted(2, 25)
    a[:, ::3] = 0.5  # a third of the prototypes say nothing
    model = AffinityEM(2, random_state=0).fit(a, source)
    probs = model.predict_proba(a, source)
    assert np.isfinite(probs).all()
    assert evaluate([str(t) for t in truth], probs.argmax(1), 2)["accuracy"] == 1.0
    assert np.all(model.params_.std > 0)


def test_class_emptying_keeps_previous_parameters_and_warns() -> None:
    """Only two real groups but K=3 from a random start: a sampled M-step empties the third
    class (this seed does, deterministically). EM says so, and nothing turns NaN."""
    a, source, truth = planted(2, 30, noise=0.02)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = AffinityEM(3, init="random", m_step="sampled", random_state=2,
                           max_iter=50).fit(a, source)
    messages = [str(w.message) for w in caught if w.category is DegenerateDataWarning]
    assert any("emptied during EM; they keep their previous Gaussians" in m
               for m in messages), messages
    assert any("labels use only 2 of num_classes=3" in m for m in messages), messages
    assert messages == model.warnings_
    probs = model.predict_proba(a, source)
    assert np.isfinite(probs).all() and np.isfinite(model.posteriors_).all()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    for values in (model.params_.mean, model.params_.std, model.params_.prior):
        assert np.isfinite(values).all()
    used = np.unique(probs.argmax(1))
    assert len(used) == 2
    empty = sorted(set(range(3)) - set(used.tolist()))[0]
    assert model.params_.prior[empty] < 1e-3
    scores = evaluate([str(t) for t in truth], probs.argmax(1), 3)
    assert scores["accuracy"] == 1.0  # the two real groups are still found


def test_m_step_keeps_the_gaussians_of_a_class_that_emptied() -> None:
    a, source, _ = planted(3, 10, seed=1)
    model = AffinityEM(3, random_state=0).fit(a, source)
    before = model.params_
    labels = np.repeat([0, 2, 2], 10)  # class 1 loses every member
    with pytest.warns(DegenerateDataWarning, match=r"class\(es\) \[1\] emptied during EM"):
        model._m_step(as_rows(a), labels, source)
    after = model.params_
    np.testing.assert_array_equal(after.mean[:, 1], before.mean[:, 1])
    np.testing.assert_array_equal(after.std[:, 1], before.std[:, 1])
    assert not np.allclose(after.mean[:, 2], before.mean[:, 2])  # the others are refitted
    np.testing.assert_allclose(after.mean[:, 0], a[:10].mean(axis=0), atol=1e-6)
    assert after.prior[1] < 1e-3 and np.isfinite(np.log(after.prior)).all()
    np.testing.assert_array_equal(model.prototype_class_, labels[source])


def test_empty_class_in_m_step_uses_previous_gaussians() -> None:
    previous = GaussianParameters(mean=np.full((4, 2), 0.3), std=np.full((4, 2), 0.1),
                                  prior=np.array([0.5, 0.5]))
    a = np.random.default_rng(0).random((6, 4))
    weights = np.zeros((6, 2))
    weights[:, 0] = 1.0  # class 1 has no member
    stats = sufficient_statistics(a, weights, np.zeros(0, int), np.zeros(0, int))
    params = gaussians_from_statistics(stats, 1e-4, previous)
    np.testing.assert_allclose(params.mean[:, 1], 0.3)
    np.testing.assert_allclose(params.std[:, 1], 0.1)
    np.testing.assert_allclose(params.mean[:, 0], a.mean(axis=0))
    assert params.prior[1] < 1e-3
    assert np.isfinite(np.log(params.prior)).all()


def test_em_warns_when_a_class_empties() -> None:
    a = np.full((8, 8), 0.5, dtype=np.float32)  # identical images
    source = np.arange(8)
    with pytest.warns(DegenerateDataWarning):
        model = AffinityEM(2, random_state=0).fit(a, source)
    assert np.isfinite(model.predict_proba(a, source)).all()


@pytest.mark.parametrize("exclude_self", [False, True])
def test_hard_statistics_and_gaussians_equal_per_class_moments(exclude_self: bool) -> None:
    """Counts, sums and sums of squares per class and column (self entries left out when asked),
    and the Gaussians fitted from them: numpy's per-class mean and (biased) std."""
    a, source, _ = planted(3, 8, seed=7, noise=0.1)
    labels = np.random.default_rng(2).integers(0, 3, len(a))
    labels[:3] = [0, 1, 2]
    keep = np.ones(a.shape, dtype=bool)
    rows, cols = (self_mask_positions(source, len(a)) if exclude_self
                  else (np.zeros(0, int), np.zeros(0, int)))
    keep[rows, cols] = False
    stats = hard_statistics(a, labels, 3, rows, cols)
    assert stats.scale == EXACT_SCALE
    values = a.astype(np.float64)
    floor = 1e-3
    params = gaussians_from_statistics(stats, floor, None)
    for k in range(3):
        member = (labels == k)[:, None] & keep
        np.testing.assert_array_equal(stats.weight[k], member.sum(axis=0))
        assert stats.mass[k] == (labels == k).sum()
        np.testing.assert_allclose(stats.total[k] / stats.scale,
                                   np.where(member, values, 0).sum(axis=0), atol=1e-6)
        np.testing.assert_allclose(stats.squares[k] / stats.scale,
                                   np.where(member, values**2, 0).sum(axis=0), atol=1e-6)
        mean = np.where(member, values, 0).sum(axis=0) / member.sum(axis=0)
        variance = np.where(member, (values - mean) ** 2, 0).sum(axis=0) / member.sum(axis=0)
        np.testing.assert_allclose(params.mean[:, k], mean, atol=1e-6)
        np.testing.assert_allclose(params.std[:, k], np.sqrt(variance + floor), atol=1e-6)
    counts = np.bincount(labels, minlength=3)
    np.testing.assert_allclose(params.prior, (counts + 1e-3) / (len(a) + 3e-3))


def test_a_class_never_seen_falls_back_to_the_pooled_column_moments() -> None:
    """Without previous parameters, a class with no member takes every column's pooled mean
    and variance (plus the floor): no NaN, and no invented separation."""
    a = np.random.default_rng(0).random((9, 4))
    labels = np.array([0, 0, 0, 0, 2, 2, 2, 2, 2])  # class 1 has no member
    stats = hard_statistics(a, labels, 3, np.zeros(0, int), np.zeros(0, int))
    params = gaussians_from_statistics(stats, 1e-3, None)
    np.testing.assert_allclose(params.mean[:, 1], a.mean(axis=0), atol=1e-6)
    np.testing.assert_allclose(params.std[:, 1], np.sqrt(a.var(axis=0) + 1e-3), atol=1e-6)
    np.testing.assert_allclose(params.mean[:, 0], a[:4].mean(axis=0), atol=1e-6)
    np.testing.assert_allclose(params.std[:, 2], np.sqrt(a[4:].var(axis=0) + 1e-3), atol=1e-6)
    assert params.prior[1] < 1e-3 and abs(params.prior.sum() - 1) < 1e-12


def test_sufficient_statistics_are_additive_over_row_shards() -> None:
    a, source, truth = planted(3, 10, seed=2)
    w = np.random.default_rng(1).dirichlet(np.ones(3), size=len(a))
    rows, cols = self_mask_positions(source, len(a))
    whole = sufficient_statistics(a, w, rows, cols)
    parts: SufficientStatistics | None = None
    for start, stop in [(0, 7), (7, 19), (19, 30)]:
        r, c = self_mask_positions(source, stop - start, row_offset=start)
        part = sufficient_statistics(a[start:stop], w[start:stop], r, c)
        parts = part if parts is None else parts + part
    assert parts is not None
    for name in ("weight", "total", "squares", "mass"):
        np.testing.assert_allclose(getattr(parts, name), getattr(whole, name))


def test_log_likelihood_matches_the_papers_product_form() -> None:
    """Eq. 19/20: log a_i^k = sum_j log CDF_jk(s) if z_j = k else log(1 - CDF_jk(s))."""
    from scipy.stats import norm

    rng = np.random.default_rng(0)
    a = rng.random((5, 6))
    params = GaussianParameters(mean=rng.random((6, 2)), std=0.1 + rng.random((6, 2)),
                                prior=np.array([0.5, 0.5]))
    z = np.array([0, 1, 1, 0, 1, 0])
    got = class_log_likelihood(a, params, z, np.zeros(0, int), np.zeros(0, int))
    for k in range(2):
        cdf = norm.cdf(a, loc=params.mean[:, k], scale=params.std[:, k])
        expected = np.where(z == k, np.log(cdf), np.log1p(-cdf)).sum(axis=1)
        np.testing.assert_allclose(got[:, k], expected, rtol=1e-10)


def reference_posteriors(a: np.ndarray, params: GaussianParameters, z: np.ndarray,
                         left_out: np.ndarray) -> np.ndarray:
    """softmax_k(log prior_k + sum_j log CDF/SF_jk(a_ij)) with scipy.stats, entries where
    ``left_out`` is True skipped."""
    from scipy.stats import norm

    k_classes = len(params.prior)
    log_joint = np.empty((len(a), k_classes))
    for k in range(k_classes):
        own = norm.logcdf(a, loc=params.mean[:, k], scale=params.std[:, k])
        other = norm.logsf(a, loc=params.mean[:, k], scale=params.std[:, k])
        terms = np.where(z == k, own, other)
        log_joint[:, k] = np.where(left_out, 0.0, terms).sum(axis=1) + np.log(params.prior[k])
    log_joint -= log_joint.max(axis=1, keepdims=True)
    joint = np.exp(log_joint)
    return joint / joint.sum(axis=1, keepdims=True)  # type: ignore[no-any-return]


@pytest.mark.parametrize("exclude_self", [False, True])
def test_e_step_posteriors_are_prior_times_likelihood(exclude_self: bool) -> None:
    """The E-step (eq. 13): posterior_ik proportional to prior_k * Pr(row i | class k), checked
    against scipy with a strongly non-uniform prior that changes the labels of some rows."""
    rng = np.random.default_rng(4)
    n, m = 40, 6
    a = rng.random((n, m))
    source = rng.permutation(n)[:m]
    params = GaussianParameters(mean=0.3 + 0.4 * rng.random((m, 3)),
                                std=0.3 + 0.3 * rng.random((m, 3)),
                                prior=np.array([0.9, 0.08, 0.02]))
    z = np.array([0, 1, 2, 0, 1, 2])
    model = AffinityEM(3, exclude_self=exclude_self, device="cpu")
    model.params_, model.prototype_class_ = params, z
    got = model.predict_proba(a, source)
    left_out = np.zeros((n, m), dtype=bool)
    if exclude_self:
        left_out[source, np.arange(m)] = True
    np.testing.assert_allclose(got, reference_posteriors(a, params, z, left_out),
                               rtol=1e-9, atol=1e-12)
    flat = GaussianParameters(params.mean, params.std, np.full(3, 1 / 3))
    without_prior = reference_posteriors(a, flat, z, left_out)
    assert (without_prior.argmax(1) != got.argmax(1)).sum() >= 5  # the prior matters here
    assert np.abs(got - without_prior).max() > 0.3


def test_self_entries_are_left_out() -> None:
    rng = np.random.default_rng(0)
    a = rng.random((4, 4))
    params = GaussianParameters(mean=np.full((4, 2), 0.5), std=np.full((4, 2), 0.2),
                                prior=np.array([0.5, 0.5]))
    z = np.array([0, 0, 1, 1])
    source = np.array([0, 1, 2, 3])
    rows, cols = self_mask_positions(source, 4)
    masked = class_log_likelihood(a, params, z, rows, cols)
    changed = a.copy()
    changed[rows, cols] = 0.999  # self entries must not matter
    np.testing.assert_allclose(masked, class_log_likelihood(changed, params, z, rows, cols))


def test_rejects_bad_input() -> None:
    a, source, _ = planted(2, 5)
    with pytest.raises(ValueError, match="NaN"):
        bad = a.copy()
        bad[0, 0] = np.nan
        AffinityEM(2).fit(bad, source)
    with pytest.raises(ValueError, match="source_index"):
        AffinityEM(2).fit(a, source[:-1])
    with pytest.raises(ValueError, match="exceeds"):
        AffinityEM(20).fit(a, source)


class SplitRows:
    """A's rows served in uneven blocks, as the stored shards of a sharded run would be."""

    def __init__(self, matrix: np.ndarray, edges: list[int]):
        self.matrix, self.edges = matrix, edges

    @property
    def shape(self) -> tuple[int, int]:
        return self.matrix.shape  # type: ignore[return-value]

    def blocks(self):  # type: ignore[no-untyped-def]
        bounds = [0, *self.edges, self.matrix.shape[0]]
        for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
            yield start, self.matrix[start:stop]


@pytest.mark.parametrize("exclude_self", [False, True])
def test_sharded_em_is_identical_to_in_memory(exclude_self: bool, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    a, source, _ = planted(3, 30, seed=4, noise=0.2)
    whole = AffinityEM(3, random_state=2, exclude_self=exclude_self).fit(a, source)
    from goggles.io import blocks

    monkeypatch.setattr(blocks, "WORKING_BYTES", 8 * a.shape[1] * 7)  # 7-row working blocks
    sharded = AffinityEM(3, random_state=2, exclude_self=exclude_self).fit(
        SplitRows(a, [13, 40, 41, 77]), source)
    np.testing.assert_array_equal(sharded.posteriors_, whole.posteriors_)
    np.testing.assert_array_equal(sharded.initial_labels_, whole.initial_labels_)
    assert sharded.n_iter_ == whole.n_iter_
    np.testing.assert_array_equal(sharded.predict_proba(SplitRows(a, [50]), source),
                                  whole.predict_proba(a, source))


def test_kmeans_on_a_sample_of_rows_for_large_n() -> None:
    a, source, truth = planted(2, 60, seed=6)
    model = AffinityEM(2, random_state=0, kmeans_max_rows=40).fit(a, source)
    assert evaluate([str(t) for t in truth], model.initial_labels_, 2)["accuracy"] == 1.0
    assert evaluate([str(t) for t in truth], model.predict(a, source), 2)["accuracy"] == 1.0
