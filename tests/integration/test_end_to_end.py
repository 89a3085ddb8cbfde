"""`goggles run --runner inprocess` on a small real task from cub-dev."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from goggles.cli import main
from goggles.inference.config import InferConfig
from goggles.io.artifacts import output_paths
from goggles.pipeline import stages

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.data]


def test_cli_labels_two_species(cub_pair: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    code = main(["run", str(cub_pair), "--num-classes", "2", "--output", str(out),
                 "--runner", "inprocess", "--shards", "2", "--seed", "3", "--follow-symlinks"])
    assert code == 0
    for name in ("labels.parquet", "manifest.parquet", "metrics.json", "report.html"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_images"] == 120 and metrics["n_rejected"] == 0
    assert metrics["num_prototypes"] > 120
    # the default prototype cap, recorded with its reason; it never binds on 120 images
    budget = metrics["prototype_budget"]
    assert (budget["requested"], budget["cap"], budget["binds"]) == (-1, 10_000, False)
    assert budget["prototypes_found"] == metrics["num_prototypes"] and budget["rule"]
    assert metrics["accuracy"] >= 0.97, metrics
    assert set(metrics["timings_s"]) >= {"ingest", "extract", "affinity", "infer"}
    report = (out / "report.html").read_text()
    # every runner's report has the coverage table when folders give the truth
    assert "Coverage and accuracy by confidence" in report
    assert f"<tr><td>0</td><td>120</td><td>1.0000</td><td>{metrics['accuracy']:.4f}</td>" in report
    labels = pq.read_table(out / "labels.parquet")
    assert labels.column_names == ["image_id", "uri", "probs", "label", "label_name",
                                   "confidence"]
    probs = np.array(labels["probs"].to_pylist())
    assert probs.shape == (120, 2) and np.isfinite(probs).all()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)

    # graph EM's descriptors: of the backbone's stored maps and of the second network's
    features = out / "artifacts" / "features"
    meta = json.loads((features / "meta.json").read_text())
    assert meta["descriptors"] == ["vgg16", "mobilenet_v2"]
    from goggles.io.features_folder import stored_array

    # each extraction part keeps its rows' descriptors; the folder joins them
    own = stored_array(str(features), "descriptors-vgg16.npy")
    other = stored_array(str(features), "descriptors-mobilenet_v2.npy")
    assert own.shape == other.shape == (120, 2048)
    np.testing.assert_allclose(np.linalg.norm(other, axis=1), 1.0, rtol=1e-5)
    from goggles.features.descriptors import bilinear_descriptors
    from goggles.io.features_folder import read_filter_maps

    np.testing.assert_allclose(own, bilinear_descriptors(
        read_filter_maps(str(features), 0, 120)), rtol=1e-5, atol=1e-6)
    assert metrics["method"] == "graph-em" and 0.0 <= metrics["ece"] <= 1.0

    # same seed, same labels (byte for byte); the stage reruns on the stored affinity shards
    paths = output_paths(str(out))
    shards = [str(p) for p in sorted((out / "artifacts" / "affinity").iterdir())]
    again = tmp_path / "again.parquet"
    stages.run_infer(InferConfig(num_classes=2, seed=3), paths["manifest"], paths["prototypes"],
                    shards, str(again), str(tmp_path / "inference.json"),
                    features_uri=paths["features"])
    assert again.read_bytes() == (out / "labels.parquet").read_bytes()
