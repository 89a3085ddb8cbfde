"""The apply pipeline: ingest → apply, labeling new images with a trained run (no refit), for
scheduled runs over images that keep arriving.

``goggles compile --pipeline apply`` writes it; ``goggles schedule --package FILE`` (or
``submit``) runs it with ``model_uri=gs://bucket/run source_uri=gs://bucket/new``. The labels,
manifest and metrics follow the labeling run's contract (goggles.io.artifacts); the apply task
runs the CNN, so it gets extract's GPU settings under the ``default`` and ``prod`` profiles.
"""

from typing import NamedTuple

from kfp import compiler, dsl, kubernetes
from kfp.dsl import Artifact, Dataset

from goggles.kubeflow import pipeline as labels_pipeline
from goggles.kubeflow.components import ingest
from goggles.kubeflow.components.apply import apply_model

APPLY_PIPELINE_NAME = "goggles-apply"
APPLY_INFO = {"name": APPLY_PIPELINE_NAME,
              "display_name": "goggles: label new images with a trained run",
              "description": "Label new images with a finished goggles run's end model or "
                             "fitted labeler, without refitting."}


class ApplyOutputs(NamedTuple):
    """What an apply run leaves behind."""

    manifest: Dataset
    labels: Dataset
    metrics: Artifact


@dsl.pipeline(**APPLY_INFO)
def goggles_apply_pipeline(
    model_uri: str = "",
    source_uri: str = "",
    labeler: str = "auto",
    device: str = "auto",
    follow_symlinks: bool = False,
) -> ApplyOutputs:
    """Labels for the images under ``source_uri`` from the trained run at ``model_uri``.

    Parameters
    ----------
    model_uri : a finished run's output (or its ``model/`` folder) the pods can read.
    source_uri : folder or bucket prefix of the new images; first-level folders are truth.
    labeler : ``auto``, ``end-model`` or ``affinity`` (docs/training.md).
    device : ``auto`` uses the GPU where the task has one.
    follow_symlinks : read what symlinks in a local source lead to outside it.
    """
    build = labels_pipeline._build
    ingest_task = labels_pipeline._bucket_access(labels_pipeline._resources(
        ingest(source_uri=source_uri, follow_symlinks=follow_symlinks), "ingest"))
    ingest_task.set_display_name("ingest: list and validate the new images")
    apply_task = labels_pipeline._bucket_access(labels_pipeline._resources(
        apply_model(manifest=ingest_task.outputs["manifest"], model_uri=model_uri,
                    labeler=labeler, device=device), "extract"))
    apply_task.set_display_name("apply: label with the trained run")
    if build["gpu"]:
        apply_task.set_accelerator_type(labels_pipeline.GPU_RESOURCE).set_accelerator_limit(1)
        kubernetes.add_node_selector(apply_task, *labels_pipeline.GPU_NODE_SELECTOR)
        kubernetes.add_toleration(apply_task, **labels_pipeline.GPU_TOLERATION)
    return ApplyOutputs(manifest=ingest_task.outputs["manifest"],
                        labels=apply_task.outputs["labels"],
                        metrics=apply_task.outputs["metrics_json"])


def compile_apply_pipeline(package_path: str = "goggles_apply_pipeline.yaml",
                           profile: str = "default") -> str:
    """Compile :func:`goggles_apply_pipeline` with a profile's cluster settings."""
    if profile not in labels_pipeline.PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of "
                         f"{', '.join(labels_pipeline.PROFILES)}")
    labels_pipeline._build.update(labels_pipeline.PROFILES[profile])
    try:
        built = dsl.pipeline(**APPLY_INFO)(goggles_apply_pipeline.pipeline_func)
        compiler.Compiler().compile(built, package_path=package_path)
    finally:
        labels_pipeline._build.update(labels_pipeline.PROFILES["default"])
    return package_path
