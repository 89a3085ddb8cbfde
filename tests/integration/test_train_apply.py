"""From labels to a model on real cub-dev images: ``goggles run --train``, ``goggles train OUT``
and ``goggles apply`` (both labelers, in this process and as the apply pipeline through kfp's
local runner) on images the fit never saw."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from goggles.cli import main
from goggles.io.artifacts import LABELS_SCHEMA
from tests.conftest import cub_task

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.data]

BACKBONE = "mobilenet_v2"


def split(source: Path, root: Path) -> tuple[Path, Path]:
    """The task's images per species: the first two thirds to ``fit``, the rest ``new``."""
    fit, new = root / "fit", root / "new"
    for species in sorted(source.iterdir()):
        images = sorted(species.iterdir())
        cut = 2 * len(images) // 3
        for folder, part in ((fit, images[:cut]), (new, images[cut:])):
            (folder / species.name).mkdir(parents=True)
            for image in part:
                (folder / species.name / image.name).symlink_to(image.resolve())
    return fit, new


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("train-apply")
    fit, new = split(cub_task(tmp, "001", "014", limit=45), tmp)
    out = tmp / "run"
    code = main(["run", str(fit), "--num-classes", "2", "--output", str(out), "--runner",
                 "inprocess", "--backbone", BACKBONE, "--train", "--follow-symlinks"])
    assert code == 0
    return {"fit": fit, "new": new, "out": out, "tmp": tmp}


def labels_of(out: Path) -> tuple[list[str], list[str]]:
    table = pq.read_table(out / "labels.parquet")
    assert table.schema.equals(LABELS_SCHEMA)
    names = table["label_name"].to_pylist()
    truth = [Path(uri).parent.name for uri in table["uri"].to_pylist()]
    return names, truth


def test_run_with_train_writes_the_model_and_its_scores(trained: dict[str, Path]) -> None:
    out = trained["out"]
    metrics = json.loads((out / "metrics.json").read_text())
    scores = metrics["end_model"]
    assert scores["n_images"] == metrics["n_images"] == 60
    assert scores["n_train"] + scores["n_holdout"] == 60
    assert {"accuracy", "supervised_accuracy", "hard_label_accuracy"} <= set(scores)
    assert scores["supervised_accuracy"] >= 0.9 and scores["accuracy"] >= 0.9
    assert "train" in metrics["timings_s"]
    meta = json.loads((out / "model" / "model.json").read_text())
    assert meta["training"]["labeling_method"] == "graph-em"
    assert meta["classes"] == ["cluster_0", "cluster_1"]  # no dev labels: the run's names


def test_train_on_a_finished_run_rewrites_model_and_metrics(trained: dict[str, Path],
                                                           capsys: pytest.CaptureFixture[str]
                                                           ) -> None:
    out = trained["out"]
    code = main(["train", str(out), "--targets", "hard", "--holdout", "0.5"])
    assert code == 0
    printed = capsys.readouterr().out
    assert f"model: {out}/model" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["end_model"]["targets"] == "hard"
    assert metrics["end_model"]["n_holdout"] == 30
    meta = json.loads((out / "model" / "model.json").read_text())
    assert meta["training"]["targets"] == "hard"
    # back to the default, as the other tests expect
    assert main(["train", str(out)]) == 0


def test_train_refuses_what_is_not_a_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                         ) -> None:
    assert main(["train", str(tmp_path)]) == 2
    assert "is not a finished goggles run" in capsys.readouterr().err


@pytest.mark.parametrize("labeler", ["end-model", "affinity"])
def test_apply_labels_new_images_without_refitting(trained: dict[str, Path], labeler: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    applied = trained["tmp"] / f"applied-{labeler}"
    before = (trained["out"] / "labels.parquet").read_bytes()
    code = main(["apply", str(trained["out"]), str(trained["new"]), "--output", str(applied),
                 "--labeler", labeler, "--follow-symlinks"])
    assert code == 0
    assert "labels:" in capsys.readouterr().out
    metrics = json.loads((applied / "metrics.json").read_text())
    assert metrics["labeler"] == labeler and metrics["n_images"] == 30
    assert metrics["accuracy"] >= 0.9, metrics
    assert metrics["images_per_s"] > 0
    names, truth = labels_of(applied)
    assert len(names) == 30 and set(names) <= {"cluster_0", "cluster_1"}
    agree = np.mean([(a == "cluster_0") == (b.startswith("001.")) for a, b in
                     zip(names, truth, strict=True)])
    assert max(agree, 1 - agree) == pytest.approx(metrics["accuracy"])  # one-to-one matching
    assert (applied / "manifest.parquet").is_file()
    assert (trained["out"] / "labels.parquet").read_bytes() == before  # the run is untouched


def test_apply_with_only_the_model_folder(trained: dict[str, Path]) -> None:
    applied = trained["tmp"] / "applied-model-only"
    code = main(["apply", str(trained["out"] / "model"), str(trained["new"]), "--output",
                 str(applied), "--follow-symlinks"])
    assert code == 0
    assert json.loads((applied / "metrics.json").read_text())["labeler"] == "end-model"


def test_apply_refuses_to_write_into_the_run(trained: dict[str, Path],
                                             capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["apply", str(trained["out"]), str(trained["new"]), "--output",
                 str(trained["out"] / "model" / "new"), "--follow-symlinks"])
    assert code == 2
    assert "would overwrite the run's" in capsys.readouterr().err
    code = main(["apply", str(trained["out"] / "model"), str(trained["new"]), "--output",
                 str(trained["out"]), "--follow-symlinks"])
    assert code == 2
    assert "overlap" in capsys.readouterr().err


def test_apply_pipeline_through_kfps_local_runner(trained: dict[str, Path]) -> None:
    """The scheduled variant (``goggles compile --pipeline apply``) runs as a pipeline."""
    import builtins

    from kfp import local

    from goggles.kubeflow.apply_pipeline import goggles_apply_pipeline

    root = trained["tmp"] / "kfp-root"
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root),
               raise_on_error=True)
    original_print = builtins.print
    try:
        task = goggles_apply_pipeline(model_uri=str(trained["out"]),
                                      source_uri=str(trained["new"]), follow_symlinks=True)
    finally:
        builtins.print = original_print  # kfp.local swaps it per task
    metrics = json.loads(Path(task.outputs["metrics"].path).read_text())
    assert metrics["labeler"] == "affinity" and metrics["n_images"] == 30  # auto, a run's OUT
    assert metrics["accuracy"] >= 0.9
    labels = pq.read_table(task.outputs["labels"].path)
    assert labels.num_rows == 30
