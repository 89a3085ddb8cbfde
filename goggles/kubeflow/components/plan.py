"""The shard plan: the shard ids the fan-outs iterate over (``dsl.ParallelFor``) and graph EM's
sample."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from goggles.kubeflow.components.image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def plan_shards(manifest: Input[Dataset], num_shards: int, num_classes: int, method: str,
                sample: Output[Dataset], dev_labels_uri: str = "", seed: int = 0
                ) -> NamedTuple("Plan", [("shard_ids", list),  # type: ignore[valid-type]  # noqa: UP014
                                         ("num_shards", int)]):
    """The run's shards (``num_shards``, or for 0 one per 10,240 accepted images:
    :func:`goggles.pipeline.wiring.shard_count`) and their ids, after checking the run fits the
    accepted images
    (:func:`goggles.pipeline.wiring.check_counts`, as the in-process runner does), and graph
    EM's sample of the images (:func:`goggles.pipeline.fanout.run_plan_sample`).

    Reads the manifest's metadata (written by ``ingest``) and, with dev labels, the manifest's
    ``uri, status, error`` (:func:`goggles.pipeline.wiring.check_dev_labels_ingested`: dev labels
    that name only rejected images), so it starts in about a second and fails before the
    expensive extraction when the run cannot work.

    Parameters
    ----------
    method : the inference method (graph EM fits on a sample, the others on every image).
    sample : ``sample.npy`` (the rows the fit reads: graph EM's, at most 20,000 and the
        dev-labeled ones) and ``meta.json`` (N, the dev labels matched to rows): each affinity
        shard writes its rows in it apart, so the fit reads no other row of A.

    Returns
    -------
    shard_ids : ``[0 .. S-1]``, the ids the fan-outs iterate over.
    num_shards : S, the shards every later task is given (and checks its inputs against).
    """
    import logging

    from goggles.pipeline.costs import IMAGES_PER_SHARD, recommended_shards
    from goggles.pipeline.fanout import run_plan_sample
    from goggles.pipeline.wiring import (
        check_counts,
        check_dev_labels_ingested,
        shard_count,
        stage_config,
    )

    n_images = int(manifest.metadata["n_images"])
    check_counts(n_images, num_classes, num_shards)
    num_shards = shard_count(num_shards, n_images)
    if num_shards < recommended_shards(n_images):
        logging.getLogger("goggles").warning(
            "num_shards=%d for %d images: each extract, affinity and label pod takes %d images, "
            "more than the %d that keep a pod's reads under 2 GB; goggles plan --images %d "
            "recommends num_shards=%d", num_shards, n_images, -(-n_images // num_shards),
            IMAGES_PER_SHARD, n_images, recommended_shards(n_images))
    check_dev_labels_ingested(dev_labels_uri, manifest.path, num_classes)
    config = stage_config("infer", {"num_classes": num_classes, "method": method, "seed": seed})
    sample.metadata.update(run_plan_sample(config, manifest.path, dev_labels_uri, sample.path))
    return (list(range(num_shards)), num_shards)
