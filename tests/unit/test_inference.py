"""EM class inference on planted affinity matrices whose answer is known."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from goggles.inference.base import DegenerateDataWarning
from goggles.inference.likelihood import (
    GaussianParameters,
    SufficientStatistics,
    class_log_likelihood,
    gaussians_from_statistics,
    self_mask_positions,
    sufficient_statistics,
)
from goggles.inference.paper_em import AffinityEM
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


@pytest.mark.parametrize("num_classes", [2, 3])
@pytest.mark.parametrize("m_step", ["sampled", "soft"])
def test_em_recovers_planted_clusters(num_classes: int, m_step: str) -> None:
    a, source, truth = planted(num_classes, 30)
    model = AffinityEM(num_classes, m_step=m_step, random_state=0).fit(a, source)
    predicted = model.predict(a, source)
    scores = evaluate([str(t) for t in truth], predicted, num_classes,
                      initial=model.initial_labels_)
    assert scores["accuracy"] == 1.0
    assert model.converged_
    probs = model.predict_proba(a, source)
    assert probs.shape == (len(truth), num_classes)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
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
    """Only two real groups but K=3: EM may empty a class; nothing turns NaN."""
    a, source, _ = planted(2, 30, noise=0.02)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        model = AffinityEM(3, m_step="sampled", random_state=0, max_iter=50).fit(a, source)
    probs = model.predict_proba(a, source)
    assert np.isfinite(probs).all()
    assert np.isfinite(model.params_.mean).all() and np.isfinite(model.params_.std).all()


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
