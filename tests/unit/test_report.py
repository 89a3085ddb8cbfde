"""report.html from real stage functions on synthetic inputs: images drawn here, ingested by
``run_ingest``; filter maps with one channel pattern per class, written in the extract stage's
layout; then ``run_affinity``, ``run_infer``, ``run_evaluate`` and ``write_report``."""

from __future__ import annotations

import base64
import io
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from goggles.features.affinity import shard_bounds
from goggles.features.config import AffinityConfig
from goggles.features.prototypes import select_prototypes
from goggles.inference.config import InferConfig
from goggles.inference.likelihood import GaussianParameters
from goggles.inference.summary import informative_prototypes
from goggles.ingest.config import IngestConfig
from goggles.io import storage
from goggles.io.artifacts import accepted
from goggles.io.blocks import InMemoryRows
from goggles.io.features_folder import FeaturesWriter
from goggles.pipeline import stages
from goggles.pipeline.extract import part_uri
from goggles.report.page import _groups, affinity_view, write_report

CLASSES = ("alpha", "beta", "gamma")


def synthetic_run(root: Path, *, num_classes: int = 2, per_class: int = 20, method: str = "em",
                  dev_labels: dict[str, str] | None = None, seed: int = 0,
                  num_shards: int = 2) -> dict[str, str]:
    """A run's artifacts under ``root/out`` from every stage but the CNN; returns their URIs."""
    rng = np.random.default_rng(seed)
    source = root / "source"
    for k in range(num_classes):
        folder = source / CLASSES[k]
        folder.mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 255, size=(60 + 10 * k, 80, 3), dtype=np.uint8)
            pixels[..., k] = 255
            Image.fromarray(pixels).save(folder / f"{CLASSES[k]}-{i:02d}.png")
    out = root / "out"
    paths = {name: str(out / rel) for name, rel in (
        ("manifest", "manifest.parquet"), ("features", "artifacts/features"),
        ("prototypes", "artifacts/prototypes.parquet"), ("labels", "labels.parquet"),
        ("inference", "artifacts/inference.json"), ("metrics", "metrics.json"),
        ("report", "report.html"))}
    stages.run_ingest(IngestConfig(), str(source), paths["manifest"])
    rows = accepted(storage.read_parquet(paths["manifest"]))
    truth = [CLASSES.index(t) for t in rows["label"].to_pylist()]
    channels = 8 * num_classes
    maps = rng.random((len(truth), channels, 7, 7)).astype(np.float32) * 0.3
    for i, k in enumerate(truth):  # each class lights up its own channels somewhere
        h, w = rng.integers(0, 7, size=2)
        maps[i, 8 * k:8 * k + 8, h, w] += 1.0 + rng.random(8).astype(np.float32)
    ids = np.arange(len(truth))
    bounds = shard_bounds(len(truth), num_shards)
    for shard, (start, stop) in enumerate(bounds):  # the extract stage's parts, one per shard
        writer = FeaturesWriter(part_uri(paths["features"], shard), shard_size=64)
        writer.add_maps(ids[start:stop], maps[start:stop])
        writer.finish(backbone="vgg16", weights="synthetic", image_size=224,
                      part={"shard_id": shard, "num_parts": num_shards, "start": start,
                            "stop": stop})
    storage.write_json({"shape": list(maps.shape[1:]), "num_images": len(truth),
                        "backbone": "vgg16", "weights": "synthetic", "image_size": 224,
                        "parts": [{"shard_id": s, "start": a, "stop": b}
                                  for s, (a, b) in enumerate(bounds)]},
                       storage.join(paths["features"], "meta.json"))
    storage.write_parquet(select_prototypes(maps, ids, 3).to_table(), paths["prototypes"])
    shard_uris = []
    for shard in range(num_shards):
        uri = str(out / "artifacts" / "affinity" / f"shard-{shard:05d}")
        stages.run_affinity(AffinityConfig(num_shards=num_shards, device="cpu"),
                           part_uri(paths["features"], shard), paths["prototypes"], uri)
        shard_uris.append(uri)
    dev_uri = ""
    if dev_labels:
        dev_uri = str(root / "dev.csv")
        Path(dev_uri).write_text("uri,label\n" + "".join(
            f"{uri},{label}\n" for uri, label in dev_labels.items()))
    stages.run_infer(InferConfig(num_classes=num_classes, method=method, seed=seed, device="cpu"),
                    paths["manifest"], paths["prototypes"], shard_uris, paths["labels"],
                    paths["inference"], dev_uri, features_uri=paths["features"])
    metrics = stages.run_evaluate(paths["manifest"], paths["labels"], paths["inference"],
                                 paths["metrics"], extra={"backbone": "vgg16", "seed": seed,
                                                          "num_prototypes": 0})
    metrics["timings_s"] = {"ingest": 0.1, "infer": 0.2}
    write_report(paths["report"], metrics, labels_uri=paths["labels"],
                 inference_uri=paths["inference"], prototypes_uri=paths["prototypes"],
                 affinity_uris=shard_uris, manifest_uri=paths["manifest"])
    paths["affinity"] = json.dumps(shard_uris)
    paths["source"] = str(source)
    return paths


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[dict[str, str]] = []
        self.plots: list[str] = []
        self.inputs: list[dict[str, str]] = []
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "img":
            self.images.append(a)
        if "data-plot" in a:
            self.plots.append(a["data-plot"])
        if tag == "input":
            self.inputs.append(a)
        for key in ("href", "src"):
            if key in a and tag != "img":
                self.links.append(a[key])


def _parse(path: str) -> tuple[str, _Page]:
    text = Path(path).read_text()
    page = _Page()
    page.feed(text)
    return text, page


def test_report_of_an_em_run_is_self_contained_and_has_every_section(tmp_path: Path) -> None:
    paths = synthetic_run(tmp_path, num_classes=3)
    text, page = _parse(paths["report"])
    assert page.links == []  # nothing fetched from elsewhere
    for image in page.images:  # every picture is inlined and decodes
        header, data = image["src"].split(",", 1)
        assert header in ("data:image/png;base64", "data:image/jpeg;base64")
        Image.open(io.BytesIO(base64.b64decode(data))).load()
    assert page.plots.count("heatmap") == 1 and page.plots.count("confusion") == 1
    state = json.loads(Path(paths["inference"]).read_text())
    # the traces are drawn when EM iterated more than once (this run converges at once)
    assert page.plots.count("trace") == (2 if len(state["change_trace"]) > 1 else 0)
    assert page.plots.count("histogram") == 6
    metrics = json.loads(Path(paths["metrics"]).read_text())
    assert metrics["accuracy"] == 1.0
    # per cluster: most and least confident thumbnails and the strongest prototypes' patches
    assert len([i for i in page.images if i["alt"].startswith("prototype")]) == 6 + 3 * 5
    assert not [i for i in page.inputs if "cluster-name" in i.get("class", "")]  # no naming
    assert "download-review" in text  # by exemplars: the person labels the listed images
    state = json.loads(Path(paths["inference"]).read_text())
    assert len(state["prototypes"]) == 15 and all(len(p["mean"]) == 3 for p in state["prototypes"])
    for k in range(3):
        separations = [p["separation"] for p in state["prototypes"] if p["class"] == k]
        assert separations == sorted(separations, reverse=True) and separations[0] > 1
    summary = re.search(r"<h2 id='summary'>.*?</table>", text, re.S)
    assert summary is not None
    for words in ("images labeled", "classes (K)", "EM iterations", "accuracy",
                  "seconds per stage"):
        assert words in summary.group(0)


def test_dev_set_names_clusters_and_is_scored_apart(tmp_path: Path) -> None:
    first = synthetic_run(tmp_path / "a", num_classes=2)
    rows = storage.read_parquet(first["manifest"])
    uris = rows["uri"].to_pylist()
    # two labeled images per class (the first two and the last two files)
    dev = {uris[0]: "alpha", uris[1]: "alpha", uris[-1]: "beta", uris[-2]: "beta"}
    paths = synthetic_run(tmp_path / "b", num_classes=2, dev_labels={
        uri.replace(str(tmp_path / "a"), str(tmp_path / "b")): name for uri, name in dev.items()})
    labels = storage.read_parquet(paths["labels"]).sort_by("image_id")
    truth = accepted(storage.read_parquet(paths["manifest"]))["label"].to_pylist()
    assert labels["label_name"].to_pylist() == truth  # not cluster_0/cluster_1
    metrics = json.loads(Path(paths["metrics"]).read_text())
    assert metrics["dev_set"] == {"n_images": 4, "accuracy": 1.0, "n_unlabeled": 36,
                                  "accuracy_unlabeled": 1.0, "names_matched": "same"}
    text, _ = _parse(paths["report"])
    assert "alpha — 20 images" in text and "dev set (4 images)" in text
    assert "No dev set named these clusters" not in text  # the dev set already named them
    # the loop goes on: images to label (4 per class, none labeled before), and the dev
    # labels carried into the next CSV
    page = Path(paths["report"]).read_text()
    assert "Images to label" in text and page.count("class='image-label'") == 8
    state = json.loads(Path(paths["inference"]).read_text())
    assert not set(state["suggestions"]["rows"]) & set(state["dev"]["rows"])
    given = json.loads(re.search(r"var GOGGLES_DEV=(.*?);\n", page).group(1))  # type: ignore[union-attr]
    assert sorted(map(tuple, given)) == sorted((u.replace(str(tmp_path / "a"),
                                                          str(tmp_path / "b")), n)
                                               for u, n in dev.items())


def test_graph_em_records_how_its_dev_labels_were_used(tmp_path: Path) -> None:
    """With two or more dev labels per class graph EM cross-validates itself against a
    classifier of the dev images; metrics.json and the report's summary say which one gave the
    labels and by what held-out Brier score."""
    first = synthetic_run(tmp_path / "a", num_classes=2, method="graph-em")
    uris = storage.read_parquet(first["manifest"])["uri"].to_pylist()
    dev = {u.replace(str(tmp_path / "a"), str(tmp_path / "b")): name for u, name in
           zip(uris[:3] + uris[-3:], ["alpha"] * 3 + ["beta"] * 3, strict=True)}
    paths = synthetic_run(tmp_path / "b", num_classes=2, method="graph-em", dev_labels=dev)
    metrics = json.loads(Path(paths["metrics"]).read_text())
    chosen = metrics["dev_set"]["labels_from"]
    assert chosen["chosen"] in ("graph-em", "classifier", "unlabeled") and chosen["folds"] == 3
    assert set(chosen["held_out_brier"]) == {"graph-em", "classifier", "unlabeled"}
    assert metrics["dev_set"]["accuracy_unlabeled"] == 1.0
    state = json.loads(Path(paths["inference"]).read_text())
    assert state["dev"]["choice"] == chosen
    text, _ = _parse(paths["report"])
    assert "labels from (predicts held-out dev labels best)" in text
    assert f"classifier {chosen['held_out_brier']['classifier']:.3f}" in text
    assert f"without labels {chosen['held_out_brier']['unlabeled']:.3f}" in text


def test_coverage_table_shows_what_each_confidence_threshold_keeps(tmp_path: Path) -> None:
    """With ground truth: per threshold, the images ``goggles export --min-confidence`` keeps,
    their share and their accuracy, the 0 row being the run's accuracy; without
    ``cluster_to_class`` (no ground truth) or without the manifest, no table."""
    paths = synthetic_run(tmp_path, num_classes=3)
    metrics = json.loads(Path(paths["metrics"]).read_text())
    labels = storage.read_parquet(paths["labels"])
    confidence = labels["confidence"].to_numpy()
    text, _ = _parse(paths["report"])
    section = re.search(r"<h2 id='coverage'>.*?</table>", text, re.S)
    assert section is not None and "--min-confidence" in section.group(0)
    rows = re.findall(r"<tr><td>([^<]*)</td><td>([^<]*)</td><td>([^<]*)</td><td>([^<]*)</td>",
                      section.group(0))
    assert [float(r[0]) for r in rows] == [0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99, 0.999]
    for threshold, kept, coverage, accuracy in rows:
        assert int(kept) == int((confidence >= float(threshold)).sum())
        assert float(coverage) == pytest.approx(int(kept) / len(confidence), abs=1e-4)
        assert (accuracy == "–") if int(kept) == 0 else (0 <= float(accuracy) <= 1)
    assert float(rows[0][3]) == pytest.approx(metrics["accuracy"], abs=1e-4)
    # metrics.json says how well the confidence flags the wrong labels
    quality = metrics["confidence_quality"]
    assert quality["n_wrong"] == round((1 - metrics["accuracy"]) * len(confidence))
    assert set(quality) == {"n_wrong", "confidence_ece", "confidence_ece_floor",
                            "confidence_brier", "error_auroc", "selective_accuracy"}
    for name, given, manifest in (("no-truth", {k: v for k, v in metrics.items()
                                                if k != "cluster_to_class"}, paths["manifest"]),
                                  ("no-manifest", metrics, "")):
        report = str(tmp_path / f"{name}.html")
        write_report(report, given, labels_uri=paths["labels"], inference_uri=paths["inference"],
                     prototypes_uri=paths["prototypes"], affinity_uris=json.loads(
                         paths["affinity"]), manifest_uri=manifest)
        assert "id='coverage'" not in _parse(report)[0]


@pytest.mark.slow
def test_pgm_run_reports_no_k_means_start_and_no_em_trace(tmp_path: Path) -> None:
    pytest.importorskip("snorkel")
    paths = synthetic_run(tmp_path, num_classes=2, method="pgm")
    state = json.loads(Path(paths["inference"]).read_text())
    assert state["initial_labels"] is None and state["em_iterations"] == 0
    metrics = json.loads(Path(paths["metrics"]).read_text())
    assert "accuracy_kmeans" not in metrics and metrics["accuracy"] >= 0.95
    text, page = _parse(paths["report"])
    assert "No EM iterations" in text and "trace" not in page.plots
    assert page.plots.count("histogram") == 6  # Gaussians refitted on pgm's labels


def test_report_degrades_without_the_affinity_matrix(tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    paths = synthetic_run(tmp_path, num_classes=2)
    metrics = json.loads(Path(paths["metrics"]).read_text())
    report = str(tmp_path / "again.html")
    write_report(report, metrics, labels_uri=paths["labels"], inference_uri=paths["inference"],
                 prototypes_uri=paths["prototypes"], affinity_uris=[str(tmp_path / "gone")])
    text, page = _parse(report)
    assert "heatmap" not in page.plots and "confusion" in page.plots
    assert "affinity matrix unavailable" in caplog.text
    assert len(page.images) >= 2 * 12  # thumbnails still there


def test_affinity_view_pools_exact_group_means() -> None:
    rng = np.random.default_rng(1)
    n, m = 50, 37
    a = rng.random((n, m)).astype(np.float32)
    labels = rng.integers(0, 3, size=n)
    confidence = rng.random(n)
    column_class = rng.integers(0, 3, size=m)
    full = affinity_view(InMemoryRows(a), labels, confidence, column_class, [4, 9])
    row_order = np.lexsort((-confidence, labels))
    np.testing.assert_allclose(full.pooled, a[row_order][:, _column_order(a, labels,
                                                                          column_class)],
                               rtol=1e-6)
    np.testing.assert_array_equal(full.columns, a[:, [4, 9]])
    small = affinity_view(InMemoryRows(a), labels, confidence, column_class, [], limit=10)
    assert small.pooled.shape[0] <= 10 + 3 and small.pooled.shape[1] <= 10 + 3
    # every cell is the mean of a block of A's entries: the grand mean is preserved when the
    # blocks are weighted by their sizes
    assert abs(small.pooled.mean() - a.mean()) < 0.05
    assert np.all(np.diff(small.row_clusters) >= 0) and np.all(np.diff(small.column_clusters) >= 0)


def _column_order(a: np.ndarray, labels: np.ndarray, column_class: np.ndarray) -> np.ndarray:
    means = np.stack([a[labels == k].mean(axis=0) for k in range(3)])
    own = means[column_class, np.arange(a.shape[1])]
    rest = means.copy()
    rest[column_class, np.arange(a.shape[1])] = -np.inf
    return np.lexsort((-(own - rest.max(axis=0)), column_class))


def test_groups_stay_within_a_cluster_and_share_the_limit() -> None:
    clusters = np.array([0] * 700 + [1] * 250 + [2] * 50)
    order = np.arange(1000)
    groups = _groups(clusters, order, 100)
    assert groups.max() + 1 == 100
    for g in np.unique(groups):
        assert len(np.unique(clusters[groups == g])) == 1
    assert np.bincount(clusters[np.unique(groups, return_index=True)[1]]).tolist() == [70, 25, 5]
    assert (_groups(clusters, order, 5000) == order).all()  # small N: one row per group


def test_informative_prototypes_rank_by_separation() -> None:
    mean = np.array([[0.9, 0.2], [0.6, 0.5], [0.3, 0.8], [0.75, 0.7]])
    std = np.full((4, 2), 0.1)
    params = GaussianParameters(mean=mean, std=std, prior=np.array([0.5, 0.5]))
    chosen = informative_prototypes(params, np.array([0, 0, 1, 0]), per_class=2)
    assert [(p["column"], p["class"]) for p in chosen] == [(0, 0), (1, 0), (2, 1)]
    assert chosen[0]["separation"] == pytest.approx(7.0)
    assert informative_prototypes(None, None) == []


def test_the_summary_shows_the_end_models_scores_when_the_run_trained_one(
        tmp_path: Path) -> None:
    paths = synthetic_run(tmp_path, num_classes=2)
    metrics = json.loads(Path(paths["metrics"]).read_text())
    assert "end model" not in Path(paths["report"]).read_text()
    metrics["end_model"] = {"head": "linear", "n_images": 40, "accuracy": 0.95,
                            "hard_label_accuracy": 0.9, "supervised_accuracy": 1.0,
                            "ratio_to_supervised": 0.95, "agreement": 0.975}
    write_report(paths["report"], metrics, labels_uri=paths["labels"],
                 inference_uri=paths["inference"], prototypes_uri=paths["prototypes"],
                 affinity_uris=json.loads(paths["affinity"]), manifest_uri=paths["manifest"])
    text = Path(paths["report"]).read_text()
    assert "linear head on the labels, 40 images" in text
    for label, value in (("accuracy on the held-out third", "0.9500"),
                         ("trained on the arg-max labels", "0.9000"),
                         ("(the bound)", "1.0000"), ("agrees with the labels", "0.9750")):
        row = text[text.index(label):]
        assert row[:row.index("</tr>")].endswith(f"<td>{value}</td>"), label


def test_the_report_leaves_out_a_picture_that_changed_since_ingest(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import hashlib

    from PIL import Image as PILImage

    from goggles.report.page import _load_images

    kept, changed = tmp_path / "kept.png", tmp_path / "changed.png"
    PILImage.new("RGB", (8, 8), (10, 200, 10)).save(kept)
    PILImage.new("RGB", (8, 8), (200, 10, 10)).save(changed)
    hashes = {str(kept): hashlib.sha256(kept.read_bytes()).hexdigest(),
              str(changed): hashlib.sha256(changed.read_bytes()).hexdigest()}
    PILImage.new("RGB", (8, 8), (10, 10, 200)).save(changed)  # rewritten after ingest
    with caplog.at_level("WARNING"):
        images = _load_images({str(kept), str(changed)}, hashes)
    assert set(images) == {str(kept)}
    assert "changed during the run" in caplog.text
    assert set(_load_images({str(kept), str(changed)})) == {str(kept), str(changed)}


def _rewrite(paths: dict[str, str], tmp_path: Path, name: str) -> tuple[str, _Page]:
    """The report again from the run's (possibly edited) artifacts."""
    metrics = json.loads(Path(paths["metrics"]).read_text())
    affinity = sorted(str(p) for p in (Path(paths["labels"]).parent / "artifacts" /
                                       "affinity").glob("shard-*"))
    report = str(tmp_path / name)
    write_report(report, metrics, labels_uri=paths["labels"], inference_uri=paths["inference"],
                 prototypes_uri=paths["prototypes"], affinity_uris=affinity,
                 manifest_uri=paths["manifest"])
    return _parse(report)


def test_the_page_opens_with_the_verdict_then_the_images_to_check_then_the_parameters(
        tmp_path: Path) -> None:
    paths = synthetic_run(tmp_path, num_classes=2)
    text, _ = _parse(paths["report"])
    verdict, review, summary = (text.index(anchor) for anchor in (
        "<section id='verdict'>", "<h2 id='review'>", "<h2 id='summary'>"))
    assert verdict < review < summary
    assert "are probably right" in text and "Against the folder names: 40 of 40" in text


def test_one_em_iteration_draws_no_trace_and_confidence_near_one_is_nothing_to_check(
        tmp_path: Path) -> None:
    paths = synthetic_run(tmp_path, num_classes=2)
    state = json.loads(Path(paths["inference"]).read_text())
    state["change_trace"], state["log_likelihood_trace"] = [0.0], [-1.0]
    Path(paths["inference"]).write_text(json.dumps(state))
    labels = storage.read_parquet(paths["labels"])
    sure = labels.set_column(labels.schema.get_field_index("confidence"), "confidence",
                             pa.array(np.ones(labels.num_rows), labels.schema.field(
                                 "confidence").type))
    storage.write_parquet(sure, paths["labels"])
    text, page = _rewrite(paths, tmp_path, "sure.html")
    assert "trace" not in page.plots and "EM stopped after its first iteration" in text
    assert "Nothing to check:" in text and "Label next" not in text
    assert "<details id='review-anyway'>" in text  # still listed, for naming, folded away
    state["change_trace"], state["log_likelihood_trace"] = [0.5, 0.1, 0.0], [-3.0, -2.0, -1.0]
    Path(paths["inference"]).write_text(json.dumps(state))
    _, page = _rewrite(paths, tmp_path, "iterated.html")
    assert page.plots.count("trace") == 2
