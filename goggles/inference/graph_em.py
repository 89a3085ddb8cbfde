"""Graph EM, the default class inference (``--method graph-em``): beyond the paper's EM.

Measured on cub-dev (README, "Choosing the default method"), the paper's EM on A has three
weaknesses: its posteriors are a sum of hundreds of correlated per-prototype log-likelihoods, so
they saturate to 0/1; on 5-class tasks it drifts below its own k-means start; and on fine-grained
pairs (two species of one family) the affinity rows alone separate the species less well than
pooled features of the same network. Graph EM keeps the affinity matrix as its main input and
adds what closes those gaps:

1. Each image is described by unit-length parts: its row of A (the pattern of its affinities
   to all prototypes, paper §3) and second-order descriptors of its filter maps
   (:mod:`goggles.features.descriptors`: signed-sqrt bilinear pooling, Lin et al. 2015,
   count-sketched, Charikar et al. 2002) that see which parts co-occur, where A sees only the
   best match of each prototype: one of the backbone's own maps and, by default, one of a
   second network's (MobileNetV2 beside VGG-16: +25% extract time on CPU), whose errors differ.
2. The images become the nodes of a k-nearest-neighbour graph under the sum of the cosine
   similarities of the parts, and the K leading eigenvectors of its normalised Laplacian
   (spectral embedding, Ng, Jordan & Weiss 2001) place each image in K dimensions where the
   classes are compact.
3. k-means in that embedding starts EM (several restarts; the EM with the highest likelihood
   wins, never ground truth) for a K-component Gaussian mixture with full covariances in the same
   space, with a soft M-step. Its posteriors are the labels: a handful of dimensions instead of
   hundreds of correlated columns, so they are not saturated; a class whose mass falls below
   ``min_class_fraction`` stops EM at the last iterate where every class still had mass.

Above ``max_rows`` images the graph is built on a seeded uniform sample; every other image takes
the mean posterior of its nearest sampled neighbours. The paper's EM stays selectable
(``--method em``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from goggles.features.descriptors import descriptors_of
from goggles.inference.base import Method, MethodParameters, label_confidence
from goggles.inference.confidence import drifted, neighbour_confidence
from goggles.inference.dev_choice import (
    choose,
    classifier_labels,
    named_by,
    seed_folds,
    uneven_message,
)
from goggles.inference.extend import SampleFit, label_all
from goggles.inference.graph import (
    MAX_NEIGHBOUR_GROWTH,
    connected_knn_graph,
    neighbour_lists,
    spectral_coordinates,
)
from goggles.inference.mixture import MixtureFit, gaussian_mixture_em
from goggles.inference.summary import fit_gaussians
from goggles.inference.views import (  # noqa: F401  (graph_sample, nearest_references: the labeler's)
    EXTEND_ROWS,
    as_described,
    fit_sample,
    graph_features,
    graph_sample,
    nearest_references,
    reference_parts,
)
from goggles.io.blocks import RowBlocks, SampleRows, as_rows

if TYPE_CHECKING:
    from goggles.inference.seeds import Seeds
    from goggles.io.features_folder import FilterMaps

logger = logging.getLogger(__name__)

@dataclass
class GraphEM(Method):
    """Graph EM (module docstring), sklearn style:
    ``fit(affinity, source_index, descriptors=[...])``.

    Parameters
    ----------
    num_classes : K.
    neighbours : k of the k-nearest-neighbour graph.
    restarts : k-means solutions in the embedding, each refined by EM; the highest likelihood
        wins.
    n_init : k-means initialisations per restart (the lowest inertia is kept).
    max_iter, tol : EM stops after ``max_iter`` iterations or when no posterior changes by more
        than ``tol``.
    min_class_fraction : smallest expected share of the images a class may keep during EM.
    max_rows : above this many images the graph is built on a seeded sample.
    random_state : the one seed.
    variance_floor, exclude_self : of the per-prototype Gaussians fitted on the final labels
        for the report (:func:`goggles.inference.summary.fit_gaussians`).
    guard : keep the k-means start when EM moved labels against the graph
        (:func:`goggles.inference.confidence.drifted`; ``guarded_`` says it did).

    Fitted attributes, those of :class:`goggles.inference.base.FitRecord`: ``initial_labels_``
    (the k-means labels the chosen EM started from), ``posteriors_``, ``confidence_`` (the
    mixture's posterior of the label pooled with its ``neighbours`` nearest images',
    :func:`goggles.inference.confidence.neighbour_confidence`), ``params_`` and
    ``prototype_class_``, ``n_iter_``, ``converged_``, ``log_likelihood_trace_``,
    ``change_trace_``, ``warnings_``; plus ``embedding_``, ``sample_``,
    ``restart_log_likelihoods_``, ``neighbours_used_``, ``bridges_``, ``guarded_`` and, with
    seeds, ``dev_choice_`` (:meth:`GraphEM._choose_dev`).
    """

    num_classes: int
    neighbours: int = 10
    restarts: int = 5
    n_init: int = 10
    max_iter: int = 100
    tol: float = 1e-4
    min_class_fraction: float = 0.01
    max_rows: int = 20000
    random_state: int = 0
    variance_floor: float = 1e-3
    exclude_self: bool = False
    guard: bool = True
    embedding_: np.ndarray | None = field(default=None, init=False, repr=False)
    sample_: np.ndarray | None = field(default=None, init=False, repr=False)
    restart_log_likelihoods_: list[float] = field(default_factory=list, init=False, repr=False)
    neighbours_used_: int = field(default=0, init=False)
    bridges_: int = field(default=0, init=False)
    guarded_: bool = field(default=False, init=False)
    _graph_cache: tuple[Any, Any] | None = field(default=None, init=False, repr=False,
                                                 compare=False)

    name: ClassVar[str] = "graph-em"
    summary: ClassVar[str] = ("the default: affinity rows + bilinear descriptors on a kNN graph, "
                              "spectral start, Gaussian-mixture EM")
    reads: ClassVar[frozenset[str]] = frozenset({"descriptors"})

    @classmethod
    def from_config(cls, config: MethodParameters) -> GraphEM:
        return cls(num_classes=config.num_classes, max_iter=config.max_iter, tol=config.tol,
                   n_init=config.n_init, random_state=config.seed,
                   variance_floor=config.variance_floor, exclude_self=config.exclude_self)

    def fit(self, affinity: np.ndarray | RowBlocks, source_index: np.ndarray, *,
            filter_maps: FilterMaps | None = None,
            descriptors: np.ndarray | Sequence[np.ndarray] | None = None,
            seeds: Seeds | None = None) -> GraphEM:
        """Fit on A [N, M] (array or row blocks) and the images' unit-length descriptors: one
        [N, D] array or a list of them, e.g. one per network
        (:func:`goggles.features.descriptors.bilinear_descriptors`); without descriptors they
        are computed from ``filter_maps``. ``source_index`` [M] places the prototypes for the
        report's per-prototype Gaussians. ``seeds`` (images of known class) number the clusters
        as their classes and keep their class: every start is matched to them, one more starts
        from their class means in the embedding, and EM clamps them; a classifier of the seeds
        takes over when it predicts held-out seeds better (:mod:`.dev_choice`)."""
        if descriptors is None:
            if filter_maps is None:
                raise ValueError("graph EM needs the images' descriptors or their filter maps "
                                 "(the extract stage's features)")
            descriptors = [descriptors_of(filter_maps.blocks())]
        rows, described = as_rows(affinity), as_described(descriptors)
        n = rows.shape[0]
        sample = fit_sample(n, self.max_rows, self.random_state,
                            None if seeds is None else seeds.rows)
        if len(sample) < n:  # fit on the sample, then every image by its nearest sampled ones
            state = self.fit_sample(SampleRows(rows, sample), [d[sample] for d in described],
                                    sample, source_index, seeds)
            self.posteriors_, self.initial_labels_, self.confidence_ = label_all(state, rows,
                                                                                 described)
            self.prototype_class_ = self.posteriors_.argmax(axis=1)[source_index]
            return self
        self._graph_cache = self.dev_choice_ = None  # a graph is shared within one fit only
        try:
            self._fit_graph(affinity, descriptors, seeds)
            if seeds is not None:
                self._choose_dev(affinity, descriptors, seeds)
        finally:
            self._graph_cache = None  # the sample's parts: not kept beyond the fit
        assert self.posteriors_ is not None
        self.params_, self.prototype_class_ = fit_gaussians(
            affinity, self.posteriors_.argmax(axis=1), source_index, self.num_classes,
            variance_floor=self.variance_floor, exclude_self=self.exclude_self)
        return self

    def fit_sample(self, rows: RowBlocks, described: Sequence[np.ndarray], sample: np.ndarray,
                   source_index: np.ndarray, seeds: Seeds | None = None) -> SampleFit:
        """Graph EM above ``max_rows`` images, on its sample alone: ``rows`` [S, M] are the rows
        of A of the images ``sample`` (:func:`~goggles.inference.views.fit_sample`),
        ``described`` their descriptors, ``source_index`` [M] every prototype's image among all
        N, ``seeds`` rows among all N. Fits this model on the sample exactly as on a set of S
        images (graph, EM, dev-label choice, the report's Gaussians) and returns what labelling
        every other image needs (:class:`goggles.inference.extend.SampleFit`): the in-process
        fit and a cluster's fit task both call it, and each shard of the other images is then
        labelled apart (:func:`goggles.inference.extend.label_block`)."""
        sample = np.asarray(sample, dtype=np.int64)
        position = np.searchsorted(sample, source_index)
        inside = (position < len(sample)) & (sample[np.minimum(position, len(sample) - 1)]
                                             == source_index)
        local_source = np.where(inside, position, -1)  # prototypes of other images: no self
        alone = dataclasses.replace(self, max_rows=len(sample))
        alone.fit(rows, local_source, descriptors=list(described),
                  seeds=None if seeds is None else seeds.within(sample))
        for name in ("n_iter_", "converged_", "log_likelihood_trace_", "change_trace_",
                     "warnings_", "params_", "embedding_", "restart_log_likelihoods_",
                     "neighbours_used_", "bridges_", "guarded_", "dev_choice_"):
            setattr(self, name, getattr(alone, name))
        self.sample_ = sample
        assert alone.posteriors_ is not None and alone.initial_labels_ is not None
        return SampleFit(sample, reference_parts(rows, described, np.arange(len(sample))),
                         alone.posteriors_, alone.initial_labels_, label_confidence(alone),
                         self.neighbours)

    def _choose_dev(self, affinity: np.ndarray | RowBlocks,
                    descriptors: np.ndarray | Sequence[np.ndarray], seeds: Seeds) -> None:
        """After the seeded fit: cross-validate it against a classifier of the dev images and
        against the fit without labels, its clusters named by the labels
        (:func:`goggles.inference.dev_choice.choose`; each fold a copy of this model with the
        same graph, only its EM seeded differently), and take the labels of the one that
        predicts held-out dev labels best: the classifier's
        (:func:`~goggles.inference.dev_choice.classifier_labels`; ``confidence_`` its top
        posterior) or the unlabeled fit's (seeds clamped), else keep the seeded fit.
        ``dev_choice_`` keeps the record."""
        rows = as_rows(affinity)
        described = as_described(descriptors)

        def fit_copy(subset: Seeds | None) -> GraphEM:
            other = dataclasses.replace(self)
            other._graph_cache = self._graph_cache  # same sample (every seed in it): same graph
            other._fit_graph(rows, described, subset, sample_with=seeds.rows)
            return other

        def fit_seeded(subset: Seeds) -> np.ndarray:
            posteriors = fit_copy(subset).posteriors_
            assert posteriors is not None
            return posteriors

        if seed_folds(seeds, self.num_classes) is None:  # too few to split: no choice to make
            self._warn(uneven_message(seeds, self.num_classes))
            return
        unlabeled = fit_copy(None)
        assert unlabeled.posteriors_ is not None and unlabeled.confidence_ is not None
        seed_features = graph_features(rows, described, seeds.rows)
        record = choose(fit_seeded, seed_features, seeds, self.num_classes,
                        unlabeled=unlabeled.posteriors_)
        assert record is not None  # the seeds split (above)
        self.dev_choice_ = record
        if record["chosen"] == "unlabeled":
            self.posteriors_ = seeds.clamp(named_by(unlabeled.posteriors_, seeds))
            confidence = unlabeled.confidence_.copy()
            confidence[seeds.rows] = 1.0
            self.confidence_ = confidence
            self.initial_labels_ = unlabeled.initial_labels_
            return
        probs = classifier_labels(rows, described, seeds, self.num_classes, record)
        if probs is not None:
            self.posteriors_ = probs
            self.confidence_ = probs.max(axis=1)

    def _fit_graph(self, affinity: np.ndarray | RowBlocks,
                   descriptors: np.ndarray | Sequence[np.ndarray],
                   seeds: Seeds | None = None, *, sample_with: np.ndarray | None = None) -> None:
        """The fit; ``sample_with`` (rows that must be in the graph's sample, a superset of the
        seeds) lets fits with different subsets of one dev set share their graph."""
        from sklearn.cluster import KMeans

        rows = as_rows(affinity)
        n = rows.shape[0]
        described = as_described(descriptors)
        for d in described:
            if d.shape[0] != n:
                raise ValueError(f"descriptors have {d.shape[0]} rows but A has {n}; both "
                                 "must list the same images in the same order")
        if n < self.num_classes:
            raise ValueError(f"num_classes={self.num_classes} exceeds the {n} images; use at "
                             f"most {n} classes")
        self.warnings_ = []
        rng = np.random.default_rng(self.random_state)
        sample = graph_sample(n, self.max_rows, rng)
        for kept in (seeds.rows if seeds is not None else None, sample_with):
            if kept is not None:  # the seeds are always in the graph
                sample = np.union1d(sample, kept)
        local = None if seeds is None else seeds.within(sample)
        seed = int(rng.integers(2 ** 31 - 1))
        key = (sample.tobytes(), seed)
        if self._graph_cache is None or self._graph_cache[0] != key:
            self._graph_cache = (key, self._graph(rows, described, sample, seed))
        _parts, node, first, embedding, cols = self._graph_cache[1]
        distinct = len(first)
        min_mass = max(1.0, self.min_class_fraction * len(sample))
        best: tuple[MixtureFit, np.ndarray] | None = None
        seen: list[np.ndarray] = []
        self.restart_log_likelihoods_ = []
        starts: list[np.ndarray | None] = []
        for _ in range(self.restarts):
            with warnings.catch_warnings():  # fewer distinct points than classes: warned above
                warnings.filterwarnings("ignore", message="Number of distinct clusters")
                labels = KMeans(self.num_classes, n_init=self.n_init,
                                random_state=int(rng.integers(2 ** 31 - 1))).fit_predict(
                                    embedding)
            starts.append(labels if local is None else local.align(labels, self.num_classes))
        if local is not None:
            starts.append(local.centroid_labels(embedding, self.num_classes))
        for labels in starts:
            if labels is None or any(_same_partition(labels, other) for other in seen):
                continue
            seen.append(labels)
            fit = gaussian_mixture_em(embedding, labels, self.num_classes, max_iter=self.max_iter,
                                      tol=self.tol, min_mass=min_mass, seeds=local)
            self.restart_log_likelihoods_.append(fit.log_likelihood)
            if fit.stopped_on_mass:
                self._warn("a class fell below min_class_fraction of the images during EM; "
                           "EM kept its last iterate where every class had mass. The data may "
                           "hold fewer than num_classes groups: try a smaller num_classes")
            if best is None or fit.log_likelihood > best[0].log_likelihood:
                best = (fit, labels)
        assert best is not None
        fit, labels = best
        posteriors = fit.posteriors
        self.guarded_ = False
        near = None if cols is None else cols[:, 1:1 + min(self.neighbours, distinct - 1)]
        if self.guard and near is not None:
            drift, p = drifted(labels[first], posteriors.argmax(axis=1)[first], near)
            if drift:
                logger.info("EM moved labels against the graph (sign test p = %.3g): keeping "
                            "its k-means start", p)
                posteriors, self.guarded_ = np.eye(self.num_classes)[labels], True
        confidence = posteriors.max(axis=1)
        if near is not None:  # each node's nearest other nodes; identical images share a node
            confidence = neighbour_confidence(posteriors[first], near)[node]
        initial = labels
        if len(sample) < n:
            raise AssertionError("fit() fits above max_rows images on the sample (fit_sample)")
        self.sample_ = sample
        self.embedding_ = embedding
        self.initial_labels_ = initial
        self.posteriors_ = posteriors
        self.confidence_ = confidence
        self.n_iter_ = fit.n_iter
        self.converged_ = fit.converged
        self.log_likelihood_trace_ = fit.log_likelihood_trace
        self.change_trace_ = fit.change_trace
        used = len(np.unique(posteriors.argmax(axis=1)))
        if used < self.num_classes:
            self._warn(f"the labels use only {used} of num_classes={self.num_classes} classes: "
                       "the images did not form that many groups; lower num_classes or add "
                       "images")

    def _graph(self, rows: RowBlocks, described: list[np.ndarray], sample: np.ndarray,
               seed: int) -> tuple[list[np.ndarray], np.ndarray, np.ndarray, np.ndarray,
                                   np.ndarray | None]:
        """The graph's images ``sample``: (their parts, node of each, first image of each node,
        spectral embedding, each node's nearest nodes or ``None`` without a graph)."""
        parts = reference_parts(rows, described, sample)
        # identical images become one node, so they get identical coordinates and labels
        keys: dict[bytes, int] = {}  # a digest of each row's bytes: not a copy of every row
        node = np.array([keys.setdefault(_row_digest(row), len(keys))
                         for row in zip(*parts, strict=True)], dtype=np.int64)
        first = np.unique(node, return_index=True)[1]
        distinct = len(first)
        if distinct < self.num_classes:
            self._warn(f"only {distinct} of {self.num_classes} classes can be told apart: the "
                       "images are identical as far as their affinities and filter maps go; "
                       "lower num_classes or check the source for duplicates")
        if distinct <= self.num_classes + 1:  # too few nodes for a graph: one axis per image
            return parts, node, first, np.eye(distinct, self.num_classes)[node], None
        # the parts themselves when every image is its own node (no 2 GB copy at 20,000 x 20,000)
        nodes = parts if distinct == len(node) else [p[first] for p in parts]
        cols = neighbour_lists(nodes, min(distinct, self.neighbours * MAX_NEIGHBOUR_GROWTH))
        graph, used, bridges = connected_knn_graph(nodes, self.neighbours, self.num_classes,
                                                   cols=cols)
        self.neighbours_used_, self.bridges_ = used, bridges
        if used != self.neighbours or bridges:
            logger.info("the %d-nearest-neighbour graph had more components than the %d "
                        "classes: built with %d neighbours and %d bridging edges",
                        self.neighbours, self.num_classes, used, bridges)
        return parts, node, first, spectral_coordinates(graph, self.num_classes, seed)[node], cols


def _row_digest(row: Sequence[np.ndarray]) -> bytes:
    """A digest of one image's parts (identical images share a node)."""
    digest = hashlib.blake2b(digest_size=20)
    for part in row:
        digest.update(np.ascontiguousarray(part).tobytes())
    return digest.digest()


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """True when labelings ``a`` and ``b`` differ only by a renaming of the classes."""
    pairs = np.unique(np.stack([a, b]), axis=1)
    return bool(len(pairs[0]) == len(np.unique(a)) == len(np.unique(b)))
