"""`goggles compile / submit / schedule` at the kfp.Client seam.

No KFP server can run here, so ``kfp.Client`` is replaced by a recorder that keeps what the
commands hand it (host, package, arguments, experiment, cron) and reads the package while it
still exists. Everything up to that call — compiling, typing and checking the parameters — is
the real code.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from goggles.cli import main
from goggles.kubeflow import cluster
from tests.conftest import RecordingClient

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
    assert parameters["num_shards"] == {"type": "NUMBER_INTEGER", "default": 1}
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
    assert {"comp-ingest", "comp-apply-model"} <= set(spec["components"])
    capsys.readouterr()
    for argv, message in ((["source_uri=gs://b/new"], "model_uri is required"),
                          (["model_uri=ftp://h/run", "source_uri=gs://b/new"], "model_uri"),
                          (["model_uri=gs://b/run", "source_uri=gs://b/new", "labeler=magic"],
                           "choose one of auto, end-model, affinity")):
        assert main(["submit", "--host", HOST, "--package", str(package), *argv]) == 2
        assert message in capsys.readouterr().err
