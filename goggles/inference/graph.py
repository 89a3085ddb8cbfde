"""The k-nearest-neighbour graph of the images and its spectral embedding (graph EM, steps 2).

The images are the nodes; each is described by unit-length parts (its row of A, its
descriptors) and two images are similar by the sum of their parts' cosines. The graph is kept
at most K connected components (:func:`connected_knn_graph`), and its K leading eigenvectors
place each image in K dimensions (:func:`spectral_coordinates`).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse
import scipy.sparse.csgraph


def top_k(similarity: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and values of the k largest entries per row (ties broken by index)."""
    order = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(similarity, order, axis=1)


def _similarity(parts: list[np.ndarray], start: int, stop: int) -> np.ndarray:
    """Sum of the parts' cosines of rows start..stop-1 against every row."""
    return sum(p[start:stop] @ p.T for p in parts)  # type: ignore[return-value]


def neighbour_lists(parts: list[np.ndarray], k: int, block_rows: int = 2048) -> np.ndarray:
    """[n, k] indices of each row's k most similar rows, itself first."""
    n = parts[0].shape[0]
    cols = np.empty((n, k), dtype=np.int64)
    for start in range(0, n, block_rows):
        stop = min(n, start + block_rows)
        similarity = _similarity(parts, start, stop)
        similarity[np.arange(stop - start), np.arange(start, stop)] = np.inf  # self first
        cols[start:stop] = top_k(similarity, k)[0]
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
    return _connectivity(neighbour_lists(parts, k, block_rows))


MAX_NEIGHBOUR_GROWTH = 8


def connected_knn_graph(parts: list[np.ndarray], neighbours: int, max_components: int,
                        block_rows: int = 2048, *, cols: np.ndarray | None = None
                        ) -> tuple[scipy.sparse.csr_matrix, int, int]:
    """:func:`knn_graph` with at most ``max_components`` connected components →
    (graph, neighbours used, bridging edges added).

    A spectral embedding of a graph with more components than classes has one eigenvector per
    component (all of eigenvalue 1), and its K leading ones then pick arbitrary components
    instead of classes: clean data with sub-groups (poses, near-duplicates) breaks it. So k
    doubles, up to :data:`MAX_NEIGHBOUR_GROWTH` times the asked ``neighbours``, while there are
    too many components; any still left are joined by their most similar pair of images (single
    linkage over components), the strongest bridges first. A graph that is connected enough at
    ``neighbours`` is exactly :func:`knn_graph`'s. ``cols``: the rows'
    :func:`neighbour_lists` at ``min(n, neighbours * MAX_NEIGHBOUR_GROWTH)`` when the caller
    has them already."""
    n = parts[0].shape[0]
    k_max = min(n, neighbours * MAX_NEIGHBOUR_GROWTH)
    if cols is None:  # the sort costs the same for any k
        cols = neighbour_lists(parts, k_max, block_rows)
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
