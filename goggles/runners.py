"""Ways to run the whole pipeline on this machine.

``run_inprocess`` calls :mod:`goggles.steps` directly in this process (library users, debugging).
The Kubeflow runners (kfp's local SubprocessRunner and DockerRunner) live in
:mod:`goggles.kfp_runner` and run the DAG of ``pipeline.py``.
Every runner leaves the same files in the output: ``manifest.parquet``, ``labels.parquet``,
``metrics.json``, ``report.html`` and intermediate artifacts under ``artifacts/``.
"""

from __future__ import annotations

import functools
import logging
import os
import posixpath
from dataclasses import dataclass, field
from typing import Any

from goggles import steps, storage
from goggles.config import (
    DEFAULT_DESCRIPTOR_BACKBONE,
    AffinityConfig,
    ConfigError,
    ExtractConfig,
    InferConfig,
    IngestConfig,
)
from goggles.report import write_report
from goggles.resume import StageRecords, stage_key

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunParameters:
    """Everything a run needs; the names are the pipeline's parameter names."""

    source_uri: str
    output_uri: str
    num_classes: int
    backbone: str = "vgg16"
    weights_uri: str = ""
    top_k: int = 5
    max_prototypes: int = 0
    num_shards: int = 1
    method: str = "graph-em"
    max_iter: int = 100
    seed: int = 0
    dev_labels_uri: str = ""
    device: str = "auto"
    descriptor_backbone: str = DEFAULT_DESCRIPTOR_BACKBONE
    extra: dict[str, Any] = field(default_factory=dict)

    def configs(self) -> tuple[IngestConfig, ExtractConfig, AffinityConfig, InferConfig]:
        return (IngestConfig(),
                ExtractConfig(backbone=self.backbone, weights_uri=self.weights_uri,
                              top_k=self.top_k, max_prototypes=self.max_prototypes,
                              seed=self.seed, device=self.device,
                              descriptor_backbone=self.descriptor_backbone),
                AffinityConfig(num_shards=self.num_shards, device=self.device),
                InferConfig(num_classes=self.num_classes, method=self.method,
                            max_iter=self.max_iter, seed=self.seed))

    def validate(self) -> None:
        """Check parameters before any work starts (configs validate themselves)."""
        self.configs()
        if self.method == "backbone":  # fail now, not after extraction, without a classifier
            from goggles.baselines import classifier_weights

            classifier_weights(self.backbone, self.weights_uri)
        source, output = _comparable(self.source_uri), _comparable(self.output_uri)
        if output == source or output.startswith(source.rstrip("/") + "/"):
            raise ConfigError(f"output {self.output_uri!r} is inside the source "
                              f"{self.source_uri!r}; the next run would ingest its own outputs. "
                              "Choose an output outside the source folder")


_PROTOCOL_ALIASES = {"gcs": "gs", "s3a": "s3"}


def _comparable(uri: str) -> str:
    """``uri`` in one spelling per location: local paths absolute with symlinks resolved and
    ``.``/``..`` folded; remote URIs with protocol aliases (gcs://, s3a://) folded."""
    if storage.is_local(uri):
        return os.path.realpath(storage.local_path(uri))
    protocol, path = uri.split("://", 1)
    protocol = _PROTOCOL_ALIASES.get(protocol, protocol)
    return f"{protocol}://{posixpath.normpath('/' + path).lstrip('/')}"


def output_paths(output_uri: str) -> dict[str, str]:
    art = storage.join(output_uri, "artifacts")
    return {
        "manifest": storage.join(output_uri, "manifest.parquet"),
        "labels": storage.join(output_uri, "labels.parquet"),
        "metrics": storage.join(output_uri, "metrics.json"),
        "report": storage.join(output_uri, "report.html"),
        "features": storage.join(art, "features"),
        "prototypes": storage.join(art, "prototypes.parquet"),
        "affinity": storage.join(art, "affinity"),
        "inference": storage.join(art, "inference.json"),
    }


def run_inprocess(params: RunParameters) -> dict[str, Any]:
    """Run every stage in this process; returns the metrics written to ``metrics.json``."""
    params.validate()
    ingest_cfg, extract_cfg, affinity_cfg, infer_cfg = params.configs()
    paths = output_paths(params.output_uri)
    records = StageRecords(storage.join(params.output_uri, "artifacts"))
    timings: dict[str, float] = {}
    listing = [(f.relative, f.size) for f in storage.list_files(params.source_uri,
                                                                 ingest_cfg.extensions)]
    ingest_key = stage_key("ingest", ingest_cfg.to_dict(), params.source_uri, listing)
    with steps.timed(timings, "ingest"):
        ingested = records.run("ingest", ingest_key, lambda: steps.run_ingest(
            ingest_cfg, params.source_uri, paths["manifest"]))
    if ingested["n_images"] < params.num_classes:
        raise steps.StageError(f"only {ingested['n_images']} images were accepted, fewer than "
                               f"num_classes={params.num_classes}; lower num_classes or add "
                               f"images (rejection reasons: {paths['manifest']})")
    if params.num_shards > ingested["n_images"]:
        raise steps.StageError(f"num_shards={params.num_shards} exceeds the "
                               f"{ingested['n_images']} accepted images; use at most "
                               f"{ingested['n_images']} shards")
    extract_params = extract_cfg.to_dict()
    if not extract_cfg.max_prototypes:
        extract_params.pop("seed")  # the seed only drives the prototype budget's sample
    extract_key = stage_key("extract", ingest_key, extract_params)
    with steps.timed(timings, "extract"):
        extracted = records.run("extract", extract_key, lambda: steps.run_extract(
            extract_cfg, paths["manifest"], paths["features"], paths["prototypes"]))
    shard_uris, shard_keys = [], []
    with steps.timed(timings, "affinity"):
        for shard_id in range(params.num_shards):
            uri = storage.join(paths["affinity"], f"shard-{shard_id:05d}")
            key = stage_key("affinity", extract_key, affinity_cfg.to_dict(), shard_id)
            records.run(f"affinity-{shard_id:05d}-of-{params.num_shards:05d}", key,
                        functools.partial(steps.run_affinity, affinity_cfg, paths["features"],
                                          paths["prototypes"], shard_id, uri))
            shard_uris.append(uri)
            shard_keys.append(key)
    infer_key = stage_key("infer", shard_keys, infer_cfg.to_dict(), params.dev_labels_uri)
    with steps.timed(timings, "infer"):
        inferred = records.run("infer", infer_key, lambda: steps.run_infer(
            infer_cfg, paths["manifest"], paths["prototypes"], shard_uris, paths["labels"],
            paths["inference"], params.dev_labels_uri, features_uri=paths["features"]))
    with steps.timed(timings, "evaluate"):
        metrics = steps.run_evaluate(
            paths["manifest"], paths["labels"], paths["inference"], paths["metrics"],
            extra={"num_prototypes": inferred["num_prototypes"], "backbone": params.backbone,
                   "weights_source": extracted["weights_source"], "runner": "inprocess",
                   "seed": params.seed, "top_k": params.top_k, "num_shards": params.num_shards,
                   "source_uri": params.source_uri})
    metrics["timings_s"] = timings
    storage.write_json(metrics, paths["metrics"])
    write_report(paths["report"], metrics, labels_uri=paths["labels"],
                 inference_uri=paths["inference"], prototypes_uri=paths["prototypes"],
                 affinity_uris=shard_uris)
    return metrics
