"""Evaluation against ground truth: the best cluster→class mapping (Hungarian), accuracy,
per-class recall, confusion matrix, calibration (ECE, Brier), coverage and accuracy by
confidence threshold; and naming clusters from a few labeled images."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

logger = logging.getLogger(__name__)


def confusion_matrix(truth: np.ndarray, predicted: np.ndarray, num_truth: int,
                     num_predicted: int) -> np.ndarray:
    """[num_truth, num_predicted] counts of (true class, predicted cluster) pairs."""
    matrix = np.zeros((num_truth, num_predicted), dtype=np.int64)
    np.add.at(matrix, (truth, predicted), 1)
    return matrix


def best_mapping(truth: np.ndarray, predicted: np.ndarray, num_truth: int,
                 num_predicted: int) -> dict[int, int]:
    """Cluster → class mapping that maximises agreement (Hungarian on the confusion matrix).

    Clusters left unmatched (more clusters than classes) map to their majority class.
    """
    confusion = confusion_matrix(truth, predicted, num_truth, num_predicted)
    classes, clusters = linear_sum_assignment(-confusion)
    mapping = {int(c): int(k) for k, c in zip(classes, clusters, strict=True)}
    for cluster in range(num_predicted):
        if cluster not in mapping:
            mapping[cluster] = int(confusion[:, cluster].argmax())
    return mapping


def scorable(truth: Sequence[str | None] | None) -> bool:
    """Whether ``truth`` can score labels: every image has a class (folders gave ground truth)
    and there are at least two classes."""
    if not truth:
        return False
    return all(t is not None for t in truth) and len(set(truth)) > 1


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray,
                               bins: int = 15) -> float:
    """ECE: over ``bins`` equal-width confidence bins, the share of the images in each times
    the gap between their mean confidence and their accuracy (``correct``: 0/1 per image)."""
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    if not len(confidence):
        return 0.0
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    # per bin, |sum of confidence − sum of correct| / N = share × |mean gap|
    gap = np.bincount(which, weights=confidence - correct, minlength=bins)
    return float(np.abs(gap).sum() / len(confidence))


def calibrated_ece_floor(confidence: np.ndarray, bins: int = 15, draws: int = 100,
                         seed: int = 0) -> float:
    """The ECE that a perfectly calibrated confidence with these values would still score: the
    mean :func:`expected_calibration_error` over ``draws`` outcomes where each label is right
    with probability equal to its confidence. ECE is biased upwards on few images (each bin's
    accuracy is a sample mean), so this is the reference to read a measured ECE against: 0.08
    for 120 confidences spread evenly over 0.5–1, 0.008 for 100 times as many."""
    confidence = np.clip(np.asarray(confidence, dtype=np.float64), 0.0, 1.0)
    if not len(confidence):
        return 0.0
    rng = np.random.default_rng(seed)
    return float(np.mean([expected_calibration_error(
        confidence, rng.random(len(confidence)) < confidence, bins) for _ in range(draws)]))


def calibration(truth_names: Sequence[str], probs: np.ndarray, *,
                bins: int = 15) -> dict[str, float]:
    """Do the probabilities mean what they say? ``ece``: expected calibration error of the
    top probability in ``bins`` equal-width bins (Guo et al. 2017); ``brier``: mean squared
    error of the probability vector against the one-hot truth (0 is perfect, 2 the worst).
    Clusters are first matched to classes (Hungarian, as for accuracy)."""
    probs = np.asarray(probs, dtype=np.float64)
    names = sorted(set(truth_names))
    index = {name: i for i, name in enumerate(names)}
    truth = np.asarray([index[n] for n in truth_names], dtype=np.int64)
    if not len(truth):
        return {"ece": 0.0, "brier": 0.0}
    num_classes = probs.shape[1]
    mapping = best_mapping(truth, probs.argmax(axis=1), len(names), num_classes)
    by_class = np.zeros((len(truth), max(len(names), 1)))
    for cluster, klass in mapping.items():
        by_class[:, klass] += probs[:, cluster]
    confidence = by_class.max(axis=1)
    correct = by_class.argmax(axis=1) == truth
    ece = expected_calibration_error(confidence, correct, bins)
    brier = float(((by_class - np.eye(by_class.shape[1])[truth]) ** 2).sum(axis=1).mean())
    return {"ece": float(ece), "brier": brier}


def _mapped_correct(truth_names: Sequence[str], predicted: np.ndarray,
                    num_classes: int) -> np.ndarray:
    """[N] whether each label is right after the best cluster→class mapping."""
    names = sorted(set(truth_names))
    index = {name: i for i, name in enumerate(names)}
    truth = np.asarray([index[n] for n in truth_names], dtype=np.int64)
    predicted = np.asarray(predicted, dtype=np.int64)
    mapping = best_mapping(truth, predicted, len(names), num_classes)
    return np.asarray([mapping[int(p)] for p in predicted], dtype=np.int64) == truth


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for the ``positive`` [N] bools: the chance that a
    random positive scores above a random negative, ties counting half (Mann–Whitney U); 0.5
    when either group is empty."""
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if not n_pos or not n_neg:
        return 0.5
    from scipy.stats import rankdata

    ranks = rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


SELECTIVE_COVERAGES = (0.9, 0.8)
"""Shares of the most confident images whose accuracy :func:`confidence_quality` reports."""


def confidence_quality(truth_names: Sequence[str], predicted: np.ndarray, confidence: np.ndarray,
                       num_classes: int, *, bins: int = 15,
                       coverages: Sequence[float] = SELECTIVE_COVERAGES) -> dict[str, Any]:
    """How well ``confidence`` [N] (the chance each label is right) flags the wrong labels.

    Returns
    -------
    ``n_wrong``; ``confidence_ece`` (15-bin expected calibration error of ``confidence`` against
    whether the label is right, after the best cluster→class mapping); ``confidence_ece_floor``
    (what a perfectly calibrated confidence with the same values would score on this many
    images: :func:`calibrated_ece_floor`); ``confidence_brier``
    (mean squared error of ``confidence`` against that 0/1); ``error_auroc`` (how well low
    confidence finds the wrong labels: 1 perfect, 0.5 chance); ``selective_accuracy``: for each
    coverage c, the accuracy of the ``ceil(c·N)`` most confident images (ties by order).
    """
    correct = _mapped_correct(truth_names, predicted, num_classes)
    confidence = np.asarray(confidence, dtype=np.float64)
    n = len(correct)
    ece = expected_calibration_error(confidence, correct, bins)
    order = np.argsort(-confidence, kind="stable")
    selective = {}
    for coverage in coverages:
        kept = order[:max(1, int(np.ceil(coverage * n)))] if n else order
        selective[f"{coverage:g}"] = float(correct[kept].mean()) if n else 0.0
    return {"n_wrong": int(n - correct.sum()), "confidence_ece": float(ece),
            "confidence_ece_floor": calibrated_ece_floor(confidence, bins),
            "confidence_brier": float(((confidence - correct) ** 2).mean()) if n else 0.0,
            "error_auroc": auroc(-confidence, ~correct), "selective_accuracy": selective}


def evaluate(truth_names: Sequence[str], predicted: np.ndarray, num_classes: int,
             *, initial: np.ndarray | None = None) -> dict[str, object]:
    """Accuracy after the best cluster→class mapping, per-class recall and the confusion matrix.

    Parameters
    ----------
    truth_names : [N] ground-truth class names.
    predicted : [N] cluster ids in 0..num_classes-1.
    initial : [N] cluster ids of the k-means initialisation, scored as ``accuracy_kmeans``.
    """
    names = sorted(set(truth_names))
    index = {name: i for i, name in enumerate(names)}
    truth = np.asarray([index[n] for n in truth_names], dtype=np.int64)
    predicted = np.asarray(predicted, dtype=np.int64)
    mapping = best_mapping(truth, predicted, len(names), num_classes)
    mapped = np.asarray([mapping[int(p)] for p in predicted], dtype=np.int64)
    confusion = confusion_matrix(truth, mapped, len(names), len(names))
    support = confusion.sum(axis=1)
    recall = np.divide(np.diag(confusion), support, out=np.zeros(len(names)),
                       where=support > 0)
    result: dict[str, object] = {
        "accuracy": float((mapped == truth).mean()) if len(truth) else 0.0,
        "per_class_recall": {name: float(r) for name, r in zip(names, recall, strict=True)},
        "confusion": {"labels": names, "matrix": confusion.tolist()},
        "cluster_to_class": {f"cluster_{c}": names[k] for c, k in sorted(mapping.items())},
    }
    if initial is not None:
        initial = np.asarray(initial, dtype=np.int64)
        init_map = best_mapping(truth, initial, len(names), num_classes)
        init_mapped = np.asarray([init_map[int(p)] for p in initial])
        result["accuracy_kmeans"] = float((init_mapped == truth).mean()) if len(truth) else 0.0
    return result


def name_clusters(dev_names: Sequence[str], dev_predicted: np.ndarray,
                  num_classes: int) -> list[str]:
    """Names for clusters 0..K-1 from a few labeled images (a dev set), by Hungarian matching;
    clusters no dev image lands in keep the name ``cluster_k``."""
    names = sorted(set(dev_names))
    index = {name: i for i, name in enumerate(names)}
    truth = np.asarray([index[n] for n in dev_names], dtype=np.int64)
    confusion = confusion_matrix(truth, np.asarray(dev_predicted, np.int64), len(names),
                                 num_classes)
    classes, clusters = linear_sum_assignment(-confusion)
    result = [f"cluster_{k}" for k in range(num_classes)]
    for k, c in zip(classes, clusters, strict=True):
        if confusion[k, c] > 0:
            result[int(c)] = names[int(k)]
    return result


_NUMERIC_PREFIX = re.compile(r"^\d+[._\-\s]+")


def _bare(name: str) -> str:
    """``name`` without a numeric prefix (``075.Green_Jay`` → ``Green_Jay``)."""
    return _NUMERIC_PREFIX.sub("", name)


def match_names(given: Sequence[str], truth: Sequence[str],
                names: Sequence[str]) -> tuple[dict[str, str], str]:
    """Each dev-set class name matched to a ground-truth class (folder) name.

    Parameters
    ----------
    given : [M] images' named labels; truth : [M] the same images' ground truth.
    names : the dev set's class names (those ``given`` uses besides ``cluster_k``).

    Returns
    -------
    ``(mapping, how)``: ``mapping`` sends a given name to its truth name (names it leaves out
    count as wrong); ``how`` is ``"same"`` (every name is a folder name), ``"numeric prefix"``
    (they differ only by a numeric prefix: ``Green_Jay`` and ``075.Green_Jay``) or
    ``"best mapping"`` (no such match: the mapping that makes the most labels agree, by
    Hungarian matching, as for ``accuracy``).
    """
    classes = sorted(set(truth))
    if set(names) <= set(classes):
        return {name: name for name in names}, "same"
    by_bare: dict[str, list[str]] = {}
    for klass in classes:
        by_bare.setdefault(_bare(klass), []).append(klass)
    mapping: dict[str, str] = {}
    for name in names:
        found = [name] if name in classes else by_bare.get(_bare(name), [])
        if len(found) != 1:
            break
        mapping[name] = found[0]
    else:
        if len(set(mapping.values())) == len(mapping):
            return mapping, "numeric prefix"
    given_names = sorted(set(given))
    given_index = {name: i for i, name in enumerate(given_names)}
    truth_index = {name: i for i, name in enumerate(classes)}
    agree = confusion_matrix(np.asarray([given_index[g] for g in given], dtype=np.int64),
                             np.asarray([truth_index[t] for t in truth], dtype=np.int64),
                             len(given_names), len(classes))
    rows, columns = linear_sum_assignment(-agree)
    return {given_names[r]: classes[c] for r, c in zip(rows, columns, strict=True)}, \
        "best mapping"


def dev_set_metrics(dev_rows: Sequence[int], dev_labels: Sequence[str],
                    label_names: Sequence[str],
                    truth_names: Sequence[str] | None = None) -> dict[str, object]:
    """How the cluster names a dev set gave hold up, kept apart from the unlabeled images.

    Parameters
    ----------
    dev_rows : [D] rows of the dev images; dev_labels : [D] their given names.
    label_names : [N] every image's ``label_name`` (clusters named by the dev set).
    truth_names : [N] ground truth, when known.

    Returns
    -------
    ``n_images`` (D), ``accuracy`` (named labels equal to the given ones on the dev images) and,
    with ground truth, ``accuracy_unlabeled`` and ``n_unlabeled``: named labels equal to the
    truth on the other N - D images (no oracle mapping, unlike ``accuracy``), the dev names
    matched to the folder names by :func:`match_names` (``names_matched`` says how; a
    ``warning`` when only the best mapping matched them, never a silent 0).
    """
    rows = np.asarray(dev_rows, dtype=np.int64)
    named = [label_names[i] for i in rows]
    result: dict[str, object] = {
        "n_images": len(rows),
        "accuracy": float(np.mean([a == b for a, b in zip(named, dev_labels, strict=True)]))
        if len(rows) else 0.0,
    }
    if truth_names is not None:
        others = np.setdiff1d(np.arange(len(label_names)), rows)
        result["n_unlabeled"] = len(others)
        mapping, how = match_names([label_names[i] for i in others],
                                   [truth_names[i] for i in others], sorted(set(dev_labels)))
        result["names_matched"] = how
        if how == "best mapping":
            result["warning"] = (
                "the dev set's class names are not the folder names (nor differ from them only "
                "by a numeric prefix), so the other images were scored through the mapping of "
                "names to folders that agrees most: "
                + ", ".join(f"{a} → {b}" for a, b in sorted(mapping.items()))
                + "; name the dev labels as the folders to score them directly")
            logger.warning("%s", result["warning"])
        result["accuracy_unlabeled"] = float(np.mean(
            [mapping.get(label_names[i]) == truth_names[i] for i in others])) \
            if len(others) else 0.0
    return result


THRESHOLDS = (0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99, 0.999)
"""The confidence thresholds the report scores (``goggles export --min-confidence``)."""


def cluster_classes(cluster_to_class: dict[str, str]) -> dict[int, str]:
    """``metrics.json``'s ``cluster_to_class`` (``{"cluster_0": "cat"}``) keyed by cluster."""
    return {int(key.rsplit("_", 1)[1]): name for key, name in cluster_to_class.items()}


def coverage_curve(truth_names: Sequence[str], predicted: np.ndarray, confidence: np.ndarray,
                   mapping: dict[int, str],
                   thresholds: Sequence[float] = THRESHOLDS) -> list[dict[str, Any]]:
    """What keeping only the labels at least ``t`` sure costs and gains, for each threshold.

    Parameters
    ----------
    truth_names : [N] ground-truth class names.
    predicted : [N] cluster ids; confidence : [N] their probabilities (labels.parquet).
    mapping : cluster -> class name, the best mapping the accuracy uses
        (:func:`cluster_classes` of ``metrics["cluster_to_class"]``).

    Returns
    -------
    One dict per threshold: ``min_confidence``, ``kept`` (images), ``coverage`` (their share of
    N) and ``accuracy`` (of the kept ones after the mapping; ``None`` when none is kept).
    """
    truth = np.asarray(truth_names, dtype=object)
    named = np.asarray([mapping.get(int(k)) for k in predicted], dtype=object)
    confidence = np.asarray(confidence, dtype=np.float64)
    curve: list[dict[str, Any]] = []
    for threshold in thresholds:
        kept = confidence >= threshold
        count = int(kept.sum())
        curve.append({"min_confidence": float(threshold), "kept": count,
                      "coverage": count / len(truth) if len(truth) else 0.0,
                      "accuracy": float((named[kept] == truth[kept]).mean()) if count else None})
    return curve
