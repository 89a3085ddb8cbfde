"""Graph EM's spectral embedding (goggles.inference.graph.spectral_coordinates) on graphs whose
answer is known: connected graphs, where no closed form applies."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse

from goggles.inference import graph


def two_cliques(size: int = 12, bridges: int = 1, other: int = 0) -> scipy.sparse.csr_matrix:
    """Cliques of ``size`` and ``other`` (default: ``size``) nodes joined by ``bridges``
    edges: one component."""
    n = size + (other or size)
    w = np.zeros((n, n))
    w[:size, :size] = w[size:, size:] = 1.0
    for b in range(bridges):
        w[b, size + b] = w[size + b, b] = 1.0
    return scipy.sparse.csr_matrix(w)


def test_the_second_coordinate_separates_two_bridged_cliques() -> None:
    embedding = graph.spectral_coordinates(two_cliques(), 2, seed=0)
    assert embedding.shape == (24, 2)
    side = embedding[:, 1] > 0
    assert len(set(side[:12])) == 1 and len(set(side[12:])) == 1 and side[0] != side[12]
    # standardised: mean 0, unit standard deviation over the whole embedding
    assert abs(embedding.mean()) < 1e-9 and embedding.std() == pytest.approx(1.0)


def test_it_matches_sklearns_spectral_embedding_up_to_sign_and_scale() -> None:
    from sklearn.manifold import spectral_embedding

    rng = np.random.default_rng(0)
    w = two_cliques(10, bridges=3).toarray() * rng.uniform(0.5, 1.5, (20, 20))
    w = scipy.sparse.csr_matrix((w + w.T) / 2)
    ours = graph.spectral_coordinates(w, 2, seed=0)
    theirs = spectral_embedding(w, n_components=2, norm_laplacian=True, drop_first=False,
                                random_state=0)
    theirs = theirs[:, 1] - theirs[:, 1].mean()  # the first is constant: D^-1/2 D^1/2 1
    cosine = ours[:, 1] @ theirs / np.linalg.norm(ours[:, 1]) / np.linalg.norm(theirs)
    assert abs(cosine) > 0.999
    assert np.ptp(ours[:, 0]) < 1e-6


def test_the_lanczos_path_agrees_with_the_dense_one(monkeypatch: pytest.MonkeyPatch) -> None:
    w = two_cliques(15, bridges=2, other=11)  # unequal: no tie for the largest entry
    dense = graph.spectral_coordinates(w, 2, seed=0)
    monkeypatch.setattr(graph, "DENSE_EIGEN_ROWS", 5)
    sparse = graph.spectral_coordinates(w, 2, seed=0)
    np.testing.assert_allclose(sparse, dense, atol=1e-6)
    # the second vector's largest entry is made positive (before standardising, which only
    # shifts and scales): the side holding it is the positive one
    assert dense[np.abs(dense[:, 1] - np.median(dense[:, 1])).argmax(), 1] > 0


def test_knn_graph_counts_neighbours_not_dimensions() -> None:
    """k is bounded by the number of images, never by the parts' width."""
    rng = np.random.default_rng(0)
    parts = [rng.normal(size=(10, 2)).astype(np.float32)]
    parts = [p / np.linalg.norm(p, axis=1, keepdims=True) for p in parts]
    knn = graph.knn_graph(parts, 5)
    assert ((knn > 0).sum(axis=1) >= 5).all()
    assert ((graph.knn_graph(parts, 50) > 0).sum(axis=1) == 10).all()  # every image
