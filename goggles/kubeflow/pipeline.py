"""The goggles Kubeflow pipeline: ingest → extract (fan-out over row shards) → gather →
affinity (fan-out: shard s reads part s's filter maps alone) → infer → [train, when ``train``] →
evaluate/report, with the task settings a cluster needs chained here, not in the components.

``python pipeline.py [--output goggles_pipeline.yaml] [--profile dev|prod]`` compiles it for a
Kubeflow Pipelines cluster (the repository's ``pipeline.py`` is this file, as is its
``components/`` folder this package's; the installed package carries both, so ``goggles run``
needs no checkout); ``goggles run`` runs the same DAG on this machine with kfp's local runner
(which ignores the Kubernetes settings). Every parameter has a literal default, equal to
:class:`goggles.parameters.RunParameters`' (a test checks): nothing is read from the compiling
machine.

Profiles match k8s/overlays/: ``dev`` (CPU nodes only) and ``prod`` (extract on the GPU node
pool) both mount the namespace's bucket-credentials Secret and defaults ConfigMap (k8s/base) into
the tasks that read buckets, run every task as the images' non-root user and label every task pod
for the namespace's NetworkPolicy; ``default`` has none of these, for a Kubeflow install whose
pipeline runner already reaches the buckets.
"""

import argparse
import dataclasses
import logging
from typing import List, NamedTuple  # noqa: UP035 - kfp reads List[...] in pipeline signatures

from kfp import compiler, dsl, kubernetes
from kfp.dsl import HTML, Artifact, Dataset, Input

from goggles.kubeflow.components import (
    IMAGES,
    affinity_shard,
    evaluate,
    extract_part,
    gather_features,
    infer,
    ingest,
    list_source,
    no_train,
    plan_shards,
)
from goggles.kubeflow.components import train as train_end_model
from goggles.kubeflow.settings import (
    DEFAULT_GPU_NODE_SELECTOR,
    ClusterSettings,
    describe_parameters,
)

PIPELINE_NAME = "goggles"
__all__ = ["IMAGES", "PIPELINE_NAME", "PROFILES", "compile_pipeline", "goggles_pipeline",
           "pipeline_for"]
DEFAULT_PACKAGE = "goggles_pipeline.yaml"
SHARD_PARALLELISM = 8
"""At most this many extract or affinity shard pods at once (kfp's local runner caps it at 2)."""

GPU_RESOURCE = "nvidia.com/gpu"
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
"""GPU node pools are commonly tainted so that only GPU pods land there."""

IMAGE_USER = 10001
"""uid and gid the images run as (docker/Dockerfile's USER); pods are held to it."""
BUCKET_SECRET = "goggles-bucket-credentials"
"""k8s/base's Secret: AWS-style keys as env, every key as a file under BUCKET_SECRET_MOUNT."""
BUCKET_SECRET_MOUNT = "/var/secrets/goggles"
BUCKET_SECRET_ENV = {"AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID",
                     "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY"}
TASK_POD_LABEL = ("app.kubernetes.io/part-of", "goggles")
"""Label of every task pod: k8s/base's NetworkPolicy selects the pods it restricts by it (KFP's
own driver pods, which run no goggles code, do not carry it)."""
DEFAULTS_CONFIG_MAP = "goggles-defaults"
"""k8s/base's ConfigMap: environment defaults of the tasks that read buckets."""
DEFAULTS_ENV = ("GOOGLE_APPLICATION_CREDENTIALS", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION",
                "GOGGLES_OFFLINE", "TQDM_MININTERVAL")
SERVICE_ACCOUNT = "goggles-runner"
"""k8s/base's ServiceAccount, bound to the Role that names what KFP's pods may read."""
PROFILES = {"default": {"gpu": True, "namespace": False, "service_account": "",
                        "gpu_pool": False},
            "dev": {"gpu": False, "namespace": True, "service_account": SERVICE_ACCOUNT,
                    "gpu_pool": False},
            "prod": {"gpu": True, "namespace": True, "service_account": SERVICE_ACCOUNT,
                     "gpu_pool": True}}
"""Compile profiles: extract on a GPU (``gpu``; ``gpu_pool``: with the GPU operator's node
selector and the ``nvidia.com/gpu`` toleration, as k8s/overlays/prod's pool needs); the
namespace's Secret/ConfigMap, non-root security context and the task pod label its
NetworkPolicy selects (k8s/). Secret and ConfigMap are optional: with workload identity, neither
is needed. ``service_account`` is who runs submit and schedule use unless told otherwise
(``""``: the namespace's default for pipelines, e.g. ``default-editor``); a run's service
account is not part of the compiled pipeline."""
_build: dict = {**PROFILES["default"], "settings": ClusterSettings()}
"""The profile and cluster settings being built: kfp runs the pipeline body once, when it is
decorated."""

RESOURCES = {
    # stage: (cpu request, memory request, memory limit)
    "ingest": ("1", "2Gi", "4Gi"),
    "plan": ("100m", "256Mi", "512Mi"),
    "extract": ("4", "16Gi", "24Gi"),
    "gather": ("1", "4Gi", "8Gi"),
    "affinity": ("2", "8Gi", "12Gi"),
    "infer": ("2", "8Gi", "16Gi"),
    "train": ("2", "4Gi", "8Gi"),
    "evaluate": ("1", "4Gi", "8Gi"),
}


class Outputs(NamedTuple):
    """What a run leaves behind (:mod:`goggles.io.artifacts`)."""

    manifest: Dataset
    features: Dataset
    prototypes: Dataset
    labels: Dataset
    inference: Artifact
    metrics: Artifact
    report: HTML
    model_uri: str
    """Where the train task wrote the end model (``""`` when the run trains none)."""


def _resources(task: dsl.PipelineTask, stage: str) -> dsl.PipelineTask:
    cpu, memory, memory_limit = RESOURCES[stage]
    settings: ClusterSettings = _build["settings"]
    if task.container_spec is not None:  # the image of --image-repository/--image-tag
        task.set_container_image(settings.image_for(task.container_spec.image))
    if settings.image_pull_secret:
        kubernetes.set_image_pull_secrets(task, [settings.image_pull_secret])
    if _build["namespace"]:
        kubernetes.set_security_context(task, run_as_user=IMAGE_USER, run_as_group=IMAGE_USER,
                                        run_as_non_root=True)
        kubernetes.add_pod_label(task, *TASK_POD_LABEL)
    return (task.set_cpu_request(cpu).set_memory_request(memory)
            .set_memory_limit(memory_limit).set_caching_options(enable_caching=True))


def _bucket_access(task: dsl.PipelineTask) -> dsl.PipelineTask:
    """The namespace's bucket credentials and defaults, for a task that reads URIs it is given."""
    if _build["namespace"]:
        kubernetes.use_secret_as_env(task, BUCKET_SECRET, BUCKET_SECRET_ENV, optional=True)
        kubernetes.use_secret_as_volume(task, BUCKET_SECRET, BUCKET_SECRET_MOUNT, optional=True)
        kubernetes.use_config_map_as_env(task, DEFAULTS_CONFIG_MAP,
                                         {key: key for key in DEFAULTS_ENV}, optional=True)
    return task


def _gpu(task: dsl.PipelineTask) -> None:
    """Extract on a GPU unless the settings say CPU; node selector and toleration only when
    asked (a stock GKE or EKS node has no ``nvidia.com/gpu.present`` label)."""
    settings: ClusterSettings = _build["settings"]
    if settings.extract_device != "gpu":
        return
    task.set_accelerator_type(GPU_RESOURCE).set_accelerator_limit(1)
    selector = settings.node_selector()
    if selector:
        kubernetes.add_node_selector(task, *selector)
    if settings.gpu_toleration:
        kubernetes.add_toleration(task, **GPU_TOLERATION)


def listed_ingest(source_uri: str, follow_symlinks: bool,
                  verify: bool = False) -> dsl.PipelineTask:
    """The ingest task, after an uncached listing task whose digest of the source (each image's
    path, size and version) is one of ingest's inputs: a changed source is ingested again (and
    every later task recomputed), an unchanged one reuses KFP's cache. Every pipeline that reads
    a source starts with it."""
    listing_task = _bucket_access(_resources(list_source(source_uri=source_uri,
                                                         follow_symlinks=follow_symlinks,
                                                         verify=verify),
                                             "ingest"))
    (listing_task.set_caching_options(enable_caching=False)
     .set_display_name("list the source (uncached)"))
    ingest_task = _bucket_access(_resources(ingest(source_uri=source_uri,
                                                   follow_symlinks=follow_symlinks,
                                                   source_fingerprint=listing_task.output),
                                            "ingest"))
    return ingest_task.set_display_name("ingest: list and validate images")


class Parts(NamedTuple):
    """The extraction parts, one per row shard, in no particular order."""

    maps: List[Dataset]  # noqa: UP006
    summaries: List[Dataset]  # noqa: UP006


def _extract_parts(manifest: Input[Dataset], shard_ids: list, num_shards: int, backbone: str,
                   weights_uri: str, weights_sha256: str, top_k: int, device: str,
                   descriptor_backbone: str, feature_cache_uri: str) -> Parts:
    """Extraction fanned out over the row shards: one task (on a GPU node, unless the
    settings say CPU) per shard. A sub-pipeline, because a ``dsl.ParallelFor`` can iterate over
    the list of artifacts a pipeline returns: the affinity loop takes part s's maps as its
    item."""
    with dsl.ParallelFor(items=shard_ids, name="extract shards (fan-out)",
                         parallelism=SHARD_PARALLELISM) as shard_id:
        part_task = _resources(extract_part(
            manifest=manifest, shard_id=shard_id, num_shards=num_shards, backbone=backbone,
            weights_uri=weights_uri, weights_sha256=weights_sha256, top_k=top_k, device=device,
            descriptor_backbone=descriptor_backbone, feature_cache_uri=feature_cache_uri),
            "extract")
        (_bucket_access(part_task).set_display_name("extract: CNN filter maps of one row shard")
         .set_retry(num_retries=2, backoff_duration="30s", backoff_factor=2,
                    backoff_max_duration="600s"))
        _gpu(part_task)
    return Parts(maps=dsl.Collected(part_task.outputs["maps"]),
                 summaries=dsl.Collected(part_task.outputs["summary"]))


def _parts_pipeline() -> dsl.base_component.BaseComponent:
    """:func:`_extract_parts` built with the settings being built (``_build``)."""
    return dsl.pipeline(name="extract-parts")(_extract_parts)


_build["extract_parts"] = _parts_pipeline()


PIPELINE_INFO = {"name": PIPELINE_NAME,
                 "display_name": "goggles: label images by affinity coding",
                 "description": "Label an image dataset automatically with affinity coding "
                                "(GOGGLES)."}


@dsl.pipeline(**PIPELINE_INFO)
def goggles_pipeline(
    source_uri: str = "",
    num_classes: int = 2,
    backbone: str = "vgg16",
    weights_uri: str = "",
    weights_sha256: str = "",
    top_k: int = 5,
    max_prototypes: int = -1,
    num_shards: int = 1,
    method: str = "graph-em",
    max_iter: int = 100,
    seed: int = 0,
    dev_labels_uri: str = "",
    device: str = "auto",
    follow_symlinks: bool = False,
    verify: bool = False,
    feature_cache_uri: str = "",
    descriptor_backbone: str = "mobilenet_v2",
    train: bool = False,
) -> Outputs:
    """Probabilistic labels for the images under ``source_uri`` (README, "2. Run").

    Parameters
    ----------
    source_uri : folder or bucket prefix of images; first-level folders are ground truth.
    num_classes : K, the number of classes to find.
    backbone, weights_uri, top_k : the network (``vgg16``, ``mobilenet_v2`` or a model spec:
        docs/backbones.md), its weights (``""``: baked into the image or the library's cache)
        and prototypes per image.
    weights_sha256 : the SHA-256 the weights file must have (``""``: not checked).
    max_prototypes : cap on the prototypes (columns of A): -1 chooses it from the images and
        classes, 0 for none (see goggles.features.budget).
    num_shards : row shards of the images: one extract and one affinity task each.
    method, max_iter, seed : class inference (``graph-em``, ``em``, ``kmeans``, ``em-random``,
        ``pgm``, ``backbone``; see goggles.inference.registry).
    dev_labels_uri : optional CSV/Parquet of ``uri,label`` naming the clusters.
    device : ``auto`` uses the GPU where the task has one.
    follow_symlinks : read what symlinks in a local source lead to outside it.
    verify : key the listing of a local source by every file's content (sha256), not by its
        size, modification and change times and inode.
    feature_cache_uri : keep each image's features here and extract only images not seen
        before (``""``: no cache).
    descriptor_backbone : graph EM's second network (``none`` to skip it).
    train : also train an end classifier on the labels (the train task's ``model``).
    """
    ingest_task = listed_ingest(source_uri, follow_symlinks, verify)

    plan_task = _resources(plan_shards(manifest=ingest_task.outputs["manifest"],
                                       num_shards=num_shards, num_classes=num_classes,
                                       dev_labels_uri=dev_labels_uri), "plan")
    plan_task.set_display_name("plan the row shards")

    # the plan's shard ids start the extraction: parameters that cannot work fail before it
    parts_task = _build["extract_parts"](
        manifest=ingest_task.outputs["manifest"], shard_ids=plan_task.output,
        num_shards=num_shards, backbone=backbone, weights_uri=weights_uri,
        weights_sha256=weights_sha256, top_k=top_k, device=device,
        descriptor_backbone=descriptor_backbone,
        feature_cache_uri=feature_cache_uri).set_display_name("extract (fan-out over shards)")
    gather_task = _resources(gather_features(summaries=parts_task.outputs["summaries"],
                                             top_k=top_k, max_prototypes=max_prototypes,
                                             num_classes=num_classes, seed=seed), "gather")
    gather_task.set_display_name("gather: prototypes and descriptors")

    with dsl.ParallelFor(items=parts_task.outputs["maps"], name="affinity shards (fan-out)",
                         parallelism=SHARD_PARALLELISM) as part_maps:
        shard_task = _resources(affinity_shard(maps=part_maps,
                                               prototypes=gather_task.outputs["prototypes"],
                                               num_shards=num_shards, device=device), "affinity")
        (shard_task.set_display_name("affinity: one row shard")
         .set_retry(num_retries=3, backoff_duration="10s", backoff_factor=2,
                    backoff_max_duration="300s"))

    infer_task = _resources(infer(manifest=ingest_task.outputs["manifest"],
                                  features=gather_task.outputs["features"],
                                  prototypes=gather_task.outputs["prototypes"],
                                  affinity_shards=dsl.Collected(shard_task.outputs["affinity"]),
                                  num_classes=num_classes, method=method,
                                  max_iter=max_iter, seed=seed, device=device,
                                  dev_labels_uri=dev_labels_uri),
                            "infer")
    _bucket_access(infer_task).set_display_name("infer: labels by EM")

    with dsl.If(train == True, name="train an end model"):  # noqa: E712 - a kfp condition
        train_task = _resources(train_end_model(manifest=ingest_task.outputs["manifest"],
                                                features=gather_task.outputs["features"],
                                                labels=infer_task.outputs["labels"],
                                                inference=infer_task.outputs["inference"],
                                                seed=seed), "train")
        train_task.set_display_name("train: end classifier on the labels")
    with dsl.Else(name="no end model"):
        skip_task = _resources(no_train(), "plan").set_display_name("no end model")
    end_model = dsl.OneOf(train_task.outputs["end_model"], skip_task.outputs["end_model"])
    model_uri = dsl.OneOf(train_task.outputs["model_uri"], skip_task.outputs["model_uri"])

    evaluate_task = _resources(evaluate(manifest=ingest_task.outputs["manifest"],
                                        prototypes=gather_task.outputs["prototypes"],
                                        affinity_shards=dsl.Collected(shard_task.outputs["affinity"]),
                                        labels=infer_task.outputs["labels"],
                                        inference=infer_task.outputs["inference"],
                                        source_uri=source_uri, backbone=backbone, top_k=top_k,
                                        num_shards=num_shards, seed=seed, end_model=end_model),
                               "evaluate")
    _bucket_access(evaluate_task).set_display_name("evaluate and report")

    return Outputs(manifest=ingest_task.outputs["manifest"],
                   features=gather_task.outputs["features"],
                   prototypes=gather_task.outputs["prototypes"],
                   labels=infer_task.outputs["labels"],
                   inference=infer_task.outputs["inference"],
                   metrics=evaluate_task.outputs["metrics_json"],
                   report=evaluate_task.outputs["report"],
                   model_uri=model_uri)


def pipeline_for(profile: str = "default", settings: ClusterSettings | None = None,
                 ) -> dsl.base_component.BaseComponent:
    """:func:`goggles_pipeline` built with a profile's cluster settings (see :data:`PROFILES`)
    and ``settings`` (images, pull secret, GPU; :class:`ClusterSettings`)."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    settings = _profile_settings(profile, settings or ClusterSettings())
    if profile == "default" and settings == ClusterSettings():
        return goggles_pipeline
    default_parts = _build["extract_parts"]
    _build.update(PROFILES[profile], settings=settings)
    try:
        _build["extract_parts"] = _parts_pipeline()
        return dsl.pipeline(**PIPELINE_INFO)(goggles_pipeline.pipeline_func)
    finally:
        _build.update(PROFILES["default"], settings=ClusterSettings(),
                      extract_parts=default_parts)


def _profile_settings(profile: str, settings: ClusterSettings) -> ClusterSettings:
    """``settings`` with what the profile's node pools need: CPU extraction without GPUs
    (``dev``), the GPU pool's node selector and toleration (``prod``)."""
    if not PROFILES[profile]["gpu"]:
        return dataclasses.replace(settings, extract_device="cpu", gpu_node_selector="",
                                   gpu_toleration=False)
    if PROFILES[profile]["gpu_pool"] and settings.extract_device == "gpu":
        return dataclasses.replace(
            settings, gpu_node_selector=settings.gpu_node_selector or DEFAULT_GPU_NODE_SELECTOR,
            gpu_toleration=True)
    return settings


def compile_pipeline(package_path: str = DEFAULT_PACKAGE, profile: str = "default",
                     settings: ClusterSettings | None = None) -> str:
    """Compile :func:`goggles_pipeline` to a KFP IR YAML at ``package_path``, with every run
    parameter's description (:func:`describe_parameters`); returns the path."""
    compiler.Compiler().compile(pipeline_for(profile, settings), package_path=package_path)
    return describe_parameters(package_path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(allow_abbrev=False,
                                     description="Compile the goggles Kubeflow pipeline.")
    parser.add_argument("--output", default=DEFAULT_PACKAGE, help="YAML package to write")
    parser.add_argument("--profile", default="default", choices=PROFILES,
                        help="cluster settings matching k8s/overlays/<profile> (default: none)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger(__name__).info("compiled %s", compile_pipeline(args.output, args.profile))


if __name__ == "__main__":
    main()
