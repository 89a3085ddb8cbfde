"""The infer components, fanned out over the row shards (:mod:`goggles.pipeline.fanout`): a fit
on the plan's sample (``infer_fit``), one ``label_shard`` per shard, ``gather_labels``."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Output

from goggles.kubeflow.components.image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def infer_fit(sample: Input[Dataset], sample_parts: Input[list[Dataset]],
              prototypes: Input[Dataset], num_classes: int, method: str, max_iter: int,
              seed: int, device: str, fit: Output[Artifact]) -> None:
    """Class inference (paper §4) fitted on the plan's sample
    (:func:`goggles.pipeline.fanout.run_fit`): graph EM's sample of at most 20,000 images, or
    every image for the other methods. The first task of the infer fan-out.

    Parameters
    ----------
    sample : the plan's sample (rows, N, the dev labels matched to rows).
    sample_parts : every affinity shard's rows in the sample with their descriptors: the only
        rows of A this task reads.
    prototypes : the gathered prototypes (their source images).
    num_classes, method, max_iter, seed, device : :class:`goggles.inference.config.InferConfig`
        (``graph-em``, ``em``, ``kmeans``, ``em-random``, ``pgm``, ``backbone``).
    fit : what each label task and the gather read: the sample's state, the report's Gaussians
        and the run's inference record.
    """
    import time

    from goggles.pipeline.fanout import run_fit
    from goggles.pipeline.wiring import stage_config

    config = stage_config("infer", {"num_classes": num_classes, "method": method,
                                    "max_iter": max_iter, "seed": seed, "device": device})
    start = time.perf_counter()
    result = run_fit(config, sample.path, [part.path for part in sample_parts],
                     prototypes.path, fit.path)
    fit.metadata.update({**result, "seconds": round(time.perf_counter() - start, 3)})


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def label_shard(fit: Input[Artifact], affinity: Input[Dataset], num_shards: int,
                labels: Output[Dataset]) -> None:
    """Labels of one affinity shard's images from graph EM's fit on its sample
    (:func:`goggles.pipeline.fanout.run_label_shard`): one task per shard.

    Parameters
    ----------
    fit : the fit task's output.
    affinity : one affinity shard (its rows of A and their descriptors).
    num_shards : the run's shard count (checked against the shard's).
    labels : posteriors, initial labels and confidence of the shard's rows.
    """
    import time

    from goggles.pipeline.fanout import run_label_shard

    start = time.perf_counter()
    result = run_label_shard(fit.path, affinity.path, labels.path, num_shards=num_shards)
    labels.metadata.update({**result, "seconds": round(time.perf_counter() - start, 3),
                            "affinity_uri": affinity.uri})


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def gather_labels(manifest: Input[Dataset], fit: Input[Artifact], parts: Input[list[Dataset]],
                  prototypes: Input[Dataset], num_classes: int, method: str, seed: int,
                  labels: Output[Dataset], inference: Output[Artifact]) -> None:
    """The label tasks' parts joined into the run's labels and inference record
    (:func:`goggles.pipeline.fanout.run_gather_labels`), as the one-task infer writes them.

    Parameters
    ----------
    manifest : the ingest stage's manifest (the images' ids and URIs).
    fit : the fit task's output.
    parts : every label task's output, any order.
    prototypes : the gathered prototypes.
    num_classes, method, seed : recorded in the labels' metadata.
    labels : Parquet ``image_id, uri, probs, label, label_name, confidence`` ([N] rows, K
        probs).
    inference : JSON of the fit's trace, start, warnings, dev set and images to label next;
        metadata lists the affinity shard URIs the label tasks read.
    """
    import time

    import goggles
    from goggles.pipeline.fanout import run_gather_labels

    start = time.perf_counter()
    result = run_gather_labels(manifest.path, fit.path, [part.path for part in parts],
                               prototypes.path, labels.path, inference.path)
    shard_seconds = [float(part.metadata.get("seconds", 0.0)) for part in parts]
    seconds = round(float(fit.metadata.get("seconds", 0.0)) + sum(shard_seconds)
                    + time.perf_counter() - start, 3)
    labels.metadata.update({
        "format": "parquet", "n_images": int(manifest.metadata["n_images"]),
        "num_classes": num_classes, "num_prototypes": result["num_prototypes"],
        "method": method, "seed": seed, "em_iterations": result["em_iterations"],
        "converged": result["converged"], "goggles_version": goggles.__version__,
        "seconds": seconds, "shard_seconds": shard_seconds})
    inference.metadata.update({"format": "json", "em_iterations": result["em_iterations"],
                               "converged": result["converged"],
                               "affinity_uris": [part.metadata["affinity_uri"]
                                                 for part in parts]})
