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
from collections.abc import Callable, Iterator
from typing import Any

from goggles.features.budget import prototype_budget
from goggles.io import listing, source_state, storage
from goggles.io.artifacts import output_paths
from goggles.io.lock import output_lock
from goggles.io.resume import StageRecords, stage_key
from goggles.io.uris import redact
from goggles.parameters import RunParameters
from goggles.pipeline import console, stages
from goggles.pipeline.extract import part_uri, run_extract
from goggles.pipeline.wiring import (
    absolute_uris,
    check_counts,
    check_dev_labels_ingested,
    check_run,
    evaluate_and_report,
    run_record,
    shard_count,
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


def run_inprocess(params: RunParameters, *,
                  source: listing.SourceListing | None = None) -> dict[str, Any]:
    """Run every stage in this process, holding the output's lock (:mod:`goggles.io.lock`: a
    second run into the same output fails at once); returns the metrics written to
    ``metrics.json``. Local URIs are made absolute first, as the Kubeflow runners do, so
    every URI the outputs record is absolute. The source is listed once, for the checks and
    ingest alike (``source``: the run's listing when the caller has begun one, e.g. the CLI's
    checks, for the absolute source URI)."""
    params = absolute_uris(params)
    source = source_listing(params, source)
    configs = check_run(params, source=source)
    with output_lock(params.output_uri,
                     owner_note=f"goggles run (in process) of {redact(params.source_uri)}"):
        return run_stages(params, configs, source=source)


def source_listing(params: RunParameters,
                   source: listing.SourceListing | None = None) -> listing.SourceListing:
    """The run's listing of its source: ``source`` if given (it must be of the run's source),
    else a new one."""
    if source is None:
        return listing.SourceListing(params.source_uri)
    if source.root_uri != params.source_uri:
        raise ValueError(f"the listing of {redact(source.root_uri)} is not of this run's source "
                         f"{redact(params.source_uri)}; make it from absolute_uris(params)")
    return source


@dataclasses.dataclass(frozen=True)
class RunKeys:
    """Every stage's key for a run (:func:`goggles.io.resume.stage_key`): a digest of its
    parameters, what it reads from outside and its upstream stages' keys. The in-process and
    the Kubeflow runners record their finished stages under these same keys, so either reuses
    the other's. ``ingest`` is the ingest record's key (its parameters and the source's URI:
    whether the files changed is decided by :mod:`goggles.io.source_state`); the later keys
    build on the content ingest read (``None`` while the source has not been ingested as it is
    now); ``num_shards`` is the run's row shards (``num_shards`` 0 decided at its images,
    :func:`with_shards`)."""

    ingest: str
    extract: str | None
    affinity: list[str] | None
    infer: str | None
    train: str | None
    num_shards: int = 1


def with_shards(params: RunParameters, configs: dict[str, Any], n_images: int,
                ) -> tuple[RunParameters, dict[str, Any]]:
    """``params`` and ``configs`` with the run's row shards at ``n_images`` accepted images
    (:func:`goggles.pipeline.wiring.shard_count`: ``num_shards`` 0 is one per 10,240), as a
    cluster run's plan task decides them."""
    shards = shard_count(params.num_shards, n_images)
    if shards == params.num_shards:
        return params, configs
    return (dataclasses.replace(params, num_shards=shards),
            {**configs, "affinity": dataclasses.replace(configs["affinity"], num_shards=shards)})


def ingest_record_key(params: RunParameters, ingest_cfg: Any) -> str:
    """The ingest record's key: its parameters (less how the source is checked, which changes
    no result) and the source's URI."""
    settings = ingest_cfg.to_dict()
    settings.pop("verify", None)
    return stage_key("ingest", settings, params.source_uri)


def run_keys(params: RunParameters, configs: dict[str, Any], content: Any = None,
             n_images: int = 0, *, source: listing.SourceListing | None = None) -> RunKeys:
    """The stage keys of a run; ``content`` (:func:`goggles.io.source_state.content_listing` of
    what ingest read, ``n_images`` of them accepted), else the output's ingest record when the
    source is unchanged since (lists the source, through the run's listing ``source``), else
    the later keys are ``None``."""
    ingest_cfg, extract_cfg = configs["ingest"], configs["extract"]
    ingest_key = ingest_record_key(params, ingest_cfg)
    if content is None:
        records = StageRecords(storage.join(params.output_uri, "artifacts"))
        done = records.finished("ingest", ingest_key, stage_outputs(params)["ingest"])
        if done is not None:
            files = source_listing(params, source).files(
                ingest_cfg.extensions, follow_symlinks=ingest_cfg.follow_symlinks)
            if source_state.first_change(files, done.get("source"),
                                         verify=ingest_cfg.verify) is None:
                content = source_state.content_listing(done["source"])
                n_images = int(done["n_images"])
    if content is None:
        return RunKeys(ingest_key, None, None, None, None)
    params, configs = with_shards(params, configs, n_images)
    extract_params = extract_cfg.to_dict()
    # the cap resolved at this N and K, so a K that leaves it alone reuses the extraction
    extract_params["max_prototypes"] = prototype_budget(
        extract_cfg.max_prototypes, n_images, params.num_classes).cap
    if not 0 < extract_params["max_prototypes"] < extract_cfg.top_k * n_images:
        extract_params.pop("seed")  # the seed only drives a binding budget's sample
    extract_params.pop("feature_cache_uri")  # where features are kept changes no result
    if extract_cfg.weights_uri:  # the weights' content, not their name
        extract_params["weights_uri"] = storage.fingerprint(extract_cfg.weights_uri)
    # one extraction part per affinity shard, as on a cluster
    extract_key = stage_key("extract", stage_key("ingest", ingest_key, content), extract_params,
                            params.num_shards)
    return _later_keys(params, configs, ingest_key, extract_key)


def _later_keys(params: RunParameters, configs: dict[str, Any], ingest_key: str,
                extract_key: str) -> RunKeys:
    shard_keys = [stage_key("affinity", extract_key, configs["affinity"].to_dict(), shard_id)
                  for shard_id in range(params.num_shards)]
    dev_labels = storage.fingerprint(params.dev_labels_uri) if params.dev_labels_uri else ""
    infer_key = stage_key("infer", shard_keys, configs["infer"].to_dict(), dev_labels)
    train_key = stage_key("train", infer_key, extract_key, configs["train"].to_dict())
    return RunKeys(ingest_key, extract_key, shard_keys, infer_key, train_key, params.num_shards)


def stage_outputs(params: RunParameters) -> dict[str, list[str]]:
    """The outputs each stage's record names (a record is trusted only while they exist), by
    record name: ``ingest``, ``extract``, ``affinity-<s>-of-<S>``, ``infer``, ``train``."""
    paths = output_paths(params.output_uri)
    outputs = {
        "ingest": [paths["manifest"]],
        "extract": [storage.join(paths["features"], "meta.json"), paths["prototypes"],
                    *(storage.join(part_uri(paths["features"], s), "meta.json")
                      for s in range(params.num_shards))],
        "infer": [paths["labels"], paths["inference"]],
        "train": [storage.join(paths["model"], "model.json"),
                  storage.join(paths["model"], "model.safetensors")]}
    for shard_id, uri in enumerate(_shard_uris(params)):
        outputs[_shard_record(shard_id, params.num_shards)] = [
            storage.join(uri, "affinity.npy"), storage.join(uri, "meta.json")]
    return outputs


def _shard_uris(params: RunParameters) -> list[str]:
    affinity = output_paths(params.output_uri)["affinity"]
    return [storage.join(affinity, f"shard-{s:05d}") for s in range(params.num_shards)]


def _shard_record(shard_id: int, num_shards: int) -> str:
    return f"affinity-{shard_id:05d}-of-{num_shards:05d}"


def extraction_reusable(params: RunParameters, configs: dict[str, Any], *,
                        source: listing.SourceListing | None = None) -> bool:
    """Whether the output already holds this run's ingest and extraction, finished with the same
    keys (by any runner): then only what follows them is left to do (``source``: the run's
    listing)."""
    keys = run_keys(params, configs, source=source)
    if keys.extract is None:  # the source changed since its ingest, or was never ingested
        return False
    records = StageRecords(storage.join(params.output_uri, "artifacts"))
    outputs = stage_outputs(dataclasses.replace(params, num_shards=keys.num_shards))
    return records.finished("extract", keys.extract, outputs["extract"]) is not None


def record_finished_run(params: RunParameters, configs: dict[str, Any],
                        metrics: dict[str, Any], *,
                        source: listing.SourceListing | None = None) -> None:
    """Record every stage of a run another runner (the Kubeflow pipeline) finished into the
    output, under the keys this runner uses, so that a rerun reuses them; ``metrics`` is the
    run's ``metrics.json``. The source's state recorded is that of ``source``, the run's listing
    (made before the pipeline ran: a file rewritten meanwhile then reads as changed at the next
    run, which ingests it again, never as the version the pipeline did not read)."""
    ingest_cfg = configs["ingest"]
    params, configs = with_shards(params, configs, int(metrics["n_images"]))
    records = StageRecords(storage.join(params.output_uri, "artifacts"))
    outputs = stage_outputs(params)
    paths = output_paths(params.output_uri)
    files = source_listing(params, source).files(ingest_cfg.extensions,
                                                 follow_symlinks=ingest_cfg.follow_symlinks)
    state = source_state.record(files, storage.read_parquet(paths["manifest"],
                                                            columns=["uri", "sha256"]))
    keys = run_keys(params, configs, source_state.content_listing(state),
                    int(metrics["n_images"]))
    assert keys.extract is not None and keys.affinity is not None and keys.infer is not None
    features = storage.read_json(storage.join(paths["features"], "meta.json"))
    done: list[tuple[str, str, dict[str, Any]]] = [
        ("ingest", keys.ingest, {"n_listed": metrics["n_images"] + metrics["n_rejected"],
                                 "n_images": metrics["n_images"],
                                 "n_rejected": metrics["n_rejected"], "source": state}),
        ("extract", keys.extract, {
            "n_images": features["num_images"], "num_prototypes": metrics["num_prototypes"],
            "weights_source": metrics.get("weights_source", features.get("weights", "")),
            "backbone": features.get("backbone"),
            **{key: features.get(key, 0) for key in ("features_computed", "features_reused")}}),
        *((_shard_record(s, params.num_shards), key,
           storage.read_json(storage.join(uri, "meta.json")))
          for s, (uri, key) in enumerate(zip(_shard_uris(params), keys.affinity, strict=True))),
        ("infer", keys.infer, {key: metrics[key] for key in (
            "num_prototypes", "em_iterations", "converged", "num_classes") if key in metrics})]
    if params.train and metrics.get("end_model") and keys.train is not None:
        done.append(("train", keys.train, metrics["end_model"]))
    for name, key, result in done:
        records.write(name, key, result, outputs[name])


def _stage(records: StageRecords, timings: dict[str, float], stage: str, name: str, key: str,
           work: Callable[[], dict[str, Any]], outputs: list[str]) -> tuple[dict[str, Any], bool]:
    """Reuse or run one stage's record ``name`` (:meth:`StageRecords.run`), timed under
    ``stage``; returns its result and whether it was reused."""
    reused = records.finished(name, key, outputs) is not None
    with timed(timings, stage):
        result = records.run(name, key, work, outputs)
    return result, reused


def _extract(params: RunParameters, config: Any, records: StageRecords, paths: dict[str, str],
             key: str, outputs: list[str]) -> tuple[dict[str, Any], str]:
    """The extract stage, reused or run. An image whose bytes changed since ingest read them
    (:class:`goggles.io.images.ImageChanged`) becomes a rejected row of the manifest ("changed
    during the run"), the ingest record is dropped (the next run ingests the source again) and
    the stage runs once more without it; returns its result and the key later stages build on."""
    from goggles.ingest.manifest import reject
    from goggles.io.images import CHANGED, ImageChanged

    def work() -> dict[str, Any]:
        return run_extract(config, paths["manifest"], paths["features"], paths["prototypes"],
                           num_parts=params.num_shards, num_classes=params.num_classes)

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


def run_stages(params: RunParameters, configs: dict[str, Any], *,
               runner: str = "inprocess",
               source: listing.SourceListing | None = None) -> dict[str, Any]:
    """Every stage in this process, reusing those the output's records hold with the same keys
    (the caller holds the output's lock), a console line as each starts and ends
    (:mod:`goggles.pipeline.console`); ``runner`` is what ``metrics.json`` records. The source
    is listed once (``source``: the run's listing, which the checks may have made already):
    ingest reads that listing and the resume record keeps its state."""
    ingest_cfg, extract_cfg = configs["ingest"], configs["extract"]
    affinity_cfg, infer_cfg = configs["affinity"], configs["infer"]
    paths = output_paths(params.output_uri)
    records = StageRecords(storage.join(params.output_uri, "artifacts"))
    timings: dict[str, float] = {}
    outputs = stage_outputs(params)
    files = source_listing(params, source).files(ingest_cfg.extensions,
                                                 follow_symlinks=ingest_cfg.follow_symlinks)
    ingest_key = ingest_record_key(params, ingest_cfg)

    def ingest() -> dict[str, Any]:
        result = stages.run_ingest(ingest_cfg, params.source_uri, paths["manifest"],
                                   listed=files)
        return {**result, "source": source_state.record(
            files, storage.read_parquet(paths["manifest"], columns=["uri", "sha256"]))}

    unchanged: list[bool] = []

    def changed(result: dict[str, Any]) -> str | None:
        reason = source_state.first_change(files, result.get("source"), verify=ingest_cfg.verify)
        unchanged.append(reason is None)
        return reason

    console.started("ingest")
    with timed(timings, "ingest"):
        ingested = records.run("ingest", ingest_key, ingest, outputs["ingest"], changed=changed)
    reused = unchanged == [True]
    console.finished("ingest", timings["ingest"], ingested, reused=reused)
    check_counts(ingested["n_images"], params.num_classes, params.num_shards, paths["manifest"])
    params, configs = with_shards(params, configs, int(ingested["n_images"]))
    affinity_cfg, outputs = configs["affinity"], stage_outputs(params)
    check_dev_labels_ingested(params.dev_labels_uri, paths["manifest"], params.num_classes)
    keys = run_keys(params, configs, source_state.content_listing(ingested["source"]),
                    int(ingested["n_images"]))
    assert keys.extract is not None
    console.started("extract")
    reused = records.finished("extract", keys.extract, outputs["extract"]) is not None
    with timed(timings, "extract"):
        extracted, extract_key = _extract(params, extract_cfg, records, paths, keys.extract,
                                          outputs["extract"])
    if extract_key != keys.extract:  # images that changed during the run were left out
        keys = _later_keys(params, configs, keys.ingest, extract_key)
        reused = False
    if reused:  # this run computed no feature: every image's came from the earlier run
        extracted = {**extracted, "features_computed": 0,
                     "features_reused": int(ingested["n_images"])}
    console.finished("extract", timings["extract"], extracted, reused=reused)
    assert keys.affinity is not None and keys.infer is not None and keys.train is not None
    shard_uris = _shard_uris(params)
    console.started("affinity")
    rows, all_reused = 0, True
    for shard_id, (uri, key) in enumerate(zip(shard_uris, keys.affinity, strict=True)):
        name = _shard_record(shard_id, params.num_shards)
        shard, reused = _stage(records, timings, "affinity", name, key,
                               functools.partial(stages.run_affinity, affinity_cfg,
                                                 part_uri(paths["features"], shard_id),
                                                 paths["prototypes"], uri), outputs[name])
        rows += int(shard.get("stop", 0)) - int(shard.get("start", 0))
        all_reused = all_reused and reused
    console.finished("affinity", timings.get("affinity", 0.0),
                     {"rows": rows, "num_prototypes": extracted.get("num_prototypes")},
                     reused=all_reused)
    console.started("infer")
    inferred, reused = _stage(records, timings, "infer", "infer", keys.infer,
                              lambda: stages.run_infer(
                                  infer_cfg, paths["manifest"], paths["prototypes"], shard_uris,
                                  paths["labels"], paths["inference"], params.dev_labels_uri,
                                  features_uri=paths["features"]), outputs["infer"])
    console.finished("infer", timings["infer"], inferred, reused=reused)
    end_model = None
    if params.train:
        train_cfg = configs["train"]
        console.started("train")
        end_model, reused = _stage(records, timings, "train", "train", keys.train,
                                   lambda: stages.run_train(
                                       train_cfg, paths["manifest"], paths["features"],
                                       paths["labels"], paths["inference"], paths["model"]),
                                   outputs["train"])
        console.finished("train", timings["train"], end_model, reused=reused)
    record = run_record(dataclasses.asdict(params), runner=runner,
                        weights_source=extracted["weights_source"],
                        num_prototypes=inferred["num_prototypes"], extracted=extracted)
    console.started("evaluate")
    started = time.perf_counter()
    metrics = evaluate_and_report(
        manifest_uri=paths["manifest"], labels_uri=paths["labels"],
        inference_uri=paths["inference"], prototypes_uri=paths["prototypes"],
        affinity_uris=shard_uris, metrics_uri=paths["metrics"], report_uri=paths["report"],
        record=record, timings=timings, end_model=end_model)
    console.finished("evaluate", time.perf_counter() - started, metrics)
    return metrics
