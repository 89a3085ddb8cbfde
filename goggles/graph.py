"""Graph EM, the default class inference (``--method graph-em``): beyond the paper's EM.

Measured on cub-dev (README, "Choosing the default method"), the paper's EM on A has three
weaknesses: its posteriors are a sum of hundreds of correlated per-prototype log-likelihoods, so
they saturate to 0/1; on 5-class tasks it drifts below its own k-means start; and on fine-grained
pairs (two species of one family) the affinity rows alone separate the species less well than
pooled features of the same network. Graph EM keeps the affinity matrix as its main input and
adds what closes those gaps:

1. Each image is described by unit-length parts: its row of A (the pattern of its affinities
   to all prototypes, paper §3) and second-order descriptors of its filter maps (signed-sqrt
   bilinear pooling, Lin et al. 2015, count-sketched to :data:`SKETCH_DIM` dimensions, Charikar
   et al. 2002) that see which parts co-occur, where A sees only the best match of each
   prototype: one of the backbone's own maps and, by default, one of a second network's
   (MobileNetV2 beside VGG-16: +25% extract time on CPU), whose errors differ.
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

import logging
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse
import scipy.sparse.csgraph
from scipy.special import logsumexp

from goggles.blocks import RowBlocks, as_rows, sub_blocks
from goggles.fit import FitRecord
from goggles.likelihood import EXACT_SCALE, kmeans_rows

logger = logging.getLogger(__name__)

SKETCH_DIM = 2048
SKETCH_SEED = 20190814  # fixed: descriptors must not depend on the run's seed
_SKETCHES: dict[int, scipy.sparse.csr_matrix] = {}


def _sketch_matrix(channels: int) -> scipy.sparse.csr_matrix:
    """Count sketch of the upper triangle of a [C, C] matrix into SKETCH_DIM buckets: every entry
    goes to one bucket with a random sign, so inner products are preserved in expectation."""
    if channels not in _SKETCHES:
        length = channels * (channels + 1) // 2
        rng = np.random.default_rng(SKETCH_SEED)
        bucket = rng.integers(0, SKETCH_DIM, size=length)
        sign = rng.choice(np.array([-1.0, 1.0], dtype=np.float32), size=length)
        _SKETCHES[channels] = scipy.sparse.csr_matrix(
            (sign, (np.arange(length), bucket)), shape=(length, SKETCH_DIM), dtype=np.float32)
    return _SKETCHES[channels]


def bilinear_descriptors(maps: np.ndarray, chunk: int = 32) -> np.ndarray:
    """[n, SKETCH_DIM] float32 unit-length descriptors of filter maps [n, C, H, W].

    The [C, C] mean outer product of the position vectors (bilinear pooling), signed square root,
    upper triangle with off-diagonal entries weighted by sqrt(2) (so its inner products equal the
    full matrix's), count-sketched and scaled to unit length."""
    n, channels, height, width = maps.shape
    upper = np.triu_indices(channels)
    weight = np.where(upper[0] == upper[1], 1.0, np.sqrt(2.0)).astype(np.float32)
    sketch = _sketch_matrix(channels)
    out = np.empty((n, SKETCH_DIM), dtype=np.float32)
    for start in range(0, n, chunk):
        x = np.asarray(maps[start:start + chunk], dtype=np.float32).reshape(-1, channels,
                                                                            height * width)
        gram = np.matmul(x, x.transpose(0, 2, 1)) / np.float32(height * width)
        values = gram[:, upper[0], upper[1]]
        values = np.sign(values) * np.sqrt(np.abs(values)) * weight
        out[start:start + len(x)] = np.asarray((sketch.T @ values.T).T)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.maximum(norms, 1e-12)


def descriptors_of(blocks: Iterable[np.ndarray]) -> np.ndarray:
    """Descriptors of filter maps given block by block (e.g. the stored extract shards)."""
    return np.concatenate([bilinear_descriptors(block) for block in blocks])


_NO_CELLS = np.zeros(0, dtype=np.int64)


def _unit_rows(block: np.ndarray) -> np.ndarray:
    # quantised like the k-means features, so the result does not depend on how A is sharded
    quantised = np.rint(block.astype(np.float64) * EXACT_SCALE) / EXACT_SCALE
    return kmeans_rows(quantised, None, _NO_CELLS, _NO_CELLS).astype(np.float32)


def _top_k(similarity: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and values of the k largest entries per row (ties broken by index)."""
    order = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(similarity, order, axis=1)


def _similarity(parts: list[np.ndarray], start: int, stop: int) -> np.ndarray:
    """Sum of the parts' cosines of rows start..stop-1 against every row."""
    return sum(p[start:stop] @ p.T for p in parts)  # type: ignore[return-value]


def _neighbour_lists(parts: list[np.ndarray], k: int, block_rows: int) -> np.ndarray:
    """[n, k] indices of each row's k most similar rows, itself first."""
    n = parts[0].shape[0]
    cols = np.empty((n, k), dtype=np.int64)
    for start in range(0, n, block_rows):
        stop = min(n, start + block_rows)
        similarity = _similarity(parts, start, stop)
        similarity[np.arange(stop - start), np.arange(start, stop)] = np.inf  # self first
        cols[start:stop] = _top_k(similarity, k)[0]
    return cols


def _connectivity(cols: np.ndarray) -> scipy.sparse.csr_matrix:
    n, k = cols.shape
    connectivity = scipy.sparse.csr_matrix(
        (np.ones(n * k), (np.repeat(np.arange(n), k), cols.ravel())), shape=(n, n))
    return ((connectivity + connectivity.T) * 0.5).tocsr()


def knn_graph(parts: list[np.ndarray], neighbours: int,
              block_rows: int = 2048) -> scipy.sparse.csr_matrix:
    """Symmetric k-nearest-neighbour connectivity ``(C + C^T) / 2`` of the rows of the
    concatenated unit-length ``parts`` (each image counts as its own neighbour), as sklearn's
    ``SpectralClustering(affinity="nearest_neighbors")`` builds it."""
    k = min(neighbours, parts[0].shape[0])
    return _connectivity(_neighbour_lists(parts, k, block_rows))


MAX_NEIGHBOUR_GROWTH = 8


def connected_knn_graph(parts: list[np.ndarray], neighbours: int, max_components: int,
                        block_rows: int = 2048) -> tuple[scipy.sparse.csr_matrix, int, int]:
    """:func:`knn_graph` with at most ``max_components`` connected components →
    (graph, neighbours used, bridging edges added).

    A spectral embedding of a graph with more components than classes has one eigenvector per
    component (all of eigenvalue 1), and its K leading ones then pick arbitrary components
    instead of classes: clean data with sub-groups (poses, near-duplicates) breaks it. So k
    doubles, up to :data:`MAX_NEIGHBOUR_GROWTH` times the asked ``neighbours``, while there are
    too many components; any still left are joined by their most similar pair of images (single
    linkage over components), the strongest bridges first. A graph that is connected enough at
    ``neighbours`` is exactly :func:`knn_graph`'s."""
    n = parts[0].shape[0]
    k_max = min(n, neighbours * MAX_NEIGHBOUR_GROWTH)
    cols = _neighbour_lists(parts, k_max, block_rows)  # the sort costs the same for any k
    k = min(neighbours, n)
    while True:
        graph = _connectivity(cols[:, :k])
        count, component = scipy.sparse.csgraph.connected_components(graph, directed=False)
        if count <= max_components or k >= k_max:
            break
        k = min(k * 2, k_max)
    if count <= max_components:
        return graph, k, 0
    ends = np.array(_bridges(parts, component, count, max_components, block_rows))
    extra = scipy.sparse.csr_matrix((np.ones(len(ends)), (ends[:, 0], ends[:, 1])), shape=(n, n))
    return (graph + extra + extra.T).tocsr(), k, len(ends)


def _bridges(parts: list[np.ndarray], component: np.ndarray, count: int, max_components: int,
             block_rows: int) -> list[tuple[int, int]]:
    """Edges (i, j) that join ``count`` components down to ``max_components``: the most similar
    pair of images between each two components, strongest first (Kruskal)."""
    n = len(component)
    members = [np.flatnonzero(component == c) for c in range(count)]
    best = np.full((count, count), -np.inf)
    pair = np.zeros((count, count, 2), dtype=np.int64)
    for start in range(0, n, block_rows):
        stop = min(n, start + block_rows)
        similarity = _similarity(parts, start, stop)
        here = np.arange(stop - start)
        # each row's most similar image in every component: [rows, count]
        target = np.stack([cols[similarity[:, cols].argmax(axis=1)] for cols in members], axis=1)
        value = np.take_along_axis(similarity, target, axis=1)
        source = component[start:stop]
        value[here, source] = -np.inf  # a component is no bridge to itself
        for s in np.unique(source):
            mine = np.flatnonzero(source == s)
            top = mine[value[mine].argmax(axis=0)]  # [count]: the best row of s for each
            found = value[top, np.arange(count)]
            better = found > best[s]
            best[s, better] = found[better]
            pair[s, better, 0] = start + top[better]
            pair[s, better, 1] = target[top[better], np.flatnonzero(better)]
    order = sorted((-best[a, b], a, b) for a in range(count) for b in range(a + 1, count))
    parent = list(range(count))

    def root(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    edges: list[tuple[int, int]] = []
    for _, a, b in order:
        if count - len(edges) <= max_components:
            break
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[ra] = rb
            i, j = pair[a, b]  # the similarity is symmetric: best[a, b] == best[b, a]
            edges.append((int(i), int(j)))
    return edges


DENSE_EIGEN_ROWS = 3000
EXTEND_ROWS = 1024


def spectral_coordinates(graph: scipy.sparse.csr_matrix, dims: int, seed: int) -> np.ndarray:
    """[n, dims] spectral embedding of ``graph``: the ``dims`` leading eigenvectors of
    ``D^-1/2 W D^-1/2`` (the smallest of the normalised Laplacian) divided by ``sqrt(D)``, as
    sklearn's ``spectral_embedding``; each vector's largest entry made positive, the whole
    standardised so a Gaussian mixture's covariance floor is scale-free. Dense below
    :data:`DENSE_EIGEN_ROWS` nodes, Lanczos (ARPACK) above."""
    n = graph.shape[0]
    count, component = scipy.sparse.csgraph.connected_components(graph, directed=False)
    if count == dims:
        # exactly one component per class: the leading eigenvectors are the components'
        # indicators (eigenvalue 1, D^1/2-weighted), known in closed form; an iterative solver
        # mixes them with the near-1 eigenvectors of weakly bridged sub-groups
        return _standardised(np.eye(dims)[component])
    degree = np.asarray(graph.sum(axis=1)).ravel()
    scale = 1.0 / np.sqrt(np.maximum(degree, 1e-12))
    normalised = scipy.sparse.diags(scale) @ graph @ scipy.sparse.diags(scale)
    if n <= DENSE_EIGEN_ROWS:
        values, vectors = np.linalg.eigh(normalised.toarray())
        vectors = vectors[:, np.argsort(-values, kind="stable")[:dims]]
    else:
        from scipy.sparse.linalg import eigsh

        start = np.random.default_rng(seed).uniform(-1, 1, n)
        values, vectors = eigsh(normalised.tocsc(), k=dims, which="LA", v0=start)
        vectors = vectors[:, np.argsort(-values, kind="stable")]
    embedding = vectors * scale[:, None]
    flip = np.sign(embedding[np.abs(embedding).argmax(axis=0), np.arange(embedding.shape[1])])
    return _standardised(embedding * np.where(flip == 0, 1.0, flip))


def _standardised(embedding: np.ndarray) -> np.ndarray:
    embedding = embedding - embedding.mean(axis=0)
    return embedding / max(float(embedding.std()), 1e-12)


@dataclass
class MixtureFit:
    posteriors: np.ndarray
    log_likelihood: float
    n_iter: int
    converged: bool
    log_likelihood_trace: list[float]
    change_trace: list[float]
    stopped_on_mass: bool


def _log_densities(x: np.ndarray, means: np.ndarray, covariances: np.ndarray) -> np.ndarray:
    n, d = x.shape
    out = np.empty((n, len(means)))
    for k, (mean, cov) in enumerate(zip(means, covariances, strict=True)):
        chol = np.linalg.cholesky(cov)
        solved = np.linalg.solve(chol, (x - mean).T)
        out[:, k] = (-0.5 * (solved ** 2).sum(axis=0) - np.log(np.diag(chol)).sum()
                     - 0.5 * d * np.log(2 * np.pi))
    return out


def gaussian_mixture_em(x: np.ndarray, labels: np.ndarray, num_classes: int, *, max_iter: int,
                        tol: float, min_mass: float, reg: float = 1e-3) -> MixtureFit:
    """EM for a full-covariance Gaussian mixture on ``x`` [n, d] started from hard ``labels``;
    stops when no posterior changes by more than ``tol``, or keeps the last iterate before a
    class's expected count falls below ``min_mass``."""
    n, d = x.shape
    posteriors = np.eye(num_classes)[labels]
    trace: list[float] = []
    changes: list[float] = []
    total = -np.inf
    for iteration in range(1, max_iter + 1):
        mass = posteriors.sum(axis=0)
        means = (posteriors.T @ x) / np.maximum(mass, 1e-12)[:, None]
        covariances = np.empty((num_classes, d, d))
        for k in range(num_classes):
            centred = x - means[k]
            covariances[k] = ((posteriors[:, k, None] * centred).T @ centred
                              / max(mass[k], 1e-12) + reg * np.eye(d))
        weighted = _log_densities(x, means, covariances) + np.log(np.maximum(mass / n, 1e-300))
        norm = logsumexp(weighted, axis=1, keepdims=True)
        new = np.exp(weighted - norm)
        if new.sum(axis=0).min() < min_mass:
            return MixtureFit(posteriors, total, iteration - 1, False, trace, changes, True)
        total = float(norm.sum())
        change = float(np.abs(new - posteriors).max())
        trace.append(total)
        changes.append(change)
        posteriors = new
        if change < tol:
            return MixtureFit(posteriors, total, iteration, True, trace, changes, False)
    return MixtureFit(posteriors, total, max_iter, False, trace, changes, False)


def _gather_rows(rows: RowBlocks, sample: np.ndarray) -> np.ndarray:
    out = np.empty((len(sample), rows.shape[1]), dtype=np.float32)
    for start, block in sub_blocks(rows):
        inside = np.flatnonzero((sample >= start) & (sample < start + block.shape[0]))
        if len(inside):
            out[inside] = _unit_rows(block[sample[inside] - start])
    return out


@dataclass
class GraphEM(FitRecord):
    """Graph EM (module docstring), sklearn style: ``fit(affinity, source_index, descriptors)``.

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

    Fitted attributes, as :class:`goggles.inference.AffinityEM`: ``initial_labels_`` (the
    k-means labels the chosen EM started from), ``posteriors_``, ``n_iter_``, ``converged_``,
    ``log_likelihood_trace_``, ``change_trace_``, ``warnings_``; plus ``embedding_``,
    ``sample_`` and ``restart_log_likelihoods_``. ``params_``/``prototype_class_`` (the
    per-prototype Gaussians the report draws) are filled by :func:`goggles.steps.infer_labels`.
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
    embedding_: np.ndarray | None = field(default=None, init=False, repr=False)
    sample_: np.ndarray | None = field(default=None, init=False, repr=False)
    restart_log_likelihoods_: list[float] = field(default_factory=list, init=False, repr=False)
    neighbours_used_: int = field(default=0, init=False)
    bridges_: int = field(default=0, init=False)

    def fit(self, affinity: np.ndarray | RowBlocks, source_index: np.ndarray,
            descriptors: np.ndarray | Sequence[np.ndarray]) -> GraphEM:
        """Fit on A [N, M] (array or row blocks) and the images' unit-length descriptors: one
        [N, D] array or a list of them, e.g. one per network (:func:`bilinear_descriptors`);
        ``source_index`` is accepted for the common interface."""
        from sklearn.cluster import KMeans

        rows = as_rows(affinity)
        n = rows.shape[0]
        described = [np.asarray(d, dtype=np.float32) for d in (
            [descriptors] if isinstance(descriptors, np.ndarray) else descriptors)]
        for d in described:
            if d.shape[0] != n:
                raise ValueError(f"descriptors have {d.shape[0]} rows but A has {n}; both "
                                 "must list the same images in the same order")
        if n < self.num_classes:
            raise ValueError(f"num_classes={self.num_classes} exceeds the {n} images; use at "
                             f"most {n} classes")
        self.warnings_ = []
        rng = np.random.default_rng(self.random_state)
        sample = np.arange(n) if n <= self.max_rows else \
            np.sort(rng.choice(n, size=self.max_rows, replace=False))
        parts = [_gather_rows(rows, sample)] + [d[sample] for d in described]
        # identical images become one node, so they get identical coordinates and labels
        keys: dict[bytes, int] = {}
        node = np.array([keys.setdefault(b"".join(p.tobytes() for p in row), len(keys))
                         for row in zip(*parts, strict=True)], dtype=np.int64)
        first = np.unique(node, return_index=True)[1]
        distinct = len(first)
        if distinct < self.num_classes:
            self._warn(f"only {distinct} of {self.num_classes} classes can be told apart: the "
                       "images are identical as far as their affinities and filter maps go; "
                       "lower num_classes or check the source for duplicates")
        seed = int(rng.integers(2 ** 31 - 1))
        if distinct <= self.num_classes + 1:  # too few nodes for a graph: one axis per image
            embedding = np.eye(distinct, self.num_classes)[node]
        else:
            graph, used, bridges = connected_knn_graph([p[first] for p in parts],
                                                       self.neighbours, self.num_classes)
            self.neighbours_used_, self.bridges_ = used, bridges
            if used != self.neighbours or bridges:
                logger.info("the %d-nearest-neighbour graph had more components than the %d "
                            "classes: built with %d neighbours and %d bridging edges",
                            self.neighbours, self.num_classes, used, bridges)
            embedding = spectral_coordinates(graph, self.num_classes, seed)[node]
        min_mass = max(1.0, self.min_class_fraction * len(sample))
        best: tuple[MixtureFit, np.ndarray] | None = None
        seen: list[np.ndarray] = []
        self.restart_log_likelihoods_ = []
        for _ in range(self.restarts):
            with warnings.catch_warnings():  # fewer distinct points than classes: warned above
                warnings.filterwarnings("ignore", message="Number of distinct clusters")
                labels = KMeans(self.num_classes, n_init=self.n_init,
                                random_state=int(rng.integers(2 ** 31 - 1))).fit_predict(
                                    embedding)
            if any(_same_partition(labels, other) for other in seen):
                continue
            seen.append(labels)
            fit = gaussian_mixture_em(embedding, labels, self.num_classes,
                                      max_iter=self.max_iter, tol=self.tol, min_mass=min_mass)
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
        initial = labels
        if len(sample) < n:
            posteriors, initial = self._extend(rows, described, sample, parts, posteriors,
                                               labels)
        self.sample_ = sample
        self.embedding_ = embedding
        self.initial_labels_ = initial
        self.posteriors_ = posteriors
        self.n_iter_ = fit.n_iter
        self.converged_ = fit.converged
        self.log_likelihood_trace_ = fit.log_likelihood_trace
        self.change_trace_ = fit.change_trace
        used = len(np.unique(posteriors.argmax(axis=1)))
        if used < self.num_classes:
            self._warn(f"the labels use only {used} of num_classes={self.num_classes} classes: "
                       "the images did not form that many groups; lower num_classes or add "
                       "images")
        return self

    def _extend(self, rows: RowBlocks, described: list[np.ndarray], sample: np.ndarray,
                parts: list[np.ndarray], posteriors: np.ndarray,
                labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Posteriors (and initial labels) of every image: sampled images keep theirs, the
        others take the mean over their nearest sampled neighbours."""
        n = rows.shape[0]
        full = np.empty((n, self.num_classes))
        initial = np.empty(n, dtype=np.int64)
        onehot = np.eye(self.num_classes)[labels]
        for offset, shard in sub_blocks(rows):
            for first in range(0, shard.shape[0], EXTEND_ROWS):  # bounds the [rows, sample] sort
                block = shard[first:first + EXTEND_ROWS]
                start = offset + first
                stop = start + block.shape[0]
                similarity = _unit_rows(block) @ parts[0].T
                for d, part in zip(described, parts[1:], strict=True):
                    similarity += d[start:stop] @ part.T
                near, _ = _top_k(similarity, min(self.neighbours, len(sample)))
                full[start:stop] = posteriors[near].mean(axis=1)
                initial[start:stop] = onehot[near].mean(axis=1).argmax(axis=1)
        full[sample] = posteriors
        initial[sample] = labels
        return full, initial


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """True when labelings ``a`` and ``b`` differ only by a renaming of the classes."""
    pairs = np.unique(np.stack([a, b]), axis=1)
    return bool(len(pairs[0]) == len(np.unique(a)) == len(np.unique(b)))
