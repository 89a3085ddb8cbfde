"""Dev labels: semi-supervised graph EM, or a classifier of the labeled images, whichever
predicts held-out dev labels better.

Semi-supervised graph EM (:mod:`goggles.inference.seeds`) keeps the clusters of its graph: the
seeds name them and pull their neighbours along. Where the clusters follow the classes (birds:
same-family pairs 0.946 → 0.957 with 5 labels per class) that is the better use of a handful of
labels. Where they follow something else (on CIFAR-10 and TrashNet photos an image's nearest
neighbours share its class only 65–72% of the time), the seeds cannot move them; a linear
classifier trained on the labeled images alone, in the same features, does much better there
(CIFAR pairs 0.557 against 0.692 with 5 labels per class). Which one a run needs is measured on
its own dev labels, so no ground truth and no per-dataset flag is involved:

* the seeds are split into folds, the j-th seed of each class (in row order) in fold
  ``j mod F``, with F = min(5, the smallest class's seed count), so every fold leaves every class
  at least one seed to learn from;
* for each fold, graph EM seeded with the other folds and a multinomial logistic regression
  (scikit-learn's defaults) fitted on them predict the held-out seeds;
* the one with the lower Brier score on the held-out seeds wins; a tie keeps graph EM. The
  Brier score is a proper score with no constant of its own, and it weighs how sure each answer
  was, where the accuracy of one or two held-out images per fold only counts hits.

When the classifier wins, its log-probabilities are divided by the temperature that best fits its
held-out predictions of the same folds (temperature scaling), so its confidence means what it
says. The choice needs at least two seeds of every class; with fewer, graph EM's seeded labels
stand.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from goggles.inference.seeds import Seeds
from goggles.inference.views import as_described, graph_features, row_features
from goggles.io.blocks import RowBlocks, as_rows

__all__ = ["MAX_FOLDS", "SeedClassifier", "brier", "choose", "chosen_classifier",
           "classifier_labels", "fit_temperature", "graph_features", "named_by", "row_features",
           "seed_folds", "tempered", "uneven_message"]

logger = logging.getLogger(__name__)

MAX_FOLDS = 5
"""At most this many folds (the usual 5-fold cross-validation; fewer when a class has fewer
seeds)."""


def seed_folds(seeds: Seeds, num_classes: int, max_folds: int = MAX_FOLDS) -> np.ndarray | None:
    """[D] the fold of each seed, or ``None`` when a class has fewer than two seeds.
    F = min(5, the smallest class's seed count): the j-th seed of each class (in row order) is
    in fold j mod F, so every fold leaves every class a seed to learn from. (Letting classes of
    one seed take part, never held out, was measured: with 2 labels per class from the tool the
    choice on a few held-out labels went wrong more often than right, TrashNet 0.5865 → 0.5514.)
    """
    counts = np.bincount(seeds.classes, minlength=num_classes)
    if len(counts) != num_classes or counts.min() < 2:
        return None
    folds_n = int(min(max_folds, counts.min()))
    folds = np.empty(len(seeds.rows), dtype=np.int64)
    for k in range(num_classes):
        mine = np.flatnonzero(seeds.classes == k)
        mine = mine[np.argsort(seeds.rows[mine], kind="stable")]
        folds[mine] = np.arange(len(mine)) % folds_n
    return folds


def named_by(posteriors: np.ndarray, seeds: Seeds) -> np.ndarray:
    """[N, K] an unlabeled fit's ``posteriors`` with its clusters renumbered as the classes
    most of their ``seeds`` have (Hungarian on the seeds' confusion), so it can be scored
    against held-out labels; clusters no seed falls in take the classes left over."""
    from scipy.optimize import linear_sum_assignment

    num_classes = posteriors.shape[1]
    confusion = np.zeros((num_classes, num_classes))
    np.add.at(confusion, (posteriors[seeds.rows].argmax(axis=1), seeds.classes), 1)
    clusters, classes = linear_sum_assignment(-confusion)
    out = np.empty_like(posteriors)
    out[:, classes] = posteriors[:, clusters]
    return out


def brier(posteriors: np.ndarray, classes: np.ndarray) -> float:
    """Sum over rows of the squared distance between ``posteriors`` [n, K] and the one-hot
    ``classes`` [n] (0 for sure right answers, 2 for sure wrong ones)."""
    posteriors = np.asarray(posteriors, dtype=np.float64)
    return float(((posteriors - np.eye(posteriors.shape[1])[classes]) ** 2).sum())


class SeedClassifier:
    """A multinomial logistic regression on the labeled images' features (scikit-learn's
    defaults: L2, C = 1), with a column for each of the ``num_classes`` classes; its
    probabilities softened by ``temperature`` (:func:`fit_temperature`)."""

    def __init__(self, num_classes: int, temperature: float = 1.0) -> None:
        self.num_classes = num_classes
        self.temperature = temperature
        self._model: Any = None

    def fit(self, features: np.ndarray, classes: np.ndarray) -> SeedClassifier:
        from sklearn.linear_model import LogisticRegression

        self._model = LogisticRegression(max_iter=1000).fit(features, classes)
        return self

    def log_proba(self, features: np.ndarray) -> np.ndarray:
        """[n, K] log-probabilities at temperature 1; −inf for a class it never saw."""
        out = np.full((len(features), self.num_classes), -np.inf)
        out[:, self._model.classes_] = self._model.predict_log_proba(features)
        return out

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        return tempered(self.log_proba(features), self.temperature)


def tempered(log_proba: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log_proba / temperature), row-wise."""
    from scipy.special import softmax

    return np.asarray(softmax(np.asarray(log_proba, dtype=np.float64) / temperature, axis=1))


def fit_temperature(log_proba: np.ndarray, classes: np.ndarray) -> float:
    """The temperature T in [0.01, 100] that minimises the negative log-likelihood of
    ``classes`` under ``softmax(log_proba / T)`` (temperature scaling, Guo et al. 2017), from
    held-out predictions: above 1 softens an overconfident classifier, below 1 sharpens one that
    regularisation left unsure (a logistic regression of ten images, scikit-learn's C = 1, gives
    TrashNet's 5 classes a top probability near 0.3 where it is right two times in three)."""
    from scipy.optimize import minimize_scalar

    rows = np.arange(len(classes))

    def loss(temperature: float) -> float:
        return float(-np.log(np.maximum(tempered(log_proba, temperature)[rows, classes],
                                        1e-300)).sum())

    return float(minimize_scalar(loss, bounds=(0.01, 100.0), method="bounded").x)


def choose(fit_seeded: Callable[[Seeds], np.ndarray], seed_features: np.ndarray, seeds: Seeds,
           num_classes: int, unlabeled: np.ndarray | None = None) -> dict[str, Any] | None:
    """Cross-validate graph EM (``fit_seeded(seeds) → posteriors [N, K]``) against a
    :class:`SeedClassifier` on ``seed_features`` [D, F] (the seeds' features, in seed order)
    and, given ``unlabeled`` [N, K] (the fit without any label), against that fit with its
    clusters named by the training folds' seeds (:func:`named_by`): the guard that keeps the
    labels of no labels where the labels do not predict held-out labels better.

    Returns ``None`` when the seeds are too few to split (:func:`seed_folds`), else
    ``{"chosen": "graph-em" | "classifier" | "unlabeled", "folds": F, "held_out_brier":
    {...}}`` with the mean Brier score per held-out seed of each (the lowest wins; ties go to
    graph EM, then the unlabeled fit) and, when the classifier is chosen, ``"temperature"``:
    the one that calibrates its held-out predictions (:func:`fit_temperature`)."""
    folds = seed_folds(seeds, num_classes)
    if folds is None:
        return None
    total = {"graph-em": 0.0, "classifier": 0.0}
    if unlabeled is not None:
        total["unlabeled"] = 0.0
    held_out = np.empty((len(seeds.rows), num_classes))
    for fold in range(int(folds.max()) + 1):
        train, held = folds != fold, folds == fold
        subset = Seeds(seeds.rows[train], seeds.classes[train], seeds.names)
        fitted = fit_seeded(subset)
        total["graph-em"] += brier(fitted[seeds.rows[held]], seeds.classes[held])
        classifier = SeedClassifier(num_classes).fit(seed_features[train], seeds.classes[train])
        held_out[held] = classifier.log_proba(seed_features[held])
        total["classifier"] += brier(tempered(held_out[held], 1.0), seeds.classes[held])
        if unlabeled is not None:
            total["unlabeled"] += brier(named_by(unlabeled, subset)[seeds.rows[held]],
                                        seeds.classes[held])
    chosen = min(total, key=lambda k: (total[k], ("graph-em", "unlabeled", "classifier").index(k)))
    scores = {k: round(v / len(seeds.rows), 6) for k, v in total.items()}
    logger.info("dev labels: %s predicts the held-out dev labels best (Brier per image: %s; "
                "%d folds)", chosen, ", ".join(f"{k} {v:.4f}" for k, v in scores.items()),
                int(folds.max()) + 1)
    record: dict[str, Any] = {"chosen": chosen, "folds": int(folds.max()) + 1,
                              "held_out_brier": scores}
    if chosen == "classifier":
        record["temperature"] = round(fit_temperature(held_out, seeds.classes), 4)
    return record


def chosen_classifier(affinity: np.ndarray | RowBlocks,
                      descriptors: np.ndarray | Sequence[np.ndarray], seeds: Seeds,
                      num_classes: int, record: dict[str, Any] | None,
                      seed_features: np.ndarray | None = None) -> SeedClassifier | None:
    """The classifier a fit's dev choice ``record`` (:func:`choose`) gave the labels from, fitted
    on every seed and tempered as recorded; ``None`` when graph EM gave them. A run's fit and
    the labeler of its new images (:mod:`goggles.training.labeler`) both build it here, from
    the same seeds and features, so they get the same classifier (scikit-learn's solver is
    deterministic)."""
    if record is None or record.get("chosen") != "classifier":
        return None
    if seed_features is None:
        seed_features = graph_features(as_rows(affinity), as_described(descriptors), seeds.rows)
    return SeedClassifier(num_classes, float(record["temperature"])).fit(seed_features,
                                                                         seeds.classes)


def uneven_message(seeds: Seeds, num_classes: int) -> str:
    """What to tell a user whose dev labels give some class fewer than two images."""
    counts = np.bincount(seeds.classes, minlength=num_classes)
    short = [f"{seeds.names[k] if k < len(seeds.names) else f'class {k}'!r}: {counts[k]}"
             for k in range(num_classes) if counts[k] < 2]
    return (f"the dev labels give {len(short)} of the {num_classes} classes fewer than 2 images "
            f"({', '.join(short[:5])}{', …' if len(short) > 5 else ''}), so they only seed "
            "graph EM and neither a classifier of them nor the fit without labels is tried; "
            "ask for more images (goggles suggest, the report's list) until every class has "
            "at least 2")


def classifier_labels(affinity: np.ndarray | RowBlocks,
                      descriptors: np.ndarray | Sequence[np.ndarray], seeds: Seeds,
                      num_classes: int, record: dict[str, Any] | None) -> np.ndarray | None:
    """[N, K] the labels' probabilities when the dev choice ``record`` gave them to the
    classifier (:func:`chosen_classifier`, fitted on every seed, tempered, seeds clamped);
    ``None`` when graph EM keeps them."""
    rows = as_rows(affinity)
    described = as_described(descriptors)
    classifier = chosen_classifier(rows, described, seeds, num_classes, record)
    if classifier is None:
        return None
    probs = np.empty((rows.shape[0], num_classes))
    for start, features in row_features(rows, described):
        probs[start:start + len(features)] = classifier.predict_proba(features)
    return seeds.clamp(probs)
