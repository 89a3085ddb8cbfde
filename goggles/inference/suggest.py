"""Which images to label next: the few whose labels would help inference most (issue 26).

A person can label a handful of images; which ones decides how much they help. Outside birds the
clusters of graph EM do not follow the classes, so naming clusters from their exemplars goes
wrong, and the least confident images of each cluster miss classes no cluster found
(docs/methods.md, "Which images to label"). So the images asked for do not depend on a cluster
being a class:

Typical images that cover the data (TypiClust, Hacohen et al. 2022): the images are split into
``budget + labeled`` k-means clusters in graph EM's feature space (the rows of A and the
descriptors side by side, :func:`goggles.inference.views.graph_features`), and from each cluster
that holds no labeled image, largest first, the image of highest typicality (the inverse of its
mean distance to its :data:`TYPICAL_NEIGHBOURS` nearest cluster mates). Each cluster is a mode
of the data a label should cover, whatever class it holds; a later round, with the labels of the
earlier ones, asks for the modes they left uncovered.

Uncertain images spread over the data (margin sampling with diversity, cluster-margin) were
measured as later rounds and did worse at these budgets, as the low-budget literature finds:
on TrashNet with 10 labels per class, typical images in every round 0.709 against 0.617 with
margin picks in rounds 2 and 3 (docs/methods.md, "Which images to label").

Above ``max_rows`` images it works on a seeded uniform sample (with the labeled images in it): a
person labels tens of images, never enough to need the rest.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from goggles.inference.views import as_described, graph_features, graph_sample
from goggles.io.blocks import RowBlocks, as_rows

__all__ = ["MAX_ROWS", "PER_CLASS", "TYPICAL_NEIGHBOURS", "suggest_images", "typical_images"]

logger = logging.getLogger(__name__)

TYPICAL_NEIGHBOURS = 20
"""Neighbours whose mean distance measures an image's typicality (TypiClust's 20)."""

MAX_ROWS = 5000
"""Above this many images the suggestions are drawn from a seeded sample of this size (its
features, the rows of A beside the descriptors, then stay within a few hundred MB)."""

PER_CLASS = 4
"""Images a round asks for per class by default (the report's list; ``goggles suggest
--budget`` sets any other): 10 per class in three rounds is 4 + 3 + 3."""


def _kmeans(x: np.ndarray, clusters: int, seed: int) -> np.ndarray:
    from sklearn.cluster import KMeans

    return np.asarray(KMeans(clusters, n_init=1, random_state=seed).fit_predict(x))


def typical_images(x: np.ndarray, budget: int, *, labeled: Sequence[int] | np.ndarray = (),
                   seed: int = 0) -> np.ndarray:
    """[≤ budget] rows of ``x`` [N, D] (unit-length parts side by side) to label first: the most
    typical image of each of the largest k-means clusters that hold no labeled image
    (``labeled``), one per cluster, with ``budget + len(labeled)`` clusters in all."""
    n = len(x)
    labeled = np.asarray(labeled, dtype=np.int64)
    budget = min(budget, n - len(labeled))
    if budget <= 0:
        return np.zeros(0, dtype=np.int64)
    clusters = min(n, budget + len(labeled))
    assignment = _kmeans(x, clusters, seed)
    covered = set(assignment[labeled].tolist())
    is_labeled = np.zeros(n, dtype=bool)
    is_labeled[labeled] = True
    picks: list[int] = []
    for c in np.argsort(-np.bincount(assignment, minlength=clusters), kind="stable"):
        if len(picks) == budget:
            break
        members = np.flatnonzero((assignment == c) & ~is_labeled)
        if int(c) in covered or not len(members):
            continue
        picks.append(int(members[np.argmax(_typicality(x[members]))]))
    if len(picks) < budget:  # clusters that held labels: fill with the most typical of the rest
        rest = np.setdiff1d(np.flatnonzero(~is_labeled), picks)
        order = np.argsort(-_typicality(x[rest]), kind="stable")
        picks += rest[order[:budget - len(picks)]].tolist()
    return np.sort(np.asarray(picks, dtype=np.int64))


def _typicality(members: np.ndarray) -> np.ndarray:
    """[n] inverse mean distance of each row of ``members`` [n, D] to its nearest others."""
    if len(members) < 2:
        return np.ones(len(members))
    k = min(TYPICAL_NEIGHBOURS, len(members) - 1)
    squared = (members * members).sum(axis=1)
    distance = squared[:, None] + squared[None, :] - 2.0 * (members @ members.T)
    np.fill_diagonal(distance, np.inf)
    nearest = np.partition(np.maximum(distance, 0.0), k - 1, axis=1)[:, :k]
    return 1.0 / (np.sqrt(nearest).mean(axis=1) + 1e-9)


def suggest_images(affinity: np.ndarray | RowBlocks, descriptors: Sequence[np.ndarray],
                   budget: int, *, labeled: Sequence[int] | np.ndarray = (), seed: int = 0,
                   max_rows: int = MAX_ROWS) -> np.ndarray:
    """[≤ budget] sorted rows of the N images (A [N, M] as an array or row blocks, and graph EM's
    descriptors, one [N, D] per network) that a person should label next, none of ``labeled``
    (the rows labeled in earlier rounds): :func:`typical_images` of the images as graph EM
    sees them, on a seeded sample above ``max_rows`` images."""
    rows = as_rows(affinity)
    labeled = np.unique(np.asarray(labeled, dtype=np.int64))
    sample = np.union1d(graph_sample(rows.shape[0], max_rows, np.random.default_rng(seed)),
                        labeled)
    x = graph_features(rows, as_described(descriptors), sample)
    picks = typical_images(x, budget, labeled=np.searchsorted(sample, labeled), seed=seed)
    logger.info("suggested %d image(s) to label (%d labeled before)", len(picks), len(labeled))
    return sample[picks]
