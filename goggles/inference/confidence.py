"""What the k-nearest-neighbour graph of the images says about a labeling (graph EM).

Two uses, neither of which looks at ground truth:

* :func:`neighbour_confidence` — the confidence of a label: the mean of two estimates of the
  chance that the image belongs to its labeled class, the mixture's own posterior and the mean
  posterior of its nearest neighbours in the original features (a linear opinion pool with equal
  weights). The mixture lives in a K-dimensional spectral embedding that pulls the classes apart,
  so its posteriors alone saturate to 0/1 even on the images it gets wrong; an image whose
  neighbours carry another label is the typical wrong label, and the pool says so.
* :func:`drifted` — the guard: did EM move labels against the graph it was built on? Each image
  EM relabeled agrees with its nearest neighbours' labels either more or less after the move
  than before it; when significantly more of them agree less (one-sided sign test at the
  conventional 5% level), EM drifted off its start and graph EM keeps the start. A sign test
  asks for evidence, so EM that moves a handful of images either way is left alone.
"""

from __future__ import annotations

import numpy as np

__all__ = ["DRIFT_LEVEL", "drifted", "neighbour_confidence"]

DRIFT_LEVEL = 0.05
"""Significance level of the guard's sign test (the convention; not tuned on any data)."""


def neighbour_confidence(posteriors: np.ndarray, neighbours: np.ndarray) -> np.ndarray:
    """[n] confidence of each row's label (the arg-max of ``posteriors`` [n, K]).

    Parameters
    ----------
    posteriors : [n, K] the mixture's posteriors of the graph's nodes.
    neighbours : [n, k] each node's k nearest other nodes (k ≥ 1).

    Returns
    -------
    ``(p_i[y_i] + mean_j p_j[y_i]) / 2`` over the neighbours j of i, with ``y_i`` the arg-max:
    in [0, 1], 1 only when the node and all its neighbours are sure of the label.
    """
    posteriors = np.asarray(posteriors, dtype=np.float64)
    labels = posteriors.argmax(axis=1)
    own = posteriors[np.arange(len(labels)), labels]
    around = posteriors[neighbours, labels[:, None]].mean(axis=1)
    return np.asarray(0.5 * (own + around))


def drifted(start: np.ndarray, end: np.ndarray, neighbours: np.ndarray, *,
            level: float = DRIFT_LEVEL) -> tuple[bool, float]:
    """Whether the labels ``end`` [n] moved against the graph from ``start`` [n] → (drifted,
    p-value).

    For every row whose label changed, compare the share of its ``neighbours`` [n, k] that
    share its label after the change (under ``end``) and before it (under ``start``). A one-sided
    sign test over the rows that got worse against those that got better (ties left out): drifted
    when its p-value is below ``level``. Label ids must mean the same in both (EM refines its own
    start, so they do).
    """
    from scipy.stats import binomtest

    start = np.asarray(start, dtype=np.int64)
    end = np.asarray(end, dtype=np.int64)
    moved = np.flatnonzero(start != end)
    if not len(moved):
        return False, 1.0
    near = neighbours[moved]
    after = (end[near] == end[moved, None]).mean(axis=1)
    before = (start[near] == start[moved, None]).mean(axis=1)
    worse, better = int((after < before).sum()), int((after > before).sum())
    if not worse:
        return False, 1.0
    p = float(binomtest(worse, worse + better, 0.5, alternative="greater").pvalue)
    return p < level, p
