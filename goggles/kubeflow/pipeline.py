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
import logging
from typing import List, NamedTuple  # noqa: UP035 - kfp reads List[...] in pipeline signatures

from kfp import compiler, dsl
from kfp.dsl import HTML, Artifact, Dataset, Input

from goggles.kubeflow.components import (
    IMAGES,
    affinity_shard,
    evaluate,
    extract_part,
    gather_features,
    gather_labels,
    infer_fit,
    label_shard,
    no_train,
    plan_shards,
)
from goggles.kubeflow.components import train as train_end_model
from goggles.kubeflow.settings import ClusterSettings, describe_parameters
from goggles.kubeflow.tasks import (  # noqa: F401  (the cluster settings' names, used here and by callers)
    BUCKET_SECRET,
    BUCKET_SECRET_ENV,
    BUCKET_SECRET_MOUNT,
    DEFAULTS_CONFIG_MAP,
    DEFAULTS_ENV,
    GPU_RESOURCE,
    GPU_TOLERATION,
    IMAGE_USER,
    LOOP_NUMBERS,
    PROFILES,
    RESOURCES,
    SERVICE_ACCOUNT,
    SHARD_PARALLELISM,
    TASK_POD_LABEL,
    TaskSettings,
    _number_next_loop,
    task_settings,
)

PIPELINE_NAME = "goggles"
__all__ = ["IMAGES", "PIPELINE_NAME", "PROFILES", "TaskSettings", "build", "compile_pipeline",
           "goggles_pipeline", "pipeline_for", "task_settings"]
DEFAULT_PACKAGE = "goggles_pipeline.yaml"
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
        num_shards: int = 0,
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
            label task each; 0: one per 10,240 accepted images (the plan task decides).
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
        shards = plan_task.outputs["num_shards"]  # num_shards, or the plan's choice for 0
        shards_task = features_and_affinity(
            manifest=manifest, sample=plan_task.outputs["sample"],
            shard_ids=plan_task.outputs["shard_ids"], num_shards=shards, backbone=backbone,
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
                                                     affinity=shard, num_shards=shards),
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
            num_shards=shards, seed=seed, end_model=end_model), "evaluate")
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
