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

from goggles.features.budget import prototype_budget
from goggles.io import listing, storage
from goggles.io.artifacts import output_paths
from goggles.io.lock import output_lock
from goggles.io.resume import StageRecords, stage_key
from goggles.io.uris import redact
from goggles.parameters import RunParameters
from goggles.pipeline import stages
from goggles.pipeline.extract import part_uri, run_extract
from goggles.pipeline.wiring import check_counts, check_run, evaluate_and_report, run_record

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
    ``metrics.json``."""
    configs = check_run(params)
    with output_lock(params.output_uri,
                     owner_note=f"goggles run (in process) of {redact(params.source_uri)}"):
        return _run_stages(params, configs)


def _run_stages(params: RunParameters, configs: dict[str, Any]) -> dict[str, Any]:
    ingest_cfg, extract_cfg = configs["ingest"], configs["extract"]
    affinity_cfg, infer_cfg = configs["affinity"], configs["infer"]
    paths = output_paths(params.output_uri)
    records = StageRecords(storage.join(params.output_uri, "artifacts"))
    timings: dict[str, float] = {}
    files = [(f.relative, f.size, f.version)
             for f in listing.list_files(params.source_uri, ingest_cfg.extensions,
                                         follow_symlinks=ingest_cfg.follow_symlinks)]
    ingest_key = stage_key("ingest", ingest_cfg.to_dict(), params.source_uri, files)
    with timed(timings, "ingest"):
        ingested = records.run("ingest", ingest_key, lambda: stages.run_ingest(
            ingest_cfg, params.source_uri, paths["manifest"]), [paths["manifest"]])
    check_counts(ingested["n_images"], params.num_classes, params.num_shards, paths["manifest"])
    extract_params = extract_cfg.to_dict()
    # the cap resolved at this N and K, so a K that leaves it alone reuses the extraction
    extract_params["max_prototypes"] = prototype_budget(
        extract_cfg.max_prototypes, ingested["n_images"], params.num_classes).cap
    if not 0 < extract_params["max_prototypes"] < extract_cfg.top_k * ingested["n_images"]:
        extract_params.pop("seed")  # the seed only drives a binding budget's sample
    extract_params.pop("feature_cache_uri")  # where features are kept changes no result
    if extract_cfg.weights_uri:  # the weights' content, not their name
        extract_params["weights_uri"] = storage.fingerprint(extract_cfg.weights_uri)
    # one extraction part per affinity shard, as on a cluster
    extract_key = stage_key("extract", ingest_key, extract_params, params.num_shards)
    with timed(timings, "extract"):
        extracted = records.run("extract", extract_key, lambda: run_extract(
            extract_cfg, paths["manifest"], paths["features"], paths["prototypes"],
            num_parts=params.num_shards, num_classes=params.num_classes),
            [storage.join(paths["features"], "meta.json"), paths["prototypes"],
             *(storage.join(part_uri(paths["features"], s), "meta.json")
               for s in range(params.num_shards))])
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
