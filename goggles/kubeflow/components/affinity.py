"""The affinity component: one row shard of the affinity matrix, one task per shard."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from goggles.kubeflow.components.image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def affinity_shard(maps: Input[Dataset], prototypes: Input[Dataset], sample: Input[Dataset],
                   num_shards: int, device: str, affinity: Output[Dataset],
                   sample_part: Output[Dataset], view_part: Output[Dataset]) -> None:
    """Rows ``[start, stop)`` of the [N, M] affinity matrix (paper §3.2) via
    :func:`goggles.pipeline.stages.run_affinity`: the rows of one extraction part.

    Parameters
    ----------
    maps : one extraction part's filter maps (its ``meta.json`` says which rows): the only
        filter maps this task reads.
    prototypes : the gathered prototypes.
    sample : the plan's sample of graph EM (:mod:`goggles.pipeline.fanout`).
    num_shards : the run's shard count (checked against the part's).
    affinity : folder of ``affinity.npy`` ([stop-start, M] float32), its rows' descriptors
        (``descriptors-<i>.npy``, for its label task) and ``meta.json``; metadata: ``start``,
        ``stop``, ``shape``, ``shard_id``, ``num_shards``.
    sample_part : the shard's rows in the sample with their descriptors (what infer's fit
        reads of this shard).
    view_part : the shard's rows in the report's view (what evaluate reads of this shard).
    """
    import time

    import goggles
    from goggles.pipeline import stages
    from goggles.pipeline.wiring import stage_config

    config = stage_config("affinity", {"num_shards": num_shards, "device": device})
    start = time.perf_counter()
    result = stages.run_affinity(config, maps.path, prototypes.path, affinity.path,
                                 sample_uri=sample.path, sample_part_uri=sample_part.path,
                                 view_part_uri=view_part.path)
    seconds = round(time.perf_counter() - start, 3)
    sample_part.metadata.update({"rows": result["sample_rows"], "start": result["start"],
                                 "seconds": seconds})
    view_part.metadata.update({"start": result["start"], "seconds": seconds})
    affinity.metadata.update({
        "format": "npy", "shard_id": result["shard_id"], "num_shards": num_shards,
        "start": result["start"], "stop": result["stop"],
        "shape": [result["stop"] - result["start"], result["num_prototypes"]],
        "dtype": "float32", "goggles_version": goggles.__version__,
        "seconds": seconds})
