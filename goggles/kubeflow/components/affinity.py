"""The affinity component: one row shard of the affinity matrix, one task per shard."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from goggles.kubeflow.components.image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def affinity_shard(features: Input[Dataset], prototypes: Input[Dataset], shard_id: int,
                   num_shards: int, device: str, affinity: Output[Dataset]) -> None:
    """Rows ``[start, stop)`` of the [N, M] affinity matrix (paper §3.2) via
    :func:`goggles.pipeline.stages.run_affinity`.

    Parameters
    ----------
    features, prototypes : the extract stage's outputs.
    shard_id : which of the ``num_shards`` near-equal row ranges to compute.
    affinity : folder of ``affinity.npy`` ([stop-start, M] float32) and ``meta.json``;
        metadata: ``start``, ``stop``, ``shape``, ``shard_id``, ``num_shards``.
    """
    import time

    import goggles
    from goggles.pipeline import stages
    from goggles.pipeline.wiring import stage_config

    config = stage_config("affinity", {"num_shards": num_shards, "device": device})
    start = time.perf_counter()
    result = stages.run_affinity(config, features.path, prototypes.path, shard_id, affinity.path)
    affinity.metadata.update({
        "format": "npy", "shard_id": shard_id, "num_shards": num_shards,
        "start": result["start"], "stop": result["stop"],
        "shape": [result["stop"] - result["start"], result["num_prototypes"]],
        "dtype": "float32", "goggles_version": goggles.__version__,
        "seconds": round(time.perf_counter() - start, 3)})
