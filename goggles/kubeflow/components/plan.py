"""The shard plan: the shard ids the affinity stage fans out over (``dsl.ParallelFor``)."""

from kfp import dsl
from kfp.dsl import Dataset, Input

from goggles.kubeflow.components.image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def plan_shards(manifest: Input[Dataset], num_shards: int, num_classes: int,
                dev_labels_uri: str = "") -> list[int]:
    """Shard ids ``0 .. num_shards-1``, after checking the run fits the accepted images
    (:func:`goggles.pipeline.wiring.check_counts`, as the in-process runner does).

    Reads the manifest's metadata (written by ``ingest``) and, with dev labels, the manifest's
    ``uri, status, error`` (:func:`goggles.pipeline.wiring.check_dev_labels_ingested`: dev labels
    that name only rejected images), so it starts in about a second and fails before the
    expensive extraction when the run cannot work.

    Returns
    -------
    [num_shards] shard ids.
    """
    from goggles.pipeline.wiring import check_counts, check_dev_labels_ingested

    check_counts(int(manifest.metadata["n_images"]), num_classes, num_shards)
    check_dev_labels_ingested(dev_labels_uri, manifest.path, num_classes)
    return list(range(num_shards))
