"""One function per pipeline stage, reading and writing the artifacts of
:mod:`goggles.io.artifacts`. The in-process runner, the Kubeflow components and the tests all
call these, so each stage's work is written once.

torch, torchvision and scikit-learn are imported by the stages that use them, so a task that
needs none of them (ingest, evaluate) starts without paying for their imports.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow.compute as pc

from goggles.config import StageError
from goggles.features.config import AffinityConfig, ExtractConfig
from goggles.inference.config import InferConfig
from goggles.ingest.config import IngestConfig
from goggles.io import artifacts, storage
from goggles.io.dev_labels import read_dev_labels
from goggles.training.config import ApplyConfig, TrainConfig

logger = logging.getLogger(__name__)


def source_fingerprint(config: IngestConfig, source_uri: str) -> dict[str, Any]:
    """A digest of what ingest would list under ``source_uri``: each image file's path, size
    and version (a local file's modification time, an object's generation or ETag), with the
    ingest config. It changes when a file is added, removed or rewritten; the same listing
    gives the same digest. On a cluster it is what ingest's cache key holds besides the URI,
    so a grown bucket is never answered from the cache.

    Returns ``{"fingerprint": "sha256:...", "n_files": ...}``.
    """
    from goggles.io import listing
    from goggles.io.resume import stage_key

    files = [(f.relative, f.size, f.version)
             for f in listing.list_files(source_uri, config.extensions,
                                         follow_symlinks=config.follow_symlinks)]
    return {"fingerprint": "sha256:" + stage_key("source", config.to_dict(), files),
            "n_files": len(files)}


def run_ingest(config: IngestConfig, source_uri: str, manifest_uri: str) -> dict[str, Any]:
    """List, decode and validate the images under ``source_uri``; write the manifest."""
    from goggles.ingest.manifest import build_manifest

    manifest = build_manifest(source_uri, config)
    storage.write_parquet(manifest, manifest_uri)
    n_images = int(pc.sum(pc.equal(manifest["status"], "accepted")).as_py() or 0)
    return {"n_listed": manifest.num_rows, "n_images": n_images,
            "n_rejected": manifest.num_rows - n_images}


def run_extract(config: ExtractConfig, manifest_uri: str, features_uri: str,
                prototypes_uri: str) -> dict[str, Any]:
    """Filter maps of every accepted image (sharded) and their prototypes (paper §3.1), and
    the images' bilinear descriptors for graph EM: of these maps and, when
    ``config.descriptor_backbone`` names another network, of its maps (one more pass).

    With ``config.feature_cache_uri``, each image's maps (and second descriptor) come from the
    feature cache (:mod:`goggles.features.cache`) when it holds them, keyed by the image's
    SHA-256; only the misses are computed. The result counts them: ``features_computed``,
    ``features_reused``."""
    from goggles.features.backbones import load_backbone
    from goggles.features.budget import select_within_budget
    from goggles.features.descriptors import bilinear_descriptors
    from goggles.features.device import resolve_device
    from goggles.features.extraction import extract_filter_maps
    from goggles.features.prototypes import select_prototypes

    rows = artifacts.accepted(storage.read_parquet(manifest_uri))
    if rows.num_rows == 0:
        raise StageError("the manifest has no accepted images; every file was rejected — see "
                         "the manifest's error column")
    uris = rows["uri"].to_pylist()
    hashes = rows["sha256"].to_pylist()
    image_ids = rows["image_id"].to_numpy()
    model, weights_source = load_backbone(config.backbone, config.weights_uri)
    device = resolve_device(config.device)
    writer = artifacts.FeaturesWriter(features_uri, config.shard_size)
    prototype_parts: list[artifacts.Prototypes] = []
    descriptors: list[np.ndarray] = []
    options: dict[str, Any] = {"image_size": config.image_size,
                               "batch_size": config.batch_size,
                               "num_workers": config.num_workers, "device": device,
                               "precision": config.precision}

    def on_batch(start: int, maps: np.ndarray) -> None:
        ids = image_ids[start:start + len(maps)]
        prototype_parts.append(select_prototypes(maps, ids, config.top_k))
        writer.add_maps(ids, maps)
        descriptors.append(bilinear_descriptors(maps))

    counts = {"features_computed": len(uris), "features_reused": 0}
    if config.feature_cache_uri:
        from goggles.features import incremental

        cache = incremental.open_cache(config.feature_cache_uri, "maps", config.backbone, model,
                                       image_size=config.image_size, device=device,
                                       precision=config.precision)
        found = incremental.cached_features(cache, uris, hashes, model, options,
                                            batch_size=config.batch_size, on_batch=on_batch)
        counts = {"features_computed": found.computed, "features_reused": found.reused}
    else:
        extract_filter_maps(uris, model, on_batch=on_batch, **options)
    writer.add_descriptors(config.backbone, np.concatenate(descriptors))
    second = config.descriptor_backbone
    if second not in ("none", config.backbone):
        other, _ = load_backbone(second)
        if config.feature_cache_uri:
            cache = incremental.open_cache(config.feature_cache_uri, "descriptor", second, other,
                                           image_size=config.image_size, device=device,
                                           precision=config.precision)
            described, _ = incremental.cached_descriptors(cache, uris, hashes, other, options,
                                                          batch_size=config.batch_size)
        else:
            extra: list[np.ndarray] = []
            extract_filter_maps(uris, other, **options,
                                on_batch=lambda _s, maps: extra.append(bilinear_descriptors(maps)))
            described = np.concatenate(extra)
        writer.add_descriptors(second, described)
    meta = writer.finish(backbone=config.backbone, weights=weights_source,
                         image_size=config.image_size)
    shape = meta["shape"]
    prototypes = artifacts.Prototypes.concatenate(prototype_parts, shape[0])
    found_prototypes = len(prototypes)
    if config.max_prototypes:
        prototypes = prototypes.take(select_within_budget(len(prototypes), config.max_prototypes,
                                                          seed=config.seed))
    storage.write_parquet(prototypes.to_table(), prototypes_uri)
    return {"n_images": len(uris), "num_prototypes": len(prototypes),
            "prototypes_found": found_prototypes, "filter_map_shape": shape,
            "backbone": config.backbone, "weights_source": weights_source,
            "device": str(device), **counts}


def run_affinity(config: AffinityConfig, features_uri: str, prototypes_uri: str, shard_id: int,
                 affinity_uri: str) -> dict[str, Any]:
    """Rows of the affinity matrix for shard ``shard_id`` of ``config.num_shards`` (§3.2)."""
    from goggles.features.affinity import affinity_block, shard_bounds
    from goggles.features.device import resolve_device

    meta = artifacts.read_features_meta(features_uri)
    bounds = shard_bounds(int(meta["num_images"]), config.num_shards)
    if not 0 <= shard_id < config.num_shards:
        raise StageError(f"shard_id {shard_id} is outside 0..{config.num_shards - 1}")
    start, stop = bounds[shard_id]
    prototypes = artifacts.read_prototypes(prototypes_uri)
    maps = artifacts.read_filter_maps(features_uri, start, stop, meta)
    block = affinity_block(maps, prototypes.vectors, memory_mb=config.memory_mb,
                           dtype=config.dtype, device=resolve_device(config.device))
    artifacts.write_affinity_shard(affinity_uri, block, start=start, shard_id=shard_id,
                                   num_shards=config.num_shards, dtype=config.dtype)
    return {"start": start, "stop": stop, "num_prototypes": len(prototypes)}


def run_infer(config: InferConfig, manifest_uri: str, prototypes_uri: str,
              affinity_uris: Sequence[str], labels_uri: str, inference_uri: str,
              dev_labels_uri: str = "", features_uri: str = "") -> dict[str, Any]:
    """Probabilistic labels by ``config.method`` (:mod:`goggles.inference.registry`) on the
    stored affinity shards, streamed; methods that read the extract stage's filter maps or
    descriptors find them under ``features_uri``."""
    from goggles.inference.base import label_confidence
    from goggles.inference.registry import create
    from goggles.inference.seeds import Seeds
    from goggles.inference.summary import inference_state
    from goggles.report.evaluation import name_clusters

    rows = artifacts.accepted(storage.read_parquet(manifest_uri))
    n = rows.num_rows
    if config.num_classes > n:
        raise StageError(f"num_classes={config.num_classes} exceeds the {n} accepted images; "
                         f"use at most {n} classes or add images")
    affinity = artifacts.StoredShards(affinity_uris)  # streamed: never concatenated
    source_index = artifacts.read_source_index(prototypes_uri)
    if affinity.shape != (n, len(source_index)):
        raise StageError(f"affinity is {affinity.shape} but there are {n} images and "
                         f"{len(source_index)} prototypes; rerun the affinity stage")
    model = create(config)
    filter_maps = descriptors = None
    if model.reads:
        if not features_uri:
            raise StageError(f"method {config.method!r} reads the filter maps: pass "
                             "features_uri (the extract stage's features)")
        meta = artifacts.read_features_meta(features_uri)
        filter_maps = artifacts.stored_filter_maps(features_uri, meta=meta)
        if "descriptors" in model.reads:
            descriptors = artifacts.stored_descriptors(features_uri, meta=meta)
    seeds = dev = None  # dev labels seed inference (Seeds), then name the clusters
    if dev_labels_uri:
        dev_rows, dev_names = read_dev_labels(dev_labels_uri, rows)
        seeds = Seeds.from_names(dev_rows, dev_names, config.num_classes)
        dev = {"rows": dev_rows.tolist(), "labels": dev_names, "seeded": seeds is not None}
    model.fit(affinity, source_index, filter_maps=filter_maps, descriptors=descriptors,
              seeds=seeds)
    assert model.posteriors_ is not None
    probs = model.posteriors_
    names = list(model.cluster_names_ or [f"cluster_{k}" for k in range(config.num_classes)])
    if dev is not None:
        names = name_clusters(dev_names, probs.argmax(axis=1)[dev_rows], config.num_classes)
    storage.write_parquet(artifacts.labels_table(rows, probs, names, label_confidence(model)),
                          labels_uri)
    state = inference_state(model, config.method, names, dev)
    storage.write_json(state, inference_uri)
    return {"num_prototypes": int(len(source_index)), "em_iterations": state["em_iterations"],
            "converged": state["converged"], "num_classes": config.num_classes}


def run_train(config: TrainConfig, manifest_uri: str, features_uri: str, labels_uri: str,
              inference_uri: str, model_uri: str) -> dict[str, Any]:
    """Train the end classifier on the run's labels and the descriptors its extract stage wrote
    (:mod:`goggles.training.train`); write it as a model folder at ``model_uri``
    (:mod:`goggles.training.model`). Returns its held-out scores, ``metrics.json``'s
    ``end_model``."""
    from goggles.features.descriptors import descriptors_of
    from goggles.training.model import describe, network_entry, save_model
    from goggles.training.train import train_end_model

    rows = artifacts.accepted(storage.read_parquet(manifest_uri))
    labels = storage.read_parquet(labels_uri).sort_by("image_id")
    if labels["image_id"].to_pylist() != rows["image_id"].to_pylist():
        raise StageError("the labels and the manifest list different images; rerun infer")
    probs = np.asarray(labels["probs"].to_pylist(), dtype=np.float64)
    state = storage.read_json(inference_uri)
    meta = artifacts.read_features_meta(features_uri)
    descriptors = artifacts.stored_descriptors(features_uri, meta=meta)
    networks = list(meta.get("descriptors", []))
    if descriptors is None:  # a features folder from before descriptors: from its maps
        descriptors = [descriptors_of(artifacts.stored_filter_maps(features_uri,
                                                                   meta=meta).blocks())]
        networks = [str(meta["backbone"])]
    head, scores = train_end_model(descriptors, probs, rows["label"].to_pylist(), config)
    training = {"loss": "expected cross-entropy under the probabilistic labels (GOGGLES eq. 1)"
                if config.targets == "soft" else "cross-entropy on the arg-max labels",
                **config.to_dict(), "optimizer": "L-BFGS, full batch, float64",
                "n_images": rows.num_rows, "labeling_method": state["method"]}
    save_model(model_uri, head, describe(
        classes=state["cluster_names"], head=config.head, hidden=config.hidden,
        networks=[network_entry(name, str(meta.get("weights", "")) if name == meta["backbone"]
                                else "") for name in networks],
        image_size=int(meta.get("image_size", 224)), training=training, evaluation=scores))
    return scores


def run_apply(config: ApplyConfig, model_uri: str, manifest_uri: str, labels_uri: str,
              metrics_uri: str) -> dict[str, Any]:
    """Label the accepted images of a new source's manifest with a trained run or model
    (:mod:`goggles.training.apply`), without refitting; write ``labels.parquet`` and
    ``metrics.json`` as a run does (accuracy when folders give ground truth). Returns the
    metrics."""
    from goggles import __version__
    from goggles.io.uris import redact
    from goggles.report.evaluation import calibration, evaluate, scorable
    from goggles.training.apply import label_new_images

    started = time.perf_counter()
    manifest = storage.read_parquet(manifest_uri)
    rows = artifacts.accepted(manifest)
    applied = label_new_images(model_uri, rows["uri"].to_pylist(), config)
    storage.write_parquet(artifacts.labels_table(rows, applied.probs, applied.classes),
                          labels_uri)
    metrics: dict[str, Any] = {
        "n_images": rows.num_rows, "n_rejected": manifest.num_rows - rows.num_rows,
        "num_classes": len(applied.classes), "labeler": applied.labeler,
        "networks": applied.networks, "model_uri": redact(model_uri),
        "goggles_version": __version__}
    truth = rows["label"].to_pylist()
    if scorable(truth):
        metrics.update(evaluate(truth, applied.probs.argmax(axis=1), len(applied.classes)))
        metrics.update(calibration(truth, applied.probs))
    seconds = time.perf_counter() - started
    metrics["timings_s"] = {**applied.seconds, "apply": round(seconds, 3)}
    metrics["images_per_s"] = round(rows.num_rows / seconds, 3) if seconds > 0 else 0.0
    storage.write_json(metrics, metrics_uri)
    return metrics


def run_evaluate(manifest_uri: str, labels_uri: str, inference_uri: str, metrics_uri: str,
                 *, extra: dict[str, Any] | None = None,
                 timings: dict[str, float] | None = None,
                 end_model: dict[str, Any] | None = None) -> dict[str, Any]:
    """The run's ``metrics.json`` (README, "Labeling your images"): counts, the method's
    iterations and warnings, ``extra`` (the run's record), the stages' ``timings`` with this
    one's added, the end model's held-out scores (``end_model``, when the run trained one)
    and, when ground truth exists, accuracy and calibration."""
    from goggles import __version__
    from goggles.report.evaluation import (
        calibration,
        confidence_quality,
        dev_set_metrics,
        evaluate,
        scorable,
    )

    started = time.perf_counter()
    manifest = storage.read_parquet(manifest_uri)
    rows = artifacts.accepted(manifest)
    labels = storage.read_parquet(labels_uri).sort_by("image_id")
    state = storage.read_json(inference_uri)
    num_classes = len(state["cluster_names"])
    metrics: dict[str, Any] = dict(extra or {})
    metrics.update({
        "n_images": rows.num_rows, "n_rejected": manifest.num_rows - rows.num_rows,
        "num_classes": num_classes, "method": state["method"],
        "em_iterations": state["em_iterations"], "converged": state["converged"],
        "warnings": state["warnings"], "goggles_version": __version__,
    })
    truth = rows["label"].to_pylist()
    initial = state.get("initial_labels")
    if scorable(truth):
        metrics.update(evaluate(truth, labels["label"].to_numpy(), num_classes,
                                initial=None if initial is None else np.asarray(initial)))
        metrics.update(calibration(truth, np.asarray(labels["probs"].to_pylist())))
        metrics["confidence_quality"] = confidence_quality(
            truth, labels["label"].to_numpy(), labels["confidence"].to_numpy(), num_classes)
    if state.get("dev"):
        metrics["dev_set"] = dev_set_metrics(state["dev"]["rows"], state["dev"]["labels"],
                                             labels["label_name"].to_pylist(),
                                             truth if all(t is not None for t in truth) else None)
    if end_model:
        metrics["end_model"] = end_model
    if timings is not None:
        metrics["timings_s"] = {**timings, "evaluate": round(time.perf_counter() - started, 3)}
    storage.write_json(metrics, metrics_uri)
    return metrics
