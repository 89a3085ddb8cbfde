"""The shard plan: the shard ids the affinity stage fans out over (``dsl.ParallelFor``)."""

from kfp import dsl
from kfp.dsl import Dataset, Input

from components.image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def plan_shards(manifest: Input[Dataset], num_shards: int, num_classes: int) -> list[int]:
    """Shard ids ``0 .. num_shards-1``, after checking the run fits the accepted images.

    Reads only the manifest's metadata (written by ``ingest``), so it starts in well under a
    second and fails before the expensive extraction when the parameters cannot work.

    Returns
    -------
    [num_shards] shard ids.
    """
    n_images = int(manifest.metadata["n_images"])
    if n_images < 1:
        raise ValueError("no image was accepted: every file was rejected or none was found; "
                         "see the manifest's error column and check source_uri")
    if num_classes > n_images:
        raise ValueError(f"num_classes={num_classes} exceeds the {n_images} accepted images; "
                         "use fewer classes or add images")
    if not 1 <= num_shards <= n_images:
        raise ValueError(f"num_shards={num_shards} must be between 1 and the {n_images} "
                         "accepted images; use fewer shards")
    return list(range(num_shards))
