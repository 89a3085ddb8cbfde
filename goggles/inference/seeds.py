"""Seeds: images whose class a person gave (``--dev-labels``), which inference keeps fixed.

A method given :class:`Seeds` numbers its clusters as the seeds' classes (cluster k is class k)
and never relabels a seed: its k-means start is matched to the seeds (Hungarian) with the seeds
set to their classes, and every E-step clamps their posteriors to their class (semi-supervised
EM, Nigam et al. 2000). So a handful of labels per class both names the clusters and pulls the
unlabeled images next to them to the right side.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

__all__ = ["Seeds"]


@dataclass(frozen=True)
class Seeds:
    """Labeled images: ``rows`` [D] (row positions among the N images) and ``classes`` [D] (in
    0..K-1); ``names`` [C ≤ K], the name of each seeded class."""

    rows: np.ndarray
    classes: np.ndarray
    names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        rows = np.asarray(self.rows, dtype=np.int64)
        classes = np.asarray(self.classes, dtype=np.int64)
        if rows.shape != classes.shape or rows.ndim != 1:
            raise ValueError("seed rows and classes must be two [D] arrays")
        object.__setattr__(self, "rows", rows)
        object.__setattr__(self, "classes", classes)

    @classmethod
    def from_names(cls, rows: Sequence[int] | np.ndarray, names: Sequence[str],
                   num_classes: int) -> Seeds | None:
        """Seeds from dev labels (class ``k`` is the k-th name in sorted order); ``None`` when
        they name more classes than ``num_classes`` (they can then only name clusters)."""
        distinct = sorted(set(names))
        if not distinct or len(distinct) > num_classes:
            return None
        index = {name: k for k, name in enumerate(distinct)}
        return cls(np.asarray(rows, dtype=np.int64),
                   np.asarray([index[n] for n in names], dtype=np.int64), tuple(distinct))

    def within(self, rows: np.ndarray) -> Seeds:
        """The seeds among ``rows`` (sorted row positions), renumbered as positions in it."""
        position = np.searchsorted(rows, self.rows)
        inside = (position < len(rows)) & (rows[np.minimum(position, len(rows) - 1)] == self.rows)
        return Seeds(position[inside], self.classes[inside], self.names)

    def align(self, labels: np.ndarray, num_classes: int) -> np.ndarray:
        """``labels`` [N] with clusters renumbered to agree with the seeds as much as possible
        (Hungarian on the seeds' confusion) and every seed set to its class."""
        labels = np.asarray(labels, dtype=np.int64)
        confusion = np.zeros((num_classes, num_classes))
        np.add.at(confusion, (labels[self.rows], self.classes), 1)
        clusters, classes = linear_sum_assignment(-confusion)
        mapping = np.empty(num_classes, dtype=np.int64)
        mapping[clusters] = classes
        out = mapping[labels]
        out[self.rows] = self.classes
        return out

    def clamp(self, posteriors: np.ndarray) -> np.ndarray:
        """``posteriors`` [N, K] with each seed's row one-hot at its class (in place)."""
        posteriors[self.rows] = 0.0
        posteriors[self.rows, self.classes] = 1.0
        return posteriors

    def centroid_labels(self, x: np.ndarray, num_classes: int) -> np.ndarray | None:
        """Each row of ``x`` [N, d] labeled with the class whose seeds' mean is nearest, the
        seeds with their own; ``None`` unless every class has a seed."""
        if len(np.unique(self.classes)) < num_classes:
            return None
        means = np.stack([x[self.rows[self.classes == k]].mean(axis=0)
                          for k in range(num_classes)])
        labels = ((x[:, None, :] - means[None]) ** 2).sum(axis=2).argmin(axis=1)
        labels[self.rows] = self.classes
        return labels
