"""Parameters of training the end classifier and of applying a trained run to new images."""

from __future__ import annotations

from dataclasses import dataclass

from goggles.config import Config, check, check_choice
from goggles.parameters import check_parameter, default

HEADS = ("linear", "mlp")
TARGETS = ("soft", "hard")
LABELERS = ("auto", "end-model", "affinity")
DEFAULT_LABELER = "affinity"
"""What ``goggles apply`` uses when told ``auto`` and both are available: the run's own fitted
labeler, which assigns a new image as the fitted method assigns the images beyond its sample, so
its labels are the ones a rerun would most nearly give. Measured on cub-dev
(``benchmarks/apply.py``, docs/training.md), both labelers were equally accurate on pairs and
multi-class tasks, and the affinity labeler nearer a full rerun on the same-family pairs. With
a model folder (``OUT/model``, or a cluster run's Model artifact), ``auto`` takes the end
model."""


@dataclass(frozen=True)
class TrainConfig(Config):
    """Parameters of the end classifier (:mod:`goggles.training.head`).

    Attributes
    ----------
    head : ``linear`` (default: its loss is convex, so the fit depends on no start or seed)
        or ``mlp`` (one hidden ReLU layer of ``hidden`` units, started from ``seed``).
    hidden : units of the MLP's hidden layer.
    weight_decay : L2 penalty on the weights, per sample.
    max_iter : L-BFGS iterations at most.
    targets : ``soft``: the noise-aware loss on the posteriors (eq. 1); ``hard``: their arg-max.
    holdout : share of the images held out (stratified by label, seeded) to score the heads;
        the model written is then trained on every image.
    seed : the one seed of the split and of the MLP's start.
    """

    head: str = "linear"
    hidden: int = 256
    weight_decay: float = 1e-2
    max_iter: int = 200
    targets: str = "soft"
    holdout: float = 1 / 3
    seed: int = default("seed")

    def __post_init__(self) -> None:
        check_choice("head", self.head, HEADS)
        check_choice("targets", self.targets, TARGETS)
        check(self.hidden >= 1, f"hidden must be at least 1, got {self.hidden}")
        check(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        check(self.max_iter >= 1, f"max_iter must be at least 1, got {self.max_iter}")
        check(0.0 < self.holdout < 1.0,
              f"holdout must be between 0 and 1 (exclusive), got {self.holdout}", "holdout")
        check_parameter("seed", self.seed)


@dataclass(frozen=True)
class ApplyConfig(Config):
    """Parameters of labeling new images with a trained run (:mod:`goggles.training.apply`).

    Attributes
    ----------
    labeler : ``end-model`` (the trained head on the new images' descriptors), ``affinity``
        (new rows of A against the run's prototypes, then the fitted method's assignment; needs
        the run's ``artifacts/``) or ``auto`` (the end model when given a model folder, else
        :data:`DEFAULT_LABELER`, or the one available).
    device : where the CNN and the affinity GEMM run.
    batch_size : images per forward pass.
    num_workers : image-decoding worker processes; -1 picks one per spare core.
    """

    labeler: str = "auto"
    device: str = default("device")
    batch_size: int = 32
    num_workers: int = -1

    def __post_init__(self) -> None:
        check_choice("labeler", self.labeler, LABELERS)
        check_parameter("device", self.device)
        check(self.batch_size >= 1, f"batch_size must be at least 1, got {self.batch_size}")
        check(self.num_workers >= -1, f"num_workers must be -1 (auto) or >= 0, "
                                      f"got {self.num_workers}")
