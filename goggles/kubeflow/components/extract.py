"""The extract components: ``extract_part`` (CNN filter maps, prototypes and descriptors of one
row shard, one task per shard) and ``gather_features`` (the prototypes within the budget, every
image's descriptors); :mod:`goggles.pipeline.extract` is what they run."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from goggles.kubeflow.components.image import BASE_IMAGE, GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def extract_part(manifest: Input[Dataset], shard_id: int, num_shards: int, backbone: str,
                 weights_uri: str, weights_sha256: str, top_k: int, max_prototypes: int,
                 num_classes: int, seed: int, device: str, descriptor_backbone: str,
                 feature_cache_uri: str, maps: Output[Dataset], summary: Output[Dataset],
                 descriptors: Output[Dataset]) -> None:
    """One extraction part (paper §3.1) via :func:`goggles.pipeline.extract.run_extract_part`.

    Parameters
    ----------
    manifest : the ingest stage's manifest (Parquet).
    shard_id, num_shards : which near-equal row range of the accepted images (the affinity
        shard of the same id reads this part's maps alone).
    backbone, weights_uri, weights_sha256, top_k, device, descriptor_backbone,
    feature_cache_uri :
        :class:`goggles.features.config.ExtractConfig`; with a feature cache, only the images
        it lacks are extracted.
    max_prototypes, num_classes, seed : the prototype cap (-1: chosen from the images and the
        classes) and its seed: the part keeps the candidates the gather may choose.
    maps : the part's filter maps: ``shard-NNNNN.npy`` ([n, C, H, W] float32), ``index.parquet``,
        its rows' descriptors and ImageNet logits (when the weights carry the classifier) and
        ``meta.json`` (its ``part``: ``shard_id``, ``num_parts``, ``start``, ``stop``).
    summary : what the gather step reads: ``part.json`` and ``candidates.parquet`` (the
        candidate prototypes the part kept for the budget); its metadata names the maps' URI.
    descriptors : the rows' descriptors (and logits) again, for the train task alone.
    """
    import time

    import torch

    import goggles
    from goggles.pipeline.extract import run_extract_part
    from goggles.pipeline.wiring import stage_config

    config = stage_config("extract", {
        "backbone": backbone, "weights_uri": weights_uri, "weights_sha256": weights_sha256,
        "top_k": top_k, "max_prototypes": max_prototypes, "seed": seed, "device": device,
        "descriptor_backbone": descriptor_backbone, "feature_cache_uri": feature_cache_uri})
    start = time.perf_counter()
    result = run_extract_part(config, manifest.path, shard_id, num_shards, maps.path,
                              summary.path, num_classes=num_classes,
                              descriptors_uri=descriptors.path)
    common = {"shard_id": shard_id, "num_shards": num_shards, "start": result["start"],
              "stop": result["stop"], "backbone": backbone, "device": result["device"],
              "goggles_version": goggles.__version__, "torch_version": torch.__version__,
              "seconds": round(time.perf_counter() - start, 3)}
    maps.metadata.update({**common, "format": "npy-shards", "dtype": "float32",
                          "filter_map_shape": result["shape"]})
    descriptors.metadata.update({**common, "format": "npy",
                                 "descriptors": result["descriptors"]})
    summary.metadata.update({**common, "maps_uri": maps.uri,
                             "features_computed": result["features_computed"],
                             "features_reused": result["features_reused"]})


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def gather_features(summaries: Input[list[Dataset]], top_k: int, max_prototypes: int,
                    num_classes: int, seed: int, features: Output[Dataset],
                    prototypes: Output[Dataset]) -> None:
    """Join the extraction parts (:func:`goggles.pipeline.extract.run_gather`): it reads their
    summaries, never their filter maps.

    Parameters
    ----------
    summaries : the fan-in (``dsl.Collected``) of every part's summary, any order.
    top_k : prototypes per image (recorded).
    max_prototypes, seed : the cap on the prototypes (-1: chosen from the images and
        ``num_classes``, :func:`goggles.features.budget.prototype_budget`) and the seed of its
        uniform sample.
    features : ``meta.json`` listing the parts (the descriptors and logits stay in them);
        metadata lists the parts' maps (``maps_uris``, in row order).
    prototypes : Parquet ``prototype_id, image_id, h, w, channel, vector``; metadata:
        ``num_prototypes``, ``vector_dim``, backbone, weights source, ``features_computed`` and
        ``features_reused`` (images extracted, images read from the feature cache), seconds
        (the parts' and this task's).
    """
    import time

    import goggles
    from goggles.pipeline.extract import run_gather
    from goggles.pipeline.wiring import stage_config

    start = time.perf_counter()
    config = stage_config("extract", {"top_k": top_k, "max_prototypes": max_prototypes,
                                      "seed": seed})
    result = run_gather(config, [part.path for part in summaries], features.path,
                        prototypes.path, num_classes=num_classes)
    parts = sorted(summaries, key=lambda part: int(part.metadata["shard_id"]))
    seconds = sum(float(part.metadata.get("seconds", 0.0)) for part in parts)
    common = {"backbone": result["backbone"], "weights_source": result["weights_source"],
              "device": result["device"], "goggles_version": goggles.__version__,
              "seconds": round(seconds + time.perf_counter() - start, 3),
              "features_computed": result["features_computed"],
              "features_reused": result["features_reused"],
              **({"preprocessing": result["preprocessing"]} if "preprocessing" in result else {})}
    features.metadata.update({**common, "format": "npy", "n_images": result["n_images"],
                              "filter_map_shape": result["filter_map_shape"],
                              "maps_uris": [str(part.metadata["maps_uri"]) for part in parts]})
    prototypes.metadata.update({**common, "format": "parquet",
                                "num_prototypes": result["num_prototypes"],
                                "prototypes_found": result["prototypes_found"],
                                "prototype_budget": result["prototype_budget"],
                                "top_k": top_k, "vector_dim": result["filter_map_shape"][0]})
