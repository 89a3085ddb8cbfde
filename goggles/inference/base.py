"""The interface every labeling method implements, and what a fit leaves behind.

A method is a :class:`Method`: a dataclass whose fields are its parameters, built from the run's
:class:`~goggles.inference.config.InferConfig` by :meth:`Method.from_config`, and whose
:meth:`Method.fit` sets every fitted attribute of :class:`FitRecord` itself (sklearn style:
set by ``fit``, never passed to ``__init__``, names ending in ``_``). The registry
(:mod:`goggles.inference.registry`) lists the methods by name.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np

from goggles.inference.likelihood import GaussianParameters

if TYPE_CHECKING:
    from goggles.inference.seeds import Seeds
    from goggles.io.blocks import RowBlocks
    from goggles.io.features_folder import FilterMaps

__all__ = ["DegenerateDataWarning", "FitRecord", "Method", "MethodParameters",
           "label_confidence"]


class MethodParameters(Protocol):
    """What a method reads from the run's inference parameters (read-only;
    :class:`goggles.inference.config.InferConfig` has them all)."""

    @property
    def num_classes(self) -> int: ...

    @property
    def method(self) -> str: ...

    @property
    def max_iter(self) -> int: ...

    @property
    def tol(self) -> float: ...

    @property
    def seed(self) -> int: ...

    @property
    def m_step(self) -> str: ...

    @property
    def variance_floor(self) -> float: ...

    @property
    def exclude_self(self) -> bool: ...

    @property
    def n_init(self) -> int: ...

    @property
    def device(self) -> str: ...


class DegenerateDataWarning(UserWarning):
    """The data cannot support the requested model fully (e.g. a class emptied)."""


@dataclass
class FitRecord:
    """Fitted attributes, sklearn style (set by ``fit``, never passed to ``__init__``).

    ``posteriors_`` [N, K] (the labels' probabilities); ``initial_labels_`` [N] (the start the
    method refined; ``None`` without one); ``params_`` [M, K] per-prototype Gaussians with
    ``prototype_class_`` [M] (what the report draws); ``n_iter_``, ``converged_``,
    ``log_likelihood_trace_``, ``change_trace_``, ``warnings_`` (each message once);
    ``cluster_names_`` where the method knows the clusters' names (``None``: ``cluster_k``);
    ``confidence_`` [N], the method's estimate of the chance each label (the arg-max of
    ``posteriors_``) is right, where it has one better than the top posterior (``None``: the top
    posterior; :func:`label_confidence` reads either); ``dev_choice_``, how the method used its
    dev labels when it chose between ways (``None``: as seeds, when it had any).
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
    cluster_names_: list[str] | None = field(default=None, init=False, repr=False)
    confidence_: np.ndarray | None = field(default=None, init=False, repr=False)
    dev_choice_: dict[str, Any] | None = field(default=None, init=False, repr=False)

    def _warn(self, message: str) -> None:
        """Record ``message`` once and raise it as a :class:`DegenerateDataWarning`."""
        if message in self.warnings_:
            return
        self.warnings_.append(message)
        warnings.warn(message, DegenerateDataWarning, stacklevel=3)


@dataclass
class Method(FitRecord):
    """A labeling method: posteriors [N, K] from the affinity matrix A [N, M].

    Class attributes: ``name`` (the ``--method`` value), ``summary`` (one line for help texts)
    and ``reads``, what :meth:`fit` needs beside A: ``"descriptors"``, ``"imagenet_logits"``
    (the backbone's classifier outputs, kept by the extract stage) or ``"filter_maps"``
    (the extract stage's features).
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    reads: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def from_config(cls, config: MethodParameters) -> Method:
        """The method with the run's parameters."""
        raise NotImplementedError

    def fit(self, affinity: np.ndarray | RowBlocks, source_index: np.ndarray, *,
            filter_maps: FilterMaps | None = None,
            descriptors: list[np.ndarray] | None = None, seeds: Seeds | None = None) -> Method:
        """Fit on A [N, M] (an array or row blocks, e.g. the stored shards, streamed) and set
        every fitted attribute. ``source_index`` [M] is the row of each prototype's source
        image; ``filter_maps`` and ``descriptors`` are given to the methods that read them;
        ``seeds`` (dev labels, :class:`goggles.inference.seeds.Seeds`) are kept at their class
        by the methods that refine a start (graph EM, the paper's EM, k-means), whose cluster k
        is then seed class k; the others ignore them."""
        raise NotImplementedError


def label_confidence(model: FitRecord) -> np.ndarray:
    """[N] the confidence of each label of a fitted method: its ``confidence_`` when it has one,
    else the top posterior."""
    assert model.posteriors_ is not None, "fit the method first"
    if model.confidence_ is not None:
        return np.asarray(model.confidence_, dtype=np.float64)
    return np.asarray(model.posteriors_, dtype=np.float64).max(axis=1)
