"""kfp_runner's pieces that need no pipeline run (the runs are in tests/integration)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image

from goggles.kubeflow.pipeline import goggles_pipeline
from goggles.kubeflow.runner import pipeline_arguments, run_pipeline
from goggles.parameters import RunParameters


def test_arguments_are_the_pipeline_parameters_with_absolute_local_paths(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    params = RunParameters(source_uri="images", output_uri="out", num_classes=3,
                           weights_uri="gs://bucket/vgg16.pth", dev_labels_uri="file://dev.csv",
                           num_shards=2, seed=9)
    arguments = pipeline_arguments(params)
    declared = set(goggles_pipeline.component_spec.inputs)
    assert set(arguments) == declared
    assert arguments["source_uri"] == os.path.join(str(tmp_path), "images")
    assert arguments["dev_labels_uri"] == os.path.join(str(tmp_path), "dev.csv")
    assert arguments["weights_uri"] == "gs://bucket/vgg16.pth"
    assert (arguments["num_classes"], arguments["num_shards"], arguments["seed"]) == (3, 2, 9)


def test_unknown_runner_and_bad_parameters_fail_before_any_task(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "images" / "a.png")
    params = RunParameters(source_uri=str(tmp_path / "images"), output_uri=str(tmp_path / "o"),
                           num_classes=2)
    with pytest.raises(ValueError, match="unknown runner 'kubernetes'"):
        run_pipeline(params, runner="kubernetes")
    with pytest.raises(ValueError, match="unknown backbone"):
        RunParameters(source_uri=str(tmp_path / "images"), output_uri=str(tmp_path / "o"),
                      num_classes=2, backbone="alexnet")
    inside = RunParameters(source_uri=str(tmp_path), output_uri=str(tmp_path / "o"),
                           num_classes=2)
    with pytest.raises(ValueError, match="inside the source"):
        run_pipeline(inside)
    assert not (tmp_path / "o").exists()
