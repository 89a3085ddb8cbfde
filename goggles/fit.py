"""What every inference method leaves behind: the fitted attributes that ``inference.json`` and
the report read, shared by :class:`goggles.inference.AffinityEM`, :class:`goggles.graph.GraphEM`
and the baselines' :class:`goggles.baselines.MethodFit`."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

from goggles.likelihood import GaussianParameters

__all__ = ["DegenerateDataWarning", "FitRecord"]


class DegenerateDataWarning(UserWarning):
    """The data cannot support the requested model fully (e.g. a class emptied)."""


@dataclass
class FitRecord:
    """Fitted attributes, sklearn style (set by ``fit``, never passed to ``__init__``).

    ``initial_labels_`` [N] (the start the method refined; ``None`` without one), ``posteriors_``
    [N, K], ``params_`` [M, K] per-prototype Gaussians with ``prototype_class_`` [M] (what the
    report draws), ``n_iter_``, ``converged_``, ``log_likelihood_trace_``, ``change_trace_`` and
    ``warnings_`` (each message once).
    """

    initial_labels_: np.ndarray | None = field(default=None, init=False, repr=False)
    posteriors_: np.ndarray | None = field(default=None, init=False, repr=False)
    params_: GaussianParameters | None = field(default=None, init=False, repr=False)
    prototype_class_: np.ndarray | None = field(default=None, init=False, repr=False)
    n_iter_: int = field(default=0, init=False)
    converged_: bool = field(default=False, init=False)
    log_likelihood_trace_: list[float] = field(default_factory=list, init=False, repr=False)
    change_trace_: list[float] = field(default_factory=list, init=False, repr=False)
    warnings_: list[str] = field(default_factory=list, init=False, repr=False)

    def _warn(self, message: str) -> None:
        """Record ``message`` once and raise it as a :class:`DegenerateDataWarning`."""
        if message in self.warnings_:
            return
        self.warnings_.append(message)
        warnings.warn(message, DegenerateDataWarning, stacklevel=3)
