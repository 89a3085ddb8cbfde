"""Cluster settings of a compiled pipeline that are not run parameters: which images the tasks
run, the image pull secret, whether extract asks for a GPU and how it finds one.

:class:`ClusterSettings` is what ``goggles compile|submit|schedule|upload`` take as options
(``--image-repository``, ``--image-tag``, ``--image-pull-secret``, ``--extract-device``,
``--gpu-node-selector``, ``--gpu-toleration``); :func:`goggles.kubeflow.pipeline.pipeline_for`
builds the DAG with them. Nothing here is read from the compiling machine's environment: the
same options give the same package anywhere.

:func:`describe_parameters` writes the declared help of every run parameter
(:mod:`goggles.parameters`) into a compiled package as the parameter's description, which the
Kubeflow UI shows in its run form (kfp itself reads only Google-style ``Args:`` docstrings).

This module imports no kfp (the command line builds its options from it at every start).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import yaml

from goggles import __version__
from goggles.config import ConfigError
from goggles.parameters import names, spec

EXTRACT_DEVICES = ("gpu", "cpu")
GPU_SUFFIX = "-gpu"
"""The CUDA image's tag is the CPU image's with this suffix (docker/build.sh)."""
DEFAULT_GPU_NODE_SELECTOR = "nvidia.com/gpu.present=true"
"""The label NVIDIA's GPU feature discovery / GPU operator sets (not stock GKE or EKS)."""
_LABEL = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_./]*)=([-A-Za-z0-9_.]*)$")
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


@dataclass(frozen=True)
class ClusterSettings:
    """How the compiled tasks run on a cluster (none of it is a run parameter).

    Attributes
    ----------
    image_repository : where the images are, e.g. ``registry.example.com/ml/goggles`` (a
        mirror); ``""``: ``ghcr.io/goggles-project/goggles``.
    image_tag : the CPU image's tag; the GPU image is ``<tag>-gpu``. ``""``: this goggles'
        version.
    image_pull_secret : a ``kubernetes.io/dockerconfigjson`` Secret in the run's namespace that
        every task pod pulls its image with; ``""``: none.
    extract_device : ``gpu`` (extract asks for one ``nvidia.com/gpu`` and runs the CUDA image)
        or ``cpu`` (extract runs the CPU image on any node, for clusters without GPUs).
    gpu_node_selector : ``KEY=VALUE`` node label extract's pod must land on, ``""`` for none
        (the default: the scheduler places a pod that asks for ``nvidia.com/gpu`` on a node that
        has one). ``nvidia.com/gpu.present=true`` is the GPU operator's label.
    gpu_toleration : extract tolerates the ``nvidia.com/gpu`` taint (``NoSchedule``) GPU node
        pools commonly carry; GKE and EKS add it themselves to pods that ask for a GPU.
    """

    image_repository: str = ""
    image_tag: str = ""
    image_pull_secret: str = ""
    extract_device: str = "gpu"
    gpu_node_selector: str = ""
    gpu_toleration: bool = False

    def __post_init__(self) -> None:
        if self.image_repository and (any(c.isspace() for c in self.image_repository)
                                      or ":" in self.image_repository.rsplit("/", 1)[-1]
                                      or "@" in self.image_repository):
            raise ConfigError(f"image repository {self.image_repository!r} is not a repository: "
                              "give it without a tag, e.g. registry.example.com/ml/goggles, and "
                              "the tag with --image-tag")
        if self.image_tag and not _TAG.match(self.image_tag):
            raise ConfigError(f"image tag {self.image_tag!r} is not a Docker tag (letters, "
                              "digits, '_', '.', '-'; at most 128), e.g. --image-tag 0.1.0")
        if self.image_pull_secret and not _NAME.match(self.image_pull_secret):
            raise ConfigError(f"image pull secret {self.image_pull_secret!r} is not a "
                              "Kubernetes Secret name (lower-case letters, digits, '-', '.')")
        if self.extract_device not in EXTRACT_DEVICES:
            raise ConfigError(f"unknown extract device {self.extract_device!r}; choose one of "
                              f"{', '.join(EXTRACT_DEVICES)}")
        if self.gpu_node_selector and not _LABEL.match(self.gpu_node_selector):
            raise ConfigError(f"GPU node selector {self.gpu_node_selector!r} is not KEY=VALUE, "
                              f"e.g. {DEFAULT_GPU_NODE_SELECTOR}")
        if self.extract_device == "cpu" and (self.gpu_node_selector or self.gpu_toleration):
            raise ConfigError("a GPU node selector or toleration with --extract-device cpu "
                              "would put a CPU task on GPU nodes: drop one of them")

    @property
    def base_image(self) -> str:
        """The CPU image every task but a GPU extract runs."""
        from goggles.kubeflow.components.image import BASE_IMAGE, IMAGE_REPOSITORY

        if not (self.image_repository or self.image_tag):
            return BASE_IMAGE
        return f"{self.image_repository or IMAGE_REPOSITORY}:{self.image_tag or __version__}"

    @property
    def gpu_image(self) -> str:
        """The CUDA image: the CPU image's tag with ``-gpu``."""
        from goggles.kubeflow.components.image import GPU_IMAGE

        if not (self.image_repository or self.image_tag):
            return GPU_IMAGE
        return self.base_image + GPU_SUFFIX

    def image_for(self, component_image: str) -> str:
        """The image a task of a component built on ``component_image`` runs: the GPU image's
        components run the CPU image when extraction is on the CPU."""
        from goggles.kubeflow.components.image import GPU_IMAGE

        if component_image == GPU_IMAGE and self.extract_device == "gpu":
            return self.gpu_image
        return self.base_image

    def node_selector(self) -> tuple[str, str] | None:
        """``(key, value)`` of the GPU node selector, or ``None``."""
        if not self.gpu_node_selector:
            return None
        key, _, value = self.gpu_node_selector.partition("=")
        return key, value


def describe_parameters(package_path: str, extra: dict[str, str] | None = None) -> str:
    """Write each declared run parameter's help (and ``extra``'s, for parameters of another
    pipeline) into the compiled package at ``package_path`` as its description (root inputs and
    every component input of that name); returns the path. The comment header kfp writes is
    kept."""
    with open(package_path, encoding="utf-8") as handle:
        text = handle.read()
    header = "".join(line for line in text.splitlines(keepends=True) if line.startswith("#"))
    documents = list(yaml.safe_load_all(text))
    helps = {name: spec(name).help for name in names(pipeline=True)} | (extra or {})
    pipeline_spec = documents[0]
    scopes: list[dict[str, Any]] = [pipeline_spec.get("root", {})]
    scopes += list(pipeline_spec.get("components", {}).values())
    for scope in scopes:
        parameters = scope.get("inputDefinitions", {}).get("parameters", {})
        for name, definition in parameters.items():
            if name in helps:
                definition["description"] = helps[name]
    with open(package_path, "w", encoding="utf-8") as handle:
        handle.write(header)
        yaml.safe_dump_all(documents, handle, sort_keys=True)
    return package_path


def add_arguments(parser: Any) -> None:
    """The :class:`ClusterSettings` options of ``goggles compile|submit|schedule|upload``."""
    parser.add_argument("--image-repository", default="", metavar="REPO",
                        help="run the tasks from REPO:TAG (and extract from REPO:TAG-gpu), e.g. "
                             "a mirror; default: ghcr.io/goggles-project/goggles")
    parser.add_argument("--image-tag", default="", metavar="TAG",
                        help=f"the images' tag (default: this version, {__version__})")
    parser.add_argument("--image-pull-secret", default="", metavar="SECRET",
                        help="pull every task's image with this docker-registry Secret of the "
                             "run's namespace")
    parser.add_argument("--extract-device", default="gpu", choices=EXTRACT_DEVICES,
                        help="gpu: extract asks for one nvidia.com/gpu (default); cpu: extract "
                             "runs the CPU image on any node (clusters without GPUs)")
    parser.add_argument("--gpu-node-selector", default="", metavar="KEY=VALUE",
                        help="put extract on nodes with this label, e.g. "
                             f"{DEFAULT_GPU_NODE_SELECTOR} (GPU operator) or "
                             "cloud.google.com/gke-accelerator=nvidia-l4; default: none "
                             "(--profile prod: the GPU operator's)")
    parser.add_argument("--gpu-toleration", action="store_true",
                        help="extract tolerates the nvidia.com/gpu:NoSchedule taint of GPU node "
                             "pools (GKE and EKS add it themselves; --profile prod sets it)")


def from_arguments(args: Any) -> ClusterSettings:
    """The :class:`ClusterSettings` of parsed :func:`add_arguments` options."""
    return ClusterSettings(image_repository=args.image_repository, image_tag=args.image_tag,
                           image_pull_secret=args.image_pull_secret,
                           extract_device=args.extract_device,
                           gpu_node_selector=args.gpu_node_selector,
                           gpu_toleration=args.gpu_toleration)


def without_caching(package_path: str, target_path: str) -> str:
    """Write ``package_path`` to ``target_path`` with caching off in every task, those inside
    ``dsl.ParallelFor`` loops too (``kfp.Client(enable_caching=False)`` reaches only the root
    DAG's tasks, so an affinity shard would still come from the cache); returns the target."""
    with open(package_path, encoding="utf-8") as handle:
        text = handle.read()
    header = "".join(line for line in text.splitlines(keepends=True) if line.startswith("#"))
    documents = list(yaml.safe_load_all(text))
    pipeline_spec = documents[0]
    dags = [pipeline_spec.get("root", {}).get("dag", {})]
    dags += [c["dag"] for c in pipeline_spec.get("components", {}).values() if "dag" in c]
    for dag in dags:
        for task in dag.get("tasks", {}).values():
            if "componentRef" in task:
                task["cachingOptions"] = {**task.get("cachingOptions", {}), "enableCache": False}
    with open(target_path, "w", encoding="utf-8") as handle:
        handle.write(header)
        yaml.safe_dump_all(documents, handle, sort_keys=True)
    return target_path
