"""`goggles compile / submit / schedule / upload`, at the kfp.Client seam and over HTTP.

The first tests replace ``kfp.Client`` by a recorder that keeps what the commands hand it (host,
package, arguments, experiment, cron). The later ones run the real ``kfp.Client`` against a
recording KFP API server on 127.0.0.1 (``tests.conftest.KfpServer``): the token and cookie on
every request, the caching of each task, the uploads and their version names as the server
receives them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import goggles
from goggles.cli import main
from goggles.kubeflow import cluster
from goggles.parameters import spec
from tests.conftest import KfpServer, RecordingClient

HOST = "http://kfp.example:8080"


@pytest.fixture
def client(kfp_client: type[RecordingClient]) -> type[RecordingClient]:
    return kfp_client


def _only_call(client: type[RecordingClient]) -> tuple[RecordingClient, list]:
    assert len(client.instances) == 1
    return client.instances[0], client.instances[0].calls


def test_submit_compiles_and_sends_typed_parameters(client, capsys) -> None:
    code = main(["submit", "--host", HOST, "--experiment", "birds", "--run-name", "nightly",
                 "source_uri=gs://bucket/birds", "num_classes=3", "num_shards=8",
                 "backbone=mobilenet_v2"])
    assert code == 0
    instance, calls = _only_call(client)
    assert instance.host == HOST
    assert [kind for kind, _ in calls] == ["run"]
    call = calls[0][1]
    assert call["arguments"] == {"source_uri": "gs://bucket/birds", "num_classes": 3,
                                 "num_shards": 8, "backbone": "mobilenet_v2"}
    assert isinstance(call["arguments"]["num_classes"], int)
    assert call["experiment_name"] == "birds" and call["run_name"] == "nightly"
    spec = call["package"]["spec"]
    assert spec["pipelineInfo"]["name"] == "goggles"
    assert "comp-affinity-shard" in spec["components"]
    assert not Path(call["package"]["path"]).exists(), "the temporary package is left behind"
    out = capsys.readouterr().out
    assert "run-123" in out and f"{HOST}/#/runs/details/run-123" in out


def test_submit_sends_a_given_package_unchanged(client, tmp_path: Path) -> None:
    package = tmp_path / "pinned.yaml"
    assert main(["compile", "--output", str(package)]) == 0
    before = package.read_text()
    assert main(["submit", "--host", HOST, "--package", str(package),
                 "source_uri=s3://b/x"]) == 0
    _, calls = _only_call(client)
    call = calls[0][1]
    assert call["package"]["path"] == str(package)
    assert call["experiment_name"] == "goggles"  # the default experiment
    assert call["arguments"] == {"source_uri": "s3://b/x"}
    assert package.read_text() == before


def test_schedule_creates_a_recurring_run_on_a_six_field_cron(client, capsys) -> None:
    code = main(["schedule", "--host", HOST, "--cron", "0 0 3 * * *", "--experiment", "daily",
                 "--job-name", "birds-nightly", "source_uri=gs://bucket/new", "seed=7"])
    assert code == 0
    _, calls = _only_call(client)
    assert [kind for kind, _ in calls] == ["experiment", "recurring"]
    assert calls[0][1] == {"name": "daily"}
    recurring = calls[1][1]
    assert recurring["experiment_id"] == "exp-daily"
    assert recurring["job_name"] == "birds-nightly"
    assert recurring["cron_expression"] == "0 0 3 * * *"
    assert recurring["params"] == {"source_uri": "gs://bucket/new", "seed": 7}
    assert recurring["max_concurrency"] == 1 and recurring["no_catchup"] is True
    assert recurring["package"]["spec"]["pipelineInfo"]["name"] == "goggles"
    assert "rr-456" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["schedule", "--host", HOST, "--cron", "0 3 * * *", "source_uri=gs://b/i"],
     "six, seconds first"),
    (["submit", "--host", HOST, "source_uri=gs://b/i", "num_clases=3"],
     "unknown pipeline parameter 'num_clases'"),
    (["submit", "--host", HOST, "source_uri=gs://b/i", "num_classes=three"],
     "num_classes='three': expected a number integer"),
    (["submit", "--host", HOST, "num_classes=3"], "source_uri is required"),
    (["submit", "--host", HOST, "source_uri=gs://b/i", "num_classes=1"],
     "num_classes must be at least 2"),
    (["submit", "--host", HOST, "source_uri=gs://b/i", "backbone=resnet"],
     "unknown backbone 'resnet'"),
    (["submit", "--host", HOST, "source_uri"], "is not PARAM=VALUE"),
])
def test_bad_parameters_never_reach_the_server(client, capsys, argv, message) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert all(not instance.calls for instance in client.instances)


def test_package_parameters_read_the_compiled_definitions(tmp_path: Path) -> None:
    package = cluster.compile_package(str(tmp_path / "p.yaml"))
    parameters = cluster.package_parameters(package)
    assert parameters["num_shards"] == {"type": "NUMBER_INTEGER", "default": 0}
    assert parameters["backbone"] == {"type": "STRING", "default": "vgg16"}
    assert cluster.check_cron("0  0 3 * * *") == "0 0 3 * * *"


def test_profile_and_service_account_reach_the_cluster(client) -> None:
    assert main(["submit", "--host", HOST, "--profile", "prod", "--service-account",
                 "goggles-runner", "source_uri=gs://bucket/birds"]) == 0
    assert main(["schedule", "--host", HOST, "--profile", "dev", "--service-account",
                 "goggles-runner", "--cron", "0 0 3 * * *", "source_uri=gs://b/i"]) == 0
    run = client.instances[0].calls[0][1]
    recurring = client.instances[1].calls[-1][1]
    assert run["service_account"] == "goggles-runner"
    assert recurring["service_account"] == "goggles-runner"


def test_compile_with_a_profile_mounts_what_the_overlay_provides(tmp_path: Path) -> None:
    default = Path(cluster.compile_package(str(tmp_path / "default.yaml"))).read_text()
    prod = Path(cluster.compile_package(str(tmp_path / "prod.yaml"), "prod")).read_text()
    assert "goggles-bucket-credentials" in prod
    assert "goggles-bucket-credentials" not in default


def test_the_apply_pipeline_compiles_and_schedules_with_its_own_checks(client, tmp_path: Path,
                                                                       capsys) -> None:
    package = tmp_path / "apply.yaml"
    assert main(["compile", "--pipeline", "apply", "--output", str(package)]) == 0
    parameters = cluster.package_parameters(str(package))
    assert set(parameters) == {"model_uri", "source_uri", "labeler", "device",
                               "follow_symlinks"}
    assert main(["schedule", "--host", HOST, "--cron", "0 0 4 * * *", "--package", str(package),
                 "model_uri=gs://bucket/run", "source_uri=gs://bucket/incoming"]) == 0
    _, calls = _only_call(client)
    kinds = [kind for kind, _ in calls]
    recurring = calls[kinds.index("recurring")][1]
    assert recurring["params"] == {"model_uri": "gs://bucket/run",
                                   "source_uri": "gs://bucket/incoming"}
    spec = recurring["package"]["spec"]
    assert spec["pipelineInfo"]["name"] == "goggles-apply"
    assert {"comp-list-source", "comp-ingest-part", "comp-join-manifest",
            "comp-apply-model"} <= set(spec["components"])
    tasks = spec["root"]["dag"]["tasks"]
    # a grown bucket or a retrained model is never answered from the cache
    assert tasks["list-source"]["cachingOptions"].get("enableCache") is not True
    assert tasks["apply-model"]["cachingOptions"].get("enableCache") is not True
    assert spec["root"]["inputDefinitions"]["parameters"]["model_uri"]["description"]
    capsys.readouterr()
    for argv, message in ((["source_uri=gs://b/new"], "model_uri is required"),
                          (["model_uri=ftp://h/run", "source_uri=gs://b/new"], "model_uri"),
                          (["model_uri=gs://b/run", "source_uri=gs://b/new", "labeler=magic"],
                           "choose one of auto, end-model, affinity")):
        assert main(["submit", "--host", HOST, "--package", str(package), *argv]) == 2
        assert message in capsys.readouterr().err


# -- the same commands over HTTP, against a recording KFP API on 127.0.0.1 ------------------------

API = "/apis/v2beta1"


def _tasks(pipeline_spec: dict) -> dict[str, dict]:
    """Every task of a pipeline spec, the loops' inner tasks too."""
    tasks = dict(pipeline_spec["root"]["dag"]["tasks"])
    for component in pipeline_spec["components"].values():
        tasks.update(component.get("dag", {}).get("tasks", {}))
    return tasks


def test_submit_over_http_signs_every_request_and_no_cache_turns_caching_off(
        kfp_server: KfpServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KF_PIPELINES_TOKEN", raising=False)
    assert main(["submit", "--host", kfp_server.host, "--existing-token", "t0ken",
                 "--cookies", "authservice_session=abc", "--no-cache", "--experiment", "birds",
                 "source_uri=gs://bucket/birds", "num_classes=3"]) == 0
    assert kfp_server.requests, "nothing reached the server"
    for request in kfp_server.requests:
        assert request.headers.get("authorization") == "Bearer t0ken", request.path
        assert "authservice_session=abc" in request.headers.get("cookie", ""), request.path
    (run,) = kfp_server.calls("POST", f"{API}/runs")
    body = run.json()
    assert body["experiment_id"] == "exp-birds"
    assert body["runtime_config"]["parameters"] == {"source_uri": "gs://bucket/birds",
                                                    "num_classes": 3}
    caching = {name: task.get("cachingOptions", {}).get("enableCache", False)
               for name, task in _tasks(body["pipeline_spec"]).items()
               if "componentRef" in task and "parameterIterator" not in task}
    assert caching and not any(caching.values()), caching
    assert "affinity-shard" in caching  # inside the ParallelFor, which kfp.Client misses


def test_submit_over_http_keeps_the_packages_caching_without_no_cache(
        kfp_server: KfpServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KF_PIPELINES_TOKEN", "from-env")
    assert main(["submit", "--host", kfp_server.host, "source_uri=gs://bucket/birds"]) == 0
    assert {r.headers.get("authorization") for r in kfp_server.requests} == {"Bearer from-env"}
    (run,) = kfp_server.calls("POST", f"{API}/runs")
    tasks = _tasks(run.json()["pipeline_spec"])
    assert tasks["extract-part"]["cachingOptions"]["enableCache"] is True


def test_schedule_over_http_with_no_cache_and_images_from_a_mirror(
        kfp_server: KfpServer) -> None:
    assert main(["schedule", "--host", kfp_server.host, "--cron", "0 0 3 * * *", "--no-cache",
                 "--existing-token", "t0ken", "--image-repository", "mirror.example/gg",
                 "--image-tag", "9.9", "--job-name", "nightly",
                 "source_uri=gs://bucket/birds"]) == 0
    (recurring,) = kfp_server.calls("POST", f"{API}/recurringruns")
    body = recurring.json()
    assert body["display_name"] == "nightly"
    assert body["trigger"]["cron_schedule"]["cron"] == "0 0 3 * * *"
    assert body["no_catchup"] is True and int(body["max_concurrency"]) == 1
    spec = body["pipeline_spec"]
    assert not any(task.get("cachingOptions", {}).get("enableCache", False)
                   for task in _tasks(spec).values())
    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    assert images == {"mirror.example/gg:9.9", "mirror.example/gg:9.9-gpu"}
    assert all(r.headers.get("authorization") == "Bearer t0ken" for r in kfp_server.requests)


def test_upload_creates_the_pipeline_then_adds_versions_and_never_replaces_one(
        kfp_server: KfpServer, tmp_path: Path, capsys) -> None:
    package = tmp_path / "p.yaml"
    assert main(["compile", "--output", str(package)]) == 0
    upload = ["upload", "--host", kfp_server.host, "--existing-token", "t0ken", "--package",
              str(package)]
    assert main([*upload, "--version", "v1"]) == 0
    (created,) = kfp_server.calls("POST", f"{API}/pipelines/upload")
    assert created.query["name"] == ["goggles"]
    assert created.package()["pipelineInfo"]["name"] == "goggles"
    (version,) = kfp_server.calls("POST", f"{API}/pipelines/upload_version")
    assert version.query["name"] == ["v1"] and version.query["pipelineid"] == ["pl-1"]
    assert "version: pv-pl-1-2" in capsys.readouterr().out

    assert main([*upload, "--version", "v1"]) == 0  # the same version: kept, not replaced
    assert "already uploaded" in capsys.readouterr().out
    assert len(kfp_server.calls("POST", f"{API}/pipelines/upload_version")) == 1
    assert main(upload) == 0  # the default name: version and digest of the package
    versions = kfp_server.calls("POST", f"{API}/pipelines/upload_version")
    assert len(versions) == 2 and len(kfp_server.calls("POST", f"{API}/pipelines/upload")) == 1
    assert versions[1].query["name"] == [cluster.package_version(str(package))]
    assert versions[1].query["name"][0].startswith(goggles.__version__ + "-")
    assert all(r.headers.get("authorization") == "Bearer t0ken" for r in kfp_server.requests)


def test_the_uploaded_package_carries_parameter_descriptions(kfp_server: KfpServer) -> None:
    assert main(["upload", "--host", kfp_server.host, "--version", "v1"]) == 0
    (version,) = kfp_server.calls("POST", f"{API}/pipelines/upload_version")
    parameters = version.package()["root"]["inputDefinitions"]["parameters"]
    assert parameters["num_shards"]["description"] == spec("num_shards").help


def test_no_host_names_the_variable(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.delenv("KF_PIPELINES_ENDPOINT", raising=False)
    assert main(["submit", "source_uri=gs://bucket/birds"]) == 2
    assert "KF_PIPELINES_ENDPOINT" in capsys.readouterr().err


def test_the_host_may_come_from_the_environment(kfp_server: KfpServer, capsys,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KF_PIPELINES_ENDPOINT", kfp_server.host)
    assert main(["submit", "source_uri=gs://bucket/birds"]) == 0
    assert kfp_server.calls("POST", f"{API}/runs")
    assert f"see: {kfp_server.host}/#/runs/details/run-123" in capsys.readouterr().out


def test_cluster_settings_with_a_ready_package_are_refused(kfp_server: KfpServer, tmp_path: Path,
                                                           capsys) -> None:
    package = tmp_path / "p.yaml"
    assert main(["compile", "--output", str(package)]) == 0
    for command in (["submit", "source_uri=gs://b/i"], ["upload"]):
        assert main([*command, "--host", kfp_server.host, "--package", str(package),
                     "--image-tag", "9.9"]) == 2
        assert "compiled into the package" in capsys.readouterr().err
    assert not kfp_server.requests
