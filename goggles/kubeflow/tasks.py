"""What one compile sets on every task of the goggles pipelines (:mod:`goggles.kubeflow.pipeline`,
:mod:`goggles.kubeflow.apply_pipeline`): the profiles, each stage's resources, the namespace's
Secret and ConfigMap, the GPU settings (:class:`TaskSettings`), and the ingest fan-out both
pipelines start with."""

import dataclasses
from typing import List  # noqa: UP035 - kfp reads List[...] in pipeline signatures

from kfp import dsl, kubernetes
from kfp.dsl import Dataset

from goggles.kubeflow.components import ingest_part, join_manifest, list_source
from goggles.kubeflow.settings import DEFAULT_GPU_NODE_SELECTOR, ClusterSettings

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
