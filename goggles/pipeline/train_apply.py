"""What ``goggles train OUT`` and ``goggles apply MODEL SOURCE --output OUT`` do around their
stages (:func:`goggles.pipeline.stages.run_train`, :func:`~goggles.pipeline.stages.run_apply`),
in this process, holding the output's lock as every runner does.

* :func:`train_finished_run` — train the end model of a finished run into ``OUT/model`` and add
  its held-out scores to ``OUT/metrics.json`` as ``end_model`` (what ``goggles run --train``
  does inside the run);
* :func:`apply_to_source` — ingest a new source and label its images with a trained run, writing
  ``manifest.parquet``, ``labels.parquet`` and ``metrics.json`` into a new output.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from goggles.config import ConfigError, check
from goggles.io import storage, uris
from goggles.io.artifacts import output_paths, run_seed
from goggles.io.lock import output_lock
from goggles.parameters import RunParameters
from goggles.pipeline import stages
from goggles.pipeline.wiring import check_run, stage_config
from goggles.training.config import ApplyConfig, TrainConfig

logger = logging.getLogger(__name__)


def train_config_for(run_uri: str, **overrides: Any) -> TrainConfig:
    """The train config of a finished run: its own seed (``metrics.json``), ``overrides``."""
    values = stage_config("train", {"seed": run_seed(run_uri)}).to_dict()
    values.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig(**values)


def train_finished_run(run_uri: str, config: TrainConfig | None = None) -> dict[str, Any]:
    """Train the end model of the finished run in ``run_uri`` (its labels and descriptors) into
    ``run_uri/model``; returns the held-out scores, which ``metrics.json`` gains as
    ``end_model``."""
    reason = uris.refusal(run_uri)
    check(reason is None, f"run {uris.redact(run_uri)!r}: {reason}", "output_uri")
    paths = output_paths(run_uri)
    missing = [name for name in ("manifest", "labels", "inference")
               if not storage.exists(paths[name])]
    if missing or not storage.exists(storage.join(paths["features"], "meta.json")):
        raise ConfigError(f"{uris.redact(run_uri)} is not a finished goggles run (no "
                          f"{', '.join(missing) or 'artifacts/features'}); give the --output "
                          "of a `goggles run`", "output_uri")
    config = config or train_config_for(run_uri)
    with output_lock(run_uri, owner_note=f"goggles train {uris.redact(run_uri)}"):
        scores = stages.run_train(config, paths["manifest"], paths["features"], paths["labels"],
                                  paths["inference"], paths["model"])
        if storage.exists(paths["metrics"]):
            metrics = storage.read_json(paths["metrics"])
            metrics["end_model"] = scores
            storage.write_json(metrics, paths["metrics"])
    return scores


def apply_to_source(model_uri: str, source_uri: str, output_uri: str,
                    config: ApplyConfig | None = None, *,
                    follow_symlinks: bool = False) -> dict[str, Any]:
    """Label the images under ``source_uri`` with the trained run or model at ``model_uri``
    (no refit) into ``output_uri``: ``manifest.parquet``, ``labels.parquet`` and
    ``metrics.json`` as a run writes them. Returns the metrics."""
    config = config or ApplyConfig()
    reason = uris.refusal(model_uri)
    check(reason is None, f"model {uris.redact(model_uri)!r}: {reason}", "model_uri")
    check(storage.exists(model_uri), f"model {uris.redact(model_uri)} does not exist; give a "
                                     "run's OUT or OUT/model", "model_uri")
    params = RunParameters(source_uri=source_uri, output_uri=output_uri,
                           follow_symlinks=follow_symlinks, device=config.device)
    check_run(params)
    from goggles.training.apply import locate

    for folder in {model_uri, *locate(model_uri)} - {""}:
        if uris.is_inside(folder, output_uri) or uris.is_inside(output_uri, folder):
            raise ConfigError(f"the output {uris.redact(output_uri)} and the trained run or "
                              f"model {uris.redact(folder)} overlap: the new labels would "
                              "overwrite the run's or mix with them; write them elsewhere",
                              "output_uri")
    paths = output_paths(output_uri)
    with output_lock(output_uri, owner_note=f"goggles apply to {uris.redact(source_uri)}"):
        started = time.perf_counter()
        ingested = stages.run_ingest(stage_config("ingest", {"follow_symlinks": follow_symlinks}),
                                     source_uri, paths["manifest"])
        ingest_seconds = round(time.perf_counter() - started, 3)
        logger.info("ingested %d images (%d rejected)", ingested["n_images"],
                    ingested["n_rejected"])
        metrics = stages.run_apply(config, model_uri, paths["manifest"], paths["labels"],
                                   paths["metrics"])
        metrics["timings_s"] = {"ingest": ingest_seconds, **metrics["timings_s"]}
        metrics["source_uri"] = uris.redact(source_uri)
        storage.write_json(metrics, paths["metrics"])
    return metrics
