"""The train branch's components: ``train`` (the end classifier, a KFP ``Model``) and
``no_train`` (its ``dsl.Else``: nothing to train), whose outputs meet in a ``dsl.OneOf``."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from goggles.kubeflow.components.image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def train(manifest: Input[Dataset], features: Input[Dataset],
          descriptors: Input[list[Dataset]], labels: Input[Dataset],
          inference: Input[Artifact], seed: int, model: Output[Model],
          scores: Output[Metrics]
          ) -> NamedTuple("Trained", [("end_model", dict),  # type: ignore[valid-type]  # noqa: UP014
                                      ("model_uri", str)]):
    """The end classifier on the run's labels (:func:`goggles.pipeline.stages.run_train`).

    Parameters
    ----------
    manifest, features, labels, inference : the run's artifacts.
    descriptors : every extract part's descriptors, any order: the head's input.
    seed : the held-out split's seed.
    model : ``model.safetensors`` and ``model.json`` (:mod:`goggles.training.model`); its
        metadata holds the classes, the head and the held-out scores.
    scores : the held-out scores for the run page (accuracy ... when ground truth exists).

    Returns
    -------
    end_model : the held-out scores, which the evaluate task records in metrics.json.
    model_uri : where the model lies; the local runners copy it to OUT/model.
    """
    import time

    import goggles
    from goggles.pipeline import stages
    from goggles.pipeline.wiring import stage_config

    start = time.perf_counter()
    parts = sorted(descriptors, key=lambda part: int(part.metadata["start"]))
    result = stages.run_train(stage_config("train", {"seed": seed}), manifest.path,
                              features.path, labels.path, inference.path, model.path,
                              descriptor_uris=[part.path for part in parts])
    model.metadata.update({"format": "goggles-end-model", "framework": "pytorch",
                           "goggles_version": goggles.__version__,
                           "seconds": round(time.perf_counter() - start, 3),
                           "head": result["head"], "n_images": result["n_images"]})
    for name in ("accuracy", "supervised_accuracy", "hard_label_accuracy", "agreement",
                 "ratio_to_supervised"):
        if name in result:
            model.metadata[name] = result[name]
            scores.log_metric(f"end_model_{name}", round(float(result[name]), 6))
    return (result, model.uri)  # the annotation's fields, in order


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def no_train() -> NamedTuple("Trained", [("end_model", dict),  # type: ignore[valid-type]  # noqa: UP014
                                          ("model_uri", str)]):
    """The run trains no end model: no scores, no model."""
    return ({}, "")
