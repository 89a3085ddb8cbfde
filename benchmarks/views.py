"""What each view of a task's images can give, beside the default's labels (issue 16):
k-means on each view alone (the affinity rows, each network's bilinear descriptors) and a
supervised linear probe on all of them (5-fold logistic regression: the ceiling of what a
labeler on these features could reach)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from goggles.report.evaluation import evaluate


def unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def kmeans_accuracy(view: np.ndarray, truth: Sequence[str], k: int, seed: int = 0) -> float:
    """Accuracy (best matching of clusters to classes) of k-means on one unit-length view."""
    from sklearn.cluster import KMeans

    labels = KMeans(k, n_init=10, random_state=seed).fit_predict(unit_rows(view))
    return float(evaluate(list(truth), labels, k)["accuracy"])  # type: ignore[arg-type]


def probe_accuracy(views: Sequence[np.ndarray], truth: Sequence[str], folds: int = 5,
                   seed: int = 0) -> float:
    """Mean held-out accuracy of a logistic regression on the concatenated unit-length views,
    over ``folds`` stratified folds."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    x = np.concatenate([unit_rows(v) for v in views], axis=1)
    y = np.unique(np.asarray(truth), return_inverse=True)[1]
    split = StratifiedKFold(folds, shuffle=True, random_state=seed)
    return float(cross_val_score(LogisticRegression(C=10.0, max_iter=2000), x, y,
                                 cv=split).mean())


def view_scores(views: dict[str, np.ndarray], truth: Sequence[str], k: int,
                seed: int = 0) -> dict[str, float]:
    """``kmeans:<view>`` for each view and ``probe`` on all of them."""
    out = {f"kmeans:{name}": kmeans_accuracy(v, truth, k, seed) for name, v in views.items()}
    out["probe"] = probe_accuracy(list(views.values()), truth, seed=seed)
    return out


def print_views(rows: list[dict[str, object]], names: Sequence[str]) -> None:
    """One line per task: the default's accuracy, k-means per view, the linear probe."""
    header = (f"{'task':<9} {'classes':<36} {'N':>5} {'default':>8}"
              + "".join(f" {'km:' + n:>14}" for n in names) + f" {'probe':>7}")
    print("\n" + header)
    print("-" * len(header))
    for r in rows:
        views = r["views"]
        assert isinstance(views, dict)
        print(f"{r['task']:<9} {str(r['classes'])[:36]:<36} {r['n']:>5} {r['accuracy']:>8.4f}"
              + "".join(f" {views[f'kmeans:{n}']:>14.4f}" for n in names)
              + f" {views['probe']:>7.4f}")
