"""EM for a full-covariance Gaussian mixture started from hard labels, with seeds clamped:
graph EM's last step, in its spectral embedding (:mod:`goggles.inference.graph_em`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy.special import logsumexp

if TYPE_CHECKING:
    from goggles.inference.seeds import Seeds

__all__ = ["MixtureFit", "gaussian_mixture_em"]


@dataclass
class MixtureFit:
    posteriors: np.ndarray
    log_likelihood: float
    n_iter: int
    converged: bool
    log_likelihood_trace: list[float]
    change_trace: list[float]
    stopped_on_mass: bool


def _log_densities(x: np.ndarray, means: np.ndarray, covariances: np.ndarray) -> np.ndarray:
    n, d = x.shape
    out = np.empty((n, len(means)))
    for k, (mean, cov) in enumerate(zip(means, covariances, strict=True)):
        chol = np.linalg.cholesky(cov)
        solved = np.linalg.solve(chol, (x - mean).T)
        out[:, k] = (-0.5 * (solved ** 2).sum(axis=0) - np.log(np.diag(chol)).sum()
                     - 0.5 * d * np.log(2 * np.pi))
    return out


def gaussian_mixture_em(x: np.ndarray, labels: np.ndarray, num_classes: int, *, max_iter: int,
                        tol: float, min_mass: float, reg: float = 1e-3,
                        seeds: Seeds | None = None) -> MixtureFit:
    """EM for a full-covariance Gaussian mixture on ``x`` [n, d] started from hard ``labels``;
    stops when no posterior changes by more than ``tol``, or keeps the last iterate before a
    class's expected count falls below ``min_mass``. ``seeds`` keep their class throughout."""
    n, d = x.shape
    posteriors = np.eye(num_classes)[labels]
    trace: list[float] = []
    changes: list[float] = []
    total = -np.inf
    for iteration in range(1, max_iter + 1):
        mass = posteriors.sum(axis=0)
        means = (posteriors.T @ x) / np.maximum(mass, 1e-12)[:, None]
        covariances = np.empty((num_classes, d, d))
        for k in range(num_classes):
            centred = x - means[k]
            covariances[k] = ((posteriors[:, k, None] * centred).T @ centred
                              / max(mass[k], 1e-12) + reg * np.eye(d))
        weighted = _log_densities(x, means, covariances) + np.log(np.maximum(mass / n, 1e-300))
        norm = logsumexp(weighted, axis=1, keepdims=True)
        new = np.exp(weighted - norm)
        if seeds is not None:
            seeds.clamp(new)
        if new.sum(axis=0).min() < min_mass:
            return MixtureFit(posteriors, total, iteration - 1, False, trace, changes, True)
        total = float(norm.sum())
        change = float(np.abs(new - posteriors).max())
        trace.append(total)
        changes.append(change)
        posteriors = new
        if change < tol:
            return MixtureFit(posteriors, total, iteration, True, trace, changes, False)
    return MixtureFit(posteriors, total, max_iter, False, trace, changes, False)
