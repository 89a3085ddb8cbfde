"""The infer component: probabilistic labels on the collected affinity shards."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Output

from goggles.kubeflow.components.image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def infer(manifest: Input[Dataset], features: Input[Dataset], prototypes: Input[Dataset],
          affinity_shards: Input[list[Dataset]], num_classes: int, method: str, max_iter: int,
          seed: int, device: str, dev_labels_uri: str, labels: Output[Dataset],
          inference: Output[Artifact]) -> None:
    """Class inference (paper §4) via :func:`goggles.pipeline.stages.run_infer`.

    Parameters
    ----------
    features : the gathered features: descriptors and ImageNet logits, no filter maps (read by
        the methods that need them, e.g. ``graph-em``).
    affinity_shards : the fan-in (``dsl.Collected``) of every affinity shard, any order.
    num_classes, method, max_iter, seed, device : :class:`goggles.inference.config.InferConfig`.
    dev_labels_uri : optional CSV/Parquet of ``uri,label`` naming the clusters.
    labels : Parquet ``image_id, uri, probs, label, label_name, confidence`` ([N] rows, K probs).
    inference : JSON of the fit's trace, start and warnings; metadata lists the affinity shard
        URIs it read.
    """
    import time

    import goggles
    from goggles.pipeline import stages
    from goggles.pipeline.wiring import stage_config

    config = stage_config("infer", {"num_classes": num_classes, "method": method,
                                    "max_iter": max_iter, "seed": seed, "device": device})
    shard_uris = [shard.path for shard in affinity_shards]
    start = time.perf_counter()
    result = stages.run_infer(config, manifest.path, prototypes.path, shard_uris, labels.path,
                              inference.path, dev_labels_uri, features_uri=features.path)
    seconds = round(time.perf_counter() - start, 3)
    labels.metadata.update({
        "format": "parquet", "n_images": int(manifest.metadata["n_images"]),
        "num_classes": num_classes, "num_prototypes": result["num_prototypes"],
        "method": method, "seed": seed, "em_iterations": result["em_iterations"],
        "converged": result["converged"], "goggles_version": goggles.__version__,
        "seconds": seconds})
    inference.metadata.update({"format": "json", "em_iterations": result["em_iterations"],
                               "converged": result["converged"],
                               "affinity_uris": [shard.uri for shard in affinity_shards]})
