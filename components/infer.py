"""The infer component: probabilistic labels by EM on the collected affinity shards."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Output

from components.image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def infer(manifest: Input[Dataset], features: Input[Dataset], prototypes: Input[Dataset],
          affinity_shards: Input[list[Dataset]], num_classes: int, method: str, max_iter: int,
          seed: int, dev_labels_uri: str, labels: Output[Dataset],
          inference: Output[Artifact]) -> None:
    """Class inference (paper §4) via :func:`goggles.steps.run_infer`.

    Parameters
    ----------
    features : the extract stage's filter maps (read by ``graph-em`` and ``backbone``).
    affinity_shards : the fan-in (``dsl.Collected``) of every affinity shard, any order.
    num_classes, method, max_iter, seed : :class:`goggles.config.InferConfig`.
    dev_labels_uri : optional CSV/Parquet of ``uri,label`` naming the clusters.
    labels : Parquet ``image_id, uri, probs, label, label_name, confidence`` ([N] rows, K probs).
    inference : JSON of the EM trace, k-means start and warnings; metadata lists the
        affinity shard URIs it read.
    """
    import time

    import goggles
    from goggles import steps
    from goggles.config import InferConfig

    config = InferConfig(num_classes=num_classes, method=method, max_iter=max_iter, seed=seed)
    shard_uris = [shard.path for shard in affinity_shards]
    start = time.perf_counter()
    result = steps.run_infer(config, manifest.path, prototypes.path, shard_uris, labels.path,
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
