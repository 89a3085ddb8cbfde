"""Graph EM's pass over the images beyond its sample (goggles.inference.extend): shard by
shard, from the fit's compact state."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from goggles.features.descriptors import bilinear_descriptors
from goggles.inference.base import DegenerateDataWarning
from goggles.inference.extend import SampleFit, label_all, label_block
from goggles.inference.graph_em import GraphEM, graph_sample
from tests.unit.test_graph import accuracy, planted_maps
from tests.unit.test_inference import planted


class ShardedRows:
    """A served as ``shards`` row shards of near-equal size."""

    def __init__(self, matrix: np.ndarray, shards: int) -> None:
        self.matrix, self.shape = matrix, matrix.shape
        self.bounds = np.linspace(0, len(matrix), shards + 1).astype(int)

    def blocks(self):  # type: ignore[no-untyped-def]
        for start, stop in zip(self.bounds[:-1], self.bounds[1:], strict=True):
            yield int(start), self.matrix[start:stop]


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def toy_fit() -> SampleFit:
    """Four sampled images (rows 1, 3, 6, 8 of 10): two near axis 0 with class 0, two near axis
    1 with class 1; their posteriors differ from any mean of their neighbours'."""
    a_rows = _unit(np.array([[1, 0.1], [1, 0.2], [0.1, 1], [0.2, 1]], dtype=np.float32))
    return SampleFit(sample=np.array([1, 3, 6, 8]), parts=[a_rows],
                     posteriors=np.array([[0.9, 0.1], [0.7, 0.3], [0.2, 0.8], [0.4, 0.6]]),
                     labels=np.array([0, 0, 1, 1]), confidence=np.array([0.91, 0.71, 0.81, 0.61]),
                     neighbours=2)


def toy_rows() -> np.ndarray:
    """10 images' rows of A: images 0-4 near axis 0, 5-9 near axis 1 (sampled: 1, 3, 6, 8)."""
    rows = np.array([[1, 0.05]] * 5 + [[0.05, 1]] * 5, dtype=np.float32)
    rows[[1, 3, 6, 8]] = [[1, 0.1], [1, 0.2], [0.1, 1], [0.2, 1]]
    return rows


def test_other_images_take_their_nearest_sampled_images_labels() -> None:
    fit = toy_fit()
    posteriors, initial, confidence = label_block(fit, 0, toy_rows(), [])
    others = [0, 2, 4, 5, 7, 9]
    # initial labels: the majority of the nearest sampled images' (argmax, never argmin)
    np.testing.assert_array_equal(initial[others], [0, 0, 0, 1, 1, 1])
    np.testing.assert_allclose(posteriors[0], [0.8, 0.2])  # mean of rows 1 and 3
    np.testing.assert_allclose(posteriors[9], [0.3, 0.7])  # mean of rows 6 and 8
    np.testing.assert_allclose(confidence[[0, 9]], [0.8, 0.7])


def test_sampled_images_keep_their_own_posteriors_labels_and_confidence() -> None:
    fit = toy_fit()
    posteriors, initial, confidence = label_block(fit, 0, toy_rows(), [])
    np.testing.assert_array_equal(posteriors[fit.sample], fit.posteriors)
    np.testing.assert_array_equal(initial[fit.sample], fit.labels)
    np.testing.assert_array_equal(confidence[fit.sample], fit.confidence)
    # a block that starts later finds its sampled rows by their global index
    tail = label_block(fit, 5, toy_rows()[5:], [])
    np.testing.assert_array_equal(tail[0][[1, 3]], fit.posteriors[2:])
    np.testing.assert_array_equal(tail[1], [1, 1, 1, 1, 1])


def test_descriptors_join_the_similarity() -> None:
    fit = toy_fit()
    fit.parts.append(_unit(np.array([[0, 1], [0, 1], [1, 0], [1, 0]], dtype=np.float32)))
    rows = np.array([[1, 1]], dtype=np.float32)  # A alone cannot tell
    _, initial, _ = label_block(fit, 0, rows, [np.array([[0, 5]], dtype=np.float32)])
    assert initial.tolist() == [0]
    _, initial, _ = label_block(fit, 0, rows, [np.array([[5, 0]], dtype=np.float32)])
    assert initial.tolist() == [1]
    with pytest.raises(ValueError, match="same images' rows"):
        label_block(fit, 0, rows, [np.zeros((2, 2), dtype=np.float32)])


def test_the_state_round_trips(tmp_path) -> None:  # type: ignore[no-untyped-def]
    fit = toy_fit()
    fit.save(str(tmp_path / "state"))
    back = SampleFit.load(str(tmp_path / "state"))
    assert back.neighbours == 2 and len(back.parts) == 1
    for name in ("sample", "posteriors", "labels", "confidence"):
        np.testing.assert_array_equal(getattr(back, name), getattr(fit, name))
    assert [o.tolist() for o in label_all(back, ShardedRows(toy_rows(), 3), [])] == \
        [o.tolist() for o in label_block(fit, 0, toy_rows(), [])]


def test_the_state_holds_half_precision_values_rounded_in_place() -> None:
    """The sample's parts are rounded to float16 values (held as float32, as stored): a writable
    float32 part in place, a block of rows at a time (no second copy at 20,000 x 20,000), any
    other part copied; the loaded state equals the fitted one exactly."""
    rng = np.random.default_rng(0)
    values = rng.normal(size=(2500, 7)).astype(np.float32)
    half = values.astype(np.float16).astype(np.float32)
    assert not np.array_equal(values, half)
    own = values.copy()
    frozen = values.copy()
    frozen.flags.writeable = False
    wide, strided = values.astype(np.float64), np.asfortranarray(values)
    fit = SampleFit(np.arange(2500), [own, frozen, wide, strided], np.full((2500, 2), 0.5),
                    np.zeros(2500, dtype=np.int64), np.ones(2500), 3)
    assert fit.parts[0] is own  # rounded where it lies
    for part in fit.parts:
        assert part.dtype == np.float32 and part.flags.c_contiguous
        np.testing.assert_array_equal(part, half)  # every row, past the first block too
    assert fit.parts[1] is not frozen and fit.parts[3] is not strided
    np.testing.assert_array_equal(frozen, values)  # a part it may not write stays as it was
    np.testing.assert_array_equal(wide, values.astype(np.float64))


@pytest.fixture(scope="module")
def sampled() -> tuple:
    a, source, truth = planted(2, 100, noise=0.1, seed=3)
    d = bilinear_descriptors(planted_maps(truth, seed=3))
    model = GraphEM(2, max_rows=60, random_state=0).fit(a, source, descriptors=d)
    return a, d, truth, model, source


@pytest.mark.parametrize("shards", [1, 4, 16])
def test_graph_em_labels_are_identical_for_any_shard_count(sampled: tuple, shards: int) -> None:
    a, d, _, model, source = sampled
    again = GraphEM(2, max_rows=60, random_state=0).fit(ShardedRows(a, shards), source,
                                                        descriptors=d)
    np.testing.assert_array_equal(again.posteriors_, model.posteriors_)
    np.testing.assert_array_equal(again.initial_labels_, model.initial_labels_)
    np.testing.assert_array_equal(again.confidence_, model.confidence_)


def test_graph_em_beyond_its_sample_follows_the_classes(sampled: tuple) -> None:
    _, _, truth, model, _ = sampled
    beyond = np.setdiff1d(np.arange(len(truth)), model.sample_)
    assert len(beyond) == 140
    assert accuracy(truth[beyond], model.initial_labels_[beyond], 2) == 1.0
    # the initial labels and the posteriors name the classes alike (no flipped pass)
    agree = (model.initial_labels_ == model.posteriors_.argmax(axis=1)).mean()
    assert agree > 0.95
    assert np.isfinite(model.posteriors_).all() and np.allclose(model.posteriors_.sum(1), 1)
    assert (model.confidence_ >= 0.5 - 1e-9).all() and (model.confidence_ <= 1 + 1e-9).all()


def test_graph_sample_draws_nothing_when_every_image_fits() -> None:
    """At n ≤ max_rows the graph takes every image and leaves the seed's stream untouched, so
    the fit's later draws (spectral and k-means seeds) are those of ``default_rng(seed)``."""
    for n in (5, 6):
        rng = np.random.default_rng(7)
        np.testing.assert_array_equal(graph_sample(n, 6, rng), np.arange(n))
        assert rng.integers(2 ** 31 - 1) == np.random.default_rng(7).integers(2 ** 31 - 1)
    rng = np.random.default_rng(7)
    drawn = graph_sample(10, 6, rng)
    assert len(drawn) == 6 and (np.diff(drawn) > 0).all()


def test_a_class_below_min_class_fraction_stops_em_with_a_warning() -> None:
    a, source, truth = planted(2, 40, noise=0.1, seed=4)
    keep = np.r_[np.arange(40), np.arange(40, 48)]  # 40 and 8 images: the small class is 17%
    cols = np.flatnonzero(np.isin(source, keep))
    a, source = a[keep][:, cols], np.searchsorted(keep, source[cols])
    d = bilinear_descriptors(planted_maps(truth[keep], seed=4))
    for fraction, warned in ((0.3, True), (0.01, False)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            GraphEM(2, random_state=0, min_class_fraction=fraction).fit(
                a, source, descriptors=d)
        said = [str(w.message) for w in caught if issubclass(w.category, DegenerateDataWarning)]
        assert any("min_class_fraction" in s for s in said) is warned, (fraction, said)


def test_as_many_distinct_images_as_classes_is_no_warning() -> None:
    a = np.repeat(np.array([[1.0, 0.2], [0.2, 1.0]], dtype=np.float32), 6, axis=0)
    d = np.repeat(np.eye(2, dtype=np.float32), 6, axis=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = GraphEM(2, random_state=0).fit(a, np.arange(2), descriptors=d)
    assert not [w for w in caught if "can be told apart" in str(w.message)]
    assert len(np.unique(model.posteriors_.argmax(axis=1))) == 2
    # too few distinct images for a graph: one axis of the embedding per image
    np.testing.assert_array_equal(model.embedding_, np.eye(2)[np.repeat([0, 1], 6)])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        GraphEM(3, random_state=0).fit(a, np.arange(2), descriptors=d)
    assert [w for w in caught if "only 2 of 3 classes can be told apart" in str(w.message)]
