"""The comparison labelers: the paper's AF+PGM discretisation and Snorkel's LabelModel, the
backbone's ImageNet classifier, and the Gaussians every method leaves for the report."""

from __future__ import annotations

import random

import numpy as np
import pytest
from PIL import Image

from goggles.config import ConfigError
from goggles.inference.config import InferConfig
from goggles.inference.imagenet import (
    BackboneHeadUnavailable,
    ImageNetLabeler,
    logits_of,
    restrict_to_top_classes,
)
from goggles.inference.pgm import discretise, fit_pgm, label_model_proba
from goggles.inference.registry import METHODS, fit_method
from goggles.inference.summary import fit_gaussians
from goggles.io.features_folder import FilterMaps
from goggles.report.evaluation import evaluate


def blocks_matrix(sizes: list[int], columns_per_image: int = 3, *, seed: int = 0,
                  high: float = 0.7, low: float = 0.3,
                  noise: float = 0.08) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A with one block of high scores per class: ([N, M] float32, [N] truth, [M] sources)."""
    rng = np.random.default_rng(seed)
    truth = np.repeat(np.arange(len(sizes)), sizes)
    source = np.repeat(np.arange(len(truth)), columns_per_image)
    same = truth[:, None] == truth[source][None, :]
    a = np.where(same, high, low) + rng.normal(0, noise, (len(truth), len(source)))
    a[source, np.arange(len(source))] = 1.0
    return np.clip(a, 0, 1).astype(np.float32), truth, source


def test_methods_are_configurable() -> None:
    assert set(METHODS) == {"graph-em", "em", "kmeans", "em-random", "pgm", "backbone"}
    with pytest.raises(ConfigError,
                       match="choose one of graph-em, em, kmeans, em-random, pgm, backbone"):
        InferConfig(method="snorkel")


def test_discretise_follows_the_paper_rule() -> None:
    a = np.array([[0.9, 0.8, 0.1, 0.2],
                  [0.7, 0.9, 0.3, 0.1],
                  [0.2, 0.1, 0.9, 0.8],
                  [0.1, 0.3, 0.6, 0.9]])
    votes, column_class = discretise(a, 2, seed=0)
    assert column_class[0] == column_class[1] != column_class[2] == column_class[3]
    # threshold (min + max) / 2 per column: 0.5, 0.5, 0.5, 0.5; above it votes, else abstains
    expected = np.where(a > 0.5, column_class[None, :], -1)
    np.testing.assert_array_equal(votes, expected)
    b = a.copy()
    b[:, 0] = [0.9, 0.6, 0.4, 0.35]  # threshold 0.625: only the first row votes
    votes, column_class = discretise(b, 2, seed=0)
    assert votes[:, 0].tolist() == [column_class[0], -1, -1, -1]


@pytest.mark.slow
def test_label_model_proba_is_snorkels_formula_without_underflow() -> None:
    pytest.importorskip("snorkel")
    from snorkel.labeling.model import LabelModel

    rng = np.random.default_rng(0)
    votes = np.where(rng.random((30, 6)) < 0.6, rng.integers(0, 2, (30, 6)), -1)
    model = LabelModel(cardinality=2, verbose=False)
    model.fit(votes, n_epochs=50, seed=0, progress_bar=False)
    np.testing.assert_allclose(label_model_proba(model, votes), model.predict_proba(votes),
                               rtol=1e-6, atol=1e-9)
    many = np.tile(votes, (1, 150))  # 900 columns: Snorkel's product underflows to 0/0
    model.fit(many, n_epochs=5, seed=0, progress_bar=False, lr=1e-4)
    with np.errstate(invalid="ignore", divide="ignore"):
        assert not np.isfinite(model.predict_proba(many)).all()
    probs = label_model_proba(model, many)
    assert np.isfinite(probs).all() and np.allclose(probs.sum(axis=1), 1)


@pytest.mark.slow
def test_masked_loss_label_model_fits_like_snorkels() -> None:
    pytest.importorskip("snorkel")
    from snorkel.labeling.model import LabelModel

    from goggles.inference.pgm import _label_model_class

    rng = np.random.default_rng(1)
    votes = np.where(rng.random((60, 40)) < 0.3, rng.integers(0, 2, (60, 40)), -1)
    fitted = []
    for cls in (LabelModel, _label_model_class()):
        model = cls(cardinality=2, verbose=False)
        model.fit(votes, n_epochs=30, lr=1e-3, l2=0.1, seed=0, progress_bar=False)
        fitted.append((model.mu.detach().numpy().copy(), float(model._loss_mu(0.1).detach())))
    np.testing.assert_allclose(fitted[0][0], fitted[1][0], atol=1e-6)
    assert fitted[0][1] == pytest.approx(fitted[1][1], rel=1e-5)


@pytest.mark.slow
def test_pgm_labels_separated_blocks_and_restores_global_generators() -> None:
    pytest.importorskip("snorkel")
    import torch

    a, truth, _ = blocks_matrix([25, 35])
    random.seed(7)
    np.random.seed(7)
    torch.manual_seed(7)
    before = random.random(), np.random.random(), float(torch.rand(1))
    random.seed(7)
    np.random.seed(7)
    torch.manual_seed(7)
    threads = torch.get_num_threads()
    probs, column_class = fit_pgm(a, 2, seed=3)
    after = random.random(), np.random.random(), float(torch.rand(1))
    assert before == after and torch.get_num_threads() == threads
    assert probs.shape == (60, 2) and np.allclose(probs.sum(axis=1), 1)
    assert evaluate([str(t) for t in truth], probs.argmax(axis=1), 2)["accuracy"] == 1.0
    assert column_class.shape == (a.shape[1],)
    again, _ = fit_pgm(a, 2, seed=3)
    np.testing.assert_array_equal(again, probs)


def test_pgm_refuses_an_overlap_matrix_it_cannot_hold() -> None:
    a = np.zeros((10, 7000), dtype=np.float32)
    with pytest.raises(ValueError, match="--max-prototypes 6000"):
        fit_pgm(a, 2, seed=0)


def test_fit_gaussians_are_the_class_moments_of_each_column() -> None:
    a, truth, source = blocks_matrix([6, 9])
    params, prototype_class = fit_gaussians(a, truth, source, 2, variance_floor=1e-3)
    assert params.mean.shape == params.std.shape == (a.shape[1], 2)
    for k in (0, 1):
        np.testing.assert_allclose(params.mean[:, k], a[truth == k].mean(axis=0), atol=1e-6)
        np.testing.assert_allclose(params.std[:, k] ** 2, a[truth == k].var(axis=0) + 1e-3,
                                   atol=1e-6)
    np.testing.assert_array_equal(prototype_class, truth[source])


def test_restrict_to_top_classes_takes_the_most_predicted() -> None:
    logits = np.full((6, 5), -5.0)
    logits[[0, 1, 2], 3] = 4.0  # three images say class 3
    logits[[3, 4], 1] = 4.0  # two say class 1
    logits[5, 0] = 4.0  # one says class 0
    logits[5, 1] = 3.0
    probs, chosen = restrict_to_top_classes(logits, 2)
    assert chosen.tolist() == [3, 1]
    assert probs.argmax(axis=1).tolist() == [0, 0, 0, 1, 1, 1]
    np.testing.assert_allclose(probs.sum(axis=1), 1)
    # a tie in counts goes to the class with more probability mass
    _, chosen = restrict_to_top_classes(logits, 3)
    assert chosen.tolist() == [3, 1, 0]
    with pytest.raises(ValueError, match="6 classes requested from a 5-way"):
        restrict_to_top_classes(logits, 6)


def _weights_or_skip(name: str):  # type: ignore[no-untyped-def]
    from goggles.features.backbones import WeightsNotFound, resolve_weights

    try:
        return resolve_weights(name)[0]
    except WeightsNotFound as error:
        pytest.skip(f"no {name} weights here: {error}")


@pytest.mark.slow
def test_backbone_head_on_filter_maps_equals_the_whole_network() -> None:
    import torch
    from torchvision import models

    state = _weights_or_skip("mobilenet_v2")
    model = models.mobilenet_v2(weights=None)
    model.load_state_dict(state)
    model.eval()
    images = torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        maps = model.features(images).numpy()
        expected = model(images).numpy()
    logits = logits_of(FilterMaps("mobilenet_v2", lambda: iter([maps[:2], maps[2:]])))
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)


def test_backbone_without_a_classifier_names_the_ways_to_get_one() -> None:
    state = _weights_or_skip("vgg16")
    if any(k.startswith("classifier.") for k in state):
        pytest.skip("these VGG-16 weights include the classifier")
    maps = np.zeros((2, 512, 7, 7), dtype=np.float32)
    with pytest.raises(BackboneHeadUnavailable,
                       match=r"vgg16-397923af\.pth.*--weights.*--backbone mobilenet_v2"):
        logits_of(FilterMaps("vgg16", lambda: iter([maps])))


@pytest.mark.slow
def test_backbone_method_through_the_registry_names_clusters_after_imagenet() -> None:
    _weights_or_skip("mobilenet_v2")
    rng = np.random.default_rng(0)
    maps = rng.random((8, 1280, 7, 7)).astype(np.float32)
    maps[4:, :640] *= 3  # two kinds of images
    a, _, source = blocks_matrix([4, 4])
    fit = fit_method(InferConfig(num_classes=2, method="backbone"), a, source,
                     filter_maps=FilterMaps("mobilenet_v2", lambda: iter([maps])))
    probs = fit.posteriors_
    assert isinstance(fit, ImageNetLabeler) and fit.initial_labels_ is None
    assert probs is not None
    assert probs.shape == (8, 2) and np.allclose(probs.sum(axis=1), 1)
    assert fit.cluster_names_ is not None and len(set(fit.cluster_names_)) == 2
    assert fit.params_ is not None and fit.params_.mean.shape == (a.shape[1], 2)
    with pytest.raises(ValueError, match="needs the ImageNet logits"):
        fit_method(InferConfig(num_classes=2, method="backbone"), a, source)


def test_a_run_without_the_classifier_fails_before_any_work(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from goggles.parameters import RunParameters
    from goggles.pipeline.wiring import check_inputs

    state = _weights_or_skip("vgg16")
    if any(k.startswith("classifier.") for k in state):
        pytest.skip("these VGG-16 weights include the classifier")
    (tmp_path / "images").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "images" / "a.png")
    params = RunParameters(source_uri=str(tmp_path / "images"), output_uri=str(tmp_path / "out"),
                           num_classes=2, backbone="vgg16", method="backbone")
    with pytest.raises(BackboneHeadUnavailable, match="--backbone mobilenet_v2"):
        check_inputs(params)
    assert not (tmp_path / "out").exists()
