"""The arithmetic of GOGGLES' class inference on one block of rows of A (paper §4).

Everything here works on a block ``[n, M]`` of rows starting at some global row, so an EM
iteration is a map over blocks (E-step rows, per-class sufficient statistics of every column)
followed by a reduce (new Gaussians and priors): see :mod:`goggles.inference`.

Sufficient statistics of hard labels are exact: scores are summed as integers in units of
``2**-24`` (held in float64, exact below 2**53), so the result does not depend on how the rows
were split into shards or blocks. Soft (posterior-weighted) statistics are ordinary float sums.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import log_ndtr

# Hard-label statistics count scores in units of 2**-24 (a float32's resolution near 1).
EXACT_SCALE = float(2**24)


def self_mask_positions(source_index: np.ndarray | None, num_rows: int,
                        row_offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of the entries where a prototype meets its own image, for rows
    ``row_offset .. row_offset+num_rows-1`` of the full matrix (rows are block-local)."""
    if source_index is None:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    local = np.asarray(source_index, dtype=np.int64) - row_offset
    cols = np.flatnonzero((local >= 0) & (local < num_rows))
    return local[cols], cols


@dataclass
class GaussianParameters:
    """Per-prototype, per-class Gaussians: ``mean`` and ``std`` are [M, K]; ``prior`` is [K]."""

    mean: np.ndarray
    std: np.ndarray
    prior: np.ndarray


@dataclass
class SufficientStatistics:
    """Per-class weighted moments of every prototype column: ``weight``, ``total`` and
    ``squares`` are [K, M] (``total``/``squares`` in units of ``1/scale``); ``mass`` is [K].
    Additive over row blocks."""

    weight: np.ndarray
    total: np.ndarray
    squares: np.ndarray
    mass: np.ndarray
    scale: float = 1.0

    def __add__(self, other: SufficientStatistics) -> SufficientStatistics:
        if self.scale != other.scale:
            raise ValueError("cannot add statistics kept in different units")
        return SufficientStatistics(self.weight + other.weight, self.total + other.total,
                                    self.squares + other.squares, self.mass + other.mass,
                                    self.scale)


def sufficient_statistics(affinity: np.ndarray, weights: np.ndarray,
                          self_rows: np.ndarray, self_cols: np.ndarray) -> SufficientStatistics:
    """Moments of the columns of ``affinity`` [n, M] weighted by ``weights`` [n, K], leaving out
    the self entries (``self_rows``, ``self_cols``)."""
    a = affinity.astype(np.float64, copy=False)
    w = weights.astype(np.float64, copy=False)
    weight = np.repeat(w.sum(axis=0)[:, None], a.shape[1], axis=1)  # [K, M]
    total = w.T @ a
    squares = w.T @ (a * a)
    if len(self_rows):
        w_self = w[self_rows]  # [s, K]
        a_self = a[self_rows, self_cols]  # [s]
        np.subtract.at(weight.T, self_cols, w_self)
        np.subtract.at(total.T, self_cols, w_self * a_self[:, None])
        np.subtract.at(squares.T, self_cols, w_self * (a_self * a_self)[:, None])
    return SufficientStatistics(weight, total, squares, w.sum(axis=0))


def hard_statistics(affinity: np.ndarray, labels: np.ndarray, num_classes: int,
                    self_rows: np.ndarray, self_cols: np.ndarray) -> SufficientStatistics:
    """Exact moments of the columns of ``affinity`` [n, M] per hard label ``labels`` [n]."""
    a = affinity.astype(np.float64, copy=False)
    units = np.rint(a * EXACT_SCALE)
    unit_squares = np.rint(a * a * EXACT_SCALE)
    m = a.shape[1]
    weight = np.zeros((num_classes, m))
    total = np.zeros((num_classes, m))
    squares = np.zeros((num_classes, m))
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    for k in range(num_classes):
        members = labels == k
        if not members.any():
            continue
        weight[k] = counts[k]
        total[k] = units[members].sum(axis=0)
        squares[k] = unit_squares[members].sum(axis=0)
    if len(self_rows):
        owner = labels[self_rows]
        np.subtract.at(weight, (owner, self_cols), 1.0)
        np.subtract.at(total, (owner, self_cols), units[self_rows, self_cols])
        np.subtract.at(squares, (owner, self_cols), unit_squares[self_rows, self_cols])
    return SufficientStatistics(weight, total, squares, counts, EXACT_SCALE)


def gaussians_from_statistics(stats: SufficientStatistics, variance_floor: float,
                              previous: GaussianParameters | None) -> GaussianParameters:
    """Maximum-likelihood Gaussians and priors from summed statistics.

    A class with no weight on a column keeps its ``previous`` parameters there (or the column's
    pooled moments when there are none), so no NaN can arise.
    """
    weight = stats.weight  # [K, M]
    present = weight > 1e-9
    safe = np.where(present, weight, 1.0)
    mean = stats.total / stats.scale / safe
    variance = np.maximum(stats.squares / stats.scale / safe - mean * mean, 0.0) + variance_floor
    if not present.all():
        if previous is not None:
            fallback_mean, fallback_var = previous.mean.T, previous.std.T ** 2
        else:
            pooled_w = np.maximum(weight.sum(axis=0), 1e-9)
            pooled_mean = stats.total.sum(axis=0) / stats.scale / pooled_w
            pooled_var = np.maximum(stats.squares.sum(axis=0) / stats.scale / pooled_w
                                    - pooled_mean**2, 0.0)
            fallback_mean = np.broadcast_to(pooled_mean, mean.shape)
            fallback_var = np.broadcast_to(pooled_var + variance_floor, mean.shape)
        mean = np.where(present, mean, fallback_mean)
        variance = np.where(present, variance, fallback_var)
    mass = np.maximum(stats.mass, 0.0)
    prior = (mass + 1e-3) / (mass.sum() + 1e-3 * len(mass))
    return GaussianParameters(mean=mean.T.copy(), std=np.sqrt(variance).T.copy(), prior=prior)


def class_log_likelihood(affinity: np.ndarray, params: GaussianParameters,
                         prototype_class: np.ndarray, self_rows: np.ndarray,
                         self_cols: np.ndarray) -> np.ndarray:
    """``log Pr(row | y = k)`` for every row and class (eqs. 11, 12, 20), [n, K].

    For each class one ``log_ndtr`` pass over the block: the standardised score, negated where
    the prototype is not of class k (``log SF(x) = log_ndtr(-x)``), so CDF and SF cost one pass.
    Each row's value depends on that row alone, whatever the block.
    """
    n = affinity.shape[0]
    k_classes = params.mean.shape[1]
    out = np.empty((n, k_classes), dtype=np.float64)
    a = affinity.astype(np.float64, copy=False)
    for k in range(k_classes):
        sign = np.where(prototype_class == k, 1.0, -1.0)
        scale = sign / params.std[:, k]
        x = (a - params.mean[:, k]) * scale
        logp = log_ndtr(x)
        total = logp.sum(axis=1)
        if len(self_rows):
            np.subtract.at(total, self_rows, logp[self_rows, self_cols])
        out[:, k] = total
    return out


def kmeans_rows(block: np.ndarray, column_mean: np.ndarray | None,
                self_rows: np.ndarray, self_cols: np.ndarray) -> np.ndarray:
    """Rows of A prepared for k-means, [n, M] float64.

    When ``column_mean`` is given (``exclude_self``), self entries (always 1.0) are replaced by
    their column's mean over the other rows. Rows are then scaled to unit length: how strongly an
    image responds to prototypes overall (contrast, its size in the frame) is not class
    information, the pattern of its affinities is. Measured on cub-dev: mean k-means accuracy
    0.973 → 0.985 on 3-5-class tasks, 0.793 → 0.877 on same-family pairs.
    """
    features = block.astype(np.float64, copy=True)
    if column_mean is not None and len(self_rows):
        features[self_rows, self_cols] = column_mean[self_cols]
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return features / np.maximum(norms, 1e-12)
