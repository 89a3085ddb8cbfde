"""The goggles Kubeflow pipeline: ingest → plan → extract (fan-out over row shards) → gather →
affinity (fan-out: shard s reads part s's filter maps alone) → infer (a fit on the plan's
sample, then a label task per shard and a gather) → [train, when ``train``] → evaluate/report,
with the task settings a cluster needs chained here, not in the components. With graph EM (the
default) no task reads all of A: its fit reads a sample of at most 20,000 rows
(:mod:`goggles.pipeline.fanout`); the other methods fit on every row, in one task.

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
    gather_labels,
    infer_fit,
    ingest_part,
    join_manifest,
    label_shard,
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
__all__ = ["IMAGES", "PIPELINE_NAME", "PROFILES", "TaskSettings", "build", "compile_pipeline",
           "goggles_pipeline", "pipeline_for", "task_settings"]
DEFAULT_PACKAGE = "goggles_pipeline.yaml"
SHARD_PARALLELISM = 8
"""At most this many extract, affinity or label shard pods at once (kfp's local runner caps it
at 2)."""

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
RESOURCES = {
    # stage: (cpu request, memory request, memory limit)
    "ingest": ("1", "2Gi", "4Gi"),
    "plan": ("100m", "256Mi", "512Mi"),
    "extract": ("4", "16Gi", "24Gi"),
    "gather": ("1", "4Gi", "8Gi"),
    "affinity": ("2", "8Gi", "12Gi"),
    "infer": ("2", "8Gi", "16Gi"),
    "label": ("1", "4Gi", "6Gi"),
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


@dataclasses.dataclass(frozen=True)
class TaskSettings:
    """What one compile sets on every task: the profile's switches (:data:`PROFILES`) and the
    cluster settings (images, pull secret, GPU). Each build of a pipeline has its own; nothing
    is kept between builds."""

    profile: str = "default"
    settings: ClusterSettings = dataclasses.field(default_factory=ClusterSettings)

    @property
    def namespaced(self) -> bool:
        return bool(PROFILES[self.profile]["namespace"])

    def resources(self, task: dsl.PipelineTask, stage: str) -> dsl.PipelineTask:
        """The stage's requests and limits, image, pull secret, security context and caching."""
        cpu, memory, memory_limit = RESOURCES[stage]
        if task.container_spec is not None:  # the image of --image-repository/--image-tag
            task.set_container_image(self.settings.image_for(task.container_spec.image))
        if self.settings.image_pull_secret:
            kubernetes.set_image_pull_secrets(task, [self.settings.image_pull_secret])
        if self.namespaced:
            kubernetes.set_security_context(task, run_as_user=IMAGE_USER,
                                            run_as_group=IMAGE_USER, run_as_non_root=True)
            kubernetes.add_pod_label(task, *TASK_POD_LABEL)
        return (task.set_cpu_request(cpu).set_memory_request(memory)
                .set_memory_limit(memory_limit).set_caching_options(enable_caching=True))

    def bucket_access(self, task: dsl.PipelineTask) -> dsl.PipelineTask:
        """The namespace's bucket credentials and defaults, for a task that reads URIs it is
        given."""
        if self.namespaced:
            kubernetes.use_secret_as_env(task, BUCKET_SECRET, BUCKET_SECRET_ENV, optional=True)
            kubernetes.use_secret_as_volume(task, BUCKET_SECRET, BUCKET_SECRET_MOUNT,
                                            optional=True)
            kubernetes.use_config_map_as_env(task, DEFAULTS_CONFIG_MAP,
                                             {key: key for key in DEFAULTS_ENV}, optional=True)
        return task

    def gpu(self, task: dsl.PipelineTask) -> None:
        """Extract on a GPU unless the settings say CPU; node selector and toleration only when
        asked (a stock GKE or EKS node has no ``nvidia.com/gpu.present`` label)."""
        if self.settings.extract_device != "gpu":
            return
        task.set_accelerator_type(GPU_RESOURCE).set_accelerator_limit(1)
        selector = self.settings.node_selector()
        if selector:
            kubernetes.add_node_selector(task, *selector)
        if self.settings.gpu_toleration:
            kubernetes.add_toleration(task, **GPU_TOLERATION)

    def ingest_parts(self) -> dsl.base_component.BaseComponent:
        """The ingest fan-out, a sub-pipeline (built outside any pipeline, as kfp requires):
        one task per slice of the listing, each validating its own files."""

        @dsl.pipeline(name="ingest-parts")
        def ingest_parts(source_uri: str, follow_symlinks: bool, source_fingerprint: str,
                         listing: str, shard_ids: list, num_parts: int
                         ) -> List[Dataset]:  # noqa: UP006
            _number_next_loop("ingest")
            with dsl.ParallelFor(items=shard_ids, name="ingest slices (fan-out)",
                                 parallelism=SHARD_PARALLELISM) as shard_id:
                part_task = self.bucket_access(self.resources(ingest_part(
                    source_uri=source_uri, follow_symlinks=follow_symlinks,
                    source_fingerprint=source_fingerprint, listing=listing,
                    shard_id=shard_id, num_parts=num_parts), "ingest"))
                (part_task.set_display_name("ingest: validate one slice of the images")
                 .set_retry(num_retries=2, backoff_duration="30s", backoff_factor=2,
                            backoff_max_duration="600s"))
            return dsl.Collected(part_task.outputs["part"])

        return ingest_parts

    def listed_ingest(self, ingest_parts: dsl.base_component.BaseComponent, source_uri: str,
                      follow_symlinks: bool, verify: bool = False) -> dsl.PipelineTask:
        """The manifest's task, after an uncached listing task whose digest of the source (each
        image's path, size and version) is one of ingest's inputs: a changed source is ingested
        again (and every later task recomputed), an unchanged one reuses KFP's cache. The
        images are validated in slices (``ingest_parts``, :meth:`ingest_parts`: one task per
        10,240 files), then joined. Every pipeline that reads a source starts with it; the
        returned task's ``manifest`` is the run's."""
        listing_task = self.bucket_access(self.resources(
            list_source(source_uri=source_uri, follow_symlinks=follow_symlinks, verify=verify),
            "plan"))
        (listing_task.set_caching_options(enable_caching=False)
         .set_display_name("list the source (uncached)"))
        parts_task = ingest_parts(
            source_uri=source_uri, follow_symlinks=follow_symlinks,
            source_fingerprint=listing_task.outputs["fingerprint"],
            listing=listing_task.outputs["listing"],
            shard_ids=listing_task.outputs["shard_ids"],
            num_parts=listing_task.outputs["num_parts"]).set_display_name(
                "ingest (fan-out over slices of the listing)")
        join_task = self.resources(join_manifest(
            parts=parts_task.output, source_uri=source_uri,
            source_fingerprint=listing_task.outputs["fingerprint"]), "plan")
        return join_task.set_display_name("ingest: the manifest")


class Parts(NamedTuple):
    """The extraction parts, one per row shard, in no particular order."""

    maps: List[Dataset]  # noqa: UP006
    summaries: List[Dataset]  # noqa: UP006
    descriptors: List[Dataset]  # noqa: UP006


class Shards(NamedTuple):
    """The gathered features and prototypes, the affinity shards (one per row shard) and each
    one's rows in graph EM's sample."""

    features: Dataset
    prototypes: Dataset
    descriptors: List[Dataset]  # noqa: UP006
    affinity: List[Dataset]  # noqa: UP006
    sample_parts: List[Dataset]  # noqa: UP006
    view_parts: List[Dataset]  # noqa: UP006


PIPELINE_INFO = {"name": PIPELINE_NAME,
                 "display_name": "goggles: label images by affinity coding",
                 "description": "Label an image dataset automatically with affinity coding "
                                "(GOGGLES)."}


LOOP_NUMBERS = {"ingest": 1, "extract": 2, "affinity": 3, "label": 4}
"""Each fan-out's ``dsl.ParallelFor`` number (its component is ``comp-for-loop-<n>``)."""


def _number_next_loop(fan_out: str) -> None:
    """Number the next ``dsl.ParallelFor`` of the pipeline being built (which has no group yet)
    :data:`LOOP_NUMBERS`' number. Each pipeline numbers its groups from 1, so the fan-outs'
    loops, each in its own (sub-)pipeline, would all be ``for-loop-1``; kfp renames clashing
    components in the order of a protobuf map, which changes between processes, so the compiled
    package would not be reproducible."""
    from kfp.dsl import pipeline_context

    for _ in range(LOOP_NUMBERS[fan_out] - 1):
        pipeline_context.Pipeline.get_default_pipeline().get_next_group_id()


def build(tasks: TaskSettings) -> dsl.base_component.BaseComponent:
    """The goggles pipeline with ``tasks``' settings on every task. Extraction and affinity
    are sub-pipelines, because a ``dsl.ParallelFor`` can iterate over the list of artifacts a
    pipeline returns (kfp's local runner resolves a loop's items from a task's output, not from
    a sub-pipeline's input): the affinity loop takes part s's maps as its item, graph EM's label
    loop shard s's rows of A."""

    @dsl.pipeline(name="extract-parts")
    def extract_parts(manifest: Input[Dataset], shard_ids: list, num_shards: int,
                      backbone: str, weights_uri: str, weights_sha256: str, top_k: int,
                      max_prototypes: int, num_classes: int, seed: int, device: str,
                      descriptor_backbone: str, feature_cache_uri: str) -> Parts:
        """Extraction fanned out over the row shards: one task (on a GPU node, unless the
        settings say CPU) per shard."""
        _number_next_loop("extract")
        with dsl.ParallelFor(items=shard_ids, name="extract shards (fan-out)",
                             parallelism=SHARD_PARALLELISM) as shard_id:
            part_task = tasks.resources(extract_part(
                manifest=manifest, shard_id=shard_id, num_shards=num_shards, backbone=backbone,
                weights_uri=weights_uri, weights_sha256=weights_sha256, top_k=top_k,
                max_prototypes=max_prototypes, num_classes=num_classes, seed=seed,
                device=device, descriptor_backbone=descriptor_backbone,
                feature_cache_uri=feature_cache_uri), "extract")
            (tasks.bucket_access(part_task)
             .set_display_name("extract: CNN filter maps of one row shard")
             .set_retry(num_retries=2, backoff_duration="30s", backoff_factor=2,
                        backoff_max_duration="600s"))
            tasks.gpu(part_task)
        return Parts(maps=dsl.Collected(part_task.outputs["maps"]),
                     summaries=dsl.Collected(part_task.outputs["summary"]),
                     descriptors=dsl.Collected(part_task.outputs["descriptors"]))

    @dsl.pipeline(name="features-and-affinity")
    def features_and_affinity(manifest: Input[Dataset], sample: Input[Dataset], shard_ids: list,
                              num_shards: int, backbone: str, weights_uri: str,
                              weights_sha256: str, top_k: int, max_prototypes: int,
                              num_classes: int, seed: int, device: str,
                              descriptor_backbone: str, feature_cache_uri: str) -> Shards:
        """Extraction, the gather and affinity fanned out: shard s's affinity task reads part
        s's filter maps alone, and writes its rows of A and its rows in graph EM's sample
        apart."""
        parts_task = extract_parts(
            manifest=manifest, shard_ids=shard_ids, num_shards=num_shards, backbone=backbone,
            weights_uri=weights_uri, weights_sha256=weights_sha256, top_k=top_k,
            max_prototypes=max_prototypes, num_classes=num_classes, seed=seed, device=device,
            descriptor_backbone=descriptor_backbone,
            feature_cache_uri=feature_cache_uri).set_display_name("extract (fan-out over shards)")
        gather_task = tasks.resources(gather_features(
            summaries=parts_task.outputs["summaries"], top_k=top_k,
            max_prototypes=max_prototypes, num_classes=num_classes, seed=seed), "gather")
        gather_task.set_display_name("gather: prototypes and descriptors")
        _number_next_loop("affinity")
        with dsl.ParallelFor(items=parts_task.outputs["maps"], name="affinity shards (fan-out)",
                             parallelism=SHARD_PARALLELISM) as part_maps:
            shard_task = tasks.resources(affinity_shard(
                maps=part_maps, prototypes=gather_task.outputs["prototypes"], sample=sample,
                num_shards=num_shards, device=device), "affinity")
            (shard_task.set_display_name("affinity: one row shard")
             .set_retry(num_retries=3, backoff_duration="10s", backoff_factor=2,
                        backoff_max_duration="300s"))
        return Shards(features=gather_task.outputs["features"],
                      prototypes=gather_task.outputs["prototypes"],
                      descriptors=parts_task.outputs["descriptors"],
                      affinity=dsl.Collected(shard_task.outputs["affinity"]),
                      sample_parts=dsl.Collected(shard_task.outputs["sample_part"]),
                      view_parts=dsl.Collected(shard_task.outputs["view_part"]))

    ingest_parts = tasks.ingest_parts()

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
        backbone, weights_uri, top_k : the network (``vgg16``, ``mobilenet_v2`` or a model
            spec: docs/backbones.md), its weights (``""``: baked into the image or the
            library's cache) and prototypes per image.
        weights_sha256 : the SHA-256 the weights file must have (``""``: not checked).
        max_prototypes : cap on the prototypes (columns of A): -1 chooses it from the images
            and classes, 0 for none (see goggles.features.budget).
        num_shards : row shards of the images: one extract, one affinity and (graph EM) one
            label task each.
        method, max_iter, seed : class inference (``graph-em``, ``em``, ``kmeans``,
            ``em-random``, ``pgm``, ``backbone``; see goggles.inference.registry).
        dev_labels_uri : optional CSV/Parquet of ``uri,label`` naming the clusters.
        device : ``auto`` uses the GPU where the task has one.
        follow_symlinks : read what symlinks in a local source lead to outside it.
        verify : key the listing of a local source by every file's content (sha256), not by
            its size, modification and change times and inode.
        feature_cache_uri : keep each image's features here and extract only images not seen
            before (``""``: no cache).
        descriptor_backbone : graph EM's second network (``none`` to skip it).
        train : also train an end classifier on the labels (the train task's ``model``).
        """
        ingest_task = tasks.listed_ingest(ingest_parts, source_uri, follow_symlinks, verify)
        manifest = ingest_task.outputs["manifest"]

        plan_task = tasks.resources(plan_shards(manifest=manifest, num_shards=num_shards,
                                                num_classes=num_classes, method=method,
                                                dev_labels_uri=dev_labels_uri, seed=seed),
                                    "plan")
        tasks.bucket_access(plan_task).set_display_name("plan the shards and the fit's sample")

        # the plan's shard ids start the extraction: parameters that cannot work fail before it
        shards_task = features_and_affinity(
            manifest=manifest, sample=plan_task.outputs["sample"],
            shard_ids=plan_task.outputs["Output"], num_shards=num_shards, backbone=backbone,
            weights_uri=weights_uri, weights_sha256=weights_sha256, top_k=top_k,
            max_prototypes=max_prototypes, num_classes=num_classes, seed=seed, device=device,
            descriptor_backbone=descriptor_backbone, feature_cache_uri=feature_cache_uri,
        ).set_display_name("extract, gather and affinity (fan-out over shards)")
        features, prototypes = shards_task.outputs["features"], shards_task.outputs["prototypes"]

        # inference fanned out: a fit on the plan's sample (graph EM's; every image for the
        # other methods), a label task per shard, a gather
        _number_next_loop("label")
        fit_task = tasks.resources(infer_fit(
            sample=plan_task.outputs["sample"], sample_parts=shards_task.outputs["sample_parts"],
            prototypes=prototypes, num_classes=num_classes, method=method, max_iter=max_iter,
            seed=seed, device=device), "infer")
        fit_task.set_display_name("infer: fit on the sample")
        with dsl.ParallelFor(items=shards_task.outputs["affinity"],
                             name="label shards (fan-out)",
                             parallelism=SHARD_PARALLELISM) as shard:
            # shard s's task reads its rows of A and the fit alone
            label_task = tasks.resources(label_shard(fit=fit_task.outputs["fit"],
                                                     affinity=shard, num_shards=num_shards),
                                         "label")
            (label_task.set_display_name("infer: label one row shard")
             .set_retry(num_retries=3, backoff_duration="10s", backoff_factor=2,
                        backoff_max_duration="300s"))
        joined_task = tasks.resources(gather_labels(
            manifest=manifest, fit=fit_task.outputs["fit"],
            parts=dsl.Collected(label_task.outputs["labels"]), prototypes=prototypes,
            num_classes=num_classes, method=method, seed=seed), "gather")
        joined_task.set_display_name("infer: gather the labels")
        labels, inference = joined_task.outputs["labels"], joined_task.outputs["inference"]

        with dsl.If(train == True, name="train an end model"):  # noqa: E712 - a kfp condition
            train_task = tasks.resources(train_end_model(
                manifest=manifest, features=features,
                descriptors=shards_task.outputs["descriptors"], labels=labels,
                inference=inference, seed=seed), "train")
            train_task.set_display_name("train: end classifier on the labels")
        with dsl.Else(name="no end model"):
            skip_task = tasks.resources(no_train(), "plan").set_display_name("no end model")
        end_model = dsl.OneOf(train_task.outputs["end_model"], skip_task.outputs["end_model"])
        model_uri = dsl.OneOf(train_task.outputs["model_uri"], skip_task.outputs["model_uri"])

        evaluate_task = tasks.resources(evaluate(
            manifest=manifest, prototypes=prototypes,
            affinity_sample=shards_task.outputs["view_parts"], labels=labels,
            inference=inference, source_uri=source_uri, backbone=backbone, top_k=top_k,
            num_shards=num_shards, seed=seed, end_model=end_model), "evaluate")
        tasks.bucket_access(evaluate_task).set_display_name("evaluate and report")

        return Outputs(manifest=manifest, features=features,
                       prototypes=prototypes, labels=labels, inference=inference,
                       metrics=evaluate_task.outputs["metrics_json"],
                       report=evaluate_task.outputs["report"], model_uri=model_uri)

    return goggles_pipeline


goggles_pipeline = build(TaskSettings())
"""The pipeline as ``goggles run`` runs it and ``python pipeline.py`` compiles it by default."""


def pipeline_for(profile: str = "default", settings: ClusterSettings | None = None,
                 ) -> dsl.base_component.BaseComponent:
    """:func:`goggles_pipeline` built with a profile's cluster settings (see :data:`PROFILES`)
    and ``settings`` (images, pull secret, GPU; :class:`ClusterSettings`)."""
    return build(task_settings(profile, settings))


def task_settings(profile: str = "default", settings: ClusterSettings | None = None
                  ) -> TaskSettings:
    """The :class:`TaskSettings` of a profile (checked) with ``settings`` adjusted to its node
    pools."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    return TaskSettings(profile, _profile_settings(profile, settings or ClusterSettings()))


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
