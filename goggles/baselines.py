"""The paper's comparison labelers (§5.1, Tables 1 and 2), beside GOGGLES' own EM.

``--method`` picks one (:data:`goggles.config.METHODS`); :func:`goggles.steps.infer_labels`
runs ``em``, ``kmeans`` and ``em-random`` with :class:`goggles.inference.AffinityEM` and hands
the two below to :func:`fit_baseline`:

* ``pgm`` (AF+PGM) — the paper's discretisation of A fed to Snorkel's LabelModel
  (``snorkel==0.10.0``): each prototype column gets a class by k-means on the columns of A (Aᵀ's
  rows, images as features); each column's threshold is the mean of its minimum and maximum; an
  image scoring above it gets the column's class, any other an abstain. LabelModel denoises that
  [N, M] label matrix. Snorkel's LabelModel is a matrix-completion model over the (M·K)² overlap
  matrix, so it is refused above :data:`PGM_MAX_COLUMNS` label columns times classes (the paper
  timed out on large tasks too); cap prototypes with ``--max-prototypes``.
* ``backbone`` — the backbone's own ImageNet classifier as a labeler, applied to the stored
  filter maps (the rest of the network after the layer the filter maps come from). The K
  ImageNet classes predicted (arg-max) most often become the clusters, named after them, and each
  image's probabilities are the softmax of its logits restricted to those K classes. This needs
  no label and no hand mapping; evaluation then maps clusters to the true classes with the same
  Hungarian matching as every method. Where the weights carry no classifier (the packaged VGG-16
  ships conv layers only) it fails with :class:`BackboneHeadUnavailable`, naming the fix.

Every method returns ``(probs [N, K], fit)``; ``fit`` has the attributes
:func:`goggles.steps.run_infer` records (those of :class:`~goggles.inference.AffinityEM`), with
per-prototype Gaussians fitted on the final labels so the report can draw them for any method.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.special import logsumexp

from goggles.blocks import RowBlocks, as_rows, sub_blocks
from goggles.config import InferConfig
from goggles.fit import FitRecord
from goggles.likelihood import (
    GaussianParameters,
    gaussians_from_statistics,
    hard_statistics,
    self_mask_positions,
)

logger = logging.getLogger(__name__)

BASELINES = ("pgm", "backbone")
# LabelModel's overlap matrix is (M·K)²; 12,000² float32 entries are ~0.6 GB.
PGM_MAX_COLUMNS = 12_000
PGM_EPOCHS = 500
PGM_LEARNING_RATE = 1e-3


class BackboneHeadUnavailable(RuntimeError):
    """The backbone's weights carry no ImageNet classifier; the message says how to add one."""


@dataclass
class MethodFit(FitRecord):
    """What a baseline leaves for ``inference.json`` (the attributes of ``AffinityEM``).

    ``initial_labels_`` stays ``None`` (no k-means start); ``params_`` [M, K] Gaussians and
    ``prototype_class_`` [M] are fitted on the final labels; ``cluster_names_`` names the
    clusters where the method knows them (``backbone``).
    """

    converged_: bool = field(default=True, init=False)
    cluster_names_: list[str] | None = field(default=None, init=False)


@dataclass(frozen=True)
class FilterMaps:
    """Filter maps of the images in row order, for the ``backbone`` labeler.

    ``blocks()`` yields [n, C, H, W] float32 arrays that tile the N rows in order; ``backbone``
    and ``weights_uri`` name the network they came from (``""``: resolved as for extraction).
    """

    backbone: str
    blocks: Callable[[], Iterator[np.ndarray]]
    weights_uri: str = ""


def _dense(rows: RowBlocks) -> np.ndarray:
    out = np.empty(rows.shape, dtype=np.float32)
    for start, block in rows.blocks():
        out[start:start + block.shape[0]] = block
    return out


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


# -- AF+PGM ------------------------------------------------------------------------------------

def discretise(affinity: np.ndarray, num_classes: int, *, seed: int,
               n_init: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """The paper's AF+PGM label matrix (§5.1).

    Parameters
    ----------
    affinity : [N, M] scores.

    Returns
    -------
    (label_matrix [N, M] int64 in {-1 (abstain), 0..K-1}, column_class [M] int64): column j
    votes ``column_class[j]`` for rows scoring above ``(min_j + max_j) / 2`` and abstains on the
    others; the column classes come from k-means on the columns (images as features).
    """
    from sklearn.cluster import KMeans

    a = np.asarray(affinity, dtype=np.float64)
    model = KMeans(n_clusters=num_classes, n_init=n_init, random_state=seed)
    column_class = model.fit_predict(a.T).astype(np.int64)
    threshold = (a.min(axis=0) + a.max(axis=0)) / 2
    votes = np.where(a > threshold, column_class[None, :], -1)
    return votes.astype(np.int64), column_class


def label_model_proba(label_model, label_matrix: np.ndarray) -> np.ndarray:  # type: ignore[no-untyped-def]
    """``LabelModel.predict_proba`` computed in log space ([N, M] votes → [N, K]).

    Snorkel 0.10 multiplies one probability per label column before normalising, which
    underflows to 0/0 with hundreds of columns; this is the same formula with ``logsumexp``.
    """
    k = label_model.cardinality
    shifted = label_matrix + 1
    n, m = shifted.shape
    augmented = np.zeros((n, m * k))
    for value in range(1, k + 1):
        rows, cols = np.nonzero(shifted == value)
        augmented[rows, cols * k + value - 1] = 1.0
    mu = np.clip(label_model.mu.detach().cpu().numpy(), 1e-12, None)
    log_x = augmented @ np.log(mu) + np.log(np.asarray(label_model.p))
    return np.exp(log_x - logsumexp(log_x, axis=1, keepdims=True))  # type: ignore[no-any-return]


def _label_model_class():  # type: ignore[no-untyped-def]
    """Snorkel's LabelModel with its training loss computed without boolean indexing.

    ``_loss_mu`` is ``||(O - mu P muᵀ)[mask]||² + ||rowsum(mu P) - diag(O)||² + l2 term``;
    gathering the masked entries of the (M·K)² matrix every epoch dominates the fit on a CPU, so
    the subclass multiplies by the mask instead and writes the scalar-l2 term as
    ``l2² ||mu - mu_init||²``. Same values and gradients (tests compare both fits); everything
    else is Snorkel's.
    """
    import torch
    from snorkel.labeling.model import LabelModel

    class MaskedLossLabelModel(LabelModel):  # type: ignore[misc]
        def _loss_l2(self, l2: float = 0) -> torch.Tensor:
            if isinstance(l2, int | float):
                return (l2 ** 2) * ((self.mu - self.mu_init) ** 2).sum()
            return super()._loss_l2(l2)

        def _loss_mu(self, l2: float = 0) -> torch.Tensor:
            mask = getattr(self, "_mask_weights", None)
            if mask is None or mask.shape != self.mask.shape:
                mask = self._mask_weights = self.mask.to(self.O.dtype)
            residual = (self.O - self.mu @ self.P @ self.mu.t()) * mask
            diagonal = torch.sum(self.mu @ self.P, 1) - torch.diag(self.O)
            return (residual * residual).sum() + (diagonal * diagonal).sum() + self._loss_l2(l2)

    return MaskedLossLabelModel


def fit_pgm(affinity: np.ndarray | RowBlocks, num_classes: int, *,
            seed: int) -> tuple[np.ndarray, np.ndarray]:
    """AF+PGM: Snorkel's LabelModel on the discretised A.

    Returns ``(probs [N, K], column_class [M])``. Training: :data:`PGM_EPOCHS` epochs of SGD at
    learning rate :data:`PGM_LEARNING_RATE` (Snorkel's default 0.01 diverges to a NaN loss with
    hundreds of label columns; on a NaN the rate is cut tenfold, as Snorkel's message advises, up
    to twice). Snorkel seeds Python's, numpy's and torch's global generators inside ``fit``;
    they are restored afterwards. Torch runs on one thread for the fit: the model's tensors are
    small, and on a busy CPU more threads only wait on each other (5x slower measured).
    """
    rows = as_rows(affinity)
    n, m = rows.shape
    if m * num_classes > PGM_MAX_COLUMNS:
        raise ValueError(
            f"method 'pgm' would give Snorkel's LabelModel a {m * num_classes}² overlap matrix "
            f"({m} prototypes x {num_classes} classes); keep prototypes x classes at most "
            f"{PGM_MAX_COLUMNS} with --max-prototypes {PGM_MAX_COLUMNS // num_classes}, or use "
            "--method em")
    try:
        import torch

        label_model_class = _label_model_class()
    except ImportError as error:
        raise RuntimeError("method 'pgm' needs Snorkel: pip install snorkel==0.10.0 (the "
                           "'baselines' extra)") from error
    votes, column_class = discretise(_dense(rows), num_classes, seed=seed)
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rate = PGM_LEARNING_RATE
        for attempt in range(3):
            label_model = label_model_class(cardinality=num_classes, verbose=False, device="cpu")
            try:
                label_model.fit(votes, n_epochs=PGM_EPOCHS, lr=rate, seed=seed,
                                progress_bar=False)
                break
            except Exception as error:  # Snorkel raises a bare Exception on a NaN loss
                if "NaN" not in str(error) or attempt == 2:
                    raise
                rate /= 10
                logger.info("LabelModel: NaN loss; retrying at learning rate %g", rate)
    finally:
        torch.set_num_threads(threads)
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])
    return label_model_proba(label_model, votes), column_class


# -- the backbone as a labeler -------------------------------------------------------------------

def classifier_weights(backbone: str, weights_uri: str = "") -> dict[str, Any]:
    """The backbone's full weights, classifier included, or :class:`BackboneHeadUnavailable`
    naming the ways to provide them (checked before a run starts, see
    :meth:`goggles.runners.RunParameters.validate`)."""
    from goggles.backbones import SPECS, resolve_weights

    state, source = resolve_weights(backbone, weights_uri)
    if not any(key.startswith("classifier.") for key in state):
        raise BackboneHeadUnavailable(
            f"method 'backbone' needs {backbone}'s ImageNet classifier, but its weights "
            f"({source}) hold only the convolutional layers. Put torchvision's "
            f"{SPECS[backbone].torchvision_file} (the full model) in torch's hub cache "
            "($TORCH_HOME/hub/checkpoints) or pass --weights with a full state dict, or use "
            "--backbone mobilenet_v2, whose packaged weights include the classifier")
    return state


def imagenet_logits(filter_maps: FilterMaps) -> np.ndarray:
    """ImageNet logits [N, 1000] of the backbone's classifier applied to its filter maps."""
    import torch

    from goggles.backbones import SPECS

    if filter_maps.backbone not in SPECS:
        raise ValueError(f"unknown backbone {filter_maps.backbone!r}; choose one of "
                         f"{', '.join(SPECS)}")
    spec = SPECS[filter_maps.backbone]
    state = classifier_weights(filter_maps.backbone, filter_maps.weights_uri)
    model: Any = spec.build()
    model.load_state_dict(state, strict=True)
    model.eval()
    parts = []
    with torch.inference_mode():
        for block in filter_maps.blocks():
            x = torch.from_numpy(np.ascontiguousarray(block, dtype=np.float32))
            if filter_maps.backbone == "vgg16":
                x = torch.flatten(model.avgpool(x), 1)
            else:  # torchvision's MobileNetV2.forward after .features
                x = torch.flatten(torch.nn.functional.adaptive_avg_pool2d(x, (1, 1)), 1)
            parts.append(model.classifier(x).numpy().astype(np.float64))
    return np.concatenate(parts)


def imagenet_categories() -> list[str]:
    """The 1000 ImageNet class names, in torchvision's order."""
    from torchvision.models import MobileNet_V2_Weights

    return list(MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"])


def restrict_to_top_classes(logits: np.ndarray,
                            num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``num_classes`` classes predicted most often and the softmax over just them.

    Parameters
    ----------
    logits : [N, C] scores over C >= K classes.

    Returns
    -------
    (probs [N, K], chosen [K] class indices): classes ranked by how many images take them as
    arg-max, ties (and classes no image takes) by total softmax probability.
    """
    logits = np.asarray(logits, dtype=np.float64)
    if logits.shape[1] < num_classes:
        raise ValueError(f"{num_classes} classes requested from a {logits.shape[1]}-way "
                         "classifier")
    counts = np.bincount(logits.argmax(axis=1), minlength=logits.shape[1])
    mass = np.exp(logits - logsumexp(logits, axis=1, keepdims=True)).sum(axis=0)
    chosen = np.lexsort((-mass, -counts))[:num_classes]
    restricted = logits[:, chosen]
    probs = np.exp(restricted - logsumexp(restricted, axis=1, keepdims=True))
    return probs, chosen


# -- dispatch ------------------------------------------------------------------------------------

def fit_baseline(affinity: np.ndarray | RowBlocks, source_index: np.ndarray,
                 config: InferConfig, *,
                 filter_maps: FilterMaps | None = None) -> tuple[np.ndarray, MethodFit]:
    """Posteriors [N, K] of ``config.method`` (``pgm`` or ``backbone``) and its fit record.

    Parameters
    ----------
    affinity : [N, M] array or row blocks of A.
    source_index : [M] row of each prototype's source image.
    filter_maps : the images' filter maps, needed by ``backbone``.
    """
    fit = MethodFit()
    if config.method == "pgm":
        probs, _ = fit_pgm(affinity, config.num_classes, seed=config.seed)
    elif config.method == "backbone":
        if filter_maps is None:
            raise ValueError("method 'backbone' needs the filter maps (the extract stage's "
                             "features); pass them to infer_labels")
        probs, chosen = restrict_to_top_classes(imagenet_logits(filter_maps),
                                                config.num_classes)
        names = imagenet_categories()
        fit.cluster_names_ = [names[c] for c in chosen]
    else:
        raise ValueError(f"unknown baseline {config.method!r}; choose one of "
                         f"{', '.join(BASELINES)}")
    labels = probs.argmax(axis=1)
    used = len(np.unique(labels))
    if used < config.num_classes:
        fit.warnings_.append(f"method {config.method!r} labels every image with only {used} of "
                             f"num_classes={config.num_classes} classes")
    fit.params_, fit.prototype_class_ = fit_gaussians(
        affinity, labels, source_index, config.num_classes,
        variance_floor=config.variance_floor, exclude_self=config.exclude_self)
    return probs, fit
