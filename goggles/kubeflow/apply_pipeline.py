"""The apply pipeline: list → ingest → apply, labeling new images with a trained run (no
refit), for scheduled runs over images that keep arriving.

``goggles compile --pipeline apply`` writes it; ``goggles schedule --package FILE`` (or
``submit``) runs it with ``model_uri=gs://bucket/run source_uri=gs://bucket/new``. The labels,
manifest and metrics follow the labeling run's contract (goggles.io.artifacts); the apply task
runs the CNN, so it gets extract's GPU settings
(:meth:`goggles.kubeflow.pipeline.TaskSettings.gpu`).
"""

from typing import NamedTuple

from kfp import compiler, dsl
from kfp.dsl import Artifact, Dataset

from goggles.kubeflow import pipeline as labels_pipeline
from goggles.kubeflow.components.apply import apply_model
from goggles.kubeflow.settings import ClusterSettings, describe_parameters

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


def build_apply(tasks: labels_pipeline.TaskSettings) -> dsl.base_component.BaseComponent:
    """The apply pipeline with ``tasks``' settings on every task."""
    ingest_parts = tasks.ingest_parts()

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
        # new images in the bucket are never answered from an earlier run's cache
        ingest_task = tasks.listed_ingest(ingest_parts, source_uri, follow_symlinks)
        apply_task = tasks.bucket_access(tasks.resources(
            apply_model(manifest=ingest_task.outputs["manifest"], model_uri=model_uri,
                        labeler=labeler, device=device), "extract"))
        # uncached: the model at model_uri may have been retrained since (same URI, new weights)
        (apply_task.set_caching_options(enable_caching=False)
         .set_display_name("apply: label with the trained run"))
        tasks.gpu(apply_task)
        return ApplyOutputs(manifest=ingest_task.outputs["manifest"],
                            labels=apply_task.outputs["labels"],
                            metrics=apply_task.outputs["metrics_json"])

    return goggles_apply_pipeline


goggles_apply_pipeline = build_apply(labels_pipeline.TaskSettings())


APPLY_HELP = {
    "model_uri": "a finished run's output folder (either labeler) or its model/ folder (the end "
                 "model), readable by the pods",
    "labeler": "auto (the run's own fit when model_uri is a run's output, else the end model), "
               "end-model or affinity; see docs/training.md",
}


def compile_apply_pipeline(package_path: str = "goggles_apply_pipeline.yaml",
                           profile: str = "default",
                           settings: ClusterSettings | None = None) -> str:
    """Compile :func:`goggles_apply_pipeline` with a profile's cluster settings and ``settings``
    (images, pull secret, GPU), the parameters described as the labeling pipeline's are."""
    built = build_apply(labels_pipeline.task_settings(profile, settings))
    compiler.Compiler().compile(built, package_path=package_path)
    return describe_parameters(package_path, extra=APPLY_HELP)
