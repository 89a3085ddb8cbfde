"""The whole Kubeflow pipeline through kfp's local runner, on two real cub-dev species.

One kfp ``pipeline_root`` with kfp's local cache is shared by the runs, so the extraction runs
once and the 1-, 3- and 4-shard runs differ only in how the affinity matrix is sharded.
MobileNetV2 keeps the CNN part short on a 2-core machine; the DAG is the same for any backbone.
"""

from __future__ import annotations

import builtins
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from goggles.cli import main
from goggles.io import storage
from goggles.kubeflow.components.image import IMAGES
from goggles.kubeflow.runner import PipelineRunError, run_pipeline
from goggles.parameters import RunParameters
from goggles.pipeline.inprocess import run_inprocess
from tests.conftest import CUB_DEV, cub_task

pytestmark = [pytest.mark.integration]

SEED = 3
BACKBONE = "mobilenet_v2"
OUTPUT_FILES = ("labels.parquet", "manifest.parquet", "metrics.json", "report.html")
PRINT = builtins.print


def _labels(table: pa.Table) -> pa.Table:
    return table.sort_by("image_id").select(["image_id", "uri", "label", "label_name"])


def _docker_images_present() -> bool:
    try:
        import docker

        client = docker.from_env()
        for image in IMAGES:
            client.images.get(image)
    except Exception:  # noqa: BLE001 - any missing piece means the error path is taken
        return False
    return True


def _executor_output(root: Path, task: str) -> dict:
    found = sorted(root.glob(f"goggles-*/{task}/executor_output.json"))
    assert found, f"no {task} task output under {root}"
    return json.loads(found[-1].read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The local-runner runs (3 shards via the CLI; the default, 1 here, and 4 shards via
    run_pipeline) and the in-process reference, all with the same seed."""
    tmp = tmp_path_factory.mktemp("local-runner")
    source = cub_task(tmp, "001", "014")
    root = tmp / "kfp-root"
    out3 = tmp / "out-3"
    code = main(["run", str(source), "--num-classes", "2", "--output", str(out3),
                 "--shards", "3", "--seed", str(SEED), "--backbone", BACKBONE,
                 "--pipeline-root", str(root), "--cache", "--follow-symlinks"])
    assert code == 0
    common = {"source_uri": str(source), "num_classes": 2, "seed": SEED, "backbone": BACKBONE,
              "follow_symlinks": True}
    memory_out = "memory://goggles-local-runner/out-1"
    # the default num_shards (0): the plan task gives these few images one shard
    metrics1 = run_pipeline(RunParameters(output_uri=memory_out, **common),
                            pipeline_root=str(root), enable_caching=True)
    out4 = tmp / "out-4"
    metrics4 = run_pipeline(RunParameters(output_uri=str(out4), num_shards=4, train=True,
                                          **common),
                            pipeline_root=str(root), enable_caching=True)
    reference = tmp / "inprocess"
    reference_metrics = run_inprocess(RunParameters(output_uri=str(reference), num_shards=3,
                                                    **common))
    return {"source": source, "root": root, "out3": out3, "memory_out": memory_out,
            "metrics1": metrics1, "out4": out4, "metrics4": metrics4, "reference": reference,
            "reference_metrics": reference_metrics}


@pytest.mark.slow
@pytest.mark.data
def test_cli_run_defaults_to_the_local_runner_and_writes_the_design_files(runs) -> None:
    out = runs["out3"]
    assert builtins.print is PRINT, "kfp.local left its indenting print installed"
    for name in OUTPUT_FILES:
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["runner"] == "local"
    assert metrics["n_images"] == 120 and metrics["n_rejected"] == 0
    assert metrics["num_shards"] == 3 and metrics["backbone"] == BACKBONE
    assert metrics["num_prototypes"] > 120
    assert metrics["accuracy"] >= 0.95, metrics
    assert set(metrics["timings_s"]) == {"ingest", "extract", "affinity", "infer", "evaluate"}
    assert all(seconds > 0 for seconds in metrics["timings_s"].values())
    shards = sorted(p.name for p in (out / "artifacts" / "affinity").iterdir())
    assert shards == ["shard-00000", "shard-00001", "shard-00002"]
    rows = [np.load(out / "artifacts" / "affinity" / s / "affinity.npy").shape for s in shards]
    assert sum(r[0] for r in rows) == 120 and {r[1] for r in rows} == {metrics["num_prototypes"]}
    assert (out / "artifacts" / "features" / "meta.json").is_file()
    assert (out / "artifacts" / "prototypes.parquet").is_file()
    assert (out / "artifacts" / "inference.json").is_file()
    assert "<h1>goggles labeling report</h1>" in (out / "report.html").read_text()


@pytest.mark.slow
@pytest.mark.data
def test_labels_equal_the_inprocess_run_for_the_same_seed(runs) -> None:
    local = pq.read_table(runs["out3"] / "labels.parquet")
    reference = pq.read_table(runs["reference"] / "labels.parquet")
    assert _labels(local).equals(_labels(reference))
    # determinism across runners: byte-identical labels.parquet
    assert (runs["out3"] / "labels.parquet").read_bytes() == \
        (runs["reference"] / "labels.parquet").read_bytes()
    local_metrics = json.loads((runs["out3"] / "metrics.json").read_text())
    for key in ("n_images", "num_prototypes", "em_iterations", "converged", "accuracy",
                "accuracy_kmeans", "confusion"):
        assert local_metrics[key] == runs["reference_metrics"][key], key


@pytest.mark.slow
@pytest.mark.data
def test_sharding_is_exact_one_and_four_shards_give_identical_labels(runs) -> None:
    one = storage.read_parquet(storage.join(runs["memory_out"], "labels.parquet"))
    four = pq.read_table(runs["out4"] / "labels.parquet")
    three = pq.read_table(runs["out3"] / "labels.parquet")
    assert _labels(one).equals(_labels(four))
    assert _labels(one).equals(_labels(three))
    assert one.sort_by("image_id")["probs"].to_pylist() == \
        four.sort_by("image_id")["probs"].to_pylist()
    # determinism across shard counts: byte-identical labels.parquet
    assert storage.read_bytes(storage.join(runs["memory_out"], "labels.parquet")) == \
        (runs["out4"] / "labels.parquet").read_bytes()
    assert runs["metrics1"]["num_shards"] == 1 and runs["metrics4"]["num_shards"] == 4
    # the output may be any fsspec URI: the 1-shard run went to memory://
    for name in OUTPUT_FILES:
        assert storage.exists(storage.join(runs["memory_out"], name)), name
    four_shards = sorted(p.name for p in (runs["out4"] / "artifacts" / "affinity").iterdir())
    assert len(four_shards) == 4
    affinity = [np.load(runs["out4"] / "artifacts" / "affinity" / s / "affinity.npy")
                for s in four_shards]
    single = storage.read_npy(storage.join(runs["memory_out"], "artifacts", "affinity",
                                           "shard-00000", "affinity.npy"))
    np.testing.assert_array_equal(np.concatenate(affinity), single)


@pytest.mark.slow
@pytest.mark.data
def test_kubeflow_ui_outputs(runs) -> None:
    output = _executor_output(runs["root"], "evaluate")["artifacts"]
    metrics = output["metrics"]["artifacts"][0]["metadata"]
    assert metrics["n_images"] == 120 and metrics["n_rejected"] == 0
    assert metrics["accuracy"] >= 0.95 and metrics["num_prototypes"] > 120
    assert {"em_iterations", "accuracy_kmeans", "converged"} <= set(metrics)
    matrix = output["confusion"]["artifacts"][0]["metadata"]["confusionMatrix"]
    names = [spec["displayName"] for spec in matrix["annotationSpecs"]]
    assert names == ["001.Black_footed_Albatross", "014.Indigo_Bunting"]
    counts = np.array([row["row"] for row in matrix["rows"]])
    assert counts.sum() == 120 and np.trace(counts) >= 114
    summary = Path(output["summary"]["artifacts"][0]["uri"]).read_text()
    assert "| accuracy |" in summary and "| n_images | 120 |" in summary
    report = Path(output["report"]["artifacts"][0]["uri"]).read_text()
    assert report.startswith("<!doctype html>")
    gathered = _executor_output(runs["root"], "gather-features")["artifacts"]
    features = gathered["features"]["artifacts"][0]["metadata"]
    assert features["backbone"] == BACKBONE and features["n_images"] == 120
    assert features["filter_map_shape"] == [1280, 7, 7] and features["goggles_version"]
    assert len(features["maps_uris"]) == 4  # the last run's 4 parts, in row order
    parts = [json.loads(p.read_text())["artifacts"]["maps"]["artifacts"][0]["metadata"]
             for p in sorted(runs["root"].glob("goggles-*/for-loop-*/extract-part/"
                                               "executor_output.json"))]
    # whole batches of 32: an image meets the same batch-mates whatever the shard count
    run3 = [part for part in parts if part["num_shards"] == 3]
    assert sorted((p["start"], p["stop"]) for p in run3) == [(0, 32), (32, 96), (96, 120)]
    assert all(p["torch_version"] and p["filter_map_shape"] == [1280, 7, 7] for p in run3)


@pytest.mark.slow
@pytest.mark.data
def test_train_branch_runs_only_when_asked_and_its_model_reaches_out(runs) -> None:
    """``train=True`` takes the ``dsl.If`` branch: the train task's Model artifact is copied to
    OUT/model and its held-out scores reach metrics.json; the 3-shard run (``train`` false)
    took the ``dsl.Else`` branch and has neither."""
    from goggles.training import load_model

    assert not (runs["out3"] / "model").exists()
    assert "end_model" not in json.loads((runs["out3"] / "metrics.json").read_text())
    end_model = runs["metrics4"]["end_model"]
    assert end_model == json.loads((runs["out4"] / "metrics.json").read_text())["end_model"]
    assert end_model["n_images"] == 120 and end_model["head"] == "linear"
    assert end_model["supervised_accuracy"] >= 0.9
    assert end_model["accuracy"] >= 0.9 and end_model["hard_label_accuracy"] >= 0.9
    model = load_model(str(runs["out4"]))
    assert model.classes == ["cluster_0", "cluster_1"]
    assert [n["backbone"] for n in model.networks] == [BACKBONE]
    meta = json.loads((runs["out4"] / "model" / "model.json").read_text())
    assert meta["evaluation"] == end_model
    train = _executor_output(runs["root"], "train")["artifacts"]
    assert train["model"]["artifacts"][0]["metadata"]["format"] == "goggles-end-model"
    ui = train["scores"]["artifacts"][0]["metadata"]
    assert ui["end_model_accuracy"] == pytest.approx(end_model["accuracy"], abs=1e-6)


@pytest.mark.data
def test_impossible_shard_count_fails_in_the_plan_before_extraction(tmp_path: Path) -> None:
    source = cub_task(tmp_path, "001", limit=3)
    root = tmp_path / "root"
    params = RunParameters(source_uri=str(source), output_uri=str(tmp_path / "out"),
                           num_classes=2, num_shards=5, backbone=BACKBONE, follow_symlinks=True)
    with pytest.raises(PipelineRunError, match="plan-shards") as raised:
        run_pipeline(params, pipeline_root=str(root))
    assert str(root) in str(raised.value)
    assert not list(root.glob("goggles-*/extract")), "extract ran although the plan failed"
    assert not (tmp_path / "out").exists()


def test_docker_runner_says_what_is_missing(tmp_path: Path) -> None:
    """Without the Docker SDK, a daemon or the project image, the error names what to do."""
    if _docker_images_present():
        pytest.skip("the project images are built here; nothing is missing")
    source = tmp_path / "images"
    source.mkdir()
    Image.new("RGB", (8, 8)).save(source / "a.png")
    params = RunParameters(source_uri=str(source), output_uri=str(tmp_path / "out"),
                           num_classes=2)
    with pytest.raises(PipelineRunError,
                       match=r"goggles\[docker\]|Docker daemon|not found in the local Docker"):
        run_pipeline(params, runner="docker")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.data
def test_a_grown_source_is_never_answered_from_the_cache(tmp_path: Path) -> None:
    """kfp caches a task by its inputs. With the uncached listing's digest as an input of
    ingest, a rerun over a source that gained images ingests (and labels) them all, and a
    rerun over an unchanged source reuses every cached task."""
    source = cub_task(tmp_path, "001", "014", limit=5)
    root = tmp_path / "root"
    common = {"source_uri": str(source), "num_classes": 2, "seed": SEED, "backbone": BACKBONE,
              "follow_symlinks": True, "descriptor_backbone": "none"}

    def run(name: str) -> dict:
        return run_pipeline(RunParameters(output_uri=str(tmp_path / name), **common),
                            pipeline_root=str(root), enable_caching=True)

    def executed(task: str) -> int:
        return len(list(root.glob(f"goggles-*/{task}/executor_output.json")))

    def extracted() -> int:  # extract parts (one per run here: one shard)
        return len(list(root.glob("goggles-*/for-loop-*/extract-part/executor_output.json")))

    assert run("first")["n_images"] == 10
    for folder in source.iterdir():  # two more images of each species
        species = CUB_DEV / folder.name
        for image in sorted(species.iterdir())[5:7]:
            (folder / image.name).symlink_to(image)
    grown = run("grown")
    assert grown["n_images"] == 14, "the grown source was answered from the cache"
    assert pq.read_table(tmp_path / "grown" / "labels.parquet").num_rows == 14
    # ingest: one part here, then the manifest's join
    assert (executed("list-source"), executed("join-manifest"), extracted()) == (2, 2, 2)
    again = run("again")
    assert again["n_images"] == 14
    assert (executed("list-source"), executed("join-manifest"), extracted()) == (3, 2, 2)
    assert (tmp_path / "again" / "labels.parquet").read_bytes() == \
        (tmp_path / "grown" / "labels.parquet").read_bytes()


@pytest.mark.slow
@pytest.mark.data
def test_labels_are_byte_identical_with_a_cold_and_a_warm_feature_cache(runs,
                                                                        tmp_path: Path) -> None:
    """Through the local runner (kfp's cache off, so extract runs each time): a cold feature
    cache computes every image, a warm one none, and both give the labels of the run without a
    cache, byte for byte; metrics.json and the Kubeflow UI metrics count them."""
    cache = tmp_path / "feature-cache"
    common = {"source_uri": str(runs["source"]), "num_classes": 2, "seed": SEED,
              "backbone": BACKBONE, "follow_symlinks": True, "num_shards": 4,
              "feature_cache_uri": str(cache)}
    root = tmp_path / "root"
    cold = run_pipeline(RunParameters(output_uri=str(tmp_path / "cold"), **common),
                        pipeline_root=str(root), keep_pipeline_root=True)
    warm = run_pipeline(RunParameters(output_uri=str(tmp_path / "warm"), **common))
    assert (cold["features_computed"], cold["features_reused"]) == (120, 0)
    assert (warm["features_computed"], warm["features_reused"]) == (0, 120)
    reference = (runs["out4"] / "labels.parquet").read_bytes()
    assert (tmp_path / "cold" / "labels.parquet").read_bytes() == reference
    assert (tmp_path / "warm" / "labels.parquet").read_bytes() == reference
    ui = _executor_output(root, "evaluate")["artifacts"]["metrics"]["artifacts"][0]["metadata"]
    assert (ui["features_computed"], ui["features_reused"]) == (120, 0)
    without = json.loads((runs["out4"] / "metrics.json").read_text())
    assert (without["features_computed"], without["features_reused"]) == (120, 0)


@pytest.mark.slow
def test_a_same_size_same_mtime_rewrite_is_not_answered_from_the_cache(tmp_path: Path) -> None:
    """kfp's cache keys ingest by the listing task's digest: a file rewritten with another picture
    of the same size and its mtime set back (``cp -p``, ``rsync -t``) has a new ctime, so the
    digest moves and the new bytes are ingested and labeled."""
    import hashlib

    from tests.unit.test_resume import _bmp, bmp_source, rewrite_keeping_size_and_mtime

    source = bmp_source(tmp_path / "in", 6)
    root = tmp_path / "root"
    common = {"source_uri": str(source), "num_classes": 2, "seed": SEED, "backbone": BACKBONE,
              "descriptor_backbone": "none", "method": "kmeans", "top_k": 2}

    def run(name: str) -> dict[str, str]:
        run_pipeline(RunParameters(output_uri=str(tmp_path / name), **common),
                     pipeline_root=str(root), enable_caching=True)
        rows = pq.read_table(tmp_path / name / "manifest.parquet").to_pylist()
        return {row["uri"]: row["sha256"] for row in rows}

    def executed(task: str) -> int:
        return len(list(root.glob(f"goggles-*/{task}/executor_output.json")))

    run("first")
    victim = source / "red" / "0.bmp"
    rewrite_keeping_size_and_mtime(victim, _bmp(7, (0, 170, 0)))
    hashes = run("rewritten")
    assert executed("join-manifest") == 2, "the rewritten source was answered from the cache"
    assert hashes[str(victim)] == hashlib.sha256(victim.read_bytes()).hexdigest()
    run("again")  # nothing changed since: every task but the listing from the cache
    assert (executed("list-source"), executed("join-manifest")) == (3, 2)


def _tasks_of(pid: int) -> list[int]:
    """Pids of the processes started for the local run ``pid`` (their environment names it)."""
    import os

    from goggles import TASK_PARENT_ENV

    mark = f"{TASK_PARENT_ENV}={pid}:".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as handle:
                environ = handle.read().split(b"\0")
            with open(f"/proc/{entry}/stat", "rb") as handle:
                state = handle.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if any(v.startswith(mark) for v in environ) and int(entry) != pid and state != b"Z":
            found.append(int(entry))
    return found


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


@pytest.mark.slow
def test_a_sigkilled_local_run_leaves_no_task_and_the_next_run_removes_its_scratch(
        tmp_path: Path) -> None:
    """kfp's local runner starts each task as a plain subprocess: a SIGKILL of ``goggles run``
    must not leave the task computing, and the scratch folder it could not remove goes when the
    next run starts."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.unit.test_resume import bmp_source

    source = bmp_source(tmp_path / "in", 6)
    scratch_parent = tmp_path / "tmp"
    scratch_parent.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch_parent)}
    argv = [sys.executable, "-m", "goggles.cli", "run", str(source), "--num-classes", "2",
            "--output", str(tmp_path / "out"), "--backbone", BACKBONE, "--method", "kmeans",
            "--descriptor-backbone", "none", "--top-k", "2"]
    with open(tmp_path / "first.log", "wb") as log:
        run = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        extracting: list[int] = []
        while not extracting and time.monotonic() < deadline and run.poll() is None:
            extracting = [p for p in _tasks_of(run.pid) if "extract_part" in _cmdline(p)]
            time.sleep(0.2)
        assert extracting, (tmp_path / "first.log").read_text()[-3000:]
        os.kill(run.pid, signal.SIGKILL)
        run.wait(timeout=30)
        deadline = time.monotonic() + 20
        while _tasks_of(run.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _tasks_of(run.pid) == [], [_cmdline(p)[:300] for p in _tasks_of(run.pid)]
    finally:
        for pid in _tasks_of(run.pid):  # never leave one behind, whatever the outcome
            os.kill(pid, signal.SIGKILL)
    left = sorted(p.name for p in scratch_parent.iterdir() if p.name.startswith("goggles-kfp-"))
    assert len(left) == 1, left  # the killed run could not remove its own
    second = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert not [p for p in scratch_parent.iterdir() if p.name.startswith("goggles-kfp-")]
