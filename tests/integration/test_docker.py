"""The cluster images (docker/): what they pin and how they are tagged, checked from the files;
then, marked ``docker``, the images built by docker/build.sh and the whole pipeline run in them
with kfp's DockerRunner on real birds, with no network and as a non-root user, giving the local
runner's labels.

The ``docker`` tests need a Docker engine. They rebuild the images incrementally (docker/build.sh,
cached layers: about a minute after a code change) when they exist already; a first build (about
6 GB of PyTorch wheels, 8 minutes on 2 cores) runs only with ``GOGGLES_DOCKER_BUILD=1`` (or after
``make images``). Each skip says which of these is missing.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from goggles.kubeflow.components.image import BASE_IMAGE, GPU_IMAGE, IMAGES
from goggles.kubeflow.runner import run_pipeline
from goggles.parameters import RunParameters
from tests.conftest import CUB_DEV, ROOT, cub_task

DOCKER = ROOT / "docker"
LOCAL_BASE_IMAGE = "goggles-base:bookworm"
IMAGE_USER = "10001:10001"


def _lock(path: Path) -> dict[str, tuple[str, list[str]]]:
    """``{canonical name: (version, [sha256, ...])}`` of a pip lock file with hashes."""
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    pins = {}
    for line in map(str.strip, text.splitlines()):
        if not line or line.startswith("#"):
            continue
        match = re.match(r"^([A-Za-z0-9_.\-]+)==(\S+)((?:\s+--hash=sha256:[0-9a-f]{64})+)$",
                         line)
        if not match:
            raise AssertionError(f"{path.name}: not a pinned, hashed line: {line!r}")
        hashes = re.findall(r"sha256:([0-9a-f]{64})", match.group(3))
        pins[canonicalize_name(match.group(1))] = (match.group(2), hashes)
    return pins


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_the_lock_pins_every_runtime_requirement_with_a_hash() -> None:
    """docker/lock.py's output still satisfies pyproject.toml (rerun it after changing either)."""
    project = _project()
    wanted = [*project["dependencies"], *project["optional-dependencies"]["gcs"],
              *project["optional-dependencies"]["s3"]]
    wanted += [line.split("#")[0].strip()
               for line in (DOCKER / "requirements.in").read_text().splitlines()
               if line.split("#")[0].strip()]
    pins = _lock(DOCKER / "requirements.lock")
    assert len(pins) > 50
    for requirement in map(Requirement, wanted):
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is not in docker/requirements.lock: run docker/lock.py"
        version = pins[name][0]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"docker/requirements.lock pins {name}=={version}, outside {requirement}: "
            "run docker/lock.py")
    assert pins["torch"][0] == "2.14.1" and pins["torchvision"][0] == "0.29.1"
    weights = _lock(DOCKER / "weights.lock")
    assert {f"{n}=={v}" for n, (v, _) in weights.items()} == {
        str(Requirement(r)).replace("_", "-") for r in project["optional-dependencies"]["weights"]}


def test_build_sh_tags_the_images_the_components_name() -> None:
    done = subprocess.run([str(DOCKER / "build.sh"), "--print-tags"], capture_output=True,
                          text=True, timeout=30, check=True)
    assert done.stdout.split() == [BASE_IMAGE, GPU_IMAGE]
    assert done.stdout.split() == list(IMAGES)


def test_the_dockerfile_pins_its_base_layers_deps_first_and_runs_as_non_root() -> None:
    text = (DOCKER / "Dockerfile").read_text()
    assert re.search(r"^ARG BASE_IMAGE=\S+@sha256:[0-9a-f]{64}$", text, re.MULTILINE)
    stages = re.findall(r"^FROM \S+ AS (\w+)$", text, re.MULTILINE)
    assert {"cpu", "gpu"} <= set(stages) and stages[-1] == "cpu"
    assert text.index("requirements.lock") < text.index("COPY goggles")
    assert "--require-hashes" in text
    assert re.findall(r"^USER (\S+)$", text, re.MULTILINE) == [IMAGE_USER]
    assert "GOGGLES_WEIGHTS_DIR=/opt/goggles/weights" in text


# -- the images, built and run ------------------------------------------------------------------

def _say(capsys: pytest.CaptureFixture[str], message: str) -> None:
    with capsys.disabled():
        print(f"\n[test_docker] {message}", flush=True)


@pytest.fixture(scope="module")
def docker_client():  # type: ignore[no-untyped-def]
    try:
        import docker
    except ImportError:
        pytest.skip("docker test skipped: the Docker SDK is not installed "
                    "(pip install 'goggles[docker]')")
    try:
        client = docker.from_env()
        client.ping()
    except Exception as error:  # noqa: BLE001 - any failure means no engine to test with
        pytest.skip(f"docker test skipped: no Docker engine answers ({error.__class__.__name__}); "
                    "start one (apt-get install docker.io; dockerd &) to build and run the images")
    yield client
    client.close()


@pytest.fixture(scope="module")
def built_images(docker_client) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """docker/build.sh for both targets (cached layers make a rebuild short); its seconds."""
    import docker

    present = []
    for image in IMAGES:
        try:
            docker_client.images.get(image)
            present.append(image)
        except docker.errors.ImageNotFound:
            pass
    if len(present) < len(IMAGES) and os.environ.get("GOGGLES_DOCKER_BUILD") != "1":
        pytest.skip("docker test skipped: the images are not built here and a first build "
                    "(about 6 GB of PyTorch wheels, 8+ min on 2 cores) does not fit a test "
                    "run; run `make images` first (GOGGLES_LOCAL_BASE=1 where no registry "
                    "answers), or set GOGGLES_DOCKER_BUILD=1")
    command = [str(DOCKER / "build.sh"), "--target", "all"]
    try:
        docker_client.images.get(LOCAL_BASE_IMAGE)
        local_base = True
    except docker.errors.ImageNotFound:
        local_base = os.environ.get("GOGGLES_LOCAL_BASE") == "1"
    if local_base:
        command.append("--local-base")  # no registry here: the base made by debootstrap
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=3600)
    seconds = time.perf_counter() - start
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout[-4000:]}\n" \
                                 f"{done.stderr[-4000:]}"
    sizes = {image: docker_client.images.get(image).attrs["Size"] for image in IMAGES}
    return {"build_seconds": seconds, **{f"size:{k}": v for k, v in sizes.items()}}


PROBE = """
import json, os, socket
from goggles.features.backbones import SPECS, resolve_weights
try:
    socket.create_connection(("pypi.org", 443), timeout=5)
    network = "reachable"
except OSError as error:
    network = type(error).__name__
print(json.dumps({"uid": os.getuid(), "gid": os.getgid(), "network": network,
                  "weights": {name: resolve_weights(name)[1] for name in SPECS}}))
"""


@pytest.mark.docker
@pytest.mark.integration
def test_images_run_offline_as_non_root_with_baked_weights(
        docker_client, built_images, capsys) -> None:  # type: ignore[no-untyped-def]
    for image in IMAGES:
        config = docker_client.images.get(image).attrs["Config"]
        assert config["User"] == IMAGE_USER, image
        output = docker_client.containers.run(image, ["python", "-c", PROBE],
                                              network_mode="none", remove=True)
        probe = json.loads(output.decode().strip().splitlines()[-1])
        assert probe["uid"] == 10001 and probe["gid"] == 10001, probe
        assert probe["network"] != "reachable", probe
        assert probe["weights"] == {name: f"/opt/goggles/weights/{name}.safetensors"
                                    for name in ("mobilenet_v2", "vgg16")}, probe
    sizes = ", ".join(f"{k[5:]} {v / 1e9:.2f} GB" for k, v in built_images.items()
                      if k.startswith("size:"))
    _say(capsys, f"docker/build.sh (incremental) took {built_images['build_seconds']:.0f} s; "
                 f"{sizes}")


@pytest.mark.docker
@pytest.mark.integration
@pytest.mark.data
def test_pipeline_in_containers_gives_the_local_runners_labels(
        docker_client, built_images, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys) -> None:  # type: ignore[no-untyped-def]
    from kfp.local import docker_task_handler

    source = cub_task(tmp_path, "001", "014", limit=8)
    assert any(Path(os.readlink(p)).is_relative_to(CUB_DEV) for p in source.rglob("*.jpg"))
    containers: list[dict] = []
    original = docker_task_handler.run_docker_container

    def recording(**kwargs):  # type: ignore[no-untyped-def]
        # the real call, with its arguments kept for the checks below
        containers.append(kwargs)
        return original(**kwargs)

    monkeypatch.setattr(docker_task_handler, "run_docker_container", recording)
    common = {"source_uri": str(source), "num_classes": 2, "backbone": "mobilenet_v2",
              "num_shards": 2, "seed": 3, "follow_symlinks": True}
    start = time.perf_counter()
    run_pipeline(RunParameters(output_uri=str(tmp_path / "docker"), **common), runner="docker",
                 pipeline_root=str(tmp_path / "root-docker"))
    docker_seconds = time.perf_counter() - start
    start = time.perf_counter()
    run_pipeline(RunParameters(output_uri=str(tmp_path / "local"), **common), runner="local",
                 pipeline_root=str(tmp_path / "root-local"))
    local_seconds = time.perf_counter() - start

    # every task ran in a container: networking off, non-root, the images
    tasks = {"list-source", "ingest", "plan-shards", "extract-part", "gather-features",
             "affinity-shard", "infer", "no-train", "evaluate"}
    assert len(containers) == len(tasks) + 2  # two extract parts, two affinity shards
    for call in containers:
        assert call["network_mode"] == "none"
        assert not call["user"].startswith("0:") and call["user"] != "0"
        assert call["image"] in IMAGES
        mounted = {m["Target"] for m in call["mounts"]}
        assert str(source) in mounted and str(CUB_DEV) in "".join(mounted)
    outputs = [p for p in (tmp_path / "root-docker").rglob("*") if p.is_file()]
    assert outputs and all(p.stat().st_uid != 0 for p in outputs), "a task wrote as root"

    docker_labels = pq.read_table(tmp_path / "docker" / "labels.parquet").sort_by("image_id")
    local_labels = pq.read_table(tmp_path / "local" / "labels.parquet").sort_by("image_id")
    assert docker_labels.num_rows == local_labels.num_rows == 16
    columns = ["image_id", "uri", "label", "label_name"]
    assert docker_labels.select(columns).equals(local_labels.select(columns))
    np.testing.assert_allclose(np.array(docker_labels["probs"].to_pylist()),
                               np.array(local_labels["probs"].to_pylist()), atol=1e-6)
    metrics = json.loads((tmp_path / "docker" / "metrics.json").read_text())
    assert metrics["runner"] == "docker" and metrics["n_images"] == 16
    assert metrics["accuracy"] >= 0.75
    _say(capsys, f"pipeline on 16 cub-dev images: docker runner {docker_seconds:.0f} s "
                 f"({len(containers)} containers, no network, user {containers[0]['user']}), "
                 f"local runner {local_seconds:.0f} s; labels identical, accuracy "
                 f"{metrics['accuracy']:.3f}")


def test_symlink_targets_are_mounted_once_loops_and_all(tmp_path: Path) -> None:
    """The docker runner mounts where a source's symlinks point (cub_task's layout)."""
    from goggles.kubeflow.runner import _symlink_targets

    data = tmp_path / "data"
    for species in ("a", "b"):
        (data / species).mkdir(parents=True)
        (data / species / "0.jpg").write_bytes(b"x")
    source = tmp_path / "source"
    (source / "a").mkdir(parents=True)
    (source / "a" / "0.jpg").symlink_to(data / "a" / "0.jpg")
    (source / "b").symlink_to(data / "b")
    (source / "a" / "loop").symlink_to(source)
    (source / "a" / "inside").symlink_to(source / "a" / "0.jpg")
    assert _symlink_targets(str(source)) == [str(data / "a"), str(data / "b")]
    (source / "all").symlink_to(data)
    assert _symlink_targets(str(source)) == [str(data)]


def test_links_through_a_linked_folder_are_mounted_where_they_point(tmp_path: Path) -> None:
    """A link whose text runs through another link (CI's ../shared may itself be one) resolves
    inside the container only if the real folder is mounted at the path the link names."""
    from goggles.kubeflow.runner import _symlink_aliases

    real = tmp_path / "real" / "cub"
    real.mkdir(parents=True)
    (real / "0.jpg").write_bytes(b"x")
    (tmp_path / "shared").symlink_to(tmp_path / "real")
    source = tmp_path / "source"
    source.mkdir()
    (source / "0.jpg").symlink_to(tmp_path / "shared" / "cub" / "0.jpg")
    assert _symlink_aliases(str(source)) == [(str(real), str(tmp_path / "shared" / "cub"))]


# -- a chosen backbone's weights baked in (make images BACKBONE=... WEIGHTS=...) ----------------

def _dockerfile_run(dockerfile: str, marker: str) -> str:
    """The shell command of the Dockerfile's ``RUN`` instruction that contains ``marker``, its
    continuation lines joined as Docker joins them."""
    joined = re.sub(r"\\\n", "", dockerfile)
    found = [line[len("RUN "):] for line in joined.splitlines()
             if line.startswith("RUN ") and marker in line]
    assert len(found) == 1, f"{len(found)} RUN instructions of the Dockerfile hold {marker!r}"
    return found[0]


def _make_images(tmp_path: Path, *variables: str) -> subprocess.CompletedProcess[str]:
    context = tmp_path / "context"
    return subprocess.run(["make", "-s", "images", *variables,
                           f"IMAGES_FLAGS=--save-context {context}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
@pytest.mark.integration
def test_make_images_bakes_a_chosen_backbone_that_pods_resolve_offline(tmp_path: Path) -> None:
    """``make images BACKBONE= WEIGHTS= WEIGHTS_SHA256=`` stages the checkpoint in the build
    context with the build arguments; the Dockerfile's own bake command (run here as the build
    runs it, its image paths moved under tmp_path) writes it where the runtime looks, and the
    runtime stage's own check, offline, resolves the backbone to that file. Docker itself is not
    needed: what is left to it is copying files and setting the environment."""
    import io
    import shutil
    import sys
    import tarfile
    from hashlib import sha256

    import torch
    from torchvision import models

    name = "torchvision:mobilenet_v3_small"
    checkpoint = tmp_path / "weights.pth"
    buffer = io.BytesIO()
    torch.save(models.mobilenet_v3_small(weights=None).state_dict(), buffer)
    checkpoint.write_bytes(buffer.getvalue())
    digest = sha256(checkpoint.read_bytes()).hexdigest()
    done = _make_images(tmp_path, f"BACKBONE={name}", f"WEIGHTS={checkpoint}",
                        f"WEIGHTS_SHA256={digest}")
    assert done.returncode == 0, done.stdout + done.stderr
    context = tmp_path / "context"
    unpacked = tmp_path / "unpacked"
    with tarfile.open(context / "context.tar") as tar:
        tar.extractall(unpacked, filter="data")
    assert (unpacked / "baked" / "weights.pth").read_bytes() == checkpoint.read_bytes()
    arguments = dict(line.split("=", 1) for line in
                     (context / "build-args").read_text().splitlines())
    assert arguments["BAKE_BACKBONE"] == name and arguments["BAKE_WEIGHTS_SHA256"] == digest
    assert arguments["BAKE_WEIGHTS_FILE"] == "/tmp/baked/weights.pth"

    # the build stage's bake command, as the image build runs it
    dockerfile = (unpacked / "docker" / "Dockerfile").read_text()
    weights_dir = tmp_path / "opt-goggles-weights"
    moved = {"/src/docker/bake_weights.py": str(unpacked / "docker" / "bake_weights.py"),
             "/opt/goggles/weights": str(weights_dir), "/tmp/baked": str(unpacked / "baked")}
    bake = _dockerfile_run(dockerfile, "bake_weights.py")
    for image_path, here in moved.items():
        bake = bake.replace(image_path, here)
    environment = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
                   "HF_HUB_OFFLINE": "1", **{key: value.replace("/tmp/baked", moved["/tmp/baked"])
                                             for key, value in arguments.items()}}
    environment.pop("GOGGLES_WEIGHTS_DIR", None)
    baked = subprocess.run(["sh", "-c", bake], env=environment, capture_output=True, text=True,
                           timeout=600)
    assert baked.returncode == 0, baked.stdout + baked.stderr
    path = weights_dir / "torchvision--mobilenet_v3_small.safetensors"
    assert path.is_file() and f"-> {path}" in baked.stdout
    assert not (unpacked / "baked").exists()  # the staged file does not stay in the layer

    # the runtime stage's check, in the environment the image sets (offline, the weights dir)
    check = _dockerfile_run(dockerfile, "baked_weights_path")
    runtime = {**environment, "GOGGLES_WEIGHTS_DIR": str(weights_dir), "GOGGLES_OFFLINE": "1",
               "BAKE_BACKBONE": name}
    checked = subprocess.run(["sh", "-c", check], env=runtime, capture_output=True, text=True,
                             timeout=300)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"{name} {path}" in checked.stdout
    path.unlink()  # without the baked file the same check fails: it is what it found
    shutil.rmtree(tmp_path / "torch-home", ignore_errors=True)
    missing = subprocess.run(["sh", "-c", check], capture_output=True, text=True, timeout=300,
                             env={**runtime, "TORCH_HOME": str(tmp_path / "torch-home")})
    assert missing.returncode != 0


def test_make_images_refuses_a_wrong_pin_and_a_library_the_image_lacks(tmp_path: Path) -> None:
    checkpoint = tmp_path / "weights.safetensors"
    checkpoint.write_bytes(b"not the pinned bytes")
    wrong = _make_images(tmp_path, "BACKBONE=vgg16", f"WEIGHTS={checkpoint}",
                         "WEIGHTS_SHA256=" + "0" * 64)
    assert wrong.returncode != 0 and "not the pinned " + "0" * 64 in wrong.stderr
    lacking = _make_images(tmp_path, "BACKBONE=timm:vit_small_patch14_dinov2",
                           f"WEIGHTS={checkpoint}")
    assert lacking.returncode != 0
    assert "needs timm in the image" in lacking.stderr and "docker/lock.py" in lacking.stderr
    alone = _make_images(tmp_path, "BACKBONE=vgg16")
    assert alone.returncode != 0 and "go together" in alone.stderr
    assert not (tmp_path / "context").exists()
