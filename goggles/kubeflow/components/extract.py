"""The extract component: CNN filter maps of every accepted image and their prototypes."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from goggles.kubeflow.components.image import GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def extract(manifest: Input[Dataset], backbone: str, weights_uri: str, top_k: int,
            max_prototypes: int, seed: int, device: str, descriptor_backbone: str,
            feature_cache_uri: str, features: Output[Dataset],
            prototypes: Output[Dataset]) -> None:
    """Filter maps and prototypes (paper §3.1) via :func:`goggles.pipeline.stages.run_extract`.

    Parameters
    ----------
    manifest : the ingest stage's manifest (Parquet).
    backbone, weights_uri, top_k, max_prototypes, seed, device, descriptor_backbone,
    feature_cache_uri : :class:`goggles.features.config.ExtractConfig`; with a feature cache,
        only the images it lacks are extracted.
    features : folder of ``shard-NNNNN.npy`` ([n, C, H, W] float32), ``index.parquet``,
        ``descriptors-<network>.npy`` ([N, 2048] float32, for graph EM) and ``meta.json``;
        metadata: ``n_images``, ``filter_map_shape`` [C, H, W], backbone.
    prototypes : Parquet ``prototype_id, image_id, h, w, channel, vector``; metadata:
        ``num_prototypes``, ``vector_dim``, backbone, weights source, ``features_computed`` and
        ``features_reused`` (images extracted, images read from the feature cache).
    """
    import time

    import torch

    import goggles
    from goggles.pipeline import stages
    from goggles.pipeline.wiring import stage_config

    config = stage_config("extract", {
        "backbone": backbone, "weights_uri": weights_uri, "top_k": top_k,
        "max_prototypes": max_prototypes, "seed": seed, "device": device,
        "descriptor_backbone": descriptor_backbone, "feature_cache_uri": feature_cache_uri})
    start = time.perf_counter()
    result = stages.run_extract(config, manifest.path, features.path, prototypes.path)
    seconds = round(time.perf_counter() - start, 3)
    common = {"backbone": backbone, "weights_source": result["weights_source"],
              "device": result["device"], "goggles_version": goggles.__version__,
              "torch_version": torch.__version__, "seconds": seconds,
              "features_computed": result["features_computed"],
              "features_reused": result["features_reused"]}
    features.metadata.update(common)
    features.metadata.update({"format": "npy-shards", "n_images": result["n_images"],
                              "filter_map_shape": result["filter_map_shape"],
                              "dtype": "float32"})
    prototypes.metadata.update(common)
    prototypes.metadata.update({"format": "parquet", "num_prototypes": result["num_prototypes"],
                                "prototypes_found": result["prototypes_found"],
                                "top_k": top_k, "vector_dim": result["filter_map_shape"][0]})
