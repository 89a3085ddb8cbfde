"""k8s/: every overlay renders with ``kubectl kustomize`` and validates offline against the
Kubernetes 1.30 schemas (``kubernetes-validate --strict``); the pipeline's profiles refer to the
Secret, ConfigMap, user and GPU pool that the overlay of the same name provides; the Role grants
no Secret or ConfigMap it does not name and no write on pods.

No cluster runs here: these check the rendered manifests, not what an API server admits."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from goggles.cli import main
from goggles.kubeflow import pipeline as kubeflow_pipeline
from tests.conftest import ROOT, RecordingClient

K8S = ROOT / "k8s"
OVERLAYS = sorted(p.parent.name for p in (K8S / "overlays").glob("*/kustomization.yaml"))
KUBERNETES_VERSION = "1.30.0"


def _kustomize(folder: Path) -> str:
    """``kubectl kustomize folder`` (or a standalone ``kustomize build``)."""
    if shutil.which("kubectl"):
        command = ["kubectl", "kustomize", str(folder)]
    elif shutil.which("kustomize"):
        command = ["kustomize", "build", str(folder)]
    else:
        pytest.skip("neither kubectl nor kustomize is installed (apt-get install kubectl)")
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stderr}"
    return done.stdout


def _validate(rendered: Path) -> subprocess.CompletedProcess[str]:
    pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
    command = [sys.executable, "-m", "kubernetes_validate", "--strict",
               "--kubernetes-version", KUBERNETES_VERSION, str(rendered)]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def _render(overlay: str) -> dict[tuple[str, str], dict]:
    documents = yaml.safe_load_all(_kustomize(K8S / "overlays" / overlay))
    return {(d["kind"], d["metadata"]["name"]): d for d in documents if d}


SECRET_LIKE = {"secrets", "configmaps"}
POD_WRITES = {"patch", "update", "create", "delete", "deletecollection", "*"}


def role_problems(documents: list[dict]) -> list[str]:
    """What is wrong with the Roles and ClusterRoles among ``documents``: a rule on Secrets or
    ConfigMaps without ``resourceNames`` (every one in the namespace), any write on pods, and
    wildcards (which would grant both)."""
    problems = []
    for document in documents:
        if document.get("kind") not in {"Role", "ClusterRole"}:
            continue
        name = f"{document['kind']}/{document['metadata']['name']}"
        for index, rule in enumerate(document.get("rules", [])):
            where = f"{name} rule {index}"
            resources = set(rule.get("resources", []))
            verbs = set(rule.get("verbs", []))
            if "*" in resources or "*" in rule.get("apiGroups", []) or "*" in verbs:
                problems.append(f"{where}: wildcard")
            if resources & SECRET_LIKE and not rule.get("resourceNames"):
                problems.append(f"{where}: {sorted(resources & SECRET_LIKE)} without "
                                "resourceNames")
            if "" in rule.get("apiGroups", []) and resources & {"pods", "*"} \
                    and verbs & POD_WRITES:
                problems.append(f"{where}: {sorted(verbs & POD_WRITES)} on pods")
    return problems


def egress_peers(policy: dict, port: int, protocol: str = "TCP") -> list[dict]:
    """The destinations a NetworkPolicy lets its pods reach on ``port``: ``[{}]`` for anywhere."""
    peers = []
    for rule in policy["spec"].get("egress", []):
        ports = rule.get("ports") or [{}]  # a rule without ports allows every port
        if any(p.get("port", port) == port and p.get("protocol", "TCP") == protocol
               for p in ports):
            peers += rule.get("to") or [{}]
    return peers


def _namespace_of(peer: dict) -> str | None:
    return peer.get("namespaceSelector", {}).get("matchLabels", {}).get(
        "kubernetes.io/metadata.name")


def egress_problems(policy: dict) -> list[str]:
    """What makes a NetworkPolicy fail as the task pods' egress fence: not Egress-only, a rule
    open to every port, no DNS to the cluster's resolver."""
    problems = []
    if policy["spec"].get("policyTypes") != ["Egress"]:
        problems.append(f"policyTypes {policy['spec'].get('policyTypes')}, not [Egress]")
    for index, rule in enumerate(policy["spec"].get("egress", [])):
        if not rule.get("ports"):
            problems.append(f"egress rule {index} allows every port")
    for protocol in ("UDP", "TCP"):
        if not any(_namespace_of(peer) == "kube-system"
                   and peer.get("podSelector", {}).get("matchLabels") == {"k8s-app": "kube-dns"}
                   for peer in egress_peers(policy, 53, protocol)):
            problems.append(f"no DNS ({protocol} 53 to kube-dns)")
    return problems


def test_there_are_dev_and_prod_overlays() -> None:
    assert {"dev", "prod"} <= set(OVERLAYS)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_and_validates_against_kubernetes_1_30(overlay: str,
                                                                tmp_path: Path) -> None:
    rendered = tmp_path / f"{overlay}.yaml"
    rendered.write_text(_kustomize(K8S / "overlays" / overlay))
    documents = [d for d in yaml.safe_load_all(rendered.read_text()) if d]
    assert len(documents) >= 6
    # every object in one namespace, and the overlay's Namespace is that one
    namespaces = {d["metadata"].get("namespace") for d in documents if d["kind"] != "Namespace"}
    assert len(namespaces) == 1 and None not in namespaces, namespaces
    assert [d["metadata"]["name"] for d in documents if d["kind"] == "Namespace"] == \
        list(namespaces)
    done = _validate(rendered)
    assert done.returncode == 0, done.stdout + done.stderr
    passed = re.findall(r"passed for resource", done.stdout + done.stderr)
    assert len(passed) == len(documents), done.stdout + done.stderr


def test_the_validator_rejects_what_kubernetes_would(tmp_path: Path) -> None:
    """The check above can fail: an unknown field and a wrong type are both refused."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump_all([
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {"name": "goggles-runner", "annotation": {"a": "b"}}},
        {"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "q"},
         "spec": {"hard": ["cpu"]}}]))
    done = _validate(bad)
    assert done.returncode != 0
    assert done.stdout.count("did not validate") + done.stderr.count("did not validate") == 2


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_namespace_enforces_pod_security_restricted(overlay: str) -> None:
    namespaces = [d for (kind, _), d in _render(overlay).items() if kind == "Namespace"]
    assert len(namespaces) == 1
    # only these labels: the namespace is a Kubeflow profile's, not goggles' to label otherwise
    assert namespaces[0]["metadata"]["labels"] == {
        f"pod-security.kubernetes.io/{mode}": "restricted"
        for mode in ("enforce", "audit", "warn")}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_role_names_every_secret_and_config_map_and_writes_no_pod(overlay: str) -> None:
    resources = _render(overlay)
    role = resources[("Role", "goggles-runner")]
    assert role_problems(list(resources.values())) == []
    named = {resource: set(rule.get("resourceNames", ()))
             for rule in role["rules"] for resource in rule["resources"]}
    # what KFP's launcher and Argo's executor read by name; goggles' own Secret and ConfigMap
    # reach the pods through the pod spec (the kubelet), so the Role needs neither
    assert named["configmaps"] == {"kfp-launcher"}
    assert named["secrets"] == {"mlpipeline-minio-artifact"}
    assert "pods" not in named and "pods/log" not in named
    assert named["workflowtaskresults"] == set()
    binding = resources[("RoleBinding", "goggles-runner")]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": "goggles-runner"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "goggles-runner",
                                    "namespace": role["metadata"]["namespace"]}]


def test_the_role_check_reports_what_it_should() -> None:
    """The check above can fail: the Role k8s/base had before, and wildcards, are reported."""
    broad = {"kind": "Role", "metadata": {"name": "broad"}, "rules": [
        {"apiGroups": [""], "resources": ["configmaps", "secrets"], "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "watch", "patch"]},
        {"apiGroups": ["argoproj.io"], "resources": ["workflowtaskresults"],
         "verbs": ["create", "patch"]}]}
    wild = {"kind": "ClusterRole", "metadata": {"name": "wild"}, "rules": [
        {"apiGroups": [""], "resources": ["*"], "verbs": ["*"]}]}
    named = {"kind": "Role", "metadata": {"name": "named"}, "rules": [
        {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["a"], "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]}
    assert role_problems([broad, wild, named]) == [
        "Role/broad rule 0: ['configmaps', 'secrets'] without resourceNames",
        "Role/broad rule 1: ['patch'] on pods",
        "ClusterRole/wild rule 0: wildcard",
        "ClusterRole/wild rule 0: ['*'] on pods"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_task_pods_may_reach_dns_kfp_the_api_and_the_object_store_only(overlay: str,
                                                                        compiled) -> None:
    resources = _render(overlay)
    policies = [d for (kind, _), d in resources.items() if kind == "NetworkPolicy"]
    assert len(policies) == 1, policies
    policy = policies[0]
    assert egress_problems(policy) == []
    assert "ingress" not in policy["spec"]
    # it selects exactly the pods the profile labels: every task pod of this overlay's profile
    label = dict([kubeflow_pipeline.TASK_POD_LABEL])
    assert policy["spec"]["podSelector"] == {"matchLabels": label}
    for name, settings in compiled[overlay]["executors"].items():
        assert label.items() <= settings["podMetadata"]["labels"].items(), name
    # Kubeflow Pipelines: ML Metadata (8080) and the ml-pipeline API (8887), in kubeflow only
    for port in (8080, 8887):
        assert [_namespace_of(peer) for peer in egress_peers(policy, port)] == ["kubeflow"]
    # the API server (RBAC's reads and writes) on its usual ports
    assert egress_peers(policy, 6443) and egress_peers(policy, 443)
    # the object store: the endpoint the overlay's ConfigMap names, else HTTPS to the cloud
    endpoint = resources[("ConfigMap", kubeflow_pipeline.DEFAULTS_CONFIG_MAP)]["data"].get(
        "AWS_ENDPOINT_URL")
    anywhere = {port for port in (80, 443, 8080, 8887, 9000, 6443)
                if {} in egress_peers(policy, port)}
    if endpoint:
        host, _, port = endpoint.split("://")[1].partition(":")
        namespace = host.split(".")[1]
        assert namespace in {_namespace_of(peer) for peer in egress_peers(policy, int(port))}
        assert anywhere == set(), f"{overlay} keeps its store in-cluster, yet opens {anywhere}"
    else:
        assert anywhere == {443}, anywhere


def test_the_egress_check_reports_what_it_should() -> None:
    """The check above can fail: a policy that also fences ingress, opens every port of a
    destination and has no DNS is reported on each count."""
    loose = {"spec": {"policyTypes": ["Ingress", "Egress"], "egress": [
        {"to": [{"namespaceSelector": {"matchLabels": {
            "kubernetes.io/metadata.name": "kube-system"}}}]},
        {"ports": [{"protocol": "TCP", "port": 443}]}]}}
    assert egress_problems(loose) == ["policyTypes ['Ingress', 'Egress'], not [Egress]",
                                      "egress rule 0 allows every port",
                                      "no DNS (UDP 53 to kube-dns)",
                                      "no DNS (TCP 53 to kube-dns)"]
    assert egress_peers(loose, 443) == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}}},
        {}]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """The pipeline compiled with each overlay's profile: {profile: kubernetes executors}."""
    module = kubeflow_pipeline
    folder = tmp_path_factory.mktemp("profiles")
    result = {}
    for profile in ("default", *OVERLAYS):
        package = module.compile_pipeline(str(folder / f"{profile}.yaml"), profile)
        spec, *platform = yaml.safe_load_all(Path(package).read_text())
        executors = (platform[0]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
                     if platform else {})
        accelerators = {name: e["container"].get("resources", {}).get("accelerator")
                        for name, e in spec["deploymentSpec"]["executors"].items()}
        result[profile] = {"executors": executors, "accelerators": accelerators}
    return result


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_profile_refers_to_what_the_overlay_provides(overlay: str, compiled) -> None:
    module = kubeflow_pipeline
    resources = _render(overlay)
    executors = compiled[overlay]["executors"]
    secret = resources[("Secret", module.BUCKET_SECRET)]
    config_map = resources[("ConfigMap", module.DEFAULTS_CONFIG_MAP)]
    # every key the namespace sets reaches the tasks (an unmapped key would be ignored silently)
    assert set(secret.get("data", {})) <= set(module.BUCKET_SECRET_ENV)
    assert set(config_map["data"]) <= set(module.DEFAULTS_ENV), set(config_map["data"])
    # the plan reads the dev labels (it matches them to rows for the fit), evaluate the images
    bucket_tasks = {"exec-list-source", "exec-ingest-part", "exec-plan-shards",
                    "exec-extract-part", "exec-evaluate"}
    for name in bucket_tasks:
        settings = executors[name]
        assert [s["secretName"] for s in settings["secretAsEnv"]] == [module.BUCKET_SECRET]
        assert settings["secretAsVolume"][0]["mountPath"] == module.BUCKET_SECRET_MOUNT
        assert all(s["optional"] for s in settings["secretAsEnv"] + settings["secretAsVolume"])
        mapped = {k["configMapKey"] for k in settings["configMapAsEnv"][0]["keyToEnv"]}
        assert settings["configMapAsEnv"][0]["configMapName"] == module.DEFAULTS_CONFIG_MAP
        assert mapped == set(module.DEFAULTS_ENV)
    for name in set(executors) - bucket_tasks:
        assert "secretAsEnv" not in executors[name], f"{name} reads no bucket"
    # every task runs as the images' user, which is not root
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    users = re.findall(r"^USER (\d+):(\d+)$", dockerfile, re.MULTILINE)
    assert users == [(str(module.IMAGE_USER), str(module.IMAGE_USER))]
    assert set(executors) == {"exec-list-source", "exec-ingest-part", "exec-join-manifest",
                              "exec-plan-shards",
                              "exec-extract-part", "exec-gather-features",
                              "exec-affinity-shard", "exec-infer-fit", "exec-label-shard",
                              "exec-gather-labels", "exec-train", "exec-no-train",
                              "exec-evaluate"}
    for name, settings in executors.items():
        assert settings["securityContext"] == {"runAsUser": str(module.IMAGE_USER),
                                               "runAsGroup": str(module.IMAGE_USER),
                                               "runAsNonRoot": True}, name


def test_gpus_only_where_the_overlay_allows_them(compiled) -> None:
    quota = {overlay: int(_render(overlay)[("ResourceQuota", "goggles-quota")]["spec"]["hard"]
                          ["requests.nvidia.com/gpu"]) for overlay in OVERLAYS}
    assert quota["dev"] == 0 and quota["prod"] >= 1
    for overlay in OVERLAYS:
        extract = compiled[overlay]["executors"]["exec-extract-part"]
        accelerators = {k: v for k, v in compiled[overlay]["accelerators"].items() if v}
        if quota[overlay]:
            assert set(accelerators) == {"exec-extract-part"}
            assert accelerators["exec-extract-part"]["resourceType"] == "nvidia.com/gpu"
            assert accelerators["exec-extract-part"]["resourceCount"] == "1"
            assert extract["nodeSelector"]["labels"] == {"nvidia.com/gpu.present": "true"}
            assert extract["tolerations"][0]["key"] == "nvidia.com/gpu"
        else:
            assert not accelerators, f"{overlay} has no GPU quota but asks for {accelerators}"
            assert "nodeSelector" not in extract and "tolerations" not in extract


def test_the_default_profile_leaves_the_namespace_alone(compiled) -> None:
    """``python pipeline.py`` without --profile: no Kubernetes settings at all — extract asks
    for a GPU, but no node selector or toleration ties it to the GPU operator's labels."""
    assert compiled["default"]["executors"] == {}
    accelerators = {k: v for k, v in compiled["default"]["accelerators"].items() if v}
    assert set(accelerators) == {"exec-extract-part"}


def test_an_unknown_profile_names_the_choices() -> None:
    with pytest.raises(ValueError, match="unknown profile 'staging'; choose one of default"):
        kubeflow_pipeline.pipeline_for("staging")


def _service_accounts(client: type[RecordingClient]) -> list[str | None]:
    """The service account each recorded run or recurring run was started with."""
    return [call.get("service_account") for instance in client.instances
            for kind, call in instance.calls if kind in ("run", "recurring")]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_overlays_profile_runs_as_the_overlays_service_account(overlay: str, kfp_client,
                                                                    tmp_path: Path) -> None:
    """``--profile dev|prod`` without ``--service-account`` runs as the ServiceAccount the overlay
    creates and its Role binds, not as the namespace's default-editor; ``--service-account``
    still wins, and a package compiled beforehand runs as its profile's too."""
    resources = _render(overlay)
    account = kubeflow_pipeline.PROFILES[overlay]["service_account"]
    assert ("ServiceAccount", account) in resources
    assert resources[("RoleBinding", "goggles-runner")]["subjects"][0]["name"] == account
    package = tmp_path / f"{overlay}.yaml"
    assert main(["compile", "--profile", overlay, "--output", str(package)]) == 0
    source = "source_uri=gs://bucket/images"
    cron = ["--cron", "0 0 3 * * *"]
    for argv in (["submit", "--host", "http://kfp", "--profile", overlay, source],
                 ["schedule", "--host", "http://kfp", "--profile", overlay, *cron, source],
                 ["submit", "--host", "http://kfp", "--profile", overlay, "--package",
                  str(package), source],
                 ["submit", "--host", "http://kfp", "--profile", overlay,
                  "--service-account", "default-editor", source]):
        assert main(argv) == 0, argv
    assert _service_accounts(kfp_client) == [account, account, account, "default-editor"]


def test_the_default_profile_keeps_kfps_default_service_account(kfp_client) -> None:
    assert kubeflow_pipeline.PROFILES["default"]["service_account"] == ""
    assert main(["submit", "--host", "http://kfp", "source_uri=gs://bucket/images"]) == 0
    assert main(["schedule", "--host", "http://kfp", "--cron", "0 0 3 * * *",
                 "source_uri=gs://bucket/images"]) == 0
    assert _service_accounts(kfp_client) == [None, None]
