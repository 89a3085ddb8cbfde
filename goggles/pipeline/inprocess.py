"""Run every stage in this process (library users, debugging; ``goggles run --runner
inprocess``), with crash-resume.

The Kubeflow runners (:mod:`goggles.kubeflow.runner`) run the same stages as pipeline tasks.
Every runner leaves the same files in the output (:func:`goggles.io.artifacts.output_paths`):
``manifest.parquet``, ``labels.parquet``, ``metrics.json``, ``report.html``, the
intermediate artifacts under ``artifacts/`` and, with ``train``, the end model in ``model/``.

Each stage's outputs are keyed by its inputs and parameters (:mod:`goggles.io.resume`): a rerun
into the same output reuses the stages that finished with the same key and redoes the rest.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import time
from collections.abc import Iterator
from typing import Any

from goggles.io import listing, source_state, storage
from goggles.io.artifacts import output_paths
from goggles.io.lock import output_lock
from goggles.io.resume import StageRecords, stage_key
from goggles.io.uris import redact
from goggles.parameters import RunParameters
from goggles.pipeline import stages
from goggles.pipeline.extract import part_uri, run_extract
from goggles.pipeline.wiring import (
    absolute_uris,
    check_counts,
    check_dev_labels_ingested,
    check_run,
    evaluate_and_report,
    run_record,
)

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def timed(timings: dict[str, float], stage: str) -> Iterator[None]:
    """Add the wall time of the block to ``timings[stage]``."""
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[stage] = round(timings.get(stage, 0.0) + time.perf_counter() - start, 3)


def run_inprocess(params: RunParameters) -> dict[str, Any]:
    """Run every stage in this process, holding the output's lock (:mod:`goggles.io.lock`: a
    second run into the same output fails at once); returns the metrics written to
    ``metrics.json``. Local URIs are made absolute first, as the Kubeflow runners do, so
    every URI the outputs record is absolute."""
    params = absolute_uris(params)
    configs = check_run(params)
    with output_lock(params.output_uri,
                     owner_note=f"goggles run (in process) of {redact(params.source_uri)}"):
        return _run_stages(params, configs)


def _ingest(params: RunParameters, config: Any, records: StageRecords,
            manifest_uri: str) -> tuple[dict[str, Any], str]:
    """Reuse the last ingest when the source is the one it read
    (:func:`goggles.io.source_state.first_change`: metadata first, content where metadata could
    lie), else ingest; returns its result and the key the later stages build on, a digest of
    every file's content as ingest read it."""
    files = listing.list_files(params.source_uri, config.extensions,
                               follow_symlinks=config.follow_symlinks)
    settings = config.to_dict()
    settings.pop("verify")  # how the source is checked changes no result
    key = stage_key("ingest", settings, params.source_uri)

    def work() -> dict[str, Any]:
        result = stages.run_ingest(config, params.source_uri, manifest_uri)
        return {**result, "source": source_state.record(
            files, storage.read_parquet(manifest_uri, columns=["uri", "sha256"]))}

    done = records.run("ingest", key, work, [manifest_uri], changed=lambda result:
                       source_state.first_change(files, result.get("source"),
                                                 verify=config.verify))
    content = source_state.content_listing(done["source"])
    return done, stage_key("ingest", key, content)


def _extract(params: RunParameters, config: Any, records: StageRecords, paths: dict[str, str],
             key: str) -> tuple[dict[str, Any], str]:
    """The extract stage, reused or run. An image whose bytes changed since ingest read them
    (:class:`goggles.io.images.ImageChanged`) becomes a rejected row of the manifest ("changed
    during the run"), the ingest record is dropped (the next run ingests the source again) and
    the stage runs once more without it; returns its result and the key later stages build on."""
    from goggles.ingest.manifest import reject
    from goggles.io.images import CHANGED, ImageChanged

    outputs = [storage.join(paths["features"], "meta.json"), paths["prototypes"],
               *(storage.join(part_uri(paths["features"], s), "meta.json")
                 for s in range(params.num_shards))]

    def work() -> dict[str, Any]:
        return run_extract(config, paths["manifest"], paths["features"], paths["prototypes"],
                           num_parts=params.num_shards)

    try:
        return records.run("extract", key, work, outputs), key
    except ImageChanged as error:
        changed = sorted(error.uris)
    manifest = reject(storage.read_parquet(paths["manifest"]), changed, CHANGED)
    storage.write_parquet(manifest, paths["manifest"])
    records.forget("ingest")
    logger.warning("%d image(s) %s (their bytes no longer match the sha256 ingest recorded), "
                   "e.g. %s: rejected rows of the manifest now; the next run ingests the "
                   "source again", len(changed), CHANGED, redact(changed[0]))
    n_images = int(manifest.num_rows - manifest["image_id"].null_count)
    check_counts(n_images, params.num_classes, params.num_shards, paths["manifest"])
    key = stage_key(key, "without changed images", changed)
    return records.run("extract", key, work, outputs), key


def _run_stages(params: RunParameters, configs: dict[str, Any]) -> dict[str, Any]:
    ingest_cfg, extract_cfg = configs["ingest"], configs["extract"]
    affinity_cfg, infer_cfg = configs["affinity"], configs["infer"]
    paths = output_paths(params.output_uri)
    records = StageRecords(storage.join(params.output_uri, "artifacts"))
    timings: dict[str, float] = {}
    with timed(timings, "ingest"):
        ingested, ingest_key = _ingest(params, ingest_cfg, records, paths["manifest"])
    check_counts(ingested["n_images"], params.num_classes, params.num_shards, paths["manifest"])
    check_dev_labels_ingested(params.dev_labels_uri, paths["manifest"], params.num_classes)
    extract_params = extract_cfg.to_dict()
    if not extract_cfg.max_prototypes:
        extract_params.pop("seed")  # the seed only drives the prototype budget's sample
    extract_params.pop("feature_cache_uri")  # where features are kept changes no result
    if extract_cfg.weights_uri:  # the weights' content, not their name
        extract_params["weights_uri"] = storage.fingerprint(extract_cfg.weights_uri)
    # one extraction part per affinity shard, as on a cluster
    extract_key = stage_key("extract", ingest_key, extract_params, params.num_shards)
    with timed(timings, "extract"):
        extracted, extract_key = _extract(params, extract_cfg, records, paths, extract_key)
    shard_uris, shard_keys = [], []
    with timed(timings, "affinity"):
        for shard_id in range(params.num_shards):
            uri = storage.join(paths["affinity"], f"shard-{shard_id:05d}")
            key = stage_key("affinity", extract_key, affinity_cfg.to_dict(), shard_id)
            records.run(f"affinity-{shard_id:05d}-of-{params.num_shards:05d}", key,
                        functools.partial(stages.run_affinity, affinity_cfg,
                                          part_uri(paths["features"], shard_id),
                                          paths["prototypes"], uri),
                        [storage.join(uri, "affinity.npy"), storage.join(uri, "meta.json")])
            shard_uris.append(uri)
            shard_keys.append(key)
    dev_labels = storage.fingerprint(params.dev_labels_uri) if params.dev_labels_uri else ""
    infer_key = stage_key("infer", shard_keys, infer_cfg.to_dict(), dev_labels)
    with timed(timings, "infer"):
        inferred = records.run("infer", infer_key, lambda: stages.run_infer(
            infer_cfg, paths["manifest"], paths["prototypes"], shard_uris, paths["labels"],
            paths["inference"], params.dev_labels_uri, features_uri=paths["features"]),
            [paths["labels"], paths["inference"]])
    end_model = None
    if params.train:
        train_cfg = configs["train"]
        train_key = stage_key("train", infer_key, extract_key, train_cfg.to_dict())
        with timed(timings, "train"):
            end_model = records.run("train", train_key, lambda: stages.run_train(
                train_cfg, paths["manifest"], paths["features"], paths["labels"],
                paths["inference"], paths["model"]),
                [storage.join(paths["model"], "model.json"),
                 storage.join(paths["model"], "model.safetensors")])
    record = run_record(dataclasses.asdict(params), runner="inprocess",
                        weights_source=extracted["weights_source"],
                        num_prototypes=inferred["num_prototypes"], extracted=extracted)
    return evaluate_and_report(
        manifest_uri=paths["manifest"], labels_uri=paths["labels"],
        inference_uri=paths["inference"], prototypes_uri=paths["prototypes"],
        affinity_uris=shard_uris, metrics_uri=paths["metrics"], report_uri=paths["report"],
        record=record, timings=timings, end_model=end_model)
