"""What a fit leaves for the report and ``inference.json``, whatever the method.

:func:`fit_gaussians` fits the per-prototype class-conditional Gaussians of A under a method's
final labels (the paper's EM has them already; the other methods call this), and
:func:`informative_prototypes` keeps the few prototypes of each class that separate it best:
the report draws their score histograms and image patches. :func:`inference_state` is the JSON
the infer stage writes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from goggles.inference.likelihood import (
    GaussianParameters,
    gaussians_from_statistics,
    hard_statistics,
    self_mask_positions,
)
from goggles.io.blocks import RowBlocks, as_rows, sub_blocks

if TYPE_CHECKING:
    from goggles.inference.base import FitRecord, Method

PATCHES_PER_CLUSTER = 5


def fit_gaussians(affinity: np.ndarray | RowBlocks, labels: np.ndarray, source_index: np.ndarray,
                  num_classes: int, *, variance_floor: float,
                  exclude_self: bool = False) -> tuple[GaussianParameters, np.ndarray]:
    """Per-prototype class-conditional Gaussians of A [N, M] under hard ``labels`` [N], one pass.

    Returns ``(params, prototype_class)``: ``params.mean``/``std`` are [M, K]; the class of a
    prototype [M] is the label of its source image.
    """
    rows = as_rows(affinity)
    labels = np.asarray(labels, dtype=np.int64)
    source_index = np.asarray(source_index, dtype=np.int64)
    stats = None
    for start, block in sub_blocks(rows):
        stop = start + block.shape[0]
        r, c = self_mask_positions(source_index if exclude_self else None, block.shape[0], start)
        part = hard_statistics(block, labels[start:stop], num_classes, r, c)
        stats = part if stats is None else stats + part
    assert stats is not None
    return gaussians_from_statistics(stats, variance_floor, None), labels[source_index]


def informative_prototypes(params: GaussianParameters | None, prototype_class: np.ndarray | None,
                           *, per_class: int = PATCHES_PER_CLUSTER) -> list[dict[str, Any]]:
    """The ``per_class`` prototypes of each class that separate it best, with their Gaussians.

    Separation of prototype j of class z: ``(mu_jz - mu_jk) / sqrt((s_jz² + s_jk²) / 2)`` with k
    the other class of highest mean — how far its own class's scores stand above the rest.

    Returns
    -------
    ``[{"column", "class", "separation", "mean" [K], "std" [K]}, ...]``, best first per class.
    """
    if params is None or prototype_class is None or params.mean.shape[1] < 2:
        return []
    mean, std = np.asarray(params.mean), np.asarray(params.std)
    columns = np.arange(len(mean))
    own = np.asarray(prototype_class, dtype=np.int64)
    others = mean.copy()
    others[columns, own] = -np.inf
    rival = others.argmax(axis=1)
    spread = np.sqrt((std[columns, own] ** 2 + std[columns, rival] ** 2) / 2)
    separation = (mean[columns, own] - mean[columns, rival]) / np.maximum(spread, 1e-12)
    out = []
    for k in range(mean.shape[1]):
        members = np.flatnonzero(own == k)
        for j in members[np.argsort(-separation[members], kind="stable")][:per_class]:
            out.append({"column": int(j), "class": k, "separation": float(separation[j]),
                        "mean": mean[j].tolist(), "std": std[j].tolist()})
    return out




def inference_state(model: FitRecord, method: str, names: list[str],
                    dev: dict[str, Any] | None) -> dict[str, Any]:
    """The ``inference.json`` of a fit: the method, its iterations and convergence, the start it
    refined, the cluster names, its traces and warnings, the dev set it was given, and the
    fitted Gaussians of the prototypes that separate the classes best (all M x K of them would
    grow with N)."""
    initial = model.initial_labels_
    return {
        "method": method, "em_iterations": model.n_iter_, "converged": bool(model.converged_),
        "initial_labels": None if initial is None else initial.tolist(), "cluster_names": names,
        "log_likelihood_trace": model.log_likelihood_trace_, "change_trace": model.change_trace_,
        "warnings": model.warnings_, "dev": dev,
        "prototypes": informative_prototypes(model.params_, model.prototype_class_),
    }


def finish_labeler(model: Method, affinity: np.ndarray | RowBlocks, source_index: np.ndarray,
                   probs: np.ndarray) -> None:
    """Set a labeler's posteriors, warn when they use fewer classes than asked, and fit the
    per-prototype Gaussians the report draws on its labels."""
    num_classes = model.num_classes  # type: ignore[attr-defined]
    labels = probs.argmax(axis=1)
    used = len(np.unique(labels))
    if used < num_classes:
        model.warnings_.append(f"method {model.name!r} labels every image with only {used} of "
                               f"num_classes={num_classes} classes")
    model.posteriors_ = probs
    model.params_, model.prototype_class_ = fit_gaussians(
        affinity, labels, source_index, num_classes,
        variance_floor=model.variance_floor,  # type: ignore[attr-defined]
        exclude_self=model.exclude_self)  # type: ignore[attr-defined]
