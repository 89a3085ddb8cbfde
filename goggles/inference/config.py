"""Parameters of class inference (paper §4)."""

from __future__ import annotations

from dataclasses import dataclass

from goggles.config import Config, check, check_choice
from goggles.inference.registry import METHODS
from goggles.parameters import check_parameter, default, names

M_STEPS = ("sampled", "soft")


@dataclass(frozen=True)
class InferConfig(Config):
    """Parameters of class inference (paper §4).

    Attributes
    ----------
    num_classes : K, the number of classes to find.
    method : a name in :data:`goggles.inference.registry.METHODS`: ``graph-em`` (the default),
        ``em`` (the paper's GOGGLES), ``kmeans``, ``em-random``, ``pgm``, ``backbone``.
    max_iter : EM iterations at most.
    tol : EM stops when no posterior changes by more than ``tol`` in an iteration (the
        maximum absolute change).
    seed : the one source of randomness (k-means, sampling, random starts).
    m_step : ``sampled`` draws hard labels from the posteriors as the paper does (§4.3);
        ``soft`` weights every image by its posterior.
    variance_floor : added to every fitted variance, so none is zero.
    exclude_self : leave out the affinity of an image to its own prototypes (always 1.0);
        kept by default, as in the paper (see :mod:`goggles.inference.paper_em`).
    n_init : k-means restarts; the one with the lowest inertia starts EM.
    device : where the E-step runs: ``cpu`` (numpy float64), ``cuda`` (torch float64), ``auto``
        (CUDA when present).
    """

    num_classes: int = default("num_classes")
    method: str = default("method")
    max_iter: int = default("max_iter")
    tol: float = 1e-4
    seed: int = default("seed")
    m_step: str = "sampled"
    variance_floor: float = 1e-3
    exclude_self: bool = False
    n_init: int = 10
    device: str = default("device")

    def __post_init__(self) -> None:
        for name in names(stage="infer"):
            check_parameter(name, getattr(self, name))
        check_choice("method", self.method, tuple(METHODS))
        check(self.tol > 0, f"tol must be positive, got {self.tol}")
        check_choice("m_step", self.m_step, M_STEPS)
        check(self.variance_floor > 0,
              f"variance_floor must be positive, got {self.variance_floor}")
        check(self.n_init >= 1, f"n_init must be at least 1, got {self.n_init}")
