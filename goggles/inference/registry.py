"""The labeling methods, by ``--method`` name: the one list the config, the command line and the
infer stage read.

Adding a method: write its module in this package with a :class:`~goggles.inference.base.Method`
subclass (``name``, ``summary``, ``reads``, ``from_config``, ``fit``) and add the class to
:data:`METHODS` below. Nothing else changes: ``InferConfig`` accepts the name, ``goggles run
--method`` offers it, and the infer stage hands it the features it ``reads``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from goggles.inference.base import Method, MethodParameters
from goggles.inference.graph_em import GraphEM
from goggles.inference.imagenet import ImageNetLabeler
from goggles.inference.paper_em import AffinityEM, KMeansStart, RandomStartEM
from goggles.inference.pgm import PGMLabeler

if TYPE_CHECKING:
    from goggles.inference.seeds import Seeds
    from goggles.io.blocks import RowBlocks
    from goggles.io.features_folder import FilterMaps

METHODS: dict[str, type[Method]] = {
    method.name: method
    for method in (GraphEM, AffinityEM, KMeansStart, RandomStartEM, PGMLabeler, ImageNetLabeler)
}
"""``--method`` name -> method class, the default (``graph-em``) first."""


def create(config: MethodParameters) -> Method:
    """The method ``config.method`` with the run's parameters (not fitted)."""
    return METHODS[config.method].from_config(config)


def fit_method(config: MethodParameters, affinity: np.ndarray | RowBlocks, source_index: np.ndarray,
               *, filter_maps: FilterMaps | None = None,
               descriptors: list[np.ndarray] | None = None,
               seeds: Seeds | None = None) -> Method:
    """Fit ``config.method`` on A [N, M] (an array or row blocks) with ``source_index`` [M];
    the fitted method's ``posteriors_`` [N, K] are the labels' probabilities; ``seeds``:
    images of known class (:meth:`goggles.inference.base.Method.fit`)."""
    return create(config).fit(affinity, source_index, filter_maps=filter_maps,
                              descriptors=descriptors, seeds=seeds)
