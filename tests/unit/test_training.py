"""The end model (goggles.training): eq. 1's loss, the head, its artifact and how a user loads
it without goggles, the held-out scores, and the fitted labeler on new rows of A."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from goggles.features.descriptors import SKETCH_DIM, bilinear_descriptors
from goggles.inference.config import InferConfig
from goggles.inference.registry import fit_method
from goggles.training import model as model_module
from goggles.training.apply import choose_labeler, locate
from goggles.training.config import TrainConfig
from goggles.training.head import (
    holdout_split,
    predict_proba,
    soft_cross_entropy,
    train_head,
)
from goggles.training.labeler import AffinityLabeler
from goggles.training.model import describe, load_model, network_entry, save_model
from goggles.training.train import score_heads, train_end_model


def blobs(n_per: int, dim: int = 16, classes: int = 2, seed: int = 0,
          spread: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim)) * 3
    labels = np.repeat(np.arange(classes), n_per)
    return (centres[labels] + spread * rng.normal(size=(len(labels), dim))).astype(np.float32), \
        labels


def test_soft_loss_is_the_expected_hard_loss() -> None:
    """Eq. 1: the loss under probabilistic labels is the expectation of the one-hot losses."""
    rng = np.random.default_rng(1)
    logits = torch.as_tensor(rng.normal(size=(5, 3)))
    q = torch.as_tensor(rng.dirichlet(np.ones(3), size=5))
    per_class = torch.stack([soft_cross_entropy(logits[i:i + 1], torch.eye(3)[k:k + 1])
                             for i in range(5) for k in range(3)]).reshape(5, 3)
    expected = (q * per_class).sum(dim=1).mean()
    assert torch.allclose(soft_cross_entropy(logits, q), expected)


def test_soft_targets_are_matched_not_hardened() -> None:
    """One input seen with posterior (0.8, 0.2): the noise-aware head predicts 0.8, where
    training on the arg-max would push it to 1."""
    features = np.ones((50, 3), dtype=np.float32)
    targets = np.tile([0.8, 0.2], (50, 1))
    soft = train_head(features, targets, weight_decay=0.0).head
    hard = train_head(features, np.tile([1.0, 0.0], (50, 1)), weight_decay=0.0).head
    np.testing.assert_allclose(predict_proba(soft, features[:1])[0], [0.8, 0.2], atol=1e-3)
    assert predict_proba(hard, features[:1])[0, 0] > 0.99


@pytest.mark.parametrize("head", ["linear", "mlp"])
def test_head_learns_separable_classes_deterministically(head: str) -> None:
    x, y = blobs(40, classes=3)
    onehot = np.eye(3)[y]
    first = train_head(x, onehot, head=head, hidden=8, max_iter=50, seed=4)
    again = train_head(x, onehot, head=head, hidden=8, max_iter=50, seed=4)
    probs = predict_proba(first.head, x)
    assert (probs.argmax(axis=1) == y).mean() == 1.0
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(probs, predict_proba(again.head, x))
    assert first.iterations >= 1 and np.isfinite(first.loss)


def test_head_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="same rows"):
        train_head(np.zeros((3, 2)), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="NaN"):
        train_head(np.full((3, 2), np.nan), np.eye(2)[[0, 1, 0]])
    with pytest.raises(ValueError, match="unknown head"):
        train_head(np.zeros((3, 2)), np.eye(2)[[0, 1, 0]], head="forest")


def test_holdout_is_stratified_seeded_and_leaves_both_sides_each_label() -> None:
    labels = np.array([0] * 30 + [1] * 9 + [2] * 2 + [3])
    held = holdout_split(labels, 1 / 3, seed=7)
    assert held.sum() == 10 + 3 + 1 + 0
    for value in (0, 1, 2):
        rows = labels == value
        assert held[rows].any() and (~held[rows]).any()
    assert not held[labels == 3].any()          # a single image is never held out
    np.testing.assert_array_equal(held, holdout_split(labels, 1 / 3, seed=7))
    assert not np.array_equal(held, holdout_split(labels, 1 / 3, seed=8))


def test_scores_compare_soft_hard_and_supervised_heads() -> None:
    x, y = blobs(30, classes=2, seed=2)
    # confident, right posteriors for most, a few wrong ones with low confidence
    probs = np.eye(2)[y] * 0.9 + 0.05
    wrong = np.arange(0, 60, 10)
    probs[wrong] = np.where(np.eye(2)[y[wrong]] > 0, 0.45, 0.55)
    truth = [f"class_{v}" for v in y]
    scores = score_heads(x, probs, truth, TrainConfig())
    for name in ("accuracy", "hard_label_accuracy", "supervised_accuracy", "label_accuracy",
                 "agreement", "ratio_to_supervised"):
        assert 0.0 <= scores[name] <= 1.01, name
    assert scores["n_train"] + scores["n_holdout"] == 60
    assert scores["supervised_accuracy"] == 1.0
    assert scores["ratio_to_supervised"] == pytest.approx(scores["accuracy"])
    # without truth: only agreement with the labels
    blind = score_heads(x, probs, None, TrainConfig())
    assert "accuracy" not in blind and "agreement" in blind


def test_train_end_model_checks_its_inputs() -> None:
    with pytest.raises(ValueError, match="no descriptors"):
        train_end_model([], np.eye(2), None, TrainConfig())
    with pytest.raises(ValueError, match="same images"):
        train_end_model([np.zeros((3, 4))], np.eye(2), None, TrainConfig())


def trained_model(tmp_path: Path, head: str = "linear") -> tuple[Path, np.ndarray]:
    x, y = blobs(20, dim=2 * SKETCH_DIM, classes=2)
    config = TrainConfig(head=head, hidden=4, max_iter=20)  # a round trip needs no optimum
    fitted, scores = train_end_model([x[:, :SKETCH_DIM], x[:, SKETCH_DIM:]], np.eye(2)[y],
                                     None, config)
    meta = describe(classes=["albatross", "bunting"], head=head, hidden=4,
                    networks=[network_entry("vgg16"), network_entry("mobilenet_v2")],
                    image_size=224, training=config.to_dict(), evaluation=scores)
    save_model(str(tmp_path / "model"), fitted, meta)
    return tmp_path / "model", x


@pytest.mark.parametrize("head", ["linear", "mlp"])
def test_model_folder_round_trips(tmp_path: Path, head: str) -> None:
    folder, x = trained_model(tmp_path, head)
    loaded = load_model(str(folder))
    again = load_model(str(tmp_path))            # a run's OUT finds its model/
    assert loaded.classes == ["albatross", "bunting"]
    assert [n["backbone"] for n in loaded.networks] == ["vgg16", "mobilenet_v2"]
    np.testing.assert_allclose(loaded.predict_proba(x), again.predict_proba(x))
    meta = json.loads((folder / "model.json").read_text())
    assert meta["format"] == "goggles-end-model" and meta["goggles_version"]
    assert meta["input"]["dim"] == 2 * SKETCH_DIM
    assert set(meta) >= {"classes", "head", "input", "preprocessing", "descriptor", "training",
                         "evaluation"}


def test_model_loads_without_goggles(tmp_path: Path) -> None:
    """safetensors and the formula in model.json give goggles' own probabilities."""
    from safetensors.numpy import load_file

    folder, x = trained_model(tmp_path)
    t = load_file(str(folder / "model.safetensors"))
    meta = json.loads((folder / "model.json").read_text())
    assert meta["head"]["formula"].startswith("logits = layers.0((x - mean) / scale)")
    logits = ((x - t["mean"]) / t["scale"]) @ t["layers.0.weight"].T + t["layers.0.bias"]
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(probs, load_model(str(folder)).predict_proba(x), atol=1e-5)
    assert t["sketch.vgg16.bucket"].shape == (512 * 513 // 2,)
    assert t["sketch.mobilenet_v2.sign"].dtype == np.int8


def test_documented_descriptor_recipe_matches_goggles(tmp_path: Path) -> None:
    """The ``descriptor`` function in goggles.training.model's docstring (what a user copies)
    computes the descriptors goggles computes, from the model's stored sketch tables."""
    from safetensors.torch import load_file

    doc = model_module.__doc__ or ""
    match = re.search(r"(    def descriptor\(.*?\n)\n", doc, flags=re.S)
    assert match, "the docstring lost its descriptor recipe"
    namespace: dict[str, object] = {"torch": torch,
                                    "meta": {"descriptor": {"dim": SKETCH_DIM}}}
    exec(textwrap.dedent(match.group(1)), namespace)  # noqa: S102 - the documented lines
    folder, _ = trained_model(tmp_path)
    tensors = load_file(str(folder / "model.safetensors"))
    maps = np.random.default_rng(3).random((4, 512, 3, 3), dtype=np.float32)
    ours = bilinear_descriptors(maps)
    theirs = namespace["descriptor"](torch.from_numpy(maps),  # type: ignore[operator]
                                     tensors["sketch.vgg16.bucket"],
                                     tensors["sketch.vgg16.sign"])
    np.testing.assert_allclose(theirs.numpy(), ours, atol=1e-5)


def affinity_fit(method: str) -> tuple[np.ndarray, np.ndarray, list[np.ndarray], object]:
    rng = np.random.default_rng(5)
    n_per, m_per = 40, 6
    y = np.repeat([0, 1], n_per)
    source = np.concatenate([rng.choice(n_per, m_per, replace=False),
                             n_per + rng.choice(n_per, m_per, replace=False)])
    proto_class = y[source]
    rows = (0.2 + 0.6 * (y[:, None] == proto_class[None, :])
            + 0.1 * rng.random((2 * n_per, 2 * m_per))).astype(np.float32)
    described, _ = blobs(n_per, dim=8, classes=2, seed=6)
    config = InferConfig(num_classes=2, method=method, seed=0)
    fitted = fit_method(config, rows, source, descriptors=[described])
    return rows, source, [described], fitted


@pytest.mark.parametrize("method", ["graph-em", "em", "kmeans"])
def test_fitted_labeler_relabels_the_runs_own_images(method: str) -> None:
    rows, source, described, fitted = affinity_fit(method)
    posteriors = fitted.posteriors_  # type: ignore[attr-defined]
    labeler = AffinityLabeler.from_fit(
        method=method, classes=["a", "b"], prototypes=np.zeros((len(source), 3)),
        source_index=source, affinity=rows, posteriors=posteriors, descriptors=described,
        networks=[("vgg16", "")])
    again = labeler.predict_proba(rows, described)
    assert again.shape == posteriors.shape
    assert (again.argmax(axis=1) == posteriors.argmax(axis=1)).mean() >= 0.95
    np.testing.assert_allclose(again.sum(axis=1), 1.0, rtol=1e-5)
    with pytest.raises(ValueError, match="columns"):
        labeler.predict_proba(rows[:, :-1], described)


def test_fitted_labeler_rebuilds_graph_ems_sample_with_its_dev_seeds(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Above ``max_rows`` graph EM builds its graph on a seeded sample that always holds the
    dev-labeled rows; the labeler's reference images are that sample, seeds included."""
    from goggles.inference.graph_em import GraphEM
    from goggles.inference.seeds import Seeds

    rows, source, described, _ = affinity_fit("graph-em")
    seeds = Seeds(np.array([0, 1, 2, 41, 42, 43]), np.array([0, 0, 0, 1, 1, 1]))
    model = GraphEM(num_classes=2, random_state=0, max_rows=30)
    model.fit(rows, source, descriptors=described, seeds=seeds)
    assert model.sample_ is not None and set(seeds.rows) <= set(model.sample_)
    monkeypatch.setattr(GraphEM, "max_rows", 30)
    labeler = AffinityLabeler.from_fit(
        method="graph-em", classes=["a", "b"], prototypes=np.zeros((len(source), 3)),
        source_index=source, affinity=rows, posteriors=model.posteriors_,
        descriptors=described, networks=[("vgg16", "")], seed=0, seeds=seeds)
    assert labeler.reference is not None
    np.testing.assert_array_equal(labeler.reference, model.sample_)


def test_the_labeler_of_a_run_reads_its_dev_labels_and_their_choice(tmp_path: Path) -> None:
    """``from_run`` seeds the labeler with the run's dev labels (named clusters in the run's
    order) and, where inference.json says a classifier of the dev images gave the labels, labels
    new images with that classifier at the recorded temperature."""
    from goggles.io import artifacts, features_folder
    from tests.unit.test_report import synthetic_run

    dev = {str(tmp_path / "source" / name / f"{name}-{i:02d}.png"): name
           for name in ("alpha", "beta") for i in (0, 1, 2)}
    paths = synthetic_run(tmp_path, num_classes=2, method="graph-em", dev_labels=dev)
    out = str(tmp_path / "out")
    state = json.loads(Path(paths["inference"]).read_text())
    assert state["dev"]["choice"]["chosen"] == "graph-em"  # the clusters are the classes here
    labeler = AffinityLabeler.from_run(out)
    assert labeler.classifier is None and labeler.reference is not None

    state["dev"]["choice"] = {"chosen": "classifier", "temperature": 0.5}  # as if it had won
    Path(paths["inference"]).write_text(json.dumps(state))
    labeler = AffinityLabeler.from_run(out)
    assert labeler.classifier is not None and labeler.classifier.temperature == 0.5
    assert labeler.reference is None
    rows = artifacts.StoredShards(json.loads(paths["affinity"]))
    described = features_folder.stored_descriptors(paths["features"]) or []
    assert described == [] and labeler.described == 0  # a folder from before descriptors
    a = np.concatenate([b for _, b in rows.blocks()])
    probs = labeler.predict_proba(a, described)
    new_images = [np.ones((len(a), 4), np.float32) / 2]  # what apply computes for the backbone
    np.testing.assert_array_equal(labeler.predict_proba(a, new_images), probs)
    cluster = [state["cluster_names"].index(name) for name in state["dev"]["labels"]]
    np.testing.assert_array_equal(probs[state["dev"]["rows"]].argmax(axis=1), cluster)


def test_choosing_the_labeler_names_what_is_missing(tmp_path: Path) -> None:
    assert choose_labeler("auto", "m", "r", "x") == "affinity"   # the run's own fit
    assert choose_labeler("auto", "m", "", "x") == "end-model"   # a model folder alone
    assert choose_labeler("auto", "x/model", "x", "x/model/") == "end-model"  # named itself
    assert choose_labeler("auto", "", "r", "x") == "affinity"
    with pytest.raises(FileNotFoundError, match="goggles train OUT"):
        choose_labeler("end-model", "", "r", "x")
    with pytest.raises(FileNotFoundError, match="neither a model"):
        choose_labeler("auto", "", "", "x")
    folder, _ = trained_model(tmp_path)
    assert locate(str(folder)) == (str(folder), "")    # a bare model: no run beside it


def test_apply_refuses_an_image_that_changed_since_its_ingest(tmp_path: Path) -> None:
    """``goggles apply`` reads the images again after its ingest: bytes that no longer match the
    manifest's sha256 are named, not labeled."""
    import hashlib

    from PIL import Image as PILImage

    from goggles.io.images import ImageChanged
    from goggles.training.describe import describe_images

    uris, hashes = [], []
    for index, colour in enumerate([(200, 0, 0), (0, 0, 200)]):
        path = tmp_path / f"{index}.png"
        PILImage.new("RGB", (32, 32), colour).save(path)
        uris.append(str(path))
        hashes.append(hashlib.sha256(path.read_bytes()).hexdigest())
    described = describe_images(uris, [("mobilenet_v2", "")], device="cpu", num_workers=0,
                                hashes=hashes)
    assert described.descriptors[0].shape[0] == 2
    PILImage.new("RGB", (32, 32), (0, 200, 0)).save(uris[1])
    with pytest.raises(ImageChanged) as raised:
        describe_images(uris, [("mobilenet_v2", "")], device="cpu", num_workers=0,
                        hashes=hashes)
    assert raised.value.uris == [uris[1]]
