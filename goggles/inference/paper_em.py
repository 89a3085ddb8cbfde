"""Class inference from the affinity matrix by expectation-maximisation (paper §4).

Generative model (eqs. 6, 18): the score ``s_ij`` of image i for prototype j is Gaussian
``N(mu_jk, sigma_jk^2)`` when image i is of class k. The likelihood is tied to the class ``z_j``
of the image the prototype came from (eqs. 7, 8, 19): ``CDF_jk(s_ij)`` when ``z_j == k`` (a
prototype of class k expects high scores from its class) and ``1 - CDF_jk(s_ij)`` otherwise.
Prototypes are independent given the class (eqs. 11, 20), so the per-class log-likelihood of a
row is a sum over prototypes, computed in log space with ``log_ndtr``.

Every step streams row blocks of A (:mod:`goggles.io.blocks`): an iteration is a map over blocks
(E-step rows; per-class sufficient statistics of every column) and a reduce (Gaussians, priors),
so a process holds one block plus O(M·K) parameters and O(N·K) posteriors, never all of A.
With the default sampled M-step the statistics are exact integer sums and the convergence test
is a maximum, so the labels are identical however A is sharded.

Choices, each measured on cub-dev (see README):

* The affinity of an image to its own prototypes is always 1.0. The paper's A keeps these entries
  and so do we by default: they anchor each image to its current label, which keeps the EM from
  drifting off a good k-means start (cub-dev 3-5-class tasks: 0.984 with them, 0.953 without).
  ``exclude_self=True`` leaves them out of both steps.
* An E-step uses the parameters of the M-step just before it (the original code lagged one
  iteration); the final labels come from a last E-step, so ``fit`` then ``predict`` agree.
* ``m_step="sampled"`` draws hard labels from the posteriors and fits the Gaussians on them, as
  §4.3 describes; ``m_step="soft"`` weights every image by its posterior.
* A class that empties keeps its previous parameters (with a warning) instead of producing NaN;
  every variance is floored.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np
from scipy.special import logsumexp

from goggles.inference.base import DegenerateDataWarning, Method, MethodParameters
from goggles.inference.likelihood import (
    EXACT_SCALE,
    SufficientStatistics,
    class_log_likelihood,
    gaussians_from_statistics,
    hard_statistics,
    kmeans_rows,
    self_mask_positions,
    sufficient_statistics,
)
from goggles.io.blocks import RowBlocks, as_rows, sub_blocks

if TYPE_CHECKING:
    from goggles.inference.seeds import Seeds
    from goggles.io.features_folder import FilterMaps

__all__ = ["AffinityEM", "DegenerateDataWarning", "KMeansStart", "RandomStartEM",
           "kmeans_labels"]

logger = logging.getLogger(__name__)


def kmeans_labels(features: np.ndarray, num_classes: int, *, n_init: int,
                  random_state: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """k-means on rows of A (§4.3, initialisation) → ([N] labels, [K, M] centroids)."""
    from sklearn.cluster import KMeans

    seed = int(random_state.integers(0, 2**31 - 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate points warn; reported by the caller
        model = KMeans(n_clusters=num_classes, n_init=n_init, random_state=seed)
        labels = model.fit_predict(features)
    return labels.astype(np.int64), model.cluster_centers_


@dataclass
class _ColumnScan:
    """One pass over A: finiteness, constant columns, exact column sums of self-free entries."""

    column_mean: np.ndarray
    constant: np.ndarray


def _scan(rows: RowBlocks, source_index: np.ndarray) -> _ColumnScan:
    n, m = rows.shape
    units = np.zeros(m)
    high = np.full(m, -np.inf)
    low = np.full(m, np.inf)
    self_units = np.zeros(m)
    for start, block in sub_blocks(rows):
        if not np.isfinite(block).all():
            raise ValueError("affinity contains NaN or inf; recompute it (filter maps must be "
                             "finite)")
        r, c = self_mask_positions(source_index, block.shape[0], start)
        quantised = np.rint(block.astype(np.float64) * EXACT_SCALE)
        units += quantised.sum(axis=0)
        self_units[c] = quantised[r, c]
        masked = block.astype(np.float64)
        masked[r, c] = np.nan
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN column slices
            high = np.fmax(high, np.nanmax(masked, axis=0, initial=-np.inf))
            low = np.fmin(low, np.nanmin(masked, axis=0, initial=np.inf))
    column_mean = (units - self_units) / EXACT_SCALE / max(n - 1, 1)
    spread = high - low
    constant = np.flatnonzero(np.isfinite(spread) & (spread < 1e-6)) if n > 1 else np.zeros(0, int)
    return _ColumnScan(column_mean=column_mean, constant=constant)


@dataclass
class AffinityEM(Method):
    """EM class inference on an affinity matrix (paper §4.3–4.4), sklearn style.

    Parameters
    ----------
    num_classes : K.
    init : ``kmeans`` (k-means on rows of A) or ``random`` (uniform random labels).
    max_iter, tol : stop after ``max_iter`` iterations or when no posterior changes by more than
        ``tol`` in an iteration.
    m_step : ``sampled`` (the paper: draw hard labels from the posteriors) or ``soft``.
    variance_floor : added to every fitted variance.
    exclude_self : leave out each image's affinity to its own prototypes.
    n_init : k-means restarts.
    kmeans_max_rows : above this many images k-means is fitted on a seeded sample of rows and
        every image is then assigned to its nearest centroid.
    random_state : seed of the one generator used for everything random.
    device : where the E-step's log-likelihoods run: ``cpu`` (numpy), ``cuda`` (torch), ``auto``
        (see :func:`goggles.inference.likelihood.likelihood_backend`).

    Fitted attributes: ``params_``, ``prototype_class_``, ``posteriors_``, ``n_iter_``,
    ``converged_``, ``initial_labels_``, ``log_likelihood_trace_``, ``change_trace_``,
    ``warnings_``.
    """

    num_classes: int
    init: str = "kmeans"
    max_iter: int = 100
    tol: float = 1e-4
    m_step: str = "sampled"
    variance_floor: float = 1e-3
    exclude_self: bool = False
    n_init: int = 10
    kmeans_max_rows: int = 20000
    random_state: int = 0
    device: str = "auto"

    name: ClassVar[str] = "em"
    summary: ClassVar[str] = "the paper's GOGGLES: k-means start, then EM on A"

    @classmethod
    def from_config(cls, config: MethodParameters) -> AffinityEM:
        return cls(num_classes=config.num_classes, max_iter=config.max_iter, tol=config.tol,
                   m_step=config.m_step, variance_floor=config.variance_floor,
                   exclude_self=config.exclude_self, n_init=config.n_init,
                   random_state=config.seed, device=config.device)

    def _self(self, source_index: np.ndarray, num_rows: int,
              start: int) -> tuple[np.ndarray, np.ndarray]:
        return self_mask_positions(source_index if self.exclude_self else None, num_rows, start)

    # -- the two steps, each one pass over the row blocks ------------------------------------------

    def _e_step(self, rows: RowBlocks, source_index: np.ndarray) -> tuple[np.ndarray, float]:
        assert self.params_ is not None and self.prototype_class_ is not None
        n = rows.shape[0]
        posteriors = np.empty((n, self.num_classes))
        norms = np.empty(n)
        log_prior = np.log(self.params_.prior)
        for start, block in sub_blocks(rows):
            r, c = self._self(source_index, block.shape[0], start)
            weighted = class_log_likelihood(block, self.params_, self.prototype_class_, r, c,
                                            device=self.device)
            weighted += log_prior
            norm = logsumexp(weighted, axis=1, keepdims=True)
            posteriors[start:start + block.shape[0]] = np.exp(weighted - norm)
            norms[start:start + block.shape[0]] = norm[:, 0]
        return posteriors, math.fsum(norms)

    def _m_step(self, rows: RowBlocks, weights: np.ndarray, source_index: np.ndarray) -> None:
        hard = weights.argmax(axis=1) if weights.ndim == 2 else weights
        empty = np.flatnonzero(np.bincount(hard, minlength=self.num_classes) == 0)
        if len(empty):
            self._warn(f"class(es) {empty.tolist()} emptied during EM; they keep their previous "
                       "Gaussians. The data may hold fewer than num_classes groups: try a "
                       "smaller num_classes or more images")
        stats: SufficientStatistics | None = None
        for start, block in sub_blocks(rows):
            stop = start + block.shape[0]
            r, c = self._self(source_index, block.shape[0], start)
            if weights.ndim == 1:
                part = hard_statistics(block, weights[start:stop], self.num_classes, r, c)
            else:
                part = sufficient_statistics(block, weights[start:stop], r, c)
            stats = part if stats is None else stats + part
        assert stats is not None
        self.params_ = gaussians_from_statistics(stats, self.variance_floor, self.params_)
        self.prototype_class_ = hard[source_index]

    # -- initialisation ---------------------------------------------------------------------------

    def _initial_labels(self, rows: RowBlocks, source_index: np.ndarray, scan: _ColumnScan,
                        rng: np.random.Generator) -> np.ndarray:
        n = rows.shape[0]
        if self.init == "random":
            return rng.integers(0, self.num_classes, size=n)
        if self.init != "kmeans":
            raise ValueError(f"unknown init {self.init!r}; choose 'kmeans' or 'random'")
        column_mean = scan.column_mean if self.exclude_self else None
        sample = np.arange(n) if n <= self.kmeans_max_rows else \
            np.sort(rng.choice(n, size=self.kmeans_max_rows, replace=False))
        parts = []
        for start, block in sub_blocks(rows):
            local = sample[(sample >= start) & (sample < start + block.shape[0])] - start
            quantised = np.rint(block[local].astype(np.float64) * EXACT_SCALE) / EXACT_SCALE
            r, c = self_mask_positions(source_index if self.exclude_self else None,
                                       block.shape[0], start)
            keep = np.isin(r, local)
            position = np.searchsorted(local, r[keep])
            parts.append(kmeans_rows(quantised, column_mean, position, c[keep]))
        features = np.concatenate(parts)
        distinct = len(np.unique(features.astype(np.float32), axis=0))
        if distinct < self.num_classes:
            self._warn(f"only {distinct} of {self.num_classes} classes can be told apart: the "
                       f"affinity matrix has only {distinct} distinct row(s), so the images are "
                       "identical as far as the prototypes can tell; lower num_classes or check "
                       "the source for duplicates")
        labels, centroids = kmeans_labels(features, self.num_classes, n_init=self.n_init,
                                          random_state=rng)
        if len(sample) < n:  # assign every image to its nearest centroid, one block at a time
            labels = np.empty(n, dtype=np.int64)
            for start, block in sub_blocks(rows):
                r, c = self._self(source_index, block.shape[0], start)
                feats = kmeans_rows(block, column_mean, r, c)
                distances = ((feats[:, None, :] - centroids[None]) ** 2).sum(axis=2)
                labels[start:start + block.shape[0]] = distances.argmin(axis=1)
        elif len(np.unique(labels)) < self.num_classes and distinct >= self.num_classes:
            self._warn(f"the initialisation found only {len(np.unique(labels))} of "
                       f"{self.num_classes} classes (are many images identical?)")
        return labels

    # -- fit / predict ----------------------------------------------------------------------------

    def _start(self, affinity: np.ndarray | RowBlocks, source_index: np.ndarray,
               seeds: Seeds | None = None
               ) -> tuple[RowBlocks, np.ndarray, np.random.Generator]:
        """Check the inputs, find the start (``initial_labels_``; matched to the ``seeds``, which
        take their classes) and fit the Gaussians on it: everything before the first E-step.
        Returns the rows, the source index and the one random generator the rest of the fit
        draws from."""
        rows = as_rows(affinity)
        n, m = rows.shape
        source_index = np.asarray(source_index, dtype=np.int64)
        if source_index.shape != (m,) or (m and (source_index.min() < 0
                                                  or source_index.max() >= n)):
            raise ValueError(f"source_index must be [M={m}] row indices in 0..{n - 1}")
        if n < self.num_classes:
            raise ValueError(f"num_classes={self.num_classes} exceeds the {n} images; use at "
                             f"most {n} classes")
        rng = np.random.default_rng(self.random_state)
        self.warnings_ = []
        scan = _scan(rows, source_index)
        labels = self._initial_labels(rows, source_index, scan, rng)
        if seeds is not None:
            labels = seeds.align(labels, self.num_classes)
        if len(scan.constant):
            shown = ", ".join(str(c) for c in scan.constant[:10]) + (
                " ..." if len(scan.constant) > 10 else "")
            self._warn(f"{len(scan.constant)} of {m} prototype columns of A are constant "
                       f"({shown}): they carry no information and are fitted with the variance "
                       "floor")
        self.initial_labels_ = labels.copy()
        self.params_ = None
        self._m_step(rows, labels, source_index)
        return rows, source_index, rng

    def fit(self, affinity: np.ndarray | RowBlocks, source_index: np.ndarray, *,
            filter_maps: FilterMaps | None = None,
            descriptors: list[np.ndarray] | None = None, seeds: Seeds | None = None) -> AffinityEM:
        """Fit on A [N, M] (an array or a :class:`goggles.io.blocks.RowBlocks`);
        ``source_index`` [M] is the row of each prototype's source image (the class of
        prototype j is the current label of row ``source_index[j]``). The filter maps and
        descriptors are not read. ``seeds`` keep their classes in every E-step."""
        rows, source_index, rng = self._start(affinity, source_index, seeds)
        n = rows.shape[0]
        posteriors = np.eye(self.num_classes)[self.initial_labels_]
        self.log_likelihood_trace_, self.change_trace_ = [], []
        self.converged_ = False
        for iteration in range(1, self.max_iter + 1):
            new, loglik = self._e_step(rows, source_index)
            if seeds is not None:
                seeds.clamp(new)
            change = float(np.abs(new - posteriors).max())
            self.log_likelihood_trace_.append(loglik)
            self.change_trace_.append(change)
            posteriors = new
            self.n_iter_ = iteration
            logger.debug("EM iteration %d: log-likelihood %.6g, change %.3g", iteration, loglik,
                         change)
            if change < self.tol:
                self.converged_ = True
                break
            if iteration == self.max_iter:
                break  # keep params_ and posteriors_ consistent: no M-step after the last E-step
            if self.m_step == "sampled":
                cumulative = posteriors.cumsum(axis=1)
                draws = rng.random(n)[:, None]
                weights = (draws > cumulative).sum(axis=1).clip(0, self.num_classes - 1)
            else:
                weights = posteriors
            self._m_step(rows, weights, source_index)
        used = len(np.unique(posteriors.argmax(axis=1)))
        if used < self.num_classes:
            self._warn(f"the labels use only {used} of num_classes={self.num_classes} classes: "
                       "EM merged classes the affinities could not tell apart; lower "
                       "num_classes, add images, or try --method kmeans")
        if not self.converged_:
            logger.info("EM did not converge in %d iterations (last change %.2e); increase "
                        "max_iter or tol", self.max_iter, self.change_trace_[-1])
        self.posteriors_ = posteriors
        return self

    def predict_proba(self, affinity: np.ndarray | RowBlocks,
                      source_index: np.ndarray) -> np.ndarray:
        """[N, K] posteriors under the fitted parameters (a final E-step)."""
        if self.params_ is None:
            raise RuntimeError("call fit before predict_proba")
        rows = as_rows(affinity)
        for _, block in sub_blocks(rows):
            if not np.isfinite(block).all():
                raise ValueError("affinity contains NaN or inf; recompute it")
        return self._e_step(rows, np.asarray(source_index, dtype=np.int64))[0]

    def predict(self, affinity: np.ndarray | RowBlocks, source_index: np.ndarray) -> np.ndarray:
        return self.predict_proba(affinity, source_index).argmax(axis=1)  # type: ignore[no-any-return]


@dataclass
class KMeansStart(AffinityEM):
    """AF+KM (paper §5.1): the k-means start of :class:`AffinityEM` alone, as one-hot
    posteriors; the Gaussians the report draws are fitted on those labels."""

    name: ClassVar[str] = "kmeans"
    summary: ClassVar[str] = "AF+KM: k-means on the rows of A (the paper's start alone)"

    def fit(self, affinity: np.ndarray | RowBlocks, source_index: np.ndarray, *,
            filter_maps: FilterMaps | None = None,
            descriptors: list[np.ndarray] | None = None, seeds: Seeds | None = None) -> KMeansStart:
        self._start(affinity, source_index, seeds)
        assert self.initial_labels_ is not None
        self.posteriors_ = np.eye(self.num_classes)[self.initial_labels_]
        self.n_iter_, self.converged_ = 0, True
        self.log_likelihood_trace_, self.change_trace_ = [], []
        return self


@dataclass
class RandomStartEM(AffinityEM):
    """AF+EM rand (paper §5.1): :class:`AffinityEM` from uniformly random labels."""

    init: str = "random"

    name: ClassVar[str] = "em-random"
    summary: ClassVar[str] = "the paper's EM from a random start"
