"""One function per pipeline stage, reading and writing the artifacts of
:mod:`goggles.io.artifacts`; the extract stage's, in parts and a gather, are in
:mod:`goggles.pipeline.extract`. The in-process runner, the Kubeflow components and the tests
all call these, so each stage's work is written once.

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
from goggles.features.config import AffinityConfig
from goggles.inference.config import InferConfig
from goggles.ingest.config import IngestConfig
from goggles.io import artifacts, features_folder, storage, uris
from goggles.io.dev_labels import read_dev_labels
from goggles.io.listing import ListedFile
from goggles.training.config import ApplyConfig, TrainConfig

logger = logging.getLogger(__name__)


def source_fingerprint(config: IngestConfig, source_uri: str) -> dict[str, Any]:
    """A digest of what ingest would list under ``source_uri``: each image file's path, size
    and version (a local file's modification and change times and inode, or with
    ``config.verify`` the sha256 of its bytes; an object's generation or ETag:
    :func:`goggles.io.source_state.fingerprint_entries`), with the ingest config. It changes
    when a file is added, removed or rewritten; the same listing gives the same digest. On a
    cluster it is what ingest's cache key holds besides the URI, so a grown bucket is never
    answered from the cache.

    Returns ``{"fingerprint": "sha256:...", "n_files": ...}``.
    """
    from goggles.io import listing, source_state
    from goggles.io.resume import stage_key

    listed = listing.list_files(source_uri, config.extensions,
                                follow_symlinks=config.follow_symlinks)
    files = source_state.fingerprint_entries(listed, verify=config.verify)
    return {"fingerprint": "sha256:" + stage_key("source", config.to_dict(), files),
            "n_files": len(files), "listing": listing_digest(listed)}


def listing_digest(listed: Sequence[Any]) -> str:
    """A digest of a listing's paths, sizes and versions, read from the listing alone (no
    file is opened): the ingest parts of a cluster run check they list what the listing task
    listed, so their slices tile one listing."""
    from goggles.io.resume import stage_key

    return "sha256:" + stage_key("listing", {}, [(f.relative, f.size, f.version, f.identity)
                                                 for f in listed])


def ingest_parts(n_files: int) -> int:
    """Ingest tasks of a cluster run for ``n_files`` listed files: one per
    :data:`goggles.pipeline.costs.IMAGES_PER_SHARD` files, so each reads about 100 MB of
    images."""
    from goggles.pipeline.costs import recommended_shards

    return recommended_shards(max(n_files, 1))


def run_ingest_part(config: IngestConfig, source_uri: str, shard_id: int, num_parts: int,
                    listing: str, part_uri: str) -> dict[str, Any]:
    """Validate slice ``shard_id`` of ``num_parts`` of the files under ``source_uri`` (their
    manifest rows, numbered within the part; :func:`run_join_manifest` numbers them all),
    written under folder ``part_uri``. ``listing`` is the listing task's
    :func:`listing_digest`: a source that changed since is refused, so the parts tile one
    listing."""
    from goggles.features.affinity import shard_bounds
    from goggles.ingest.manifest import inspect_listed, list_source, manifest_table

    listed = list_source(source_uri, config)
    if listing_digest(listed) != listing:
        raise StageError(f"{uris.redact(source_uri)} changed while this run was ingesting it "
                         "(files added, removed or rewritten since the listing task); rerun "
                         "the pipeline")
    if num_parts > len(listed):
        raise StageError(f"{num_parts} ingest parts for {len(listed)} files; rerun the pipeline")
    start, stop = shard_bounds(len(listed), num_parts)[shard_id]
    table = manifest_table(inspect_listed(listed[start:stop], config))
    storage.write_parquet(table, storage.join(part_uri, "manifest.parquet"))
    n_images = int(pc.sum(pc.equal(table["status"], "accepted")).as_py() or 0)
    storage.write_json({"shard_id": shard_id, "num_parts": num_parts, "start": start,
                        "stop": stop, "n_images": n_images}, storage.join(part_uri, "part.json"))
    return {"start": start, "stop": stop, "n_images": n_images}


def run_join_manifest(part_uris: Sequence[str], manifest_uri: str) -> dict[str, Any]:
    """Join the ingest parts (:func:`run_ingest_part`) into the run's manifest, the accepted
    images numbered 0..N-1 in path order: the manifest :func:`run_ingest` writes."""
    from goggles.ingest.manifest import join_manifests

    parts = artifacts.in_row_order(((storage.read_json(storage.join(uri, "part.json")), uri)
                                    for uri in part_uris), "ingest parts", "file")
    manifest = join_manifests([storage.read_parquet(storage.join(uri, "manifest.parquet"))
                               for _, uri in parts])
    storage.write_parquet(manifest, manifest_uri)
    n_images = int(pc.sum(pc.equal(manifest["status"], "accepted")).as_py() or 0)
    return {"n_listed": manifest.num_rows, "n_images": n_images,
            "n_rejected": manifest.num_rows - n_images}


def run_ingest(config: IngestConfig, source_uri: str, manifest_uri: str, *,
               listed: list[ListedFile] | None = None) -> dict[str, Any]:
    """List (unless given the run's listing, ``listed``), decode and validate the images under
    ``source_uri``; write the manifest."""
    from goggles.ingest.manifest import build_manifest

    manifest = build_manifest(source_uri, config, listed)
    storage.write_parquet(manifest, manifest_uri)
    n_images = int(pc.sum(pc.equal(manifest["status"], "accepted")).as_py() or 0)
    return {"n_listed": manifest.num_rows, "n_images": n_images,
            "n_rejected": manifest.num_rows - n_images}


def run_affinity(config: AffinityConfig, maps_uri: str, prototypes_uri: str,
                 affinity_uri: str, sample_uri: str = "", sample_part_uri: str = "",
                 view_part_uri: str = "") -> dict[str, Any]:
    """Rows of the affinity matrix (§3.2) for the images of one extraction part
    (:mod:`goggles.pipeline.extract`): its filter maps at ``maps_uri`` and every prototype. The
    part's ``meta.json`` says which rows; ``config.num_shards`` must be its run's part count.
    With ``sample_uri`` (graph EM's sample, drawn by the plan) the shard also keeps its rows'
    descriptors beside its rows of A and writes its rows in the sample to ``sample_part_uri``
    and its rows in the report's view to ``view_part_uri`` (:mod:`goggles.pipeline.fanout`)."""
    from goggles.features.affinity import affinity_block
    from goggles.features.device import resolve_device

    meta = features_folder.read_features_meta(maps_uri)
    part = meta.get("part")
    if part is None:
        raise StageError(f"{maps_uri} is not one extraction part's filter maps (its meta.json "
                         "names no part); pass a part of the extract stage")
    if int(part["num_parts"]) != config.num_shards:
        raise StageError(f"the filter maps are part {part['shard_id']} of {part['num_parts']}, "
                         f"but the run has num_shards={config.num_shards}; rerun extract")
    start, stop = int(part["start"]), int(part["stop"])
    prototypes = artifacts.read_prototypes(prototypes_uri)
    maps = features_folder.read_filter_maps(maps_uri, 0, stop - start, meta)
    block = affinity_block(maps, prototypes.vectors, memory_mb=config.memory_mb,
                           dtype=config.dtype, device=resolve_device(config.device))
    shard_id = int(part["shard_id"])
    artifacts.write_affinity_shard(affinity_uri, block, start=start, shard_id=shard_id,
                                   num_shards=config.num_shards, dtype=config.dtype)
    result = {"start": start, "stop": stop, "shard_id": shard_id,
              "num_prototypes": len(prototypes)}
    if sample_uri:
        from goggles.pipeline.fanout import keep_shard_descriptors

        described = [storage.read_npy(storage.join(maps_uri, features_folder.descriptor_file(
            network))) for network in part.get("descriptors", [])]
        logits = storage.read_npy(storage.join(maps_uri, features_folder.IMAGENET_LOGITS)) \
            if part.get("imagenet_logits") else None
        keep_shard_descriptors(affinity_uri, described)
        result["sample_rows"] = artifacts.write_sample_part(
            block, start, described, sample_uri, sample_part_uri, imagenet_logits=logits)
        if view_part_uri:
            artifacts.write_sample_part(block, start, [], sample_uri, view_part_uri,
                                        rows="view.npy")
    return result


def run_infer(config: InferConfig, manifest_uri: str, prototypes_uri: str,
              affinity_uris: Sequence[str], labels_uri: str, inference_uri: str,
              dev_labels_uri: str = "", features_uri: str = "") -> dict[str, Any]:
    """Probabilistic labels by ``config.method`` (:mod:`goggles.inference.registry`) on the
    stored affinity shards, streamed; methods that read the extract stage's descriptors or
    ImageNet logits find them under ``features_uri``."""
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
    inputs: dict[str, Any] = {}
    if model.reads:
        if not features_uri:
            raise StageError(f"method {config.method!r} reads the extract stage's features: "
                             "pass features_uri")
        inputs = features_folder.method_inputs(features_uri, model.reads)
    seeds = dev = None  # dev labels seed inference (Seeds), then name the clusters
    if dev_labels_uri:
        dev_rows, dev_names = read_dev_labels(dev_labels_uri, rows)
        seeds = Seeds.from_names(dev_rows, dev_names, config.num_classes)
        dev = {"rows": dev_rows.tolist(), "labels": dev_names, "seeded": seeds is not None}
    model.fit(affinity, source_index, seeds=seeds, **inputs)
    if dev is not None and model.dev_choice_:
        dev["choice"] = model.dev_choice_
    assert model.posteriors_ is not None
    probs = model.posteriors_
    names = list(model.cluster_names_ or [f"cluster_{k}" for k in range(config.num_classes)])
    if dev is not None:
        names = name_clusters(dev_names, probs.argmax(axis=1)[dev_rows], config.num_classes)
    storage.write_parquet(artifacts.labels_table(rows, probs, names, label_confidence(model)),
                          labels_uri)
    state = inference_state(model, config.method, names, dev)
    state["suggestions"] = _suggestions(affinity, inputs.get("descriptors"), config,
                                        dev_rows if dev is not None else (),
                                        getattr(model, "sample_", None))
    storage.write_json(state, inference_uri)
    return {"num_prototypes": int(len(source_index)), "em_iterations": state["em_iterations"],
            "converged": state["converged"], "num_classes": config.num_classes}


def _suggestions(affinity: artifacts.StoredShards, descriptors: Sequence[np.ndarray] | None,
                 config: InferConfig, labeled: Sequence[int] | np.ndarray,
                 sample: np.ndarray | None) -> dict[str, Any]:
    """inference.json's ``suggestions``: the images to label next (the report lists them;
    :mod:`goggles.inference.suggest`), ``PER_CLASS`` per class, none of the dev images; from
    the images graph EM fitted on (``sample``, when it sampled), as a cluster's fit task
    chooses them (:func:`goggles.pipeline.fanout.sample_suggestions`)."""
    from goggles.io.blocks import SampleRows
    from goggles.pipeline.fanout import sample_suggestions

    described = list(descriptors or [])
    if sample is None or len(sample) == affinity.shape[0]:
        sample = np.arange(affinity.shape[0])
        return sample_suggestions(affinity, described, sample, config, list(labeled))
    return sample_suggestions(SampleRows(affinity, sample), [d[sample] for d in described],
                              sample, config, list(labeled))


def run_train(config: TrainConfig, manifest_uri: str, features_uri: str, labels_uri: str,
              inference_uri: str, model_uri: str, *,
              descriptor_uris: Sequence[str] | None = None) -> dict[str, Any]:
    """Train the end classifier on the run's labels and the descriptors its extract stage wrote
    (:mod:`goggles.training.train`; in the features folder's parts, or at ``descriptor_uris``,
    the parts' descriptors in row order, on a cluster); write it as a model folder at
    ``model_uri`` (:mod:`goggles.training.model`). Returns its held-out scores,
    ``metrics.json``'s ``end_model``."""
    from goggles.features.descriptors import descriptors_of
    from goggles.training.model import describe, network_entry, save_model
    from goggles.training.train import train_end_model

    rows = artifacts.accepted(storage.read_parquet(manifest_uri))
    labels = storage.read_parquet(labels_uri).sort_by("image_id")
    if labels["image_id"].to_pylist() != rows["image_id"].to_pylist():
        raise StageError("the labels and the manifest list different images; rerun infer")
    probs = np.asarray(labels["probs"].to_pylist(), dtype=np.float64)
    state = storage.read_json(inference_uri)
    meta = features_folder.read_features_meta(features_uri)
    descriptors = features_folder.stored_descriptors(features_uri, meta=meta,
                                                     part_uris=descriptor_uris)
    networks = list(meta.get("descriptors", []))
    if descriptors is None:  # a features folder from before descriptors: from its maps
        descriptors = [descriptors_of(features_folder.stored_filter_maps(features_uri,
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
                                else "", meta.get("channels", {}).get(name),
                                int(values.shape[1]))
                  for name, values in zip(networks, descriptors, strict=True)],
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
    applied = label_new_images(model_uri, rows["uri"].to_pylist(), config,
                               hashes=rows["sha256"].to_pylist())
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
    """The run's ``metrics.json`` (README, "2. Run"): counts, the method's
    iterations and warnings, ``estimated_accuracy`` (the labels' mean confidence), ``extra``
    (the run's record), the stages' ``timings`` with this
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
    confidence = labels["confidence"].to_numpy()
    # the share of labels that are right if the confidence is calibrated (its mean)
    metrics["estimated_accuracy"] = round(float(confidence.mean()), 4) if len(confidence) \
        else 0.0
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
        if state["dev"].get("choice"):  # graph EM or a classifier of the dev images
            metrics["dev_set"]["labels_from"] = state["dev"]["choice"]
    if end_model:
        metrics["end_model"] = end_model
    if timings is not None:
        metrics["timings_s"] = {**timings, "evaluate": round(time.perf_counter() - started, 3)}
    storage.write_json(metrics, metrics_uri)
    return metrics
