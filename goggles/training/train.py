"""Train the end model on a run's labels and score it (the train stage's work).

:func:`train_end_model` takes the run's descriptors (the features graph EM reads: one [N, 2048]
array per network, concatenated) and its posteriors, and

1. holds out ``holdout`` of the images, stratified by their label and seeded;
2. trains the same head three times on the rest: on the posteriors with the noise-aware loss
   (eq. 1), on their arg-max (hard labels) and — when folders give ground truth — on the true
   classes (the supervised upper bound);
3. scores each on the held-out images: ``agreement`` with the run's labels always, and with
   truth ``accuracy``, ``hard_label_accuracy`` and ``supervised_accuracy`` (cluster ids mapped
   to classes by the Hungarian matching the evaluation uses,
   :func:`goggles.report.evaluation.evaluate`) and ``ratio_to_supervised``;
4. trains the head that is written on every image (``config.targets``).

The scores are ``metrics.json``'s ``end_model`` and ``model.json``'s ``evaluation``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from goggles.report.evaluation import evaluate, scorable
from goggles.training.config import TrainConfig
from goggles.training.head import Head, holdout_split, predict_proba, train_head


def _fit(features: np.ndarray, targets: np.ndarray, config: TrainConfig) -> Head:
    return train_head(features, targets, head=config.head, hidden=config.hidden,
                      weight_decay=config.weight_decay, max_iter=config.max_iter,
                      seed=config.seed).head


def _accuracy(truth: Sequence[str], predicted: np.ndarray, num_classes: int) -> float:
    return float(evaluate(list(truth), predicted, num_classes)["accuracy"])  # type: ignore[arg-type]


def score_heads(features: np.ndarray, probs: np.ndarray, truth: Sequence[str] | None,
                config: TrainConfig) -> dict[str, Any]:
    """Hold out ``config.holdout`` of the images and score the soft-, hard- and (with
    ``truth``) supervised heads on them (module docstring, steps 1-3)."""
    num_classes = probs.shape[1]
    labels = probs.argmax(axis=1)
    held = holdout_split(labels, config.holdout, config.seed)
    train = ~held
    scores: dict[str, Any] = {"holdout": round(config.holdout, 6), "n_train": int(train.sum()),
                              "n_holdout": int(held.sum())}
    if not held.any() or not train.any():
        scores["note"] = "too few images to hold any out: not scored"
        return scores
    onehot = np.eye(num_classes)[labels]
    soft = predict_proba(_fit(features[train], probs[train], config), features[held])
    hard = predict_proba(_fit(features[train], onehot[train], config), features[held])
    scores["agreement"] = float((soft.argmax(axis=1) == labels[held]).mean())
    scores["hard_label_agreement"] = float((hard.argmax(axis=1) == labels[held]).mean())
    if truth is None or not scorable(truth):
        return scores
    names = sorted(set(truth))
    index = np.asarray([names.index(t) for t in truth])
    true_held = [truth[int(i)] for i in np.flatnonzero(held)]
    supervised = predict_proba(_fit(features[train], np.eye(len(names))[index[train]], config),
                               features[held])
    scores["accuracy"] = _accuracy(true_held, soft.argmax(axis=1), num_classes)
    scores["hard_label_accuracy"] = _accuracy(true_held, hard.argmax(axis=1), num_classes)
    scores["supervised_accuracy"] = _accuracy(true_held, supervised.argmax(axis=1), len(names))
    scores["label_accuracy"] = _accuracy(true_held, labels[held], num_classes)
    if scores["supervised_accuracy"] > 0:
        scores["ratio_to_supervised"] = scores["accuracy"] / scores["supervised_accuracy"]
    return scores


def train_end_model(descriptors: Sequence[np.ndarray], probs: np.ndarray,
                    truth: Sequence[str] | None, config: TrainConfig
                    ) -> tuple[Head, dict[str, Any]]:
    """The head trained on every image and its held-out scores (module docstring)."""
    start = time.perf_counter()
    if not descriptors:
        raise ValueError("the run has no descriptors to train on (its features folder predates "
                         "them): rerun the extract stage")
    features = np.concatenate([np.asarray(d, dtype=np.float32) for d in descriptors], axis=1)
    probs = np.asarray(probs, dtype=np.float64)
    if len(features) != len(probs):
        raise ValueError(f"{len(features)} descriptors but {len(probs)} labels: the features "
                         "and the labels must list the same images")
    scores = score_heads(features, probs, truth, config)
    targets = probs if config.targets == "soft" else np.eye(probs.shape[1])[probs.argmax(axis=1)]
    head = _fit(features, targets, config)
    scores.update({"head": config.head, "targets": config.targets,
                   "n_images": int(len(features)), "input_dim": int(features.shape[1]),
                   "seconds": round(time.perf_counter() - start, 3)})
    return head, scores
