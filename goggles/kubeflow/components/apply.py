"""The apply component: label a new source's images with a trained run, without refitting."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Output

from goggles.kubeflow.components.image import GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def apply_model(manifest: Input[Dataset], model_uri: str, labeler: str, device: str,
                labels: Output[Dataset], metrics_json: Output[Artifact],
                metrics: Output[Metrics]) -> None:
    """New images' labels (:func:`goggles.pipeline.stages.run_apply`).

    Parameters
    ----------
    manifest : the ingest task's manifest of the new images.
    model_uri : a finished run's output (``OUT``, for either labeler) or its ``OUT/model``.
    labeler : ``auto``, ``end-model`` or ``affinity`` (goggles.training.apply).
    device : where the CNN runs (``auto``: the GPU when the task has one).
    labels : Parquet ``image_id, uri, probs, label, label_name, confidence``.
    metrics_json : counts, the labeler, timings and accuracy when folders give truth.
    metrics : the same scalars for the run page.
    """
    import goggles
    from goggles.pipeline import stages
    from goggles.training.config import ApplyConfig

    result = stages.run_apply(ApplyConfig(labeler=labeler, device=device), model_uri,
                              manifest.path, labels.path, metrics_json.path)
    labels.metadata.update({"format": "parquet", "n_images": result["n_images"],
                            "labeler": result["labeler"],
                            "goggles_version": goggles.__version__})
    metrics_json.metadata.update({"format": "json"})
    for name in ("n_images", "n_rejected", "num_classes", "accuracy", "images_per_s"):
        if name in result:
            metrics.log_metric(name, round(float(result[name]), 6))
