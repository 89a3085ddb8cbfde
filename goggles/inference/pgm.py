"""AF+PGM (paper §5.1, Tables 1 and 2; ``--method pgm``): the paper's discretisation of A fed to
Snorkel's LabelModel (``snorkel==0.10.0``, the ``baselines`` extra).

Each prototype column gets a class by k-means on the columns of A (Aᵀ's rows, images as
features); each column's threshold is the mean of its minimum and maximum; an image scoring above
it gets the column's class, any other an abstain. LabelModel denoises that [N, M] label matrix.
Snorkel's LabelModel is a matrix-completion model over the (M·K)² overlap matrix, so it is
refused above :data:`PGM_MAX_COLUMNS` label columns times classes (the paper timed out on large
tasks too); cap prototypes with ``--max-prototypes``.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import numpy as np
from scipy.special import logsumexp

from goggles.inference.base import Method, MethodParameters
from goggles.inference.summary import finish_labeler
from goggles.io.blocks import RowBlocks, as_rows

if TYPE_CHECKING:
    from goggles.inference.seeds import Seeds
    from goggles.io.features_folder import FilterMaps

logger = logging.getLogger(__name__)

# LabelModel's overlap matrix is (M·K)²; 12,000² float32 entries are ~0.6 GB.
PGM_MAX_COLUMNS = 12_000
PGM_EPOCHS = 500
PGM_LEARNING_RATE = 1e-3


def _dense(rows: RowBlocks) -> np.ndarray:
    out = np.empty(rows.shape, dtype=np.float32)
    for start, block in rows.blocks():
        out[start:start + block.shape[0]] = block
    return out


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


@dataclass
class PGMLabeler(Method):
    """AF+PGM as a method: posteriors from :func:`fit_pgm`; the Gaussians the report draws are
    fitted on its labels. No start, no iterations of its own (``converged_`` is True)."""

    num_classes: int
    seed: int = 0
    variance_floor: float = 1e-3
    exclude_self: bool = False
    converged_: bool = field(default=True, init=False)

    name: ClassVar[str] = "pgm"
    summary: ClassVar[str] = "AF+PGM: Snorkel's LabelModel on the discretised A"

    @classmethod
    def from_config(cls, config: MethodParameters) -> PGMLabeler:
        return cls(num_classes=config.num_classes, seed=config.seed,
                   variance_floor=config.variance_floor, exclude_self=config.exclude_self)

    def fit(self, affinity: np.ndarray | RowBlocks, source_index: np.ndarray, *,
            filter_maps: FilterMaps | None = None,
            descriptors: list[np.ndarray] | None = None, seeds: Seeds | None = None) -> PGMLabeler:
        self.warnings_ = []
        probs, _ = fit_pgm(affinity, self.num_classes, seed=self.seed)
        finish_labeler(self, affinity, source_index, probs)
        return self
